//! How fast the API answers while the supervision thread is busiest: N services crash-looping
//! with `Backoff::none()` (each exits at once and is respawned at once), against the same
//! supervisor idle.
//!
//! - `describe`: a read of the published snapshot;
//! - a request accepted: `stop` of a service that is already stopped, which the supervision
//!   thread answers as soon as it reads the request (a round trip through its queue);
//! - restarts per second of the whole fleet, over a second without calls.
//!
//! `cargo bench --bench responsiveness` runs N = 1000; `SHEEPDOG_BENCH_QUICK=1` a smoke run
//! with N = 100. Figures are printed; nothing is asserted.

#[path = "common/mod.rs"]
mod common;
use common::{percentile, tick_binary};
use sheepdog::{Backoff, RestartPolicy, ServiceSpec, Supervisor};
use std::time::{Duration, Instant};

struct Latencies {
    describe: Vec<f64>,
    accepted: Vec<f64>,
}

/// Calls `describe` and the no-op `stop` alternately, `samples` times each, a millisecond
/// apart (so the samples spread over many loop turns).
fn measure(sup: &Supervisor, samples: usize) -> Latencies {
    let mut out = Latencies {
        describe: Vec::with_capacity(samples),
        accepted: Vec::with_capacity(samples),
    };
    for _ in 0..samples {
        let t = Instant::now();
        sup.describe("idle").unwrap();
        out.describe.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        sup.stop("idle").unwrap();
        out.accepted.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(1));
    }
    out.describe.sort_by(f64::total_cmp);
    out.accepted.sort_by(f64::total_cmp);
    out
}

fn restarts(sup: &Supervisor) -> u64 {
    sup.list().unwrap().iter().map(|s| s.restarts()).sum()
}

fn main() {
    let quick = std::env::var_os("SHEEPDOG_BENCH_QUICK").is_some()
        || std::env::args().any(|a| a == "--quick");
    let (n, samples) = if quick { (100, 200) } else { (1000, 500) };
    let dir = tempfile::tempdir().unwrap();
    let tick = tick_binary(dir.path());
    let sup = Supervisor::open(dir.path().join("state")).unwrap();
    sup.start(ServiceSpec::new("idle", "sleep").arg("600"))
        .unwrap();
    sup.stop("idle").unwrap();

    let quiet = measure(&sup, samples);

    let specs = (0..n).map(|i| {
        ServiceSpec::new(format!("crash{i}"), tick.to_str().unwrap())
            .args(["crash", "/dev/null"])
            .restart(RestartPolicy::always().backoff(Backoff::none()))
    });
    for result in sup.start_many(specs).unwrap() {
        result.unwrap();
    }
    // Let the storm reach its steady state.
    std::thread::sleep(Duration::from_secs(1));
    let (r0, t0) = (restarts(&sup), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let rate = (restarts(&sup) - r0) as f64 / t0.elapsed().as_secs_f64();
    let storm = measure(&sup, samples);
    sup.shutdown().unwrap();

    let row = |what: &str, q: &[f64], s: &[f64]| {
        println!(
            "| {what} | {:.3} / {:.3} ms | {:.3} / {:.3} ms |",
            percentile(q, 50.0),
            percentile(q, 99.0),
            percentile(s, 50.0),
            percentile(s, 99.0)
        );
    };
    println!("| p50 / p99 | idle | {n} services crash-looping ({rate:.0} restarts/s) |");
    println!("|---|---|---|");
    row("`describe`", &quiet.describe, &storm.describe);
    row(
        "a request accepted (`stop` of a stopped service)",
        &quiet.accepted,
        &storm.accepted,
    );
}
