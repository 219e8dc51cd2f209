//! A stop of several services signals their groups before it commits their desired states
//! (the commit's fsync then overlaps their ending). Nothing is acknowledged before the
//! commit, so a host killed at any moment of a stop-all leaves a state a reopen can trust:
//! every service wanted up (the stop never committed: all started again) or every one down
//! (committed in one transaction: none started), never a mix, nothing of the dead host left;
//! and a stop-all the host acknowledged is never undone. A start that overtakes a stop-all
//! wins over it. The stop-all reaps the first exits while it goes through the services, and
//! every run is still recorded as stopped. In every tier.

use crate::prelude::*;
use sheepdog::{Cause, Status};
use std::collections::HashSet;
use std::time::Duration;

const SERVICES: usize = 12;
/// Names each child's service, to count runs per service.
const SERVICE_VAR: &str = "SHEEPDOG_TEST_STOP_ALL_SERVICE";

/// Each service notes the stop signal in `FILE` before it exits, so the test can kill the
/// host once the signals are out.
fn script() -> String {
    "trap 'echo term >> \"$SHEEPDOG_HELPER_FILE\"; exit 0' TERM; while :; do sleep 1; done"
        .to_string()
}

/// A helper host: SERVICES services under the tier `TIER` in the state directory `STATE`;
/// says `ready`, then at once stops them all, and says `stopped` once that returned.
fn helper_host() -> ! {
    let sup = helper_builder()
        .open()
        .expect("the helper host opens its supervisor");
    let token = helper_arg("TOKEN");
    for i in 0..SERVICES {
        let name = format!("s{i}");
        let spec = tagged_sh(&token, &name, &script())
            .env("SHEEPDOG_HELPER_FILE", helper_arg("FILE"))
            .env(SERVICE_VAR, &name);
        sup.start(spec)
            .expect("the helper host starts its services");
    }
    println!("ready");
    let stopped = sup.stop("all").expect("the stop-all is stored");
    println!("stopped {stopped}");
    serve_until_killed()
}

fn a_host_killed_during_a_stop_all_leaves_all_up_or_all_down(tier: &Tier) -> TestResult {
    if is_helper_host() {
        helper_host();
    }
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let file = root.path().join("signals");
    std::fs::write(&file, "")?;
    let token = new_token();
    let mut host = HostProcess::in_tier(tier, &state, &token, &[("FILE", file.as_os_str())])?;
    host.said("ready")?;
    // Killed as soon as a first service saw its stop signal: between the signals and the
    // commit, or just after.
    let signalled = wait_until(SECS_10, || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|s| !s.is_empty())
    });
    assert!(
        signalled.is_some(),
        "{tier}: the stop-all signals the services"
    );
    host.kill()?;
    let acknowledged = host.said("stopped ").is_ok_and(|_| true);
    let gone = wait_until(SECS_10, || {
        tagged_processes(&token).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "{tier}: the guardian ends what the dead host ran: {}",
        describe_processes(&tagged_processes(&token))
    );
    let sup = tier.builder().state_dir(&state).open()?;
    let statuses: Vec<Status> = sup.list()?.iter().map(|i| i.status()).collect();
    assert_eq!(statuses.len(), SERVICES, "{tier}: every service is known");
    let up = statuses.iter().filter(|s| **s == Status::Online).count();
    let down = statuses.iter().filter(|s| **s == Status::Stopped).count();
    println!("{tier}: after the reopen, {up} up and {down} down (acknowledged: {acknowledged})");
    assert!(
        up == SERVICES || down == SERVICES,
        "{tier}: all up or all down, never a mix: {statuses:?}"
    );
    if acknowledged {
        assert_eq!(down, SERVICES, "{tier}: an acknowledged stop-all is kept");
    }
    if up == SERVICES {
        let again = wait_until(SECS_10, || {
            (live_groups_by_service(&token, SERVICE_VAR).len() == SERVICES).then_some(())
        });
        assert!(again.is_some(), "{tier}: each service runs again");
        let groups = live_groups_by_service(&token, SERVICE_VAR);
        assert!(
            duplicate_runs(groups).is_empty(),
            "{tier}: one run per service"
        );
    }
    // The dead session's runs are all closed in the history.
    for info in sup.list()? {
        let open: Vec<_> = sup
            .history(info.name(), 100)?
            .into_iter()
            .filter(|r| r.ended_at().is_none())
            .collect();
        assert!(
            open.len() <= usize::from(info.status() == Status::Online),
            "{tier}: {} has no open run of the dead host: {open:?}",
            info.name()
        );
    }
    sup.shutdown()?;
    no_tagged_left(&token, "after shutdown")
}

per_tier!(a_host_killed_during_a_stop_all_leaves_all_up_or_all_down);

/// Starts overtaking a stop-all, on several of its services at once: each started service
/// ends up with one new run, the others stopped, and the stop-all returns.
fn starts_overtaking_a_stop_all_win(tier: &Tier) -> TestResult {
    let mut h = tier.harness()?;
    let token = h.token.clone();
    let spec = move |name: &str| {
        // Deaf to the stop signal: each stop lasts until its SIGKILL, so the starts come
        // while the stop-all is under way.
        tagged_sh(&token, name, "trap '' TERM; exec sleep 600")
            .env(SERVICE_VAR, name)
            .stop_timeout(Duration::from_secs(2))
    };
    for i in 0..8 {
        h.sup().start(spec(&format!("s{i}")))?;
    }
    // Each one `sleep` by now: its shell set the trap before the `exec`.
    let before: HashSet<u32> = wait_until(SECS_10, || {
        let now = h.tagged();
        let deaf = now
            .iter()
            .all(|&p| process_name(p).is_some_and(|n| n == "sleep"));
        (now.len() == 8 && deaf).then_some(now)
    })
    .context("eight services, each deaf to the stop signal")?
    .into_iter()
    .collect();
    let sup = std::sync::Arc::new(h.take());
    let stopper = {
        let sup = sup.clone();
        std::thread::spawn(move || sup.stop("all"))
    };
    let stopping = wait_until(SECS_10, || {
        let list = sup.list().ok()?;
        list.iter()
            .all(|i| i.status() == Status::Stopping)
            .then_some(())
    });
    assert!(stopping.is_some(), "{tier}: the stop-all is under way");
    let restarted: Vec<&str> = vec!["s1", "s4", "s6"];
    for name in &restarted {
        let info = sup.start(spec(name))?;
        assert!(
            info.status().is_running(),
            "{tier}: {name} runs after the start: {:?}",
            info.status()
        );
    }
    let stopped = stopper.join().expect("the stop-all does not panic")?;
    assert_eq!(stopped, 8, "{tier}: the stop-all returns");
    let want: HashSet<String> = restarted.iter().map(|s| s.to_string()).collect();
    let settled = wait_until(SECS_10, || {
        let list = sup.list().ok()?;
        list.iter()
            .all(|i| {
                if want.contains(i.name()) {
                    i.status() == Status::Online
                } else {
                    i.status() == Status::Stopped
                }
            })
            .then_some(())
    });
    assert!(
        settled.is_some(),
        "{tier}: the started ones run, the others are stopped: {:?}",
        sup.list()?
            .iter()
            .map(|i| (i.name().to_string(), i.status()))
            .collect::<Vec<_>>()
    );
    let now: HashSet<u32> = h
        .wait_for_tagged(restarted.len(), "one new run per started service")?
        .into_iter()
        .collect();
    assert!(
        now.is_disjoint(&before),
        "{tier}: the runs before the stop-all are gone"
    );
    let groups = live_groups_by_service(&h.token, SERVICE_VAR);
    assert!(
        duplicate_runs(groups).is_empty(),
        "{tier}: one run per service"
    );
    h.sup = Some(
        std::sync::Arc::try_unwrap(sup)
            .ok()
            .context("every call returned")?,
    );
    h.finish()
}

per_tier!(starts_overtaking_a_stop_all_win);

/// A stop-all of many services goes through them while the first are already dead, and
/// reaps those as it goes: each run is still recorded once, as stopped, and none restarts.
fn a_stop_all_of_many_records_every_run_as_stopped(tier: &Tier) -> TestResult {
    const MANY: usize = 300;
    let h = tier.harness()?;
    let names: Vec<String> = (0..MANY).map(|i| format!("m{i}")).collect();
    for name in &names {
        h.sup().start(tagged_sh(&h.token, name, "exec sleep 600"))?;
    }
    h.wait_for_tagged(MANY, "every service")?;
    assert_eq!(h.sup().stop("all")?, MANY, "{tier}: the stop-all returns");
    for name in &names {
        let runs = wait_until(SECS_10, || {
            let runs = h.sup().history(name, 10).ok()?;
            runs.iter().all(|r| r.cause().is_some()).then_some(runs)
        })
        .context(format!("{tier}: {name}'s run is recorded"))?;
        let causes: Vec<_> = runs.iter().map(|r| r.cause()).collect();
        assert_eq!(
            causes,
            [Some(Cause::Stopped)],
            "{tier}: {name} ran once and was stopped"
        );
        assert_eq!(
            h.sup().describe(name)?.status(),
            Status::Stopped,
            "{tier}: {name}"
        );
    }
    h.finish()
}

per_tier!(a_stop_all_of_many_records_every_run_as_stopped);
