//! Nothing outlives a dead host, without any reopen: its guardian ends every service's
//! processes (grandchildren, `setsid` daemons, double forks), removes the supervisor's
//! cgroups (v2 and the v1 `pids` and `memory` directories) and a `temporary()` state
//! directory, whether the host died of SIGKILL or of a SIGTERM it had no handler for. A
//! guardian that dies is replaced; `shutdown` stands it down; a host that opens the state
//! directory while a guardian cleans up is not disturbed by it.
//!
//! The 1-second bound on the cleanup is measured in `benches/containment.rs`; here the
//! deadlines are generous, and the time taken is printed.

use crate::common::*;
use sheepdog::{Containment, ServiceSpec, Status, Supervisor};
use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TEST: &str = "guardian::a_dead_host_leaves_nothing_behind_in_any_tier";

/// Every way a descendant leaves: a grandchild in the group, a `setsid` daemon, a double
/// fork that stays in the group (re-parented to init), a double fork into a new session.
const SCRIPTS: [&str; 4] = [
    "sleep 600 & exec sleep 600",
    "(setsid sleep 600 &); exec sleep 600",
    "(sh -c 'sleep 600 &' &); exec sleep 600",
    "(setsid sh -c 'sleep 600 &' &); exec sleep 600",
];

fn tier(name: &str) -> Containment {
    match name {
        "cgroup" => Containment::Cgroup,
        "subreaper" => Containment::Subreaper,
        _ => Containment::ProcessGroup,
    }
}

/// The helper host: a temporary supervisor under `containment` running SCRIPTS (with
/// limits where the kernel enforces them, so that v1 cgroups exist too); prints its state
/// directory and the pid of each service, then waits to be killed.
fn helper_host(token: &str, containment: &str) -> ! {
    let sup = Supervisor::builder()
        .containment(tier(containment))
        .open()
        .unwrap();
    assert!(sup.guarded(), "a guardian runs");
    println!("state {}", sup.state_dir().display());
    for (i, script) in SCRIPTS.iter().enumerate() {
        let mut spec = ServiceSpec::new(format!("s{i}"), "/bin/sh")
            .args(["-c", script])
            .env(TOKEN_VAR, token);
        if sup.enforces_max_pids() {
            spec = spec.max_pids(64);
        }
        if sup.enforces_max_memory() {
            spec = spec.max_memory(1 << 30);
        }
        println!("pid {}", sup.start(spec).unwrap().pid().unwrap());
    }
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The cgroup directories `pid` is in that belong to a supervisor (`.../sheepdog-*/svc-*`),
/// with their parents (the supervisor's own), in every hierarchy.
fn supervisor_cgroups(pid: u32) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut out = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if !path.contains("/sheepdog-") {
            continue;
        }
        let mount = mountinfo.lines().find_map(|m| {
            let (left, right) = m.split_once(" - ")?;
            let mut f = left.split_whitespace();
            let root = f.nth(3)?;
            let point = f.next()?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let options = r.nth(1)?;
            let matches = if controllers.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup"
                    && controllers
                        .split(',')
                        .all(|c| options.split(',').any(|o| o == c))
            };
            matches.then(|| (root.to_string(), point.to_string()))
        });
        let Some((root, point)) = mount else { continue };
        let rel = path
            .strip_prefix(root.trim_end_matches('/'))
            .unwrap_or(path);
        let dir = Path::new(&point).join(rel.trim_start_matches('/'));
        out.push(dir.parent().unwrap().to_path_buf());
        out.push(dir);
    }
    out
}

struct Host {
    child: Child,
    state: PathBuf,
    pids: Vec<u32>,
}

fn start_host(token: &str, containment: &str) -> Host {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture"])
        .env("SHEEPDOG_HELPER_GUARDED", containment)
        .env("SHEEPDOG_HELPER_TOKEN", token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut state = None;
    let mut pids = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(s) = line.strip_prefix("state ") {
            state = Some(PathBuf::from(s));
        } else if let Some(p) = line.strip_prefix("pid ") {
            pids.push(p.parse().unwrap());
        } else if line == "ready" {
            break;
        }
    }
    assert_eq!(
        pids.len(),
        SCRIPTS.len(),
        "the helper host started its services"
    );
    Host {
        child,
        state: state.unwrap(),
        pids,
    }
}

/// The guardians (by pid) watching the supervisor whose state directory is `state`.
fn guardians_of(state: &Path) -> Vec<u32> {
    let state = std::fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    let needle = format!("SHEEPDOG_GUARDIAN_STATE={}", state.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| is_alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

#[test]
fn a_dead_host_leaves_nothing_behind_in_any_tier() {
    if let (Ok(containment), Ok(token)) = (
        std::env::var("SHEEPDOG_HELPER_GUARDED"),
        std::env::var("SHEEPDOG_HELPER_TOKEN"),
    ) {
        helper_host(&token, &containment);
    }
    let cgroups_here = Supervisor::builder()
        .containment(Containment::Cgroup)
        .guardian(false)
        .open()
        .is_ok();
    for containment in ["cgroup", "process group", "subreaper"] {
        if containment == "cgroup" && !cgroups_here {
            eprintln!("skipped cgroup: no writable cgroup v2 hierarchy here");
            continue;
        }
        for (signal, name) in [(libc::SIGKILL, "SIGKILL"), (libc::SIGTERM, "SIGTERM")] {
            let what = format!("{containment}, {name}");
            let token = new_token();
            let mut host = start_host(&token, containment);
            let n = SCRIPTS.len();
            let all = wait_until(SECS_10, || {
                let all: HashSet<u32> = tagged_processes(&token).into_iter().collect();
                (all.len() == 2 * n).then_some(all)
            });
            assert!(
                all.is_some(),
                "{what}: each service runs two processes: {:?}",
                tagged_processes(&token)
            );
            let cgroups: HashSet<PathBuf> = host
                .pids
                .iter()
                .flat_map(|&p| supervisor_cgroups(p))
                .collect();
            if containment == "cgroup" {
                assert!(!cgroups.is_empty(), "{what}: the services are in cgroups");
            }
            let guardians = guardians_of(&host.state);
            assert_eq!(guardians.len(), 1, "{what}: one guardian");
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(host.child.id() as i32).unwrap(),
                rustix::process::Signal::from_named_raw(signal).unwrap(),
            )
            .unwrap();
            let died = Instant::now();
            let status = host.child.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(signal),
                "{what}: the host died of the signal"
            );
            let clean = wait_until(SECS_10, || {
                (tagged_processes(&token).is_empty()
                    && !host.state.exists()
                    && cgroups.iter().all(|d| !d.exists())
                    && guardians_of(&host.state).is_empty())
                .then_some(())
            });
            let took = died.elapsed();
            assert!(
                clean.is_some(),
                "{what}: left after the host died: processes {:?}, state dir {}, cgroups {:?}, guardian {:?}",
                tagged_processes(&token),
                host.state.exists(),
                cgroups.iter().filter(|d| d.exists()).collect::<Vec<_>>(),
                guardians_of(&host.state)
            );
            eprintln!("{what}: everything gone {took:?} after the host died");
        }
    }
}

#[test]
fn a_guardian_that_dies_is_replaced_and_shutdown_stands_it_down() {
    let h = Harness::new();
    assert!(h.sup().guarded());
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    // Found by its environment as soon as it is exec'd; it names itself a moment later.
    let first = wait_until(SECS_5, || {
        let g = guardians_of(&h.state_dir());
        (g.len() == 1 && comm(g[0]).trim() == "sheepdog-guard").then(|| g[0])
    })
    .unwrap_or_else(|| {
        let g = guardians_of(&h.state_dir());
        panic!(
            "one guardian runs, named: {g:?} {:?}",
            g.iter().map(|p| comm(*p)).collect::<Vec<_>>()
        )
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let second = wait_until(SECS_5, || {
        let g = guardians_of(&h.state_dir());
        (g.len() == 1 && g[0] != first).then(|| g[0])
    })
    .expect("a new guardian replaced the dead one");
    assert!(h.sup().guarded());
    h.sup().start(h.sh("nap", "exec sleep 600")).unwrap();
    let state = h.state_dir();
    let sup = h.sup.as_ref().unwrap();
    sup.shutdown().unwrap();
    assert!(!sup.guarded());
    assert!(guardians_of(&state).is_empty(), "{second} stood down");
    // Reaped too: no zombie of it is left with the host.
    assert!(
        std::fs::read_to_string(format!("/proc/{second}/stat")).is_err(),
        "guardian {second} was not reaped"
    );
    assert!(
        state.join("sheepdog.db").exists(),
        "a shutdown keeps the state"
    );
    h.finish();
}

const REOPEN_TEST: &str =
    "guardian::a_host_that_opens_the_state_directory_at_once_keeps_its_services";
const SERVICES: usize = 5;

#[test]
fn a_host_that_opens_the_state_directory_at_once_keeps_its_services() {
    if let (Some(dir), Ok(token)) = (
        std::env::var_os("SHEEPDOG_HELPER_REOPEN"),
        std::env::var("SHEEPDOG_HELPER_TOKEN"),
    ) {
        let sup = Supervisor::open(dir).unwrap();
        for i in 0..SERVICES {
            let spec = ServiceSpec::new(format!("s{i}"), "/bin/sh")
                .args(["-c", "(setsid sleep 600 &); exec sleep 600"])
                .env(TOKEN_VAR, &token);
            sup.start(spec).unwrap();
        }
        println!("ready");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let token = new_token();
    let mut host = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", REOPEN_TEST, "--nocapture"])
        .env("SHEEPDOG_HELPER_REOPEN", &state)
        .env("SHEEPDOG_HELPER_TOKEN", &token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = std::io::BufReader::new(host.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "ready");
    assert!(ready);
    let before: HashSet<u32> = wait_until(SECS_10, || {
        let all: HashSet<u32> = tagged_processes(&token).into_iter().collect();
        (all.len() == 2 * SERVICES).then_some(all)
    })
    .expect("every service and its daemon run");
    host.kill().unwrap();
    host.wait().unwrap();
    // At once: the guardian is cleaning up, or about to.
    let sup = Supervisor::open(&state).unwrap();
    for info in sup.list().unwrap() {
        assert_eq!(info.status(), Status::Online, "{}", info.name());
    }
    let old_guardian_gone = wait_until(SECS_10, || (guardians_of(&state).len() == 1).then_some(()));
    assert!(
        old_guardian_gone.is_some(),
        "only the new host's guardian runs"
    );
    let now = wait_until(SECS_10, || {
        let all: HashSet<u32> = tagged_processes(&token).into_iter().collect();
        (all.len() == 2 * SERVICES).then_some(all)
    })
    .expect("each service and its daemon run once");
    assert!(now.is_disjoint(&before), "nothing of the dead host is left");
    for info in sup.list().unwrap() {
        assert_eq!(info.status(), Status::Online, "{}", info.name());
    }
    sup.shutdown().unwrap();
    let gone = wait_until(SECS_5, || tagged_processes(&token).is_empty().then_some(()));
    assert!(gone.is_some(), "leaked: {:?}", tagged_processes(&token));
}
