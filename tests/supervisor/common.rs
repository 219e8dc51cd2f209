//! Fixtures: a supervisor in a temporary directory whose children all carry a token in their
//! environment, so that every test can prove it left no process behind (grandchildren
//! included) by scanning /proc.

#![allow(dead_code)]

use sheepdog::{Event, Events, Result, ServiceSpec, Status, Supervisor};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const SECS_5: Duration = Duration::from_secs(5);
pub const SECS_10: Duration = Duration::from_secs(10);
pub const TOKEN_VAR: &str = "SHEEPDOG_TEST_TOKEN";

/// A supervisor for one test, and the token its children carry.
pub struct Harness {
    pub sup: Option<Supervisor>,
    pub dir: tempfile::TempDir,
    pub token: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn new_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let sup = Supervisor::open(dir.path().join("state")).expect("open a supervisor");
        Harness {
            sup: Some(sup),
            dir,
            token: new_token(),
        }
    }

    pub fn sup(&self) -> &Supervisor {
        self.sup.as_ref().expect("the supervisor is open")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A service that runs `script` with `sh -c`, tagged with this test's token.
    pub fn sh(&self, name: &str, script: &str) -> ServiceSpec {
        ServiceSpec::new(name, "/bin/sh")
            .args(["-c", script])
            .env(TOKEN_VAR, &self.token)
    }

    /// Reopens the supervisor on the same state directory.
    pub fn reopen(&mut self) -> Result<()> {
        if let Some(sup) = self.sup.take() {
            sup.shutdown()?;
        }
        self.sup = Some(Supervisor::open(self.state_dir())?);
        Ok(())
    }

    /// Shuts down and checks that no process carrying the token is alive.
    pub fn finish(mut self) {
        if let Some(sup) = self.sup.take() {
            sup.shutdown().expect("shutdown");
        }
        let left = wait_until(SECS_5, || {
            let left = tagged_processes(&self.token);
            left.is_empty().then_some(())
        });
        if left.is_none() {
            let pids = tagged_processes(&self.token);
            kill_all(&pids);
            panic!("leaked processes after shutdown: {pids:?}");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // A failed test must still not leave processes for the next one.
        if let Some(sup) = self.sup.take() {
            let _ = sup.shutdown();
        }
        kill_all(&tagged_processes(&self.token));
    }
}

fn kill_all(pids: &[u32]) {
    for &pid in pids {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

/// Every pid listed in /proc now.
fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live (not zombie) processes whose environment holds `TOKEN_VAR=token`.
pub fn tagged_processes(token: &str) -> Vec<u32> {
    let needle = format!("{TOKEN_VAR}={token}");
    pids()
        .into_iter()
        .filter(|&pid| is_alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Polls `check` until it returns `Some`, or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for the next event matching `pred`, failing the test after `timeout`.
pub fn expect_event(
    events: &Events,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Some(e) if pred(&e) => return e,
            Some(_) => continue,
            None => panic!("no event {what} within {timeout:?}"),
        }
    }
}

/// The status of a service, for polling.
pub fn status(sup: &Supervisor, name: &str) -> Status {
    sup.describe(name).expect("service exists").status()
}

/// Waits until `path` exists and holds at least `n` lines; returns them.
pub fn wait_lines(path: &Path, n: usize, timeout: Duration) -> Vec<String> {
    wait_until(timeout, || {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= n).then_some(lines)
    })
    .unwrap_or_else(|| panic!("{} did not reach {n} lines in {timeout:?}", path.display()))
}

/// The process group of `pid`, if it lives.
pub fn pgid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Pids in `pgid`'s process group that are alive.
pub fn group_members(pgid: u32) -> HashSet<u32> {
    let pgid = pgid.to_string();
    pids()
        .into_iter()
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(vec![], |(_, r)| r.split_whitespace().collect());
            fields.len() > 2 && fields[2] == pgid && fields[0] != "Z"
        })
        .collect()
}

/// Whether this process ignores signal `sig`, from the `SigIgn` mask in /proc/self/status.
pub fn ignores_signal(sig: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .unwrap()
        .trim();
    u64::from_str_radix(mask, 16).unwrap() & (1 << (sig - 1)) != 0
}

/// Runs the test `name` alone, in a new process started by `command` (which is handed this
/// test binary's path and arguments to exec), with `env_var` set so that the test takes its
/// inner branch; fails unless that inner run passed.
pub fn run_alone(mut command: std::process::Command, name: &str, env_var: &str) {
    let out = command
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env_var, "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the inner test ran: {text}");
}

/// The process groups with a live member, per service name (from the `SVC_NAME` each process
/// carries). A run is one group: `sh` and the `sleep` it forks share it.
pub fn live_groups_by_service(token: &str) -> HashMap<String, HashSet<u32>> {
    let mut out: HashMap<String, HashSet<u32>> = HashMap::new();
    for pid in tagged_processes(token) {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let Some(pgid) = pgid_of(pid) else { continue };
        for kv in env.split(|b| *b == 0) {
            if let Some(name) = kv.strip_prefix(b"SVC_NAME=") {
                out.entry(String::from_utf8_lossy(name).into_owned())
                    .or_default()
                    .insert(pgid);
            }
        }
    }
    out
}
