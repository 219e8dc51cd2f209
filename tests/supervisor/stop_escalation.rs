//! A stop sends the stop signal (`TERM`, or the one configured) to the whole process group
//! and to what left it, waits up to `stop_timeout`, then SIGKILLs whatever is left; it
//! returns once all of it is gone. In every containment tier.

use crate::prelude::*;
use sheepdog::{Ready, Signal, Status};
use std::time::{Duration, Instant};

/// The leader and two generations below it all ignore SIGTERM: the stop gives them the
/// grace period, then SIGKILLs every member.
fn a_group_that_ignores_the_stop_signal_is_killed_after_the_timeout(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let script =
        "trap '' TERM; sh -c \"trap '' TERM; sleep 600 & sleep 600; wait\" & sleep 600 & wait";
    let spec = h
        .sh("stubborn", script)
        .stop_timeout(Duration::from_millis(300));
    let pid = h.start_pid(spec)?;
    let members = wait_until(SECS_5, || {
        let m = group_members(pid);
        (m.len() >= 4).then_some(m)
    })
    .context("the tree of five processes comes up")?;
    let t = Instant::now();
    assert_eq!(h.sup().stop("stubborn")?, 1, "the stop acts on one service");
    let took = t.elapsed();
    let info = h.sup().describe("stubborn")?;
    assert_eq!(
        info.status(),
        Status::Stopped,
        "{tier}: the status after the stop"
    );
    assert_eq!(
        info.last_exit().and_then(|e| e.signal()),
        Some(9),
        "{tier}: the leader was SIGKILLed"
    );
    assert!(
        took >= Duration::from_millis(300),
        "{tier}: the grace period was given before the SIGKILL: the stop took {took:?}"
    );
    for m in members {
        assert!(
            !is_alive(m),
            "{tier}: member {m} of the group survived the stop"
        );
    }
    h.finish()
}

per_tier!(a_group_that_ignores_the_stop_signal_is_killed_after_the_timeout);

/// Fifty grandchildren that ignore SIGTERM (the disposition is inherited): 25 stay in the
/// group, 25 leave it with `setsid`. The stop's SIGKILL reaches all of them.
fn fifty_grandchildren_ignoring_the_stop_signal_are_gone_after_it(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let script = "trap '' TERM; for i in $(seq 25); do sleep 600 & setsid sleep 600 & done; \
                  exec sleep 600";
    let spec = h
        .sh("tree", script)
        .stop_timeout(Duration::from_millis(200));
    h.sup().start(spec)?;
    h.wait_for_tagged(51, "the main process and its fifty grandchildren")?;
    h.sup().stop("tree")?;
    let left = h.tagged();
    assert!(
        left.is_empty(),
        "{tier}: grandchildren survived the stop: {}",
        describe_processes(&left)
    );
    h.finish()
}

per_tier!(fifty_grandchildren_ignoring_the_stop_signal_are_gone_after_it);

/// `stop_signal(Signal::Int)` is what a stop sends first: the service exits through its
/// INT handler (it ignores TERM), well before the timeout.
fn the_configured_stop_signal_is_sent_first(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    // Ready once the traps are set, so the signal cannot arrive before them.
    let spec = h
        .sh(
            "intme",
            "trap 'exit 42' INT; trap '' TERM; echo armed; while :; do sleep 0.05; done",
        )
        .ready(Ready::LogLine("armed".into()))
        .stop_signal(Signal::Int)
        .stop_timeout(Duration::from_secs(5));
    h.sup().start(spec)?;
    h.sup().wait_for("intme", Status::Online, SECS_5)?;
    let t = Instant::now();
    h.sup().stop("intme")?;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "{tier}: the stop waited for its timeout: SIGINT did not end the service"
    );
    let exit = h.sup().describe("intme")?.last_exit().cloned();
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(42),
        "{tier}: the service exited through its SIGINT handler"
    );
    h.finish()
}

per_tier!(the_configured_stop_signal_is_sent_first);
