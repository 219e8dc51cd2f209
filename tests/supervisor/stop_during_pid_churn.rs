//! A stop-all while another process keeps creating short-lived ones: every service is
//! stopped and nothing of them is left, though the pids handed out during the stop are
//! mostly the other process's (the process-group tier looks among them for processes its
//! runs started during the stop).

use crate::prelude::*;
use sheepdog::Status;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A loop of `/bin/true`, one after the other, outside the supervisor: ended by its pid.
struct Churn(Child);

impl Churn {
    fn start() -> TestResult<Churn> {
        let child = Command::new("sh")
            .args(["-c", "while :; do /bin/true; done"])
            .stdin(Stdio::null())
            .spawn()
            .context("the churn loop starts")?;
        Ok(Churn(child))
    }

    /// Ends the loop (and the `/bin/true` it may be running, which ends by itself) and
    /// checks that it is gone.
    fn end(mut self) -> TestResult {
        let pid = self.0.id();
        assert!(is_alive(pid), "the churn loop ran all through the stop");
        self.0.kill().context("the churn loop is killed")?;
        self.0.wait().context("the churn loop is reaped")?;
        assert!(!is_alive(pid), "the churn loop {pid} is gone");
        Ok(())
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn a_stop_all_beside_pid_churn_stops_everything(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let churn = Churn::start()?;
    // Half start a daemon in a session of its own when the stop signal comes (found among
    // the new pids only), half just end.
    let mut names = Vec::new();
    for i in 0..16 {
        let name = format!("svc{i}");
        let script = if i % 2 == 0 {
            "trap '(setsid sleep 600 &); exit 0' TERM; while :; do sleep 1; done"
        } else {
            "exec sleep 600"
        };
        let spec = h.sh(&name, script).stop_timeout(Duration::from_secs(1));
        h.sup().start(spec)?;
        names.push(name);
    }
    h.wait_for_tagged(24, "sixteen main processes and eight sleeps")?;
    h.sup().stop("all")?;
    for name in &names {
        assert_eq!(
            status(h.sup(), name),
            Status::Stopped,
            "{tier}: {name} is stopped"
        );
    }
    let left = h.tagged();
    assert!(
        left.is_empty(),
        "{tier}: left after the stop-all beside pid churn: {}",
        describe_processes(&left)
    );
    churn.end()?;
    h.finish()
}

per_tier!(a_stop_all_beside_pid_churn_stops_everything);
