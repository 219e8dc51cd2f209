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
fn a_setsid_daemon_does_not_survive_stop() {
    let h = Harness::new();
    if !cgroups_or_skip(&h) {
        return;
    }
    h.sup().start(h.sh("daemonizer", DAEMONIZE)).unwrap();
    let both = wait_until(SECS_5, || {
        (tagged_processes(&h.token).len() >= 2).then_some(())
    });
    assert!(
        both.is_some(),
        "the daemon started: {:?}",
        tagged_processes(&h.token)
    );
    stop_leaves_nothing(h.sup(), &h.token, "daemonizer");
    h.finish();
}

#[test]
fn a_main_process_that_exits_takes_its_daemons_with_it() {
    let h = Harness::new();
    if !cgroups_or_skip(&h) {
        return;
    }
    let spec = h
        .sh("forker", "(setsid sleep 600 &); sleep 0.3; exit 0")
        .restart(RestartPolicy::never());
    h.sup().start(spec).unwrap();
    h.sup().wait_for("forker", Status::Exited, SECS_5).unwrap();
    assert!(
        tagged_processes(&h.token).is_empty(),
        "the daemon outlived its service"
    );
    h.finish();
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

#[test]
fn explicit_process_group_containment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::builder()
        .state_dir(dir.path())
        .containment(Containment::ProcessGroup)
        .open()
        .unwrap();
    assert_eq!(sup.containment(), Containment::ProcessGroup);
}

const SERVICES: usize = 5;

/// The helper host of the host-death tests: starts SERVICES daemonizing services under
/// `containment`, says "ready", and waits to be killed.
fn daemonizing_host(dir: &std::ffi::OsStr, token: &str, containment: Containment) -> ! {
    let sup = Supervisor::builder()
        .state_dir(dir)
        .containment(containment)
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

/// Runs in a process of its own: a subreaper host changes where every orphan of the test
/// binary goes.
#[test]
fn a_subreaper_host_ends_escaped_daemons_with_their_service() {
    if std::env::var_os("SHEEPDOG_SUBREAPER_HOST").is_none() {
        run_alone(
            std::process::Command::new("env"),
            "containment::a_subreaper_host_ends_escaped_daemons_with_their_service",
            "SHEEPDOG_SUBREAPER_HOST",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = new_token();
    let sup = Supervisor::builder()
        .state_dir(dir.path())
        .containment(Containment::ProcessGroup)
        .subreaper(true)
        .open()
        .unwrap();
    assert_eq!(
        sup.containment(),
        Containment::ProcessGroup,
        "explicit wins"
    );
    drop(sup);
    let sup = Supervisor::builder()
        .state_dir(dir.path())
        .containment(Containment::Subreaper)
        .open()
        .unwrap();
    assert_eq!(sup.containment(), Containment::Subreaper);
    let tagged = |name: &str, script: &str| {
        sheepdog::ServiceSpec::new(name, "/bin/sh")
            .args(["-c", script])
            .env(TOKEN_VAR, &token)
    };
    // 1. A stop ends the daemon that left the group and session.
    sup.start(tagged("daemonizer", DAEMONIZE)).unwrap();
    wait_for_tagged(&token, "the main process and its daemon", |n| n == 2);
    stop_leaves_nothing(&sup, &token, "daemonizer");
    // 2. A main process that exits takes its daemon with it, and the exit says so.
    sup.start(
        tagged("forker", "(setsid sleep 600 &); sleep 0.3; exit 0").restart(RestartPolicy::never()),
    )
    .unwrap();
    sup.wait_for("forker", Status::Exited, SECS_10).unwrap();
    assert!(
        tagged_processes(&token).is_empty(),
        "the daemon outlived its main process: {:?}",
        tagged_processes(&token)
    );
    let run = &sup.history("forker", 1).unwrap()[0];
    assert!(
        run.reason().unwrap().contains("left processes running"),
        "{run:?}"
    );
    sup.shutdown().unwrap();
    assert!(tagged_processes(&token).is_empty());
    // Nothing the supervisor claimed is left a zombie.
    let zombies: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(zombies.is_empty(), "children left: {zombies:?}");
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

#[test]
fn fifty_grandchildren_ignoring_sigterm_are_gone_after_stop() {
    let h = Harness::new();
    if !cgroups_or_skip(&h) {
        return;
    }
    // 25 stay in the group, 25 leave it with setsid; all ignore SIGTERM (inherited).
    let script = "trap '' TERM; for i in $(seq 25); do sleep 600 & setsid sleep 600 & done; \
                  exec sleep 600";
    let spec = h
        .sh("tree", script)
        .stop_timeout(Duration::from_millis(200));
    h.sup().start(spec).unwrap();
    wait_for_tagged(&h.token, "the tree is up", |n| n == 51);
    stop_leaves_nothing(h.sup(), &h.token, "tree");
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
        let sup = Supervisor::builder()
            .state_dir(dir)
            .containment(Containment::ProcessGroup)
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
        // A fresh pid namespace (`unshare --pid --fork`) whose init is not a reaper keeps
        // the zombie, and its pid, for good: the reuse cannot be staged.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie_of_init = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.split_whitespace().take(2).eq(["Z", "1"]));
        if zombie_of_init {
            eprintln!("skipped: pid 1 here does not reap orphans, so pid {pid} is never freed");
            return;
        }
        panic!("the service died with its host and was reaped: {stat}");
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

/// Runs `script` as a service of a supervisor with process-group containment, waits until
/// it has two processes, then checks that a stop leaves none.
fn without_cgroups_stop_leaves_nothing(name: &str, script: &str, stop_timeout: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let token = new_token();
    let sup = Supervisor::builder()
        .state_dir(dir.path())
        .containment(Containment::ProcessGroup)
        .open()
        .unwrap();
    let spec = sheepdog::ServiceSpec::new(name, "/bin/sh")
        .args(["-c", script])
        .env(TOKEN_VAR, &token)
        .stop_timeout(stop_timeout);
    sup.start(spec).unwrap();
    wait_for_tagged(&token, "the service's two processes", |n| n == 2);
    stop_leaves_nothing(&sup, &token, name);
    sup.shutdown().unwrap();
}

#[test]
fn without_cgroups_a_daemon_started_during_the_stop_is_ended_too() {
    // The stop signal makes the main process start a daemon in a session of its own and
    // exit: the daemon is born after the stop looked for the service's processes, and is
    // out of the group before the group is found empty.
    without_cgroups_stop_leaves_nothing(
        "late",
        "trap '(setsid sleep 600 &); exit 0' TERM; while :; do sleep 1; done",
        Duration::from_secs(5),
    );
}

#[test]
fn without_cgroups_a_stop_still_ends_a_setsid_daemon() {
    // The daemon ignores SIGTERM too: the stop's SIGKILL must reach it.
    without_cgroups_stop_leaves_nothing(
        "daemonizer",
        "(trap '' TERM; setsid sleep 600 &); exec sleep 600",
        Duration::from_millis(200),
    );
}
