//! A host that dies without `shutdown` (SIGKILL here), and without a guardian (as one whose
//! guardian died with it: what a guardian does is in `guardian_cleanup.rs`), leaves nothing
//! that outlives the next `open` of its state directory: the main processes die by
//! PDEATHSIG, and `open` kills what is left (members of the runs' groups, matched by boot
//! id, pid and start time; escaped daemons, by their cgroup or their sealed marker) before
//! it starts each service exactly once, and reports what it killed (`Event::Reclaimed`,
//! which a subscription made after `open` still receives first, and `reclaimed()`). In
//! every tier.

use crate::prelude::*;
use sheepdog::{Event, Status};
use std::collections::HashSet;

/// A helper host: `SERVICES` services running `SCRIPT` under the tier `TIER`, without a
/// guardian, in the state directory `STATE`, tagged with `TOKEN`.
fn helper_host() -> ! {
    let sup = helper_builder()
        .guardian(false)
        .open()
        .expect("the helper host opens its supervisor");
    let (token, script) = (helper_arg("TOKEN"), helper_arg("SCRIPT"));
    let services: usize = helper_arg("SERVICES").parse().expect("a count");
    for i in 0..services {
        sup.start(tagged_sh(&token, &format!("svc{i}"), &script))
            .expect("the helper host starts its services");
    }
    serve_until_killed()
}

/// A host of `services` services running `script` (two processes each), killed once they
/// all run: returns its state directory (in `root`), the token, and the processes that ran.
fn a_dead_host(
    tier: &Tier,
    root: &std::path::Path,
    services: usize,
    script: &str,
) -> TestResult<(std::path::PathBuf, String, HashSet<u32>)> {
    let state = root.join("state");
    let token = new_token();
    let count = services.to_string();
    let mut host = HostProcess::in_tier(
        tier,
        &state,
        &token,
        &[("SCRIPT", script.as_ref()), ("SERVICES", count.as_ref())],
    )?;
    host.ready("")?;
    let before = wait_for_tagged(&token, 2 * services, "each service runs two processes")?;
    host.kill()?;
    Ok((state, token, before.into_iter().collect()))
}

/// Each service runs a leader and a grandchild in its group (which `sh` forks a moment
/// after the start).
fn group_members_left_by_a_dead_host_are_killed_at_open(tier: &Tier) -> TestResult {
    if is_helper_host() {
        helper_host();
    }
    const SERVICES: usize = 20;
    let root = tempfile::tempdir()?;
    let (state, token, before) =
        a_dead_host(tier, root.path(), SERVICES, "sleep 600 & exec sleep 600")?;
    // The leaders die with the host; the grandchildren are orphans.
    let orphans = wait_for_tagged(&token, SERVICES, "PDEATHSIG ended every leader")?;

    let sup = tier.builder().state_dir(&state).open()?;
    for o in &orphans {
        assert!(
            !is_alive(*o),
            "{tier}: orphan {o} of the dead host survived open"
        );
    }
    let events = sup.subscribe();
    let mut reported: HashSet<u32> = HashSet::new();
    let mut names = HashSet::new();
    while let Some(Event::Reclaimed { name, pids }) = events.try_recv() {
        names.insert(name);
        reported.extend(pids);
    }
    assert_eq!(
        names.len(),
        SERVICES,
        "{tier}: one Reclaimed event per service, first in a subscription made after open"
    );
    for o in &orphans {
        assert!(
            reported.contains(o),
            "{tier}: orphan {o} is reported reclaimed: {reported:?}"
        );
    }
    let infos = sup.list()?;
    assert_eq!(infos.len(), SERVICES, "{tier}: every service is listed");
    for info in &infos {
        assert_eq!(
            info.status(),
            Status::Online,
            "{tier}: {} is resurrected",
            info.name()
        );
        let pgid = info.pid().context("an online service has a pid")?;
        let members = wait_until(SECS_5, || {
            let m = group_members(pgid);
            (m.len() == 2).then_some(m)
        });
        assert!(
            members.is_some(),
            "{tier}: {}: one leader and one grandchild, not {:?}; reclaimed {:?}",
            info.name(),
            group_members(pgid),
            sup.reclaimed()
        );
    }
    let now: HashSet<u32> = tagged_processes(&token).into_iter().collect();
    assert!(now.is_disjoint(&before), "{tier}: only new processes run");
    assert_eq!(
        now.len(),
        2 * SERVICES,
        "{tier}: each service started exactly once"
    );
    sup.shutdown()?;
    no_tagged_left(&token, "after shutdown")
}

per_tier!(group_members_left_by_a_dead_host_are_killed_at_open);

/// Each service leaves a daemon in a session of its own: the next `open` kills and reports
/// every daemon, and starts each service once.
fn escaped_daemons_left_by_a_dead_host_are_killed_at_open(tier: &Tier) -> TestResult {
    if is_helper_host() {
        helper_host();
    }
    const SERVICES: usize = 5;
    let root = tempfile::tempdir()?;
    let (state, token, before) = a_dead_host(
        tier,
        root.path(),
        SERVICES,
        "(setsid sleep 600 &); exec sleep 600",
    )?;
    // The main processes die with the host; the daemons are in their own sessions.
    let daemons = wait_for_tagged(&token, SERVICES, "PDEATHSIG ended the main processes only")?;

    let sup = tier.builder().state_dir(&state).open()?;
    for d in &daemons {
        assert!(
            !is_alive(*d),
            "{tier}: daemon {d} of the dead host survived open"
        );
    }
    let reclaimed: HashSet<u32> = sup
        .reclaimed()
        .into_iter()
        .flat_map(|(_, pids)| pids)
        .collect();
    for d in &daemons {
        assert!(
            reclaimed.contains(d),
            "{tier}: daemon {d} is reported as reclaimed: {:?}",
            sup.reclaimed()
        );
    }
    let now: HashSet<u32> = wait_for_tagged(&token, 2 * SERVICES, "each service started again")?
        .into_iter()
        .collect();
    assert!(
        now.is_disjoint(&before),
        "{tier}: each service started once again, nothing of the dead host is left"
    );
    sup.shutdown()?;
    no_tagged_left(&token, "after shutdown")
}

per_tier!(escaped_daemons_left_by_a_dead_host_are_killed_at_open);
