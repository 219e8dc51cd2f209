//! When a main process ends by itself, what it leaves is ended too. Members of its process
//! group are killed at once, before any restart, in every tier. A daemon that left the group
//! (`setsid`) is killed at once in the cgroup tier (the run's cgroup must be empty) and the
//! subreaper tier (the orphan is claimed by its marker), and the run records that it "left
//! processes running". In the process-group tier nothing holds such a daemon: it runs on
//! while the service is exited or in backoff, but no longer than the service's next stop,
//! delete or shutdown, which still look for the service's escaped processes, send them the
//! stop signal, SIGKILL them after the stop timeout, and return only once they are gone.

use crate::prelude::*;
use sheepdog::{Backoff, Containment, ErrorKind, Event, RestartPolicy, ServiceSpec, Status};
use std::time::Duration;

/// A background child of a leader that crashes is killed with the crash.
fn a_group_member_left_by_a_crashed_leader_is_killed(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let events = h.sup().subscribe();
    let spec = h
        .sh("leaky", "sleep 600 & sleep 0.1; exit 1")
        .restart(RestartPolicy::never());
    let pid = h.start_pid(spec)?;
    expect_event(&events, SECS_5, "the exit", |e| {
        matches!(e, Event::Exited { .. })
    })?;
    let gone = wait_until(SECS_5, || group_members(pid).is_empty().then_some(()));
    assert!(
        gone.is_some(),
        "{tier}: the background sleep outlived its crashed leader: {:?}",
        group_members(pid)
    );
    h.finish()
}

per_tier!(a_group_member_left_by_a_crashed_leader_is_killed);

/// A service whose main process leaves a daemon (which ignores SIGTERM when `stubborn`)
/// and exits with `code`.
fn leaves_a_daemon(h: &Harness, name: &str, code: i32, stubborn: bool) -> ServiceSpec {
    let trap = if stubborn { "trap '' TERM; " } else { "" };
    h.sh(
        name,
        &format!("({trap}setsid sleep 600 &); sleep 0.2; exit {code}"),
    )
    .stop_timeout(Duration::from_millis(300))
}

/// Waits until the main process is gone: in the process-group tier its daemon runs on
/// (nothing else holds it); in the others it is gone too, and the run says why.
fn after_the_exit(tier: &Tier, h: &Harness, name: &str) -> TestResult {
    if tier.is(Containment::ProcessGroup) {
        h.wait_for_tagged(1, "the daemon runs on alone")?;
        return Ok(());
    }
    let left = wait_until(SECS_5, || h.tagged().is_empty().then_some(()));
    assert!(
        left.is_some(),
        "{tier}: the daemon outlived its main process: {}",
        describe_processes(&h.tagged())
    );
    let run = h.sup().history(name, 1)?.remove(0);
    assert!(
        run.reason()
            .is_some_and(|r| r.contains("left processes running")),
        "{tier}: the run records that it left processes running: {run:?}"
    );
    Ok(())
}

fn a_daemon_left_by_an_exited_main_process(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let spec = leaves_a_daemon(&h, "forker", 0, false).restart(RestartPolicy::never());
    h.sup().start(spec)?;
    h.sup().wait_for("forker", Status::Exited, SECS_5)?;
    after_the_exit(tier, &h, "forker")?;
    h.finish()
}

per_tier!(a_daemon_left_by_an_exited_main_process);

/// A stop of an exited service ends the daemon its run left, whether or not the daemon
/// ignores the stop signal, and keeps the service's status.
fn a_stop_of_an_exited_service_ends_what_its_run_left(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    for stubborn in [false, true] {
        let spec = leaves_a_daemon(&h, "once", 0, stubborn).restart(RestartPolicy::never());
        h.sup().start(spec)?;
        h.sup().wait_for("once", Status::Exited, SECS_5)?;
        after_the_exit(tier, &h, "once")?;
        assert_eq!(h.sup().stop("once")?, 1, "the stop acts on the service");
        let left = h.tagged();
        assert!(
            left.is_empty(),
            "{tier}, daemon ignoring SIGTERM {stubborn}: the daemon outlived the stop: {}",
            describe_processes(&left)
        );
        assert_eq!(
            status(h.sup(), "once"),
            Status::Exited,
            "{tier}: the stop keeps an exited service's status"
        );
    }
    h.finish()
}

per_tier!(a_stop_of_an_exited_service_ends_what_its_run_left);

fn a_stop_during_backoff_ends_what_the_crashed_run_left(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let spec = leaves_a_daemon(&h, "crashy", 1, true)
        .restart(RestartPolicy::on_failure().backoff(Backoff::fixed(Duration::from_secs(30))));
    h.sup().start(spec)?;
    h.sup().wait_for("crashy", Status::Backoff, SECS_5)?;
    after_the_exit(tier, &h, "crashy")?;
    h.sup().stop("crashy")?;
    let left = h.tagged();
    assert!(
        left.is_empty(),
        "{tier}: the daemon outlived the stop: {}",
        describe_processes(&left)
    );
    assert_eq!(
        status(h.sup(), "crashy"),
        Status::Stopped,
        "{tier}: stopped"
    );
    h.finish()
}

per_tier!(a_stop_during_backoff_ends_what_the_crashed_run_left);

fn a_delete_ends_what_an_exited_service_left(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let spec = leaves_a_daemon(&h, "gone", 0, false).restart(RestartPolicy::never());
    h.sup().start(spec)?;
    h.sup().wait_for("gone", Status::Exited, SECS_5)?;
    after_the_exit(tier, &h, "gone")?;
    assert_eq!(h.sup().delete("gone")?, 1, "the delete acts on the service");
    let left = h.tagged();
    assert!(
        left.is_empty(),
        "{tier}: the daemon outlived the delete: {}",
        describe_processes(&left)
    );
    assert_eq!(
        h.sup().describe("gone").map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "{tier}: the service is deleted"
    );
    h.finish()
}

per_tier!(a_delete_ends_what_an_exited_service_left);

fn shutdown_ends_what_an_exited_service_left(tier: &Tier) -> TestResult {
    let mut h = tier.harness()?;
    let spec = leaves_a_daemon(&h, "last", 0, true).restart(RestartPolicy::never());
    h.sup().start(spec)?;
    h.sup().wait_for("last", Status::Exited, SECS_5)?;
    after_the_exit(tier, &h, "last")?;
    h.take().shutdown()?;
    let left = h.tagged();
    assert!(
        left.is_empty(),
        "{tier}: the daemon outlived shutdown: {}",
        describe_processes(&left)
    );
    h.finish()
}

per_tier!(shutdown_ends_what_an_exited_service_left);
