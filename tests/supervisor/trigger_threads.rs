//! Triggers add no thread and no fd per service: fifty services with a watch, a schedule and
//! a watchdog share one inotify instance and one timerfd in the supervision thread's epoll.

use crate::prelude::*;
use sheepdog::{Schedule, Watch, Watchdog};
use std::time::Duration;

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Threads:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap()
}

/// How many of this process's fds link to `target` (`anon_inode:inotify`, …).
fn fds_to(target: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains(target))
        })
        .count()
}

/// In a subprocess, so that the counts are this supervisor's alone.
#[test]
fn fifty_services_with_triggers_share_one_inotify_and_one_timerfd_and_no_thread() -> TestResult {
    if std::env::var_os("SHEEPDOG_TRIGGER_COUNT").is_some() {
        let h = Harness::new()?;
        let (inotify, timerfd, with_none) = (fds_to("inotify"), fds_to("timerfd"), threads());
        for i in 0..50 {
            let dir = h.dir.path().join(format!("src{i}"));
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            let spec = h
                .sh(&format!("s{i}"), "echo hi; exec sleep 600")
                .watch(Watch::new([dir.to_str().unwrap()]))
                .schedule(Schedule::restart("0 4 * * *"))
                .watchdog(Watchdog::new().silence(Duration::from_secs(600)));
            h.sup().start(spec).unwrap();
        }
        assert_eq!(threads(), with_none, "threads grew with triggers");
        assert_eq!(
            fds_to("inotify"),
            inotify + 1,
            "one inotify instance for every watch"
        );
        assert_eq!(
            fds_to("timerfd"),
            timerfd + 1,
            "one timerfd for every schedule"
        );
        println!(
            "threads: {with_none}; inotify instances {} → {}; timerfds {timerfd} → {}",
            inotify,
            fds_to("inotify"),
            fds_to("timerfd")
        );
        return h.finish();
    }
    // `env` execs its arguments: the test binary, alone, with the variable set.
    run_alone(
        std::process::Command::new("env"),
        "trigger_threads::fifty_services_with_triggers_share_one_inotify_and_one_timerfd_and_no_thread",
        "SHEEPDOG_TRIGGER_COUNT",
    )
}
