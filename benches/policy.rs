//! The restart decision, alone: nanoseconds per `RestartPolicy::decide` for a crash loop under
//! an exponential backoff with jitter and a crash-loop window, the policy the supervisor runs
//! on every exit that nobody asked for. Pure code, no I/O.
//!
//! `cargo bench --bench policy`; `SHEEPDOG_BENCH_QUICK=1` runs fewer rounds.

use sheepdog::policy::{Decision, History, Outcome, RunEnd};
use sheepdog::{Backoff, RestartPolicy};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn round(policy: &RestartPolicy, n: u64) -> f64 {
    let t0 = Instant::now();
    let mut history = History::default();
    let mut restarts = 0u64;
    let start = Instant::now();
    for i in 0..n {
        // A crash every 10 ms of 2 ms uptime: inside the window, so the history stays full.
        let started = t0 + Duration::from_millis(i * 10);
        let end = RunEnd::new(
            started,
            started + Duration::from_millis(2),
            Outcome::Code(1),
        );
        let (decision, next) = policy.decide(black_box(&history), &end, 0.5);
        if matches!(decision, Decision::Restart { .. }) {
            restarts += 1;
            history = next;
        } else {
            history = History::default();
        }
    }
    black_box(restarts);
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let quick = std::env::var_os("SHEEPDOG_BENCH_QUICK").is_some();
    let (n, rounds) = if quick { (10_000, 3) } else { (1_000_000, 7) };
    let policies = [
        (
            "always, no backoff",
            RestartPolicy::always().backoff(Backoff::none()),
        ),
        (
            "on-failure, exponential 100ms..30s, jitter 0.1, 100 restarts / 60 s",
            RestartPolicy::on_failure()
                .backoff(
                    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30))
                        .jitter(0.1),
                )
                .max_restarts(100, Duration::from_secs(60)),
        ),
    ];
    println!("| policy | ns per decision (median of {rounds} × {n}) |");
    println!("|---|---|");
    for (label, policy) in policies {
        let mut times: Vec<f64> = (0..rounds).map(|_| round(&policy, n)).collect();
        times.sort_by(f64::total_cmp);
        println!("| {label} | {:.0} |", times[times.len() / 2]);
    }
}
