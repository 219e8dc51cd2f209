//! The restart policy applied to real exits.

use crate::common::*;
use sheepdog::{Backoff, Event, RestartPolicy, Status};
use std::time::Duration;

#[test]
fn crash_is_restarted_at_once_with_no_backoff() {
    let h = Harness::new();
    let events = h.sup().subscribe();
    let spec = h
        .sh("crasher", "sleep 0.05; exit 3")
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    let first = h.sup().start(spec).unwrap().pid().unwrap();
    expect_event(
        &events,
        SECS_5,
        "first exit",
        |e| matches!(e, Event::Exited { pid, .. } if *pid == first),
    );
    let Event::Started { pid: second, .. } = expect_event(&events, SECS_5, "restart", |e| {
        matches!(e, Event::Started { .. })
    }) else {
        unreachable!()
    };
    assert_ne!(first, second, "a new process");
    let info = h.sup().describe("crasher").unwrap();
    assert!(
        info.restarts() >= 1,
        "restarts counted: {}",
        info.restarts()
    );
    let exit = info.last_exit().expect("the crash is recorded");
    assert_eq!(exit.code(), Some(3));
    assert!(
        exit.uptime() >= Duration::from_millis(40),
        "uptime measured at exit: {:?}",
        exit.uptime()
    );
    h.finish();
}

#[test]
fn backoff_grows_then_resets_after_a_stable_run() {
    let h = Harness::new();
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
    h.sup().start(spec).unwrap();
    let mut delays = Vec::new();
    while delays.len() < 4 {
        if let Event::Backoff { delay, .. } = expect_event(&events, SECS_10, "backoff", |e| {
            matches!(e, Event::Backoff { .. })
        }) {
            delays.push(delay);
        }
    }
    let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
    assert_eq!(
        ms,
        [40, 80, 160, 40],
        "grows x2, then resets after the stable run"
    );
    h.sup().wait_for("grower", Status::Online, SECS_5).unwrap();
    assert_eq!(h.sup().describe("grower").unwrap().restarts(), 4);
    h.finish();
}

#[test]
fn crash_loop_limit_makes_the_service_errored() {
    let h = Harness::new();
    let events = h.sup().subscribe();
    let spec = h.sh("looper", "exit 1").restart(
        RestartPolicy::always()
            .backoff(Backoff::none())
            .max_restarts(3, Duration::from_secs(60)),
    );
    h.sup().start(spec).unwrap();
    let Event::Errored { reason, .. } = expect_event(&events, SECS_10, "errored", |e| {
        matches!(e, Event::Errored { .. })
    }) else {
        unreachable!()
    };
    assert!(reason.contains("4 crashes within 1m"), "{reason}");
    let info = h.sup().describe("looper").unwrap();
    assert_eq!(info.status(), Status::Errored);
    assert_eq!(
        info.restarts(),
        3,
        "three restarts allowed, the fourth crash gives up"
    );
    assert_eq!(info.pid(), None);
    h.finish();
}

#[test]
fn on_failure_restarts_failures_only() {
    let h = Harness::new();
    let policy = RestartPolicy::on_failure()
        .backoff(Backoff::none())
        .success_codes([0, 3]);
    h.sup()
        .start(h.sh("clean", "exit 0").restart(policy.clone()))
        .unwrap();
    h.sup()
        .start(h.sh("also-clean", "exit 3").restart(policy.clone()))
        .unwrap();
    h.sup().wait_for("clean", Status::Exited, SECS_5).unwrap();
    h.sup()
        .wait_for("also-clean", Status::Exited, SECS_5)
        .unwrap();
    assert_eq!(h.sup().describe("clean").unwrap().restarts(), 0);
    assert_eq!(
        h.sup()
            .describe("also-clean")
            .unwrap()
            .last_exit()
            .unwrap()
            .code(),
        Some(3)
    );

    let count = h.dir.path().join("fails");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -le 2 ] && exit 1; kill -9 $$",
        c = count.display()
    );
    h.sup()
        .start(
            h.sh("failing", &script)
                .restart(policy.max_restarts(2, Duration::from_secs(60))),
        )
        .unwrap();
    // Two failures restart; the SIGKILL of the third run is a failure too, over the limit.
    h.sup()
        .wait_for("failing", Status::Errored, SECS_5)
        .unwrap();
    let info = h.sup().describe("failing").unwrap();
    assert_eq!(info.restarts(), 2);
    assert_eq!(info.last_exit().unwrap().signal(), Some(9));
    assert_eq!(info.last_exit().unwrap().code(), None);
    h.finish();
}

#[test]
fn never_leaves_the_service_exited() {
    let h = Harness::new();
    h.sup()
        .start(h.sh("oneshot", "exit 7").restart(RestartPolicy::never()))
        .unwrap();
    h.sup().wait_for("oneshot", Status::Exited, SECS_5).unwrap();
    let info = h.sup().describe("oneshot").unwrap();
    assert_eq!(info.restarts(), 0);
    assert_eq!(info.last_exit().unwrap().code(), Some(7));
    h.finish();
}

#[test]
fn manual_restarts_are_not_counted_and_reset_the_backoff() {
    let h = Harness::new();
    h.sup().start(h.sh("steady", "exec sleep 60")).unwrap();
    let before = h.sup().describe("steady").unwrap().pid().unwrap();
    assert_eq!(h.sup().restart("steady").unwrap(), 1);
    let info = h.sup().describe("steady").unwrap();
    assert_eq!(info.status(), Status::Online);
    assert_ne!(info.pid().unwrap(), before);
    assert_eq!(info.restarts(), 0, "manual restarts are not automatic ones");
    assert!(!is_alive(before), "the old run is gone");
    h.finish();
}

#[test]
fn a_clean_exit_under_always_is_restarted() {
    let h = Harness::new();
    let events = h.sup().subscribe();
    h.sup()
        .start(
            h.sh("done", "sleep 0.02")
                .restart(RestartPolicy::always().backoff(Backoff::none())),
        )
        .unwrap();
    for _ in 0..3 {
        expect_event(&events, SECS_5, "a restart", |e| {
            matches!(e, Event::Started { .. })
        });
    }
    assert!(h.sup().describe("done").unwrap().restarts() >= 2);
    h.finish();
}
