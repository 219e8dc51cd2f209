//! The state directory deleted, or its registry replaced or truncated, under a running
//! supervisor. Before, every later call returned Ok while writing into unlinked files, and
//! everything was lost at shutdown; a second `open` of the same path succeeded while the
//! first supervisor ran. Now the next `start`, `stop` and `delete` fail with a `Store` error
//! that says what happened, an `Event::StateDirLost` reports it, nothing changes (no call
//! is acknowledged and then lost), the services run on until `shutdown`, and a second
//! supervisor cannot open the path meanwhile.
//!
//! The registry is changed by other processes (`cp`, `truncate`), as an operator would:
//! closing a file of the database in this process would drop SQLite's locks on it.

use crate::prelude::*;
use sheepdog::{ErrorKind, Event, Status, Supervisor};
use std::collections::BTreeMap;

/// Runs a command to its end; fails the test if it fails.
fn run(program: &str, args: &[&std::path::Path]) -> TestResult {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .context(format!("run {program}"))?;
    assert!(status.success(), "{program} {args:?}: {status}");
    Ok(())
}

/// (status, pid) of every service.
fn snapshot(sup: &Supervisor) -> TestResult<BTreeMap<String, (Status, Option<u32>)>> {
    Ok(sup
        .list()?
        .into_iter()
        .map(|i| (i.name().to_string(), (i.status(), i.pid())))
        .collect())
}

/// After the fault: the event (`via_watch`: without any call to set it off), then a failed
/// start, stop and delete that each say `what`, and nothing changed.
fn every_change_fails(
    h: &Harness,
    events: &sheepdog::Events,
    what: &str,
    via_watch: bool,
) -> TestResult {
    let before = snapshot(h.sup())?;
    let says = |e: &sheepdog::Error| e.kind() == ErrorKind::Store && e.to_string().contains(what);
    if via_watch {
        let event = expect_event(events, SECS_5, "the state directory lost", |e| {
            matches!(e, Event::StateDirLost { .. })
        })?;
        assert!(
            format!("{event:?}").contains(what),
            "the event says {what}: {event:?}"
        );
    }
    let started = h.sup().start(h.sh("fresh", "exec sleep 600"));
    assert!(
        started.as_ref().is_err_and(says),
        "start fails saying {what}: {started:?}"
    );
    let stopped = h.sup().stop("a");
    assert!(
        stopped.as_ref().is_err_and(says),
        "stop fails saying {what}: {stopped:?}"
    );
    let deleted = h.sup().delete("b");
    assert!(
        deleted.as_ref().is_err_and(says),
        "delete fails saying {what}: {deleted:?}"
    );
    if !via_watch {
        expect_event(
            events,
            SECS_5,
            "the state directory lost",
            |e| matches!(e, Event::StateDirLost { error } if error.contains(what)),
        )?;
    }
    assert_eq!(snapshot(h.sup())?, before, "nothing changed");
    for pid in before.values().filter_map(|(_, pid)| *pid) {
        assert!(is_alive(pid), "pid {pid} runs on");
    }
    Ok(())
}

fn two_running(h: &Harness) -> TestResult<sheepdog::Events> {
    for name in ["a", "b"] {
        h.sup().start(h.sh(name, "exec sleep 600"))?;
    }
    Ok(h.sup().subscribe())
}

#[test]
fn removing_the_state_dir_fails_every_later_change_and_keeps_the_path_locked() -> TestResult {
    let mut h = Harness::new()?;
    let events = two_running(&h)?;
    let state = h.state_dir();
    std::fs::remove_dir_all(&state)?;
    every_change_fails(&h, &events, "was deleted", true)?;
    // The path is still this supervisor's: a second one cannot open it meanwhile.
    let second = Supervisor::open(&state);
    assert_eq!(
        second.as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::StateDirLocked),
        "a second open: {:?}",
        second.as_ref().err()
    );
    drop(second);
    // Once the first is shut down, the path opens: the registry was deleted with it.
    h.take().shutdown()?;
    assert!(
        tagged_processes(&h.token).is_empty(),
        "shutdown stopped all"
    );
    h.reopen()?;
    assert!(
        h.sup().list()?.is_empty(),
        "the registry was deleted with the directory"
    );
    h.finish()
}

#[test]
fn a_registry_replaced_by_another_file_fails_every_later_change() -> TestResult {
    let mut h = Harness::new()?;
    let events = two_running(&h)?;
    let db = h.state_dir().join("sheepdog.db");
    let copy = h.dir.path().join("copy.db");
    // Another file with the same content, renamed over it.
    run("cp", &[&db, &copy])?;
    run("mv", &[&copy, &db])?;
    every_change_fails(&h, &events, "was replaced by another file", true)?;
    let second = Supervisor::open(h.state_dir());
    assert_eq!(
        second.err().map(|e| e.kind()),
        Some(ErrorKind::StateDirLocked),
        "the lock is still held"
    );
    h.take().shutdown()?;
    h.finish()
}

#[test]
fn a_registry_truncated_under_the_supervisor_fails_every_later_change() -> TestResult {
    let mut h = Harness::new()?;
    let events = two_running(&h)?;
    let db = h.state_dir().join("sheepdog.db");
    run("truncate", &[std::path::Path::new("--size=0"), &db])?;
    // A truncation is a write: the watch does not see it, the next change does.
    every_change_fails(&h, &events, "was truncated or overwritten", false)?;
    h.take().shutdown()?;
    h.finish()
}

/// Only the lock file removed: the lock is taken again at once (a second supervisor
/// could have opened the directory in between, so changes stop too).
#[test]
fn a_removed_lock_file_is_taken_again() -> TestResult {
    let h = Harness::new()?;
    let events = two_running(&h)?;
    let lock = h.state_dir().join("lock");
    std::fs::remove_file(&lock)?;
    every_change_fails(&h, &events, "lock file", true)?;
    wait_until(SECS_5, || lock.exists().then_some(())).context("the lock file is back")?;
    assert_eq!(
        Supervisor::open(h.state_dir()).err().map(|e| e.kind()),
        Some(ErrorKind::StateDirLocked)
    );
    h.finish()
}
