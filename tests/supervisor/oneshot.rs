//! One-shot tasks: `Starting` while they run, `Exited` once they exit 0 (never restarted,
//! whatever their policy), retried by their policy when they fail; dependents that wait on
//! `exited0` start once they are done. A Procfile's `release:` entry is one, and the other
//! entries wait for it.

use crate::prelude::*;
use sheepdog::{Backoff, Condition, Fleet, Prune, RestartPolicy, Status, Supervisor};
use std::time::Duration;

#[test]
fn a_task_that_fails_is_retried_and_once_done_its_dependents_start() -> TestResult {
    let h = Harness::new()?;
    let sup = h.sup();
    let flag = h.dir.path().join("tried");
    let script = format!(
        "sleep 0.2; if [ -e {0} ]; then echo migrated; exit 0; fi; touch {0}; exit 3",
        flag.display()
    );
    let task = h
        .sh("migrate", &script)
        .oneshot(true)
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(100))));
    assert_eq!(sup.start(task).unwrap().status(), Status::Starting);
    let app = h
        .sh("app", "exec sleep 600")
        .after("migrate", Condition::Exited0);
    assert_eq!(sup.start(app).unwrap().status(), Status::Starting, "waits");
    assert!(
        sup.explain("app")
            .unwrap()
            .to_string()
            .contains("migrate to be exited0")
    );
    sup.wait_for("migrate", Status::Exited, SECS_10).unwrap();
    let info = sup.describe("migrate").unwrap();
    assert_eq!(
        info.restarts(),
        1,
        "the failed run was retried by its policy"
    );
    assert_eq!(info.last_exit().unwrap().code(), Some(0));
    sup.wait_for("app", Status::Online, SECS_5).unwrap();
    let explained = sup.explain("migrate").unwrap().to_string();
    assert!(explained.contains("done"), "{explained}");
    let runs = sup.history("migrate", 10).unwrap();
    assert_eq!(
        runs[0].decision(),
        Some("done: the one-shot task succeeded")
    );
    assert_eq!(runs[1].code(), Some(3));
    // Done means done: an `always` policy does not bring it back.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(sup, "migrate"), Status::Exited);
    assert_eq!(sup.describe("migrate").unwrap().generation(), 2);
    h.finish()
}

#[test]
fn a_procfile_release_runs_first_and_the_rest_wait_for_it() -> TestResult {
    let h = Harness::new()?;
    let dir = h.dir.path();
    let marker = dir.join("released");
    std::fs::write(
        dir.join("Procfile"),
        format!(
            "web: test -e {0} && exec sleep 600\nrelease: sleep 0.2; touch {0}\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join(".env"), format!("{TOKEN_VAR}={}\n", h.token)).unwrap();
    let fleet = Fleet::from_procfile(dir.join("Procfile")).unwrap();
    let applied = h.sup().apply(&fleet, Prune::No).unwrap();
    assert_eq!(applied.started, ["release", "web"]);
    h.sup()
        .wait_for("release", Status::Exited, SECS_10)
        .unwrap();
    h.sup().wait_for("web", Status::Online, SECS_5).unwrap();
    assert!(marker.exists());
    assert_eq!(
        h.sup().describe("web").unwrap().restarts(),
        0,
        "it never ran early"
    );
    h.finish()
}

#[test]
fn a_failed_release_is_not_retried_and_nothing_waiting_on_it_starts() -> TestResult {
    let dir = tempfile::tempdir().unwrap();
    let token = new_token();
    std::fs::write(
        dir.path().join("Procfile"),
        "release: exit 1\nweb: exec sleep 600\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".env"), format!("{TOKEN_VAR}={token}\n")).unwrap();
    let sup = Supervisor::open(dir.path().join("state")).unwrap();
    let fleet = Fleet::from_procfile(dir.path().join("Procfile")).unwrap();
    sup.apply(&fleet, Prune::No).unwrap();
    sup.wait_for("release", Status::Exited, SECS_5).unwrap();
    assert_eq!(
        sup.describe("release").unwrap().last_exit().unwrap().code(),
        Some(1)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(status(&sup, "web"), Status::Starting, "still waiting");
    assert!(tagged_processes(&token).is_empty(), "web never ran");
    sup.shutdown().unwrap();
    assert!(tagged_processes(&token).is_empty());
    Ok(())
}
