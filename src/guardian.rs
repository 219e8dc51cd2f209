//! The guardian: a small process per supervisor that cleans up when the host dies without
//! shutting down (SIGKILL, a fatal signal with no handler, the OOM killer).
//!
//! It is the host's own executable run again (`/proc/self/exe`), taken over before `main`
//! by the constructor below (found through `sys::linux::hook`), in a session of its own and
//! without a parent-death signal, so it outlives the host. It holds a pidfd of the host and
//! the read end of a control pipe and waits in `poll`, costing no CPU; its memory does not
//! grow with the fleet (see BENCHMARKS.md). When the host's pidfd fires, or the pipe ends without the
//! "stand down" that [`Guardian::stand_down`] writes at shutdown, it:
//!
//! 1. takes the state directory's lock, if the lock still names the dead host (a new host
//!    that opened the directory meanwhile does its own cleanup, and the guardian does
//!    nothing); `open` waits for a guardian that holds the lock;
//! 2. under cgroup containment, kills the supervisor's whole cgroup subtree with one
//!    `cgroup.kill` and waits until it is empty;
//! 3. kills, in the other tiers, only what is provably of the host's runs, with the code
//!    `open` uses for a dead host's leftovers ([`crate::containment::reclaim`]), and records those runs as
//!    ended by the host's death;
//! 4. removes the supervisor's cgroups (v2, and the v1 `pids` and `memory` directories) and,
//!    for [`Supervisor::temporary`](crate::Supervisor::temporary), the state directory; then
//!    exits.
//!
//! The host watches its guardian's pidfd: a guardian that dies is replaced (a bounded number
//! of times), and `shutdown` stands it down and reaps it.

use crate::containment::Cgroups;
use crate::sys;
use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ENV_STATE: &str = "SHEEPDOG_GUARDIAN_STATE";
const ENV_KEY: &str = "SHEEPDOG_GUARDIAN_KEY";
const ENV_TEMPORARY: &str = "SHEEPDOG_GUARDIAN_TEMPORARY";
const ENV_HOST: &str = "SHEEPDOG_GUARDIAN_HOST";
/// The fds a guardian is handed: the host's pidfd and the control pipe's read end.
const HOST_FD: i32 = 3;
const CONTROL_FD: i32 = 4;
/// What `shutdown` says on the control pipe.
const STAND_DOWN: &[u8] = b"stand down\n";
/// How long a guardian waits for the state directory's lock.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);
/// How long a guardian waits for killed processes to be gone.
const KILL_PATIENCE: Duration = Duration::from_secs(5);
/// How long `open` waits for a guardian that is cleaning up the state directory: its lock
/// wait, its kill waits and some slack.
pub(crate) const CLEANUP_PATIENCE: Duration = Duration::from_secs(15);
/// How long `shutdown` waits for a guardian it stood down to exit before killing it.
const STAND_DOWN_PATIENCE: Duration = Duration::from_secs(1);
/// Guardians that may die within [`RESPAWN_WINDOW`] before the host stops replacing them.
const RESPAWNS_MAX: usize = 5;
const RESPAWN_WINDOW: Duration = Duration::from_secs(60);

/// Who holds a state directory's lock, as its lock file says:
/// `<pid> <start ticks> <boot id> <nonce>`, and ` guardian` when a guardian holds it to clean
/// up after its host. The nonce tells apart two opens by one process (a host that exec'd
/// keeps its pid and start time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) pid: u32,
    pub(crate) start_ticks: u64,
    pub(crate) boot_id: String,
    pub(crate) nonce: u64,
    pub(crate) guardian: bool,
}

impl Holder {
    /// This process.
    pub(crate) fn me(guardian: bool) -> Holder {
        let pid = std::process::id();
        let mut nonce = [0u8; 8];
        // Without randomness the nonce is 0: only an exec'd host reopening at once is then
        // mistaken for its former self.
        let _ = sys::random_bytes(&mut nonce);
        Holder {
            pid,
            start_ticks: sys::proc_stat(pid).map_or(0, |s| s.start_time),
            boot_id: sys::boot_id(),
            nonce: u64::from_ne_bytes(nonce),
            guardian,
        }
    }

    fn line(&self) -> String {
        let role = if self.guardian { " guardian" } else { "" };
        format!(
            "{} {} {} {:016x}{role}\n",
            self.pid, self.start_ticks, self.boot_id, self.nonce
        )
    }

    fn parse(text: &str) -> Option<Holder> {
        let mut f = text.split_whitespace();
        Some(Holder {
            pid: f.next()?.parse().ok()?,
            start_ticks: f.next()?.parse().ok()?,
            boot_id: f.next()?.to_string(),
            nonce: u64::from_str_radix(f.next()?, 16).ok()?,
            guardian: f.next() == Some("guardian"),
        })
    }

    /// Whether the process it names is still running (same pid, start time and boot).
    pub(crate) fn alive(&self) -> bool {
        self.boot_id == sys::boot_id()
            && sys::proc_stat(self.pid)
                .is_some_and(|s| s.start_time == self.start_ticks && s.state != b'Z')
    }

    /// Writes this holder into a lock file the caller has locked.
    pub(crate) fn record(&self, lock: &File) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        lock.set_len(0)?;
        lock.write_all_at(self.line().as_bytes(), 0)
    }

    /// The holder a lock file names.
    pub(crate) fn read(lock: &File) -> Option<Holder> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 256];
        let n = lock.read_at(&mut buf, 0).ok()?;
        Holder::parse(std::str::from_utf8(&buf[..n]).ok()?)
    }
}

/// What a guardian of one supervisor is told, made once at `open` (its environment).
pub(crate) struct Plan {
    env: Vec<CString>,
}

fn env_pair(key: &str, value: &OsStr) -> Option<CString> {
    let mut kv = key.as_bytes().to_vec();
    kv.push(b'=');
    kv.extend_from_slice(value.as_bytes());
    CString::new(kv).ok()
}

impl Plan {
    /// `host`: the holder the host recorded in the lock file.
    pub(crate) fn new(
        state_dir: &Path,
        run_key: &str,
        temporary: bool,
        cgroups: Option<&Cgroups>,
        host: &Holder,
    ) -> Plan {
        let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.into());
        let mut vars: Vec<(&str, OsString)> = vec![
            (GUARDIAN_VAR, "1".into()),
            (ENV_STATE, state_dir.into_os_string()),
            (ENV_KEY, run_key.into()),
            (ENV_TEMPORARY, if temporary { "1" } else { "0" }.into()),
            (ENV_HOST, host.line().trim_end().into()),
        ];
        if let Some(cg) = cgroups {
            vars.extend(cg.to_env());
        }
        Plan {
            env: vars.iter().filter_map(|(k, v)| env_pair(k, v)).collect(),
        }
    }
}

/// The host's side of a running guardian.
pub(crate) struct Guardian {
    pidfd: sys::PidFd,
    control: Option<File>,
    started: Instant,
}

/// Starts a guardian for `plan`, watching the host behind `host`.
fn spawn(plan: &Plan, host: &OwnedFd) -> io::Result<Guardian> {
    constructor_is_linked().map_err(|why| io::Error::new(io::ErrorKind::Unsupported, why))?;
    let (read, write) = sys::pipe()?;
    let argv0 = c"sheepdog-guardian";
    let env: Vec<&std::ffi::CStr> = plan.env.iter().map(CString::as_c_str).collect();
    let keep = [host.as_fd(), read.as_fd()];
    let request = sys::SpawnRequest {
        setup: &sys::ChildSetup::NONE,
        program: Path::new("/proc/self/exe"),
        argv: &[argv0],
        env: &env,
        cwd: Some(Path::new("/")),
        stdout: sys::devnull()?,
        stderr: sys::stderr_or_devnull()?,
        cgroup: None,
        join: Vec::new(),
        kind: sys::ChildKind::Detached,
        keep: &keep,
    };
    let pidfd = sys::spawn(&request)?;
    Ok(Guardian {
        pidfd,
        control: Some(File::from(write)),
        started: Instant::now(),
    })
}

impl Guardian {
    /// Tells it the host is shutting down in order, then reaps it (waiting up to
    /// [`STAND_DOWN_PATIENCE`], then killing it).
    fn stand_down(mut self) {
        if let Some(mut control) = self.control.take() {
            let _ = control.write_all(STAND_DOWN);
        }
        let exited = sys::poll_readable(&[self.pidfd.as_fd()], Some(STAND_DOWN_PATIENCE))
            .is_ok_and(|r| r[0]);
        if !exited {
            log::warn!(
                "guardian {} did not stand down in time; killing it",
                self.pidfd.pid()
            );
            let _ = self.pidfd.signal(crate::signal::Signal::Kill);
            let _ = sys::poll_readable(&[self.pidfd.as_fd()], Some(STAND_DOWN_PATIENCE));
        }
        let _ = self.pidfd.reap();
    }
}

/// The supervision thread's side: the running guardian, and what it takes to start another.
pub(crate) struct Watch {
    plan: Plan,
    /// A pidfd of the host, handed to each guardian (none: no guardian can run).
    host: Option<OwnedFd>,
    current: Option<Guardian>,
    deaths: VecDeque<Instant>,
    guarded: Arc<AtomicBool>,
}

impl Watch {
    /// Starts the first guardian. Without one (the crate is in a shared library, the spawn
    /// failed), the host runs unguarded: said once in the log, and by `guarded`.
    pub(crate) fn start(plan: Plan, guarded: Arc<AtomicBool>) -> Watch {
        let host = sys::own_pidfd();
        let current = host
            .as_ref()
            .map_err(clone_error)
            .and_then(|h| spawn(&plan, h));
        let current = current.inspect_err(log_unguarded_once).ok();
        guarded.store(current.is_some(), Ordering::Relaxed);
        Watch {
            plan,
            host: host.ok(),
            current,
            deaths: VecDeque::new(),
            guarded,
        }
    }

    /// The running guardian's pidfd, readable when it exits.
    pub(crate) fn pidfd(&self) -> Option<&sys::PidFd> {
        self.current.as_ref().map(|g| &g.pidfd)
    }

    /// The guardian exited while the host lives: reaps it, says so, and starts another,
    /// unless [`RESPAWNS_MAX`] died within [`RESPAWN_WINDOW`]. The caller stops watching
    /// the old pidfd before, and watches [`pidfd`](Watch::pidfd) after.
    pub(crate) fn on_exit(&mut self) {
        let Some(old) = self.current.take() else {
            return;
        };
        let how = match old.pidfd.reap().map(|r| r.map(|r| r.exit)) {
            Ok(Some(sys::RawExit::Code(c))) => format!("exited with code {c}"),
            Ok(Some(sys::RawExit::Signal(s))) => format!("was killed by signal {s}"),
            Ok(Some(sys::RawExit::Unknown)) => "ended".to_string(),
            Ok(None) => {
                // Spurious readiness: it still runs.
                self.current = Some(old);
                return;
            }
            Err(e) => format!("ended ({e})"),
        };
        let now = Instant::now();
        self.deaths.push_back(now);
        while self
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESPAWN_WINDOW)
        {
            self.deaths.pop_front();
        }
        let lived = now.duration_since(old.started);
        if self.deaths.len() > RESPAWNS_MAX {
            log::error!(
                "the guardian (pid {}) {how} after {lived:?}; {} guardians died within {RESPAWN_WINDOW:?}, so no new one is started: processes may outlive this host if it dies",
                old.pidfd.pid(),
                self.deaths.len()
            );
            self.guarded.store(false, Ordering::Relaxed);
            return;
        }
        let spawned = match &self.host {
            Some(host) => spawn(&self.plan, host),
            None => Err(io::Error::from(io::ErrorKind::Unsupported)),
        };
        match spawned {
            Ok(g) => {
                log::warn!(
                    "the guardian (pid {}) {how} after {lived:?}; started a new one (pid {})",
                    old.pidfd.pid(),
                    g.pidfd.pid()
                );
                self.current = Some(g);
            }
            Err(e) => {
                log::error!(
                    "the guardian (pid {}) {how}, and a new one cannot be started: {e}",
                    old.pidfd.pid()
                );
                self.guarded.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Stands the guardian down (the host is shutting down in order) and reaps it.
    pub(crate) fn stand_down(&mut self) {
        if let Some(g) = self.current.take() {
            g.stand_down();
        }
        self.guarded.store(false, Ordering::Relaxed);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stand_down();
    }
}

fn clone_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

fn log_unguarded_once(e: &io::Error) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        log::warn!(
            "no guardian process ({e}): if the host dies without shutting down, its services' descendants are ended only by the next open of the state directory"
        );
    }
}

/// Set (to `1`) in a guardian's environment, and nowhere else.
const GUARDIAN_VAR: &str = "SHEEPDOG_GUARDIAN";

/// Runs before `main` in every process of an executable that links this crate: returns at
/// once unless the process is a guardian, which it then runs to its end (the host's `main`
/// never runs in a guardian). Called as `f(argc, argv, envp)` by glibc and as `f()` by musl;
/// it takes no arguments, which is sound under the C calling convention either way.
extern "C" fn constructor() {
    if std::env::var_os(GUARDIAN_VAR).is_some() {
        main();
    }
}

/// The constructor's entry in the executable's `.init_array`, the way runc re-executes itself
/// for `nsexec`. `#[used]` keeps it in the object file; the linker keeps every `.init_array`
/// input. The object is linked whenever a guardian can be spawned, because
/// [`constructor_is_linked`] refers to this static.
#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = constructor;

/// Whether the constructor is in the main executable's `.init_array` (as the pointer its
/// entry holds), so that running that file again with [`GUARDIAN_VAR`] set runs the
/// guardian and not the host's `main`; if not, why.
fn constructor_is_linked() -> Result<(), String> {
    sys::constructor_in_main_executable(
        constructor as *const () as usize,
        CONSTRUCTOR as *const () as usize,
    )
}

/// A guardian's life, run by the constructor before the host's `main` would run. Never
/// returns.
fn main() -> ! {
    sys::set_process_name(c"sheepdog-guard");
    sys::ignore_sigpipe();
    let code = match std::panic::catch_unwind(guard) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("sheepdog guardian {}: {e}", std::process::id());
            1
        }
        Err(_) => 101,
    };
    sys::exit_now(code)
}

/// What a guardian was told (see [`Plan`]).
struct Orders {
    state_dir: PathBuf,
    run_key: String,
    temporary: bool,
    host: Holder,
}

impl Orders {
    fn from_env() -> Result<Orders, String> {
        let var = |k: &str| std::env::var_os(k).ok_or_else(|| format!("{k} is not set"));
        Ok(Orders {
            state_dir: PathBuf::from(var(ENV_STATE)?),
            run_key: var(ENV_KEY)?.to_string_lossy().into_owned(),
            temporary: var(ENV_TEMPORARY)? == "1",
            host: Holder::parse(&var(ENV_HOST)?.to_string_lossy())
                .ok_or_else(|| format!("{ENV_HOST} is malformed"))?,
        })
    }
}

fn guard() -> Result<(), String> {
    let orders = Orders::from_env()?;
    let host = sys::inherited_fd(HOST_FD).ok_or("no pidfd of the host on fd 3")?;
    let mut control = File::from(sys::inherited_fd(CONTROL_FD).ok_or("no control pipe on fd 4")?);
    let mut said = Vec::new();
    loop {
        let ready = sys::poll_readable(&[host.as_fd(), control.as_fd()], None)
            .map_err(|e| format!("cannot wait for the host: {e}"))?;
        if ready[1] {
            let mut buf = [0u8; 64];
            let n = control.read(&mut buf).unwrap_or(0);
            said.extend_from_slice(&buf[..n]);
            if said.ends_with(STAND_DOWN) {
                return Ok(()); // an orderly shutdown
            }
            if n == 0 {
                break; // the host is gone, or exec'd: nothing of it supervises any more
            }
        }
        if ready[0] {
            break; // the host exited
        }
    }
    clean_up(&orders)
}

/// Cleans up after the dead host (see the module docs).
fn clean_up(orders: &Orders) -> Result<(), String> {
    let _lock = match take_lock(orders)? {
        Some(lock) => lock,
        None => return Ok(()),
    };
    let cgroups =
        Cgroups::from_env().map_err(|e| format!("cannot open the supervisor's cgroup: {e}"))?;
    if let Some(cg) = &cgroups {
        if let Err(e) = cg.kill_all() {
            eprintln!("sheepdog guardian: cannot kill the supervisor's cgroup: {e}");
        }
        if !cg.wait_empty(KILL_PATIENCE) {
            eprintln!("sheepdog guardian: processes survived cgroup.kill");
        }
    }
    let db = orders.state_dir.join("sheepdog.db");
    if db.is_file() {
        match crate::store::Store::open(&db) {
            Ok(mut store) => {
                if let Err(e) = crate::containment::reclaim::reclaim(
                    &mut store,
                    cgroups.as_ref(),
                    &orders.run_key,
                    KILL_PATIENCE,
                ) {
                    eprintln!("sheepdog guardian: {e}");
                }
                store.flush();
            }
            Err(e) => eprintln!("sheepdog guardian: {e}"),
        }
    }
    if let Some(cg) = cgroups {
        // The v1 directories may stay busy for a moment after their last process died.
        let deadline = Instant::now() + Duration::from_secs(1);
        cg.remove_service(None);
        while !cg.removed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            cg.remove_service(None);
        }
    }
    if orders.temporary
        && let Err(e) = std::fs::remove_dir_all(&orders.state_dir)
    {
        eprintln!(
            "sheepdog guardian: cannot remove '{}': {e}",
            orders.state_dir.display()
        );
    }
    Ok(())
}

/// Takes the state directory's lock if it still names the dead host, and records this
/// guardian in it. `Ok(None)`: another process has taken over the directory; nothing to do.
fn take_lock(orders: &Orders) -> Result<Option<Option<File>>, String> {
    let path = orders.state_dir.join("lock");
    let lock = match File::options().read(true).write(true).open(&path) {
        Ok(f) => f,
        // Nobody can be using a directory without its lock: clean up without it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(None)),
        Err(e) => return Err(format!("cannot open '{}': {e}", path.display())),
    };
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                // A new host writes its name as soon as it has the lock. Still the dead
                // host's after all this time: the lock is held through a copy of the dead
                // host's own lock file (a child it forked without exec), and nobody else can
                // take the directory meanwhile.
                if Holder::read(&lock).as_ref() == Some(&orders.host) {
                    return Ok(Some(None));
                }
                return Err(format!(
                    "'{}' is locked by another process; leaving the cleanup to it",
                    path.display()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock '{}': {e}", path.display()));
            }
        }
    }
    let holder = Holder::read(&lock);
    if holder.as_ref().is_some_and(|h| *h != orders.host) {
        return Ok(None);
    }
    Holder::me(true)
        .record(&lock)
        .map_err(|e| format!("cannot write '{}': {e}", path.display()))?;
    Ok(Some(Some(lock)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constructor_is_found_in_this_test_executable() {
        assert_eq!(constructor_is_linked(), Ok(()));
    }

    #[test]
    fn a_holder_reads_back_as_written_and_two_opens_differ() {
        let dir = tempfile::tempdir().unwrap();
        let lock = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.path().join("lock"))
            .unwrap();
        let host = Holder::me(false);
        host.record(&lock).unwrap();
        assert_eq!(Holder::read(&lock), Some(host.clone()));
        assert!(host.alive());
        let guardian = Holder::me(true);
        guardian.record(&lock).unwrap();
        let read = Holder::read(&lock).unwrap();
        assert!(read.guardian);
        assert_ne!(read, host, "the same process, another open");
        assert_eq!(Holder::parse("12 34"), None);
    }
}
