//! Dependencies: a service waits for the condition of each service it comes `after`
//! (started, ready, exited with 0); services start in dependency waves and stop in reverse;
//! a failed setup never lets its dependent start; cycles and unknown names are invalid; and
//! `restart_with` restarts the dependents that ask for it, and only those.

use crate::prelude::*;
use sheepdog::{Condition, ErrorKind, Event, Ready, RestartPolicy, Status};
use std::time::Duration;

#[test]
fn a_chain_of_three_starts_in_order_and_stops_in_reverse() -> TestResult {
    let h = Harness::new()?;
    let events = h.sup().subscribe();
    let ready = |name: &str| {
        h.sh(name, "sleep 0.2; echo up; exec sleep 600")
            .ready(Ready::LogLine("up".into()))
    };
    h.sup().start(ready("db"))?;
    h.sup().start(ready("api").after("db", Condition::Ready))?;
    h.sup().start(ready("web").after("api", Condition::Ready))?;
    assert_eq!(
        status(h.sup(), "web"),
        Status::Starting,
        "web waits for api"
    );
    h.sup().wait_for("all", Status::Online, SECS_10)?;
    assert_eq!(
        h.sup().plan_stop("all")?,
        [["web"], ["api"], ["db"]],
        "the stop plan: dependents first"
    );
    assert_eq!(
        h.sup().plan_start("all")?,
        [["db"], ["api"], ["web"]],
        "the start plan: dependencies first"
    );
    h.sup().stop("all")?;
    let mut order = Vec::new();
    while let Some(e) = events.try_recv() {
        match e {
            Event::Started { name, .. } => order.push(format!("start {name}")),
            Event::Ready { name } => order.push(format!("ready {name}")),
            Event::Stopped { name } => order.push(format!("stop {name}")),
            _ => {}
        }
    }
    assert_eq!(
        order,
        [
            "start db",
            "ready db",
            "start api",
            "ready api",
            "start web",
            "ready web",
            "stop web",
            "stop api",
            "stop db"
        ],
        "what happened, in order"
    );
    h.finish()
}

#[test]
fn a_one_shot_setup_task_gates_its_dependent() -> TestResult {
    let h = Harness::new()?;
    let marker = h.dir.path().join("prepared");
    let setup = h
        .sh("setup", &format!("sleep 0.3; touch {}", marker.display()))
        .restart(RestartPolicy::never());
    h.sup().start(setup)?;
    let app = h
        .sh(
            "app",
            &format!("test -f {} && exec sleep 600; exit 9", marker.display()),
        )
        .after("setup", Condition::Exited0)
        .restart(RestartPolicy::never());
    assert_eq!(
        h.sup().start(app)?.status(),
        Status::Starting,
        "the app waits for its setup"
    );
    h.sup().wait_for("app", Status::Online, SECS_5)?;
    assert_eq!(
        status(h.sup(), "setup"),
        Status::Exited,
        "the setup is done"
    );

    // A failed setup never lets its dependent start.
    h.sup()
        .start(h.sh("bad-setup", "exit 1").restart(RestartPolicy::never()))?;
    h.sup().start(
        h.sh("gated", "exec sleep 600")
            .after("bad-setup", Condition::Exited0),
    )?;
    h.sup().wait_for("bad-setup", Status::Exited, SECS_5)?;
    std::thread::sleep(Duration::from_millis(200)); // part of the scenario: nothing may start
    assert_eq!(
        status(h.sup(), "gated"),
        Status::Starting,
        "the dependent of a failed setup still waits"
    );
    assert_eq!(h.sup().describe("gated")?.pid(), None, "and never ran");
    h.finish()
}

#[test]
fn cycles_and_unknown_dependencies_are_invalid() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh("a", "exec sleep 600"))?;
    h.sup()
        .start(h.sh("b", "exec sleep 600").after("a", Condition::Started))?;
    let err = h
        .sup()
        .start(h.sh("a", "exec sleep 600").after("b", Condition::Started))
        .err()
        .context("a cycle is refused")?;
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
    assert!(
        err.to_string().contains("dependency cycle: a -> b -> a"),
        "the error shows the cycle: {err}"
    );
    let err = h
        .sup()
        .start(h.sh("c", "true").after("nope", Condition::Ready))
        .err()
        .context("an unknown dependency is refused")?;
    assert!(
        err.to_string().contains("unknown dependency 'nope'"),
        "the error names it: {err}"
    );
    let err = h
        .sup()
        .start(h.sh("d", "true").after("d", Condition::Ready))
        .err()
        .context("a service that depends on itself is refused")?;
    assert!(
        err.to_string().contains("dependency cycle: d -> d"),
        "the error shows the cycle: {err}"
    );
    h.finish()
}

#[test]
fn restart_with_restarts_dependents_that_ask_for_it_only() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh("base", "exec sleep 600"))?;
    let tied = h.sup().start(
        h.sh("tied", "exec sleep 600")
            .after("base", Condition::Started)
            .restart_with("base"),
    )?;
    let free = h.sup().start(
        h.sh("free", "exec sleep 600")
            .after("base", Condition::Started),
    )?;
    assert_eq!(h.sup().restart("base")?, 2, "base and tied are restarted");
    assert_ne!(
        h.sup().describe("tied")?.pid(),
        tied.pid(),
        "tied runs anew"
    );
    assert_eq!(
        h.sup().describe("free")?.pid(),
        free.pid(),
        "free is left alone"
    );
    h.finish()
}
