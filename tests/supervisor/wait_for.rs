//! `wait_for` returns as soon as its answer is known: at once when the service settles in a
//! status that only an operator's call changes, instead of waiting out its whole timeout.

use crate::common::*;
use sheepdog::{Backoff, ErrorKind, Ready, RestartPolicy, Status};
use std::time::{Duration, Instant};

/// Far longer than any of these waits should take.
const LONG: Duration = Duration::from_secs(30);

/// Readiness that never comes: the service is `Starting` until it ends.
fn never_ready() -> Ready {
    Ready::LogLine("never printed".into())
}

#[test]
fn waiting_for_online_ends_when_the_service_is_errored() {
    let h = Harness::new();
    h.sup()
        .start(
            h.sh("crasher", "exit 71").ready(never_ready()).restart(
                RestartPolicy::always()
                    .backoff(Backoff::none())
                    .max_restarts(2, Duration::from_secs(60)),
            ),
        )
        .unwrap();
    let t = Instant::now();
    let err = h
        .sup()
        .wait_for("crasher", Status::Online, LONG)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Settled, "{err}");
    assert!(t.elapsed() < LONG / 2, "it waited {:?}", t.elapsed());
    let text = err.to_string();
    assert!(text.contains("crasher"), "{text}");
    assert!(text.contains("errored"), "{text}");
    assert!(text.contains("exit code 71"), "{text}");
    h.finish();
}

#[test]
fn waiting_for_online_ends_when_the_service_exits_for_good() {
    let h = Harness::new();
    h.sup()
        .start(
            h.sh("once", "exit 0")
                .ready(never_ready())
                .restart(RestartPolicy::on_failure()),
        )
        .unwrap();
    let err = h.sup().wait_for("once", Status::Online, LONG).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Settled, "{err}");
    assert!(err.to_string().contains("exited"), "{err}");
    h.finish();
}

#[test]
fn waiting_for_a_settled_status_still_succeeds_and_a_moving_one_still_waits() {
    let h = Harness::new();
    h.sup()
        .start(h.sh("once", "exit 3").restart(RestartPolicy::never()))
        .unwrap();
    h.sup().wait_for("once", Status::Exited, LONG).unwrap();
    // Backoff is not settled: the wait runs to its timeout.
    h.sup()
        .start(
            h.sh("slow", "exit 1")
                .restart(RestartPolicy::always().backoff(Backoff::fixed(LONG))),
        )
        .unwrap();
    wait_until(SECS_5, || {
        (status(h.sup(), "slow") == Status::Backoff).then_some(())
    })
    .expect("in backoff");
    let err = h
        .sup()
        .wait_for("slow", Status::Online, Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    h.finish();
}

#[test]
fn waiting_for_online_ends_when_the_service_is_stopped() {
    let h = Harness::new();
    h.sup().start(h.sh("nap", "exec sleep 600")).unwrap();
    h.sup().stop("nap").unwrap();
    let err = h.sup().wait_for("nap", Status::Online, LONG).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Settled, "{err}");
    assert!(err.to_string().contains("stopped"), "{err}");
    h.finish();
}
