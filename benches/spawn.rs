//! Spawn cost against the host's memory: the crash → restart gap of a child that exits at
//! once, with the host holding 0 and 2 GiB of touched heap. A fork-based spawn copies the
//! host's page tables (about 70 ms at 2 GiB); the vfork-style clone does not.
//!
//! `cargo bench --bench spawn`; `SHEEPDOG_BENCH_QUICK=1` uses 256 MiB and fewer restarts.

#[path = "common/mod.rs"]
mod common;
use common::{percentile, tick_binary};
use sheepdog::{Backoff, RestartPolicy, ServiceSpec, Supervisor};
use std::time::{Duration, Instant};

fn gaps(
    sup: &Supervisor,
    tick: &std::path::Path,
    file: &std::path::Path,
    restarts: usize,
) -> Vec<f64> {
    let spec = ServiceSpec::new("crash", tick.to_str().unwrap())
        .args(["crash", file.to_str().unwrap()])
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    sup.start(spec).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let starts = || -> Vec<i64> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    };
    while starts().len() <= restarts && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    sup.delete("crash").unwrap();
    let s = starts();
    let mut g: Vec<f64> = s.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6).collect();
    g.sort_by(f64::total_cmp);
    g
}

fn main() {
    let quick = std::env::var_os("SHEEPDOG_BENCH_QUICK").is_some();
    let (big, restarts) = if quick {
        (256usize << 20, 30)
    } else {
        (2usize << 30, 300)
    };
    let dir = tempfile::tempdir().unwrap();
    let tick = tick_binary(dir.path());
    let sup = Supervisor::open(dir.path().join("state")).unwrap();
    println!("| host heap | restart gap p50 | p99 |");
    println!("|---|---|---|");
    let mut heap: Vec<u8> = Vec::new();
    for (label, size) in [
        ("0", 0usize),
        (if quick { "256 MiB" } else { "2 GiB" }, big),
    ] {
        heap.resize(size, 0);
        // Touch every page so it is resident.
        for i in (0..heap.len()).step_by(4096) {
            heap[i] = 1;
        }
        let file = dir.path().join(format!("ticks-{size}"));
        let g = gaps(&sup, &tick, &file, restarts);
        println!(
            "| {label} | {:.2} ms | {:.2} ms |",
            percentile(&g, 50.0),
            percentile(&g, 99.0)
        );
    }
    std::hint::black_box(&heap);
    sup.shutdown().unwrap();
}
