//! Log throughput: one child writing 1 GiB of 100-byte lines, next to `raw` (the child's stdout
//! is the file itself); ten writers at once with the crash → restart latency of an unrelated
//! service meanwhile; bytes lost; host memory.
//!
//! `cargo bench --bench logs` (about a minute) or `SHEEPDOG_BENCH_QUICK=1 cargo bench --bench
//! logs` (seconds). Figures are printed; nothing is asserted.

#[path = "common/mod.rs"]
mod common;
use common::{percentile, tick_binary};
use sheepdog::{Backoff, LogPolicy, RestartPolicy, ServiceSpec, Status, Stream, Supervisor};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn expected_bytes(mib: u64) -> u64 {
    mib * 1024 * 1024 / 100 * 100
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Polls every 2 ms until `done` or the file stops growing for 5 s; returns when it completed.
fn wait_complete(mut done: impl FnMut() -> bool, mut progress: impl FnMut() -> u64) -> Instant {
    let mut last = (progress(), Instant::now());
    loop {
        if done() {
            return Instant::now();
        }
        let p = progress();
        if p != last.0 {
            last = (p, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn start_ns(ticks: &Path) -> Vec<i64> {
    std::fs::read_to_string(ticks)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("start "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn raw(tick: &Path, dir: &Path, mib: u64) -> f64 {
    let out = dir.join("raw.log");
    let file = std::fs::File::create(&out).unwrap();
    let t0 = Instant::now();
    let status = Command::new(tick)
        .args([
            "log",
            dir.join("raw.ticks").to_str().unwrap(),
            &mib.to_string(),
        ])
        .stdout(file)
        .status()
        .unwrap();
    assert!(status.success());
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(size(&out), expected_bytes(mib));
    std::fs::remove_file(&out).unwrap();
    expected_bytes(mib) as f64 / 1e6 / secs
}

fn log_spec(name: &str, tick: &Path, ticks: &Path, mib: u64) -> ServiceSpec {
    ServiceSpec::new(name, tick.to_str().unwrap())
        .args(["log", ticks.to_str().unwrap(), &mib.to_string()])
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().max_bytes(0))
}

/// One writer: MB/s from the child's first instruction until the log holds every byte.
fn one_writer(sup: &Supervisor, tick: &Path, dir: &Path, mib: u64) -> (f64, u64) {
    let ticks = dir.join("one.ticks");
    sup.start(log_spec("one", tick, &ticks, mib)).unwrap();
    let log = sup.log_path("one", Stream::Stdout).unwrap();
    let want = expected_bytes(mib);
    let done = wait_complete(|| size(&log) >= want, || size(&log));
    let elapsed_ns = now_ns() - (Instant::now() - done).as_nanos() as i64 - start_ns(&ticks)[0];
    sup.wait_for("one", Status::Exited, Duration::from_secs(30))
        .unwrap();
    let lost = want.saturating_sub(size(&log));
    sup.delete("one").unwrap();
    (want as f64 / 1e6 / (elapsed_ns as f64 / 1e9), lost)
}

fn crash_latencies(ticks: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(ticks).unwrap_or_default();
    let v: Vec<(&str, i64)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?, it.next()?.parse().ok()?))
        })
        .collect();
    let mut out: Vec<f64> = v
        .windows(2)
        .filter(|w| w[0].0 == "exit" && w[1].0 == "start")
        .map(|w| (w[1].1 - w[0].1) as f64 / 1e6)
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// The crash → restart latency of a service that runs 50 ms then exits, for `secs`.
fn crasher(sup: &Supervisor, tick: &Path, ticks: &Path, name: &str) {
    let spec = ServiceSpec::new(name, tick.to_str().unwrap())
        .args(["crash", ticks.to_str().unwrap(), "50"])
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    sup.start(spec).unwrap();
}

fn main() {
    let quick = std::env::var_os("SHEEPDOG_BENCH_QUICK").is_some();
    let (mib, many_mib, writers, idle_secs) = if quick {
        (64, 16, 10, 1)
    } else {
        (1024, 100, 10, 5)
    };
    let dir = tempfile::tempdir_in(
        std::env::var("SHEEPDOG_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .or_else(|_| tempfile::tempdir())
    .unwrap();
    let tick = tick_binary(dir.path());
    let sup = Supervisor::open(dir.path().join("state")).unwrap();

    let raw_mbs = raw(&tick, dir.path(), mib);
    let (one_mbs, one_lost) = one_writer(&sup, &tick, dir.path(), mib);

    // The unrelated crasher, idle first, then while ten writers write.
    let idle_ticks = dir.path().join("idle-crash.ticks");
    crasher(&sup, &tick, &idle_ticks, "crash-idle");
    std::thread::sleep(Duration::from_secs(idle_secs));
    sup.delete("crash-idle").unwrap();
    let idle = crash_latencies(&idle_ticks);

    let busy_ticks = dir.path().join("busy-crash.ticks");
    crasher(&sup, &tick, &busy_ticks, "crash-busy");
    let many_ticks = dir.path().join("many.ticks");
    for i in 0..writers {
        sup.start(log_spec(&format!("w{i}"), &tick, &many_ticks, many_mib))
            .unwrap();
    }
    let logs: Vec<PathBuf> = (0..writers)
        .map(|i| sup.log_path(&format!("w{i}"), Stream::Stdout).unwrap())
        .collect();
    let want = expected_bytes(many_mib) * writers as u64;
    let total = || logs.iter().map(|l| size(l)).sum::<u64>();
    let done = wait_complete(|| total() >= want, total);
    let first_start = *start_ns(&many_ticks).iter().min().unwrap();
    let elapsed_ns = now_ns() - (Instant::now() - done).as_nanos() as i64 - first_start;
    sup.delete("crash-busy").unwrap();
    let busy = crash_latencies(&busy_ticks);
    let many_lost = want.saturating_sub(total());
    let hwm_kib: u64 = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap())
        })
        .unwrap();
    sup.shutdown().unwrap();

    println!("| metric | sheepdog |");
    println!("|---|---|");
    println!("| log, {mib} MiB of 100-byte lines, one writer: MB/s into the log | {one_mbs:.0} |");
    println!("| raw (child stdout is the file): MB/s | {raw_mbs:.0} |");
    println!("| log: bytes lost | {one_lost} |");
    println!(
        "| {writers} writers × {many_mib} MiB at once: aggregate MB/s, bytes lost | {:.0}, {many_lost} |",
        want as f64 / 1e6 / (elapsed_ns as f64 / 1e9)
    );
    println!(
        "| unrelated crash → restart p50 / p99, idle (n={}) | {:.2} / {:.2} ms |",
        idle.len(),
        percentile(&idle, 50.0),
        percentile(&idle, 99.0)
    );
    println!(
        "| unrelated crash → restart p50 / p99, during the writers (n={}) | {:.2} / {:.2} ms |",
        busy.len(),
        percentile(&busy, 50.0),
        percentile(&busy, 99.0)
    );
    println!(
        "| host peak RSS (VmHWM) | {:.1} MiB |",
        hwm_kib as f64 / 1024.0
    );
}
