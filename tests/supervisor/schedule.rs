//! Schedules on the real wall clock (a realtime timerfd in the supervision thread's epoll):
//! a job runs at its ticks and waits between them, a scheduled restart replaces a
//! long-running process, and a job with `catch_up` runs once at `open` for the ticks missed
//! while no host ran.

use crate::prelude::*;
use sheepdog::{Cause, Schedule, Status};
use std::time::{Duration, SystemTime};

/// The lines of a file (none if it does not exist yet).
fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[test]
fn a_job_runs_at_each_tick_and_waits_between_them() -> TestResult {
    let h = Harness::new()?;
    let out = h.dir.path().join("ran");
    let spec = h
        .sh("tick", &format!("echo ran >> {}", out.display()))
        .schedule(Schedule::run("* * * * * *").time_zone("UTC"));
    let info = h.sup().start(spec).unwrap();
    assert_eq!(
        info.status(),
        Status::Scheduled,
        "no run before the first tick"
    );
    let next = info.next_scheduled().expect("describe shows the next tick");
    assert!(next > SystemTime::now() - Duration::from_secs(1));
    assert!(next <= SystemTime::now() + Duration::from_secs(1));
    assert!(
        h.sup()
            .explain("tick")
            .unwrap()
            .to_string()
            .contains("next scheduled run at"),
        "{}",
        h.sup().explain("tick").unwrap()
    );
    wait_until(SECS_10, || (lines(&out) >= 2).then_some(())).expect("two ticks, two runs");
    h.sup()
        .wait_for("tick", Status::Scheduled, SECS_5)
        .expect("a successful run waits for the next tick");
    let runs = h.sup().history("tick", 10).unwrap();
    assert!(
        runs.iter()
            .all(|r| r.code() == Some(0) || r.ended_at().is_none())
    );
    h.finish()
}

#[test]
fn a_scheduled_restart_replaces_the_process_and_records_why() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("nightly", "exec sleep 600")
        .schedule(Schedule::restart("*/2 * * * * *").time_zone("UTC"));
    let first = h.sup().start(spec).unwrap().pid().unwrap();
    let second = wait_until(SECS_10, || {
        let info = h.sup().describe("nightly").ok()?;
        (info.status() == Status::Online && info.pid() != Some(first)).then(|| info.pid())
    })
    .expect("restarted at a tick");
    assert!(second.is_some());
    assert!(!is_alive(first), "the old process is gone");
    let runs = h.sup().history("nightly", 10).unwrap();
    let ended = runs.iter().find(|r| r.pid() == first).unwrap();
    assert_eq!(ended.cause(), Some(Cause::Scheduled));
    assert_eq!(ended.signal(), Some(15), "stopped with its stop signal");
    h.finish()
}

#[test]
fn a_job_with_catch_up_runs_once_at_open_for_the_ticks_missed_while_down() -> TestResult {
    let mut h = Harness::new()?;
    let out = h.dir.path().join("ran");
    let spec = h
        .sh("backup", &format!("echo ran >> {}", out.display()))
        .schedule(
            Schedule::run("*/2 * * * * *")
                .time_zone("UTC")
                .catch_up(true),
        );
    h.sup().start(spec).unwrap();
    h.sup.take().unwrap().shutdown().unwrap();
    let down = SystemTime::now();
    let before = lines(&out);
    // Down for at least two ticks (wall-clock time has to pass for a tick to be missed).
    wait_until(SECS_10, || {
        (SystemTime::now() >= down + Duration::from_secs(4)).then_some(())
    })
    .unwrap();
    h.sup = Some(sheepdog::Supervisor::open(h.state_dir()).unwrap());
    wait_until(SECS_5, || (lines(&out) > before).then_some(())).expect("a catch-up run at open");
    let text = h.sup().explain("backup").unwrap().to_string();
    assert!(text.contains("ticks missed"), "{text}");
    h.finish()
}
