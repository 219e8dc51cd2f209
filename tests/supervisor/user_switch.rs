//! A service run as another user (uid and gid 65534, `nobody`/`nogroup` here) has that uid
//! and gid and only that user's groups (as /proc shows them), owns the files it creates,
//! gets the user's `HOME`, `USER` and `LOGNAME`, and is still contained: a stop ends a
//! daemon of it that left its process group (in the process-group tier, by its marker,
//! sealed with the run's uid). Its logs stay the supervisor's, and the host stays dumpable.
//! A switch that cannot happen is a `Spawn` error that says why: an unknown user or group,
//! a uid without a passwd entry and no group, a host without `CAP_SETUID`, a directory the
//! user may not enter. Needs root; skipped otherwise.

use crate::prelude::*;
use sheepdog::{Containment, ErrorKind, ServiceSpec, Status, Supervisor};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

const NOBODY: u32 = 65534;

fn root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The numbers of a `/proc/<pid>/status` line (`Uid:`, `Gid:`, `Groups:`).
fn status_numbers(pid: u32, field: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in the status of {pid}"))
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// The environment of `pid`, from `/proc/<pid>/environ`. While a process is in `execve`
/// (the service's shell runs `exec sleep`), between the new memory map and the new stack,
/// the file reads empty: wait for the new one.
fn environ(pid: u32) -> Vec<String> {
    wait_until(SECS_5, || {
        let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        (!bytes.is_empty()).then_some(bytes)
    })
    .expect("an environment")
    .split(|b| *b == 0)
    .map(|kv| String::from_utf8_lossy(kv).into_owned())
    .collect()
}

/// A directory the other user may write in.
fn theirs(parent: &Path) -> std::path::PathBuf {
    let dir = parent.join("theirs");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

#[test]
fn a_service_runs_as_its_user_with_that_users_ids_groups_and_files() -> TestResult {
    if !root() {
        return skip(
            "a_service_runs_as_its_user_with_that_users_ids_groups_and_files",
            "giving a child another user needs root",
        );
    }
    let h = Harness::new()?;
    let dir = theirs(h.dir.path());
    // A test binary exec'd as it is runs dumpable. (Read now, it could be another test's
    // id-switching spawn in flight: those leave the host non-dumpable for a moment.)
    let dumpable = rustix::process::DumpableBehavior::Dumpable;
    let spec = h
        .sh("nobody", "touch made; echo started; exec sleep 600")
        .user("nobody")
        .current_dir(&dir);
    let info = h.sup().start(spec).unwrap();
    let pid = info.pid().unwrap();
    assert_eq!(
        status_numbers(pid, "Uid:"),
        [NOBODY; 4],
        "real, effective, saved, fs"
    );
    assert_eq!(status_numbers(pid, "Gid:"), [NOBODY; 4]);
    assert_eq!(
        status_numbers(pid, "Groups:"),
        [NOBODY],
        "nobody's groups only: none of root's"
    );
    let made = dir.join("made");
    wait_until(SECS_5, || made.exists().then_some(())).expect("the service made its file");
    let meta = std::fs::metadata(&made).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (NOBODY, NOBODY),
        "owned by the user"
    );
    let env = environ(pid);
    for kv in ["USER=nobody", "LOGNAME=nobody", "HOME=/nonexistent"] {
        assert!(env.iter().any(|e| e == kv), "{kv} in {env:?}");
    }
    // Its logs are the supervisor's: the service writes into a pipe.
    let log = h
        .sup()
        .log_path("nobody", sheepdog::Stream::Stdout)
        .unwrap();
    wait_lines(&log, 1, SECS_5)?;
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o600),
        "root's, private"
    );
    // Other tests switch ids in this process too, each for a moment: the host must come
    // back to what it was, not stay non-dumpable.
    let back = wait_until(SECS_5, || {
        (rustix::process::dumpable_behavior().ok() == Some(dumpable)).then_some(())
    });
    assert!(back.is_some(), "the host is as dumpable as it was");
    h.finish()
}

#[test]
fn a_numeric_uid_and_a_group_by_name_give_those_ids() -> TestResult {
    if !root() {
        return skip(
            "a_numeric_uid_and_a_group_by_name_give_those_ids",
            "giving a child another user needs root",
        );
    }
    let h = Harness::new()?;
    let spec = h
        .sh("numeric", "exec sleep 600")
        .user(NOBODY.to_string())
        .group("nogroup");
    let pid = h.sup().start(spec).unwrap().pid().unwrap();
    assert_eq!(status_numbers(pid, "Uid:"), [NOBODY; 4]);
    assert_eq!(status_numbers(pid, "Gid:"), [NOBODY; 4]);
    // A group alone keeps the host's uid, with no supplementary groups.
    let spec = h
        .sh("group-only", "exec sleep 600")
        .group(NOBODY.to_string());
    let pid = h.sup().start(spec).unwrap().pid().unwrap();
    assert_eq!(status_numbers(pid, "Uid:"), [0; 4]);
    assert_eq!(status_numbers(pid, "Gid:"), [NOBODY; 4]);
    assert!(status_numbers(pid, "Groups:").is_empty());
    h.finish()
}

#[test]
fn a_stop_ends_a_daemon_of_another_users_run_in_every_tier() -> TestResult {
    if !root() {
        return skip(
            "a_stop_ends_a_daemon_of_another_users_run_in_every_tier",
            "giving a child another user needs root",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for containment in [Containment::Cgroup, Containment::ProcessGroup] {
        let Ok(sup) = Supervisor::builder()
            .state_dir(dir.path().join(format!("{containment:?}")))
            .containment(containment)
            .open()
        else {
            eprintln!("skipped {containment:?}: not available here");
            continue;
        };
        let token = new_token();
        let spec = ServiceSpec::new("daemon", "/bin/sh")
            .args(["-c", "setsid sleep 600 & exec sleep 600"])
            .env(TOKEN_VAR, &token)
            .user("nobody");
        sup.start(spec).unwrap();
        let escaped = wait_until(SECS_5, || {
            let pids = tagged_processes(&token);
            (pids.len() == 2).then_some(pids)
        })
        .expect("the service and its daemon run");
        for pid in &escaped {
            assert_eq!(status_numbers(*pid, "Uid:")[0], NOBODY);
        }
        assert_eq!(sup.stop("daemon").unwrap(), 1);
        let left = tagged_processes(&token);
        assert!(left.is_empty(), "{containment:?}: the stop left {left:?}");
        sup.shutdown().unwrap();
    }
    Ok(())
}

#[test]
fn a_switch_that_cannot_happen_is_a_spawn_error_that_says_why() -> TestResult {
    if !root() {
        return skip(
            "a_switch_that_cannot_happen_is_a_spawn_error_that_says_why",
            "giving a child another user needs root",
        );
    }
    let h = Harness::new()?;
    let sup = h.sup();
    let locked = h.dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for (spec, needle) in [
        (
            h.sh("ghost", "exit 0").user("no-such-user-here"),
            "there is no user 'no-such-user-here' on this host",
        ),
        (
            h.sh("no-group", "exit 0")
                .user("nobody")
                .group("no-such-group"),
            "there is no group 'no-such-group'",
        ),
        (
            h.sh("bare-uid", "exit 0").user("4242424"),
            "uid 4242424 has no passwd entry to take its group from: set the group too",
        ),
        (
            h.sh("locked-out", "exit 0")
                .user("nobody")
                .current_dir(&locked),
            "cannot enter working directory",
        ),
    ] {
        let name = spec.name().to_string();
        let err = sup.start(spec).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Spawn, "{name}: {err}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
        assert_eq!(status(sup, &name), Status::Errored, "{name}");
        let explained = sup.explain(&name).unwrap();
        let explained = explained.to_string();
        assert!(explained.contains(needle), "{name}: {explained}");
    }
    h.finish()
}

#[test]
fn a_host_without_cap_setuid_is_told_what_it_lacks() -> TestResult {
    if !root() {
        return skip(
            "a_host_without_cap_setuid_is_told_what_it_lacks",
            "giving a child another user needs root",
        );
    }
    const INNER: &str = "SHEEPDOG_TEST_NO_SETUID";
    if std::env::var_os(INNER).is_some() {
        let h = Harness::new()?;
        let err = h
            .sup()
            .start(h.sh("wants-nobody", "exit 0").user("nobody"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Spawn);
        assert!(
            err.to_string()
                .contains("running as user 'nobody' needs root, or CAP_SETUID and CAP_SETGID"),
            "{err}"
        );
        // Its own user needs no privilege.
        let ok = h.sh("as-root", "exec sleep 600").user("root").group("root");
        assert_eq!(h.sup().start(ok).unwrap().status(), Status::Online);
        return h.finish();
    }
    let mut command = Command::new("setpriv");
    command.args([
        "--bounding-set=-setuid,-setgid",
        "--inh-caps=-setuid,-setgid",
    ]);
    run_alone(
        command,
        "user_switch::a_host_without_cap_setuid_is_told_what_it_lacks",
        INNER,
    )
}
