//! Stop semantics: the stop signal to the whole group, SIGKILL after the timeout, no wait
//! without a deadline.

use crate::common::*;
use sheepdog::{Event, RestartPolicy, Signal, Status};
use std::time::{Duration, Instant};

#[test]
fn stop_escalates_to_sigkill_for_a_group_that_ignores_sigterm() {
    let h = Harness::new();
    // The leader and two generations below it all ignore SIGTERM.
    let script =
        "trap '' TERM; sh -c \"trap '' TERM; sleep 600 & sleep 600; wait\" & sleep 600 & wait";
    let spec = h
        .sh("stubborn", script)
        .stop_timeout(Duration::from_millis(300));
    let pid = h.sup().start(spec).unwrap().pid().unwrap();
    let members = wait_until(SECS_5, || {
        let m = group_members(pid);
        (m.len() >= 4).then_some(m)
    })
    .expect("the tree is up");
    let t = Instant::now();
    assert_eq!(h.sup().stop("stubborn").unwrap(), 1);
    let took = t.elapsed();
    let info = h.sup().describe("stubborn").unwrap();
    assert_eq!(info.status(), Status::Stopped);
    assert_eq!(
        info.last_exit().unwrap().signal(),
        Some(9),
        "the leader was killed"
    );
    assert!(
        took >= Duration::from_millis(300),
        "the grace period was given: {took:?}"
    );
    for m in members {
        assert!(!is_alive(m), "member {m} of the group survived the stop");
    }
    h.finish();
}

#[test]
fn stop_waits_for_grandchildren_that_handle_sigterm() {
    let h = Harness::new();
    let marker = h.dir.path().join("flushed");
    // The leader exits on SIGTERM at once; its child takes 200 ms to finish its work.
    let script = format!(
        "sh -c \"trap 'sleep 0.2; echo done > {}; exit 0' TERM; sleep 600 & wait\" & wait",
        marker.display()
    );
    let spec = h
        .sh("graceful", &script)
        .stop_timeout(Duration::from_secs(5));
    let pid = h.sup().start(spec).unwrap().pid().unwrap();
    wait_until(SECS_5, || (group_members(pid).len() >= 3).then_some(())).expect("the tree is up");
    h.sup().stop("graceful").unwrap();
    assert!(
        marker.exists(),
        "stop returned before the grandchild finished its SIGTERM handler"
    );
    assert!(group_members(pid).is_empty());
    h.finish();
}

#[test]
fn a_grandchild_holding_stdout_cannot_hang_stop() {
    let h = Harness::new();
    // The background sleep keeps the service's stdout open and ignores nothing: the group
    // signal ends it, and stop does not wait on the output.
    let spec = h
        .sh("holder", "sleep 600 & echo started; exec sleep 600")
        .stop_timeout(Duration::from_secs(2));
    h.sup().start(spec).unwrap();
    let log = h
        .sup()
        .log_path("holder", sheepdog::Stream::Stdout)
        .unwrap();
    wait_lines(&log, 1, SECS_5);
    let t = Instant::now();
    h.sup().stop("holder").unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(tagged_processes(&h.token).is_empty());
    h.finish();
}

#[test]
fn stop_signal_is_configurable() {
    let h = Harness::new();
    // Ready once the traps are set, so the signal cannot arrive before them.
    let spec = h
        .sh(
            "intme",
            "trap 'exit 42' INT; trap '' TERM; echo armed; while :; do sleep 0.05; done",
        )
        .ready(sheepdog::Ready::LogLine("armed".into()))
        .stop_signal(Signal::Int)
        .stop_timeout(Duration::from_secs(5));
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("intme", sheepdog::Status::Online, SECS_5)
        .unwrap();
    let t = Instant::now();
    h.sup().stop("intme").unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        h.sup()
            .describe("intme")
            .unwrap()
            .last_exit()
            .unwrap()
            .code(),
        Some(42)
    );
    h.finish();
}

#[test]
fn leftovers_of_a_crashed_run_are_killed_before_the_restart() {
    let h = Harness::new();
    let events = h.sup().subscribe();
    let spec = h
        .sh("leaky", "sleep 600 & sleep 0.1; exit 1")
        .restart(RestartPolicy::never());
    let pid = h.sup().start(spec).unwrap().pid().unwrap();
    expect_event(&events, SECS_5, "exit", |e| {
        matches!(e, Event::Exited { .. })
    });
    let gone = wait_until(SECS_5, || group_members(pid).is_empty().then_some(()));
    assert!(
        gone.is_some(),
        "the background sleep outlived its crashed leader"
    );
    h.finish();
}

#[test]
fn services_stop_in_parallel() {
    let h = Harness::new();
    for i in 0..20 {
        let spec = h
            .sh(
                &format!("deaf{i}"),
                "trap '' TERM; while :; do sleep 1; done",
            )
            .stop_timeout(Duration::from_millis(500));
        h.sup().start(spec).unwrap();
    }
    let t = Instant::now();
    assert_eq!(h.sup().stop("all").unwrap(), 20);
    // Serial stops would take 20 x 500 ms; parallel ones about one timeout. The bound is loose
    // on purpose (shared machines); the benchmark measures the real figure.
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopping 20 took {:?}",
        t.elapsed()
    );
    for info in h.sup().list().unwrap() {
        assert_eq!(info.status(), Status::Stopped, "{}", info.name());
    }
    h.finish();
}
