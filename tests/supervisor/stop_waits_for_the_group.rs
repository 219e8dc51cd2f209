//! A stop is over when the group is gone, not when its leader is: members that outlive the
//! leader are waited for (within the stop timeout), and a member that holds the service's
//! output open does not hold the stop. In every containment tier.

use crate::prelude::*;
use sheepdog::Stream;
use std::time::{Duration, Instant};

/// The leader exits on SIGTERM at once; its child takes 200 ms to finish its work in its
/// SIGTERM handler. The stop returns only after that.
fn a_stop_waits_for_members_that_outlive_the_leader(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let marker = h.dir.path().join("flushed");
    let script = format!(
        "sh -c \"trap 'sleep 0.2; echo done > {}; exit 0' TERM; sleep 600 & wait\" & wait",
        marker.display()
    );
    let spec = h
        .sh("graceful", &script)
        .stop_timeout(Duration::from_secs(5));
    let pid = h.start_pid(spec)?;
    wait_until(SECS_5, || (group_members(pid).len() >= 3).then_some(()))
        .context("the leader, its child and the grandchild run")?;
    h.sup().stop("graceful")?;
    assert!(
        marker.exists(),
        "{tier}: the stop returned before the grandchild finished its SIGTERM handler"
    );
    let left = group_members(pid);
    assert!(
        left.is_empty(),
        "{tier}: members left after the stop: {left:?}"
    );
    h.finish()
}

in_tiers!(
    a_stop_waits_for_members_that_outlive_the_leader:
    cgroup,
    subreaper,
    process_group,
);

/// A background child keeps the service's stdout open: the group signal ends it, and the
/// stop does not wait on the output (nor for its timeout).
fn a_member_holding_the_output_open_does_not_hold_the_stop(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let spec = h
        .sh("holder", "sleep 600 & echo started; exec sleep 600")
        .stop_timeout(Duration::from_secs(2));
    h.sup().start(spec)?;
    let log = h.sup().log_path("holder", Stream::Stdout)?;
    wait_lines(&log, 1, SECS_5)?;
    let t = Instant::now();
    h.sup().stop("holder")?;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "{tier}: the stop waited {:?}, as long as its timeout",
        t.elapsed()
    );
    let left = h.tagged();
    assert!(left.is_empty(), "{tier}: left after the stop: {left:?}");
    h.finish()
}

per_tier!(a_member_holding_the_output_open_does_not_hold_the_stop);
