//! What observability costs: the crash → restart gap with run history and an event
//! subscriber, against neither (`runs_kept(0)`, no subscriber), alternated over rounds; and
//! `stats` over a fleet.
//!
//! `cargo bench --bench observe`; `SHEEPDOG_BENCH_QUICK=1` runs a seconds-long smoke version.

#[path = "common/mod.rs"]
mod common;
use common::{percentile, tick_binary};
use sheepdog::{Backoff, LogPolicy, RestartPolicy, ServiceSpec, Supervisor};
use std::path::Path;
use std::time::{Duration, Instant};

fn starts(file: &Path) -> Vec<i64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("start "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// Restart gaps (ms) of a child that exits at once, over `restarts` restarts.
fn gaps(dir: &Path, tick: &Path, observed: bool, restarts: usize, round: usize) -> Vec<f64> {
    let state = dir.join(format!("state-{observed}-{round}"));
    let sup = Supervisor::builder()
        .state_dir(&state)
        .runs_kept(if observed { 100 } else { 0 })
        .open()
        .unwrap();
    // A subscriber that reads every event on its own thread, as a host's would.
    let reader = observed.then(|| {
        let events = sup.subscribe();
        std::thread::spawn(move || events.count())
    });
    let file = dir.join(format!("ticks-{observed}-{round}"));
    let spec = ServiceSpec::new("crash", tick.to_str().unwrap())
        .args(["crash", file.to_str().unwrap()])
        .log(if observed {
            LogPolicy::default()
        } else {
            LogPolicy::default().tail(0, 0)
        })
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    sup.start(spec).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while starts(&file).len() <= restarts && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if observed {
        assert!(
            !sup.history("crash", 1).unwrap().is_empty(),
            "runs are recorded"
        );
    }
    sup.delete("crash").unwrap();
    sup.shutdown().unwrap();
    if let Some(r) = reader {
        r.join().unwrap();
    }
    let s = starts(&file);
    s.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6).collect()
}

fn main() {
    let quick = std::env::var_os("SHEEPDOG_BENCH_QUICK").is_some();
    let (restarts, rounds, fleet) = if quick { (50, 1, 50) } else { (500, 3, 1000) };
    let dir = tempfile::tempdir().unwrap();
    let tick = tick_binary(dir.path());

    let mut with = Vec::new();
    let mut without = Vec::new();
    for round in 0..rounds {
        without.extend(gaps(dir.path(), &tick, false, restarts, round));
        with.extend(gaps(dir.path(), &tick, true, restarts, round));
    }
    with.sort_by(f64::total_cmp);
    without.sort_by(f64::total_cmp);
    println!(
        "| crash → restart gap ({rounds} rounds × {restarts} restarts, alternated) | p50 | p99 |"
    );
    println!("|---|---|---|");
    println!(
        "| history (100 runs, last lines) + one event subscriber | {:.3} ms | {:.3} ms |",
        percentile(&with, 50.0),
        percentile(&with, 99.0)
    );
    println!(
        "| no history kept, no last lines, no subscriber | {:.3} ms | {:.3} ms |",
        percentile(&without, 50.0),
        percentile(&without, 99.0)
    );

    // stats over a fleet of idle children.
    let sup = Supervisor::open(dir.path().join("fleet")).unwrap();
    let file = dir.path().join("idle.ticks");
    let specs = (0..fleet).map(|i| {
        ServiceSpec::new(format!("t{i:04}"), tick.to_str().unwrap())
            .args(["idle", file.to_str().unwrap()])
    });
    assert!(sup.start_many(specs).unwrap().iter().all(|r| r.is_ok()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while starts(&file).len() < fleet && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut times = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        let stats = sup.stats("all").unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(stats.len(), fleet);
    }
    times.sort_by(f64::total_cmp);
    println!();
    println!("| `stats(\"all\")` with {fleet} services | median | max |");
    println!("|---|---|---|");
    println!(
        "| one pass over /proc | {:.1} ms | {:.1} ms |",
        percentile(&times, 50.0),
        percentile(&times, 100.0)
    );
    sup.shutdown().unwrap();
}
