//! What a child gets: /dev/null on stdin, only fds 0-2, default signal dispositions, the
//! host's environment with the spec's changes; and what the host keeps: its own children.

use crate::common::*;
use sheepdog::{RestartPolicy, ServiceSpec, Status, Stream};
use std::time::Duration;

fn run_once(h: &Harness, name: &str, script: &str) -> Vec<String> {
    h.sup()
        .start(h.sh(name, script).restart(RestartPolicy::never()))
        .unwrap();
    h.sup().wait_for(name, Status::Exited, SECS_5).unwrap();
    let log = h.sup().log_path(name, Stream::Stdout).unwrap();
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn stdin_is_dev_null() {
    let h = Harness::new();
    let out = run_once(
        &h,
        "reader",
        "if read x; then echo got; else echo eof; fi; readlink /proc/$$/fd/0",
    );
    assert_eq!(out, ["eof", "/dev/null"]);
    h.finish();
}

#[test]
fn no_fd_beyond_stdio_leaks_in() {
    let h = Harness::new();
    // The test harness itself may hold inherited fds without O_CLOEXEC; open one more here.
    let _held = std::fs::File::open("/dev/zero").unwrap();
    let out = run_once(&h, "fds", "ls /proc/$$/fd");
    let fds: Vec<u32> = out.iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(fds, [0, 1, 2], "the child saw fds {fds:?}");
    h.finish();
}

#[test]
fn each_service_is_its_own_process_group() {
    let h = Harness::new();
    let out = run_once(&h, "pgrp", "echo $$; ps -o pgid= -p $$ | tr -d ' '");
    assert_eq!(out[0], out[1], "the leader's pgid is its pid");
    h.finish();
}

#[test]
fn environment_is_the_hosts_with_the_specs_changes() {
    let h = Harness::new();
    std::env::set_var("SHEEPDOG_HOST_ONLY", "from-host");
    std::env::set_var("SHEEPDOG_REMOVE_ME", "x");
    let spec = h
        .sh(
            "env",
            "echo \"$SHEEPDOG_HOST_ONLY|$SPEC_VAR|${SHEEPDOG_REMOVE_ME-unset}\"",
        )
        .env("SPEC_VAR", "from-spec")
        .env_remove("SHEEPDOG_REMOVE_ME")
        .restart(RestartPolicy::never());
    h.sup().start(spec).unwrap();
    h.sup().wait_for("env", Status::Exited, SECS_5).unwrap();
    let out = std::fs::read_to_string(h.sup().log_path("env", Stream::Stdout).unwrap()).unwrap();
    assert_eq!(out, "from-host|from-spec|unset\n");

    let cleared = ServiceSpec::new("clear", "/bin/sh")
        .args(["-c", "env | sort"])
        .env_clear()
        .env("ONLY", "1")
        .restart(RestartPolicy::never());
    h.sup().start(cleared).unwrap();
    h.sup().wait_for("clear", Status::Exited, SECS_5).unwrap();
    let out = std::fs::read_to_string(h.sup().log_path("clear", Stream::Stdout).unwrap()).unwrap();
    assert!(out.contains("ONLY=1"), "{out}");
    assert!(!out.contains("SHEEPDOG_HOST_ONLY"), "{out}");
    h.finish();
}

#[test]
fn restarts_by_the_policy_reuse_the_environment_of_their_start() {
    let h = Harness::new();
    std::env::set_var("SHEEPDOG_TEST_ERA", "first");
    let spec = h
        .sh(
            "era",
            "echo \"$SHEEPDOG_TEST_ERA ${SHEEPDOG_RUN%%:*}\"; sleep 0.02; exit 1",
        )
        .env("SHEEPDOG_RUN", "forged")
        .restart(RestartPolicy::always().backoff(sheepdog::Backoff::none()));
    h.sup().start(spec).unwrap();
    let log = h.sup().log_path("era", Stream::Stdout).unwrap();
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    wait_until(SECS_5, || (lines().len() >= 2).then_some(())).expect("two runs");
    std::env::set_var("SHEEPDOG_TEST_ERA", "second");
    let seen = lines().len();
    wait_until(SECS_5, || (lines().len() >= seen + 3).then_some(())).expect("three more runs");
    let restarted = lines().len();
    h.sup().restart("era").unwrap();
    wait_until(SECS_5, || {
        lines()[restarted..]
            .iter()
            .any(|l| l.starts_with("second"))
            .then_some(())
    })
    .expect("an operator's restart reads the host's environment again");
    h.sup().stop("era").unwrap();
    let all = lines();
    assert!(
        all[..restarted].iter().all(|l| l.starts_with("first ")),
        "policy restarts kept the environment of the start: {all:?}"
    );
    // The run's own marker wins over the spec's: it is how containment finds the service's
    // processes.
    assert!(
        all.iter()
            .all(|l| !l.ends_with(" forged") && l.len() > "first ".len()),
        "{all:?}"
    );
    h.finish();
}

#[test]
fn stderr_goes_to_its_own_log() {
    let h = Harness::new();
    run_once(&h, "split", "echo out; echo err >&2");
    let err = std::fs::read_to_string(h.sup().log_path("split", Stream::Stderr).unwrap()).unwrap();
    assert_eq!(err, "err\n");
    assert!(h
        .sup()
        .log_path("split", Stream::Stderr)
        .unwrap()
        .ends_with("logs/split.err.log"));
    h.finish();
}

#[test]
fn the_hosts_own_children_keep_their_exit_status() {
    let h = Harness::new();
    h.sup()
        .start(
            h.sh("churn", "exit 1")
                .restart(RestartPolicy::always().backoff(sheepdog::Backoff::none())),
        )
        .unwrap();
    for code in [0, 3, 7] {
        let mut own = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("sleep 0.05; exit {code}")])
            .spawn()
            .unwrap();
        let status = own
            .wait()
            .expect("the host's child is not reaped by the supervisor");
        assert_eq!(status.code(), Some(code));
    }
    h.sup().stop("churn").unwrap();
    h.finish();
}

/// Runs in a subprocess whose SIGTERM disposition is SIG_IGN (set by `sh -c trap`, and kept
/// across exec); its services must still die on the default SIGTERM.
#[test]
fn a_host_that_ignores_sigterm_still_stops_services_with_it() {
    if std::env::var_os("SHEEPDOG_IGNORING_HOST").is_some() {
        assert!(ignores_signal(15), "SIGTERM is ignored in this host");
        let h = Harness::new();
        let spec = h
            .sh("plain", "exec sleep 600")
            .stop_timeout(Duration::from_secs(30));
        h.sup().start(spec).unwrap();
        let t = std::time::Instant::now();
        h.sup().stop("plain").unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "stop waited for the timeout: the child ignored SIGTERM"
        );
        assert_eq!(
            h.sup()
                .describe("plain")
                .unwrap()
                .last_exit()
                .unwrap()
                .signal(),
            Some(15)
        );
        h.finish();
        return;
    }
    let mut sh = std::process::Command::new("/bin/sh");
    sh.args(["-c", "trap '' TERM; exec \"$@\"", "sh"]);
    run_alone(
        sh,
        "child_hygiene::a_host_that_ignores_sigterm_still_stops_services_with_it",
        "SHEEPDOG_IGNORING_HOST",
    );
}

/// Runs in a subprocess whose SIGCHLD disposition is SIG_IGN (the kernel then reaps children
/// itself), and where another thread reaps with `waitpid(-1)`: exit statuses still come back
/// (from the pidfd, Linux 6.15+).
#[test]
fn exit_statuses_survive_a_host_that_reaps_behind_our_back() {
    if std::env::var_os("SHEEPDOG_REAPING_HOST").is_some() {
        assert!(ignores_signal(17), "SIGCHLD is ignored in this host");
        // A second reaper in the host, as a careless library might run.
        std::thread::spawn(|| loop {
            let _ = rustix::process::wait(rustix::process::WaitOptions::empty());
            std::thread::sleep(Duration::from_millis(1));
        });
        let h = Harness::new();
        for (name, script, code) in [
            ("seven", "sleep 0.05; exit 7", 7),
            ("zero", "sleep 0.05; exit 0", 0),
        ] {
            h.sup()
                .start(h.sh(name, script).restart(RestartPolicy::never()))
                .unwrap();
            h.sup().wait_for(name, Status::Exited, SECS_5).unwrap();
            let info = h.sup().describe(name).unwrap();
            let exit = info.last_exit().unwrap();
            let kernel_knows = exit.code().is_some();
            if kernel_knows {
                assert_eq!(exit.code(), Some(code), "{name}");
            } else {
                eprintln!("kernel without PIDFD_INFO_EXIT: the status is unknown, as documented");
                assert!(exit.is_unknown());
            }
        }
        h.finish();
        return;
    }
    // Shells do not pass an ignored SIGCHLD on; perl's %SIG does, and exec keeps it.
    let mut perl = std::process::Command::new("perl");
    perl.args(["-e", "$SIG{CHLD} = 'IGNORE'; exec @ARGV or die"]);
    run_alone(
        perl,
        "child_hygiene::exit_statuses_survive_a_host_that_reaps_behind_our_back",
        "SHEEPDOG_REAPING_HOST",
    );
}
