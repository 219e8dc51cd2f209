//! A host killed with SIGKILL leaves nothing that outlives the next `open`: direct children
//! die by PDEATHSIG, and the next `open` kills what is left of their groups (matched by boot
//! id, pid and start time) before it starts each service exactly once. The host runs
//! without a guardian here, as one whose guardian was killed with it: what the guardian does
//! is in `guardian.rs`.

use crate::common::*;
use sheepdog::{Status, Supervisor};
use std::collections::HashSet;
use std::io::BufRead;
use std::time::Duration;

const SERVICES: usize = 20;
const TEST: &str = "host_death::a_killed_host_leaves_nothing_after_reopen";

fn helper_host(dir: &str, token: &str) {
    let sup = Supervisor::builder()
        .state_dir(dir)
        .guardian(false)
        .open()
        .unwrap();
    for i in 0..SERVICES {
        let spec = sheepdog::ServiceSpec::new(format!("svc{i}"), "/bin/sh")
            .args(["-c", "sleep 600 & exec sleep 600"])
            .env(TOKEN_VAR, token);
        sup.start(spec).unwrap();
    }
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_killed_host_leaves_nothing_after_reopen() {
    if let (Some(dir), Some(token)) = (
        std::env::var_os("SHEEPDOG_HELPER_HOST"),
        std::env::var_os("SHEEPDOG_HELPER_TOKEN"),
    ) {
        helper_host(dir.to_str().unwrap(), token.to_str().unwrap());
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let token = new_token();
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture"])
        .env("SHEEPDOG_HELPER_HOST", &state)
        .env("SHEEPDOG_HELPER_TOKEN", &token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = host.stdout.take().unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line == "ready" {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(60));
    // Each service runs a leader and a grandchild (which `sh` forks a moment after the start).
    let before = wait_until(SECS_10, || {
        let all: HashSet<u32> = tagged_processes(&token).into_iter().collect();
        (all.len() == 2 * SERVICES).then_some(all)
    });
    host.kill().unwrap();
    host.wait().unwrap();
    ready.expect("the helper host started its services");
    let before = before.expect("every service ran a leader and a grandchild");

    // The leaders die with the host; the grandchildren are orphans.
    let orphans = wait_until(SECS_10, || {
        let left = tagged_processes(&token);
        (left.len() == SERVICES).then_some(left)
    })
    .expect("PDEATHSIG ended every leader");

    let sup = Supervisor::open(&state).unwrap();
    for o in &orphans {
        assert!(!is_alive(*o), "orphan {o} of the dead host survived open");
    }
    // A subscription made after `open` still begins with what it reclaimed.
    let events = sup.subscribe();
    let mut reported: HashSet<u32> = HashSet::new();
    let mut names = HashSet::new();
    while let Some(sheepdog::Event::Reclaimed { name, pids }) = events.try_recv() {
        names.insert(name);
        reported.extend(pids);
    }
    assert_eq!(names.len(), SERVICES, "one Reclaimed event per service");
    for o in &orphans {
        assert!(reported.contains(o), "orphan {o} reported: {reported:?}");
    }
    let infos = sup.list().unwrap();
    assert_eq!(infos.len(), SERVICES);
    for info in &infos {
        assert_eq!(info.status(), Status::Online, "{}", info.name());
        let pgid = info.pid().unwrap();
        let members = wait_until(SECS_5, || {
            let m = group_members(pgid);
            (m.len() == 2).then_some(m)
        });
        assert!(
            members.is_some(),
            "{}: one leader and one grandchild, not {:?}; reclaimed {:?}",
            info.name(),
            group_members(pgid),
            sup.reclaimed()
        );
    }
    let now: HashSet<u32> = tagged_processes(&token).into_iter().collect();
    assert!(now.is_disjoint(&before), "only new processes run");
    assert_eq!(now.len(), 2 * SERVICES, "each service started exactly once");
    sup.shutdown().unwrap();
    let left = wait_until(SECS_5, || tagged_processes(&token).is_empty().then_some(()));
    assert!(left.is_some(), "leaked: {:?}", tagged_processes(&token));
}
