//! What the supervisor reports about a service: [`Status`], [`Exit`] and [`ServiceInfo`].

use crate::spec::ServiceSpec;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Where a service is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Being started: not yet running, or running but not yet ready.
    Starting,
    /// Running.
    Online,
    /// Ended by itself and waiting for its automatic restart; [`ServiceInfo::next_start`]
    /// says when.
    Backoff,
    /// Being stopped: the stop signal was sent and the supervisor waits for the whole process
    /// group to end.
    Stopping,
    /// Stopped by the operator (or by shutdown).
    Stopped,
    /// Ended by itself, and its policy does not restart it.
    Exited,
    /// Hit its crash-loop limit, or could not be started.
    Errored,
    /// A scheduled job ([`Schedule::run`](crate::Schedule::run)) waiting for its next tick;
    /// [`ServiceInfo::next_scheduled`] says when.
    Scheduled,
}

impl Status {
    /// The status as a lowercase word: `"online"`, `"backoff"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Online => "online",
            Status::Backoff => "backoff",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Exited => "exited",
            Status::Errored => "errored",
            Status::Scheduled => "scheduled",
        }
    }

    pub(crate) fn from_str(s: &str) -> Option<Status> {
        Some(match s {
            "starting" => Status::Starting,
            "online" => Status::Online,
            "backoff" => Status::Backoff,
            "stopping" => Status::Stopping,
            "stopped" => Status::Stopped,
            "exited" => Status::Exited,
            "errored" => Status::Errored,
            "scheduled" => Status::Scheduled,
            _ => return None,
        })
    }

    /// Whether a process of the service may be alive in this status.
    pub fn is_running(self) -> bool {
        matches!(self, Status::Starting | Status::Online | Status::Stopping)
    }

    /// Whether a service stays in this status until an operator acts (a start, restart, stop
    /// or delete): `Stopped`, `Exited` and `Errored`. The supervisor moves a service out of
    /// every other status by itself.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::Status;
    /// assert!(Status::Errored.is_settled());
    /// assert!(!Status::Backoff.is_settled());
    /// ```
    pub fn is_settled(self) -> bool {
        matches!(self, Status::Stopped | Status::Exited | Status::Errored)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run of a service ended.
///
/// Recorded on every exit, crashes and stops included. Exactly one of [`code`](Exit::code)
/// and [`signal`](Exit::signal) is set, unless another reaper took the status (see
/// [`Exit::is_unknown`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) at: SystemTime,
    pub(crate) uptime: Duration,
    pub(crate) reason: Option<String>,
}

impl Exit {
    /// The exit code, if the process exited.
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// The signal number, if a signal killed the process.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    /// Whether the run ended with exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Whether the exit status could not be collected (another part of the host reaped the
    /// process and the kernel is too old to tell).
    pub fn is_unknown(&self) -> bool {
        self.code.is_none() && self.signal.is_none()
    }

    /// When the run ended.
    pub fn at(&self) -> SystemTime {
        self.at
    }

    /// How long the run lasted.
    pub fn uptime(&self) -> Duration {
        self.uptime
    }

    /// Why the supervisor ended the run, when a check did (`unhealthy: …`,
    /// `not ready within …`); `None` when the run ended by itself or by the operator's stop.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}")?,
            (None, Some(sig)) => write!(f, "killed by signal {sig}")?,
            (None, None) => f.write_str("unknown exit status")?,
        }
        write!(f, " after {:.3}s", self.uptime.as_secs_f64())?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

/// A snapshot of one service: its identity, status, process and counters.
///
/// # Example
///
/// ```
/// use sheepdog::{ServiceSpec, Status, Supervisor};
/// # fn main() -> sheepdog::Result<()> {
/// let sup = Supervisor::temporary()?;
/// let info = sup.start(ServiceSpec::new("nap", "sleep").arg("30"))?;
/// assert_eq!(info.name(), "nap");
/// assert_eq!(info.status(), Status::Online);
/// assert!(info.pid().is_some());
/// assert_eq!(info.restarts(), 0);
/// # sup.shutdown()?; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ServiceInfo {
    pub(crate) id: u64,
    pub(crate) name: Arc<str>,
    pub(crate) instance: Option<u32>,
    pub(crate) desired_up: bool,
    pub(crate) spec: Arc<ServiceSpec>,
    pub(crate) status: Status,
    pub(crate) pid: Option<u32>,
    pub(crate) restarts: u64,
    pub(crate) last_exit: Option<Exit>,
    pub(crate) next_start: Option<Instant>,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) generation: u64,
    /// With cgroups, the generation naming the running run's cgroup (see `Engine`).
    pub(crate) cgroup: Option<u64>,
    pub(crate) log_dropped: Arc<AtomicU64>,
    pub(crate) status_text: Option<String>,
    pub(crate) notify_rejected: u64,
    pub(crate) next_scheduled: Option<SystemTime>,
}

impl ServiceInfo {
    /// The service's id: assigned at creation, never reused.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The service's name: its spec's, or `<name>.<k>` for instance `k` of a spec with
    /// [`instances`](ServiceSpec::instances).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its index among the instances of its spec, if the spec has instances.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// sup.start(ServiceSpec::new("nap", "sleep").arg("30").instances(2))?;
    /// let second = sup.describe("nap.1")?;
    /// assert_eq!((second.name(), second.instance(), second.definition()), ("nap.1", Some(1), "nap"));
    /// assert_eq!(sup.list()?.len(), 2);
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn instance(&self) -> Option<u32> {
        self.instance
    }

    /// The name of its spec: the name that addresses all its instances (the service's own
    /// name when it has none).
    pub fn definition(&self) -> &str {
        self.spec.name()
    }

    /// Whether it is meant to run: started and not since stopped (`open` starts it again).
    /// False for a service only [defined](crate::Supervisor::define).
    pub fn desired_up(&self) -> bool {
        self.desired_up
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The pid of the running process (the leader of its process group), if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// How many times the supervisor restarted the service by itself (after it ended) since
    /// the service was created. Restarts asked for by the operator are not counted.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// How the last run ended, if one did.
    pub fn last_exit(&self) -> Option<&Exit> {
        self.last_exit.as_ref()
    }

    /// When the pending automatic restart is due, in [`Status::Backoff`].
    pub fn next_start(&self) -> Option<Instant> {
        self.next_start
    }

    /// When the current run started, if one runs.
    pub fn started_at(&self) -> Option<SystemTime> {
        self.started_at
    }

    /// How many runs have been started (or attempted) since the supervisor opened.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of output dropped since the supervisor opened because its log could not be
    /// written (disk full, log directory removed, permission lost). Read live.
    pub fn log_dropped_bytes(&self) -> u64 {
        self.log_dropped.load(Ordering::Relaxed)
    }

    /// The last `STATUS=` text the service sent over `NOTIFY_SOCKET`, if any.
    pub fn status_text(&self) -> Option<&str> {
        self.status_text.as_deref()
    }

    /// How many `NOTIFY_SOCKET` datagrams were refused since the supervisor opened because
    /// they did not come from a process of the service's run (another service, another
    /// user). A refused datagram has no effect: no `READY=1`, `STATUS=`, `WATCHDOG=1` or
    /// `RESTART_RESET=1` from it counts.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// let info = sup.start(ServiceSpec::new("nap", "sleep").arg("30"))?;
    /// assert_eq!(info.notify_rejected(), 0);
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn notify_rejected(&self) -> u64 {
        self.notify_rejected
    }

    /// When its [`Schedule`](crate::Schedule) next restarts or runs it, while the schedule
    /// is armed (the service started and not stopped since).
    pub fn next_scheduled(&self) -> Option<SystemTime> {
        self.next_scheduled
    }

    /// The spec the service runs with.
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }
}
