//! Found while modelling: the window between a main process's exit and the end of its
//! output. A service whose main process exits while a descendant that left its process
//! group (`setsid`, like any daemon that double-forks) keeps its stdout open drains its log
//! for up to half a second. Meanwhile it must not show the dead pid as running, and a start
//! must run it again.

use crate::prelude::*;
use sheepdog::{RestartPolicy, ServiceSpec};
use std::time::Duration;

/// Starts that service; returns the spec and the pid of the main process, once it is gone.
fn exited_while_its_output_drains(h: &Harness) -> TestResult<(ServiceSpec, u32)> {
    let spec = h
        .sh("s", "setsid sleep 1 & sleep 0.1; exit 0")
        .restart(RestartPolicy::never());
    let pid = h.start_pid(spec.clone())?;
    wait_until(SECS_5, || (!is_alive(pid)).then_some(())).context("the main process exits")?;
    Ok((spec, pid))
}

#[test]
fn a_process_that_exited_is_not_reported_as_running_while_its_output_drains() -> TestResult {
    let h = Harness::new()?;
    let (_, pid) = exited_while_its_output_drains(&h)?;
    // The supervisor sees an exit within about a millisecond; allow it fifty.
    let seen = wait_until(Duration::from_millis(50), || {
        let info = h.sup().describe("s").ok()?;
        (info.pid() != Some(pid)).then_some(())
    });
    let info = h.sup().describe("s")?;
    assert!(
        seen.is_some(),
        "pid {pid} is dead, yet the service shows {} with pid {:?}",
        info.status(),
        info.pid()
    );
    h.finish()
}

#[test]
fn a_start_right_after_an_exit_runs_the_service_again() -> TestResult {
    let h = Harness::new()?;
    let (spec, pid) = exited_while_its_output_drains(&h)?;
    let info = h.sup().start(spec)?;
    let restarted = info.pid().filter(|p| *p != pid && is_alive(*p));
    assert!(
        restarted.is_some(),
        "start of an exited service returned {} with pid {:?} (the dead one is {pid})",
        info.status(),
        info.pid()
    );
    h.finish()
}
