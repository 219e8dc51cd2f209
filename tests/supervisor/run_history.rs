//! Every run is recorded, newest first: its start, ready and end times, its exit code or
//! signal, its cause (`crashed`, `stopped`, `restarted`, `unhealthy`, `not ready`,
//! `spawn failed` with its errno, ...), the restart policy's decision, CPU from the reap and
//! the last lines of its output; the last `runs_kept` ended runs are kept.

use crate::prelude::*;
use sheepdog::{Backoff, Cause, Health, LogPolicy, Ready, RestartPolicy, Run, Status, Supervisor};
use std::time::Duration;

#[test]
fn history_records_crashes_stops_and_restarts() -> TestResult {
    let h = Harness::new()?;
    let count = h.dir.path().join("n");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -le 2 ] && exit 7; exec sleep 600",
        c = count.display()
    );
    let spec = h
        .sh("hist", &script)
        .restart(RestartPolicy::on_failure().backoff(Backoff::none()));
    h.sup().start(spec)?;
    wait_until(SECS_5, || {
        (h.sup().history("hist", 10).ok()?.len() == 3).then_some(())
    })
    .context("three runs")?;
    h.sup().wait_for("hist", Status::Online, SECS_5)?;
    // The third run has stored its count (a restart while it writes would truncate it).
    wait_until(SECS_5, || {
        (std::fs::read_to_string(&count).ok()?.trim() == "3").then_some(())
    })
    .context("the third run counted itself")?;
    h.sup().restart("hist")?;
    h.sup().stop("hist")?;
    let runs = h.sup().history("hist", 10)?;
    assert_eq!(runs.len(), 4, "four runs: {runs:?}");
    assert!(
        runs.windows(2).all(|w| w[0].id() > w[1].id()),
        "newest first: {runs:?}"
    );
    let codes: Vec<(Option<i32>, Option<i32>)> =
        runs.iter().rev().map(|r| (r.code(), r.signal())).collect();
    assert_eq!(
        codes,
        [
            (Some(7), None),
            (Some(7), None),
            (None, Some(15)),
            (None, Some(15))
        ],
        "two crashes, a restart and a stop: (code, signal), oldest first"
    );
    assert!(
        runs.iter().all(|r| r.ended_at().is_some() && r.pid() > 0),
        "every run ended and had a pid: {runs:?}"
    );
    assert_eq!(h.sup().history("hist", 1)?.len(), 1, "the limit is kept");
    h.finish()
}

/// Waits until `ended` runs of `name` have ended and their output was drained into the
/// record.
fn ended_runs(sup: &Supervisor, name: &str, ended: usize) -> TestResult<Vec<Run>> {
    wait_until(SECS_10, || {
        let runs = sup.history(name, 100).ok()?;
        let done = runs.iter().filter(|r| r.cause().is_some()).count() >= ended;
        done.then_some(runs)
    })
    .context(format!(
        "{name}: {ended} ended runs: {:?}",
        sup.history(name, 100)
    ))
}

#[test]
fn a_crash_record_has_its_cause_decision_usage_and_last_lines() -> TestResult {
    let h = Harness::new()?;
    // 30 lines to stdout, 3 to stderr, some CPU in a child it waits for, then exit 3.
    let script = "for i in $(seq 1 30); do echo \"out $i\"; done; \
                  echo err1 >&2; echo err2 >&2; printf 'err3 no newline' >&2; \
                  awk 'BEGIN { for (i = 0; i < 3000000; i++) s += i }'; exit 3";
    let spec = h.sh("crasher", script).restart(
        RestartPolicy::always()
            .backoff(Backoff::fixed(Duration::from_secs(60)))
            .max_restarts(10, Duration::from_secs(60)),
    );
    h.sup().start(spec)?;
    h.sup().wait_for("crasher", Status::Backoff, SECS_10)?;
    let runs = wait_until(SECS_10, || {
        let runs = h.sup().history("crasher", 10).ok()?;
        (!runs.is_empty() && !runs[0].last_stdout().is_empty()).then_some(runs)
    })
    .context("the run's last lines were recorded")?;
    let run = &runs[0];
    assert_eq!(run.code(), Some(3), "the exit code");
    assert_eq!(run.cause(), Some(Cause::Crashed), "the cause");
    assert_eq!(
        run.restart_delay(),
        Some(Duration::from_secs(60)),
        "the delay before the restart"
    );
    assert_eq!(
        run.decision(),
        Some("restart in 1m (1st restart in a row)"),
        "the policy's decision: {run:?}"
    );
    let want: String = (11..=30).map(|i| format!("out {i}\n")).collect();
    assert_eq!(run.last_stdout(), want, "the last 20 lines of stdout");
    assert_eq!(
        run.last_stderr(),
        "err1\nerr2\nerr3 no newline",
        "the last lines of stderr, the partial one too"
    );
    let usage = run.usage().context("usage from the reap")?;
    assert!(
        usage.user_cpu() + usage.system_cpu() > Duration::ZERO,
        "the awk it waited for counts: {usage:?}"
    );
    assert_eq!(run.ready_at(), Some(run.started_at()), "ready at once");
    h.finish()
}

#[test]
fn records_say_stopped_restarted_unhealthy_and_not_ready() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh("plain", "exec sleep 600"))?;
    h.sup().restart("plain")?;
    h.sup().stop("plain")?;
    let runs = ended_runs(h.sup(), "plain", 2)?;
    let causes: Vec<_> = runs.iter().map(|r| r.cause()).collect();
    assert_eq!(
        causes,
        [Some(Cause::Stopped), Some(Cause::Restarted)],
        "a restart, then a stop (newest first)"
    );
    assert!(
        runs.iter().all(|r| r.decision().is_none()),
        "the operator's acts have no policy decision: {runs:?}"
    );
    assert!(
        runs.iter().all(|r| r.usage().is_some()),
        "every reaped run has its usage: {runs:?}"
    );

    let sick = h
        .sh("sick", "exec sleep 600")
        .health(
            Health::command(["false"])
                .interval(Duration::from_millis(50))
                .failures(1),
        )
        .restart(RestartPolicy::never());
    h.sup().start(sick)?;
    let run = ended_runs(h.sup(), "sick", 1)?.remove(0);
    assert_eq!(run.cause(), Some(Cause::Unhealthy), "{run:?}");
    assert_eq!(
        run.signal(),
        Some(15),
        "an unhealthy run is stopped: {run:?}"
    );
    assert!(
        run.reason().is_some_and(|r| r.starts_with("unhealthy: ")),
        "the reason says unhealthy: {run:?}"
    );
    assert_eq!(
        run.decision(),
        Some("not restarted: the policy does not restart this exit"),
        "the policy's decision"
    );

    let slow = h
        .sh("slow", "exec sleep 600")
        .ready(Ready::Command(vec!["false".into()]))
        .ready_timeout(Duration::from_millis(200))
        .restart(RestartPolicy::never());
    h.sup().start(slow)?;
    let run = ended_runs(h.sup(), "slow", 1)?.remove(0);
    assert_eq!(run.cause(), Some(Cause::NotReady), "{run:?}");
    assert_eq!(run.ready_at(), None, "never ready");

    let ready = h
        .sh("late", "sleep 0.2; echo up; exec sleep 600")
        .ready(Ready::LogLine("^up$".into()));
    h.sup().start(ready)?;
    h.sup().wait_for("late", Status::Online, SECS_5)?;
    let run = h.sup().history("late", 1)?.remove(0);
    let ready_after = run
        .ready_at()
        .context("ready recorded")?
        .duration_since(run.started_at())?;
    assert!(
        ready_after >= Duration::from_millis(150),
        "ready when the line came, not at the start: {ready_after:?}"
    );
    h.finish()
}

#[test]
fn a_failed_restart_is_recorded_with_its_errno() -> TestResult {
    let h = Harness::new()?;
    // The program removes itself and crashes: the restart cannot find it.
    let program = h.dir.path().join("once.sh");
    std::fs::write(&program, "#!/bin/sh\nrm \"$0\"\nexit 1\n")?;
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let spec = sheepdog::ServiceSpec::new("vanish", &program)
        .env(TOKEN_VAR, &h.token)
        .restart(
            RestartPolicy::always()
                .backoff(Backoff::none())
                .max_restarts(2, Duration::from_secs(60)),
        );
    h.sup().start(spec)?;
    h.sup().wait_for("vanish", Status::Errored, SECS_10)?;
    let runs = h.sup().history("vanish", 10)?;
    let failed: Vec<_> = runs
        .iter()
        .filter(|r| r.cause() == Some(Cause::SpawnFailed))
        .collect();
    assert!(!failed.is_empty(), "failed spawns are recorded: {runs:?}");
    for run in failed {
        assert_eq!(run.pid(), 0, "a failed spawn has no pid: {run:?}");
        assert_eq!(run.errno(), Some(2), "ENOENT: {run:?}");
        assert!(
            run.reason().is_some_and(|r| r.contains("not found")),
            "the reason says not found: {run:?}"
        );
        assert!(run.decision().is_some(), "the policy decided: {run:?}");
    }
    assert_eq!(
        runs.last().and_then(|r| r.cause()),
        Some(Cause::Crashed),
        "the first run crashed"
    );
    h.finish()
}

#[test]
fn history_keeps_the_configured_number_of_runs() -> TestResult {
    let h = Harness::with(Supervisor::builder().runs_kept(5))?;
    let spec = h
        .sh("flap", "exit 1")
        .log(LogPolicy::default().tail(0, 0))
        .restart(
            RestartPolicy::always()
                .backoff(Backoff::none())
                .max_restarts(20, Duration::from_secs(60)),
        );
    h.sup().start(spec)?;
    h.sup().wait_for("flap", Status::Errored, SECS_10)?;
    let runs = h.sup().history("flap", 100)?;
    assert_eq!(runs.len(), 5, "five runs kept: {runs:#?}");
    assert!(
        runs.iter().all(|r| r.last_stdout().is_empty()),
        "no last lines kept with tail(0, 0)"
    );
    assert!(
        runs[0]
            .decision()
            .is_some_and(|d| d.starts_with("errored: crash loop")),
        "the newest run's decision: {:?}",
        runs[0]
    );
    h.finish()
}
