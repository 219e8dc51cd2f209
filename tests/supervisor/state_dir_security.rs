//! The state directory belongs to the supervisor's user alone: nobody else reads a secret
//! from it (the registry holds every service's environment, the logs what services print),
//! and nobody redirects one of its writes with a planted symbolic link. The attacks are
//! played by uid 65534 where they need another user (tests run as root; elsewhere those
//! print why they are skipped).

use crate::prelude::*;
use sheepdog::{ErrorKind, Event, LogPolicy, Status, Stream, Supervisor};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

const NOBODY: u32 = 65534;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) -> TestResult {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .context(format!("chmod {mode:o} {}", path.display()))
}

/// A harness whose state directory exists (made by a first open), with no supervisor open.
fn made_state_dir() -> TestResult<Harness> {
    let mut h = Harness::new()?;
    h.take().shutdown()?;
    Ok(h)
}

/// Opening `dir` is refused with a `Store` error whose message holds every one of `words`.
fn assert_refused(dir: &Path, words: &[&str]) {
    let err = Supervisor::open(dir).err().unwrap_or_else(|| {
        panic!(
            "{} was opened; it should have been refused for: {words:?}",
            dir.display()
        )
    });
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    for word in words {
        assert!(err.to_string().contains(word), "'{word}' not in: {err}");
    }
}

#[test]
fn a_state_or_log_dir_others_may_write_is_refused_and_left_alone() -> TestResult {
    let h = made_state_dir()?;
    let state = h.state_dir();
    let logs = state.join("logs");
    chmod(&state, 0o777)?;
    assert_refused(
        &state,
        &[
            &state.display().to_string(),
            "written by its group and others",
        ],
    );
    assert_eq!(mode(&state), 0o777, "a refused directory is not changed");
    chmod(&state, 0o700)?;
    chmod(&logs, 0o770)?;
    assert_refused(
        &state,
        &[&logs.display().to_string(), "written by its group"],
    );
    chmod(&logs, 0o700)?;
    h.finish()
}

#[test]
fn a_state_or_log_dir_of_another_user_is_refused() -> TestResult {
    if !is_root() {
        return skip(
            test_name!("a_state_or_log_dir_of_another_user_is_refused"),
            format!("giving a directory to uid {NOBODY} needs root"),
        );
    }
    let h = made_state_dir()?;
    let state = h.state_dir();
    let logs = state.join("logs");
    std::os::unix::fs::chown(&logs, Some(NOBODY), Some(NOBODY))?;
    assert_refused(&state, &[&logs.display().to_string(), "owned by uid 65534"]);
    std::os::unix::fs::chown(&logs, Some(0), Some(0))?;
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY))?;
    assert_refused(
        &state,
        &[&state.display().to_string(), "owned by uid 65534"],
    );
    std::os::unix::fs::chown(&state, Some(0), Some(0))?;

    // Reached through a symbolic link: another user's is refused, one's own is followed.
    let link = h.dir.path().join("link");
    std::os::unix::fs::symlink(&state, &link)?;
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY))?;
    assert_refused(
        &link,
        &[
            &link.display().to_string(),
            "symbolic link owned by uid 65534",
        ],
    );
    std::os::unix::fs::lchown(&link, Some(0), Some(0))?;
    let sup = Supervisor::open(&link).context("one's own link is followed")?;
    sup.shutdown()?;
    h.finish()
}

/// A link planted in `logs/` (here by the owner itself: nobody else can write there) is
/// never followed, neither to write the service's output nor to read a log; a hard link to
/// a file elsewhere is refused too. The service runs on, its output counted as dropped, and
/// the failure is reported as a log error that names the file.
#[test]
fn a_link_planted_in_logs_is_never_followed() -> TestResult {
    let mut h = made_state_dir()?;
    let logs = h.state_dir().join("logs");
    let secret = h.dir.path().join("secret");
    std::fs::write(&secret, "root only\n")?;
    chmod(&secret, 0o600)?;
    let other = h.dir.path().join("other");
    std::fs::write(&other, "another file\n")?;
    std::os::unix::fs::symlink(&secret, logs.join("web.out.log"))?;
    std::fs::hard_link(&other, logs.join("web.err.log"))?;
    h.open(Supervisor::builder())?;
    let events = h.sup().subscribe();
    h.sup()
        .start(h.sh("web", "echo to-stdout; echo to-stderr >&2; exec sleep 600"))?;
    let mut errors = Vec::new();
    while errors.len() < 2 {
        if let Event::LogError { name, error } =
            expect_event(&events, SECS_10, "a log error", |e| {
                matches!(e, Event::LogError { .. })
            })?
        {
            assert_eq!(name, "web", "the log error names the service");
            errors.push(error);
        }
    }
    errors.sort();
    assert!(
        errors[0].contains(&logs.join("web.err.log").display().to_string())
            && errors[0].contains("hard links"),
        "the error names the hard-linked file: {}",
        errors[0]
    );
    assert!(
        errors[1].contains(&logs.join("web.out.log").display().to_string())
            && errors[1].contains("symbolic link"),
        "the error names the linked file: {}",
        errors[1]
    );
    assert_eq!(
        std::fs::read_to_string(&secret)?,
        "root only\n",
        "the link's target is untouched"
    );
    assert_eq!(
        std::fs::read_to_string(&other)?,
        "another file\n",
        "the hard link's file is untouched"
    );
    assert!(
        std::fs::symlink_metadata(logs.join("web.out.log"))?
            .file_type()
            .is_symlink(),
        "the link is left in place"
    );
    let dropped = wait_until(SECS_5, || {
        let n = h.sup().describe("web").ok()?.log_dropped_bytes();
        (n >= "to-stdout\nto-stderr\n".len() as u64).then_some(n)
    });
    assert!(dropped.is_some(), "the output is counted as dropped");
    assert_eq!(
        status(h.sup(), "web"),
        Status::Online,
        "the service runs on"
    );
    // Readers do not follow the link either.
    let read = h.sup().tail("web", Stream::Stdout, 10);
    assert!(
        read.as_ref().is_err_and(|e| e.kind() == ErrorKind::Io),
        "tail does not follow the link: {read:?}"
    );
    let mut follower = h.sup().follow_from_start("web", Stream::Stdout)?;
    assert_eq!(
        follower.recv_timeout(std::time::Duration::from_millis(300)),
        None,
        "follow does not follow the link"
    );
    h.finish()
}

/// Runs `cat path` as uid 65534: whether it read `needle`.
fn nobody_reads(path: &Path, needle: &str) -> TestResult<bool> {
    let out = std::process::Command::new("cat")
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .context(format!("cat {} as uid {NOBODY}", path.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(needle))
}

#[test]
fn another_user_cannot_read_a_secret_from_the_registry_its_log_or_a_service_log() -> TestResult {
    if !is_root() {
        return skip(
            test_name!(
                "another_user_cannot_read_a_secret_from_the_registry_its_log_or_a_service_log"
            ),
            format!("reading as uid {NOBODY} needs root"),
        );
    }
    let h = Harness::new()?;
    let token = format!("secret-{}", h.token);
    let spec = h
        .sh("api", "echo \"token=$API_TOKEN\"; exec sleep 600")
        .env("API_TOKEN", &token);
    h.sup().start(spec)?;
    let state = h.state_dir();
    let log = h.sup().log_path("api", Stream::Stdout)?;
    wait_lines(&log, 1, SECS_5)?;
    let (db, wal) = (state.join("sheepdog.db"), state.join("sheepdog.db-wal"));
    let holds = |path: &Path| {
        std::fs::read(path).is_ok_and(|b| String::from_utf8_lossy(&b).contains(&token))
    };
    // The secret is there to steal: the attack would succeed without the protection.
    assert!(holds(&db) || holds(&wal), "the registry holds the spec");
    assert!(holds(&log), "the log holds the output");
    for path in [&db, &wal, &log] {
        assert!(
            !nobody_reads(path, &token)?,
            "uid {NOBODY} read {}",
            path.display()
        );
    }
    // Not only the directory stops it: made traversable, the files still do.
    chmod(&state, 0o711)?;
    chmod(&state.join("logs"), 0o711)?;
    for path in [&db, &wal, &log] {
        assert!(
            !nobody_reads(path, &token)?,
            "uid {NOBODY} read {} through a traversable directory",
            path.display()
        );
    }
    chmod(&state, 0o700)?;
    chmod(&state.join("logs"), 0o700)?;
    h.finish()
}

/// An earlier version's directory, readable by all: tightened at `open`.
#[test]
fn a_state_dir_left_readable_by_others_is_made_private() -> TestResult {
    let mut h = made_state_dir()?;
    let state = h.state_dir();
    chmod(&state, 0o755)?;
    chmod(&state.join("logs"), 0o755)?;
    for file in ["sheepdog.db", "lock"] {
        chmod(&state.join(file), 0o644)?;
    }
    let log = state.join("logs/old.out.log");
    std::fs::write(&log, "earlier\n")?;
    chmod(&log, 0o644)?;
    let rotated = state.join("logs/old.out.log.1");
    std::fs::write(&rotated, "earlier still\n")?;
    chmod(&rotated, 0o664)?;
    h.open(Supervisor::builder())?;
    h.sup().start(h.sh("old", "echo now; exec sleep 600"))?;
    wait_lines(&log, 2, SECS_5)?;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("logs")), 0o700);
    for file in [
        "sheepdog.db",
        "lock",
        "logs/old.out.log",
        "logs/old.out.log.1",
    ] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    h.finish()
}

/// The modes of everything in a state directory, checked in a process with the umask
/// `SHEEPDOG_UMASK_TEST` asks for.
#[test]
fn every_file_is_private_whatever_the_umask() -> TestResult {
    let test = test_name!("every_file_is_private_whatever_the_umask");
    if running_alone(UMASK, test) {
        return files_are_private_here();
    }
    for umask in ["000", "022"] {
        let script = format!("umask {umask} && exec \"$@\"");
        let mut sh = std::process::Command::new("sh");
        sh.args(["-c", &script, "sh"]);
        run_alone(sh, test, UMASK).context(format!("under umask {umask}"))?;
    }
    Ok(())
}

/// The variable that marks the run of the test under a umask.
const UMASK: &str = "SHEEPDOG_TEST_UMASK";

fn files_are_private_here() -> TestResult {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .context("the umask in /proc/self/status")?;
    println!("umask {}", umask.trim());
    for group_readable_logs in [false, true] {
        let h = Harness::with(Supervisor::builder().group_readable_logs(group_readable_logs))?;
        let state = h.state_dir();
        let sup = h.sup();
        let spec = h
            .sh(
                "chatty",
                "while :; do echo a line of output; sleep 0.01; done",
            )
            .log(LogPolicy::default().max_bytes(200).keep(2));
        sup.start(spec)?;
        let rotated = state.join("logs/chatty.out.log.1");
        wait_until(SECS_5, || rotated.exists().then_some(())).context("a rotated log")?;
        let (dir, logs, log) = if group_readable_logs {
            (0o710, 0o750, 0o640)
        } else {
            (0o700, 0o700, 0o600)
        };
        assert_eq!(mode(&state), dir, "the state directory");
        assert_eq!(mode(&state.join("logs")), logs, "logs/");
        for file in ["sheepdog.db", "sheepdog.db-wal", "sheepdog.db-shm", "lock"] {
            assert_eq!(mode(&state.join(file)), 0o600, "{file}");
        }
        for file in ["chatty.out.log", "chatty.out.log.1"] {
            assert_eq!(mode(&state.join("logs").join(file)), log, "{file}");
        }
        h.finish()?;
    }
    Ok(())
}
