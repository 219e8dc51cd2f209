//! Health checks: a service that stops answering is restarted after its consecutive
//! failures, and the exit says why; probes run on a fixed pool of workers, each bounded by
//! its timeout, so a probe that hangs never delays supervision.

use crate::prelude::*;
use crate::readiness::{free_port, listener};
use sheepdog::{Backoff, Event, Health, Ready, RestartPolicy};
use std::time::{Duration, Instant};

#[test]
fn a_service_that_stops_answering_is_restarted_after_the_failures() -> TestResult {
    let h = Harness::new()?;
    let port = free_port()?;
    let events = h.sup().subscribe();
    let spec = h
        .sh("hung", &listener(port, 0.0, 1.0))
        .ready(Ready::Tcp(port))
        .health(
            Health::tcp(port)
                .interval(Duration::from_millis(100))
                .timeout(Duration::from_millis(200))
                .failures(3),
        )
        .stop_timeout(Duration::from_millis(500))
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(100))));
    h.sup().start(spec)?;
    let Event::Unhealthy { reason, .. } = expect_event(&events, SECS_10, "unhealthy", |e| {
        matches!(e, Event::Unhealthy { .. })
    })?
    else {
        unreachable!("the predicate takes only Unhealthy")
    };
    assert!(
        reason.contains("tcp 127.0.0.1"),
        "the reason names the check: {reason}"
    );
    expect_event(&events, SECS_10, "the restart", |e| {
        matches!(e, Event::Started { .. })
    })?;
    let info = h.sup().describe("hung")?;
    assert_eq!(info.restarts(), 1, "one restart");
    assert!(
        info.last_exit()
            .and_then(|e| e.reason())
            .is_some_and(|r| r.starts_with("unhealthy: tcp")),
        "the exit says why: {:?}",
        info.last_exit()
    );
    h.sup().stop("hung")?;
    h.finish()
}

#[test]
fn a_hanging_probe_does_not_delay_an_unrelated_restart() -> TestResult {
    let h = Harness::new()?;
    // Enough hanging probes to occupy every probe worker for seconds.
    for i in 0..6 {
        let spec = h.sh(&format!("slowprobe{i}"), "exec sleep 600").health(
            Health::command(["sleep", "5"])
                .interval(Duration::from_millis(50))
                .timeout(Duration::from_secs(5)),
        );
        h.sup().start(spec)?;
    }
    let events = h.sup().subscribe();
    h.sup().start(
        h.sh("crasher", "exit 1")
            .restart(RestartPolicy::always().backoff(Backoff::none())),
    )?;
    let t = Instant::now();
    for _ in 0..20 {
        expect_event(
            &events,
            SECS_5,
            "a restart",
            |e| matches!(e, Event::Started { name, .. } if name == "crasher"),
        )?;
    }
    // Twenty restarts while every probe hangs for 5 s: supervision did not wait on them.
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "twenty restarts took {:?}, as long as a hanging probe",
        t.elapsed()
    );
    h.sup().stop("crasher")?;
    h.finish()
}
