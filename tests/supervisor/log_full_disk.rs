//! When the log disk is full the pump keeps draining the service (which runs on), counts
//! what it drops (`log_dropped_bytes`), reports it (`Event::LogError`), and writes one
//! marker line, naming the bytes dropped and why, once writing works again. Needs root (a
//! tmpfs mounted on `logs/`); skipped otherwise.

use crate::prelude::*;
use sheepdog::{Event, LogPolicy, Status, Stream};

#[test]
fn a_full_disk_drops_and_counts_then_recovers_with_a_marker() -> TestResult {
    let mut h = Harness::unopened()?;
    let logs = h.state_dir().join("logs");
    // Mounted before the supervisor opens: it holds `logs/` open from then on.
    let _mount = match Mount::tmpfs(&logs, "256k") {
        Ok(m) => m,
        Err(e) => {
            return skip(
                test_name!("a_full_disk_drops_and_counts_then_recovers_with_a_marker"),
                format!("cannot mount a tmpfs ({e}); this test needs root"),
            );
        }
    };
    h.open(sheepdog::Supervisor::builder())?;
    let filler = fill(&logs)?;
    let events = h.sup().subscribe();
    let spec = h
        .sh("writer", "i=0; while :; do i=$((i+1)); echo \"line $i of a service that keeps writing\"; sleep 0.001; done")
        .log(LogPolicy::default().max_bytes(0));
    let pid = h.start_pid(spec)?;
    let Event::LogError { error, .. } = expect_event(&events, SECS_10, "a log error", |e| {
        matches!(e, Event::LogError { .. })
    })?
    else {
        unreachable!("the predicate takes only log errors")
    };
    assert!(
        error.contains("No space left"),
        "the log error says why: {error}"
    );
    let dropped = wait_until(SECS_5, || {
        let d = h.sup().describe("writer").ok()?.log_dropped_bytes();
        (d > 1000).then_some(d)
    })
    .context("dropped bytes are counted")?;
    let info = h.sup().describe("writer")?;
    assert_eq!(
        (info.status(), info.pid()),
        (Status::Online, Some(pid)),
        "the child keeps running"
    );
    std::fs::remove_file(&filler)?;
    let log = h.sup().log_path("writer", Stream::Stdout)?;
    let marker = wait_until(SECS_10, || {
        let text = String::from_utf8_lossy(&std::fs::read(&log).ok()?).into_owned();
        text.lines()
            .find(|l| l.starts_with("[sheepdog: ") && l.contains("bytes dropped"))
            .map(str::to_string)
    })
    .context("a marker line once writing works again")?;
    assert!(
        marker.contains("No space left"),
        "the marker says why: {marker}"
    );
    assert!(dropped > 0, "bytes were dropped");
    h.sup().stop("writer")?;
    drop(events);
    h.finish()
}
