//! Containment costs per tier: stopping a service with 100 descendants (half of them in
//! sessions of their own); the cleanup `open` does after the host was SIGKILLed with 100
//! services running (each leaves an orphaned grandchild) and no guardian; the time the
//! guardian takes to leave nothing after the host's SIGKILL (each service also leaves a
//! `setsid` daemon); and what the guardian costs: its memory (PSS) and the time it adds to
//! `open`.
//!
//! `cargo bench --bench containment`; `SHEEPDOG_BENCH_QUICK=1` runs fewer rounds and
//! services. The subreaper tier runs last: it changes this process for good.

use sheepdog::{Containment, ServiceSpec, Supervisor};
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN_VAR: &str = "SHEEPDOG_BENCH_TOKEN";

fn tagged(token: &str) -> usize {
    let needle = format!("{TOKEN_VAR}={token}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'));
            !zombie
                && std::fs::read(e.path().join("environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .count()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn tier_name(c: Containment) -> &'static str {
    match c {
        Containment::Cgroup => "cgroup",
        Containment::Subreaper => "subreaper",
        _ => "process group",
    }
}

/// ms to stop a service whose main process has 100 descendants, 50 of them after `setsid`.
fn stop_tree(dir: &Path, containment: Containment, rounds: usize) -> f64 {
    let sup = Supervisor::builder()
        .state_dir(dir.join(format!("stop-{}", tier_name(containment))))
        .containment(containment)
        .open()
        .unwrap();
    assert_eq!(sup.containment(), containment);
    let mut times = Vec::new();
    for round in 0..rounds {
        let token = format!(
            "stop-{}-{round}-{}",
            tier_name(containment),
            std::process::id()
        );
        let spec = ServiceSpec::new("tree", "/bin/sh")
            .args([
                "-c",
                "for i in $(seq 50); do sleep 600 & setsid sleep 600 & done; exec sleep 600",
            ])
            .env(TOKEN_VAR, &token);
        sup.start(spec).unwrap();
        wait_for("the tree", Duration::from_secs(30), || {
            tagged(&token) == 101
        });
        let t = Instant::now();
        sup.stop("tree").unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        wait_for("nothing left", Duration::from_secs(10), || {
            tagged(&token) == 0
        });
        sup.delete("tree").unwrap();
    }
    sup.shutdown().unwrap();
    median(times)
}

/// The helper host: starts `n` services that each leave a grandchild, says "ready", waits.
/// With a guardian, the host is `temporary()` (`state` is unused), prints its state
/// directory, and its services also leave a `setsid` daemon each.
fn helper(state: &str, tier: &str, token: &str, n: usize, guardian: bool) -> ! {
    let containment = if tier == "cgroup" {
        Containment::Cgroup
    } else {
        Containment::ProcessGroup
    };
    let builder = Supervisor::builder()
        .containment(containment)
        .guardian(guardian);
    let sup = if guardian {
        builder.open().unwrap()
    } else {
        builder.state_dir(state).open().unwrap()
    };
    let script = if guardian {
        "sleep 600 & (setsid sleep 600 &); exec sleep 600"
    } else {
        "sleep 600 & exec sleep 600"
    };
    let specs = (0..n).map(|i| {
        ServiceSpec::new(format!("s{i:03}"), "/bin/sh")
            .args(["-c", script])
            .env(TOKEN_VAR, token)
    });
    assert!(sup.start_many(specs).unwrap().iter().all(|r| r.is_ok()));
    if guardian {
        println!("{}", sup.state_dir().display());
    }
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// ms for `open` to find and kill what a SIGKILLed host with `n` services left, and how
/// many processes it reclaimed.
fn cleanup_after_host_death(dir: &Path, containment: Containment, n: usize) -> (f64, usize) {
    let tier = tier_name(containment);
    let state = dir.join(format!("death-{tier}"));
    let token = format!("death-{tier}-{}", std::process::id());
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SHEEPDOG_BENCH_HELPER", &state)
        .env("SHEEPDOG_BENCH_TIER", tier)
        .env("SHEEPDOG_BENCH_HELPER_TOKEN", &token)
        .env("SHEEPDOG_BENCH_HELPER_N", n.to_string())
        .env("SHEEPDOG_BENCH_GUARDIAN", "0")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(host.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    wait_for(
        "every service and grandchild",
        Duration::from_secs(60),
        || tagged(&token) == 2 * n,
    );
    host.kill().unwrap();
    host.wait().unwrap();
    // The main processes die by PDEATHSIG; their children stay.
    wait_for("the orphans", Duration::from_secs(30), || {
        tagged(&token) == n
    });
    let t = Instant::now();
    let sup = Supervisor::builder()
        .state_dir(&state)
        .containment(containment)
        .resurrect(false)
        .open()
        .unwrap();
    let took = t.elapsed().as_secs_f64() * 1e3;
    let reclaimed: usize = sup.reclaimed().iter().map(|(_, pids)| pids.len()).sum();
    assert_eq!(tagged(&token), 0, "open left orphans alive");
    sup.shutdown().unwrap();
    (took, reclaimed)
}

/// ms from a host's SIGKILL until its guardian has left nothing: no process of its `n`
/// services (3 each: the main process, a grandchild, a `setsid` daemon) and no state
/// directory (it was `temporary()`).
fn guardian_cleanup(dir: &Path, containment: Containment, n: usize) -> f64 {
    let tier = tier_name(containment);
    let token = format!("guarded-{tier}-{}", std::process::id());
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SHEEPDOG_BENCH_HELPER", dir)
        .env("SHEEPDOG_BENCH_TIER", tier)
        .env("SHEEPDOG_BENCH_HELPER_TOKEN", &token)
        .env("SHEEPDOG_BENCH_HELPER_N", n.to_string())
        .env("SHEEPDOG_BENCH_GUARDIAN", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(host.stdout.take().unwrap()).lines();
    let state = std::path::PathBuf::from(lines.next().unwrap().unwrap());
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    wait_for(
        "every service, grandchild and daemon",
        Duration::from_secs(60),
        || tagged(&token) == 3 * n,
    );
    host.kill().unwrap();
    let t = Instant::now();
    host.wait().unwrap();
    wait_for("the guardian's cleanup", Duration::from_secs(30), || {
        tagged(&token) == 0 && !state.exists()
    });
    t.elapsed().as_secs_f64() * 1e3
}

/// The guardians among this process's children.
fn guardians() -> Vec<u32> {
    let children = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        });
    children
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "sheepdog-guard")
        })
        .collect()
}

/// A field of `/proc/<pid>/smaps_rollup`, in KiB.
fn rollup_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

/// The guardian's memory (PSS and RSS, KiB) with a fleet of `n` services running, and the
/// median time of `open` (a `temporary()` supervisor) with and without a guardian, in ms.
fn guardian_cost(n: usize, rounds: usize) -> ((u64, u64), (u64, u64), f64, f64) {
    let memory = |n: usize| {
        let sup = Supervisor::temporary().unwrap();
        assert!(sup.guarded());
        let specs = (0..n).map(|i| ServiceSpec::new(format!("s{i:04}"), "sleep").arg("600"));
        assert!(sup.start_many(specs).unwrap().iter().all(|r| r.is_ok()));
        // The guardian names itself once it runs, which may be after `open` returned.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = guardians();
        while g.len() != 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            g = guardians();
        }
        assert_eq!(g.len(), 1, "one guardian, named");
        let m = (rollup_kib(g[0], "Pss:"), rollup_kib(g[0], "Rss:"));
        sup.shutdown().unwrap();
        m
    };
    let (empty, full) = (memory(0), memory(n));
    // Alternating, so that drift on a shared machine hits both alike.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for guardian in [false, true] {
            let t = Instant::now();
            let sup = Supervisor::builder().guardian(guardian).open().unwrap();
            let took = t.elapsed().as_secs_f64() * 1e3;
            sup.shutdown().unwrap();
            if guardian {
                with.push(took);
            } else {
                without.push(took);
            }
        }
    }
    let (without, with) = (median(without), median(with));
    (empty, full, without, with)
}

fn main() {
    if let (Ok(state), Ok(tier), Ok(token), Ok(n), Ok(guardian)) = (
        std::env::var("SHEEPDOG_BENCH_HELPER"),
        std::env::var("SHEEPDOG_BENCH_TIER"),
        std::env::var("SHEEPDOG_BENCH_HELPER_TOKEN"),
        std::env::var("SHEEPDOG_BENCH_HELPER_N"),
        std::env::var("SHEEPDOG_BENCH_GUARDIAN"),
    ) {
        helper(&state, &tier, &token, n.parse().unwrap(), guardian == "1");
    }
    let quick = std::env::var_os("SHEEPDOG_BENCH_QUICK").is_some();
    let (rounds, services) = if quick { (1, 10) } else { (5, 100) };
    let dir = tempfile::tempdir().unwrap();
    let cgroups = Supervisor::builder()
        .state_dir(dir.path().join("probe"))
        .open()
        .unwrap()
        .containment()
        == Containment::Cgroup;
    let mut tiers = Vec::new();
    if cgroups {
        tiers.push(Containment::Cgroup);
    } else {
        println!("(no writable cgroup v2 hierarchy here: the cgroup tier is not measured)");
    }
    tiers.push(Containment::ProcessGroup);
    println!(
        "| tier | stop, 100 descendants (50 after setsid), median of {rounds} | open after a host SIGKILL with {services} services: time, processes reclaimed |"
    );
    println!("|---|---|---|");
    for &tier in &tiers {
        let stop = stop_tree(dir.path(), tier, rounds);
        let (open, reclaimed) = cleanup_after_host_death(dir.path(), tier, services);
        println!(
            "| {} | {stop:.1} ms | {open:.1} ms, {reclaimed} |",
            tier_name(tier)
        );
    }
    println!();
    println!(
        "| tier | guardian: nothing left after a host SIGKILL with {services} services (3 processes each), median of {rounds} |"
    );
    println!("|---|---|");
    for &tier in &tiers {
        let times = (0..rounds)
            .map(|_| guardian_cleanup(dir.path(), tier, services))
            .collect();
        println!("| {} | {:.1} ms |", tier_name(tier), median(times));
    }
    let fleet = if quick { 100 } else { 1000 };
    let (empty, full, without, with) = guardian_cost(fleet, if quick { 5 } else { 51 });
    println!();
    println!("| guardian | PSS | RSS |");
    println!("|---|---|---|");
    println!(
        "| host with no service | {} KiB | {} KiB |",
        empty.0, empty.1
    );
    println!(
        "| host with {fleet} services | {} KiB | {} KiB |",
        full.0, full.1
    );
    println!();
    println!(
        "`open` of a temporary supervisor, median: {without:.2} ms without a guardian, {with:.2} ms with one (+{:.2} ms)",
        with - without
    );
    // Last: this process stays a subreaper.
    let stop = stop_tree(dir.path(), Containment::Subreaper, rounds);
    println!();
    println!("| tier | stop, 100 descendants (50 after setsid), median of {rounds} |");
    println!("|---|---|");
    println!("| subreaper | {stop:.1} ms |");
}
