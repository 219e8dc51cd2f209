//! The registry survives the host: definitions, ids and desired state; and a state directory
//! that is not ours, or in use, is refused without being touched.

use crate::common::*;
use sheepdog::{ErrorKind, Status, Supervisor};

#[test]
fn reopen_restores_definitions_ids_and_desired_state() {
    let mut h = Harness::new();
    let up = h
        .sup()
        .start(h.sh("up", "exec sleep 60").env("X", "1"))
        .unwrap();
    let down = h.sup().start(h.sh("down", "exec sleep 60")).unwrap();
    let gone = h.sup().start(h.sh("gone", "exec sleep 60")).unwrap();
    h.sup().stop("down").unwrap();
    h.sup().delete("gone").unwrap();
    h.reopen().unwrap();

    let up2 = h.sup().describe("up").unwrap();
    assert_eq!(up2.id(), up.id());
    assert_eq!(up2.spec(), up.spec(), "the spec survives byte for byte");
    assert_eq!(up2.status(), Status::Online, "desired up: resurrected");
    assert_ne!(up2.pid(), up.pid());
    let down2 = h.sup().describe("down").unwrap();
    assert_eq!(down2.id(), down.id());
    assert_eq!(down2.status(), Status::Stopped, "desired down: stays down");
    assert!(down2.last_exit().is_some(), "the last exit survives");
    assert_eq!(
        h.sup().describe("gone").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let next = h.sup().start(h.sh("next", "exec sleep 60")).unwrap();
    assert!(
        next.id() > gone.id(),
        "ids are never reused ({} after {})",
        next.id(),
        gone.id()
    );
    assert_eq!(
        h.sup().describe(&up.id().to_string()).unwrap().name(),
        "up",
        "targets by id"
    );
    h.finish();
}

#[test]
fn resurrect_can_be_turned_off() {
    let mut h = Harness::new();
    h.sup().start(h.sh("up", "exec sleep 60")).unwrap();
    h.sup.take().unwrap().shutdown().unwrap();
    let sup = Supervisor::builder()
        .state_dir(h.state_dir())
        .resurrect(false)
        .open()
        .map_err(|e| e.to_string())
        .unwrap();
    assert_eq!(sup.describe("up").unwrap().status(), Status::Stopped);
    assert!(tagged_processes(&h.token).is_empty());
    sup.restart("up").unwrap();
    assert_eq!(sup.describe("up").unwrap().status(), Status::Online);
    h.sup = Some(sup);
    h.finish();
}

#[test]
fn a_second_supervisor_on_the_same_dir_is_refused() {
    let h = Harness::new();
    let err = Supervisor::open(h.state_dir()).err().expect("locked");
    assert_eq!(err.kind(), ErrorKind::StateDirLocked);
    assert!(
        err.to_string().contains("in use by another supervisor"),
        "{err}"
    );
    // Another process is refused too (flock is per open file, and process-wide here).
    let out = std::process::Command::new("flock")
        .args(["-n", h.state_dir().join("lock").to_str().unwrap(), "true"])
        .status()
        .expect("flock(1) runs");
    assert!(!out.success(), "another process could take the lock");
    h.finish();
}

#[test]
fn the_lock_is_released_on_shutdown() {
    let mut h = Harness::new();
    h.reopen().expect("reopen after shutdown");
    h.finish();
}

fn open_err(dir: &std::path::Path) -> sheepdog::Error {
    Supervisor::open(dir)
        .err()
        .expect("the state file is refused")
}

#[test]
fn empty_garbage_and_foreign_state_files_are_refused_untouched() {
    let root = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty", b"", "is empty"),
        ("garbage", &[0x42; 4096], "not a SQLite database"),
        ("foreign", b"", "not a sheepdog state file"),
    ];
    for (name, bytes, needle) in cases {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("sheepdog.db");
        if name == "foreign" {
            rusqlite::Connection::open(&db)
                .unwrap()
                .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
                .unwrap();
        } else {
            std::fs::write(&db, bytes).unwrap();
        }
        let before = std::fs::read(&db).unwrap();
        let err = open_err(&dir);
        assert_eq!(err.kind(), ErrorKind::Store, "{name}: {err}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
        assert_eq!(
            std::fs::read(&db).unwrap(),
            before,
            "{name}: the file was modified"
        );
    }
}

#[test]
fn a_corrupt_page_is_reported_not_ignored() {
    let mut h = Harness::new();
    for i in 0..40 {
        h.sup()
            .start(
                h.sh(&format!("svc{i}"), "exit 0")
                    .restart(sheepdog::RestartPolicy::never()),
            )
            .unwrap();
    }
    h.sup.take().unwrap().shutdown().unwrap();
    let db = h.state_dir().join("sheepdog.db");
    // Checkpoint the WAL into the main file, then scribble over the header of page 2.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() >= 3 * 4096, "the database has several pages");
    for b in &mut bytes[4096..4096 + 64] {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let err = open_err(&h.state_dir());
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(err.to_string().contains("corrupt"), "{err}");
    h.reopen().expect_err("still refused");
    assert!(tagged_processes(&h.token).is_empty());
}
