//! Operator actions during a backoff act at once, never leave a second copy, and are never
//! undone by the pending restart: a stopped service is never restarted, a deleted one
//! leaves no ghost, a start or restart starts one run, now.

use crate::prelude::*;
use sheepdog::{Backoff, ErrorKind, Event, Events, RestartPolicy, Status};
use std::time::{Duration, Instant};

const DELAY: Duration = Duration::from_millis(600);
/// How long past its due time a restart that was not cancelled would surely have come.
const MARGIN: Duration = Duration::from_millis(300);

/// Starts `name` crashing into a backoff of DELAY; returns when its restart is due.
fn in_backoff(h: &Harness, name: &str) -> TestResult<Instant> {
    let spec = h
        .sh(name, "exit 1")
        .restart(RestartPolicy::always().backoff(Backoff::fixed(DELAY)));
    h.sup().start(spec)?;
    h.sup().wait_for(name, Status::Backoff, SECS_5)?;
    h.sup()
        .describe(name)?
        .next_start()
        .context("a restart is due")
}

/// Waits until well past the time the restart was due, and checks that no restart happened
/// meanwhile.
fn no_start_after(events: &Events, name: &str, due: Instant) {
    let deadline = due + MARGIN;
    while let Some(e) = events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        assert!(
            !matches!(&e, Event::Started { name: n, .. } if n == name),
            "{name} restarted after the operator acted: {e:?}"
        );
    }
}

#[test]
fn a_stop_during_backoff_is_never_undone() -> TestResult {
    let h = Harness::new()?;
    let due = in_backoff(&h, "s")?;
    let events = h.sup().subscribe();
    assert_eq!(h.sup().stop("s")?, 1, "the stop acts on the service");
    assert_eq!(status(h.sup(), "s"), Status::Stopped, "stopped at once");
    no_start_after(&events, "s", due);
    assert_eq!(status(h.sup(), "s"), Status::Stopped, "still stopped");
    let left = h.tagged();
    assert!(left.is_empty(), "nothing runs: {left:?}");
    h.finish()
}

#[test]
fn a_delete_during_backoff_leaves_no_ghost() -> TestResult {
    let h = Harness::new()?;
    let due = in_backoff(&h, "d")?;
    let events = h.sup().subscribe();
    assert_eq!(h.sup().delete("d")?, 1, "the delete acts on the service");
    assert_eq!(
        h.sup().describe("d").map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "deleted at once"
    );
    no_start_after(&events, "d", due);
    let left = h.tagged();
    assert!(
        left.is_empty(),
        "a deleted service left a process: {left:?}"
    );
    h.finish()
}

#[test]
fn a_start_during_backoff_starts_once_at_once() -> TestResult {
    let h = Harness::new()?;
    let due = in_backoff(&h, "a")?;
    // Same name, a spec that stays up: starts now, and the old timer must not add a copy.
    let info = h.sup().start(h.sh("a", "exec sleep 60"))?;
    let events = h.sup().subscribe();
    assert_eq!(info.status(), Status::Online, "started at once");
    let pid = info.pid().context("an online service has a pid")?;
    no_start_after(&events, "a", due);
    assert_eq!(
        h.sup().describe("a")?.pid(),
        Some(pid),
        "the same run goes on"
    );
    assert_eq!(h.tagged(), vec![pid], "exactly one live incarnation");
    h.finish()
}

#[test]
fn a_restart_during_backoff_starts_once_at_once() -> TestResult {
    let h = Harness::new()?;
    let due = in_backoff(&h, "r")?;
    let events = h.sup().subscribe();
    assert_eq!(h.sup().restart("r")?, 1, "the restart acts on the service");
    // It runs `exit 1` again, so it may be back in backoff; what matters is that the restart
    // happened now and the old timer added nothing.
    let started = expect_event(&events, Duration::from_millis(200), "the restart", |e| {
        matches!(e, Event::Started { .. })
    })?;
    assert_eq!(started.name(), Some("r"), "the service restarted");
    h.sup().stop("r")?;
    no_start_after(&events, "r", due);
    h.finish()
}
