//! A state file that is empty, not SQLite, not ours or corrupt is refused with a `Store`
//! error that says so, and never modified; nothing is started.

use crate::prelude::*;
use sheepdog::{ErrorKind, RestartPolicy, Supervisor};

fn open_err(dir: &std::path::Path) -> TestResult<sheepdog::Error> {
    Supervisor::open(dir)
        .err()
        .context("the state file is refused")
}

#[test]
fn empty_garbage_and_foreign_state_files_are_refused_untouched() -> TestResult {
    let root = tempfile::tempdir()?;
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty", b"", "is empty"),
        ("garbage", &[0x42; 4096], "not a SQLite database"),
        ("foreign", b"", "not a sheepdog state file"),
    ];
    for (name, bytes, needle) in cases {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let db = dir.join("sheepdog.db");
        if name == "foreign" {
            rusqlite::Connection::open(&db)?
                .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")?;
        } else {
            std::fs::write(&db, bytes)?;
        }
        let before = std::fs::read(&db)?;
        let err = open_err(&dir)?;
        assert_eq!(err.kind(), ErrorKind::Store, "{name}: {err}");
        assert!(
            err.to_string().contains(needle),
            "{name}: the message says why: {err}"
        );
        assert_eq!(
            std::fs::read(&db)?,
            before,
            "{name}: the file was left untouched"
        );
    }
    Ok(())
}

#[test]
fn a_corrupt_page_is_reported_not_ignored() -> TestResult {
    let mut h = Harness::new()?;
    for i in 0..40 {
        h.sup().start(
            h.sh(&format!("svc{i}"), "exit 0")
                .restart(RestartPolicy::never()),
        )?;
    }
    h.take().shutdown()?;
    let db = h.state_dir().join("sheepdog.db");
    // Checkpoint the WAL into the main file, then scribble over the header of page 2.
    rusqlite::Connection::open(&db)?.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    let mut bytes = std::fs::read(&db)?;
    assert!(bytes.len() >= 3 * 4096, "the database has several pages");
    for b in &mut bytes[4096..4096 + 64] {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes)?;
    let err = open_err(&h.state_dir())?;
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(
        err.to_string().contains("corrupt"),
        "the message says why: {err}"
    );
    assert!(h.reopen().is_err(), "still refused");
    let left = h.tagged();
    assert!(left.is_empty(), "nothing was started: {left:?}");
    Ok(())
}
