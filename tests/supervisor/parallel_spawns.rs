//! A `start_many` spawns its services on two threads at once (the supervision thread and the
//! spawner), and each service ends as if they had been spawned one by one: one run each, a
//! spawn failure named per service whichever thread met it, a stop or a delete that comes
//! while the batch is under way applied to the service as it is once spawned, and nothing
//! left behind, by a shutdown or by the host's death in the middle of the batch. In every
//! tier.

use crate::prelude::*;
use rustix::process::Signal;
use sheepdog::{ErrorKind, ServiceSpec, Status, Supervisor};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

/// The threads of this process that are the parents of `pids`: (thread id, its name) for
/// each pid, from `/proc/self/task/*/children`.
fn spawning_threads(pids: &[u32]) -> BTreeMap<u32, (u32, String)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let children = std::fs::read_to_string(dir.join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            if pids.contains(&child) {
                out.insert(child, (tid, comm.trim().to_string()));
            }
        }
    }
    out
}

/// Names `s000`, `s001`, … of a batch of `n`.
fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

fn a_batch_runs_each_service_once_from_either_thread(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let names = names("s", 60);
    let specs: Vec<ServiceSpec> = names
        .iter()
        .map(|n| h.sh(n, "echo up; exec sleep 600"))
        .collect();
    let results = h.sup().start_many(specs)?;
    assert_eq!(results.len(), names.len(), "{tier}: one result per spec");
    let mut pids = Vec::new();
    for (name, result) in names.iter().zip(&results) {
        let info = result
            .as_ref()
            .map_err(|e| Failure::new(format!("{tier}: {name} did not start: {e}")))?;
        assert_eq!(
            info.name(),
            name,
            "{tier}: results come in the batch's order"
        );
        pids.push(info.pid().context("a started service has a pid")?);
    }
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), pids.len(), "{tier}: one run per service");
    for (name, &pid) in names.iter().zip(&pids) {
        assert_eq!(pgid_of(pid), Some(pid), "{tier}: {name} leads its group");
        let marker = env_of(pid, "SHEEPDOG_RUN").unwrap_or_default();
        assert!(!marker.is_empty(), "{tier}: {name} carries its run marker");
    }
    // Every main process is a child of the supervision thread or of the spawner.
    let parents = spawning_threads(&pids);
    assert_eq!(
        parents.len(),
        pids.len(),
        "{tier}: each main process is ours"
    );
    let threads: BTreeMap<&str, usize> = parents.values().fold(BTreeMap::new(), |mut m, (_, c)| {
        *m.entry(c.as_str()).or_default() += 1;
        m
    });
    for comm in threads.keys() {
        assert!(
            ["sheepdog", "sheepdog-spawn"].contains(comm),
            "{tier}: a main process was spawned by thread '{comm}'"
        );
    }
    println!("{tier}: spawned by thread: {threads:?}");
    // Each answers as its own: a line in its own log, a crash restarted by its own policy.
    for name in &names {
        let log = h.sup().log_path(name, sheepdog::Stream::Stdout)?;
        wait_lines(&log, 1, SECS_10)?;
    }
    let victim = &names[names.len() - 1];
    let pid = pids[pids.len() - 1];
    kill_all(&[pid]);
    let restarted = wait_until(SECS_10, || {
        h.sup()
            .describe(victim)
            .ok()
            .and_then(|i| i.pid())
            .filter(|&p| p != pid && status(h.sup(), victim) == Status::Online)
    });
    assert!(
        restarted.is_some(),
        "{tier}: {victim} restarted after a crash"
    );
    h.finish()
}

per_tier!(a_batch_runs_each_service_once_from_either_thread);

/// A program that exists and is executable but that `execve` refuses (no `#!`, not ELF): a
/// failure met in the new process, on whichever thread spawned it.
fn unexecutable(dir: &std::path::Path) -> TestResult<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("not-a-program");
    std::fs::write(&path, [0u8, 1, 2, 3, 4, 5, 6, 7])?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn spawn_failures_in_a_batch_are_named_per_service(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let scratch = tempfile::tempdir()?;
    let bad_program = unexecutable(scratch.path())?;
    let names = names("f", 40);
    // Failures spread over the batch: every third a program exec refuses, every third a
    // working directory that is gone; the rest run.
    let specs: Vec<ServiceSpec> = names
        .iter()
        .enumerate()
        .map(|(i, n)| match i % 3 {
            0 => h.sh(n, "exec sleep 600"),
            1 => ServiceSpec::new(n.as_str(), &bad_program),
            _ => h
                .sh(n, "exec sleep 600")
                .current_dir(scratch.path().join("gone")),
        })
        .collect();
    let results = h.sup().start_many(specs)?;
    for (i, (name, result)) in names.iter().zip(&results).enumerate() {
        match (i % 3, result) {
            (0, Ok(info)) => assert_eq!(info.status(), Status::Online, "{tier}: {name}"),
            (0, Err(e)) => return Err(Failure::new(format!("{tier}: {name} failed: {e}"))),
            (_, Ok(_)) => return Err(Failure::new(format!("{tier}: {name} started"))),
            (kind, Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::Spawn, "{tier}: {name}: {e}");
                assert_eq!(e.service(), Some(name.as_str()), "{tier}: {e}");
                let cause = if kind == 1 {
                    "is not in an executable format"
                } else {
                    "working directory"
                };
                assert!(
                    e.to_string().contains(cause),
                    "{tier}: {name}'s error names its cause ({cause}): {e}"
                );
                assert_eq!(status(h.sup(), name), Status::Errored, "{tier}: {name}");
            }
        }
    }
    // The failures left nothing running and cost the good ones nothing.
    let online = h
        .sup()
        .list()?
        .iter()
        .filter(|i| i.status() == Status::Online)
        .count();
    assert_eq!(online, names.len().div_ceil(3), "{tier}: the good ones run");
    h.finish()
}

per_tier!(spawn_failures_in_a_batch_are_named_per_service);

fn stops_and_deletes_during_a_batch_apply_once_it_is_spawned(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let names = names("r", 80);
    let specs: Vec<ServiceSpec> = names.iter().map(|n| h.sh(n, "exec sleep 600")).collect();
    // The last services of the batch are those the spawner is likeliest to take.
    let stopped: Vec<String> = names[70..75].to_vec();
    let deleted: Vec<String> = names[75..].to_vec();
    let results = std::thread::scope(|s| -> TestResult<_> {
        let batch = s.spawn(|| h.sup().start_many(specs));
        // Stops and deletes race the batch: each either finds the service (spawned, since a
        // batch is one turn of the engine) or not yet defined.
        let deadline = Instant::now() + SECS_10;
        let mut left: Vec<&String> = stopped.iter().chain(&deleted).collect();
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|name| {
                let done = if stopped.contains(name) {
                    h.sup().stop(name)
                } else {
                    h.sup().delete(name)
                };
                match done {
                    Ok(_) => false,
                    Err(e) if e.kind() == ErrorKind::NotFound => true,
                    Err(e) => panic!("{tier}: {name}: {e}"),
                }
            });
        }
        assert!(
            left.is_empty(),
            "{tier}: every stop and delete found its service"
        );
        Ok(batch.join().expect("the batch's thread does not panic")?)
    })?;
    for (name, result) in names.iter().zip(&results) {
        assert!(result.is_ok(), "{tier}: {name}: {result:?}");
    }
    let list: BTreeMap<String, (Status, Option<u32>)> = h
        .sup()
        .list()?
        .into_iter()
        .map(|i| (i.name().to_string(), (i.status(), i.pid())))
        .collect();
    for name in &names {
        let entry = list.get(name);
        if deleted.contains(name) {
            assert!(entry.is_none(), "{tier}: {name} is deleted: {entry:?}");
        } else if stopped.contains(name) {
            assert_eq!(entry.map(|e| e.0), Some(Status::Stopped), "{tier}: {name}");
        } else {
            assert_eq!(entry.map(|e| e.0), Some(Status::Online), "{tier}: {name}");
        }
    }
    // What was stopped or deleted has no process left: only the others run.
    let running = wait_until(SECS_10, || {
        let n = h.tagged().len();
        (n == 70).then_some(n)
    });
    assert_eq!(
        running,
        Some(70),
        "{tier}: the stopped and deleted services left processes: {}",
        describe_processes(&h.tagged())
    );
    h.finish()
}

per_tier!(stops_and_deletes_during_a_batch_apply_once_it_is_spawned);

/// A helper host: a guarded supervisor in the tier `TIER` that says its state directory,
/// then starts a batch of `N` services tagged with `TOKEN` and says `done` once it is over.
fn batch_host() -> ! {
    let sup = helper_builder()
        .open()
        .expect("the helper host opens its supervisor");
    assert!(sup.guarded(), "a guardian runs");
    println!("state {}", sup.state_dir().display());
    let token = helper_arg("TOKEN");
    let n: usize = helper_arg("N").parse().expect("N is a number");
    let specs: Vec<ServiceSpec> = names("k", n)
        .iter()
        .map(|name| tagged_sh(&token, name, "sleep 600 & exec sleep 600"))
        .collect();
    let _ = sup.start_many(specs);
    println!("done");
    serve_until_killed()
}

fn a_host_killed_during_a_batch_leaves_nothing(tier: &Tier) -> TestResult {
    if is_helper_host() {
        batch_host();
    }
    let token = new_token();
    let state_parent = tempfile::tempdir()?;
    let state = state_parent.path().join("state");
    let n = 300;
    let mut host = HostProcess::in_tier(tier, &state, &token, &[("N", n.to_string().as_ref())])?;
    let said_state = PathBuf::from(host.said("state ")?);
    assert_eq!(
        said_state, state,
        "{tier}: the host runs in its state directory"
    );
    // Killed once the batch's first services run, before it is over.
    wait_until(SECS_10, || {
        (!tagged_processes(&token).is_empty()).then_some(())
    })
    .context("the batch starts")?;
    let running = tagged_processes(&token).len();
    let signalled = host.kill_with(Signal::KILL)?;
    println!(
        "{tier}: the host was killed with {running} of the batch's {} processes up",
        2 * n
    );
    assert_eq!(signalled, Some(Signal::KILL.as_raw()), "{tier}: SIGKILL");
    let clean = wait_until(SECS_10, || {
        (tagged_processes(&token).is_empty() && guardians_of(&state).is_empty()).then_some(())
    });
    let left = tagged_processes(&token);
    kill_all(&left);
    assert!(
        clean.is_some(),
        "{tier}: left after the host died mid-batch: {} (guardian {:?})",
        describe_processes(&left),
        guardians_of(&state)
    );
    // And the next open (not starting anything again) finds none of the dead host's runs
    // alive.
    let sup = Supervisor::builder()
        .containment(tier.containment())
        .state_dir(&state)
        .resurrect(false)
        .guardian(false)
        .open()?;
    assert!(
        sup.reclaimed().is_empty(),
        "{tier}: the reopen found the dead host's processes: {:?}",
        sup.reclaimed()
    );
    let alive = sup.list()?.iter().filter(|i| i.pid().is_some()).count();
    assert_eq!(alive, 0, "{tier}: nothing of the dead host's batch runs");
    sup.shutdown()?;
    no_tagged_left(&token, "after the reopen")
}

per_tier!(a_host_killed_during_a_batch_leaves_nothing);
