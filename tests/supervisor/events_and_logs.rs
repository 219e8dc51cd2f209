//! Events, waits, log paths and the end of a supervisor's life.

use crate::common::*;
use sheepdog::{Backoff, ErrorKind, Event, RestartPolicy, Status};
use std::time::Duration;

#[test]
fn a_crash_emits_exited_backoff_started_in_order() {
    let h = Harness::new();
    let events = h.sup().subscribe();
    h.sup()
        .start(
            h.sh("ev", "sleep 0.05; exit 2").restart(
                RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(50))),
            ),
        )
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let e = events.recv_timeout(SECS_5).expect("an event");
        assert_eq!(e.name(), Some("ev"));
        seen.push(e);
    }
    // Each run is ready at once (`Ready::Immediately`) and says so.
    assert!(matches!(seen[0], Event::Started { .. }), "{seen:?}");
    assert!(matches!(seen[1], Event::Ready { .. }), "{seen:?}");
    assert!(
        matches!(&seen[2], Event::Exited { exit, .. } if exit.code() == Some(2)),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[3], Event::Restarting { reason, delay, .. }
            if reason.starts_with("exit code 2") && *delay == Duration::from_millis(50)),
        "{seen:?}"
    );
    assert!(
        matches!(seen[4], Event::Backoff { delay, .. } if delay == Duration::from_millis(50)),
        "{seen:?}"
    );
    assert!(matches!(seen[5], Event::Started { .. }), "{seen:?}");
    h.sup().stop("ev").unwrap();
    expect_event(&events, SECS_5, "stopped", |e| {
        matches!(e, Event::Stopped { .. })
    });
    h.sup().delete("ev").unwrap();
    expect_event(&events, SECS_5, "deleted", |e| {
        matches!(e, Event::Deleted { .. })
    });
    h.finish();
}

#[test]
fn wait_for_times_out_with_the_current_status() {
    let h = Harness::new();
    h.sup().start(h.sh("up", "exec sleep 60")).unwrap();
    let err = h
        .sup()
        .wait_for("up", Status::Exited, Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(
        err.to_string(),
        "service 'up': timed out after 50ms waiting for status exited (status is online)"
    );
    h.finish();
}

#[test]
fn calls_after_shutdown_fail_with_shut_down() {
    let h = Harness::new();
    let events = h.sup().subscribe();
    h.sup().start(h.sh("x", "exec sleep 60")).unwrap();
    h.sup().shutdown().unwrap();
    h.sup().shutdown().expect("shutdown is idempotent");
    assert_eq!(
        h.sup().start(h.sh("y", "true")).unwrap_err().kind(),
        ErrorKind::ShutDown
    );
    assert_eq!(h.sup().stop("x").unwrap_err().kind(), ErrorKind::ShutDown);
    assert_eq!(
        h.sup().restart("all").unwrap_err().kind(),
        ErrorKind::ShutDown
    );
    assert_eq!(h.sup().describe("x").unwrap().status(), Status::Stopped);
    // The subscription ends after the last events.
    let rest: Vec<Event> = events.collect();
    assert!(
        matches!(rest.last(), Some(Event::Stopped { .. })),
        "{rest:?}"
    );
    h.finish();
}

#[test]
fn drop_stops_everything_and_removes_a_temporary_state_dir() {
    let token = new_token();
    let sup = sheepdog::Supervisor::temporary().unwrap();
    let dir = sup.state_dir().to_path_buf();
    sup.start(
        sheepdog::ServiceSpec::new("nap", "sleep")
            .arg("600")
            .env(TOKEN_VAR, &token),
    )
    .unwrap();
    let one = wait_until(SECS_5, || {
        (tagged_processes(&token).len() == 1).then_some(())
    });
    assert!(one.is_some(), "running: {:?}", tagged_processes(&token));
    drop(sup);
    assert!(
        tagged_processes(&token).is_empty(),
        "drop left the service running"
    );
    assert!(!dir.exists());
}

#[test]
fn start_with_an_equal_spec_is_a_no_op_and_a_changed_one_restarts() {
    let h = Harness::new();
    let first = h.sup().start(h.sh("svc", "exec sleep 60")).unwrap();
    let again = h.sup().start(h.sh("svc", "exec sleep 60")).unwrap();
    assert_eq!(again.pid(), first.pid(), "equal spec: untouched");
    let changed = h.sup().start(h.sh("svc", "exec sleep 61")).unwrap();
    assert_ne!(changed.pid(), first.pid());
    assert_eq!(changed.spec().get_args()[1], "exec sleep 61");
    assert!(
        !is_alive(first.pid().unwrap()),
        "the old run was stopped first"
    );
    assert_eq!(changed.id(), first.id());
    h.finish();
}
