//! A read-only state directory or state file: `open` refuses it with a typed error (naming
//! the state file, where only it is read-only), starts nothing and changes nothing, and
//! opens and resurrects as before once writable again; a directory turned read-only under a
//! running supervisor leaves it answering, calls returning in time with a value or a typed
//! error, services running. Root is made to respect read-only with a bind mount; others by
//! permission bits.

use crate::prelude::*;
use sheepdog::{ErrorKind, Status, Supervisor};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A call that takes longer than this hangs.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// Makes `dir` read-only: a read-only bind mount for root (whom permission bits do not
/// stop), permission bits for anyone else. `None` (with the skip said) if impossible.
fn make_read_only(test: &str, dir: &Path) -> TestResult<Option<Option<Mount>>> {
    if is_root() {
        return match Mount::read_only_bind(dir) {
            Ok(m) => Ok(Some(Some(m))),
            Err(e) => {
                skip(
                    test,
                    format!("root cannot make a read-only bind mount ({e})"),
                )?;
                Ok(None)
            }
        };
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().is_file() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o444));
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))?;
    Ok(Some(None))
}

fn make_writable(dir: &Path, mount: Option<Mount>) -> TestResult {
    drop(mount);
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().is_file() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644));
        }
    }
    Ok(())
}

/// Opens `dir` on a thread of its own, in time: the error's kind and message, if refused.
fn open_refused(dir: &Path) -> TestResult<Option<(ErrorKind, String)>> {
    let dir = dir.to_path_buf();
    let opened = within("open", CALL_DEADLINE, move || Supervisor::open(dir))?;
    Ok(opened.err().map(|e| (e.kind(), e.to_string())))
}

#[test]
fn a_read_only_state_dir_is_refused_with_a_typed_error_and_left_untouched() -> TestResult {
    let test = test_name!("a_read_only_state_dir_is_refused_with_a_typed_error_and_left_untouched");
    let mut h = Harness::new()?;
    let before = h.sup().start(h.sh("svc", "exec sleep 600"))?;
    h.take().shutdown()?;
    let db = h.state_dir().join("sheepdog.db");
    let bytes = std::fs::read(&db)?;
    let Some(mount) = make_read_only(test, &h.state_dir())? else {
        return Ok(());
    };
    let refused = open_refused(&h.state_dir())?;
    println!("open of a read-only state dir: {refused:?}");
    let nothing_ran = h.tagged();
    let untouched = std::fs::read(&db)? == bytes;
    make_writable(&h.state_dir(), mount)?;
    assert!(
        matches!(refused, Some((ErrorKind::Store | ErrorKind::Io, _))),
        "open of a read-only state dir is refused with a Store or Io error: {refused:?}"
    );
    assert!(nothing_ran.is_empty(), "nothing started: {nothing_ran:?}");
    assert!(untouched, "the state file is unchanged");
    h.open(Supervisor::builder())?;
    let after = h.sup().describe("svc")?;
    assert_eq!(
        (after.id(), after.status()),
        (before.id(), Status::Online),
        "writable again: opened and resurrected as before"
    );
    h.finish()
}

/// Only the state file is read-only (the directory and the lock are writable): `open`
/// refuses it with a `Store` error that names it, and starts nothing.
#[test]
fn a_read_only_state_file_is_refused_with_a_store_error_naming_it() -> TestResult {
    let test = test_name!("a_read_only_state_file_is_refused_with_a_store_error_naming_it");
    let mut h = Harness::new()?;
    h.sup().start(h.sh("svc", "exec sleep 600"))?;
    h.take().shutdown()?;
    let db = h.state_dir().join("sheepdog.db");
    let bytes = std::fs::read(&db)?;
    let mount = if is_root() {
        match Mount::read_only_bind(&db) {
            Ok(m) => Some(m),
            Err(e) => {
                return skip(
                    test,
                    format!("root cannot make a read-only bind mount ({e})"),
                );
            }
        }
    } else {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444))?;
        None
    };
    let refused = open_refused(&h.state_dir())?;
    println!("open with a read-only state file: {refused:?}");
    let nothing_ran = h.tagged();
    let untouched = std::fs::read(&db)? == bytes;
    drop(mount);
    let _ = std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644));
    let named = matches!(&refused, Some((ErrorKind::Store, msg))
        if msg.contains(&db.display().to_string()) && msg.contains("read-only"));
    assert!(
        named,
        "refused with a Store error naming the read-only file: {refused:?}"
    );
    assert!(nothing_ran.is_empty(), "nothing started: {nothing_ran:?}");
    assert!(untouched, "the state file is unchanged");
    h.open(Supervisor::builder())?;
    assert_eq!(
        status(h.sup(), "svc"),
        Status::Online,
        "writable again: resurrected"
    );
    h.finish()
}

/// The state directory turns read-only under a running supervisor (a bind mount over it
/// for root: its open files keep working, new files cannot be made). Calls still return
/// in time with a value or a typed error, and services keep running.
#[test]
fn a_state_dir_turned_read_only_under_a_running_supervisor_keeps_it_answering() -> TestResult {
    let test =
        test_name!("a_state_dir_turned_read_only_under_a_running_supervisor_keeps_it_answering");
    let h = Harness::new()?;
    h.sup().start(h.sh("runner", "exec sleep 600"))?;
    let runner = online_pid(h.sup(), "runner")?;
    let Some(mount) = make_read_only(test, &h.state_dir())? else {
        return h.finish();
    };
    let h = Arc::new(h);
    let outcome = {
        let h = h.clone();
        within("calls on a read-only state dir", CALL_DEADLINE, move || {
            let sup = h.sup();
            let started = sup.start(h.sh("fresh", "echo hi; exec sleep 600"));
            let stopped = sup.stop("runner");
            let restarted = sup.restart("runner");
            (
                started.map(|i| i.status()).map_err(|e| e.kind()),
                stopped.map_err(|e| e.kind()),
                restarted.map_err(|e| e.kind()),
            )
        })?
    };
    println!("calls on a read-only state dir (start, stop, restart): {outcome:?}");
    fn typed<T>(r: &Result<T, ErrorKind>) -> bool {
        r.as_ref()
            .err()
            .is_none_or(|k| matches!(k, ErrorKind::Store | ErrorKind::Io))
    }
    assert!(
        typed(&outcome.0) && typed(&outcome.1) && typed(&outcome.2),
        "every call returned a value or a Store or Io error: {outcome:?}"
    );
    if outcome.2.is_ok() {
        assert_ne!(online_pid(h.sup(), "runner")?, runner, "restarted");
    } else {
        assert_eq!(online_pid(h.sup(), "runner")?, runner, "left running");
    }
    answers(h.sup());
    let mut h = Arc::try_unwrap(h).ok().context("no other handle")?;
    h.take().shutdown()?;
    make_writable(&h.state_dir(), mount)?;
    h.finish()
}
