//! [`Supervisor`]: the public handle. Every method takes `&self` and is safe from any thread;
//! changes are sent to the supervision thread, reads come from the snapshot it publishes.

use crate::containment::{Cgroups, Containment, Tier};
use crate::engine::io::ProbePool;
use crate::engine::{Config, Engine, Inbox, Request};
use crate::error::{Error, ErrorKind, Result};
use crate::events::Events;
use crate::fleet::{Applied, Convergence, Fleet, Prune};
use crate::guardian::{Holder, Plan, Watch};
use crate::history::{Explanation, Run};
use crate::http::Endpoints;
use crate::info::{ServiceInfo, Status};
use crate::logs::reader::{LogCursor, LogFollower};
use crate::logs::{LogDir, Pump};
use crate::orphans::Orphans;
use crate::snapshot::{Shared, Table};
use crate::spec::ServiceSpec;
use crate::state_dir::StateDir;
use crate::stats::Stats;
use crate::store::Store;
use crate::sys::{self, Poller, Waker};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One of a service's two output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output: `logs/<name>.out.log`.
    Stdout,
    /// Standard error: `logs/<name>.err.log`.
    Stderr,
}

/// Runs services (long-running child processes) and keeps them alive.
///
/// A `Supervisor` owns a state directory (`sheepdog.db`, the registry in SQLite, and `logs/`)
/// and one supervision thread that spawns, watches, restarts and stops every service. It is
/// `Send + Sync`; share it by reference or in an `Arc`.
///
/// Call [`shutdown`](Supervisor::shutdown) to stop every service and join the thread; `Drop`
/// does the same as a safety net, logging any failure.
///
/// # Example
///
/// ```
/// use sheepdog::{RestartPolicy, ServiceSpec, Status, Supervisor};
/// use std::time::Duration;
/// # fn main() -> sheepdog::Result<()> {
/// let sup = Supervisor::temporary()?;
/// sup.start(ServiceSpec::new("ticker", "sh").args(["-c", "while :; do echo tick; sleep 1; done"]))?;
/// sup.wait_for("ticker", Status::Online, Duration::from_secs(5))?;
/// assert_eq!(sup.list()?.len(), 1);
/// assert_eq!(sup.stop("ticker")?, 1);
/// assert_eq!(sup.describe("ticker")?.status(), Status::Stopped);
/// sup.shutdown()?;
/// # Ok(()) }
/// ```
pub struct Supervisor {
    requests: Sender<Request>,
    waker: Waker,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    state_dir: PathBuf,
    logs: LogDir,
    cpu: Mutex<crate::stats::CpuHistory>,
    containment: Containment,
    orphans: Orphans,
    http: Mutex<Option<crate::http::Listener>>,
    endpoints_address: Option<std::net::SocketAddr>,
    /// Whether the kernel enforces `max_pids` and `max_memory` (cgroup controllers).
    kernel_limits: (bool, bool),
    /// The supervisor's cgroup, under cgroup containment: `stats` reads its runs' members.
    cgroup_root: Option<PathBuf>,
    /// A guardian runs (kept up to date by the supervision thread).
    guarded: Arc<std::sync::atomic::AtomicBool>,
    /// The control socket's thread, stopped first at shutdown.
    control: Mutex<Option<crate::control::Control>>,
    control_socket: Option<PathBuf>,
    // Removed after the thread is joined (the thread holds the state directory's lock).
    _temp: Option<tempfile::TempDir>,
}

/// Options for opening a [`Supervisor`].
///
/// # Example
///
/// ```
/// use sheepdog::Supervisor;
/// # fn main() -> sheepdog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let sup = Supervisor::builder().state_dir(dir.path()).resurrect(false).open()?;
/// assert_eq!(sup.state_dir(), dir.path());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Builder {
    state_dir: Option<PathBuf>,
    resurrect: Option<bool>,
    containment: Option<Containment>,
    memory_sample: Option<Duration>,
    runs_kept: Option<usize>,
    subreaper: bool,
    guardian: Option<bool>,
    group_readable_logs: bool,
    control_socket: Option<bool>,
    orphans: Option<Orphans>,
    endpoints: Option<Endpoints>,
}

impl Builder {
    /// The state directory; created if missing. Without one, [`open`](Builder::open) uses a
    /// fresh temporary directory that is removed when the supervisor is dropped.
    pub fn state_dir(mut self, dir: impl AsRef<Path>) -> Builder {
        self.state_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Whether `open` starts every service whose desired state is up (started and not since
    /// stopped). By default, this is enabled.
    pub fn resurrect(mut self, yes: bool) -> Builder {
        self.resurrect = Some(yes);
        self
    }

    /// How services' processes are contained. By default, [`Containment::Auto`]: a cgroup
    /// per service where a writable cgroup v2 hierarchy exists (root, or a delegated subtree),
    /// else the process group.
    pub fn containment(mut self, containment: Containment) -> Builder {
        self.containment = Some(containment);
        self
    }

    /// How often services with a [`max_memory`](crate::ServiceSpec::max_memory) limit are
    /// measured. By default, 1 s. No sampling happens while no running service has a limit.
    pub fn memory_sample_interval(mut self, every: Duration) -> Builder {
        self.memory_sample = Some(every.max(Duration::from_millis(10)));
        self
    }

    /// Lets [`Containment::Auto`] fall back to [`Containment::Subreaper`] (instead of the bare
    /// process group) where no cgroup can be made. Off by default, because it makes the host
    /// a child subreaper for good: see [`Containment::Subreaper`].
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Containment, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::builder().subreaper(true).open()?;
    /// assert_ne!(sup.containment(), Containment::ProcessGroup);
    /// # Ok(()) }
    /// ```
    pub fn subreaper(mut self, yes: bool) -> Builder {
        self.subreaper = yes;
        self
    }

    /// Whether to start a guardian: a small process that outlives the host and, if the host
    /// dies without [`shutdown`](Supervisor::shutdown) (SIGKILL, a fatal signal, the OOM
    /// killer), ends every service's processes within about a second, removes the
    /// supervisor's cgroups and, for a [`temporary`](Supervisor::temporary) supervisor, its
    /// state directory. Without it, what a dead host left is ended only by the next `open` of
    /// the same state directory. By default, this is enabled; see
    /// [`Supervisor::guarded`].
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::Supervisor;
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::builder().guardian(false).open()?;
    /// assert!(!sup.guarded());
    /// # Ok(()) }
    /// ```
    pub fn guardian(mut self, yes: bool) -> Builder {
        self.guardian = Some(yes);
        self
    }

    /// Lets the group of the state directory read the services' logs, for a log shipper
    /// that runs under that group: `logs/` becomes 0750 and each log file 0640, and the
    /// state directory 0710 (its group may pass through it to `logs/`, not list it or read
    /// the registry, which stays 0600). By default, this is disabled: the state directory is
    /// 0700 and every file in it 0600, whatever the umask, since a service's output (and
    /// the registry, which holds every service's environment) may carry secrets.
    ///
    /// # Example
    ///
    /// ```
    /// use std::os::unix::fs::PermissionsExt;
    /// # fn main() -> sheepdog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let sup = sheepdog::Supervisor::builder()
    ///     .state_dir(dir.path().join("state"))
    ///     .group_readable_logs(true)
    ///     .open()?;
    /// let logs = std::fs::metadata(dir.path().join("state/logs")).unwrap();
    /// assert_eq!(logs.permissions().mode() & 0o777, 0o750);
    /// # Ok(()) }
    /// ```
    pub fn group_readable_logs(mut self, yes: bool) -> Builder {
        self.group_readable_logs = yes;
        self
    }

    /// Whether to serve the control socket: `control.sock` in the state directory (0600,
    /// served only to this user and root), on one more thread for all its clients, through
    /// which the `sheepdog` command and scripts (see [`crate::control::protocol`]) list,
    /// inspect, start, stop and follow the services; the host also registers itself where
    /// `sheepdog hosts` finds it ([`crate::control::hosts`]). By default, this is enabled.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::Supervisor;
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::builder().control_socket(false).open()?;
    /// assert!(sup.control_socket().is_none());
    /// assert!(!sup.state_dir().join("control.sock").exists());
    /// # Ok(()) }
    /// ```
    pub fn control_socket(mut self, yes: bool) -> Builder {
        self.control_socket = Some(yes);
        self
    }

    /// How many ended runs of each service [`history`](Supervisor::history) keeps; older ones
    /// are pruned as new ones start (a bounded delete per start, never a sweep). 0 keeps
    /// only the runs in progress, which `open` needs to find what a dead host left. By
    /// default, 100.
    pub fn runs_kept(mut self, n: usize) -> Builder {
        self.runs_kept = Some(n);
        self
    }

    /// Which exited children, besides the processes it spawned, the supervisor reaps: what
    /// an init does for the orphans re-parented to it. By default, [`Orphans::Reap`] when
    /// the host is PID 1 of its pid namespace (a container's entrypoint), else
    /// [`Orphans::Keep`]. See [`Orphans`] for how the host's own children keep their exit
    /// statuses.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Orphans, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::builder().orphans(Orphans::Keep).open()?;
    /// assert_eq!(sup.orphans(), Orphans::Keep);
    /// # Ok(()) }
    /// ```
    pub fn orphans(mut self, orphans: Orphans) -> Builder {
        self.orphans = Some(orphans);
        self
    }

    /// Serves `/livez`, `/readyz` and `/metrics` over HTTP for an orchestrator (see
    /// [`Endpoints`]), on one more thread that never blocks supervision. Off by default.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Endpoints, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::builder()
    ///     .endpoints(Endpoints::new("127.0.0.1:0").readiness(["web"]))
    ///     .open()?;
    /// assert!(sup.endpoints_address().is_some());
    /// # Ok(()) }
    /// ```
    pub fn endpoints(mut self, endpoints: Endpoints) -> Builder {
        self.endpoints = Some(endpoints);
        self
    }

    /// Opens the supervisor: checks the state directory and makes it private, locks it,
    /// opens the registry, kills what a dead previous host left running, and starts the
    /// supervision thread.
    ///
    /// # Errors
    ///
    /// `StateDirLocked` if another supervisor holds the directory; `Store` if the directory
    /// or its `logs/` belongs to another user or may be written by others, if it is reached
    /// through another user's symbolic link, or if its state file is empty, corrupt, foreign
    /// or from a newer version (the file is left untouched); `Io` if the directory cannot be
    /// created.
    pub fn open(self) -> Result<Supervisor> {
        match self.state_dir.clone() {
            Some(dir) => Supervisor::open_at(dir, None, self),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("sheepdog-")
                    .tempdir()
                    .map_err(|e| {
                        Error::new(ErrorKind::Io, "cannot create a temporary state directory")
                            .with_source(e)
                    })?;
                Supervisor::open_at(temp.path().to_path_buf(), Some(temp), self)
            }
        }
    }
}

impl Supervisor {
    /// Opens (or creates) the supervisor whose state lives in `state_dir`, and resurrects its
    /// services.
    ///
    /// # Errors
    ///
    /// As [`Builder::open`].
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{ErrorKind, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let sup = Supervisor::open(dir.path())?;
    /// assert!(dir.path().join("sheepdog.db").exists());
    /// // One supervisor per state directory.
    /// assert_eq!(Supervisor::open(dir.path()).err().unwrap().kind(), ErrorKind::StateDirLocked);
    /// # Ok(()) }
    /// ```
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Supervisor> {
        Supervisor::builder().state_dir(state_dir).open()
    }

    /// A supervisor whose state lives in a fresh temporary directory, removed when it is
    /// dropped: the default for embedding when nothing needs to survive the host.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = sheepdog::Supervisor::temporary()?;
    /// let dir = sup.state_dir().to_path_buf();
    /// drop(sup);
    /// assert!(!dir.exists());
    /// # Ok(()) }
    /// ```
    pub fn temporary() -> Result<Supervisor> {
        Supervisor::builder().open()
    }

    /// Options for opening a supervisor.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn open_at(
        state_dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        options: Builder,
    ) -> Result<Supervisor> {
        let resurrect = options.resurrect.unwrap_or(true);
        let containment = options.containment.unwrap_or(Containment::Auto);
        let memory_sample = options.memory_sample.unwrap_or(Duration::from_secs(1));
        let io_error =
            |what: String, e: std::io::Error| Error::new(ErrorKind::Io, what).with_source(e);
        let state = StateDir::open(&state_dir, options.group_readable_logs)?;
        let control_dir = if options.control_socket.unwrap_or(true) {
            state
                .try_clone_dir()
                .inspect_err(|e| log::warn!("no control socket: {e}"))
                .ok()
        } else {
            None
        };
        lock_state_dir(state.lock_file(), &state_dir)?;
        // Who holds the lock: a guardian cleaning up after a dead host checks it is still
        // its host's, and the next `open` waits for such a guardian.
        let holder = Holder::me(false);
        holder.record(state.lock_file()).map_err(|e| {
            io_error(
                format!("cannot write lock file '{}'", state.lock_path().display()),
                e,
            )
        })?;
        let fd_limit = sys::raise_fd_limit();
        let cgroups = match containment {
            Containment::ProcessGroup | Containment::Subreaper => None,
            Containment::Auto => Cgroups::detect(&state_dir)
                .inspect_err(|e| log::info!("no cgroup containment ({e}); using process groups"))
                .ok(),
            Containment::Cgroup => Some(Cgroups::detect(&state_dir).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    "cannot make a cgroup for the services (cgroup containment was asked for)",
                )
                .with_source(e)
            })?),
        };
        if let Some(cg) = &cgroups {
            log::info!("containment: {}", cg.describe());
        }
        let kernel_limits = cgroups
            .as_ref()
            .map_or((false, false), |cg| (cg.limits_pids(), cg.limits_memory()));
        let cgroup_root = cgroups.as_ref().map(|cg| cg.root().to_path_buf());
        let wants_subreaper = containment == Containment::Subreaper
            || (containment == Containment::Auto && options.subreaper);
        let containment = if cgroups.is_some() {
            Containment::Cgroup
        } else if wants_subreaper {
            sys::become_subreaper().map_err(|e| {
                Error::new(ErrorKind::Io, "cannot make the host a child subreaper").with_source(e)
            })?;
            Containment::Subreaper
        } else {
            Containment::ProcessGroup
        };
        let orphans = options.orphans.unwrap_or(if sys::is_pid_one() {
            Orphans::Reap
        } else {
            Orphans::Keep
        });
        let reaper = match orphans {
            Orphans::Keep => None,
            Orphans::Reap => Some(sys::own_process_group()),
            Orphans::ReapAll => None,
        };
        let reaper = (orphans != Orphans::Keep)
            .then(|| sys::OrphanReaper::new(reaper))
            .transpose()
            .map_err(|e| io_error("cannot make the host a reaper of orphans".into(), e))?;
        let session =
            crate::containment::marker::Session::begin(containment == Containment::Cgroup)
                .map_err(|e| io_error("cannot make a session key".into(), e))?;
        let mut store = Store::open(&state.db_path())?;
        store.set_runs_kept(options.runs_kept.unwrap_or(crate::store::RUNS_KEPT));
        let lock = state.lock_file().try_clone().map_err(|e| {
            io_error(
                format!("cannot open lock file '{}'", state.lock_path().display()),
                e,
            )
        })?;
        store.anchor("lock file", state.lock_path(), lock);
        let logs = state.logs().clone();
        let run_key = crate::containment::state_key(&state_dir);
        let guarded = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guardian = options.guardian.unwrap_or(true).then(|| {
            let plan = Plan::new(
                &state_dir,
                &run_key,
                temp.is_some(),
                cgroups.as_ref(),
                &holder,
            );
            Watch::start(plan, guarded.clone())
        });
        let shared = Arc::new(Shared::default());
        let (requests, receiver) = crossbeam_channel::unbounded();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let setup = Setup {
            state,
            store,
            logs: logs.clone(),
            cgroups,
            subreaper: containment == Containment::Subreaper,
            resurrect,
            fd_limit,
            memory_sample,
            run_key,
            session,
            guardian,
            reaper,
        };
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sheepdog".into())
            .spawn(move || supervise(setup, receiver, thread_shared, ready_tx))
            .map_err(|e| io_error("cannot start the supervision thread".into(), e))?;
        let ready: Result<Waker> = ready_rx.recv().unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Io,
                "the supervision thread failed to start",
            ))
        });
        let waker = match ready {
            Ok(waker) => waker,
            Err(e) => {
                let _ = thread.join();
                return Err(e);
            }
        };
        let control = control_dir.and_then(|dir| {
            let context = crate::control::Context {
                state_dir: sys::fd_path(&dir).unwrap_or_else(|_| state_dir.clone()),
                dir,
                requests: requests.clone(),
                engine: waker.try_clone().ok()?,
                shared: shared.clone(),
                logs: logs.clone(),
                cgroup_root: cgroup_root.clone(),
            };
            crate::control::Control::start(context)
                .inspect_err(|e| log::warn!("no control socket in '{}': {e}", state_dir.display()))
                .ok()
        });
        let control_socket = control.as_ref().map(|c| c.socket().to_path_buf());
        let http = match &options.endpoints {
            None => None,
            Some(endpoints) => {
                let context = crate::http::Context {
                    requests: requests.clone(),
                    engine: waker
                        .try_clone()
                        .map_err(|e| io_error("cannot set up the HTTP endpoints".into(), e))?,
                    shared: shared.clone(),
                    cgroup_root: cgroup_root.clone(),
                    logs: logs.clone(),
                };
                match crate::http::Listener::start(endpoints, context) {
                    Ok(listener) => Some(listener),
                    Err(e) => {
                        // Nothing is left running: the services this open resurrected stop.
                        let _ = requests.send(Request::Shutdown {
                            reply: crossbeam_channel::bounded(1).0,
                            by: None,
                        });
                        waker.wake();
                        let _ = thread.join();
                        return Err(e);
                    }
                }
            }
        };
        let endpoints_address = http.as_ref().map(|h| h.address());
        Ok(Supervisor {
            control: Mutex::new(control),
            control_socket,
            http: Mutex::new(http),
            endpoints_address,
            requests,
            waker,
            shared,
            thread: Mutex::new(Some(thread)),
            cpu: Mutex::default(),
            containment,
            orphans,
            kernel_limits,
            cgroup_root,
            guarded,
            state_dir,
            logs,
            _temp: temp,
        })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The control socket this supervisor serves (see [`Builder::control_socket`]); `None`
    /// if it was turned off or could not be made (the log says why), and after
    /// [`shutdown`](Supervisor::shutdown).
    pub fn control_socket(&self) -> Option<&Path> {
        self.control
            .lock()
            .is_some()
            .then_some(self.control_socket.as_deref())
            .flatten()
    }

    /// The address the HTTP endpoints listen on, if asked for (see [`Builder::endpoints`]).
    pub fn endpoints_address(&self) -> Option<std::net::SocketAddr> {
        self.endpoints_address
    }

    /// Which exited children besides its own the supervisor reaps (see
    /// [`Builder::orphans`]).
    pub fn orphans(&self) -> Orphans {
        self.orphans
    }

    /// How many orphans the supervisor has reaped (see [`Orphans`]).
    pub fn orphans_reaped(&self) -> u64 {
        self.shared
            .orphans_reaped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The containment in force: [`Containment::Cgroup`], [`Containment::Subreaper`] or
    /// [`Containment::ProcessGroup`].
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Containment, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::builder().containment(Containment::ProcessGroup).open()?;
    /// assert_eq!(sup.containment(), Containment::ProcessGroup);
    /// # Ok(()) }
    /// ```
    pub fn containment(&self) -> Containment {
        self.containment
    }

    /// Whether [`ServiceSpec::max_pids`](crate::ServiceSpec::max_pids) can be enforced: cgroup
    /// containment with a `pids` controller (in cgroup v2, or in a v1 hierarchy beside it).
    /// Without it, a service that sets `max_pids` is refused.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Containment, ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::builder().containment(Containment::ProcessGroup).open()?;
    /// assert!(!sup.enforces_max_pids());
    /// let err = sup.start(ServiceSpec::new("bomb", "true").max_pids(64)).unwrap_err();
    /// assert_eq!(err.kind(), sheepdog::ErrorKind::InvalidSpec);
    /// # Ok(()) }
    /// ```
    pub fn enforces_max_pids(&self) -> bool {
        self.kernel_limits.0
    }

    /// Whether the kernel enforces [`ServiceSpec::max_memory`](crate::ServiceSpec::max_memory)
    /// (cgroup containment with a `memory` controller), so that a run reaching it is
    /// OOM-killed and recorded as such. Without it the supervisor's own sampling enforces it.
    pub fn enforces_max_memory(&self) -> bool {
        self.kernel_limits.1
    }

    /// Whether a guardian process stands by: if the host dies without
    /// [`shutdown`](Supervisor::shutdown), it ends every service's processes (see
    /// [`Builder::guardian`] and the README for what each containment tier guarantees).
    /// False when it was turned off, cannot run here (the crate is linked into a shared
    /// library, where the host's executable cannot be re-run as a guardian), or died too
    /// often to be replaced; false after `shutdown` too.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = sheepdog::Supervisor::temporary()?;
    /// assert!(sup.guarded());
    /// sup.shutdown()?;
    /// assert!(!sup.guarded());
    /// # Ok(()) }
    /// ```
    pub fn guarded(&self) -> bool {
        self.guarded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What `open` found still running from a previous host that died, and killed before
    /// starting anything: (service, pids).
    pub fn reclaimed(&self) -> Vec<(String, Vec<u32>)> {
        self.shared.reclaimed.lock().clone()
    }

    fn call<T>(&self, make: impl FnOnce(Sender<Result<T>>) -> Request) -> Result<T> {
        let (tx, rx): (Sender<Result<T>>, Receiver<Result<T>>) = crossbeam_channel::bounded(1);
        self.requests
            .send(make(tx))
            .map_err(|_| Error::shut_down())?;
        self.waker.wake();
        rx.recv().unwrap_or_else(|_| Err(Error::shut_down()))
    }

    /// Creates or updates a service and makes sure it runs.
    ///
    /// A new service is saved and spawned. One that runs with an equal spec is left alone. One
    /// that runs with a different spec is stopped gracefully and started with the new one. One
    /// that is stopped, exited, errored or in backoff is started at once. Returns when the new
    /// process is spawned (or nothing needed doing, or the service waits for its
    /// dependencies: then it is `Starting`).
    ///
    /// A spec with [`instances`](ServiceSpec::instances) defines a service per instance, all
    /// started; the info returned is the first instance's. Changing the number of instances
    /// adds or removes instances as [`scale`](Supervisor::scale) does (without waiting for
    /// the removed ones); changing anything else of a spec with two or more instances rolls
    /// them into it one at a time, as [`reload`](Supervisor::reload) does, and returns once
    /// the last is ready (`NotReady` if one is not: the rest keep the old spec).
    ///
    /// If a `stop` or `shutdown` overtakes the start while it waits for the old run to end, it
    /// returns the service as that left it (`Stopped`).
    ///
    /// Bounded: at once for a new service; for a running one with a different spec, like
    /// [`stop`](Supervisor::stop) of that service, plus the spawn.
    ///
    /// # Errors
    ///
    /// `InvalidSpec` if the spec breaks a rule (nothing is saved); `Store` if it cannot be
    /// saved (nothing changes); `Spawn` if the process could not be started (the service is
    /// saved, and left `Errored`); `NotFound` if a `delete` overtook it; `ShutDown`.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{ErrorKind, ServiceSpec, Status, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// let info = sup.start(ServiceSpec::new("nap", "sleep").arg("30"))?;
    /// assert_eq!(info.status(), Status::Online);
    /// let err = sup.start(ServiceSpec::new("ghost", "/no/such/program")).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Spawn);
    /// assert_eq!(sup.describe("ghost")?.status(), Status::Errored);
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn start(&self, spec: ServiceSpec) -> Result<ServiceInfo> {
        self.call(|reply| Request::Start {
            spec: Box::new(spec),
            reply,
        })
    }

    /// Starts several services as [`start`](Supervisor::start) does, with their definitions
    /// stored in one transaction (one disk sync for all), dependencies before dependents when
    /// they are listed in that order. Returns one result per spec, in order. A spec that
    /// breaks a rule gets its error and the others go on; if the definitions cannot be
    /// stored, every spec gets the `Store` error and nothing changes, in memory or on disk. A
    /// name listed twice is started once, with its last spec.
    ///
    /// # Errors
    ///
    /// `ShutDown`; each spec's own error is in its result.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// let specs = (0..3).map(|i| ServiceSpec::new(format!("nap{i}"), "sleep").arg("60"));
    /// let started = sup.start_many(specs)?;
    /// assert!(started.iter().all(|r| r.is_ok()));
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn start_many(
        &self,
        specs: impl IntoIterator<Item = ServiceSpec>,
    ) -> Result<Vec<Result<ServiceInfo>>> {
        let mut items = Vec::new();
        let mut replies = Vec::new();
        for spec in specs {
            let (tx, rx) = crossbeam_channel::bounded(1);
            items.push((spec, tx));
            replies.push(rx);
        }
        self.requests
            .send(Request::StartMany { items })
            .map_err(|_| Error::shut_down())?;
        self.waker.wake();
        Ok(replies
            .into_iter()
            .map(|rx| rx.recv().unwrap_or_else(|_| Err(Error::shut_down())))
            .collect())
    }

    /// Stops the target (a name, an id, or `"all"`): the stop signal to each process group,
    /// then SIGKILL to the group after the stop timeout. Services stop in parallel,
    /// dependents before their dependencies. Returns when the runs it stopped are over, with
    /// how many services it acted on. A stopped service stays stopped, across reopen too,
    /// until started or restarted: the desired states of all the target are stored in one
    /// transaction before the call returns. A stop of several services sends the first
    /// wave's stop signals while that transaction commits; nothing is acknowledged before
    /// the commit.
    ///
    /// If a later call overtakes the stop (a `start` or `restart` of the same service made
    /// while it is still stopping), the stop still returns once the run it stopped is over,
    /// with its usual count, although the later call has started a new run by then.
    ///
    /// Bounded: the longest [`stop_timeout`](crate::ServiceSpec::stop_timeout) of each
    /// dependency wave plus [`STOP_OVERHEAD`] per wave.
    ///
    /// # Errors
    ///
    /// `NotFound`, `ShutDown`; `Store` if the desired states cannot be stored: then nothing
    /// is stopped, except when the commit itself fails after the signals went out (a full
    /// disk), where the services signalled are started again once stopped, as the state
    /// file still wants them up.
    pub fn stop(&self, target: &str) -> Result<usize> {
        self.call(|reply| Request::Stop {
            target: target.to_string(),
            reply,
        })
    }

    /// Restarts the target (a name, an id, or `"all"`): stops what runs, then starts it again;
    /// stopped, exited and errored services are started. Manual restarts reset the backoff and
    /// are not counted in [`ServiceInfo::restarts`]. Returns how many services it acted on,
    /// once each new run is spawned, or once a later `stop` or `delete` that overtook it has
    /// ended the service instead.
    ///
    /// Bounded like [`stop`](Supervisor::stop) of the same target, plus the spawns.
    ///
    /// # Errors
    ///
    /// `NotFound`, `ShutDown`, `Store` (nothing is restarted), or the first `Spawn` error
    /// (after every target was tried).
    pub fn restart(&self, target: &str) -> Result<usize> {
        self.call(|reply| Request::Restart {
            target: target.to_string(),
            reply,
        })
    }

    /// Stores a service's definition without starting it (supervisord's `autostart=false`):
    /// a new service is `Stopped`, with its desired state down (so `open` does not start it
    /// either), until [`start_target`](Supervisor::start_target),
    /// [`restart`](Supervisor::restart) or [`start`](Supervisor::start) starts it. A service
    /// that exists and does not run gets the new spec, and stays as it is; one that runs (or
    /// waits to restart) with a different spec is refused: start it with the new spec, or
    /// stop it first. Returns at once.
    ///
    /// # Errors
    ///
    /// `InvalidSpec`; `InvalidInput` for a running service whose spec would change; `Store`;
    /// `ShutDown`.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{ServiceSpec, Status, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// let info = sup.define(ServiceSpec::new("nap", "sleep").arg("30"))?;
    /// assert_eq!(info.status(), Status::Stopped);
    /// assert!(!info.desired_up());
    /// assert_eq!(sup.start_target("nap")?, 1);
    /// assert_eq!(sup.describe("nap")?.status(), Status::Online);
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn define(&self, spec: ServiceSpec) -> Result<ServiceInfo> {
        self.call(|reply| Request::Define {
            spec: Box::new(spec),
            reply,
        })
    }

    /// Starts the target's services (a name, an id, the name of a spec with instances, or
    /// `"all"`) that do not run, with the specs they have: stopped, exited and errored ones
    /// (and ones stopping, once stopped). Those that run, start or wait to restart are left
    /// alone. Their desired states are stored first (up). Returns how many it started, once
    /// each is spawned (or waits for its dependencies).
    ///
    /// Bounded at once, or for a service still stopping, like [`stop`](Supervisor::stop) of
    /// it, plus the spawns.
    ///
    /// # Errors
    ///
    /// `NotFound`, `ShutDown`, `Store` (nothing is started), or the first `Spawn` error
    /// (after every target was tried).
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{ServiceSpec, Status, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.define(ServiceSpec::new("pool", "sleep").arg("30").instances(2))?;
    /// assert_eq!(sup.start_target("pool")?, 2, "pool.0 and pool.1");
    /// assert_eq!(sup.start_target("pool")?, 0, "both run: left alone");
    /// assert_eq!(sup.describe("pool.1")?.status(), Status::Online);
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn start_target(&self, target: &str) -> Result<usize> {
        self.call(|reply| Request::StartTarget {
            target: target.to_string(),
            reply,
        })
    }

    /// Changes the number of instances of a service started with
    /// [`ServiceSpec::instances`] to `n` (1 to 1000). New instances take the spec of the
    /// lowest-numbered one, and start if the service is meant to run; the highest-numbered
    /// go (stopped, then deleted with their logs). The instances that stay keep running.
    /// Returns how many instances were added or removed: once the new ones are spawned, or
    /// the removed ones are gone.
    ///
    /// Bounded at once for new instances; for removed ones, like
    /// [`delete`](Supervisor::delete) of them.
    ///
    /// # Errors
    ///
    /// `NotFound`; `InvalidInput` for a service without instances or the name of an
    /// instance; `InvalidSpec` for `n` out of range; `Store` (nothing changes); `ShutDown`.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.start(ServiceSpec::new("worker", "sleep").arg("30").instances(2))?;
    /// assert_eq!(sup.scale("worker", 4)?, 2);
    /// assert_eq!(sup.list()?.len(), 4);
    /// assert_eq!(sup.scale("worker", 1)?, 3);
    /// assert_eq!(sup.list()?[0].name(), "worker.0");
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn scale(&self, name: &str, n: u32) -> Result<usize> {
        self.call(|reply| Request::Scale {
            name: name.to_string(),
            instances: n,
            reply,
        })
    }

    /// Restarts the target (a name, an id, the name of a spec with instances, or `"all"`)
    /// one service at a time: each is stopped and started again, and the next is touched
    /// only once the new run is ready (`Online`; for a one-shot task, exited 0), so that a
    /// service with two or more instances always has one ready. Instances that are not
    /// ready go first; before it restarts a ready instance, the reload checks that another
    /// instance of the same service is ready, and stops rather than leave none. Like
    /// [`restart`](Supervisor::restart), it starts what is stopped, re-reads the host's
    /// environment and does not count as a crash. A [`start`](Supervisor::start) with a
    /// changed spec for a service with two or more instances rolls the same way.
    ///
    /// Returns how many services it restarted. A run that does not become ready stops the
    /// reload there: the services after it keep their runs, and the call fails with
    /// `NotReady`, naming them ([`Event::ReloadFailed`](crate::Event::ReloadFailed) says the
    /// same).
    ///
    /// Bounded, per service, by its [`stop_timeout`](crate::ServiceSpec::stop_timeout) and
    /// [`ready_timeout`](crate::ServiceSpec::ready_timeout) plus [`STOP_OVERHEAD`] and
    /// half a second.
    ///
    /// # Errors
    ///
    /// `NotFound`, `ShutDown`, `Store`; `NotReady` as above (also when a later reload or
    /// start of the same service overtakes it).
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.start(ServiceSpec::new("web", "sleep").arg("30").instances(3))?;
    /// assert_eq!(sup.reload("web")?, 3);
    /// assert!(sup.list()?.iter().all(|s| s.generation() == 2));
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn reload(&self, target: &str) -> Result<usize> {
        self.call(|reply| Request::Reload {
            target: target.to_string(),
            reply,
        })
    }

    /// Stops and removes the target (a name, an id, or `"all"`), with its log files. Ids are
    /// never reused; a later service with the same name starts afresh. Returns how many
    /// services it removed. The whole target leaves the registry first, in one transaction;
    /// then it is stopped (dependents first) and leaves memory. A delete is never undone by a
    /// later call: a `start` of the same name made while it is stopping fails with
    /// `NotFound`.
    ///
    /// Bounded like [`stop`](Supervisor::stop) of the same target, plus the removal of the
    /// log files.
    ///
    /// # Errors
    ///
    /// `NotFound`, `ShutDown`; `InUse` (and nothing is deleted) if a service outside the
    /// target depends on one inside it; `Store` (and nothing is deleted or stopped) if the
    /// registry cannot be changed.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Condition, ErrorKind, ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.start(ServiceSpec::new("db", "sleep").arg("60"))?;
    /// sup.start(ServiceSpec::new("web", "sleep").arg("60").after("db", Condition::Started))?;
    /// assert_eq!(sup.delete("db").unwrap_err().kind(), ErrorKind::InUse);
    /// assert_eq!(sup.delete("all")?, 2);
    /// # sup.shutdown() }
    /// ```
    pub fn delete(&self, target: &str) -> Result<usize> {
        self.call(|reply| Request::Delete {
            target: target.to_string(),
            reply,
        })
    }

    /// The current state of one service, by name or id (an instance by its own name,
    /// `web.2`).
    ///
    /// # Errors
    ///
    /// `NotFound`; `InvalidInput` for `"all"` (use [`list`](Supervisor::list)) and for the
    /// name of a spec with several instances (name one).
    pub fn describe(&self, target: &str) -> Result<ServiceInfo> {
        let table = self.shared.table.lock();
        let id = table.resolve_one(target, "describe (use list for all)")?;
        Ok(table.services[&id].clone())
    }

    /// Every service, by id.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for a registry that must be read.
    pub fn list(&self) -> Result<Vec<ServiceInfo>> {
        Ok(self
            .shared
            .table
            .lock()
            .services
            .values()
            .cloned()
            .collect())
    }

    /// Blocks until every service of the target has `status`, or `timeout` passes, or the
    /// wait cannot succeed any more. Bounded by `timeout`.
    ///
    /// # Errors
    ///
    /// `Settled` at once when a service of the target is in a status it leaves only when an
    /// operator acts ([`Status::is_settled`]: `Stopped`, `Exited`, `Errored`) other than
    /// `status`, naming that status and the last exit; `Timeout` (naming the status the
    /// service is in); `NotFound` (also if the service is deleted meanwhile); `ShutDown`.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{RestartPolicy, ServiceSpec, Status, Supervisor};
    /// use std::time::Duration;
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.start(ServiceSpec::new("once", "true").restart(RestartPolicy::never()))?;
    /// sup.wait_for("once", Status::Exited, Duration::from_secs(5))?;
    /// assert_eq!(sup.describe("once")?.last_exit().unwrap().code(), Some(0));
    /// # Ok(()) }
    /// ```
    pub fn wait_for(&self, target: &str, status: Status, timeout: Duration) -> Result<()> {
        let deadline = crate::duration::deadline(Instant::now(), timeout);
        let mut table = self.shared.table.lock();
        let ids = table.resolve(target)?;
        loop {
            let mut behind = None;
            let mut settled = None;
            for id in &ids {
                let Some(info) = table.services.get(id) else {
                    return Err(
                        Error::new(ErrorKind::NotFound, "was deleted while waited for")
                            .with_service(target),
                    );
                };
                if info.status() == status {
                    continue;
                }
                behind.get_or_insert((info.name().to_string(), info.status()));
                if info.status().is_settled() && settled.is_none() {
                    settled = Some(info);
                }
            }
            let Some((name, now)) = behind else {
                return Ok(());
            };
            if table.shut_down {
                return Err(Error::shut_down());
            }
            if let Some(info) = settled {
                let last = info
                    .last_exit()
                    .map_or(String::new(), |e| format!(" (last {e})"));
                return Err(Error::new(
                    ErrorKind::Settled,
                    format!(
                        "will not become {status}: it is {}{last}, which only a start, restart or delete changes",
                        info.status()
                    ),
                )
                .with_service(info.name()));
            }
            if self
                .shared
                .changed
                .wait_until(&mut table, deadline)
                .timed_out()
            {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "timed out after {} waiting for status {status} (status is {now})",
                        crate::duration::format(timeout)
                    ),
                )
                .with_service(name));
            }
        }
    }

    /// The last `n` lines of a service's log, oldest first, reading rotated files when the
    /// live one holds fewer. Lines are decoded as lossy UTF-8; a final line without a newline
    /// counts.
    ///
    /// # Errors
    ///
    /// `NotFound`; `Io` if a log file cannot be read.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{RestartPolicy, ServiceSpec, Status, Stream, Supervisor};
    /// use std::time::Duration;
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.start(ServiceSpec::new("count", "seq").args(["1", "5"]).restart(RestartPolicy::never()))?;
    /// sup.wait_for("count", Status::Exited, Duration::from_secs(5))?;
    /// assert_eq!(sup.tail("count", Stream::Stdout, 2)?, ["4", "5"]);
    /// # Ok(()) }
    /// ```
    pub fn tail(&self, target: &str, stream: Stream, n: usize) -> Result<Vec<String>> {
        let log = self.log_file(target, stream)?;
        let path = log.dir.path_of(&log.name);
        crate::logs::reader::tail(&log, n).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot read log '{}'", path.display()),
            )
            .with_service(target)
            .with_source(e)
        })
    }

    /// Follows a service's log from its current end: an iterator of new lines that keeps
    /// going across rotations and restarts.
    ///
    /// # Errors
    ///
    /// `NotFound`.
    pub fn follow(&self, target: &str, stream: Stream) -> Result<LogFollower> {
        Ok(LogFollower::at_end(
            self.log_file(target, stream)?,
            self.shared.activity.clone(),
        ))
    }

    /// Follows a service's log from its oldest kept line.
    ///
    /// # Errors
    ///
    /// `NotFound`.
    pub fn follow_from_start(&self, target: &str, stream: Stream) -> Result<LogFollower> {
        Ok(LogFollower::at_start(
            self.log_file(target, stream)?,
            self.shared.activity.clone(),
        ))
    }

    /// Follows a service's log from a cursor a follower handed out, without losing or
    /// repeating a line (if the cursor's file was rotated away, from the oldest kept line).
    ///
    /// # Errors
    ///
    /// `NotFound`.
    pub fn follow_from(
        &self,
        target: &str,
        stream: Stream,
        cursor: LogCursor,
    ) -> Result<LogFollower> {
        Ok(LogFollower::at_cursor(
            self.log_file(target, stream)?,
            self.shared.activity.clone(),
            cursor,
        ))
    }

    /// The order in which `start` would bring up the target (a name, an id, or `"all"`): waves
    /// of names, each depending only on earlier waves (dependencies outside the target are
    /// not included). A spec with instances is named once: its instances start together.
    /// Nothing is started.
    ///
    /// # Errors
    ///
    /// `NotFound`.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Condition, RestartPolicy, ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.start(ServiceSpec::new("db", "sleep").arg("60"))?;
    /// sup.start(ServiceSpec::new("web", "sleep").arg("60").after("db", Condition::Started))?;
    /// assert_eq!(sup.plan_start("all")?, vec![vec!["db".to_string()], vec!["web".to_string()]]);
    /// assert_eq!(sup.plan_stop("all")?, vec![vec!["web".to_string()], vec!["db".to_string()]]);
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn plan_start(&self, target: &str) -> Result<Vec<Vec<String>>> {
        self.plan(target, false)
    }

    /// The order in which `stop` (or `delete`) would bring the target down: dependents first.
    ///
    /// # Errors
    ///
    /// `NotFound`.
    pub fn plan_stop(&self, target: &str) -> Result<Vec<Vec<String>>> {
        self.plan(target, true)
    }

    fn plan(&self, target: &str, reverse: bool) -> Result<Vec<Vec<String>>> {
        plan(&self.shared.table.lock(), target, reverse)
    }

    /// CPU, memory, processes and threads of each service of the target (a name, an id, or
    /// `"all"`), summed over its process group and, under cgroup containment, the members of
    /// its cgroup that left the group; read from /proc in one pass.
    ///
    /// # Errors
    ///
    /// `NotFound`.
    pub fn stats(&self, target: &str) -> Result<Vec<Stats>> {
        let targets = stats_targets(
            &self.shared.table.lock(),
            target,
            self.cgroup_root.as_deref(),
        )?;
        Ok(crate::stats::measure(targets, &mut self.cpu.lock()))
    }

    /// Converges the supervisor to a fleet: starts new services (dependencies first),
    /// restarts those whose spec changed, starts listed ones that are not running, and with
    /// [`Prune::Yes`] stops and deletes those the fleet does not list. A service that fails to
    /// start does not stop the others: it is reported in [`Applied::failed`].
    ///
    /// # Errors
    ///
    /// `ShutDown`, or the first error that is not about one service (a store failure).
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Fleet, Prune, ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.start(ServiceSpec::new("old", "sleep").arg("60"))?;
    /// let fleet = Fleet::new([ServiceSpec::new("new", "sleep").arg("60")]);
    /// let applied = sup.apply(&fleet, Prune::Yes)?;
    /// assert_eq!(applied.started, ["new"]);
    /// assert_eq!(applied.deleted, ["old"]);
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn apply(&self, fleet: &Fleet, prune: Prune) -> Result<Applied> {
        let (mut convergence, steps) = Convergence::new(&self.list()?, fleet);
        let defined = steps.define.into_iter().map(|spec| self.define(spec));
        convergence.defined(defined.collect())?;
        convergence.started(self.start_many(steps.start)?)?;
        if prune == Prune::Yes {
            for name in convergence.unlisted(fleet, self.plan_stop("all")?) {
                let result = self.delete(&name);
                convergence.deleted(name, result)?;
            }
        }
        Ok(convergence.finish())
    }

    /// The newest `limit` runs of one service (by name or id), newest first: start, end, exit
    /// status and, when a check ended it, why. The registry keeps the last 100 runs of each.
    ///
    /// # Errors
    ///
    /// `NotFound`, `Store`, `ShutDown`.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{RestartPolicy, ServiceSpec, Status, Supervisor};
    /// use std::time::Duration;
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.start(ServiceSpec::new("once", "sh").args(["-c", "exit 4"]).restart(RestartPolicy::never()))?;
    /// sup.wait_for("once", Status::Exited, Duration::from_secs(5))?;
    /// let runs = sup.history("once", 10)?;
    /// assert_eq!(runs[0].code(), Some(4));
    /// # Ok(()) }
    /// ```
    pub fn history(&self, target: &str, limit: usize) -> Result<Vec<Run>> {
        self.call(|reply| Request::History {
            target: target.to_string(),
            limit,
            reply,
        })
    }

    /// Why one service (by name or id) is in its status, in words: the backoff step and the
    /// next start, the dependency it waits for, the error it gave up on.
    ///
    /// # Errors
    ///
    /// `NotFound`, `ShutDown`.
    pub fn explain(&self, target: &str) -> Result<Explanation> {
        self.call(|reply| Request::Explain {
            target: target.to_string(),
            reply,
        })
    }

    /// A new subscription to events from now on.
    pub fn subscribe(&self) -> Events {
        self.shared.hub.subscribe()
    }

    /// The log file of a service's stream: `logs/<name>.out.log` or `logs/<name>.err.log` in
    /// the state directory.
    ///
    /// # Errors
    ///
    /// `NotFound`.
    pub fn log_path(&self, target: &str, stream: Stream) -> Result<PathBuf> {
        let log = self.log_file(target, stream)?;
        Ok(log.dir.path_of(&log.name))
    }

    /// A service's log file, for the readers: opened through the held log directory.
    fn log_file(&self, target: &str, stream: Stream) -> Result<crate::logs::LogFile> {
        let info = self.describe(target)?;
        Ok(crate::logs::LogFile {
            dir: self.logs.clone(),
            name: crate::logs::log_name(info.name(), stream == Stream::Stderr),
        })
    }

    /// Stops every service (dependents first, each wave in parallel, each service with its
    /// grace period) and joins the supervision thread. Desired states are kept, so the next
    /// `open` resurrects the services that were up.
    ///
    /// Bounded like [`stop`](Supervisor::stop) of `"all"`: the longest stop timeout of each
    /// dependency wave plus [`STOP_OVERHEAD`] per wave. Calls that wait on the supervision
    /// thread when the shutdown begins return once their services are down: a stop, restart
    /// or delete with its usual result, a start with the service as the shutdown left it.
    /// Idempotent: a second call waits for the first to finish.
    ///
    /// Afterwards what the supervisor last published stays readable: `describe`, `list`,
    /// `plan_start`, `plan_stop` and `stats` show every service as the shutdown left it,
    /// and the logs can still be read (`log_path`, `tail`, `follow`; a temporary state
    /// directory lasts until the `Supervisor` is dropped). Every call that needs the
    /// supervision thread (`start`, `start_many`, `stop`, `restart`, `delete`, `history`,
    /// `explain`, `apply`, and `wait_for` a status not reached) fails with `ShutDown`, and
    /// [`subscribe`](Supervisor::subscribe) returns a subscription that has already ended.
    ///
    /// # Errors
    ///
    /// `Io` if the supervision thread panicked.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{ErrorKind, ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.start(ServiceSpec::new("nap", "sleep").arg("60"))?;
    /// sup.shutdown()?;
    /// assert_eq!(sup.describe("nap")?.status(), sheepdog::Status::Stopped);
    /// assert_eq!(sup.stop("nap").unwrap_err().kind(), ErrorKind::ShutDown);
    /// assert_eq!(sup.subscribe().count(), 0);
    /// # Ok(()) }
    /// ```
    pub fn shutdown(&self) -> Result<()> {
        self.shutdown_by(None)
    }

    /// Like [`shutdown`](Supervisor::shutdown), within one deadline for the whole fleet: each
    /// stop waits for its group to end until its [`stop_timeout`](crate::ServiceSpec::stop_timeout)
    /// or until `grace` from now has passed, whichever comes first, then SIGKILLs what is
    /// left. A dependency wave that begins after the deadline is SIGKILLed at once (after its
    /// stop signal). Returns within `grace` plus [`STOP_OVERHEAD`] per dependency wave.
    ///
    /// # Errors
    ///
    /// As [`shutdown`](Supervisor::shutdown).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = sheepdog::Supervisor::temporary()?;
    /// let stubborn = sheepdog::ServiceSpec::new("stubborn", "sh")
    ///     .args(["-c", "trap '' TERM; while :; do sleep 0.1; done"])
    ///     .stop_timeout(Duration::from_secs(60));
    /// sup.start(stubborn)?;
    /// let begun = Instant::now();
    /// sup.shutdown_within(Duration::from_millis(300))?;
    /// assert!(begun.elapsed() < Duration::from_secs(30));
    /// # Ok(()) }
    /// ```
    pub fn shutdown_within(&self, grace: Duration) -> Result<()> {
        self.shutdown_by(Some(crate::duration::deadline(Instant::now(), grace)))
    }

    /// Whether the supervision thread answers within `bound`: it is alive and its loop turns.
    ///
    /// # Errors
    ///
    /// `Timeout` if it did not answer within `bound`; `ShutDown` after a shutdown.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = sheepdog::Supervisor::temporary()?;
    /// sup.ping(std::time::Duration::from_secs(1))?;
    /// # Ok(()) }
    /// ```
    pub fn ping(&self, bound: Duration) -> Result<()> {
        crate::http::ping(&self.requests, &self.waker, bound)
    }

    fn shutdown_by(&self, by: Option<Instant>) -> Result<()> {
        // Held until the thread is joined, so that a second caller returns only then.
        let mut held = self.thread.lock();
        let Some(thread) = held.take() else {
            return Ok(());
        };
        // Clients first: their streams end and their calls fail in words, before the
        // services stop under them.
        if let Some(mut control) = self.control.lock().take() {
            control.stop();
        }
        let result = self.call(|reply| Request::Shutdown { reply, by });
        let joined = thread.join();
        // Last: an orchestrator's probes are answered while the fleet stops (/livez alive,
        // /readyz not ready).
        if let Some(mut http) = self.http.lock().take() {
            http.stop();
        }
        match (result, joined) {
            (_, Err(_)) => Err(Error::new(ErrorKind::Io, "the supervision thread panicked")),
            (Err(e), _) if e.kind() != ErrorKind::ShutDown => Err(e),
            _ => Ok(()),
        }
    }
}

/// How long a stop may take beyond the stop timeout of the service it stops: after the
/// timeout, SIGKILL goes to the whole group and the supervisor waits up to 5 s for it to be
/// gone, then up to 0.5 s for the log pump to read the last of its output.
///
/// A call that waits for a stop ([`Supervisor::stop`], [`restart`](Supervisor::restart),
/// [`delete`](Supervisor::delete), a [`start`](Supervisor::start) that replaces a running
/// spec) returns within the [`stop_timeout`](crate::ServiceSpec::stop_timeout) of each
/// dependency wave it stops plus this much per wave, plus the time to spawn what it starts.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// let spec = sheepdog::ServiceSpec::new("web", "sleep").arg("60").stop_timeout(Duration::from_secs(2));
/// let bound = spec.get_stop_timeout() + sheepdog::STOP_OVERHEAD;
/// assert_eq!(bound, Duration::from_millis(7500));
/// ```
pub const STOP_OVERHEAD: Duration = Duration::from_millis(5500);

/// The waves in which `start` (or, `reverse`, `stop`) would take the target's services, by
/// spec name: the instances of a spec start and stop together.
pub(crate) fn plan(table: &Table, target: &str, reverse: bool) -> Result<Vec<Vec<String>>> {
    let ids = table.resolve(target)?;
    let owner: std::collections::HashMap<&str, &str> = table
        .services
        .values()
        .map(|s| (s.name(), s.definition()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let nodes: Vec<crate::graph::Node<'_>> = table
        .services
        .values()
        .filter(|s| seen.insert(s.definition()))
        .map(|s| crate::graph::Node {
            name: s.definition(),
            deps: s
                .spec()
                .get_after()
                .iter()
                .map(|d| owner.get(d.name.as_str()).copied().unwrap_or(&d.name))
                .collect(),
        })
        .collect();
    let targets = ids
        .iter()
        .map(|id| table.services[id].definition())
        .collect();
    Ok(crate::graph::waves(&nodes, &targets, reverse))
}

/// What `stats` measures for the target's services: their groups and, under cgroup
/// containment (`cgroup_root`), their runs' cgroups.
pub(crate) fn stats_targets(
    table: &Table,
    target: &str,
    cgroup_root: Option<&Path>,
) -> Result<Vec<crate::stats::Target>> {
    let ids = table.resolve(target)?;
    Ok(ids
        .iter()
        .map(|id| {
            let info = &table.services[id];
            crate::stats::Target {
                id: *id,
                generation: info.generation(),
                name: info.name().to_string(),
                pgid: info.pid(),
                started: info
                    .started_at()
                    .and_then(|t| t.elapsed().ok())
                    .and_then(|d| Instant::now().checked_sub(d)),
                cgroup_procs: cgroup_root.zip(info.cgroup).map(|(root, cgroup)| {
                    crate::containment::Cgroups::procs_file(root, *id, cgroup)
                }),
            }
        })
        .collect())
}

/// How long `open` waits for a lock that a just-forked child may still hold.
const LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// Takes the exclusive lock on the state directory.
///
/// `flock` locks belong to the open file, which a child shares between its fork and its exec
/// (close-on-exec acts only at exec). Any thread of the host that spawns a process can
/// therefore hold our lock for a moment after we release it, so a busy lock is retried for a
/// short while before it counts as another supervisor's.
///
/// A guardian cleaning up after a dead host holds the lock too, and says so in the lock
/// file: then `open` waits for it, up to [`CLEANUP_PATIENCE`](crate::guardian::CLEANUP_PATIENCE).
fn lock_state_dir(lock: &File, state_dir: &Path) -> Result<()> {
    let start = Instant::now();
    let mut deadline = start + LOCK_PATIENCE;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                if Holder::read(lock).is_some_and(|h| h.guardian && h.alive()) {
                    deadline = start + crate::guardian::CLEANUP_PATIENCE;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::new(
                    ErrorKind::StateDirLocked,
                    format!(
                        "state directory '{}' is in use by another supervisor",
                        state_dir.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("cannot lock state directory '{}'", state_dir.display()),
                )
                .with_source(e));
            }
        }
    }
}

/// What `open` prepared for the supervision thread.
struct Setup {
    state: StateDir,
    store: Store,
    logs: LogDir,
    cgroups: Option<Cgroups>,
    subreaper: bool,
    resurrect: bool,
    fd_limit: u64,
    memory_sample: Duration,
    run_key: String,
    session: crate::containment::marker::Session,
    guardian: Option<Watch>,
    reaper: Option<sys::OrphanReaper>,
}

/// The supervision thread's body: it makes what must live on this thread (the poller, and
/// the tier, whose spawns give children a parent-death signal that follows the spawning
/// thread), the log pump and the probe pool, loads the registry, hands the waker back to the
/// handle, and runs the loop until a shutdown is done.
fn supervise(
    setup: Setup,
    requests: Receiver<Request>,
    shared: Arc<Shared>,
    ready: Sender<Result<Waker>>,
) {
    let io_error =
        |what: &str, e: std::io::Error| Error::new(ErrorKind::Io, what.to_string()).with_source(e);
    // The control thread hears of the last replies, sent after the engine is gone.
    let bells = shared.clone();
    let made = (|| {
        let poller = Poller::new(crate::engine::EVENTS_PER_TURN)
            .map_err(|e| io_error("cannot create the supervision poller", e))?;
        let waker = poller
            .waker()
            .map_err(|e| io_error("cannot create the supervision waker", e))?;
        let (logs_tx, logs_rx) = crossbeam_channel::unbounded();
        let (probes_tx, probes_rx) = crossbeam_channel::unbounded();
        // One waker for the pump's and the probes' reports.
        let reports_waker = Arc::new(
            poller
                .waker()
                .map_err(|e| io_error("cannot create the supervision waker", e))?,
        );
        let reports = crate::logs::Reports {
            tx: logs_tx,
            waker: reports_waker.clone(),
            hub: shared.hub.clone(),
            activity: shared.activity.clone(),
        };
        let pump = Pump::start(setup.logs, reports)
            .map_err(|e| io_error("cannot start the log pump thread", e))?;
        let tier = Tier::new(
            setup.cgroups,
            setup.subreaper,
            poller.registry(),
            setup.run_key.clone(),
            setup.session.clone(),
        );
        let probe_cgroups = tier
            .probe_cgroups()
            .map_err(|e| io_error("cannot make the probes' cgroups", e))?;
        let probes = ProbePool::new(probes_tx, reports_waker, probe_cgroups);
        let config = Config {
            state: setup.state,
            limits_pids: tier.limits_pids(),
            tier,
            pump,
            probes,
            store: setup.store,
            resurrect: setup.resurrect,
            fd_limit: setup.fd_limit,
            memory_sample: setup.memory_sample,
            run_key: setup.run_key,
            session: setup.session,
            guardian: setup.guardian,
            reaper: setup.reaper,
        };
        let inbox = Inbox {
            requests,
            logs: logs_rx,
            probes: probes_rx,
        };
        let engine = Engine::new(config, poller, inbox, shared);
        Ok((engine, waker))
    })();
    let (mut engine, waker) = match made {
        Ok(made) => made,
        Err(e) => return drop(ready.send(Err(e))),
    };
    if let Err(e) = engine.init() {
        engine.finish();
        return drop(ready.send(Err(e)));
    }
    let _ = ready.send(Ok(waker));
    let reply = engine.run();
    engine.finish();
    if let Some(reply) = reply {
        let _ = reply.send(Ok(()));
    }
    bells.replied.ring();
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::warn!("supervisor shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_sync_traits() {
        fn check<T: Send + Sync>() {}
        check::<Supervisor>();
        check::<ServiceInfo>();
        fn check_send<T: Send>() {}
        check_send::<Events>();
    }
}
