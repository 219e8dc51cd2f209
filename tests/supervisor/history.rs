//! Run history and explanations.

use crate::common::*;
use sheepdog::{Backoff, Condition, RestartPolicy, Status};
use std::time::Duration;

#[test]
fn history_records_crashes_stops_and_restarts() {
    let h = Harness::new();
    let count = h.dir.path().join("n");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -le 2 ] && exit 7; exec sleep 600",
        c = count.display()
    );
    let spec = h
        .sh("hist", &script)
        .restart(RestartPolicy::on_failure().backoff(Backoff::none()));
    h.sup().start(spec).unwrap();
    wait_until(SECS_5, || {
        (h.sup().history("hist", 10).unwrap().len() == 3).then_some(())
    })
    .expect("three runs");
    h.sup().wait_for("hist", Status::Online, SECS_5).unwrap();
    h.sup().restart("hist").unwrap();
    h.sup().stop("hist").unwrap();
    let runs = h.sup().history("hist", 10).unwrap();
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert!(
        runs.windows(2).all(|w| w[0].id() > w[1].id()),
        "newest first"
    );
    let codes: Vec<(Option<i32>, Option<i32>)> =
        runs.iter().rev().map(|r| (r.code(), r.signal())).collect();
    assert_eq!(
        codes,
        [
            (Some(7), None),
            (Some(7), None),
            (None, Some(15)),
            (None, Some(15))
        ]
    );
    assert!(runs.iter().all(|r| r.ended_at().is_some() && r.pid() > 0));
    assert_eq!(h.sup().history("hist", 1).unwrap().len(), 1, "limit");
    h.finish();
}

#[test]
fn explain_says_why_for_each_status() {
    let h = Harness::new();
    let spec = h
        .sh("looping", "exit 1")
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_secs(30))));
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("looping", Status::Backoff, SECS_5)
        .unwrap();
    let why = h.sup().explain("looping").unwrap().to_string();
    assert!(why.starts_with("backoff: after exit code 1"), "{why}");
    assert!(why.contains("1st restart in a row, next start in"), "{why}");
    assert!(why.contains("fixed backoff of 30s"), "{why}");

    h.sup()
        .start(
            h.sh("gate", "exec sleep 600")
                .restart(RestartPolicy::never()),
        )
        .unwrap();
    h.sup()
        .start(
            h.sh("waiter", "exec sleep 600")
                .after("gate", Condition::Exited0),
        )
        .unwrap();
    assert_eq!(
        h.sup().explain("waiter").unwrap().to_string(),
        "starting: waiting for gate to be exited0"
    );

    let online = h.sup().explain("gate").unwrap().to_string();
    assert!(online.starts_with("online: pid "), "{online}");

    h.sup().stop("gate").unwrap();
    assert!(h
        .sup()
        .explain("gate")
        .unwrap()
        .to_string()
        .starts_with("stopped: stopped by the operator"));

    h.sup()
        .start(h.sh("done", "exit 0").restart(RestartPolicy::never()))
        .unwrap();
    h.sup().wait_for("done", Status::Exited, SECS_5).unwrap();
    let exited = h.sup().explain("done").unwrap().to_string();
    assert!(exited.starts_with("exited: exit code 0"), "{exited}");

    let err = h
        .sup()
        .start(sheepdog::ServiceSpec::new("ghost", "/no/such/program"))
        .unwrap_err();
    let errored = h.sup().explain("ghost").unwrap().to_string();
    assert_eq!(errored, format!("errored: {err}"));
    assert!(h.sup().explain("all").is_err());
    h.finish();
}

#[test]
fn a_service_over_its_memory_limit_is_restarted_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let token = new_token();
    let sup = sheepdog::Supervisor::builder()
        .state_dir(dir.path())
        .memory_sample_interval(Duration::from_millis(100))
        .open()
        .unwrap();
    let hog = sheepdog::ServiceSpec::new("hog", "/bin/sh")
        .args([
            "-c",
            "x=$(head -c 60000000 /dev/zero | tr '\\0' a); sleep 600",
        ])
        .env(TOKEN_VAR, &token)
        .max_memory(30 << 20)
        .restart(RestartPolicy::never());
    let lean = sheepdog::ServiceSpec::new("lean", "sleep")
        .arg("600")
        .env(TOKEN_VAR, &token)
        .max_memory(30 << 20);
    sup.start(hog).unwrap();
    sup.start(lean).unwrap();
    sup.wait_for("hog", Status::Exited, SECS_10).unwrap();
    let exit = sup.describe("hog").unwrap().last_exit().cloned().unwrap();
    assert!(
        exit.reason().unwrap().starts_with("memory limit: "),
        "{exit}"
    );
    assert_eq!(sup.history("hog", 1).unwrap()[0].reason(), exit.reason());
    assert_eq!(
        sup.describe("lean").unwrap().status(),
        Status::Online,
        "under its limit"
    );
    sup.shutdown().unwrap();
    assert!(wait_until(SECS_5, || tagged_processes(&token).is_empty().then_some(())).is_some());
}
