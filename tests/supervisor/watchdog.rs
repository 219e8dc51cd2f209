//! Output watchdogs with real children writing (or not) to their pipes: a silent run is
//! ended, a line matching a pattern ends it, the cause is in the run history and `explain`.

use crate::prelude::*;
use sheepdog::{Backoff, Cause, RestartPolicy, Watchdog};
use std::time::Duration;

fn policy() -> RestartPolicy {
    RestartPolicy::always().backoff(Backoff::fixed(Duration::from_secs(60)))
}

/// The first run of `name` that ended (waited for).
fn first_ended(h: &Harness, name: &str) -> sheepdog::Run {
    wait_until(SECS_10, || {
        let runs = h.sup().history(name, 10).ok()?;
        runs.into_iter().find(|r| r.ended_at().is_some())
    })
    .unwrap_or_else(|| panic!("no run of {name} ended"))
}

#[test]
fn a_run_silent_for_its_watchdog_period_is_ended_and_a_talking_one_is_not() -> TestResult {
    let h = Harness::new()?;
    let dog = || Watchdog::new().silence(Duration::from_millis(800));
    h.sup()
        .start(
            h.sh("quiet", "echo started; exec sleep 600")
                .watchdog(dog())
                .restart(policy()),
        )
        .unwrap();
    h.sup()
        .start(
            h.sh("talker", "while true; do echo tick; sleep 0.1; done")
                .watchdog(dog())
                .restart(policy()),
        )
        .unwrap();
    let run = first_ended(&h, "quiet");
    assert_eq!(run.cause(), Some(Cause::Silent));
    assert_eq!(run.reason(), Some("watchdog: no output for 800ms"));
    assert_eq!(run.signal(), Some(15));
    let text = h.sup().explain("quiet").unwrap().to_string();
    assert!(text.contains("ended by a trigger (silent)"), "{text}");
    let talker = h.sup().history("talker", 10).unwrap();
    assert!(
        talker.iter().all(|r| r.ended_at().is_none()),
        "writing every 100 ms keeps it running: {talker:?}"
    );
    h.finish()
}

#[test]
fn a_line_matching_the_watchdog_pattern_ends_the_run_with_the_line_recorded() -> TestResult {
    let h = Harness::new()?;
    h.sup()
        .start(
            h.sh(
                "db",
                "echo all good; sleep 0.2; echo 'ERROR: deadlock detected (tx 42)' >&2; exec sleep 600",
            )
            .watchdog(Watchdog::new().pattern("deadlock detected"))
            .restart(policy()),
        )
        .unwrap();
    let run = first_ended(&h, "db");
    assert_eq!(run.cause(), Some(Cause::OutputMatched));
    assert_eq!(
        run.reason(),
        Some("watchdog: output matched 'deadlock detected': ERROR: deadlock detected (tx 42)")
    );
    let text = h.sup().explain("db").unwrap().to_string();
    assert!(
        text.contains("ended by a trigger (output matched)"),
        "{text}"
    );
    h.finish()
}
