//! Nothing escapes: with cgroup containment, descendants that leave the process group
//! (`setsid`, double fork) are ended by a stop, by their main process's exit, and by the next
//! `open` after the host died. Skipped, with a printed reason, where no writable cgroup v2
//! hierarchy exists.

use crate::common::*;
use sheepdog::{Containment, RestartPolicy, Status, Supervisor};
use std::collections::HashSet;
use std::time::Duration;

/// A daemon that leaves the service's process group and session, then the main process.
const DAEMONIZE: &str = "(setsid sleep 600 &); exec sleep 600";

/// Stops `name` and checks that nothing carrying `token` is left alive.
fn stop_leaves_nothing(sup: &Supervisor, token: &str, name: &str) {
    sup.stop(name).unwrap();
    let left = tagged_processes(token);
    assert!(left.is_empty(), "{name}: survived its stop: {left:?}");
}

/// Waits until the processes carrying `token` satisfy `enough` (given their count).
fn wait_for_tagged(token: &str, what: &str, enough: impl Fn(usize) -> bool) {
    let up = wait_until(SECS_10, || {
        enough(tagged_processes(token).len()).then_some(())
    });
    assert!(
        up.is_some(),
        "{what}: {} processes",
        tagged_processes(token).len()
    );
}

fn cgroups_or_skip(h: &Harness) -> bool {
    if h.sup().containment() == Containment::Cgroup {
        return true;
    }
    eprintln!("skipped: no writable cgroup v2 hierarchy here (needs root or a delegated subtree)");
    false
}

#[test]
fn restarts_reuse_a_clean_cgroup_and_never_one_that_was_killed() {
    let h = Harness::new();
    if !cgroups_or_skip(&h) {
        return;
    }
    // Runs 1-3 crash, run 4 leaves a daemon and crashes (its cgroup is killed), run 5
    // exits 0. Each run notes the cgroup it started in.
    let count = h.dir.path().join("n");
    let places = h.dir.path().join("cgroups");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; \
         grep '^0::' /proc/self/cgroup >> {p}; \
         [ $n -le 3 ] && exit 1; [ $n -eq 4 ] && {{ (setsid sleep 600 &); exit 1; }}; exit 0",
        c = count.display(),
        p = places.display()
    );
    let spec = h
        .sh("reuse", &script)
        .restart(RestartPolicy::on_failure().backoff(sheepdog::Backoff::none()));
    h.sup().start(spec).unwrap();
    h.sup().wait_for("reuse", Status::Exited, SECS_10).unwrap();
    let places: Vec<String> = std::fs::read_to_string(&places)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(places.len(), 5, "{places:?}");
    assert!(
        places[..4].iter().all(|p| *p == places[0]),
        "runs after clean exits start in the same cgroup: {places:?}"
    );
    assert_ne!(places[4], places[3], "a killed cgroup is never reused");
    let runs = h.sup().history("reuse", 10).unwrap();
    let codes: Vec<Option<i32>> = runs.iter().rev().map(|r| r.code()).collect();
    assert_eq!(
        codes,
        [Some(1), Some(1), Some(1), Some(1), Some(0)],
        "{runs:?}"
    );
    assert!(
        runs[1]
            .reason()
            .is_some_and(|r| r.contains("left processes running")),
        "{:?}",
        runs[1]
    );
    assert!(
        tagged_processes(&h.token).is_empty(),
        "the daemon outlived its run"
    );
    h.finish();
}

const SERVICES: usize = 5;

/// The helper host of the host-death tests: starts SERVICES daemonizing services under
/// `containment`, says "ready", and waits to be killed.
fn daemonizing_host(dir: &std::ffi::OsStr, token: &str, containment: Containment) -> ! {
    // No guardian: what `open` does after a host died is what is tested here.
    let sup = Supervisor::builder()
        .state_dir(dir)
        .containment(containment)
        .guardian(false)
        .open()
        .unwrap();
    for i in 0..SERVICES {
        let spec = sheepdog::ServiceSpec::new(format!("d{i}"), "/bin/sh")
            .args(["-c", DAEMONIZE])
            .env(TOKEN_VAR, token);
        sup.start(spec).unwrap();
    }
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Kills a helper host whose services left daemons in sessions of their own, then checks
/// that `open` with `containment` kills and reports every daemon and starts each service
/// once.
fn escaped_daemons_are_reclaimed(test: &str, containment: Containment) {
    if let (Some(dir), Some(token)) = (
        std::env::var_os("SHEEPDOG_HELPER_HOST"),
        std::env::var("SHEEPDOG_HELPER_TOKEN").ok(),
    ) {
        daemonizing_host(&dir, &token, containment);
    }
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let token = new_token();
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env("SHEEPDOG_HELPER_HOST", &state)
        .env("SHEEPDOG_HELPER_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let before = wait_until(Duration::from_secs(30), || {
        let all: HashSet<u32> = tagged_processes(&token).into_iter().collect();
        (all.len() == 2 * SERVICES).then_some(all)
    });
    host.kill().unwrap();
    host.wait().unwrap();
    let before = before.expect("every service ran its main process and its daemon");
    // The main processes die with the host; the daemons are in their own sessions.
    let daemons = wait_until(SECS_10, || {
        let left = tagged_processes(&token);
        (left.len() == SERVICES).then_some(left)
    })
    .expect("PDEATHSIG ended the main processes only");

    let sup = Supervisor::builder()
        .state_dir(&state)
        .containment(containment)
        .open()
        .unwrap();
    for d in &daemons {
        assert!(!is_alive(*d), "daemon {d} of the dead host survived open");
    }
    let reclaimed: HashSet<u32> = sup
        .reclaimed()
        .into_iter()
        .flat_map(|(_, pids)| pids)
        .collect();
    for d in &daemons {
        assert!(
            reclaimed.contains(d),
            "daemon {d} is reported as reclaimed: {:?}",
            sup.reclaimed()
        );
    }
    let now = wait_until(SECS_10, || {
        let all: HashSet<u32> = tagged_processes(&token).into_iter().collect();
        (all.len() == 2 * SERVICES).then_some(all)
    })
    .expect("each service started once again");
    assert!(now.is_disjoint(&before));
    sup.shutdown().unwrap();
    let gone = wait_until(SECS_5, || tagged_processes(&token).is_empty().then_some(()));
    assert!(gone.is_some(), "leaked: {:?}", tagged_processes(&token));
}

#[test]
fn a_killed_host_leaves_no_escaped_daemon_after_reopen() {
    if std::env::var_os("SHEEPDOG_HELPER_HOST").is_none() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Supervisor::open(dir.path()).unwrap();
        if probe.containment() != Containment::Cgroup {
            eprintln!("skipped: no writable cgroup v2 hierarchy here");
            return;
        }
    }
    escaped_daemons_are_reclaimed(
        "containment::a_killed_host_leaves_no_escaped_daemon_after_reopen",
        Containment::Cgroup,
    );
}

#[test]
fn without_cgroups_escaped_daemons_are_found_by_their_marker_after_reopen() {
    escaped_daemons_are_reclaimed(
        "containment::without_cgroups_escaped_daemons_are_found_by_their_marker_after_reopen",
        Containment::ProcessGroup,
    );
}

#[test]
fn a_fork_bomb_is_held_at_max_pids_and_stopped() {
    let h = Harness::new();
    if !h.sup().enforces_max_pids() {
        eprintln!("skipped: no pids cgroup controller here (needs cgroup containment)");
        return;
    }
    // Forks sleepers as fast as it can; a failed fork is retried.
    let bomb = "import os, time\n\
                while True:\n\
                \x20   try:\n\
                \x20       if os.fork() == 0:\n\
                \x20           time.sleep(600)\n\
                \x20           os._exit(0)\n\
                \x20   except OSError:\n\
                \x20       time.sleep(0.001)\n";
    let spec = sheepdog::ServiceSpec::new("bomb", "python3")
        .args(["-c", bomb])
        .env(TOKEN_VAR, &h.token)
        .max_pids(64)
        .stop_timeout(Duration::from_millis(200));
    h.sup().start(spec).unwrap();
    wait_for_tagged(&h.token, "the bomb reached its cap", |n| n >= 64);
    for _ in 0..3 {
        let n = tagged_processes(&h.token).len();
        assert!(n <= 64, "{n} processes: the cap did not hold");
    }
    assert_eq!(status(h.sup(), "bomb"), Status::Online);
    stop_leaves_nothing(h.sup(), &h.token, "bomb");
    h.finish();
}

const REUSE_TEST: &str = "containment::a_reused_pid_is_never_signalled";

/// Takes `pid` for a new process by setting `ns_last_pid` (root only); other processes on the
/// machine may win the race, so this retries.
fn spawn_with_pid(pid: u32) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
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

#[test]
fn a_reused_pid_is_never_signalled() {
    if let Some(dir) = std::env::var_os("SHEEPDOG_HELPER_HOST") {
        // No guardian: the identity check of `open` is what is tested here.
        let sup = Supervisor::builder()
            .state_dir(dir)
            .containment(Containment::ProcessGroup)
            .guardian(false)
            .open()
            .unwrap();
        let token = std::env::var("SHEEPDOG_HELPER_TOKEN").unwrap();
        let info = sup
            .start(
                sheepdog::ServiceSpec::new("victim", "sleep")
                    .arg("600")
                    .env(TOKEN_VAR, token),
            )
            .unwrap();
        println!("pid {}", info.pid().unwrap());
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: forcing a pid needs root (ns_last_pid)");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let token = new_token();
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", REUSE_TEST, "--nocapture"])
        .env("SHEEPDOG_HELPER_HOST", &state)
        .env("SHEEPDOG_HELPER_TOKEN", &token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(host.stdout.take().unwrap()));
    let pid: u32 = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("pid ").map(|p| p.parse().unwrap()))
        .expect("the helper host reported its service's pid");
    host.kill().unwrap();
    host.wait().unwrap();
    // Dead, and reaped by init (until then its pid is taken).
    let gone = || (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(());
    if wait_until(SECS_10, gone).is_none() {
        assert!(!is_alive(pid), "the service died with its host");
        // A pid namespace whose init does not reap orphans (`unshare --pid --fork` runs the
        // test runner as init): the zombie keeps the pid for good.
        eprintln!("skipped: init of this pid namespace does not reap pid {pid}, so it cannot be taken back");
        return;
    }
    let Some(mut impostor) = spawn_with_pid(pid) else {
        eprintln!("skipped: could not take pid {pid} back (a busy machine won every race)");
        return;
    };
    // Same pid, leads a process group of the same id: only its start time and pidfs inode
    // tell it apart from the dead host's service.
    let sup = Supervisor::builder()
        .state_dir(&state)
        .containment(Containment::ProcessGroup)
        .resurrect(false)
        .open()
        .unwrap();
    let survived = is_alive(pid);
    let reclaimed = sup.reclaimed();
    let _ = impostor.kill();
    let _ = impostor.wait();
    sup.shutdown().unwrap();
    assert!(survived, "the process that reused pid {pid} was killed");
    assert!(reclaimed.is_empty(), "{reclaimed:?}");
    assert!(tagged_processes(&token).is_empty());
}
