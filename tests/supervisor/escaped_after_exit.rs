//! Process-group tier: a `setsid` daemon left by a main process that exited by itself runs
//! on while the service is exited or in backoff (nothing else holds it), but no longer than
//! the service's next stop or delete. Such a stop has no run to end: it still looks for the
//! service's escaped processes, sends them the stop signal, SIGKILLs them after the stop
//! timeout, and returns only once they are gone.

use crate::common::*;
use sheepdog::{Backoff, Containment, RestartPolicy, ServiceSpec, Status, Supervisor};
use std::time::Duration;

fn process_group_supervisor(dir: &std::path::Path) -> Supervisor {
    Supervisor::builder()
        .state_dir(dir)
        .containment(Containment::ProcessGroup)
        .open()
        .unwrap()
}

/// A service whose main process leaves a daemon (which ignores SIGTERM when `stubborn`)
/// and exits with `code`.
fn leaves_a_daemon(name: &str, token: &str, code: i32, stubborn: bool) -> ServiceSpec {
    let trap = if stubborn { "trap '' TERM; " } else { "" };
    ServiceSpec::new(name, "/bin/sh")
        .args([
            "-c",
            &format!("({trap}setsid sleep 600 &); sleep 0.2; exit {code}"),
        ])
        .env(TOKEN_VAR, token)
        .stop_timeout(Duration::from_millis(300))
}

fn wait_for_the_daemon_alone(token: &str, what: &str) {
    // The main process is gone; its daemon is not.
    let alone = wait_until(SECS_5, || {
        (tagged_processes(token).len() == 1).then_some(())
    });
    assert!(alone.is_some(), "{what}: {:?}", tagged_processes(token));
}

#[test]
fn a_stop_of_an_exited_service_ends_the_daemon_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let sup = process_group_supervisor(dir.path());
    for stubborn in [false, true] {
        let token = new_token();
        let spec = leaves_a_daemon("once", &token, 0, stubborn).restart(RestartPolicy::never());
        sup.start(spec).unwrap();
        sup.wait_for("once", Status::Exited, SECS_5).unwrap();
        wait_for_the_daemon_alone(&token, "exited");
        assert_eq!(sup.stop("once").unwrap(), 1);
        assert!(
            tagged_processes(&token).is_empty(),
            "stubborn {stubborn}: the daemon outlived the stop: {:?}",
            tagged_processes(&token)
        );
        assert_eq!(status(&sup, "once"), Status::Exited, "its status is kept");
    }
    sup.shutdown().unwrap();
}

#[test]
fn a_stop_during_backoff_ends_the_daemon_the_crashed_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let sup = process_group_supervisor(dir.path());
    let token = new_token();
    let spec = leaves_a_daemon("crashy", &token, 1, true)
        .restart(RestartPolicy::on_failure().backoff(Backoff::fixed(Duration::from_secs(30))));
    sup.start(spec).unwrap();
    sup.wait_for("crashy", Status::Backoff, SECS_5).unwrap();
    wait_for_the_daemon_alone(&token, "in backoff");
    sup.stop("crashy").unwrap();
    assert!(
        tagged_processes(&token).is_empty(),
        "the daemon outlived the stop: {:?}",
        tagged_processes(&token)
    );
    assert_eq!(status(&sup, "crashy"), Status::Stopped);
    sup.shutdown().unwrap();
}

#[test]
fn a_delete_ends_the_daemon_an_exited_service_left() {
    let dir = tempfile::tempdir().unwrap();
    let sup = process_group_supervisor(dir.path());
    let token = new_token();
    let spec = leaves_a_daemon("gone", &token, 0, false).restart(RestartPolicy::never());
    sup.start(spec).unwrap();
    sup.wait_for("gone", Status::Exited, SECS_5).unwrap();
    wait_for_the_daemon_alone(&token, "exited");
    assert_eq!(sup.delete("gone").unwrap(), 1);
    assert!(
        tagged_processes(&token).is_empty(),
        "the daemon outlived the delete: {:?}",
        tagged_processes(&token)
    );
    assert!(sup.describe("gone").is_err());
    sup.shutdown().unwrap();
}

#[test]
fn shutdown_ends_the_daemon_an_exited_service_left() {
    let dir = tempfile::tempdir().unwrap();
    let sup = process_group_supervisor(dir.path());
    let token = new_token();
    let spec = leaves_a_daemon("last", &token, 0, true).restart(RestartPolicy::never());
    sup.start(spec).unwrap();
    sup.wait_for("last", Status::Exited, SECS_5).unwrap();
    wait_for_the_daemon_alone(&token, "exited");
    sup.shutdown().unwrap();
    assert!(
        tagged_processes(&token).is_empty(),
        "the daemon outlived shutdown: {:?}",
        tagged_processes(&token)
    );
}
