//! Run history and explanations.

use crate::common::*;
use sheepdog::{
    Backoff, Cause, Condition, Containment, Health, LogPolicy, Ready, RestartPolicy, Status,
};
use std::time::Duration;

#[test]
fn history_records_crashes_stops_and_restarts() {
    let h = Harness::new();
    let count = h.dir.path().join("n");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -le 2 ] && exit 7; exec sleep 600",
        c = count.display()
    );
    let spec = h
        .sh("hist", &script)
        .restart(RestartPolicy::on_failure().backoff(Backoff::none()));
    h.sup().start(spec).unwrap();
    wait_until(SECS_5, || {
        (h.sup().history("hist", 10).unwrap().len() == 3).then_some(())
    })
    .expect("three runs");
    h.sup().wait_for("hist", Status::Online, SECS_5).unwrap();
    // The third run has stored its count (a restart while it writes would truncate it).
    wait_until(SECS_5, || {
        (std::fs::read_to_string(&count).ok()?.trim() == "3").then_some(())
    })
    .expect("the third run counted itself");
    h.sup().restart("hist").unwrap();
    h.sup().stop("hist").unwrap();
    let runs = h.sup().history("hist", 10).unwrap();
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert!(
        runs.windows(2).all(|w| w[0].id() > w[1].id()),
        "newest first"
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
        ]
    );
    assert!(runs.iter().all(|r| r.ended_at().is_some() && r.pid() > 0));
    assert_eq!(h.sup().history("hist", 1).unwrap().len(), 1, "limit");
    h.finish();
}

#[test]
fn explain_says_why_for_each_status() {
    let h = Harness::new();
    let spec = h
        .sh("looping", "exit 1")
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_secs(30))));
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("looping", Status::Backoff, SECS_5)
        .unwrap();
    let why = h.sup().explain("looping").unwrap().to_string();
    assert!(why.starts_with("backoff: after exit code 1"), "{why}");
    assert!(why.contains("1st restart in a row, next start in"), "{why}");
    assert!(why.contains("fixed backoff of 30s"), "{why}");

    h.sup()
        .start(
            h.sh("gate", "exec sleep 600")
                .restart(RestartPolicy::never()),
        )
        .unwrap();
    h.sup()
        .start(
            h.sh("waiter", "exec sleep 600")
                .after("gate", Condition::Exited0),
        )
        .unwrap();
    assert_eq!(
        h.sup().explain("waiter").unwrap().to_string(),
        "starting: waiting for gate to be exited0"
    );

    let online = h.sup().explain("gate").unwrap().to_string();
    assert!(online.starts_with("online: pid "), "{online}");

    h.sup().stop("gate").unwrap();
    assert!(h
        .sup()
        .explain("gate")
        .unwrap()
        .to_string()
        .starts_with("stopped: stopped by the operator"));

    h.sup()
        .start(h.sh("done", "exit 0").restart(RestartPolicy::never()))
        .unwrap();
    h.sup().wait_for("done", Status::Exited, SECS_5).unwrap();
    let exited = h.sup().explain("done").unwrap().to_string();
    assert!(exited.starts_with("exited: exit code 0"), "{exited}");

    let err = h
        .sup()
        .start(sheepdog::ServiceSpec::new("ghost", "/no/such/program"))
        .unwrap_err();
    let errored = h.sup().explain("ghost").unwrap().to_string();
    assert_eq!(errored, format!("errored: {err}"));
    assert!(h.sup().explain("all").is_err());
    h.finish();
}

/// Waits until the newest run of `name` has ended and its output was drained into the record.
fn last_run(sup: &sheepdog::Supervisor, name: &str, ended: usize) -> Vec<sheepdog::Run> {
    wait_until(SECS_10, || {
        let runs = sup.history(name, 100).unwrap();
        let done = runs.iter().filter(|r| r.cause().is_some()).count() >= ended;
        done.then_some(runs)
    })
    .unwrap_or_else(|| panic!("{name}: {ended} ended runs: {:?}", sup.history(name, 100)))
}

#[test]
fn a_crash_record_has_its_cause_decision_usage_and_last_lines() {
    let h = Harness::new();
    // 30 lines to stdout, 3 to stderr, some CPU in a child it waits for, then exit 3.
    let script = "for i in $(seq 1 30); do echo \"out $i\"; done; \
                  echo err1 >&2; echo err2 >&2; printf 'err3 no newline' >&2; \
                  awk 'BEGIN { for (i = 0; i < 3000000; i++) s += i }'; exit 3";
    let spec = h.sh("crasher", script).restart(
        RestartPolicy::always()
            .backoff(Backoff::fixed(Duration::from_secs(60)))
            .max_restarts(10, Duration::from_secs(60)),
    );
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("crasher", Status::Backoff, SECS_10)
        .unwrap();
    let runs = wait_until(SECS_10, || {
        let runs = h.sup().history("crasher", 10).unwrap();
        (!runs.is_empty() && !runs[0].last_stdout().is_empty()).then_some(runs)
    })
    .expect("the run's last lines were recorded");
    let run = &runs[0];
    assert_eq!(run.code(), Some(3));
    assert_eq!(run.cause(), Some(Cause::Crashed));
    assert_eq!(run.restart_delay(), Some(Duration::from_secs(60)));
    assert_eq!(
        run.decision(),
        Some("restart in 1m (1st restart in a row)"),
        "{run:?}"
    );
    let want: String = (11..=30).map(|i| format!("out {i}\n")).collect();
    assert_eq!(run.last_stdout(), want, "the last 20 lines");
    assert_eq!(run.last_stderr(), "err1\nerr2\nerr3 no newline");
    let usage = run.usage().expect("usage from the reap");
    assert!(
        usage.user_cpu() + usage.system_cpu() > Duration::ZERO,
        "the awk it waited for counts: {usage:?}"
    );
    assert_eq!(run.ready_at(), Some(run.started_at()), "ready at once");
    h.finish();
}

#[test]
fn records_say_stopped_restarted_unhealthy_and_not_ready() {
    let h = Harness::new();
    h.sup().start(h.sh("plain", "exec sleep 600")).unwrap();
    h.sup().restart("plain").unwrap();
    h.sup().stop("plain").unwrap();
    let runs = last_run(h.sup(), "plain", 2);
    let causes: Vec<_> = runs.iter().map(|r| r.cause()).collect();
    assert_eq!(causes, [Some(Cause::Stopped), Some(Cause::Restarted)]);
    assert!(runs.iter().all(|r| r.decision().is_none()), "{runs:?}");
    assert!(runs.iter().all(|r| r.usage().is_some()), "{runs:?}");

    let sick = h
        .sh("sick", "exec sleep 600")
        .health(
            Health::command(["false"])
                .interval(Duration::from_millis(50))
                .failures(1),
        )
        .restart(RestartPolicy::never());
    h.sup().start(sick).unwrap();
    let run = &last_run(h.sup(), "sick", 1)[0];
    assert_eq!(run.cause(), Some(Cause::Unhealthy), "{run:?}");
    assert_eq!(run.signal(), Some(15));
    assert!(run.reason().unwrap().starts_with("unhealthy: "), "{run:?}");
    assert_eq!(
        run.decision(),
        Some("not restarted: the policy does not restart this exit")
    );

    let slow = h
        .sh("slow", "exec sleep 600")
        .ready(Ready::Command(vec!["false".into()]))
        .ready_timeout(Duration::from_millis(200))
        .restart(RestartPolicy::never());
    h.sup().start(slow).unwrap();
    let run = &last_run(h.sup(), "slow", 1)[0];
    assert_eq!(run.cause(), Some(Cause::NotReady), "{run:?}");
    assert_eq!(run.ready_at(), None);

    let ready = h
        .sh("late", "sleep 0.2; echo up; exec sleep 600")
        .ready(Ready::LogLine("^up$".into()));
    h.sup().start(ready).unwrap();
    h.sup().wait_for("late", Status::Online, SECS_5).unwrap();
    let run = &h.sup().history("late", 1).unwrap()[0];
    let ready_after = run
        .ready_at()
        .expect("ready recorded")
        .duration_since(run.started_at())
        .unwrap();
    assert!(ready_after >= Duration::from_millis(150), "{ready_after:?}");
    h.finish();
}

#[test]
fn a_failed_restart_is_recorded_with_its_errno() {
    let h = Harness::new();
    // The program removes itself and crashes: the restart cannot find it.
    let program = h.dir.path().join("once.sh");
    std::fs::write(&program, "#!/bin/sh\nrm \"$0\"\nexit 1\n").unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let spec = sheepdog::ServiceSpec::new("vanish", program.to_str().unwrap())
        .env(TOKEN_VAR, &h.token)
        .restart(
            RestartPolicy::always()
                .backoff(Backoff::none())
                .max_restarts(2, Duration::from_secs(60)),
        );
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("vanish", Status::Errored, SECS_10)
        .unwrap();
    let runs = h.sup().history("vanish", 10).unwrap();
    let failed: Vec<_> = runs
        .iter()
        .filter(|r| r.cause() == Some(Cause::SpawnFailed))
        .collect();
    assert!(!failed.is_empty(), "{runs:?}");
    for run in failed {
        assert_eq!(run.pid(), 0);
        assert_eq!(run.errno(), Some(2), "ENOENT: {run:?}");
        assert!(run.reason().unwrap().contains("not found"), "{run:?}");
        assert!(run.decision().is_some(), "{run:?}");
    }
    assert_eq!(runs.last().unwrap().cause(), Some(Cause::Crashed));
    h.finish();
}

#[test]
fn history_keeps_the_configured_number_of_runs() {
    let dir = tempfile::tempdir().unwrap();
    let token = new_token();
    let sup = sheepdog::Supervisor::builder()
        .state_dir(dir.path())
        .runs_kept(5)
        .open()
        .unwrap();
    let spec = sheepdog::ServiceSpec::new("flap", "/bin/sh")
        .args(["-c", "exit 1"])
        .env(TOKEN_VAR, &token)
        .log(LogPolicy::default().tail(0, 0))
        .restart(
            RestartPolicy::always()
                .backoff(Backoff::none())
                .max_restarts(20, Duration::from_secs(60)),
        );
    sup.start(spec).unwrap();
    sup.wait_for("flap", Status::Errored, SECS_10).unwrap();
    let runs = sup.history("flap", 100).unwrap();
    assert_eq!(runs.len(), 5, "{runs:#?}");
    assert!(runs.iter().all(|r| r.last_stdout().is_empty()));
    assert!(runs[0]
        .decision()
        .unwrap()
        .starts_with("errored: crash loop"));
    sup.shutdown().unwrap();
    assert!(wait_until(SECS_5, || tagged_processes(&token).is_empty().then_some(())).is_some());
}

/// Resident bytes of `pid` from /proc/<pid>/statm.
fn resident_bytes(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[test]
fn stats_sum_every_process_of_a_service_as_proc_shows_them() {
    let h = Harness::new();
    let info = h
        .sup()
        .start(h.sh("trio", "sleep 600 & sleep 600 & exec sleep 600"))
        .unwrap();
    let pgid = info.pid().unwrap();
    // Three sleeps (the shell has exec'd), whose memory no longer changes.
    let members = wait_until(SECS_5, || {
        let m = group_members(pgid);
        let sleeping = m.iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        (m.len() == 3 && sleeping).then_some(m)
    })
    .expect("three sleeps in the group");
    // A sleep that has just exec'd may still fault pages in: compare with /proc while the
    // group's memory holds still across the call.
    let rss_now = || -> u64 { members.iter().map(|&p| resident_bytes(p)).sum() };
    let (stats, rss) = wait_until(SECS_5, || {
        let before = rss_now();
        let stats = h.sup().stats("trio").unwrap().remove(0);
        (rss_now() == before).then_some((stats, before))
    })
    .expect("the group's memory settles");
    assert_eq!(stats.name(), "trio");
    assert_eq!(stats.processes(), 3);
    assert_eq!(stats.threads(), 3);
    assert_eq!(stats.rss_bytes(), rss, "the sum over /proc");

    // A busy loop shows as a busy CPU, measured over the interval between two calls.
    h.sup().start(h.sh("busy", "while :; do :; done")).unwrap();
    let busy = wait_until(SECS_10, || {
        let cpu = h.sup().stats("busy").unwrap()[0].cpu_percent();
        (cpu > 40.0).then_some(cpu)
    });
    assert!(busy.is_some(), "a spinning shell uses a core");
    let idle = h.sup().stats("trio").unwrap()[0].cpu_percent();
    assert!(idle < 5.0, "sleepers use no CPU: {idle}");

    // Under cgroup containment a member that left the group still counts.
    h.sup()
        .start(h.sh("escaper", "setsid sleep 600 & exec sleep 600"))
        .unwrap();
    let want = if h.sup().containment() == Containment::Cgroup {
        2
    } else {
        1
    };
    let counted = wait_until(SECS_5, || {
        (h.sup().stats("escaper").unwrap()[0].processes() == want).then_some(())
    });
    assert!(
        counted.is_some(),
        "{:?}: {} processes",
        h.sup().containment(),
        h.sup().stats("escaper").unwrap()[0].processes()
    );
    let all = h.sup().stats("all").unwrap();
    assert_eq!(all.len(), 3);
    h.finish();
}

#[test]
fn a_subscriber_that_never_reads_lags_and_delays_nothing() {
    let h = Harness::new();
    let idle = h.sup().subscribe(); // never read until the end
    let spec = h
        .sh("flap", "exit 1")
        .log(LogPolicy::default().tail(0, 0))
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    h.sup().start(spec).unwrap();
    // Each restart emits at least Exited, Restarting and Started: 1500 restarts are past the
    // 4096 events a subscription holds, and the restarts went on past that point.
    let restarted = wait_until(Duration::from_secs(30), || {
        (h.sup().describe("flap").unwrap().restarts() >= 1500).then_some(())
    });
    assert!(
        restarted.is_some(),
        "restarts stalled at {}",
        h.sup().describe("flap").unwrap().restarts()
    );
    h.sup().delete("flap").unwrap();
    let mut received = 0;
    let mut missed = 0;
    while let Some(event) = idle.try_recv() {
        match event {
            sheepdog::Event::Lagged { missed: m } => missed += m,
            _ => received += 1,
        }
    }
    assert!(received <= 4096, "{received} queued");
    assert!(missed > 0, "the subscription was told it lagged");
    h.finish();
}
