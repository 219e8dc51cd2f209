//! The state file replaced by garbage while the supervisor runs, by a rename over it or by
//! an overwrite in place: calls return typed errors or go on (no panic, no hang), the
//! running service keeps running, shutdown works, and the next `open` refuses the garbage
//! naming the file (or, for an in-place overwrite healed by the old connection's checkpoint
//! at its close, opens a whole registry).

use crate::prelude::*;
use sheepdog::{Backoff, ErrorKind, RestartPolicy, Supervisor};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A call that takes longer than this hangs.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// Replaces the state file with garbage: by a rename over it (the supervisor's open file
/// lives on, unlinked) or by overwriting its bytes in place.
fn garbage(db: &Path, in_place: bool) -> TestResult<Vec<u8>> {
    let junk: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    if in_place {
        let mut f = std::fs::OpenOptions::new().write(true).open(db)?;
        f.write_all(&junk)?;
        f.sync_all()?;
    } else {
        let tmp = db.with_extension("junk");
        std::fs::write(&tmp, &junk)?;
        std::fs::rename(&tmp, db)?;
    }
    Ok(junk)
}

fn garbage_db_mid_run(in_place: bool) -> TestResult {
    let mut h = Harness::new()?;
    let sup = h.take();
    sup.start(h.sh("runner", "exec sleep 600"))?;
    let looper = h
        .sh("looper", "sleep 0.02; exit 1")
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(20))));
    sup.start(looper)?;
    let runner = online_pid(&sup, "runner")?;
    let db = h.state_dir().join("sheepdog.db");
    let junk = garbage(&db, in_place)?;
    let sup = Arc::new(sup);
    let results = {
        let (sup, fresh, changed) = (
            sup.clone(),
            h.sh("fresh", "exec sleep 600"),
            h.sh("looper", "sleep 0.02; exit 2"),
        );
        within(
            "calls after the state file was replaced",
            CALL_DEADLINE,
            move || {
                vec![
                    ("start fresh", sup.start(fresh).map(|_| 0)),
                    ("change looper", sup.start(changed).map(|_| 0)),
                    ("stop looper", sup.stop("looper")),
                    ("restart fresh", sup.restart("fresh")),
                    ("delete fresh", sup.delete("fresh")),
                ]
            },
        )?
    };
    for (what, result) in &results {
        if let Err(e) = result {
            // `fresh` may not exist if its start failed.
            let ok = e.kind() == ErrorKind::Store
                || (e.kind() == ErrorKind::NotFound && what.ends_with("fresh"));
            assert!(ok, "{what}: a value or a Store error, not {e:?}");
        }
    }
    assert_eq!(
        online_pid(&sup, "runner")?,
        runner,
        "the runner kept running"
    );
    answers(&sup);
    let shutdown = {
        let sup = sup.clone();
        within("shutdown", CALL_DEADLINE, move || sup.shutdown())?
    };
    assert!(shutdown.is_ok(), "shutdown: {shutdown:?}");
    drop(sup);
    no_tagged_left(&h.token, "after shutdown")?;
    let state = h.state_dir();
    let reopened = within("reopen", CALL_DEADLINE, move || Supervisor::open(state))?;
    match reopened {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Store, "{e}");
            assert!(
                e.to_string().contains(&db.display().to_string()),
                "the error names the state file: {e}"
            );
            let started = h.tagged();
            assert!(started.is_empty(), "a refused open started {started:?}");
        }
        Ok(sup) => {
            // Only an in-place overwrite can be healed, by the checkpoint of the old
            // connection's log at its close; then the registry must be whole.
            assert!(
                in_place,
                "a garbage state file was opened (it is still garbage on disk: {})",
                std::fs::read(&db).is_ok_and(|b| b == junk)
            );
            let names: Vec<String> = sup.list()?.iter().map(|i| i.name().to_string()).collect();
            assert!(
                names.contains(&"runner".to_string()),
                "the healed registry holds the runner: {names:?}"
            );
            h.sup = Some(sup);
        }
    }
    h.finish()
}

/// Renamed over: the supervisor writes on to its open (now unlinked) file; the next open
/// finds the garbage and refuses it, naming the file.
/// (SQLite keeps the old file's `-wal` when its file moved; read over the garbage, it would
/// make the garbage look valid, and the next checkpoint would rewrite it.)
#[test]
fn a_state_file_renamed_over_with_garbage_mid_run_is_refused_at_reopen() -> TestResult {
    garbage_db_mid_run(false)
}

/// Overwritten in place: calls fail with `Store` errors or go on; nothing panics or hangs.
#[test]
fn a_state_file_overwritten_with_garbage_mid_run_gives_store_errors_not_panics() -> TestResult {
    garbage_db_mid_run(true)
}
