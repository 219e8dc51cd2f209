//! Events come in the order things happen, and a subscriber that never reads delays
//! nothing: its bounded queue (4096 events) fills, the rest is dropped for it alone, and it
//! is told so (`Event::Lagged`).

use crate::prelude::*;
use sheepdog::{Backoff, Event, LogPolicy, RestartPolicy};
use std::time::Duration;

#[test]
fn a_crash_emits_exited_restarting_backoff_and_started_in_order() -> TestResult {
    let h = Harness::new()?;
    let events = h.sup().subscribe();
    h.sup().start(
        h.sh("ev", "sleep 0.05; exit 2")
            .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(50)))),
    )?;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let e = events.recv_timeout(SECS_5).context("an event")?;
        assert_eq!(e.name(), Some("ev"), "an event of the service: {e:?}");
        seen.push(e);
    }
    // Each run is ready at once (`Ready::Immediately`) and says so.
    assert!(
        matches!(seen[0], Event::Started { .. }),
        "first Started: {seen:?}"
    );
    assert!(
        matches!(seen[1], Event::Ready { .. }),
        "then Ready: {seen:?}"
    );
    assert!(
        matches!(&seen[2], Event::Exited { exit, .. } if exit.code() == Some(2)),
        "then Exited with code 2: {seen:?}"
    );
    assert!(
        matches!(&seen[3], Event::Restarting { reason, delay, .. }
            if reason.starts_with("exit code 2") && *delay == Duration::from_millis(50)),
        "then Restarting, with the reason and the delay: {seen:?}"
    );
    assert!(
        matches!(seen[4], Event::Backoff { delay, .. } if delay == Duration::from_millis(50)),
        "then Backoff: {seen:?}"
    );
    assert!(
        matches!(seen[5], Event::Started { .. }),
        "then Started again: {seen:?}"
    );
    h.sup().stop("ev")?;
    expect_event(&events, SECS_5, "stopped", |e| {
        matches!(e, Event::Stopped { .. })
    })?;
    h.sup().delete("ev")?;
    expect_event(&events, SECS_5, "deleted", |e| {
        matches!(e, Event::Deleted { .. })
    })?;
    h.finish()
}

#[test]
fn a_subscriber_that_never_reads_lags_and_delays_nothing() -> TestResult {
    let h = Harness::new()?;
    let idle = h.sup().subscribe(); // never read until the end
    let spec = h
        .sh("flap", "exit 1")
        .log(LogPolicy::default().tail(0, 0))
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    h.sup().start(spec)?;
    // Each restart emits at least Exited, Restarting and Started: 1500 restarts are past the
    // 4096 events a subscription holds, and the restarts went on past that point.
    let restarted = wait_until(Duration::from_secs(30), || {
        (h.sup().describe("flap").ok()?.restarts() >= 1500).then_some(())
    });
    assert!(
        restarted.is_some(),
        "restarts stalled at {}",
        h.sup().describe("flap")?.restarts()
    );
    h.sup().delete("flap")?;
    let mut received = 0;
    let mut missed = 0;
    while let Some(event) = idle.try_recv() {
        match event {
            Event::Lagged { missed: m } => missed += m,
            _ => received += 1,
        }
    }
    assert!(
        received <= 4096,
        "{received} events queued, more than the bound"
    );
    assert!(missed > 0, "the subscription was told it lagged");
    h.finish()
}
