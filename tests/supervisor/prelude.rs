//! What every test file needs: a harness whose children carry a token and whose `finish`
//! proves none is left; waits with deadlines; helpers that read processes from /proc;
//! subprocesses (this test binary run again, alone or as a helper host that a test kills);
//! and [`per_tier!`], which runs a scenario once per containment tier.
//!
//! Tests return [`TestResult`]: a setup step that fails says what it was doing (through
//! [`Context`]), and an assertion says what was expected, so that a failure reads as a
//! sentence.

#![allow(dead_code)]

use sheepdog::{Builder, Containment, Event, Events, ServiceSpec, Status, Supervisor};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const SECS_5: Duration = Duration::from_secs(5);
pub const SECS_10: Duration = Duration::from_secs(10);
/// Every child a test starts carries `TOKEN_VAR=<its token>`, so that `finish` can find
/// whatever it left, grandchildren and daemons included.
pub const TOKEN_VAR: &str = "SHEEPDOG_TEST_TOKEN";

// ---------------------------------------------------------------------------------------
// Results

/// What a test returns.
pub type TestResult<T = ()> = Result<T, Failure>;

/// Why a test failed: what it was doing, and the error (with its sources) that stopped it.
/// Printed as is, so that the failure reads as a sentence.
pub struct Failure(String);

impl Failure {
    pub fn new(why: impl fmt::Display) -> Failure {
        Failure(why.to_string())
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(err: E) -> Failure {
        Failure(with_sources(&err))
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn with_sources(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// Says what a fallible step was for: `sup.start(spec).context("start 'web'")?`.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> TestResult<T>;
}

impl<T, E: std::error::Error> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> TestResult<T> {
        self.map_err(|e| Failure(format!("{what}: {}", with_sources(&e))))
    }
}

impl<T> Context<T> for TestResult<T> {
    fn context(self, what: impl fmt::Display) -> TestResult<T> {
        self.map_err(|e| Failure(format!("{what}: {}", e.0)))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> TestResult<T> {
        self.ok_or_else(|| Failure(what.to_string()))
    }
}

/// Says that a test does not run here, and why, where the output is not captured: a skip
/// is never silent.
pub fn skip(test: &str, why: impl fmt::Display) -> TestResult {
    let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
    Ok(())
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

// ---------------------------------------------------------------------------------------
// The harness

/// A supervisor for one test, in a temporary directory, and the token its children carry.
pub struct Harness {
    pub sup: Option<Supervisor>,
    pub dir: tempfile::TempDir,
    pub token: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A token no other test uses; it starts with `t<pid>-`, so that a subprocess's leftovers
/// can be told by its pid.
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
    /// A supervisor opened with the defaults (`Containment::Auto`).
    pub fn new() -> TestResult<Harness> {
        Harness::with(Supervisor::builder())
    }

    /// A supervisor opened by `builder`, on the harness's state directory.
    pub fn with(builder: Builder) -> TestResult<Harness> {
        let mut h = Harness::unopened()?;
        h.open(builder)?;
        Ok(h)
    }

    /// A harness whose state directory is not opened yet (see [`Harness::open`]).
    pub fn unopened() -> TestResult<Harness> {
        Ok(Harness {
            sup: None,
            dir: tempfile::tempdir().context("a temporary directory")?,
            token: new_token(),
        })
    }

    /// Opens the state directory with `builder`.
    pub fn open(&mut self, builder: Builder) -> TestResult {
        let sup = builder
            .state_dir(self.state_dir())
            .open()
            .context("open a supervisor")?;
        self.sup = Some(sup);
        Ok(())
    }

    pub fn sup(&self) -> &Supervisor {
        self.sup.as_ref().expect("the supervisor is open")
    }

    /// The supervisor, taken out of the harness (to share it, or to shut it down by hand).
    pub fn take(&mut self) -> Supervisor {
        self.sup.take().expect("the supervisor is open")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A service that runs `script` with `sh -c`, tagged with this test's token.
    pub fn sh(&self, name: &str, script: &str) -> ServiceSpec {
        tagged_sh(&self.token, name, script)
    }

    /// Starts `spec`; returns the pid of its main process.
    pub fn start_pid(&self, spec: ServiceSpec) -> TestResult<u32> {
        let name = spec.name().to_string();
        self.sup()
            .start(spec)?
            .pid()
            .context(format!("{name} was started and has a pid"))
    }

    /// The processes carrying this test's token.
    pub fn tagged(&self) -> Vec<u32> {
        tagged_processes(&self.token)
    }

    /// Waits until the processes carrying this test's token number `n`; returns them.
    pub fn wait_for_tagged(&self, n: usize, what: &str) -> TestResult<Vec<u32>> {
        wait_for_tagged(&self.token, n, what)
    }

    /// Shuts down and reopens the supervisor on the same state directory.
    pub fn reopen(&mut self) -> TestResult {
        if let Some(sup) = self.sup.take() {
            sup.shutdown().context("shutdown before the reopen")?;
        }
        self.sup = Some(Supervisor::open(self.state_dir()).context("reopen")?);
        Ok(())
    }

    /// Shuts down and proves that no process carrying the token is alive.
    pub fn finish(mut self) -> TestResult {
        if let Some(sup) = self.sup.take() {
            sup.shutdown().context("shutdown at the end of the test")?;
        }
        no_tagged_left(&self.token, "after shutdown")
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

/// A service that runs `script` with `sh -c`, tagged with `token`.
pub fn tagged_sh(token: &str, name: &str, script: &str) -> ServiceSpec {
    ServiceSpec::new(name, "/bin/sh")
        .args(["-c", script])
        .env(TOKEN_VAR, token)
}

/// Waits until no process carries `token`; fails naming what is left (and kills it).
pub fn no_tagged_left(token: &str, when: &str) -> TestResult {
    if wait_until(SECS_5, || tagged_processes(token).is_empty().then_some(())).is_some() {
        return Ok(());
    }
    let left = tagged_processes(token);
    let shown = describe_processes(&left);
    kill_all(&left);
    Err(Failure(format!("processes leaked {when}: {shown}")))
}

/// Waits until the processes carrying `token` number `n`; returns them.
pub fn wait_for_tagged(token: &str, n: usize, what: &str) -> TestResult<Vec<u32>> {
    wait_until(SECS_10, || {
        let now = tagged_processes(token);
        (now.len() == n).then_some(now)
    })
    .with_context(|| {
        format!(
            "{what}: {n} processes expected, {} found",
            describe_processes(&tagged_processes(token))
        )
    })
}

/// `pid (name, state, process group: command line)` for each pid, for messages (a zombie
/// has no command line left).
pub fn describe_processes(pids: &[u32]) -> String {
    let shown: Vec<String> = pids
        .iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let name = stat
                .split_once('(')
                .and_then(|(_, rest)| rest.rsplit_once(')'))
                .map_or("", |(name, _)| name);
            let fields = stat_fields(*p).unwrap_or_default();
            let state = fields.first().map_or("gone", String::as_str);
            let pgrp = fields.get(2).map_or("?", String::as_str);
            let cmdline = std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            format!("{p} ({name}, {state}, group {pgrp}: {})", cmdline.trim())
        })
        .collect();
    format!("[{}]", shown.join(", "))
}

/// Says what a step was for, where saying it costs work: only on failure.
pub trait WithContext<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> TestResult<T>;
}

impl<T> WithContext<T> for Option<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> TestResult<T> {
        self.ok_or_else(|| Failure(what()))
    }
}

pub fn kill_all(pids: &[u32]) {
    for &pid in pids {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Waits

/// Polls `check` until it returns `Some`, or `timeout` passes. Polls often at first (most
/// conditions hold within milliseconds), then every 16 ms, so that a long wait does not
/// keep a core busy reading /proc.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(16));
    }
}

/// Waits for the next event matching `pred`; fails, saying `what` was awaited, after
/// `timeout`.
pub fn expect_event(
    events: &Events,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> TestResult<Event> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Some(e) if pred(&e) => return Ok(e),
            Some(_) => continue,
            None => return Err(Failure(format!("no event {what} within {timeout:?}"))),
        }
    }
}

/// Runs `f` on a thread of its own and returns its value; fails, saying `what` hung or
/// panicked, if it does not return within `deadline` (the thread is left behind).
pub fn within<T: Send + 'static>(
    what: &str,
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> TestResult<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(deadline) {
        Ok(v) => Ok(v),
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Failure(format!(
            "{what} did not return within {deadline:?}"
        ))),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
            Err(Failure(format!("{what} panicked")))
        }
    }
}

/// Asserts that the supervision thread still answers requests.
pub fn answers(sup: &Supervisor) {
    assert_eq!(
        sup.stop("zz-no-such-service").map_err(|e| e.kind()),
        Err(sheepdog::ErrorKind::NotFound),
        "the supervision thread no longer answers"
    );
}

/// The pid of a service that must be online, and alive.
pub fn online_pid(sup: &Supervisor, name: &str) -> TestResult<u32> {
    let info = sup.describe(name)?;
    assert_eq!(info.status(), Status::Online, "{name} is online");
    let pid = info.pid().context(format!("{name} has a pid"))?;
    assert!(is_alive(pid), "{name}'s pid {pid} is alive");
    Ok(pid)
}

/// The status of a service, for polling.
pub fn status(sup: &Supervisor, name: &str) -> Status {
    sup.describe(name).expect("service exists").status()
}

/// Waits until `path` exists and holds at least `n` lines; returns them.
pub fn wait_lines(path: &Path, n: usize, timeout: Duration) -> TestResult<Vec<String>> {
    wait_until(timeout, || {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= n).then_some(lines)
    })
    .with_context(|| format!("{} did not reach {n} lines in {timeout:?}", path.display()))
}

/// The lines of a file (none if it is missing).
pub fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Processes, from /proc

/// Every pid listed in /proc now.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The environment of `pid`, raw. A process in the middle of an exec shows an empty one
/// until its new image is set up: one that started less than a second ago is read again,
/// for up to 100 ms, so that a leak check does not take it for untagged.
fn environ(pid: u32) -> Option<Vec<u8>> {
    let path = format!("/proc/{pid}/environ");
    let mut env = std::fs::read(&path).ok()?;
    let deadline = Instant::now() + Duration::from_millis(100);
    while env.is_empty() && Instant::now() < deadline && young_user_process(pid) {
        std::thread::sleep(Duration::from_millis(1));
        env = std::fs::read(&path).ok()?;
    }
    Some(env)
}

/// A live process, not a kernel thread, started less than a second (100 clock ticks) ago.
fn young_user_process(pid: u32) -> bool {
    let Some(f) = stat_fields(pid) else {
        return false;
    };
    let ppid: u32 = f.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    if f[0] == "Z" || f[0] == "X" || ppid == 2 || pid == 2 {
        return false;
    }
    // The start time is the 22nd field of stat, the 20th after the command name.
    let start: u64 = f.get(19).and_then(|s| s.parse().ok()).unwrap_or(0);
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let now = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(0, |secs| (secs * 100.0) as u64);
    now.saturating_sub(start) < 100
}

/// Whether the environment of `pid` holds `kv` (`NAME=value`).
pub fn env_has(pid: u32, kv: &str) -> bool {
    environ(pid).is_some_and(|env| env.split(|b| *b == 0).any(|e| e == kv.as_bytes()))
}

/// The value of `var` in the environment of `pid`.
pub fn env_of(pid: u32, var: &str) -> Option<String> {
    let env = environ(pid)?;
    let prefix = format!("{var}=");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Live (not zombie) processes whose environment holds `TOKEN_VAR=token`.
pub fn tagged_processes(token: &str) -> Vec<u32> {
    let needle = format!("{TOKEN_VAR}={token}");
    processes_where(|pid| env_has(pid, &needle))
}

/// Live processes for which `pred` holds.
pub fn processes_where(pred: impl Fn(u32) -> bool) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&pid| is_alive(pid) && pred(pid))
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, ...
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The command name of `pid` (`/proc/<pid>/comm`), if it exists: after an exec, the
/// program's.
pub fn process_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim().to_string())
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn is_alive(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.into_iter().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The process group of `pid`, if it lives.
pub fn pgid_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// Pids in `pgid`'s process group that are alive.
pub fn group_members(pgid: u32) -> HashSet<u32> {
    let pgid = pgid.to_string();
    pids()
        .into_iter()
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f.len() > 2 && f[2] == pgid && f[0] != "Z"))
        .collect()
}

/// Children of this process that are zombies.
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    pids()
        .into_iter()
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f.len() > 1 && f[0] == "Z" && f[1] == me))
        .collect()
}

/// The children of this process, from every thread's list.
pub fn own_children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether this process ignores signal `sig`, from the `SigIgn` mask in /proc/self/status.
pub fn ignores_signal(sig: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().ok()))
        })
        .flatten()
        .unwrap_or(0)
}

/// The process groups with a live member, per service: the value of `var` (`SVC_NAME`, say)
/// each process carries, among the processes that carry `token`.
pub fn live_groups_by_service(token: &str, var: &str) -> HashMap<String, HashSet<u32>> {
    let mut out: HashMap<String, HashSet<u32>> = HashMap::new();
    for pid in tagged_processes(token) {
        if let (Some(name), Some(pgid)) = (env_of(pid, var), pgid_of(pid)) {
            out.entry(name).or_default().insert(pgid);
        }
    }
    out
}

/// The services, among `groups`, that have more than one live process group: a scan of /proc
/// is not atomic, so a group counts only if it still has a member after the scan.
pub fn duplicate_runs(groups: HashMap<String, HashSet<u32>>) -> Vec<(String, Vec<u32>)> {
    groups
        .into_iter()
        .filter_map(|(name, groups)| {
            let alive: Vec<u32> = groups
                .into_iter()
                .filter(|g| !group_members(*g).is_empty())
                .collect();
            (alive.len() > 1).then_some((name, alive))
        })
        .collect()
}

/// The guardians (by pid) watching the supervisor whose state directory is `state`.
pub fn guardians_of(state: &Path) -> Vec<u32> {
    let state = std::fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    let needle = format!("SHEEPDOG_GUARDIAN_STATE={}", state.display());
    processes_where(|pid| env_has(pid, &needle))
}

// ---------------------------------------------------------------------------------------
// Filesystems

/// A mount over a directory, unmounted (lazily, so a leftover open file cannot stop it) on
/// drop. Mounting needs root (CAP_SYS_ADMIN): the error says so, for a skip.
pub struct Mount(PathBuf);

impl Mount {
    fn run(args: &[&str], path: &Path) -> Result<(), String> {
        let out = Command::new("mount")
            .args(args)
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// A private tmpfs (0700) of `size` (as `mount -o size=` takes it) on `path`.
    pub fn tmpfs(path: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        Mount::run(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=700"),
                "tmpfs",
            ],
            path,
        )?;
        Ok(Mount(path.to_path_buf()))
    }

    /// `path` bind-mounted over itself, read-only.
    pub fn read_only_bind(path: &Path) -> Result<Mount, String> {
        let source = path.to_str().ok_or("a path that is not UTF-8")?;
        Mount::run(&["--bind", source], path)?;
        let mount = Mount(path.to_path_buf());
        Mount::run(&["-o", "remount,bind,ro"], path)?;
        Ok(mount)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem under `dir` with one file, to the last byte; returns the file.
pub fn fill(dir: &Path) -> TestResult<PathBuf> {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).context("room for an empty file")?;
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC: full
            Err(e) => return Err(Failure(format!("filling {}: {e}", dir.display()))),
        }
    }
    // Whatever single bytes still fit in the last page.
    while file.write_all(&[0x5a]).is_ok() {}
    Ok(filler)
}

// ---------------------------------------------------------------------------------------
// Containment tiers

/// The containment tier a scenario runs in, and the test that runs it.
pub struct Tier {
    containment: Containment,
    test: String,
}

impl Tier {
    pub fn containment(&self) -> Containment {
        self.containment
    }

    /// The name of the running test, as `--exact` takes it (for helper hosts).
    pub fn test(&self) -> &str {
        &self.test
    }

    pub fn is(&self, containment: Containment) -> bool {
        self.containment == containment
    }

    /// A builder for a supervisor in this tier.
    pub fn builder(&self) -> Builder {
        Supervisor::builder().containment(self.containment)
    }

    /// A harness whose supervisor runs in this tier.
    pub fn harness(&self) -> TestResult<Harness> {
        Harness::with(self.builder())
    }

    /// The tier's name, as a helper host takes it back with [`tier_named`].
    pub fn name(&self) -> &'static str {
        tier_name(self.containment)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} tier", self.name())
    }
}

pub fn tier_name(containment: Containment) -> &'static str {
    match containment {
        Containment::Cgroup => "cgroup",
        Containment::Subreaper => "subreaper",
        Containment::ProcessGroup => "process group",
        _ => "auto",
    }
}

/// The containment named by [`tier_name`].
pub fn tier_named(name: &str) -> Containment {
    match name {
        "cgroup" => Containment::Cgroup,
        "subreaper" => Containment::Subreaper,
        "process group" => Containment::ProcessGroup,
        _ => Containment::Auto,
    }
}

/// Why this machine gives no cgroup tier (no writable cgroup v2 hierarchy), if it does not.
pub fn no_cgroups() -> Option<&'static str> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        let dir = tempfile::tempdir().ok()?;
        Supervisor::builder()
            .state_dir(dir.path())
            .containment(Containment::Cgroup)
            .guardian(false)
            .open()
            .err()
            .map(|e| format!("no cgroup tier here ({e})"))
    })
    .as_deref()
}

/// Set, to the name of a test, in the process that runs a subreaper tier test alone.
const SUBREAPER_VAR: &str = "SHEEPDOG_TEST_SUBREAPER";

/// Runs `scenario` in the tier `containment`, as the test `test` (its full path, as
/// `module_path!` gives it). The cgroup tier is skipped, saying why, where this machine has
/// none. The subreaper tier runs in a process of its own: it makes its host a child
/// subreaper for good, and every orphan of the test binary would come to it.
pub fn run_in_tier(
    test: &str,
    containment: Containment,
    scenario: fn(&Tier) -> TestResult,
) -> TestResult {
    let test = test.split_once("::").map_or(test, |(_, path)| path);
    if containment == Containment::Cgroup
        && let Some(why) = no_cgroups()
    {
        return skip(test, why);
    }
    if containment == Containment::Subreaper && !running_alone(SUBREAPER_VAR, test) {
        return run_alone(Command::new("env"), test, SUBREAPER_VAR);
    }
    scenario(&Tier {
        containment,
        test: test.to_string(),
    })?;
    if containment == Containment::Subreaper {
        // Orphans come to a subreaper host: none may be left running. (Zombies left unreaped
        // are the subject of `subreaper_reaping.rs`.)
        let live = || -> Vec<u32> {
            own_children()
                .into_iter()
                .filter(|&p| is_alive(p))
                .collect()
        };
        let gone = wait_until(SECS_5, || live().is_empty().then_some(()));
        let left = live();
        kill_all(&left);
        gone.with_context(|| {
            format!(
                "the subreaper host still has children running: {}",
                describe_processes(&left)
            )
        })?;
    }
    Ok(())
}

/// Defines, for the scenario `fn $name(tier: &Tier) -> TestResult`, a module `$name` with
/// one test per containment tier: `cgroup`, `subreaper` and `process_group`.
macro_rules! per_tier {
    ($name:ident) => {
        $crate::prelude::in_tiers!($name: cgroup, subreaper, process_group);
    };
}

/// As [`per_tier!`], for the tiers listed: `in_tiers!(name: cgroup, process_group)`. Each
/// tier's test may carry attributes of its own: an `#[ignore = "defect: ..."]` names a
/// known defect of the crate in that tier, and keeps the test, visible, until it is fixed.
macro_rules! in_tiers {
    ($name:ident: $($(#[$attr:meta])* $tier:ident),+ $(,)?) => {
        mod $name {
            $($crate::prelude::tier_test!($name, $(#[$attr])* $tier);)+
        }
    };
}

/// One test of [`in_tiers!`].
macro_rules! tier_test {
    ($name:ident, $(#[$attr:meta])* cgroup) => {
        $crate::prelude::tier_test!(@ $name, $(#[$attr])* cgroup, Cgroup);
    };
    ($name:ident, $(#[$attr:meta])* subreaper) => {
        $crate::prelude::tier_test!(@ $name, $(#[$attr])* subreaper, Subreaper);
    };
    ($name:ident, $(#[$attr:meta])* process_group) => {
        $crate::prelude::tier_test!(@ $name, $(#[$attr])* process_group, ProcessGroup);
    };
    (@ $name:ident, $(#[$attr:meta])* $test:ident, $containment:ident) => {
        #[test]
        $(#[$attr])*
        fn $test() -> $crate::prelude::TestResult {
            $crate::prelude::run_in_tier(
                concat!(module_path!(), "::", stringify!($test)),
                sheepdog::Containment::$containment,
                super::$name,
            )
        }
    };
}

pub(crate) use in_tiers;
pub(crate) use per_tier;
pub(crate) use tier_test;

/// The name of the test `$name` of the calling module, as `--exact` takes it.
macro_rules! test_name {
    ($name:literal) => {
        $crate::prelude::without_crate(concat!(module_path!(), "::", $name))
    };
}

pub(crate) use test_name;

/// `path` without the crate's name in front.
pub fn without_crate(path: &'static str) -> &'static str {
    path.split_once("::").map_or(path, |(_, p)| p)
}

// ---------------------------------------------------------------------------------------
// Subprocesses

/// Whether this process runs the test `test` alone, started by [`run_alone`] with `var`.
pub fn running_alone(var: &str, test: &str) -> bool {
    std::env::var(var).is_ok_and(|t| t == test)
}

/// Runs the test `test` alone, in a new process started by `command` (which is handed this
/// test binary's path and arguments to exec, so it can set a limit, a signal disposition or
/// a umask first), with `var` set to the test's name: there [`running_alone`] says so. Fails
/// unless that run passed within ten minutes and left no process carrying a token it made.
pub fn run_alone(command: Command, test: &str, var: &str) -> TestResult {
    run_alone_within(command, test, var, Duration::from_secs(600)).map(|_| ())
}

/// As [`run_alone`], within `deadline` (the run is killed then); returns what it printed.
pub fn run_alone_within(
    mut command: Command,
    test: &str,
    var: &str,
    deadline: Duration,
) -> TestResult<String> {
    let out = tempfile::NamedTempFile::new().context("a file for the output")?;
    // One open file for both streams, so that they share its offset.
    let file = out.reopen().context("the output file")?;
    let mut child = command
        .arg(std::env::current_exe().context("this test binary")?)
        .args(["--exact", test, "--include-ignored", "--nocapture"])
        .arg("--test-threads=1")
        .env(var, test)
        .stdout(file.try_clone().context("the output file")?)
        .stderr(file)
        .spawn()
        .context(format!("start {test} alone"))?;
    let pid = child.id();
    let status = wait_until(deadline, || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(out.path()).unwrap_or_default();
    // A skip there is printed here too (the harness may have printed the test's name,
    // without a line end, before it).
    for line in text
        .lines()
        .filter_map(|l| l.find("skipped ").map(|i| &l[i..]))
    {
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    let status = status.with_context(|| {
        format!("{test}, run alone, did not finish within {deadline:?}:\n{text}")
    })?;
    if !status.success() || !text.contains("1 passed") {
        return Err(Failure(format!(
            "{test}, run alone, failed ({status}):\n{text}"
        )));
    }
    // Harness tokens start with the pid of the process that made them.
    let prefix = format!("{TOKEN_VAR}=t{pid}-");
    let made_there = |p: u32| {
        std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|env| {
            env.split(|b| *b == 0)
                .any(|kv| kv.starts_with(prefix.as_bytes()))
        })
    };
    let gone = wait_until(SECS_5, || {
        processes_where(made_there).is_empty().then_some(())
    });
    let left = processes_where(made_there);
    kill_all(&left);
    gone.with_context(|| format!("{test}, run alone, left {}", describe_processes(&left)))?;
    Ok(text)
}

/// Set in a helper host; its arguments are `SHEEPDOG_HELPER_<KEY>` variables.
const HELPER_VAR: &str = "SHEEPDOG_HELPER_HOST";

/// Whether this process is a helper host started by [`HostProcess::spawn`].
pub fn is_helper_host() -> bool {
    std::env::var_os(HELPER_VAR).is_some()
}

/// An argument of this helper host.
pub fn helper_arg(key: &str) -> String {
    std::env::var(format!("SHEEPDOG_HELPER_{key}"))
        .unwrap_or_else(|_| panic!("the helper host is given {key}"))
}

/// In a helper host started by [`HostProcess::in_tier`]: a builder for the tier and the state
/// directory it was given.
pub fn helper_builder() -> Builder {
    Supervisor::builder()
        .containment(tier_named(&helper_arg("TIER")))
        .state_dir(helper_arg("STATE"))
}

/// What a helper host does once it is set up: says `ready`, then waits to be killed.
pub fn serve_until_killed() -> ! {
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// This test binary run again as a host (its test takes the helper branch, see
/// [`is_helper_host`]): a process whose death a test can cause. Killed on drop.
pub struct HostProcess {
    child: Child,
    lines: crossbeam_channel::Receiver<String>,
}

impl HostProcess {
    /// Starts the test `test` as a helper host, with `args` as its arguments.
    pub fn spawn(test: &str, args: &[(&str, &OsStr)]) -> TestResult<HostProcess> {
        let mut command = Command::new(std::env::current_exe().context("this test binary")?);
        command
            // Not `--test-threads=1`: then the harness prints the test's name, without a
            // line end, before the test runs, and the host's first line would follow it.
            .args(["--exact", test, "--include-ignored", "--nocapture"])
            .env(HELPER_VAR, "1")
            .stdout(Stdio::piped());
        for (key, value) in args {
            command.env(format!("SHEEPDOG_HELPER_{key}"), value);
        }
        let mut child = command.spawn().context("start the helper host")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Ok(HostProcess { child, lines })
    }

    /// Starts the test of `tier` as a helper host in that tier, with the state directory
    /// `state` (see [`helper_builder`]), its children tagged with `token` (`TOKEN`), and
    /// `more` arguments.
    pub fn in_tier(
        tier: &Tier,
        state: &Path,
        token: &str,
        more: &[(&str, &OsStr)],
    ) -> TestResult<HostProcess> {
        let mut args: Vec<(&str, &OsStr)> = vec![
            ("TIER", tier.name().as_ref()),
            ("STATE", state.as_os_str()),
            ("TOKEN", token.as_ref()),
        ];
        args.extend_from_slice(more);
        HostProcess::spawn(tier.test(), &args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 60 s: a helper host starts while other tests run) for the next line
    /// that starts with `prefix`; returns the rest of it.
    pub fn said(&self, prefix: &str) -> TestResult<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_string());
                    }
                }
                Err(_) => return Err(Failure(format!("the helper host did not say '{prefix}'"))),
            }
        }
    }

    /// Waits until the helper host says `ready`; returns the lines that start with
    /// `prefix` it said before.
    pub fn ready(&self, prefix: &str) -> TestResult<Vec<String>> {
        let mut said = Vec::new();
        loop {
            let line = self.said("")?;
            if line == "ready" {
                return Ok(said);
            }
            if let Some(rest) = line.strip_prefix(prefix) {
                said.push(rest.to_string());
            }
        }
    }

    /// Sends `signal` and reaps the host; returns the signal it died of.
    pub fn kill_with(&mut self, signal: rustix::process::Signal) -> TestResult<Option<i32>> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a child's pid");
        rustix::process::kill_process(pid, signal).context("signal the helper host")?;
        let status = self.child.wait().context("reap the helper host")?;
        Ok(std::os::unix::process::ExitStatusExt::signal(&status))
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) -> TestResult {
        self.kill_with(rustix::process::Signal::KILL).map(|_| ())
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
