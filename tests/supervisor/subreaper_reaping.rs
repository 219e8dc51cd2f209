//! A subreaper host gets the orphans of its services' processes: the supervisor reaps those
//! it claims, so that none is left a zombie of the host once the service has stopped or
//! exited. (Live leftovers are checked after every subreaper-tier test; this file checks
//! zombies.)

use crate::prelude::*;
use sheepdog::{RestartPolicy, Status};
use std::time::Duration;

/// Waits until the host has no child left, zombies included.
fn no_child_left(tier: &Tier, after: &str) -> TestResult {
    let gone = wait_until(SECS_5, || own_children().is_empty().then_some(()));
    let left = own_children();
    assert!(
        gone.is_some(),
        "{tier}: {after}, the host still has children (zombies are shown without a \
         command): {}",
        describe_processes(&left)
    );
    Ok(())
}

/// A `setsid` daemon, orphaned to the host, then stopped with its service.
fn a_stopped_daemon_is_reaped(tier: &Tier) -> TestResult {
    let mut h = tier.harness()?;
    h.sup()
        .start(h.sh("daemonizer", "(setsid sleep 600 &); exec sleep 600"))?;
    h.wait_for_tagged(2, "the main process and its daemon")?;
    h.sup().stop("daemonizer")?;
    h.take().shutdown()?;
    no_child_left(tier, "after a stop and shutdown")?;
    h.finish()
}

in_tiers!(a_stopped_daemon_is_reaped: subreaper);

/// A `setsid` daemon whose main process exits: killed with the exit, and reaped.
fn the_daemon_of_an_exited_service_is_reaped(tier: &Tier) -> TestResult {
    let mut h = tier.harness()?;
    let spec = h
        .sh("forker", "(setsid sleep 600 &); sleep 0.3; exit 0")
        .restart(RestartPolicy::never());
    h.sup().start(spec)?;
    h.sup().wait_for("forker", Status::Exited, SECS_10)?;
    h.take().shutdown()?;
    no_child_left(tier, "after the exit and shutdown")?;
    h.finish()
}

in_tiers!(the_daemon_of_an_exited_service_is_reaped: subreaper);

/// A tree that ignores SIGTERM is SIGKILLed by a stop; members whose parents die first are
/// re-parented, dead, to the host.
fn members_killed_after_their_parents_are_reaped(tier: &Tier) -> TestResult {
    let mut h = tier.harness()?;
    let script =
        "trap '' TERM; sh -c \"trap '' TERM; sleep 600 & sleep 600; wait\" & sleep 600 & wait";
    let spec = h
        .sh("stubborn", script)
        .stop_timeout(Duration::from_millis(300));
    h.sup().start(spec)?;
    h.wait_for_tagged(5, "the tree of five processes")?;
    h.sup().stop("stubborn")?;
    h.take().shutdown()?;
    no_child_left(tier, "after a stop that SIGKILLed the group, and shutdown")?;
    h.finish()
}

in_tiers!(
    members_killed_after_their_parents_are_reaped:
    subreaper,
);
