//! Sixteen threads calling the API at once against crash-looping services: no deadlock (a
//! watchdog bounds every call), never two live runs of one service, nothing leaked.

use crate::common::*;
use sheepdog::{Backoff, RestartPolicy, Status};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const THREADS: usize = 16;
const SERVICES: usize = 5;
const RUN_FOR: Duration = Duration::from_secs(3);
const CALL_DEADLINE: Duration = Duration::from_secs(20);

fn spec(h: &Harness, i: usize, variant: u64) -> sheepdog::ServiceSpec {
    let name = format!("c{i}");
    let script = if variant.is_multiple_of(2) {
        "sleep 0.02; exit 1"
    } else {
        "sleep 0.05; exit 2"
    };
    h.sh(&name, script)
        .env("SVC_NAME", &name)
        .stop_timeout(Duration::from_millis(200))
        .restart(RestartPolicy::always().backoff(Backoff::exponential(
            Duration::from_millis(1),
            Duration::from_millis(20),
        )))
}

/// The process groups with a live member, per service name (from the `SVC_NAME` each process
/// carries). A run is one group: `sh` and the `sleep` it forks share it.
fn live_groups_by_service(token: &str) -> HashMap<String, HashSet<u32>> {
    let mut out: HashMap<String, HashSet<u32>> = HashMap::new();
    for pid in tagged_processes(token) {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let Some(pgid) = pgid_of(pid) else { continue };
        for kv in env.split(|b| *b == 0) {
            if let Some(name) = kv.strip_prefix(b"SVC_NAME=") {
                out.entry(String::from_utf8_lossy(name).into_owned())
                    .or_default()
                    .insert(pgid);
            }
        }
    }
    out
}

fn pgid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// What a worker thread is doing, and since when (`None` between calls).
type Progress = parking_lot::Mutex<Option<(Instant, String)>>;

#[test]
fn sixteen_threads_against_crash_loops() {
    let h = Arc::new(Harness::new());
    for i in 0..SERVICES {
        h.sup().start(spec(&h, i, 0)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let duplicates = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let checker = {
        let (h, stop, duplicates) = (h.clone(), stop.clone(), duplicates.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (name, groups) in live_groups_by_service(&h.token) {
                    // A scan of /proc is not atomic: confirm that both groups are alive afterwards.
                    let alive: Vec<u32> = groups
                        .into_iter()
                        .filter(|g| !group_members(*g).is_empty())
                        .collect();
                    if alive.len() > 1 {
                        duplicates.lock().push((name, alive));
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let progress: Arc<Vec<Progress>> = Arc::new(
        (0..THREADS)
            .map(|_| parking_lot::Mutex::new(None))
            .collect(),
    );
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (h, progress) = (h.clone(), progress.clone());
            std::thread::spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                let end = Instant::now() + RUN_FOR;
                let mut calls = 0u32;
                while Instant::now() < end {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let i = (rng % SERVICES as u64) as usize;
                    let target = if rng.is_multiple_of(11) {
                        "all".to_string()
                    } else {
                        format!("c{i}")
                    };
                    let op = (rng >> 8) % 8;
                    *progress[t].lock() = Some((Instant::now(), format!("op {op} on {target}")));
                    let _ = match op {
                        0 | 1 => h.sup().start(spec(&h, i, rng >> 16)).map(|_| 0),
                        2 => h.sup().stop(&target),
                        3 => h.sup().restart(&target),
                        4 => h.sup().delete(&target),
                        5 => h.sup().describe(&target).map(|_| 0),
                        6 => h.sup().list().map(|l| l.len()),
                        _ => h
                            .sup()
                            .wait_for(&target, Status::Online, Duration::from_millis(20))
                            .map(|_| 0),
                    };
                    *progress[t].lock() = None;
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    // The watchdog: every call must return within its deadline.
    while !workers.iter().all(|w| w.is_finished()) {
        for (t, p) in progress.iter().enumerate() {
            if let Some((since, what)) = p.lock().clone() {
                assert!(
                    since.elapsed() < CALL_DEADLINE,
                    "thread {t} stuck in {what} for {:?}",
                    since.elapsed()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let calls: u32 = workers
        .into_iter()
        .map(|w| w.join().expect("workers do not panic"))
        .sum();
    stop.store(true, Ordering::Relaxed);
    checker.join().unwrap();
    assert!(calls > 100, "only {calls} calls in {RUN_FOR:?}");
    let dups = duplicates.lock().clone();
    assert!(dups.is_empty(), "two live runs of one service: {dups:?}");

    h.sup().stop("all").unwrap();
    assert!(
        live_groups_by_service(&h.token).is_empty(),
        "a stopped service left a process"
    );
    for info in h.sup().list().unwrap() {
        assert!(
            matches!(
                info.status(),
                Status::Stopped | Status::Exited | Status::Errored
            ),
            "{}: {}",
            info.name(),
            info.status()
        );
    }
    Arc::try_unwrap(h)
        .ok()
        .expect("all threads joined")
        .finish();
}
