//! The next `open` after a host died never signals a process that merely took the pid of
//! one of its runs: each run's identity (boot id, pid, start time, pidfs inode) is stored,
//! and a process with the dead run's pid, leading a process group of the same id, is told
//! apart by its start time and pidfs inode. In every tier. Needs root (to force a pid
//! through `ns_last_pid`); skipped otherwise, and where the pid cannot be taken back.

use crate::prelude::*;
use std::os::unix::process::CommandExt;

/// A helper host: one service, `sleep`, under the tier `TIER` in the state directory
/// `STATE`, without a guardian (the identity check of `open` is what is tested); says the
/// service's pid.
fn helper_host() -> ! {
    let sup = helper_builder()
        .guardian(false)
        .open()
        .expect("the helper host opens its supervisor");
    let spec = sheepdog::ServiceSpec::new("victim", "sleep")
        .arg("600")
        .env(TOKEN_VAR, helper_arg("TOKEN"));
    let info = sup.start(spec).expect("the helper host starts its service");
    println!("pid {}", info.pid().expect("a started service has a pid"));
    serve_until_killed()
}

/// Takes `pid` for a new process by setting `ns_last_pid` (root only); other processes on the
/// machine may win the race, so this retries. One test at a time, across processes: two
/// such tests would undo each other's `ns_last_pid`.
fn spawn_with_pid(pid: u32) -> Option<std::process::Child> {
    let lock = std::fs::File::create(std::env::temp_dir().join("sheepdog-tests-ns_last_pid"));
    let lock = lock.ok()?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).ok()?;
    for _ in 0..1000 {
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return None; // taken by a process that lives on
        }
        if std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
            return None;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .ok()?;
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// Kills `child` and reaps it on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn a_process_that_took_a_dead_runs_pid_is_never_signalled(tier: &Tier) -> TestResult {
    if is_helper_host() {
        helper_host();
    }
    if !is_root() {
        return skip(tier.test(), "forcing a pid needs root (ns_last_pid)");
    }
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let token = new_token();
    let mut host = HostProcess::in_tier(tier, &state, &token, &[])?;
    let pid = host
        .said("pid ")?
        .parse::<u32>()
        .context("the helper host says its service's pid")?;
    host.kill()?;
    // Dead, and reaped by init (until then its pid is taken).
    let gone = || (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(());
    if wait_until(SECS_10, gone).is_none() {
        assert!(!is_alive(pid), "{tier}: the service died with its host");
        // A pid namespace whose init does not reap orphans (`unshare --pid --fork` runs the
        // test runner as init): the zombie keeps the pid for good.
        return skip(
            tier.test(),
            format!(
                "init of this pid namespace does not reap pid {pid}, so it cannot be taken back"
            ),
        );
    }
    let Some(impostor) = spawn_with_pid(pid) else {
        return skip(
            tier.test(),
            format!("could not take pid {pid} back (a busy machine won every race)"),
        );
    };
    let impostor = Reaped(impostor);
    // Same pid, leads a process group of the same id: only its start time and pidfs inode
    // tell it apart from the dead host's service.
    let sup = tier.builder().state_dir(&state).resurrect(false).open()?;
    let survived = is_alive(pid);
    let reclaimed = sup.reclaimed();
    drop(impostor);
    sup.shutdown()?;
    assert!(
        survived,
        "{tier}: the process that reused pid {pid} was killed"
    );
    assert!(
        reclaimed.is_empty(),
        "{tier}: nothing is reported reclaimed: {reclaimed:?}"
    );
    no_tagged_left(&token, "after shutdown")
}

per_tier!(a_process_that_took_a_dead_runs_pid_is_never_signalled);
