//! The fd budget allows what fits: with an open-file limit of 40, one service starts (it
//! needs about six fds), and the check still refuses what cannot fit. Before, it asked for
//! 64 fds plus 5 per service, and refused even one service under a limit below about 69.

use crate::common::*;
use sheepdog::{ErrorKind, Status};

/// In a process of its own whose open-file limit, soft and hard, is 40 (set by `ulimit`,
/// kept across exec): the supervisor cannot raise it.
#[test]
fn one_service_starts_under_an_fd_limit_of_40() {
    if std::env::var_os("SHEEPDOG_LOW_FD_LIMIT").is_none() {
        let mut sh = std::process::Command::new("/bin/sh");
        sh.args(["-c", "ulimit -n 40 && exec \"$@\"", "sh"]);
        return run_alone(
            sh,
            "fd_limit::one_service_starts_under_an_fd_limit_of_40",
            "SHEEPDOG_LOW_FD_LIMIT",
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>()[3..5],
        ["40", "40"],
        "{line}"
    );
    // The control socket's thread holds about ten fds of its own (socket, epoll, wakers,
    // the directory, the registration's): off here, where every fd counts.
    let dir = tempfile::tempdir().unwrap();
    let sup = sheepdog::Supervisor::builder()
        .state_dir(dir.path().join("state"))
        .control_socket(false)
        .open()
        .unwrap();
    let h = Harness {
        sup: Some(sup),
        dir,
        token: new_token(),
    };
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() - 1;
    println!("{open} fds open with the supervisor open");
    let info = h
        .sup()
        .start(h.sh("one", "echo hi; exec sleep 600"))
        .unwrap();
    assert_eq!(info.status(), Status::Online);
    let log = h.sup().log_path("one", sheepdog::Stream::Stdout).unwrap();
    assert_eq!(wait_lines(&log, 1, SECS_5), ["hi"]);
    // What cannot fit is still refused before anything is saved.
    let many = (0..10).map(|i| h.sh(&format!("more{i}"), "exec sleep 600"));
    let results = h.sup().start_many(many).unwrap();
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!refused.is_empty(), "ten more services fit in 40 fds?");
    for err in &refused {
        assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
        assert!(err.to_string().contains("file descriptors"), "{err}");
    }
    for (i, result) in results.iter().enumerate() {
        if result.is_err() {
            let name = format!("more{i}");
            assert!(h.sup().describe(&name).is_err(), "{name} was not saved");
        }
    }
    h.finish();
}
