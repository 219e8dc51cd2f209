//! Nothing escapes a stop: a descendant that left the service's process group and session
//! (`setsid`) gets the stop signal and, if it ignores it, the SIGKILL; so does one that is
//! born during the stop. In every containment tier: the cgroup tier holds it in the run's
//! cgroup, the subreaper tier claims it when it is orphaned, the process-group tier finds
//! it by its sealed `SHEEPDOG_RUN` marker (among the pids handed out during the stop, for
//! one born then).

use crate::prelude::*;
use std::time::Duration;

/// Stops `name`, and checks that nothing of it is left: `what` names what would be.
fn stop_leaves_nothing(tier: &Tier, h: &Harness, name: &str, what: &str) -> TestResult {
    h.sup().stop(name)?;
    let left = h.tagged();
    assert!(
        left.is_empty(),
        "{tier}: {what} survived the stop: {}",
        describe_processes(&left)
    );
    Ok(())
}

/// The daemon handles the stop signal by writing a file: the stop's signal, not only its
/// SIGKILL, reaches it. It loops (rather than waiting for one child, which the same stop
/// may end first, letting the shell end before its signal came).
fn the_stop_signal_reaches_a_setsid_daemon(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let note = h.dir.path().join("daemon-got-term");
    let trapped = h.dir.path().join("daemon-trapped");
    let script = format!(
        "(setsid sh -c 'trap \"echo term > {}; exit 0\" TERM; : > {}; \
         while :; do sleep 0.1; done' &); exec sleep 600",
        note.display(),
        trapped.display()
    );
    h.sup().start(h.sh("daemonizer", &script))?;
    // Stopped before its trap is set, the daemon would die of the signal without a word.
    wait_until(SECS_10, || trapped.exists().then_some(()))
        .context("the daemon runs with its trap set")?;
    stop_leaves_nothing(tier, &h, "daemonizer", "the daemon")?;
    assert!(
        note.exists(),
        "{tier}: the daemon did not get the stop signal (only a SIGKILL)"
    );
    h.finish()
}

per_tier!(the_stop_signal_reaches_a_setsid_daemon);

/// The daemon ignores SIGTERM: the stop's SIGKILL must reach it, outside the group.
fn the_sigkill_reaches_a_setsid_daemon_that_ignores_the_stop_signal(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let spec = h
        .sh(
            "daemonizer",
            "(trap '' TERM; setsid sleep 600 &); exec sleep 600",
        )
        .stop_timeout(Duration::from_millis(200));
    h.sup().start(spec)?;
    h.wait_for_tagged(2, "the main process and its daemon")?;
    stop_leaves_nothing(tier, &h, "daemonizer", "the daemon")?;
    h.finish()
}

per_tier!(the_sigkill_reaches_a_setsid_daemon_that_ignores_the_stop_signal);

/// The stop signal makes the main process start a daemon in a session of its own and exit:
/// the daemon is born after the stop looked for the service's processes, and is out of the
/// group before the group is found empty.
fn a_daemon_born_during_the_stop_is_ended_too(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let spec = h
        .sh(
            "late",
            "trap '(setsid sleep 600 &); exit 0' TERM; while :; do sleep 1; done",
        )
        // The cgroup tier SIGKILLs it at the timeout (the stop signal went out before it
        // was born); the others find it and send it the stop signal.
        .stop_timeout(Duration::from_secs(1));
    h.sup().start(spec)?;
    h.wait_for_tagged(2, "the main process and its sleep")?;
    stop_leaves_nothing(tier, &h, "late", "the daemon born during the stop")?;
    h.finish()
}

per_tier!(a_daemon_born_during_the_stop_is_ended_too);

/// Eight services, stopped together, each start a daemon when the stop signal comes: every
/// daemon is ended, though the stops look for late processes among the same new pids (the
/// process-group tier reads each new pid once for all of them, and must still give each
/// service its own).
fn daemons_born_during_one_stop_all_are_each_ended(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    for i in 0..8 {
        let spec = h
            .sh(
                &format!("late{i}"),
                "trap '(setsid sleep 600 &); exit 0' TERM; while :; do sleep 1; done",
            )
            .stop_timeout(Duration::from_secs(1));
        h.sup().start(spec)?;
    }
    h.wait_for_tagged(16, "eight main processes and their sleeps")?;
    stop_leaves_nothing(tier, &h, "all", "a daemon born during the stop-all")?;
    h.finish()
}

per_tier!(daemons_born_during_one_stop_all_are_each_ended);
