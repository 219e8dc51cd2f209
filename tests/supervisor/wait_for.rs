//! `wait_for` returns as soon as its answer is known: at once when the service settles in a
//! status that only an operator's call changes (`Settled`, instead of waiting out its whole
//! timeout), and at its timeout otherwise, saying the status it saw.

use crate::prelude::*;
use sheepdog::{Backoff, ErrorKind, Ready, RestartPolicy, Status};
use std::time::{Duration, Instant};

/// Far longer than any of these waits should take.
const LONG: Duration = Duration::from_secs(30);

/// Readiness that never comes: the service is `Starting` until it ends.
fn never_ready() -> Ready {
    Ready::LogLine("never printed".into())
}

#[test]
fn waiting_for_online_ends_when_the_service_is_errored() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(
        h.sh("crasher", "exit 71").ready(never_ready()).restart(
            RestartPolicy::always()
                .backoff(Backoff::none())
                .max_restarts(2, Duration::from_secs(60)),
        ),
    )?;
    let t = Instant::now();
    let err = h
        .sup()
        .wait_for("crasher", Status::Online, LONG)
        .err()
        .context("an errored service never comes online")?;
    assert_eq!(err.kind(), ErrorKind::Settled, "{err}");
    assert!(t.elapsed() < LONG / 2, "it waited {:?}", t.elapsed());
    let text = err.to_string();
    assert!(
        text.contains("crasher"),
        "the error names the service: {text}"
    );
    assert!(
        text.contains("errored"),
        "the error names the status: {text}"
    );
    assert!(text.contains("exit code 71"), "the error says why: {text}");
    h.finish()
}

#[test]
fn waiting_for_online_ends_when_the_service_exits_for_good() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(
        h.sh("once", "exit 0")
            .ready(never_ready())
            .restart(RestartPolicy::on_failure()),
    )?;
    let err = h
        .sup()
        .wait_for("once", Status::Online, LONG)
        .err()
        .context("an exited service never comes online")?;
    assert_eq!(err.kind(), ErrorKind::Settled, "{err}");
    assert!(
        err.to_string().contains("exited"),
        "the error names the status: {err}"
    );
    h.finish()
}

#[test]
fn waiting_for_a_settled_status_still_succeeds_and_a_moving_one_still_waits() -> TestResult {
    let h = Harness::new()?;
    h.sup()
        .start(h.sh("once", "exit 3").restart(RestartPolicy::never()))?;
    h.sup().wait_for("once", Status::Exited, LONG)?;
    // Backoff is not settled: the wait runs to its timeout.
    h.sup().start(
        h.sh("slow", "exit 1")
            .restart(RestartPolicy::always().backoff(Backoff::fixed(LONG))),
    )?;
    wait_until(SECS_5, || {
        (status(h.sup(), "slow") == Status::Backoff).then_some(())
    })
    .context("in backoff")?;
    let err = h
        .sup()
        .wait_for("slow", Status::Online, Duration::from_millis(200))
        .err()
        .context("a service in a long backoff is not online within 200 ms")?;
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    h.finish()
}

#[test]
fn waiting_for_online_ends_when_the_service_is_stopped() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh("nap", "exec sleep 600"))?;
    h.sup().stop("nap")?;
    let err = h
        .sup()
        .wait_for("nap", Status::Online, LONG)
        .err()
        .context("a stopped service never comes online")?;
    assert_eq!(err.kind(), ErrorKind::Settled, "{err}");
    assert!(
        err.to_string().contains("stopped"),
        "the error names the status: {err}"
    );
    h.finish()
}

#[test]
fn a_wait_that_times_out_says_the_current_status() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh("up", "exec sleep 60"))?;
    let err = h
        .sup()
        .wait_for("up", Status::Exited, Duration::from_millis(50))
        .err()
        .context("a service that runs does not exit within 50 ms")?;
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(
        err.to_string(),
        "service 'up': timed out after 50ms waiting for status exited (status is online)",
        "the message"
    );
    h.finish()
}
