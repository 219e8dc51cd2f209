//! Faults under the store: a state directory whose disk fills up, one made read-only, and a
//! state file replaced by garbage while the supervisor runs. API calls return typed errors
//! rather than panicking or hanging, services keep running, work resumes once the fault is
//! gone, and a call that reports success has done what it says, across a reopen too.
//!
//! Mounting needs root (CAP_SYS_ADMIN); without it these tests print why and return.

use crate::common::*;
use sheepdog::{Backoff, ErrorKind, RestartPolicy, Status, Supervisor};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A call that takes longer than this hangs.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// A mount over a directory, unmounted (lazily, so a leftover open file cannot stop it) on
/// drop.
struct Mount(PathBuf);

impl Mount {
    fn run(args: &[&str], path: &Path) -> Result<(), String> {
        let out = std::process::Command::new("mount")
            .args(args)
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// A private tmpfs (0700) of `size` (as `mount -o size=` takes it) on `path`.
    fn tmpfs(path: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        Mount::run(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=700"),
                "tmpfs",
            ],
            path,
        )?;
        Ok(Mount(path.to_path_buf()))
    }

    /// `path` bind-mounted over itself, read-only.
    fn read_only_bind(path: &Path) -> Result<Mount, String> {
        Mount::run(&["--bind", path.to_str().unwrap()], path)?;
        let mount = Mount(path.to_path_buf());
        Mount::run(&["-o", "remount,bind,ro"], path)?;
        Ok(mount)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// A harness whose state directory is not opened yet.
fn unopened_harness() -> Harness {
    Harness {
        sup: None,
        dir: tempfile::tempdir().expect("a temporary directory"),
        token: new_token(),
    }
}

/// Runs `f` on a thread of its own; fails the test if it does not return in time.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(CALL_DEADLINE)
        .unwrap_or_else(|e| panic!("{what} did not return within {CALL_DEADLINE:?}: {e}"))
}

/// Fills the filesystem under `path` with one file, and returns it.
fn fill(path: &Path) -> PathBuf {
    let filler = path.join("filler");
    let mut file = std::fs::File::create(&filler).expect("room for an empty file");
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        if let Err(e) = file.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(28), "filling: {e}"); // ENOSPC
            break;
        }
    }
    // Whatever single bytes still fit in the last page.
    while file.write_all(&[0x5a]).is_ok() {}
    filler
}

/// The pid of a service that must be running, and proof that it is.
fn online_pid(sup: &Supervisor, name: &str) -> u32 {
    let info = sup.describe(name).unwrap();
    assert_eq!(info.status(), Status::Online, "{name}");
    let pid = info.pid().unwrap();
    assert!(is_alive(pid), "{name}'s pid {pid} is gone");
    pid
}

/// The supervision thread still answers requests.
fn answers(sup: &Supervisor) {
    assert_eq!(
        sup.stop("zz-no-such-service").unwrap_err().kind(),
        ErrorKind::NotFound,
        "the supervision thread no longer answers"
    );
}

fn shut_down_and_check(h: Harness, mount: Option<Mount>) {
    let mut h = h;
    if let Some(sup) = h.sup.take() {
        within("shutdown", move || sup.shutdown()).expect("shutdown");
    }
    drop(mount);
    h.finish();
}

/// The disk fills while services run: calls that must write fail with `Store` errors, the
/// running services (and a crash-looping one) go on, and everything works again once there
/// is room.
#[test]
fn a_full_state_disk_gives_store_errors_keeps_services_running_and_recovers() {
    let mut h = unopened_harness();
    let mount = match Mount::tmpfs(&h.state_dir(), "1m") {
        Ok(m) => m,
        Err(e) => return eprintln!("skipped: cannot mount a tmpfs ({e}); this test needs root"),
    };
    let sup = Arc::new(Supervisor::open(h.state_dir()).unwrap());
    sup.start(h.sh("runner", "exec sleep 600")).unwrap();
    let looper = h
        .sh("looper", "sleep 0.02; exit 1")
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(20))));
    sup.start(looper).unwrap();
    let runner = online_pid(&sup, "runner");
    let filler = fill(&h.state_dir());

    let fresh = {
        let (sup, spec) = (sup.clone(), h.sh("fresh", "exec sleep 600"));
        within("start on a full disk", move || sup.start(spec))
    };
    let err = fresh.expect_err("a new service cannot be saved on a full disk");
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(
        err.to_string().contains("sheepdog.db"),
        "the error names the state file: {err}"
    );
    assert_eq!(
        sup.describe("fresh").unwrap_err().kind(),
        ErrorKind::NotFound,
        "a service that could not be saved is not half-created"
    );
    // A changed spec cannot be saved either; the running one is left alone.
    let changed = {
        let (sup, spec) = (sup.clone(), h.sh("runner", "exec sleep 601"));
        within("a spec change on a full disk", move || sup.start(spec))
    };
    assert_eq!(
        changed.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::Store)
    );
    assert_eq!(
        online_pid(&sup, "runner"),
        runner,
        "the runner was left alone"
    );
    let generation = sup.describe("looper").unwrap().generation();
    let went_on = wait_until(SECS_5, || {
        (sup.describe("looper").unwrap().generation() >= generation + 3).then_some(())
    });
    assert!(went_on.is_some(), "the crash loop stopped on a full disk");
    answers(&sup);

    std::fs::remove_file(&filler).unwrap();
    let info = sup
        .start(h.sh("fresh", "exec sleep 600"))
        .expect("room again: a new service is saved and started");
    assert_eq!(info.status(), Status::Online);
    assert_eq!(
        online_pid(&sup, "runner"),
        runner,
        "the runner never stopped"
    );
    assert_eq!(sup.stop("looper").unwrap(), 1);
    h.sup = Some(Arc::try_unwrap(sup).ok().expect("no other handle"));
    h.reopen().expect("reopen once there is room");
    for name in ["runner", "fresh"] {
        online_pid(h.sup(), name);
    }
    assert_eq!(status(h.sup(), "looper"), Status::Stopped);
    shut_down_and_check(h, Some(mount));
}

/// A stop, delete or restart on a full disk, whatever it returns: what `describe` shows
/// after the call is what a reopen restores. The README promises that desired states are
/// committed before the call returns; a call that cannot commit must not leave the
/// supervisor showing a state that the next open silently undoes.
#[test]
fn stop_delete_and_restart_on_a_full_disk_show_what_a_reopen_restores() {
    let mut h = unopened_harness();
    let mount = match Mount::tmpfs(&h.state_dir(), "1m") {
        Ok(m) => m,
        Err(e) => return eprintln!("skipped: cannot mount a tmpfs ({e}); this test needs root"),
    };
    h.sup = Some(Supervisor::open(h.state_dir()).unwrap());
    for name in ["stopped", "deleted", "restarted"] {
        h.sup().start(h.sh(name, "exec sleep 600")).unwrap();
    }
    h.sup().stop("restarted").unwrap();
    let filler = fill(&h.state_dir());
    let results = [
        ("stop", "stopped", h.sup().stop("stopped").map(|_| ())),
        ("delete", "deleted", h.sup().delete("deleted").map(|_| ())),
        (
            "restart",
            "restarted",
            h.sup().restart("restarted").map(|_| ()),
        ),
    ];
    // Up (running or on its way) or not; `None` for a service that is gone.
    let up = |sup: &Supervisor, name: &str| {
        sup.describe(name)
            .ok()
            .map(|i| i.status().is_running() || i.status() == Status::Backoff)
    };
    let shown: Vec<Option<bool>> = results.iter().map(|(_, n, _)| up(h.sup(), n)).collect();
    for (what, _, result) in &results {
        if let Err(e) = result {
            assert_eq!(e.kind(), ErrorKind::Store, "{what}: {e}");
        }
    }
    std::fs::remove_file(&filler).unwrap();
    h.reopen().unwrap();
    let problems: Vec<String> = results
        .iter()
        .zip(&shown)
        .filter_map(|((what, name, result), shown)| {
            let restored = up(h.sup(), name);
            let word = |s: &Option<bool>| match s {
                Some(true) => "up",
                Some(false) => "down",
                None => "gone",
            };
            (restored != *shown).then(|| {
                format!(
                    "{what} {name} returned {:?} on the full disk and left it {}; after reopen it is {}",
                    result.as_ref().map_err(|e| e.kind()),
                    word(shown),
                    word(&restored)
                )
            })
        })
        .collect();
    let clean = problems.is_empty();
    shut_down_and_check(h, Some(mount));
    assert!(clean, "{}", problems.join("\n"));
}

/// Makes `dir` read-only: a read-only bind mount for root (whom permission bits do not
/// stop), permission bits for anyone else. `None` (with the reason printed) if impossible.
fn make_read_only(dir: &Path) -> Option<Option<Mount>> {
    use std::os::unix::fs::PermissionsExt;
    if effective_uid() == Some(0) {
        match Mount::read_only_bind(dir) {
            Ok(m) => Some(Some(m)),
            Err(e) => {
                eprintln!("skipped: root cannot make a read-only bind mount ({e})");
                None
            }
        }
    } else {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().is_file() {
                let _ =
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o444));
            }
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        Some(None)
    }
}

fn make_writable(dir: &Path, mount: Option<Mount>) {
    use std::os::unix::fs::PermissionsExt;
    drop(mount);
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_file() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644));
        }
    }
}

/// Opening a read-only state directory fails with a typed error, starts nothing and
/// changes nothing; once writable again, it opens and resurrects as before.
#[test]
fn a_read_only_state_dir_is_refused_with_a_typed_error_and_left_untouched() {
    let mut h = Harness::new();
    let before = h.sup().start(h.sh("svc", "exec sleep 600")).unwrap();
    h.sup.take().unwrap().shutdown().unwrap();
    let db = h.state_dir().join("sheepdog.db");
    let bytes = std::fs::read(&db).unwrap();
    let Some(mount) = make_read_only(&h.state_dir()) else {
        return;
    };
    let dir = h.state_dir();
    let opened = within("open", move || Supervisor::open(dir));
    let refused = match &opened {
        Ok(_) => None,
        Err(e) => Some((e.kind(), e.to_string())),
    };
    eprintln!("open of a read-only state dir: {refused:?}");
    drop(opened);
    let nothing_ran = tagged_processes(&h.token);
    let untouched = std::fs::read(&db).unwrap() == bytes;
    make_writable(&h.state_dir(), mount);
    assert!(
        matches!(refused, Some((ErrorKind::Store | ErrorKind::Io, _))),
        "open of a read-only state dir: {refused:?}"
    );
    assert!(nothing_ran.is_empty(), "started {nothing_ran:?}");
    assert!(untouched, "the state file changed");
    h.sup = Some(Supervisor::open(h.state_dir()).unwrap());
    let after = h.sup().describe("svc").unwrap();
    assert_eq!((after.id(), after.status()), (before.id(), Status::Online));
    h.finish();
}

/// Only the state file is read-only (the directory and the lock are writable): `open`
/// refuses it with a `Store` error that names it, and starts nothing.
#[test]
fn a_read_only_state_file_is_refused_with_a_store_error_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::new();
    h.sup().start(h.sh("svc", "exec sleep 600")).unwrap();
    h.sup.take().unwrap().shutdown().unwrap();
    let db = h.state_dir().join("sheepdog.db");
    let bytes = std::fs::read(&db).unwrap();
    let mount = if effective_uid() == Some(0) {
        match Mount::read_only_bind(&db) {
            Ok(m) => Some(m),
            Err(e) => return eprintln!("skipped: root cannot make a read-only bind mount ({e})"),
        }
    } else {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
        None
    };
    let dir = h.state_dir();
    let opened = within("open", move || Supervisor::open(dir));
    let refused = match &opened {
        Ok(_) => None,
        Err(e) => Some((e.kind(), e.to_string())),
    };
    eprintln!("open with a read-only state file: {refused:?}");
    drop(opened);
    let nothing_ran = tagged_processes(&h.token);
    let untouched = std::fs::read(&db).unwrap() == bytes;
    drop(mount);
    let _ = std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644));
    let ok = matches!(&refused, Some((ErrorKind::Store, msg)) if msg.contains(&db.display().to_string()) && msg.contains("read-only"));
    assert!(ok, "open with a read-only state file: {refused:?}");
    assert!(nothing_ran.is_empty(), "started {nothing_ran:?}");
    assert!(untouched, "the state file changed");
    h.sup = Some(Supervisor::open(h.state_dir()).unwrap());
    assert_eq!(status(h.sup(), "svc"), Status::Online);
    h.finish();
}

/// The state directory turns read-only under a running supervisor (a bind mount over it
/// for root: its open files keep working, new files cannot be made). Calls still return
/// in time with a value or a typed error, and services keep running.
#[test]
fn a_state_dir_turned_read_only_under_a_running_supervisor_keeps_it_answering() {
    let h = Harness::new();
    let sup = h.sup();
    sup.start(h.sh("runner", "exec sleep 600")).unwrap();
    let runner = online_pid(sup, "runner");
    let Some(mount) = make_read_only(&h.state_dir()) else {
        return;
    };
    let h = Arc::new(h);
    let outcome = {
        let h = h.clone();
        within("calls on a read-only state dir", move || {
            let sup = h.sup();
            let started = sup.start(h.sh("fresh", "echo hi; exec sleep 600"));
            let stopped = sup.stop("runner");
            let restarted = sup.restart("runner");
            (
                started.map(|i| i.status()).map_err(|e| e.kind()),
                stopped.map_err(|e| e.kind()),
                restarted.map_err(|e| e.kind()),
            )
        })
    };
    eprintln!("calls on a read-only state dir (start, stop, restart): {outcome:?}");
    fn typed<T>(r: &Result<T, ErrorKind>) -> bool {
        r.as_ref()
            .err()
            .is_none_or(|k| matches!(k, ErrorKind::Store | ErrorKind::Io))
    }
    assert!(
        typed(&outcome.0) && typed(&outcome.1) && typed(&outcome.2),
        "{outcome:?}"
    );
    if outcome.2.is_ok() {
        assert_ne!(online_pid(h.sup(), "runner"), runner, "restarted");
    } else {
        assert_eq!(online_pid(h.sup(), "runner"), runner, "left running");
    }
    answers(h.sup());
    let mut h = Arc::try_unwrap(h).ok().expect("no other handle");
    if let Some(sup) = h.sup.take() {
        sup.shutdown().unwrap();
    }
    make_writable(&h.state_dir(), mount);
    h.finish();
}

/// Replaces the state file with garbage: by a rename over it (the supervisor's open file
/// lives on, unlinked) or by overwriting its bytes in place.
fn garbage(db: &Path, in_place: bool) -> Vec<u8> {
    let junk: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    if in_place {
        let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
        f.write_all(&junk).unwrap();
        f.sync_all().unwrap();
    } else {
        let tmp = db.with_extension("junk");
        std::fs::write(&tmp, &junk).unwrap();
        std::fs::rename(&tmp, db).unwrap();
    }
    junk
}

fn garbage_db_mid_run(in_place: bool) {
    let mut h = Harness::new();
    let sup = h.sup.take().unwrap();
    sup.start(h.sh("runner", "exec sleep 600")).unwrap();
    let looper = h
        .sh("looper", "sleep 0.02; exit 1")
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(20))));
    sup.start(looper).unwrap();
    let runner = online_pid(&sup, "runner");
    let db = h.state_dir().join("sheepdog.db");
    let junk = garbage(&db, in_place);
    let sup = Arc::new(sup);
    let results = {
        let (sup, fresh, changed) = (
            sup.clone(),
            h.sh("fresh", "exec sleep 600"),
            h.sh("looper", "sleep 0.02; exit 2"),
        );
        within("calls after the state file was replaced", move || {
            vec![
                ("start fresh", sup.start(fresh).map(|_| 0)),
                ("change looper", sup.start(changed).map(|_| 0)),
                ("stop looper", sup.stop("looper")),
                ("restart fresh", sup.restart("fresh")),
                ("delete fresh", sup.delete("fresh")),
            ]
        })
    };
    for (what, result) in &results {
        if let Err(e) = result {
            // `fresh` may not exist if its start failed.
            let ok = e.kind() == ErrorKind::Store
                || (e.kind() == ErrorKind::NotFound && what.ends_with("fresh"));
            assert!(ok, "{what}: {e:?}");
        }
    }
    assert_eq!(
        online_pid(&sup, "runner"),
        runner,
        "the runner kept running"
    );
    answers(&sup);
    let shutdown = {
        let sup = sup.clone();
        within("shutdown", move || sup.shutdown())
    };
    assert!(shutdown.is_ok(), "{shutdown:?}");
    drop(sup);
    assert!(
        wait_until(SECS_5, || tagged_processes(&h.token)
            .is_empty()
            .then_some(()))
        .is_some(),
        "processes left after shutdown"
    );
    let state = h.state_dir();
    let reopened = within("reopen", move || Supervisor::open(state));
    match reopened {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Store, "{e}");
            assert!(
                e.to_string().contains(&db.display().to_string()),
                "the error names the state file: {e}"
            );
            assert!(
                tagged_processes(&h.token).is_empty(),
                "a refused open started services"
            );
        }
        Ok(sup) => {
            // Only an in-place overwrite can be healed, by the checkpoint of the old
            // connection's log at its close; then the registry must be whole.
            assert!(
                in_place,
                "a garbage state file was opened (it is still garbage on disk: {})",
                std::fs::read(&db).is_ok_and(|b| b == junk)
            );
            let names: Vec<String> = sup
                .list()
                .unwrap()
                .iter()
                .map(|i| i.name().to_string())
                .collect();
            assert!(names.contains(&"runner".to_string()), "{names:?}");
            h.sup = Some(sup);
        }
    }
    h.finish();
}

/// Renamed over: the supervisor writes on to its open (now unlinked) file; the next open
/// finds the garbage and refuses it, naming the file.
/// (SQLite keeps the old file's `-wal` when its file moved; read over the garbage, it would
/// make the garbage look valid, and the next checkpoint would rewrite it.)
#[test]
fn a_state_file_renamed_over_with_garbage_mid_run_is_refused_at_reopen() {
    garbage_db_mid_run(false);
}

/// Overwritten in place: calls fail with `Store` errors or go on; nothing panics or hangs.
#[test]
fn a_state_file_overwritten_with_garbage_mid_run_gives_store_errors_not_panics() {
    garbage_db_mid_run(true);
}
