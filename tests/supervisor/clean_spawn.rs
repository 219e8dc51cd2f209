//! What a child gets, whatever the host holds: /dev/null on stdin, only fds 0-2 (in the
//! cgroup tier the spawn holds a cgroup's fd too), a process group of its own, and default
//! signal dispositions (a host that ignores SIGTERM does not pass that on). In every tier.

use crate::prelude::*;
use sheepdog::{RestartPolicy, Status, Stream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `script` once as the service `name`; returns what it printed.
fn run_once(h: &Harness, name: &str, script: &str) -> TestResult<Vec<String>> {
    h.sup()
        .start(h.sh(name, script).restart(RestartPolicy::never()))?;
    h.sup().wait_for(name, Status::Exited, SECS_5)?;
    Ok(lines_of(&h.sup().log_path(name, Stream::Stdout)?))
}

fn stdin_is_dev_null(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let out = run_once(
        &h,
        "reader",
        "if read x; then echo got; else echo eof; fi; readlink /proc/$$/fd/0",
    )?;
    assert_eq!(
        out,
        ["eof", "/dev/null"],
        "{tier}: what stdin gives, and what it is"
    );
    h.finish()
}

per_tier!(stdin_is_dev_null);

fn no_fd_beyond_stdio_leaks_in(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    // The test harness itself may hold inherited fds without O_CLOEXEC; open one more here.
    let _held = std::fs::File::open("/dev/zero")?;
    let fds = run_once(&h, "fds", "ls /proc/$$/fd")?;
    assert_eq!(fds, ["0", "1", "2"], "{tier}: the fds the child saw");
    h.finish()
}

per_tier!(no_fd_beyond_stdio_leaks_in);

fn each_service_leads_its_own_process_group(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let out = run_once(&h, "pgrp", "echo $$; ps -o pgid= -p $$ | tr -d ' '")?;
    assert_eq!(out.len(), 2, "{tier}: the pid and the pgid: {out:?}");
    assert_eq!(out[0], out[1], "{tier}: the leader's pgid is its pid");
    h.finish()
}

per_tier!(each_service_leads_its_own_process_group);

/// The variable that marks the run of the test in a host that ignores SIGTERM.
const IGNORING_HOST: &str = "SHEEPDOG_TEST_IGNORING_HOST";

/// Runs in a subprocess whose SIGTERM disposition is SIG_IGN (set by `sh -c trap`, and kept
/// across exec); its services must still die on the default SIGTERM.
fn a_host_that_ignores_sigterm_still_stops_services_with_it(tier: &Tier) -> TestResult {
    if !running_alone(IGNORING_HOST, tier.test()) {
        let mut sh = Command::new("/bin/sh");
        sh.args(["-c", "trap '' TERM; exec \"$@\"", "sh"]);
        return run_alone(sh, tier.test(), IGNORING_HOST);
    }
    assert!(ignores_signal(15), "SIGTERM is ignored in this host");
    let h = tier.harness()?;
    let spec = h
        .sh("plain", "exec sleep 600")
        .stop_timeout(Duration::from_secs(30));
    h.sup().start(spec)?;
    let t = Instant::now();
    h.sup().stop("plain")?;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "{tier}: the stop waited for the timeout: the child ignored SIGTERM"
    );
    let exit = h.sup().describe("plain")?.last_exit().cloned();
    assert_eq!(
        exit.and_then(|e| e.signal()),
        Some(15),
        "{tier}: the child died of SIGTERM"
    );
    h.finish()
}

per_tier!(a_host_that_ignores_sigterm_still_stops_services_with_it);
