//! Watch and restart, with real files and the real inotify instance in the supervision
//! thread's epoll: a burst of writes gives one restart once the files are quiet, ignored
//! files give none, new directories are watched, and a stopped service is not started.

use crate::prelude::*;
use sheepdog::{Cause, Status, Watch};
use std::time::Duration;

/// The runs of `name` that files changed ended.
fn restarts_for_changes(h: &Harness, name: &str) -> Vec<sheepdog::Run> {
    let runs = h.sup().history(name, 100).unwrap();
    runs.into_iter()
        .filter(|r| r.cause() == Some(Cause::FilesChanged))
        .collect()
}

#[test]
fn a_burst_of_changes_gives_one_restart_naming_the_files() -> TestResult {
    let h = Harness::new()?;
    let tree = h.dir.path().join("app");
    std::fs::create_dir_all(tree.join("src")).unwrap();
    let watch = Watch::new([tree.to_str().unwrap()])
        .ignore("*.log")
        .debounce(Duration::from_secs(1));
    let first = h
        .sup()
        .start(h.sh("dev", "exec sleep 600").watch(watch))
        .unwrap()
        .pid()
        .unwrap();
    // A new directory is watched as it appears; then a burst of writes in it and elsewhere.
    std::fs::create_dir(tree.join("src/new")).unwrap();
    for i in 0..50 {
        std::fs::write(tree.join(format!("src/new/f{i}.js")), "x").unwrap();
        std::fs::write(tree.join("app.log"), format!("{i}")).unwrap();
    }
    let second = wait_until(SECS_10, || {
        let info = h.sup().describe("dev").ok()?;
        (info.status() == Status::Online && info.pid() != Some(first)).then(|| info.pid())
    })
    .expect("restarted after the burst");
    assert!(!is_alive(first));
    let changed = restarts_for_changes(&h, "dev");
    assert_eq!(changed.len(), 1, "one restart for the burst: {changed:?}");
    let reason = changed[0].reason().unwrap();
    assert!(reason.starts_with("files changed: src/new"), "{reason}");
    assert!(
        !reason.contains("app.log"),
        "an ignored file is not named: {reason}"
    );

    // A change in the new directory restarts it again: it is watched.
    std::fs::write(tree.join("src/new/late.js"), "x").unwrap();
    wait_until(SECS_10, || {
        (restarts_for_changes(&h, "dev").len() == 2).then_some(())
    })
    .expect("a change in a directory made after the start restarts it");
    let third = h.sup().describe("dev").unwrap().pid();
    assert_ne!(third, second);
    h.finish()
}

#[test]
fn a_stopped_service_is_not_started_by_a_change() -> TestResult {
    let h = Harness::new()?;
    let tree = h.dir.path().join("app");
    std::fs::create_dir_all(&tree).unwrap();
    let watch = || Watch::new([tree.to_str().unwrap()]).debounce(Duration::from_millis(200));
    h.sup()
        .start(h.sh("stopped", "exec sleep 600").watch(watch()))
        .unwrap();
    // A witness on the same directory: once it restarted, the change was seen and settled.
    let witness = h
        .sup()
        .start(h.sh("witness", "exec sleep 600").watch(watch()))
        .unwrap()
        .pid();
    h.sup().stop("stopped").unwrap();
    std::fs::write(tree.join("config.json"), "{}").unwrap();
    wait_until(SECS_10, || {
        let info = h.sup().describe("witness").ok()?;
        (info.status() == Status::Online && info.pid() != witness).then_some(())
    })
    .expect("the witness restarted");
    assert_eq!(
        status(h.sup(), "stopped"),
        Status::Stopped,
        "the stopped one stayed stopped"
    );
    assert!(restarts_for_changes(&h, "stopped").is_empty());
    h.finish()
}
