//! Triggers: what a watch costs the supervision thread when it is armed (the walk of the
//! watched tree happens in that thread, one inotify watch per directory), and how soon a
//! change restarts a service once its debounce is over.
//!
//! `cargo bench --bench triggers`; `SHEEPDOG_BENCH_QUICK=1` runs fewer rounds.

use sheepdog::{Event, ServiceSpec, Supervisor, Watch};
use std::path::Path;
use std::time::{Duration, Instant};

fn sleeper(name: &str) -> ServiceSpec {
    ServiceSpec::new(name, "/bin/sleep").arg("600")
}

/// A tree of about `2n` directories: `n` leaves under a tree of 10 per level.
fn tree(root: &Path, n: usize) {
    for i in 0..n {
        let mut path = root.to_path_buf();
        let mut k = i;
        loop {
            path.push(format!("d{}", k % 10));
            k /= 10;
            if k == 0 {
                break;
            }
        }
        std::fs::create_dir_all(path.join(format!("leaf{i}"))).unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::var_os("SHEEPDOG_BENCH_QUICK").is_some();
    let rounds = if quick { 3 } else { 7 };
    let sup = Supervisor::temporary().unwrap();
    let dir = tempfile::tempdir().unwrap();

    println!(
        "| watched directories | start with a watch − start without (ms, median of {rounds}) |"
    );
    println!("|---|---|");
    let sizes: &[usize] = if quick { &[10, 500] } else { &[10, 500, 4_000] };
    for &n in sizes {
        let root = dir.path().join(format!("tree{n}"));
        tree(&root, n);
        let dirs = walk(&root);
        let mut times = Vec::new();
        for r in 0..rounds {
            let t = Instant::now();
            sup.start(sleeper(&format!("plain{n}-{r}"))).unwrap();
            let plain = t.elapsed();
            let t = Instant::now();
            sup.start(
                sleeper(&format!("watched{n}-{r}")).watch(Watch::new([root.to_str().unwrap()])),
            )
            .unwrap();
            let watched = t.elapsed();
            times.push((watched.as_secs_f64() - plain.as_secs_f64()) * 1e3);
            sup.delete(&format!("plain{n}-{r}")).unwrap();
            sup.delete(&format!("watched{n}-{r}")).unwrap();
        }
        println!("| {dirs} | {:.2} |", median(times));
    }

    let debounce = Duration::from_millis(100);
    let root = dir.path().join("app");
    std::fs::create_dir(&root).unwrap();
    sup.start(sleeper("dev").watch(Watch::new([root.to_str().unwrap()]).debounce(debounce)))
        .unwrap();
    let events = sup.subscribe();
    let mut latencies = Vec::new();
    for r in 0..rounds {
        let t = Instant::now();
        std::fs::write(root.join(format!("f{r}.js")), "x").unwrap();
        loop {
            match events.recv_timeout(Duration::from_secs(10)) {
                Some(Event::Started { name, .. }) if name == "dev" => break,
                Some(_) => {}
                None => panic!("no restart within 10 s"),
            }
        }
        latencies.push((t.elapsed().saturating_sub(debounce)).as_secs_f64() * 1e3);
    }
    println!();
    println!("| change → new run started, less the 100 ms debounce (ms, median of {rounds}) |");
    println!("|---|");
    println!("| {:.2} |", median(latencies));
    sup.shutdown().unwrap();
}

fn walk(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        n += 1;
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}
