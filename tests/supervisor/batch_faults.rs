//! A batch that fails in its middle leaves nothing of itself: not in memory, not on disk,
//! not after a reopen. The failure is real: a trigger added to the live state file (through
//! a second SQLite connection, as any process could) makes SQLite refuse one row of the
//! batch, after the rows before it were written inside the transaction.

use crate::prelude::*;
use sheepdog::{ErrorKind, ServiceSpec, Status, Supervisor};
use std::collections::BTreeMap;

/// Runs `sql` on the state file through a connection of its own.
fn sql(h: &Harness, sql: &str) -> TestResult {
    let conn = rusqlite::Connection::open(h.state_dir().join("sheepdog.db"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(sql).context(format!("run {sql}"))?;
    Ok(())
}

/// Makes SQLite refuse the statement that fires `event` (`INSERT ON service`, …) when `when`
/// holds of the row.
fn inject(h: &Harness, event: &str, when: &str) -> TestResult {
    sql(
        h,
        &format!(
            "CREATE TRIGGER fault BEFORE {event} FOR EACH ROW WHEN {when} \
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
        ),
    )
}

fn clear(h: &Harness) -> TestResult {
    sql(h, "DROP TRIGGER fault;")
}

/// Every service by name: (status, pid, spec).
type Snapshot = BTreeMap<String, (Status, Option<u32>, ServiceSpec)>;

fn snapshot(sup: &Supervisor) -> TestResult<Snapshot> {
    Ok(sup
        .list()?
        .into_iter()
        .map(|i| {
            (
                i.name().to_string(),
                (i.status(), i.pid(), i.spec().clone()),
            )
        })
        .collect())
}

fn assert_store_error<T: std::fmt::Debug>(what: &str, result: &sheepdog::Result<T>) {
    let err = result
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("{what} fails"));
    assert_eq!(err.kind(), ErrorKind::Store, "{what}: {err}");
    let source = std::error::Error::source(err).map(|s| s.to_string());
    assert!(
        source
            .as_deref()
            .is_some_and(|s| s.contains("injected fault")),
        "{what}: the injected fault is the cause: {err:?}"
    );
}

/// Starts `names`, each running `sleep`.
fn start_all(h: &Harness, names: &[&str]) -> TestResult {
    for name in names {
        h.sup().start(h.sh(name, "exec sleep 600"))?;
    }
    Ok(())
}

#[test]
fn a_start_many_that_fails_midway_stores_and_starts_nothing() -> TestResult {
    let mut h = Harness::new()?;
    start_all(&h, &["base"])?;
    let before = snapshot(h.sup())?;
    inject(&h, "INSERT ON service", "NEW.name = 'b'")?;
    let specs = ["a", "b", "c"].map(|n| h.sh(n, "exec sleep 600"));
    let results = h.sup().start_many(specs)?;
    for (name, result) in ["a", "b", "c"].iter().zip(&results) {
        assert_store_error(&format!("start_many: {name}"), result);
    }
    assert_eq!(snapshot(h.sup())?, before, "nothing changed in memory");
    // A change of an existing spec, between two new services: the same.
    clear(&h)?;
    inject(&h, "UPDATE OF spec ON service", "NEW.name = 'base'")?;
    let specs = [
        h.sh("x", "exec sleep 600"),
        h.sh("base", "exec sleep 601"),
        h.sh("y", "exec sleep 600"),
    ];
    let results = h.sup().start_many(specs)?;
    for (name, result) in ["x", "base", "y"].iter().zip(&results) {
        assert_store_error(&format!("start_many with a change: {name}"), result);
    }
    assert_eq!(
        snapshot(h.sup())?,
        before,
        "the running service kept its spec and its process"
    );
    let base = before["base"].1.context("base runs")?;
    assert_eq!(
        tagged_processes(&h.token),
        [base],
        "nothing else was spawned"
    );
    clear(&h)?;
    h.reopen()?;
    let after = snapshot(h.sup())?;
    assert_eq!(after.keys().collect::<Vec<_>>(), ["base"], "after a reopen");
    assert_eq!(
        after["base"].2, before["base"].2,
        "the old spec, after a reopen"
    );
    h.finish()
}

#[test]
fn a_stop_or_restart_of_several_that_fails_midway_changes_nothing() -> TestResult {
    let mut h = Harness::new()?;
    start_all(&h, &["a", "b", "c"])?;
    let before = snapshot(h.sup())?;
    inject(&h, "UPDATE OF desired_up ON service", "NEW.name = 'b'")?;
    assert_store_error("stop all", &h.sup().stop("all"));
    assert_eq!(
        snapshot(h.sup())?,
        before,
        "every service still runs, as it did"
    );
    clear(&h)?;
    h.reopen()?;
    for name in ["a", "b", "c"] {
        assert_eq!(
            status(h.sup(), name),
            Status::Online,
            "{name}, after a reopen"
        );
    }

    assert_eq!(h.sup().stop("all")?, 3, "the stop acts on every service");
    let stopped = snapshot(h.sup())?;
    inject(&h, "UPDATE OF desired_up ON service", "NEW.name = 'b'")?;
    assert_store_error("restart all", &h.sup().restart("all"));
    assert_eq!(snapshot(h.sup())?, stopped, "every service still stopped");
    assert!(tagged_processes(&h.token).is_empty(), "nothing was started");
    clear(&h)?;
    h.reopen()?;
    for name in ["a", "b", "c"] {
        assert_eq!(
            status(h.sup(), name),
            Status::Stopped,
            "{name}, after a reopen"
        );
    }
    h.finish()
}

#[test]
fn a_delete_of_several_that_fails_midway_deletes_and_stops_nothing() -> TestResult {
    let mut h = Harness::new()?;
    for name in ["a", "b", "c"] {
        h.sup().start(h.sh(name, "echo up; exec sleep 600"))?;
        let log = h.sup().log_path(name, sheepdog::Stream::Stdout)?;
        wait_lines(&log, 1, SECS_5)?;
    }
    let before = snapshot(h.sup())?;
    inject(&h, "DELETE ON service", "OLD.name = 'b'")?;
    assert_store_error("delete all", &h.sup().delete("all"));
    assert_eq!(
        snapshot(h.sup())?,
        before,
        "every service is still there, running"
    );
    for name in ["a", "b", "c"] {
        let log = h.sup().log_path(name, sheepdog::Stream::Stdout)?;
        assert_eq!(
            wait_lines(&log, 1, SECS_5)?,
            ["up"],
            "{name}'s log was kept"
        );
    }
    clear(&h)?;
    h.reopen()?;
    let after = snapshot(h.sup())?;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ["a", "b", "c"],
        "after a reopen"
    );
    assert!(
        after.values().all(|(status, ..)| *status == Status::Online),
        "every service runs after a reopen: {after:?}"
    );
    h.finish()
}

/// The records of one loop turn are written together; one that fails is lost alone.
#[test]
fn a_run_record_that_cannot_be_written_loses_only_itself() -> TestResult {
    let h = Harness::new()?;
    start_all(&h, &["first"])?;
    let next = h.sup().describe("first")?.id() + 2; // "b" below
    inject(&h, "INSERT ON run", &format!("NEW.service_id = {next}"))?;
    let specs = ["a", "b", "c"].map(|n| h.sh(n, "exec sleep 600"));
    let results = h.sup().start_many(specs)?;
    assert!(
        results.iter().all(|r| r.is_ok()),
        "every start succeeds: {results:?}"
    );
    assert_eq!(
        h.sup().describe("b")?.id(),
        next,
        "b has the id the fault names"
    );
    for name in ["a", "c"] {
        let runs = h.sup().history(name, 10)?;
        assert_eq!(runs.len(), 1, "{name}'s run was recorded in the same turn");
    }
    assert!(
        h.sup().history("b", 10)?.is_empty(),
        "b's run record is lost"
    );
    assert_eq!(status(h.sup(), "b"), Status::Online, "b runs all the same");
    clear(&h)?;
    h.finish()
}

/// A name given twice in one batch is started once, with its last spec, and both callers
/// hear back.
#[test]
fn a_start_many_naming_a_service_twice_starts_its_last_spec() -> TestResult {
    let h = Harness::new()?;
    let specs = [
        h.sh("twice", "exec sleep 600"),
        h.sh("other", "exec sleep 600"),
        h.sh("twice", "exec sleep 601"),
    ];
    let results = h.sup().start_many(specs)?;
    assert!(
        results.iter().all(|r| r.is_ok()),
        "every start succeeds: {results:?}"
    );
    let spec: &ServiceSpec = &h.sh("twice", "exec sleep 601");
    assert_eq!(
        h.sup().describe("twice")?.spec(),
        spec,
        "the last spec given"
    );
    assert_eq!(h.sup().list()?.len(), 2, "two services");
    h.finish()
}
