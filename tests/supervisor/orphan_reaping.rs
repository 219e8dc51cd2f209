//! A host that reaps orphans (`Orphans::Reap`: a child subreaper here, PID 1 in a container)
//! reaps every orphan re-parented to it, while its own children (in its process group) and
//! its services' main processes keep their exit statuses. Run alone, in a process of its
//! own: the flag and the SIGCHLD handler are process-wide.

use crate::prelude::*;
use sheepdog::{Orphans, RestartPolicy, Status, Supervisor};
use std::process::Command;
use std::time::Duration;

const ALONE: &str = "SHEEPDOG_TEST_ORPHAN_REAPER";

#[test]
fn orphans_are_reaped_and_the_hosts_own_children_keep_their_statuses() -> TestResult {
    let test = "orphan_reaping::orphans_are_reaped_and_the_hosts_own_children_keep_their_statuses";
    if !running_alone(ALONE, test) {
        return run_alone(Command::new("env"), test, ALONE);
    }
    let h = Harness::with(Supervisor::builder().orphans(Orphans::Reap))?;
    assert_eq!(h.sup().orphans(), Orphans::Reap);
    const N: u64 = 300;
    h.sup().start(h.sh(
        "orphaner",
        &format!("i=0; while [ $i -lt {N} ]; do (sleep 0.01 &); i=$((i+1)); done; exec sleep 600"),
    ))?;
    // A child of the host's own that is already a zombie while orphans keep coming.
    let mut late = Command::new("/bin/sh").args(["-c", "exit 5"]).spawn()?;
    let late_pid = late.id();
    let zombie = wait_until(SECS_5, || {
        stat_fields(late_pid)
            .is_some_and(|f| f[0] == "Z")
            .then_some(())
    });
    assert!(zombie.is_some(), "the host's child exited");
    // The host's children spawned and waited for during the burst.
    for round in 0..20 {
        let code = round % 7;
        let status = Command::new("/bin/sh")
            .args(["-c", &format!("sleep 0.01; exit {code}")])
            .status()?;
        assert_eq!(
            status.code(),
            Some(code),
            "the host's own child, round {round}"
        );
    }
    // The services' main processes: their statuses go to history, not to the orphan pass.
    for code in [3, 0, 9] {
        let name = format!("oneshot{code}");
        h.sup().start(
            h.sh(&name, &format!("sleep 0.05; exit {code}"))
                .restart(RestartPolicy::never()),
        )?;
        h.sup().wait_for(&name, Status::Exited, SECS_10)?;
        let exit = h.sup().describe(&name)?.last_exit().cloned();
        assert_eq!(
            exit.and_then(|e| e.code()),
            Some(code),
            "{name}'s exit code is the service's, reaped through its pidfd"
        );
    }
    let reaped = wait_until(Duration::from_secs(60), || {
        (h.sup().orphans_reaped() >= N).then_some(())
    });
    assert!(
        reaped.is_some(),
        "{} of {N} orphans reaped",
        h.sup().orphans_reaped()
    );
    assert_eq!(
        late.wait()?.code(),
        Some(5),
        "the host's zombie child was left for its own wait"
    );
    let left = wait_until(SECS_5, || zombie_children().is_empty().then_some(()));
    assert!(
        left.is_some(),
        "zombies left: {}",
        describe_processes(&zombie_children())
    );
    h.sup().stop("orphaner")?;
    h.finish()
}
