//! Operator actions during a backoff act at once, never leave a second copy, and are never
//! undone by the pending restart.

use crate::common::*;
use sheepdog::{Backoff, ErrorKind, Event, RestartPolicy, Status};
use std::time::Duration;

const DELAY: Duration = Duration::from_millis(600);

fn in_backoff(h: &Harness, name: &str) {
    let spec = h
        .sh(name, "exit 1")
        .restart(RestartPolicy::always().backoff(Backoff::fixed(DELAY)));
    h.sup().start(spec).unwrap();
    h.sup().wait_for(name, Status::Backoff, SECS_5).unwrap();
    assert!(h.sup().describe(name).unwrap().next_start().is_some());
}

/// Waits past the backoff and checks that no restart happened meanwhile.
fn no_start_after(events: &sheepdog::Events, name: &str) {
    let deadline = std::time::Instant::now() + DELAY * 2;
    while let Some(e) =
        events.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        assert!(
            !matches!(&e, Event::Started { name: n, .. } if n == name),
            "{name} restarted after the operator acted: {e:?}"
        );
    }
}

#[test]
fn stop_during_backoff_is_never_undone() {
    let h = Harness::new();
    in_backoff(&h, "s");
    let events = h.sup().subscribe();
    assert_eq!(h.sup().stop("s").unwrap(), 1);
    assert_eq!(status(h.sup(), "s"), Status::Stopped);
    no_start_after(&events, "s");
    assert_eq!(status(h.sup(), "s"), Status::Stopped);
    assert!(tagged_processes(&h.token).is_empty());
    h.finish();
}

#[test]
fn delete_during_backoff_leaves_no_ghost() {
    let h = Harness::new();
    in_backoff(&h, "d");
    let events = h.sup().subscribe();
    assert_eq!(h.sup().delete("d").unwrap(), 1);
    assert_eq!(
        h.sup().describe("d").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    no_start_after(&events, "d");
    assert!(
        tagged_processes(&h.token).is_empty(),
        "a deleted service left a process"
    );
    h.finish();
}

#[test]
fn start_during_backoff_starts_once_at_once() {
    let h = Harness::new();
    in_backoff(&h, "a");
    // Same name, a spec that stays up: starts now, and the old timer must not add a copy.
    let info = h.sup().start(h.sh("a", "exec sleep 60")).unwrap();
    let events = h.sup().subscribe();
    assert_eq!(info.status(), Status::Online);
    let pid = info.pid().unwrap();
    no_start_after(&events, "a");
    assert_eq!(h.sup().describe("a").unwrap().pid(), Some(pid));
    assert_eq!(
        tagged_processes(&h.token),
        vec![pid],
        "exactly one live incarnation"
    );
    h.finish();
}

#[test]
fn restart_during_backoff_starts_once_at_once() {
    let h = Harness::new();
    in_backoff(&h, "r");
    let events = h.sup().subscribe();
    assert_eq!(h.sup().restart("r").unwrap(), 1);
    // It runs `exit 1` again, so it may be back in backoff; what matters is that the restart
    // happened now and the old timer added nothing.
    let started = expect_event(&events, Duration::from_millis(200), "the restart", |e| {
        matches!(e, Event::Started { .. })
    });
    assert_eq!(started.name(), Some("r"));
    h.sup().stop("r").unwrap();
    no_start_after(&events, "r");
    h.finish();
}
