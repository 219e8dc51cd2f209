//! Inputs at the edge of `Duration` and `usize`, "forever" and "no limit" as callers write
//! them: a backoff, stop timeout, health interval, wait or read timeout of `Duration::MAX`,
//! a `line_max` of `usize::MAX`, a ready timeout of zero. Each call returns (a value or a
//! typed error); no supervision thread or log pump dies of an overflow. (The fuzzing of
//! `start` with such numbers is in `fuzzed_inputs.rs`.)

use crate::prelude::*;
use sheepdog::{Backoff, Health, LogPolicy, Ready, RestartPolicy, Status, Stream};
use std::sync::Arc;
use std::time::Duration;

/// A call that takes longer than this hangs.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// `Backoff::exponential(Duration::MAX, Duration::MAX)` means "practically never restart".
/// The pure `Backoff::delay` must give its cap, and a crash must leave the service in
/// `Backoff` with the supervision thread alive.
#[test]
fn an_exponential_backoff_at_the_duration_limit_does_not_panic() -> TestResult {
    let backoff = Backoff::exponential(Duration::MAX, Duration::MAX);
    let delay = std::panic::catch_unwind(|| backoff.delay(0));
    assert!(delay.is_ok(), "Backoff::delay panicked");
    sits_in_backoff(backoff)
}

/// A run that fails its readiness at once (it exits with 0 before any `READY=1`, and the
/// ready timeout is zero) is a failed start; with no backoff it is retried at once. `start`
/// must still return, as it does for the same spec with `exit 1` or a 1 ms timeout.
#[test]
fn start_returns_when_a_run_fails_its_readiness_at_once() -> TestResult {
    let h = Arc::new(Harness::new()?);
    let spec = h
        .sh("svc", "exit 0")
        .ready(Ready::Notify)
        .ready_timeout(Duration::ZERO)
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    let started = {
        let h = h.clone();
        within("start", CALL_DEADLINE, move || {
            h.sup().start(spec).map(|i| i.status())
        })
    };
    let looping = h.sup().describe("svc")?;
    let stopped = {
        let h = h.clone();
        within("stop", CALL_DEADLINE, move || h.sup().stop("svc"))
    };
    assert!(
        started.is_ok(),
        "{started:?}; meanwhile the service shows {} after {} restarts",
        looping.status(),
        looping.restarts()
    );
    assert!(
        matches!(stopped, Ok(Ok(1))),
        "the stop returns and acts on the service: {stopped:?}"
    );
    Arc::try_unwrap(h).ok().context("no other handle")?.finish()
}

/// A notify watchdog with a "practically never" interval: the first check is due after the
/// initial delay plus one interval, which must saturate rather than overflow.
#[test]
fn a_notify_health_check_with_a_huge_interval_does_not_kill_the_supervision_thread() -> TestResult {
    let h = Harness::new()?;
    let spec = h.sh("svc", "exec sleep 600").health(
        Health::notify()
            .interval(Duration::MAX)
            .initial_delay(Duration::from_nanos(1)),
    );
    let started = h.sup().start(spec)?;
    assert_eq!(started.status(), Status::Online, "started");
    answers(h.sup());
    assert_eq!(h.sup().stop("svc")?, 1, "the stop acts on the service");
    h.finish()
}

/// A "wait forever" stop timeout is valid; stopping such a service must still work (it ends
/// at once on SIGTERM).
#[test]
fn a_huge_stop_timeout_does_not_kill_the_supervision_thread() -> TestResult {
    let h = Arc::new(Harness::new()?);
    let spec = h.sh("svc", "exec sleep 600").stop_timeout(Duration::MAX);
    h.sup().start(spec)?;
    let stopped = {
        let h = h.clone();
        within("stop", CALL_DEADLINE, move || h.sup().stop("svc"))?
    };
    assert_eq!(
        stopped?, 1,
        "the stop of a service with a huge stop timeout acts on it"
    );
    assert_eq!(status(h.sup(), "svc"), Status::Stopped, "stopped");
    Arc::try_unwrap(h).ok().context("no other handle")?.finish()
}

/// A huge fixed backoff means "practically never"; the service must sit in `Backoff`.
#[test]
fn a_huge_backoff_does_not_kill_the_supervision_thread() -> TestResult {
    sits_in_backoff(Backoff::fixed(Duration::MAX))
}

/// A crashing service with `backoff` sits in `Backoff`; the supervision thread answers, and
/// a stop works.
fn sits_in_backoff(backoff: Backoff) -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("svc", "exit 1")
        .restart(RestartPolicy::always().backoff(backoff));
    h.sup().start(spec)?;
    h.sup().wait_for("svc", Status::Backoff, SECS_5)?;
    answers(h.sup());
    assert_eq!(h.sup().stop("svc")?, 1, "the stop acts on the service");
    h.finish()
}

/// `line_max` is validated only from below; the largest value means "never split".
#[test]
fn a_huge_line_max_does_not_kill_the_log_pump() -> TestResult {
    let h = Arc::new(Harness::new()?);
    let spec = h
        .sh("svc", "echo hello; exec sleep 600")
        .log(LogPolicy::default().line_max(usize::MAX));
    h.sup().start(spec)?;
    let log = h.sup().log_path("svc", Stream::Stdout)?;
    let logged = wait_until(SECS_5, || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("hello").then_some(())
    });
    let stopped = {
        let h = h.clone();
        within("stop", CALL_DEADLINE, move || h.sup().stop("svc"))
    };
    let stopped = stopped.map(|r| r.map_err(|e| e.to_string()));
    assert!(
        logged.is_some() && matches!(stopped, Ok(Ok(1))),
        "output in the log: {}; stop: {stopped:?}",
        logged.is_some()
    );
    Arc::try_unwrap(h).ok().context("no other handle")?.finish()
}

/// `Duration::MAX` is the natural "no timeout"; a wait for a status the service already has
/// returns at once.
#[test]
fn wait_for_with_a_huge_timeout_does_not_panic() -> TestResult {
    let h = Arc::new(Harness::new()?);
    h.sup().start(h.sh("svc", "exec sleep 600"))?;
    let waited = {
        let h = h.clone();
        within("wait_for", CALL_DEADLINE, move || {
            h.sup().wait_for("svc", Status::Online, Duration::MAX)
        })?
    };
    assert!(waited.is_ok(), "the wait returns at once: {waited:?}");
    Arc::try_unwrap(h).ok().context("no other handle")?.finish()
}

#[test]
fn log_follower_recv_timeout_with_a_huge_timeout_does_not_panic() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh("svc", "echo hello; exec sleep 600"))?;
    let mut follower = h.sup().follow_from_start("svc", Stream::Stdout)?;
    let got = within("recv_timeout", CALL_DEADLINE, move || {
        follower.recv_timeout(Duration::MAX)
    })?;
    assert_eq!(got.as_deref(), Some("hello"), "the first line");
    h.finish()
}
