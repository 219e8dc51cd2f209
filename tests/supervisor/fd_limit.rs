//! The fd budget allows what fits: with an open-file limit of 44 (the supervisor holds about
//! 28 itself, its store's two connections among them), one service starts (it needs about
//! six fds), and the check still refuses what cannot fit, before anything is saved. Guards a defect: the check asked for 64 fds plus 5 per service, and refused even
//! one service under a limit below about 69.

use crate::prelude::*;
use sheepdog::{ErrorKind, Status, Stream, Supervisor};

/// The variable that marks the run of the test under the low limit.
const LOW_LIMIT: &str = "SHEEPDOG_TEST_LOW_FD_LIMIT";

/// In a process of its own whose open-file limit, soft and hard, is 44 (set by `ulimit`,
/// kept across exec): the supervisor cannot raise it.
#[test]
fn one_service_starts_under_an_fd_limit_of_44() -> TestResult {
    let test = test_name!("one_service_starts_under_an_fd_limit_of_44");
    if !running_alone(LOW_LIMIT, test) {
        let mut sh = std::process::Command::new("/bin/sh");
        sh.args(["-c", "ulimit -n 44 && exec \"$@\"", "sh"]);
        return run_alone(sh, test, LOW_LIMIT);
    }
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("the open-file limit in /proc/self/limits")?;
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>()[3..5],
        ["44", "44"],
        "the soft and hard limits: {line}"
    );
    // The control socket's thread holds about ten fds of its own (socket, epoll, wakers,
    // the directory, the registration's): off here, where every fd counts.
    let h = Harness::with(Supervisor::builder().control_socket(false))?;
    println!("{} fds open with the supervisor open", fd_count() - 1);
    let info = h.sup().start(h.sh("one", "echo hi; exec sleep 600"))?;
    assert_eq!(info.status(), Status::Online, "one service fits");
    let log = h.sup().log_path("one", Stream::Stdout)?;
    assert_eq!(
        wait_lines(&log, 1, SECS_5)?,
        ["hi"],
        "and its output is logged"
    );
    // What cannot fit is still refused before anything is saved.
    let many = (0..10).map(|i| h.sh(&format!("more{i}"), "exec sleep 600"));
    let results = h.sup().start_many(many)?;
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!refused.is_empty(), "ten more services fit in 44 fds?");
    for err in &refused {
        assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
        assert!(
            err.to_string().contains("file descriptors"),
            "the cause: {err}"
        );
    }
    for (i, result) in results.iter().enumerate() {
        if result.is_err() {
            let name = format!("more{i}");
            assert!(h.sup().describe(&name).is_err(), "{name} was not saved");
        }
    }
    h.finish()
}
