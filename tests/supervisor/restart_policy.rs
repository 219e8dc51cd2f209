//! The restart policy applied to real exits: `always` restarts every exit (a clean one
//! too), `on-failure` only failures (with its success codes), `never` none; the backoff
//! grows and resets after a stable run; `max_restarts` turns a crash loop into `Errored`;
//! manual restarts are not counted.

use crate::prelude::*;
use sheepdog::{Backoff, Event, RestartPolicy, Status};
use std::time::Duration;

#[test]
fn a_crash_is_restarted_at_once_with_no_backoff() -> TestResult {
    let h = Harness::new()?;
    let events = h.sup().subscribe();
    let spec = h
        .sh("crasher", "sleep 0.05; exit 3")
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    let first = h.start_pid(spec)?;
    expect_event(
        &events,
        SECS_5,
        "first exit",
        |e| matches!(e, Event::Exited { pid, .. } if *pid == first),
    )?;
    let Event::Started { pid: second, .. } = expect_event(&events, SECS_5, "restart", |e| {
        matches!(e, Event::Started { .. })
    })?
    else {
        unreachable!("the predicate takes only Started")
    };
    assert_ne!(first, second, "the restart is a new process");
    let info = h.sup().describe("crasher")?;
    assert!(
        info.restarts() >= 1,
        "restarts are counted: {}",
        info.restarts()
    );
    let exit = info.last_exit().context("the crash is recorded")?;
    assert_eq!(exit.code(), Some(3), "the crash's exit code");
    assert!(
        exit.uptime() >= Duration::from_millis(40),
        "uptime measured at exit: {:?}",
        exit.uptime()
    );
    h.finish()
}

#[test]
fn the_backoff_grows_then_resets_after_a_stable_run() -> TestResult {
    let h = Harness::new()?;
    let count = h.dir.path().join("count");
    // Runs 1-3 crash at once; run 4 stays up past `stable_after`, then crashes; run 5 and
    // later stay up.
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; \
         if [ $n -le 3 ]; then exit 1; fi; if [ $n -eq 4 ]; then sleep 0.6; exit 1; fi; exec sleep 60",
        c = count.display()
    );
    let events = h.sup().subscribe();
    let spec = h.sh("grower", &script).restart(
        RestartPolicy::always()
            .backoff(Backoff::exponential(
                Duration::from_millis(40),
                Duration::from_secs(5),
            ))
            .stable_after(Duration::from_millis(400)),
    );
    h.sup().start(spec)?;
    let mut delays = Vec::new();
    while delays.len() < 4 {
        if let Event::Backoff { delay, .. } = expect_event(&events, SECS_10, "backoff", |e| {
            matches!(e, Event::Backoff { .. })
        })? {
            delays.push(delay.as_millis());
        }
    }
    assert_eq!(
        delays,
        [40, 80, 160, 40],
        "the delays grow x2, then reset after the stable run"
    );
    h.sup().wait_for("grower", Status::Online, SECS_5)?;
    assert_eq!(h.sup().describe("grower")?.restarts(), 4, "four restarts");
    h.finish()
}

#[test]
fn a_crash_loop_over_its_limit_makes_the_service_errored() -> TestResult {
    let h = Harness::new()?;
    let events = h.sup().subscribe();
    let spec = h.sh("looper", "exit 1").restart(
        RestartPolicy::always()
            .backoff(Backoff::none())
            .max_restarts(3, Duration::from_secs(60)),
    );
    h.sup().start(spec)?;
    let Event::Errored { reason, .. } = expect_event(&events, SECS_10, "errored", |e| {
        matches!(e, Event::Errored { .. })
    })?
    else {
        unreachable!("the predicate takes only Errored")
    };
    assert!(
        reason.contains("4 crashes within 1m"),
        "the reason: {reason}"
    );
    let info = h.sup().describe("looper")?;
    assert_eq!(info.status(), Status::Errored, "the status");
    assert_eq!(
        info.restarts(),
        3,
        "three restarts allowed, the fourth crash gives up"
    );
    assert_eq!(info.pid(), None, "nothing runs");
    h.finish()
}

#[test]
fn on_failure_restarts_failures_only() -> TestResult {
    let h = Harness::new()?;
    let policy = RestartPolicy::on_failure()
        .backoff(Backoff::none())
        .success_codes([0, 3]);
    h.sup()
        .start(h.sh("clean", "exit 0").restart(policy.clone()))?;
    h.sup()
        .start(h.sh("also-clean", "exit 3").restart(policy.clone()))?;
    h.sup().wait_for("clean", Status::Exited, SECS_5)?;
    h.sup().wait_for("also-clean", Status::Exited, SECS_5)?;
    assert_eq!(
        h.sup().describe("clean")?.restarts(),
        0,
        "exit 0 is not restarted"
    );
    assert_eq!(
        h.sup()
            .describe("also-clean")?
            .last_exit()
            .and_then(|e| e.code()),
        Some(3),
        "exit 3, a success code, is not restarted"
    );

    let count = h.dir.path().join("fails");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -le 2 ] && exit 1; kill -9 $$",
        c = count.display()
    );
    h.sup().start(
        h.sh("failing", &script)
            .restart(policy.max_restarts(2, Duration::from_secs(60))),
    )?;
    // Two failures restart; the SIGKILL of the third run is a failure too, over the limit.
    h.sup().wait_for("failing", Status::Errored, SECS_5)?;
    let info = h.sup().describe("failing")?;
    assert_eq!(info.restarts(), 2, "two failures restarted");
    let exit = info
        .last_exit()
        .context("an errored service has a last exit")?;
    assert_eq!(
        (exit.code(), exit.signal()),
        (None, Some(9)),
        "the SIGKILL counts as a failure"
    );
    h.finish()
}

#[test]
fn never_leaves_the_service_exited() -> TestResult {
    let h = Harness::new()?;
    h.sup()
        .start(h.sh("oneshot", "exit 7").restart(RestartPolicy::never()))?;
    h.sup().wait_for("oneshot", Status::Exited, SECS_5)?;
    let info = h.sup().describe("oneshot")?;
    assert_eq!(info.restarts(), 0, "not restarted");
    assert_eq!(
        info.last_exit().and_then(|e| e.code()),
        Some(7),
        "the exit code"
    );
    h.finish()
}

#[test]
fn manual_restarts_are_not_counted() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh("steady", "exec sleep 60"))?;
    let before = h
        .sup()
        .describe("steady")?
        .pid()
        .context("a started service has a pid")?;
    assert_eq!(
        h.sup().restart("steady")?,
        1,
        "the restart acts on one service"
    );
    let info = h.sup().describe("steady")?;
    assert_eq!(info.status(), Status::Online, "online after the restart");
    assert_ne!(info.pid(), Some(before), "a new process");
    assert_eq!(info.restarts(), 0, "manual restarts are not automatic ones");
    assert!(!is_alive(before), "the old run is gone");
    h.finish()
}

#[test]
fn a_clean_exit_under_always_is_restarted() -> TestResult {
    let h = Harness::new()?;
    let events = h.sup().subscribe();
    h.sup().start(
        h.sh("done", "sleep 0.02")
            .restart(RestartPolicy::always().backoff(Backoff::none())),
    )?;
    for _ in 0..3 {
        expect_event(&events, SECS_5, "a restart", |e| {
            matches!(e, Event::Started { .. })
        })?;
    }
    assert!(
        h.sup().describe("done")?.restarts() >= 2,
        "clean exits were restarted"
    );
    h.finish()
}
