//! Nothing escapes: with cgroup containment, descendants that leave the process group
//! (`setsid`, double fork) are ended by a stop, by their main process's exit, and by the next
//! `open` after the host died. Skipped, with a printed reason, where no writable cgroup v2
//! hierarchy exists.

use crate::common::*;
use sheepdog::{Containment, RestartPolicy, Status, Supervisor};
use std::collections::HashSet;
use std::time::Duration;

/// A daemon that leaves the service's process group and session, then the main process.
const DAEMONIZE: &str = "(setsid sleep 600 &); exec sleep 600";

fn cgroups_or_skip(h: &Harness) -> bool {
    if h.sup().containment() == Containment::Cgroup {
        return true;
    }
    eprintln!("skipped: no writable cgroup v2 hierarchy here (needs root or a delegated subtree)");
    false
}

#[test]
fn a_setsid_daemon_does_not_survive_stop() {
    let h = Harness::new();
    if !cgroups_or_skip(&h) {
        return;
    }
    h.sup().start(h.sh("daemonizer", DAEMONIZE)).unwrap();
    let both = wait_until(SECS_5, || {
        (tagged_processes(&h.token).len() >= 2).then_some(())
    });
    assert!(
        both.is_some(),
        "the daemon started: {:?}",
        tagged_processes(&h.token)
    );
    h.sup().stop("daemonizer").unwrap();
    assert!(
        tagged_processes(&h.token).is_empty(),
        "the escaped daemon survived the stop"
    );
    h.finish();
}

#[test]
fn a_main_process_that_exits_takes_its_daemons_with_it() {
    let h = Harness::new();
    if !cgroups_or_skip(&h) {
        return;
    }
    let spec = h
        .sh("forker", "(setsid sleep 600 &); sleep 0.3; exit 0")
        .restart(RestartPolicy::never());
    h.sup().start(spec).unwrap();
    h.sup().wait_for("forker", Status::Exited, SECS_5).unwrap();
    assert!(
        tagged_processes(&h.token).is_empty(),
        "the daemon outlived its service"
    );
    h.finish();
}

#[test]
fn explicit_process_group_containment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::builder()
        .state_dir(dir.path())
        .containment(Containment::ProcessGroup)
        .open()
        .unwrap();
    assert_eq!(sup.containment(), Containment::ProcessGroup);
}

const SERVICES: usize = 5;
const TEST: &str = "containment::a_killed_host_leaves_no_escaped_daemon_after_reopen";

#[test]
fn a_killed_host_leaves_no_escaped_daemon_after_reopen() {
    if let (Some(dir), Some(token)) = (
        std::env::var_os("SHEEPDOG_HELPER_HOST"),
        std::env::var_os("SHEEPDOG_HELPER_TOKEN"),
    ) {
        let sup = Supervisor::open(dir).unwrap();
        for i in 0..SERVICES {
            let spec = sheepdog::ServiceSpec::new(format!("d{i}"), "/bin/sh")
                .args(["-c", DAEMONIZE])
                .env(TOKEN_VAR, token.to_str().unwrap());
            sup.start(spec).unwrap();
        }
        println!("ready");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    {
        let probe = Supervisor::open(&state).unwrap();
        if probe.containment() != Containment::Cgroup {
            eprintln!("skipped: no writable cgroup v2 hierarchy here");
            return;
        }
    }
    let token = new_token();
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture"])
        .env("SHEEPDOG_HELPER_HOST", &state)
        .env("SHEEPDOG_HELPER_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let before = wait_until(Duration::from_secs(30), || {
        let all: HashSet<u32> = tagged_processes(&token).into_iter().collect();
        (all.len() == 2 * SERVICES).then_some(all)
    });
    host.kill().unwrap();
    host.wait().unwrap();
    let before = before.expect("every service ran its main process and its daemon");
    // The main processes die with the host; the daemons are in their own sessions.
    let daemons = wait_until(SECS_10, || {
        let left = tagged_processes(&token);
        (left.len() == SERVICES).then_some(left)
    })
    .expect("PDEATHSIG ended the main processes only");

    let sup = Supervisor::open(&state).unwrap();
    for d in &daemons {
        assert!(!is_alive(*d), "daemon {d} of the dead host survived open");
    }
    let reclaimed: HashSet<u32> = sup
        .reclaimed()
        .into_iter()
        .flat_map(|(_, pids)| pids)
        .collect();
    for d in &daemons {
        assert!(
            reclaimed.contains(d),
            "daemon {d} is reported as reclaimed: {:?}",
            sup.reclaimed()
        );
    }
    let now = wait_until(SECS_10, || {
        let all: HashSet<u32> = tagged_processes(&token).into_iter().collect();
        (all.len() == 2 * SERVICES).then_some(all)
    })
    .expect("each service started once again");
    assert!(now.is_disjoint(&before));
    sup.shutdown().unwrap();
    let gone = wait_until(SECS_5, || tagged_processes(&token).is_empty().then_some(()));
    assert!(gone.is_some(), "leaked: {:?}", tagged_processes(&token));
}
