//! Macro benchmarks of the supervisor with a tiny compiled child (`benches/tick.c`):
//! crash → restart latency, fleet start / idle / stop, threads, CPU and memory.
//!
//! `cargo bench --bench fleet` runs the full set (about a minute);
//! `SHEEPDOG_BENCH_QUICK=1 cargo bench --bench fleet` runs a seconds-long smoke version.
//! Figures are printed as a table; nothing is asserted (shared machines are noisy).

#[path = "common/mod.rs"]
mod common;
use common::{percentile, tick_binary};
use sheepdog::{Backoff, RestartPolicy, ServiceSpec, Status, Supervisor};
use std::path::Path;
use std::time::{Duration, Instant};

struct Params {
    crash_restarts: usize,
    crashlate_samples: usize,
    crashlate_uptime_ms: u64,
    fleet: usize,
    idle: Duration,
}

/// `(kind, ns, pid)` lines appended by the children.
fn read_ticks(file: &Path) -> Vec<(String, i64, u32)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.to_string(),
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f()
}

fn proc_status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// utime + stime of this process, in clock ticks (10 ms).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn crash_spec(name: &str, tick: &Path, file: &Path, uptime_ms: u64) -> ServiceSpec {
    let mut spec =
        ServiceSpec::new(name, tick.to_str().unwrap()).args(["crash", file.to_str().unwrap()]);
    if uptime_ms > 0 {
        spec = spec.arg(uptime_ms.to_string());
    }
    spec.restart(RestartPolicy::always().backoff(Backoff::none()))
}

/// Gaps between consecutive starts of a child that exits at once: exit → restart + one exec.
fn crash_loop(sup: &Supervisor, tick: &Path, dir: &Path, restarts: usize) -> (f64, f64, f64) {
    let file = dir.join("crash.ticks");
    let t0 = Instant::now();
    sup.start(crash_spec("crash", tick, &file, 0)).unwrap();
    wait_until(Duration::from_secs(60), || {
        read_ticks(&file).len() > restarts
    });
    let elapsed = t0.elapsed();
    sup.delete("crash").unwrap();
    let starts: Vec<i64> = read_ticks(&file)
        .into_iter()
        .filter(|t| t.0 == "start")
        .map(|t| t.1)
        .collect();
    let mut gaps: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .collect();
    gaps.sort_by(f64::total_cmp);
    (
        percentile(&gaps, 50.0),
        percentile(&gaps, 99.0),
        starts.len() as f64 / elapsed.as_secs_f64(),
    )
}

/// A child that runs for a while, logs its exit time, exits 1: exit → next start.
fn crash_late(
    sup: &Supervisor,
    tick: &Path,
    dir: &Path,
    samples: usize,
    uptime_ms: u64,
) -> (f64, f64) {
    let file = dir.join("late.ticks");
    sup.start(crash_spec("late", tick, &file, uptime_ms))
        .unwrap();
    let limit = Duration::from_millis((uptime_ms + 200) * (samples as u64 + 2));
    wait_until(limit, || {
        read_ticks(&file).iter().filter(|t| t.0 == "start").count() > samples
    });
    sup.delete("late").unwrap();
    let ticks = read_ticks(&file);
    let mut lat = Vec::new();
    for (i, t) in ticks.iter().enumerate() {
        if t.0 == "exit"
            && let Some(next) = ticks[i + 1..].iter().find(|n| n.0 == "start")
        {
            lat.push((next.1 - t.1) as f64 / 1e6);
        }
    }
    lat.sort_by(f64::total_cmp);
    (percentile(&lat, 50.0), percentile(&lat, 99.0))
}

struct FleetFigures {
    start_s: f64,
    threads: u64,
    idle_cpu_pct: f64,
    rss_mib: f64,
    stop_s: f64,
}

fn fleet(sup: &Supervisor, tick: &Path, dir: &Path, n: usize, idle: Duration) -> FleetFigures {
    let file = dir.join("idle.ticks");
    let t0 = Instant::now();
    let specs = (0..n).map(|i| {
        ServiceSpec::new(format!("t{i:04}"), tick.to_str().unwrap())
            .args(["idle", file.to_str().unwrap()])
            .restart(RestartPolicy::always().backoff(Backoff::none()))
    });
    // One request, one transaction for the whole fleet (as `apply` does).
    assert!(sup.start_many(specs).unwrap().iter().all(|r| r.is_ok()));
    // Until every child has run its first instruction, as the anchors measure it.
    wait_until(Duration::from_secs(60), || read_ticks(&file).len() >= n);
    let start_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let threads = proc_status("Threads:");
    let c0 = cpu_ticks();
    let i0 = Instant::now();
    std::thread::sleep(idle);
    let idle_cpu_pct =
        (cpu_ticks() - c0) as f64 * 10.0 / (i0.elapsed().as_secs_f64() * 1000.0) * 100.0;
    let rss_mib = proc_status("VmRSS:") as f64 / 1024.0;
    let t1 = Instant::now();
    assert_eq!(sup.stop("all").unwrap(), n);
    let stop_s = t1.elapsed().as_secs_f64();
    assert!(
        sup.list()
            .unwrap()
            .iter()
            .all(|s| s.status() == Status::Stopped)
    );
    sup.delete("all").unwrap();
    FleetFigures {
        start_s,
        threads,
        idle_cpu_pct,
        rss_mib,
        stop_s,
    }
}

fn main() {
    let quick = std::env::var_os("SHEEPDOG_BENCH_QUICK").is_some()
        || std::env::args().any(|a| a == "--quick");
    let p = if quick {
        Params {
            crash_restarts: 50,
            crashlate_samples: 3,
            crashlate_uptime_ms: 100,
            fleet: 50,
            idle: Duration::from_secs(1),
        }
    } else {
        Params {
            crash_restarts: 1000,
            crashlate_samples: 12,
            crashlate_uptime_ms: 1500,
            fleet: 1000,
            idle: Duration::from_secs(30),
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let tick = tick_binary(dir.path());
    let sup = Supervisor::open(dir.path().join("state")).unwrap();

    let (p50, p99, rate) = crash_loop(&sup, &tick, dir.path(), p.crash_restarts);
    let (l50, l99) = crash_late(
        &sup,
        &tick,
        dir.path(),
        p.crashlate_samples,
        p.crashlate_uptime_ms,
    );
    let f = fleet(&sup, &tick, dir.path(), p.fleet, p.idle);
    sup.shutdown().unwrap();

    println!(
        "containment: {:?}",
        sheepdog::Supervisor::temporary().unwrap().containment()
    );
    println!("| metric | sheepdog |");
    println!("|---|---|");
    println!(
        "| crash loop (exit 1 at once, Backoff::none): restart gap p50 / p99 | {p50:.2} / {p99:.2} ms ({rate:.0} restarts/s) |"
    );
    println!(
        "| crash after {} ms uptime: exit→restart p50 / p99 | {l50:.2} / {l99:.2} ms |",
        p.crashlate_uptime_ms
    );
    println!(
        "| fleet start, N={} (until every child ran) | {:.0} ms |",
        p.fleet,
        f.start_s * 1e3
    );
    println!(
        "| host threads with N={} services | {} |",
        p.fleet, f.threads
    );
    println!(
        "| idle, N={}, {} s: host CPU | {:.3} % of a core |",
        p.fleet,
        p.idle.as_secs(),
        f.idle_cpu_pct
    );
    println!(
        "| host RSS with N={} services | {:.1} MiB |",
        p.fleet, f.rss_mib
    );
    println!(
        "| stop-all, N={} (SIGTERM, until all reaped) | {:.0} ms |",
        p.fleet,
        f.stop_s * 1e3
    );
}
