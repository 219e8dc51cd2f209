//! The control socket and the `sheepdog` command, end to end:
//!
//! - `sheepdog ls` (a subprocess, as an operator runs it) against a host of N idle services:
//!   connect, hello, list, stats, print; the table and `--json`;
//! - the restart gap of a crash loop (exit → next start, through `sh`, which prints a line
//!   each run) with no client, and with 20 clients connected: 10 following the crasher's
//!   logs and 10 subscribed to events, each reading everything as it comes.
//!
//! `cargo bench --bench control --features cli` runs N = 1000 and 3000 restarts per case;
//! `SHEEPDOG_BENCH_QUICK=1` a smoke run. Figures are printed; nothing is asserted.

#[path = "common/mod.rs"]
mod common;
use common::{percentile, tick_binary};
use sheepdog::{Backoff, RestartPolicy, ServiceSpec, Supervisor};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Wall time of `sheepdog --state DIR <args>` runs, sorted, in ms.
fn time_cli(state: &Path, args: &[&str], runs: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_sheepdog"))
            .arg("--state")
            .arg(state)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run sheepdog");
        out.push(ms(t.elapsed()));
        assert!(status.success());
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Start times (ns) the ticks file recorded.
fn starts(file: &Path) -> Vec<i64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == "start").then_some(())?;
            it.next()?.parse().ok()
        })
        .collect()
}

/// Gaps between consecutive starts of a crash loop of `restarts` runs, sorted, in ms.
fn crash_gaps(sup: &Supervisor, tick: &Path, dir: &Path, name: &str, restarts: usize) -> Vec<f64> {
    let file = dir.join(format!("{name}.ticks"));
    let script = format!(
        "echo run $$; exec {} crash {}",
        tick.display(),
        file.display()
    );
    sup.start(
        ServiceSpec::new(name, "/bin/sh")
            .args(["-c", &script])
            .restart(RestartPolicy::always().backoff(Backoff::none())),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while starts(&file).len() <= restarts && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    sup.stop(name).unwrap();
    let s = starts(&file);
    let mut gaps: Vec<f64> = s.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6).collect();
    gaps.sort_by(f64::total_cmp);
    gaps
}

/// A client that sends `request` after hello and reads every line until told to stop;
/// counts what it read.
fn client(
    socket: &Path,
    request: String,
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        writeln!(s, r#"{{"request":"hello","version":1}}"#).unwrap();
        writeln!(s, "{request}").unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        while !stop.load(Ordering::Relaxed) {
            line.clear();
            if reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                read.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

fn row(what: &str, sorted: &[f64]) {
    println!(
        "| {what} | {:.2} ms | {:.2} ms | {} |",
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        sorted.len()
    );
}

fn main() {
    let quick = std::env::var_os("SHEEPDOG_BENCH_QUICK").is_some()
        || std::env::args().any(|a| a == "--quick");
    let (n, runs, restarts) = if quick {
        (100, 5, 200)
    } else {
        (1000, 30, 3000)
    };
    let dir = tempfile::tempdir().unwrap();
    let tick = tick_binary(dir.path());

    println!("| measure | p50 | p99 | samples |");
    println!("|---|---|---|---|");
    {
        let state = dir.path().join("fleet");
        let sup = Supervisor::open(&state).unwrap();
        let file = dir.path().join("idle.ticks");
        let specs = (0..n).map(|i| {
            ServiceSpec::new(format!("svc-{i:04}"), tick.to_str().unwrap())
                .args(["idle", file.to_str().unwrap()])
        });
        assert!(sup.start_many(specs).unwrap().iter().all(|r| r.is_ok()));
        while starts(&file).len() < n {
            std::thread::sleep(Duration::from_millis(20));
        }
        time_cli(&state, &["ls"], 2); // warm the page cache
        // Where the time goes: each request alone, from a client in this process.
        let mut client = sheepdog::control::Client::connect(&state).unwrap();
        for (what, request) in [
            ("list", sheepdog::control::protocol::Request::List),
            (
                "stats",
                sheepdog::control::protocol::Request::Stats {
                    target: "all".into(),
                },
            ),
        ] {
            let mut t: Vec<f64> = (0..runs)
                .map(|_| {
                    let start = Instant::now();
                    client.call(&request).unwrap();
                    ms(start.elapsed())
                })
                .collect();
            t.sort_by(f64::total_cmp);
            row(&format!("`{what}` request alone, {n} services"), &t);
        }
        drop(client);
        row(
            &format!("`sheepdog ls`, {n} services"),
            &time_cli(&state, &["ls"], runs),
        );
        row(
            &format!("`sheepdog --json ls`, {n} services"),
            &time_cli(&state, &["--json", "ls"], runs),
        );
        sup.shutdown().unwrap();
        row(
            &format!("`sheepdog ls`, {n} services, no host (the registry read-only)"),
            &time_cli(&state, &["ls"], runs),
        );
    }
    {
        let state = dir.path().join("crash");
        let sup = Supervisor::open(&state).unwrap();
        let alone = crash_gaps(&sup, &tick, dir.path(), "alone", restarts);
        row("crash loop restart gap, no client", &alone);
        // The crasher of the next case exists before its followers connect.
        sup.start(ServiceSpec::new("watched", "true").restart(RestartPolicy::never()))
            .unwrap();
        let socket = sup.control_socket().unwrap().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..20)
            .map(|i| {
                let request = if i % 2 == 0 {
                    r#"{"request":"follow","target":"watched"}"#.to_string()
                } else {
                    r#"{"request":"subscribe"}"#.to_string()
                };
                client(&socket, request, stop.clone(), read.clone())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let watched = crash_gaps(&sup, &tick, dir.path(), "watched", restarts);
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        row(
            "crash loop restart gap, 20 clients following logs and events",
            &watched,
        );
        println!(
            "\n20 clients read {} lines (log lines and events) over {} restarts",
            read.load(Ordering::Relaxed),
            watched.len()
        );
        sup.shutdown().unwrap();
    }
}
