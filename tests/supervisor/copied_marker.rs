//! A process that merely carries a copy of a run's `SHEEPDOG_RUN` marker is never signalled:
//! not by a stop, not by the cleanup after a host's death, in any containment tier. The
//! innocent here is a process of uid 65534 in a session of its own, started with the whole
//! marker copied from a running service's environment, and a process of the host's uid with
//! a marker whose tag was made up. Real escapees (a `setsid` daemon of the service) are
//! still ended. Needs root (to start a process as another uid); skipped otherwise.

use crate::common::*;
use sheepdog::{Containment, ServiceSpec, Supervisor};
use std::process::{Child, Command};
use std::time::Duration;

const DAEMONIZE: &str = "(setsid sleep 600 &); exec sleep 600";
const INNOCENT_VAR: &str = "SHEEPDOG_TEST_INNOCENT";

fn root_or_skip() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: starting a process of uid 65534 needs root");
    false
}

/// The `SHEEPDOG_RUN` in the environment of `pid`.
fn marker_of(pid: u32) -> String {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"SHEEPDOG_RUN="))
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .expect("every run carries a marker")
}

/// The two innocents: uid 65534 with the copied marker, and the host's uid with the same
/// marker but a made-up tag; both `sleep 600` in sessions of their own.
struct Innocents {
    children: Vec<Child>,
    token: String,
}

impl Innocents {
    fn start(marker: &str) -> Innocents {
        let token = new_token();
        let (head, _tag) = marker.rsplit_once(':').unwrap();
        let forged = format!("{head}:0123456789abcdef");
        let other_uid = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["setsid", "sleep", "600"])
            .env_clear()
            .env("SHEEPDOG_RUN", marker)
            .env(INNOCENT_VAR, &token)
            .spawn()
            .unwrap();
        let same_uid = Command::new("setsid")
            .args(["sleep", "600"])
            .env_clear()
            .env("SHEEPDOG_RUN", forged)
            .env(INNOCENT_VAR, &token)
            .spawn()
            .unwrap();
        let innocents = Innocents {
            children: vec![other_uid, same_uid],
            token,
        };
        let up = wait_until(SECS_5, || (innocents.alive() == 2).then_some(()));
        assert!(up.is_some(), "the innocents started");
        innocents
    }

    fn alive(&self) -> usize {
        let needle = format!("{INNOCENT_VAR}={}", self.token);
        self.children
            .iter()
            .filter(|c| {
                is_alive(c.id())
                    && std::fs::read(format!("/proc/{}/environ", c.id()))
                        .is_ok_and(|e| e.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
            })
            .count()
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Innocents {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a daemonizing service under `containment`, starts the innocents with its marker,
/// stops it, and checks the daemon is gone and the innocents are not.
fn stop_spares_the_innocents(sup: &Supervisor, token: &str) {
    let spec = ServiceSpec::new("d", "/bin/sh")
        .args(["-c", DAEMONIZE])
        .env(TOKEN_VAR, token)
        .stop_timeout(Duration::from_millis(300));
    let pid = sup.start(spec).unwrap().pid().unwrap();
    let two = wait_until(SECS_5, || {
        (tagged_processes(token).len() == 2).then_some(())
    });
    assert!(two.is_some(), "the service and its daemon run");
    let innocents = Innocents::start(&marker_of(pid));
    sup.stop("d").unwrap();
    assert!(
        tagged_processes(token).is_empty(),
        "{:?}: the daemon outlived the stop: {:?}",
        sup.containment(),
        tagged_processes(token)
    );
    assert_eq!(
        innocents.alive(),
        2,
        "{:?}: a stop killed a process that only carried a copied or made-up marker",
        sup.containment()
    );
}

#[test]
fn a_stop_spares_processes_that_only_carry_a_copied_marker() {
    if !root_or_skip() {
        return;
    }
    for containment in [Containment::Cgroup, Containment::ProcessGroup] {
        let dir = tempfile::tempdir().unwrap();
        let Ok(sup) = Supervisor::builder()
            .state_dir(dir.path())
            .containment(containment)
            .open()
        else {
            eprintln!("skipped {containment:?}: not available here");
            continue;
        };
        let token = new_token();
        stop_spares_the_innocents(&sup, &token);
        sup.shutdown().unwrap();
    }
}

/// In a process of its own: a subreaper host changes where every orphan of the test binary
/// goes (and the innocents are its own children, which it must leave alone).
#[test]
fn a_subreaper_host_spares_processes_that_only_carry_a_copied_marker() {
    if std::env::var_os("SHEEPDOG_SUBREAPER_HOST").is_none() {
        if root_or_skip() {
            run_alone(
                Command::new("env"),
                "copied_marker::a_subreaper_host_spares_processes_that_only_carry_a_copied_marker",
                "SHEEPDOG_SUBREAPER_HOST",
            );
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::builder()
        .state_dir(dir.path())
        .containment(Containment::Subreaper)
        .open()
        .unwrap();
    let token = new_token();
    stop_spares_the_innocents(&sup, &token);
    sup.shutdown().unwrap();
}

const RECLAIM_TEST: &str =
    "copied_marker::the_cleanup_after_a_host_died_spares_processes_that_only_carry_a_copied_marker";

/// The helper host: a daemonizing service under the given containment; prints its main
/// process's pid, then waits to be killed.
fn helper_host(dir: &std::ffi::OsStr, token: &str, containment: &str) -> ! {
    let containment = match containment {
        "cgroup" => Containment::Cgroup,
        _ => Containment::ProcessGroup,
    };
    let guardian = std::env::var_os("SHEEPDOG_HELPER_GUARDIAN").is_some_and(|v| v == "1");
    let sup = Supervisor::builder()
        .state_dir(dir)
        .containment(containment)
        .guardian(guardian)
        .open()
        .unwrap();
    let spec = ServiceSpec::new("d", "/bin/sh")
        .args(["-c", DAEMONIZE])
        .env(TOKEN_VAR, token);
    let pid = sup.start(spec).unwrap().pid().unwrap();
    println!("pid {pid}");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn the_cleanup_after_a_host_died_spares_processes_that_only_carry_a_copied_marker() {
    if let (Some(dir), Ok(token), Ok(tier)) = (
        std::env::var_os("SHEEPDOG_HELPER_HOST"),
        std::env::var("SHEEPDOG_HELPER_TOKEN"),
        std::env::var("SHEEPDOG_HELPER_TIER"),
    ) {
        helper_host(&dir, &token, &tier);
    }
    if !root_or_skip() {
        return;
    }
    // With a guardian, it cleans up at the host's death; without, the next `open` does.
    for (tier, containment, guardian) in [
        ("cgroup", Containment::Cgroup, "1"),
        ("cgroup, no guardian", Containment::Cgroup, "0"),
        ("process group", Containment::ProcessGroup, "1"),
        ("process group, no guardian", Containment::ProcessGroup, "0"),
    ] {
        let root = tempfile::tempdir().unwrap();
        if containment == Containment::Cgroup
            && Supervisor::builder()
                .state_dir(root.path().join("probe"))
                .containment(containment)
                .open()
                .is_err()
        {
            eprintln!("skipped {tier}: no writable cgroup v2 hierarchy here");
            continue;
        }
        let state = root.path().join("state");
        let token = new_token();
        let mut host = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", RECLAIM_TEST, "--nocapture"])
            .env("SHEEPDOG_HELPER_HOST", &state)
            .env("SHEEPDOG_HELPER_TOKEN", &token)
            .env("SHEEPDOG_HELPER_GUARDIAN", guardian)
            .env(
                "SHEEPDOG_HELPER_TIER",
                if containment == Containment::Cgroup {
                    "cgroup"
                } else {
                    "pg"
                },
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(host.stdout.take().unwrap()));
        let pid: u32 = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("pid ").map(|p| p.parse().unwrap()))
            .expect("the helper host reported its service's pid");
        let two = wait_until(SECS_10, || {
            (tagged_processes(&token).len() == 2).then_some(())
        });
        assert!(two.is_some(), "{tier}: the service and its daemon run");
        let innocents = Innocents::start(&marker_of(pid));
        host.kill().unwrap();
        host.wait().unwrap();
        let sup = Supervisor::builder()
            .state_dir(&state)
            .containment(containment)
            .resurrect(false)
            .open()
            .unwrap();
        let gone = wait_until(SECS_5, || tagged_processes(&token).is_empty().then_some(()));
        assert!(
            gone.is_some(),
            "{tier}: the dead host's daemon is left: {:?}",
            tagged_processes(&token)
        );
        assert_eq!(
            innocents.alive(),
            2,
            "{tier}: the cleanup after the host's death killed an innocent"
        );
        let reclaimed: Vec<u32> = sup.reclaimed().into_iter().flat_map(|(_, p)| p).collect();
        for pid in innocents.pids() {
            assert!(
                !reclaimed.contains(&pid),
                "{tier}: {pid} reported reclaimed"
            );
        }
        sup.shutdown().unwrap();
    }
}
