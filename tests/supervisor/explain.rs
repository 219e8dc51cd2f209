//! `explain` says why a service is in its status, for each status: backoff (after what, how
//! many restarts in a row, when the next start is, and the policy), waiting for a
//! dependency, online, stopped, exited and errored (with the error that made it so).

use crate::prelude::*;
use sheepdog::{Backoff, Condition, RestartPolicy, ServiceSpec, Status};
use std::time::Duration;

#[test]
fn explain_says_why_for_each_status() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("looping", "exit 1")
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_secs(30))));
    h.sup().start(spec)?;
    h.sup().wait_for("looping", Status::Backoff, SECS_5)?;
    let why = h.sup().explain("looping")?.to_string();
    assert!(
        why.starts_with("backoff: after exit code 1"),
        "after what: {why}"
    );
    assert!(
        why.contains("1st restart in a row, next start in"),
        "how many in a row, and when next: {why}"
    );
    assert!(why.contains("fixed backoff of 30s"), "the policy: {why}");

    h.sup().start(
        h.sh("gate", "exec sleep 600")
            .restart(RestartPolicy::never()),
    )?;
    h.sup().start(
        h.sh("waiter", "exec sleep 600")
            .after("gate", Condition::Exited0),
    )?;
    assert_eq!(
        h.sup().explain("waiter")?.to_string(),
        "starting: waiting for gate to be exited0",
        "a service waiting for its dependency"
    );

    let online = h.sup().explain("gate")?.to_string();
    assert!(online.starts_with("online: pid "), "online: {online}");

    h.sup().stop("gate")?;
    let stopped = h.sup().explain("gate")?.to_string();
    assert!(
        stopped.starts_with("stopped: stopped by the operator"),
        "stopped: {stopped}"
    );

    h.sup()
        .start(h.sh("done", "exit 0").restart(RestartPolicy::never()))?;
    h.sup().wait_for("done", Status::Exited, SECS_5)?;
    let exited = h.sup().explain("done")?.to_string();
    assert!(
        exited.starts_with("exited: exit code 0"),
        "exited: {exited}"
    );

    let err = h
        .sup()
        .start(ServiceSpec::new("ghost", "/no/such/program"))
        .err()
        .context("a program that does not exist cannot start")?;
    let errored = h.sup().explain("ghost")?.to_string();
    assert_eq!(
        errored,
        format!("errored: {err}"),
        "errored, with the error"
    );
    assert!(h.sup().explain("all").is_err(), "explain takes one service");
    h.finish()
}
