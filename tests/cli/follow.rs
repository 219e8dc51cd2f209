//! `sheepdog logs -f` keeps going across rotations and restarts, losing no line of a run it
//! has begun to follow.

use crate::host::Host;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

/// Each run prints 40 numbered lines (about 1.2 kB) and crashes; the log rotates past 1.5 kB.
const FLEET: &str = r#"
[[service]]
name = "counter"
program = "/bin/sh"
args = ["-c", "i=0; while [ $i -lt 40 ]; do echo \"run $$ line $i\"; i=$((i+1)); done; sleep 0.3; exit 1"]
restart = { policy = "always", backoff = { kind = "fixed", delay = "100ms" } }
log = { max_bytes = 1500, keep = 3 }
"#;

#[test]
fn follow_survives_rotation_and_restarts() {
    let host = Host::start(FLEET);
    let mut follow = host
        .cli_process()
        .args([
            "--json", "logs", "counter", "-f", "-n", "0", "--stream", "out",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Lines by run (pid), in the order they came.
    let mut runs: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut order: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let complete = |runs: &BTreeMap<u32, Vec<u32>>, order: &[u32]| {
        // Whole runs: every run after the first one seen (which may have begun earlier).
        order
            .iter()
            .skip(1)
            .filter(|pid| runs[pid].len() == 40)
            .count()
    };
    while complete(&runs, &order) < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("follow stalled; runs so far: {runs:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
        assert_eq!(v["service"], "counter");
        assert_eq!(v["stream"], "stdout");
        assert!(v["cursor"].as_str().is_some_and(|c| c.contains(':')), "{v}");
        let text = v["text"].as_str().unwrap();
        let words: Vec<&str> = text.split(' ').collect();
        assert_eq!(words.len(), 4, "{text}");
        let pid: u32 = words[1].parse().unwrap();
        let n: u32 = words[3].parse().unwrap();
        if !runs.contains_key(&pid) {
            order.push(pid);
        }
        runs.entry(pid).or_default().push(n);
    }
    let _ = follow.kill();
    let _ = follow.wait();
    for pid in order.iter().skip(1) {
        let lines = &runs[pid];
        if lines.len() == 40 {
            assert_eq!(
                *lines,
                (0..40).collect::<Vec<u32>>(),
                "run {pid}: in order, none lost or repeated"
            );
        }
    }
    let rotated = host.state().join("logs/counter.out.log.1");
    assert!(rotated.exists(), "the log rotated while it was followed");
    host.finish();
}
