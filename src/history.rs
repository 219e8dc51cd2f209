//! [`Run`]: one incarnation of a service as recorded in the registry, with [`Cause`] (why it
//! ended) and [`Usage`] (what it used); and [`Explanation`]: why a service is in its status,
//! in words.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// Why a run ended.
///
/// # Example
///
/// ```
/// use sheepdog::Cause;
///
/// assert_eq!(Cause::MemoryLimit.to_string(), "memory limit");
/// assert_eq!("out of memory".parse::<Cause>().ok(), Some(Cause::OutOfMemory));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// It exited by itself with code 0.
    Exited,
    /// It exited by itself with another code, or a signal killed it.
    Crashed,
    /// An operator stopped or deleted it, or the supervisor shut down.
    Stopped,
    /// An operator restarted it, or its definition changed.
    Restarted,
    /// Its liveness check failed.
    Unhealthy,
    /// It did not become ready within its `ready_timeout`.
    NotReady,
    /// Its memory stayed over `max_memory` (sampled by the supervisor).
    MemoryLimit,
    /// The kernel's OOM killer ended it inside its memory cgroup.
    OutOfMemory,
    /// It could not be started at all; [`Run::errno`] says why when the OS did.
    SpawnFailed,
    /// The host died while it ran; a later `open` ended whatever was left of it.
    HostDied,
    /// Its schedule restarted it, or a job's tick found it still running and restarted it
    /// ([`Schedule`](crate::Schedule)).
    Scheduled,
    /// Files it watches changed ([`Watch`](crate::Watch)); [`Run::reason`] names them.
    FilesChanged,
    /// It wrote nothing for its watchdog's silence ([`Watchdog`](crate::Watchdog)).
    Silent,
    /// It wrote a line its watchdog's pattern matches; [`Run::reason`] has the line.
    OutputMatched,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Exited => "exited",
            Cause::Crashed => "crashed",
            Cause::Stopped => "stopped",
            Cause::Restarted => "restarted",
            Cause::Unhealthy => "unhealthy",
            Cause::NotReady => "not ready",
            Cause::MemoryLimit => "memory limit",
            Cause::OutOfMemory => "out of memory",
            Cause::SpawnFailed => "spawn failed",
            Cause::HostDied => "host died",
            Cause::Scheduled => "scheduled",
            Cause::FilesChanged => "files changed",
            Cause::Silent => "silent",
            Cause::OutputMatched => "output matched",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Cause {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Cause> {
        const ALL: [Cause; 14] = [
            Cause::Exited,
            Cause::Crashed,
            Cause::Stopped,
            Cause::Restarted,
            Cause::Unhealthy,
            Cause::NotReady,
            Cause::MemoryLimit,
            Cause::OutOfMemory,
            Cause::SpawnFailed,
            Cause::HostDied,
            Cause::Scheduled,
            Cause::FilesChanged,
            Cause::Silent,
            Cause::OutputMatched,
        ];
        ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            crate::Error::new(
                crate::ErrorKind::InvalidInput,
                format!("unknown cause of a run's end '{s}'"),
            )
        })
    }
}

/// What a run used: CPU time as the kernel counted it when the main process was reaped (its
/// own plus that of the descendants it waited for), and peak memory from its memory cgroup.
///
/// There is no peak from `rusage`: a child spawned the vfork way (as every run is, see the
/// README) shares the host's memory until exec, and Linux folds the host's resident set
/// into the child's `ru_maxrss` at exec, so that figure would be the host's, not the
/// service's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub(crate) peak_memory: Option<u64>,
    pub(crate) user: Duration,
    pub(crate) system: Duration,
}

impl Usage {
    /// The peak memory charged to the run's memory cgroup, in bytes (cgroup v2
    /// `memory.peak`, or v1 `memory.max_usage_in_bytes`). `None` where the run had no
    /// memory cgroup: without a memory controller, or, when the controller is on a v1
    /// hierarchy, for a service without `max_memory`.
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        self.peak_memory
    }

    /// CPU time spent in user mode.
    pub fn user_cpu(&self) -> Duration {
        self.user
    }

    /// CPU time spent in the kernel.
    pub fn system_cpu(&self) -> Duration {
        self.system
    }
}

/// One run of a service: when it started, became ready and ended, how and why, what the
/// supervisor decided next, what it used, and the last lines it printed.
///
/// # Example
///
/// ```
/// use sheepdog::{Cause, RestartPolicy, ServiceSpec, Status, Supervisor};
/// use std::time::Duration;
///
/// let sup = Supervisor::temporary()?;
/// sup.start(
///     ServiceSpec::new("once", "sh")
///         .args(["-c", "echo starting; echo oops >&2; exit 3"])
///         .restart(RestartPolicy::never()),
/// )?;
/// sup.wait_for("once", Status::Exited, Duration::from_secs(10))?;
/// let runs = sup.history("once", 10)?;
/// assert_eq!(runs[0].code(), Some(3));
/// assert_eq!(runs[0].cause(), Some(Cause::Crashed));
/// assert_eq!(runs[0].decision(), Some("not restarted: the policy does not restart this exit"));
/// sup.shutdown()?;
/// # Ok::<(), sheepdog::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub(crate) id: i64,
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    pub(crate) started_at: SystemTime,
    pub(crate) ready_at: Option<SystemTime>,
    pub(crate) ended_at: Option<SystemTime>,
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) reason: Option<String>,
    pub(crate) cause: Option<Cause>,
    pub(crate) errno: Option<i32>,
    pub(crate) decision: Option<String>,
    pub(crate) restart_delay: Option<Duration>,
    pub(crate) usage: Option<Usage>,
    pub(crate) last_stdout: String,
    pub(crate) last_stderr: String,
}

impl Run {
    /// The run's id in the registry (increasing).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Which run of the service since the supervisor opened (restarts after `open` count from 1).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The pid of its main process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// When it started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// When it ended; `None` while it runs (or if the host died during it).
    pub fn ended_at(&self) -> Option<SystemTime> {
        self.ended_at
    }

    /// How long it ran, if it ended.
    pub fn uptime(&self) -> Option<Duration> {
        self.ended_at?.duration_since(self.started_at).ok()
    }

    /// Its exit code, if it exited.
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// The signal that killed it, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    /// Why the supervisor ended it, when a check did (`unhealthy: …`, `not ready within …`),
    /// or what it left behind (`left 3 processes running; killed them`); for a failed spawn,
    /// the error.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// When it became ready (`Ready::Immediately`: when it started); `None` if it never did.
    pub fn ready_at(&self) -> Option<SystemTime> {
        self.ready_at
    }

    /// Why it ended; `None` while it runs.
    pub fn cause(&self) -> Option<Cause> {
        self.cause
    }

    /// For a spawn that failed in the OS: the errno (`ENOENT`, `EACCES`, …).
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }

    /// What the restart policy decided when it ended by itself or failed a check, in words
    /// (`restart in 200ms (3rd restart in a row)`, `errored: crash loop …`). `None` for a run
    /// that an operator ended, or that still runs.
    pub fn decision(&self) -> Option<&str> {
        self.decision.as_deref()
    }

    /// The delay before the restart the policy decided, if it decided one.
    pub fn restart_delay(&self) -> Option<Duration> {
        self.restart_delay
    }

    /// Peak memory and CPU time, when the supervisor reaped it itself (not when the host
    /// reaped it first, or died).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The last lines it wrote to stdout (by default up to 20 lines and 4 KiB; see
    /// [`LogPolicy::tail`](crate::LogPolicy::tail)), once its output is drained.
    pub fn last_stdout(&self) -> &str {
        &self.last_stdout
    }

    /// The last lines it wrote to stderr, as [`last_stdout`](Run::last_stdout).
    pub fn last_stderr(&self) -> &str {
        &self.last_stderr
    }
}

/// Why a service is in its status, from the supervisor's own state and policy.
///
/// `Display` gives one line, such as `backoff: 3rd restart in a row, next start in 0.8s
/// (exponential backoff, resets after 10s of uptime)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub(crate) status: crate::Status,
    pub(crate) text: String,
}

impl Explanation {
    /// The status explained.
    pub fn status(&self) -> crate::Status {
        self.status
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.text)
    }
}

/// "1st", "2nd", "3rd", "4th", …
pub(crate) fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .into_iter()
            .map(super::ordinal)
            .collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }
}
