//! The host's own children stay the host's: the supervisor collects its services' exits per
//! pidfd, never with `waitpid(-1)`, so the host's `wait` still gets its children's statuses;
//! and a host that reaps behind the supervisor's back (SIGCHLD ignored, another thread in
//! `waitpid(-1)`) still gets its services' exit statuses (from the pidfd, Linux 6.15+). In
//! every tier (the subreaper tier makes the host a reaper of orphans, never of its own
//! children).

use crate::prelude::*;
use sheepdog::{Backoff, RestartPolicy, Status};
use std::process::Command;
use std::time::Duration;

fn the_hosts_own_children_keep_their_exit_status(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    h.sup().start(
        h.sh("churn", "exit 1")
            .restart(RestartPolicy::always().backoff(Backoff::none())),
    )?;
    for code in [0, 3, 7] {
        let mut own = Command::new("/bin/sh")
            .args(["-c", &format!("sleep 0.05; exit {code}")])
            .spawn()?;
        let status = own.wait().context(format!(
            "{tier}: the host's child is not reaped by the supervisor"
        ))?;
        assert_eq!(
            status.code(),
            Some(code),
            "{tier}: the host's child's exit code"
        );
    }
    h.sup().stop("churn")?;
    h.finish()
}

per_tier!(the_hosts_own_children_keep_their_exit_status);

/// The variable that marks the run of the test in a host that reaps behind our back.
const REAPING_HOST: &str = "SHEEPDOG_TEST_REAPING_HOST";

/// Runs in a subprocess whose SIGCHLD disposition is SIG_IGN (the kernel then reaps children
/// itself), and where another thread reaps with `waitpid(-1)`: exit statuses still come back.
fn exit_statuses_survive_a_host_that_reaps_behind_our_back(tier: &Tier) -> TestResult {
    if !running_alone(REAPING_HOST, tier.test()) {
        // Shells do not pass an ignored SIGCHLD on; perl's %SIG does, and exec keeps it.
        let mut perl = Command::new("perl");
        perl.args(["-e", "$SIG{CHLD} = 'IGNORE'; exec @ARGV or die"]);
        return run_alone(perl, tier.test(), REAPING_HOST);
    }
    assert!(ignores_signal(17), "SIGCHLD is ignored in this host");
    // A second reaper in the host, as a careless library might run.
    std::thread::spawn(|| {
        loop {
            let _ = rustix::process::wait(rustix::process::WaitOptions::empty());
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let h = tier.harness()?;
    for (name, script, code) in [
        ("seven", "sleep 0.05; exit 7", 7),
        ("zero", "sleep 0.05; exit 0", 0),
    ] {
        h.sup()
            .start(h.sh(name, script).restart(RestartPolicy::never()))?;
        h.sup().wait_for(name, Status::Exited, SECS_5)?;
        let info = h.sup().describe(name)?;
        let exit = info
            .last_exit()
            .context("an exited service has a last exit")?;
        if exit.code().is_some() {
            assert_eq!(exit.code(), Some(code), "{tier}: {name}'s exit code");
        } else {
            println!("kernel without PIDFD_INFO_EXIT: the status is unknown, as documented");
            assert!(
                exit.is_unknown(),
                "{tier}: {name}'s exit is unknown, not made up"
            );
        }
    }
    h.finish()
}

per_tier!(exit_statuses_survive_a_host_that_reaps_behind_our_back);
