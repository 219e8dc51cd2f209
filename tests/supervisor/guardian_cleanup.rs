//! Nothing outlives a dead host, without any reopen: its guardian ends every service's
//! processes (grandchildren, `setsid` daemons, double forks), removes the supervisor's
//! cgroups (v2 and the v1 `pids` and `memory` directories) and a `temporary()` state
//! directory, and goes, whether the host died of SIGKILL or of a SIGTERM it had no handler
//! for. In every tier.
//!
//! The bound on the cleanup's time is measured in `benches/containment.rs`; here the
//! deadlines are generous, and the time taken is printed.

use crate::prelude::*;
use rustix::process::Signal;
use sheepdog::Supervisor;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Every way a descendant leaves: a grandchild in the group, a `setsid` daemon, a double
/// fork that stays in the group (re-parented to init), a double fork into a new session.
const SCRIPTS: [&str; 4] = [
    "sleep 600 & exec sleep 600",
    "(setsid sleep 600 &); exec sleep 600",
    "(sh -c 'sleep 600 &' &); exec sleep 600",
    "(setsid sh -c 'sleep 600 &' &); exec sleep 600",
];

/// A helper host: a temporary supervisor under the tier `TIER` running SCRIPTS tagged with
/// `TOKEN` (with limits where the kernel enforces them, so that v1 cgroups exist too); says
/// its state directory and the pid of each service.
fn helper_host() -> ! {
    let sup = Supervisor::builder()
        .containment(tier_named(&helper_arg("TIER")))
        .open()
        .expect("the helper host opens a temporary supervisor");
    assert!(sup.guarded(), "a guardian runs");
    println!("state {}", sup.state_dir().display());
    let token = helper_arg("TOKEN");
    for (i, script) in SCRIPTS.iter().enumerate() {
        let mut spec = tagged_sh(&token, &format!("s{i}"), script);
        if sup.enforces_max_pids() {
            spec = spec.max_pids(64);
        }
        if sup.enforces_max_memory() {
            spec = spec.max_memory(1 << 30);
        }
        let pid = sup
            .start(spec)
            .expect("the helper host starts its services");
        println!("pid {}", pid.pid().expect("a started service has a pid"));
    }
    serve_until_killed()
}

/// The cgroup directories `pid` is in that belong to a supervisor (`.../sheepdog-*/svc-*`),
/// with their parents (the supervisor's own), in every hierarchy.
fn supervisor_cgroups(pid: u32) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut out = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !path.contains("/sheepdog-") {
            continue;
        }
        let mount = mountinfo.lines().find_map(|m| {
            let (left, right) = m.split_once(" - ")?;
            let mut f = left.split_whitespace();
            let root = f.nth(3)?;
            let point = f.next()?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let options = r.nth(1)?;
            let matches = if controllers.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup"
                    && controllers
                        .split(',')
                        .all(|c| options.split(',').any(|o| o == c))
            };
            matches.then(|| (root.to_string(), point.to_string()))
        });
        let Some((root, point)) = mount else { continue };
        let rel = path
            .strip_prefix(root.trim_end_matches('/'))
            .unwrap_or(path);
        let dir = Path::new(&point).join(rel.trim_start_matches('/'));
        if let Some(parent) = dir.parent() {
            out.push(parent.to_path_buf());
        }
        out.push(dir);
    }
    out
}

/// Starts a guarded helper host, kills it with `signal`, and checks that its guardian
/// leaves nothing behind.
fn killed_by(tier: &Tier, signal: Signal, name: &str) -> TestResult {
    if is_helper_host() {
        helper_host();
    }
    let token = new_token();
    let mut host = HostProcess::spawn(
        tier.test(),
        &[("TIER", tier.name().as_ref()), ("TOKEN", token.as_ref())],
    )?;
    let state = PathBuf::from(host.said("state ")?);
    let pids: Vec<u32> = host
        .ready("pid ")?
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(
        pids.len(),
        SCRIPTS.len(),
        "the helper host started its services"
    );
    let n = SCRIPTS.len();
    wait_for_tagged(&token, 2 * n, "each service runs two processes")?;
    let cgroups: HashSet<PathBuf> = pids.iter().flat_map(|&p| supervisor_cgroups(p)).collect();
    if tier.is(sheepdog::Containment::Cgroup) {
        assert!(!cgroups.is_empty(), "{tier}: the services are in cgroups");
    }
    let guardians = guardians_of(&state);
    assert_eq!(guardians.len(), 1, "{tier}: one guardian stands by");
    let died = Instant::now();
    let signalled = host.kill_with(signal)?;
    assert_eq!(
        signalled,
        Some(signal.as_raw()),
        "{tier}: the host died of {name}"
    );
    let clean = wait_until(SECS_10, || {
        (tagged_processes(&token).is_empty()
            && !state.exists()
            && cgroups.iter().all(|d| !d.exists())
            && guardians_of(&state).is_empty())
        .then_some(())
    });
    let took = died.elapsed();
    assert!(
        clean.is_some(),
        "{tier}, {name}: left after the host died: processes {}, state dir {}, cgroups {:?}, \
         guardian {:?}",
        describe_processes(&tagged_processes(&token)),
        state.exists(),
        cgroups.iter().filter(|d| d.exists()).collect::<Vec<_>>(),
        guardians_of(&state)
    );
    println!("{tier}, {name}: everything gone {took:?} after the host died");
    Ok(())
}

fn a_host_killed_by_sigkill_leaves_nothing_behind(tier: &Tier) -> TestResult {
    killed_by(tier, Signal::KILL, "SIGKILL")
}

per_tier!(a_host_killed_by_sigkill_leaves_nothing_behind);

fn a_host_killed_by_an_unhandled_sigterm_leaves_nothing_behind(tier: &Tier) -> TestResult {
    killed_by(tier, Signal::TERM, "SIGTERM")
}

per_tier!(a_host_killed_by_an_unhandled_sigterm_leaves_nothing_behind);
