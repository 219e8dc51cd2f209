//! [`Stats`]: what a service's processes use, summed over its whole process group, read from
//! /proc on demand (one pass over /proc for any number of services).

use crate::sys;
use std::collections::HashMap;
use std::time::Instant;

/// Resource use of one service: every process of its group, summed.
///
/// # Example
///
/// ```
/// use sheepdog::{ServiceSpec, Supervisor};
/// # fn main() -> sheepdog::Result<()> {
/// let sup = Supervisor::temporary()?;
/// sup.start(ServiceSpec::new("pair", "sh").args(["-c", "sleep 60 & exec sleep 60"]))?;
/// let stats = &sup.stats("pair")?[0];
/// assert_eq!(stats.name(), "pair");
/// assert!(stats.rss_bytes() > 0);
/// # sup.shutdown()?; Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub(crate) name: String,
    pub(crate) processes: u32,
    pub(crate) threads: u32,
    pub(crate) rss_bytes: u64,
    pub(crate) cpu_percent: f64,
}

impl Stats {
    /// The service.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Live processes in its group (0 when it does not run).
    pub fn processes(&self) -> u32 {
        self.processes
    }

    /// Threads over those processes.
    pub fn threads(&self) -> u32 {
        self.threads
    }

    /// Resident memory over those processes (shared pages are counted in each).
    pub fn rss_bytes(&self) -> u64 {
        self.rss_bytes
    }

    /// CPU use since the previous `stats` call for this service (or since its start), in
    /// percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        self.cpu_percent
    }
}

/// The previous CPU reading of each service's run, for CPU percentages.
#[derive(Default)]
pub(crate) struct CpuHistory {
    last: HashMap<(u64, u64), (Instant, u64)>,
}

/// One service to measure: (id, generation, name, pgid if running, run start, and the
/// `cgroup.procs` of its run's cgroup under cgroup containment).
pub(crate) struct Target {
    pub(crate) id: u64,
    pub(crate) generation: u64,
    pub(crate) name: String,
    pub(crate) pgid: Option<u32>,
    pub(crate) started: Option<Instant>,
    pub(crate) cgroup_procs: Option<std::path::PathBuf>,
}

pub(crate) fn measure(targets: Vec<Target>, history: &mut CpuHistory) -> Vec<Stats> {
    let mut sums: HashMap<u32, (u32, u32, u64, u64)> = HashMap::new();
    let wanted: std::collections::HashSet<u32> = targets.iter().filter_map(|t| t.pgid).collect();
    // Members of a run's cgroup that left its process group count for it too.
    let mut members: HashMap<u32, u32> = HashMap::new();
    for t in &targets {
        if let (Some(pgid), Some(procs)) = (t.pgid, &t.cgroup_procs) {
            let text = std::fs::read_to_string(procs).unwrap_or_default();
            for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                members.insert(pid, pgid);
            }
        }
    }
    if !wanted.is_empty() {
        for p in sys::all_processes() {
            let owner = if wanted.contains(&p.pgrp) {
                Some(p.pgrp)
            } else {
                members.get(&p.pid).copied()
            };
            if let Some(owner) = owner {
                let e = sums.entry(owner).or_default();
                e.0 += 1;
                e.1 += p.threads;
                // /proc/<pid>/stat's rss skips the per-CPU parts of the counters (Linux
                // 6.2+), hundreds of KiB off for a small process; statm sums them.
                e.2 += sys::resident_pages(p.pid).unwrap_or(p.rss_pages);
                e.3 += p.cpu_ticks;
            }
        }
    }
    let (hz, page) = (sys::clock_ticks_per_second() as f64, sys::page_size());
    let now = Instant::now();
    let mut seen = Vec::new();
    let out = targets
        .into_iter()
        .map(|t| {
            let (processes, threads, pages, ticks) = t
                .pgid
                .and_then(|g| sums.get(&g).copied())
                .unwrap_or_default();
            let key = (t.id, t.generation);
            let cpu_percent = match (t.pgid, history.last.get(&key), t.started) {
                (None, _, _) => 0.0,
                (Some(_), Some(&(then, before)), _) => {
                    percent(ticks.saturating_sub(before), hz, now - then)
                }
                (Some(_), None, Some(start)) => percent(ticks, hz, now - start),
                (Some(_), None, None) => 0.0,
            };
            if t.pgid.is_some() {
                history.last.insert(key, (now, ticks));
                seen.push(key);
            }
            Stats {
                name: t.name,
                processes,
                threads,
                rss_bytes: pages * page,
                cpu_percent,
            }
        })
        .collect();
    // Forget runs that ended; keep the ones just measured.
    if history.last.len() > seen.len() * 2 + 64 {
        history.last.retain(|k, _| seen.contains(k));
    }
    out
}

fn percent(ticks: u64, hz: f64, elapsed: std::time::Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        ticks as f64 / hz / secs * 100.0
    }
}
