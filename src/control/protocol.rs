//! The control socket's protocol: every message that crosses it, as Rust types that
//! serialize to exactly the JSON on the wire.
//!
//! # The exchange
//!
//! A host serves a Unix stream socket, [`SOCKET_NAME`] in its state directory (mode 0600,
//! and only a peer of the host's uid or root is served). Each message is one JSON object on
//! one line (`\n`-terminated, at most [`MAX_LINE`] bytes). The client speaks first, and
//! first says `hello` with the protocol version it speaks:
//!
//! ```text
//! → {"request":"hello","version":1}
//! ← {"ok":{"hello":{"protocol":1,"version":"0.1.0","pid":4242,"state_dir":"/var/lib/app/services"}}}
//! → {"request":"stop","target":"web"}
//! ← {"ok":{"stop":1}}
//! → {"request":"describe","target":"nope"}
//! ← {"error":{"kind":"not_found","service":"nope","message":"service 'nope': not found"}}
//! ```
//!
//! Requests ([`Request`]) are named after the [`Supervisor`](crate::Supervisor) methods and
//! answered in order, one at a time per connection; each gets one [`Response`]: `ok` with a
//! [`Reply`] named after the request, or `error` with an [`ErrorReply`] (the
//! [`ErrorKind`] in snake case, the service, and the message). A request
//! that waits on the supervisor (`stop`, `restart`, `delete`, `start`, `apply`) is answered
//! when the call returns, within the call's documented bound; other clients are served
//! meanwhile.
//!
//! `follow` and `subscribe` turn the connection into a stream: after their `ok`, the host
//! sends `log` lines ([`LogLine`]) or `event`s ([`Event`]) as they happen, until the client
//! closes the connection, or the host ends the stream with `end` ([`End`]) when it shuts
//! down. A subscriber that reads too slowly receives a `lagged` event with the number of
//! events it missed; a follower that reads too slowly falls behind in the log files (and
//! loses what rotation removed before it got there).
//!
//! The host closes a connection that sends a line longer than [`MAX_LINE`] (after an
//! `error` of kind `protocol`), that has not said `hello` within [`HELLO_TIMEOUT`], that sends
//! nothing for [`IDLE_TIMEOUT`] with no call or stream in progress, or that reads nothing of
//! what it is sent for [`WRITE_TIMEOUT`]. Beyond [`MAX_CLIENTS`] connections, a new one gets
//! one `error` of kind `refused` and is closed; so is one from another user.
//!
//! Times are milliseconds since the Unix epoch (`*_ms`), durations milliseconds
//! (`*_ms`), sizes bytes. Fields may be added in later versions of the same protocol
//! version; a client ignores fields it does not know. A field that is absent or `null` is
//! not known (`pid` of a service that does not run).
//!
//! # Example
//!
//! ```
//! use sheepdog::control::protocol::{Request, Response, Reply};
//!
//! let line = serde_json::to_string(&Request::Stop { target: "web".into() }).unwrap();
//! assert_eq!(line, r#"{"request":"stop","target":"web"}"#);
//! let answer: Response = serde_json::from_str(r#"{"ok":{"stop":1}}"#).unwrap();
//! assert!(matches!(answer, Response::Ok(Reply::Stop(1))));
//! ```

use crate::error::{Error, ErrorKind};
use crate::fleet::Fleet;
use crate::spec::ServiceSpec;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;

/// The socket's file name in the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// The longest line either side sends or accepts, newline included: 4 MiB (a fleet of a few
/// thousand services fits in an `apply`).
pub const MAX_LINE: usize = 4 << 20;

/// How many connections a host serves at once.
pub const MAX_CLIENTS: usize = 256;

/// How long a new connection has to say `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may send nothing while no call or stream of it is in progress.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a connection may leave unread what it is sent before the host gives up on it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A request, client to host: `{"request": "<name>", …fields}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// The first request of a connection: the protocol version the client speaks.
    Hello {
        /// [`VERSION`].
        version: u32,
    },
    /// Every service ([`Supervisor::list`](crate::Supervisor::list)).
    List,
    /// One service.
    Describe {
        /// A name or an id.
        target: String,
    },
    /// Starts the target's services with their stored specs (`target`), or creates or
    /// updates one service and starts it (`spec`), as
    /// [`Supervisor::start`](crate::Supervisor::start). Exactly one of the two.
    Start {
        /// A name, an id, or `"all"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// A whole service definition, as in a JSON fleet file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spec: Option<Box<ServiceSpec>>,
    },
    /// Stops the target.
    Stop {
        /// A name, an id, or `"all"`.
        target: String,
    },
    /// Restarts the target.
    Restart {
        /// A name, an id, or `"all"`.
        target: String,
    },
    /// Stops and removes the target, with its logs.
    Delete {
        /// A name, an id, or `"all"`.
        target: String,
    },
    /// A service's newest recorded runs, newest first.
    History {
        /// A name or an id.
        target: String,
        /// How many runs at most (default 20).
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// Why a service is in its status, in words.
    Explain {
        /// A name or an id.
        target: String,
    },
    /// CPU, memory, processes and threads of the target's services.
    Stats {
        /// A name, an id, or `"all"` (the default).
        #[serde(default = "all")]
        target: String,
    },
    /// Converges the host to a fleet ([`Supervisor::apply`](crate::Supervisor::apply)).
    Apply {
        /// The fleet, as in a JSON fleet file (`{"service": [ … ]}`).
        fleet: Fleet,
        /// Also stop and delete the services the fleet does not list.
        #[serde(default)]
        prune: bool,
    },
    /// The last lines of a service's logs.
    Tail {
        /// A name or an id.
        target: String,
        /// Which streams (default both).
        #[serde(default)]
        streams: Streams,
        /// How many lines of each stream at most (default 20).
        #[serde(default = "default_limit")]
        lines: usize,
    },
    /// Follows a service's logs: the reply is followed by a `log` line for each new line, in
    /// the order each stream was written, across rotations and restarts. Where to begin: at
    /// `cursor` (one stream), else at the first line stamped at or after `since_ms` (a log
    /// with timestamps), else `lines` lines before the end of the live file, else at the end.
    Follow {
        /// A name or an id.
        target: String,
        /// Which streams (default both).
        #[serde(default)]
        streams: Streams,
        /// How many lines before the end to begin with (default 0).
        #[serde(default)]
        lines: usize,
        /// A cursor a `log` line carried: resume just after that line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
        /// Begin at the first line stamped at or after this time (needs `log.timestamps`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_ms: Option<u64>,
    },
    /// Every event from now on (and first, what `open` reclaimed): the reply is followed by
    /// an `event` line for each.
    Subscribe,
}

fn default_limit() -> usize {
    20
}

fn all() -> String {
    "all".into()
}

/// Which of a service's output streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Streams {
    /// Standard output only.
    Stdout,
    /// Standard error only.
    Stderr,
    /// Both.
    #[default]
    Both,
}

impl Streams {
    /// The streams selected, stdout first.
    pub fn each(self) -> Vec<crate::Stream> {
        match self {
            Streams::Stdout => vec![crate::Stream::Stdout],
            Streams::Stderr => vec![crate::Stream::Stderr],
            Streams::Both => vec![crate::Stream::Stdout, crate::Stream::Stderr],
        }
    }
}

/// A message, host to client: `{"ok": …}`, `{"error": …}`, `{"log": …}`, `{"event": …}` or
/// `{"end": …}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    /// The request succeeded.
    Ok(Reply),
    /// The request failed.
    Error(ErrorReply),
    /// A line of a followed log.
    Log(LogLine),
    /// An event of a subscription.
    Event(Event),
    /// The stream is over.
    End(End),
}

/// What a request returned, named after it: `{"ok": {"<request>": …}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reply {
    /// The host, and the protocol version it speaks.
    Hello(Hello),
    /// Every service, by id.
    List(Vec<Service>),
    /// One service.
    Describe(Box<Service>),
    /// The services started (or left running), in the target's order.
    Start(Vec<Service>),
    /// How many services were stopped.
    Stop(usize),
    /// How many services were restarted.
    Restart(usize),
    /// How many services were deleted.
    Delete(usize),
    /// Runs, newest first.
    History(Vec<Run>),
    /// Why the service is in its status.
    Explain(Explanation),
    /// One entry per service of the target.
    Stats(Vec<Stats>),
    /// What the apply did.
    Apply(Applied),
    /// The last lines, stdout's first.
    Tail(Vec<LogLine>),
    /// The follow began; `log` lines come next.
    Follow(Following),
    /// The subscription began; `event` lines come next.
    Subscribe(Subscribed),
}

/// A failed request: `{"error": {"kind": "not_found", "service": "web", "message": "…"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The error's kind in snake case (`not_found`, `invalid_spec`, `shut_down`, `protocol`,
    /// `refused`, …): see [`ErrorKind`].
    pub kind: String,
    /// The service the error concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// One lowercase phrase naming the service and the cause.
    pub message: String,
}

impl ErrorReply {
    /// The wire form of an error.
    pub(crate) fn from_error(e: &Error) -> ErrorReply {
        ErrorReply {
            kind: kind_name(e.kind()).to_string(),
            service: e.service().map(str::to_string),
            message: e.to_string(),
        }
    }

    /// An error of the protocol itself.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            kind: kind_name(kind).to_string(),
            service: None,
            message: message.into(),
        }
    }

    /// The error, typed again. A kind this crate does not know is `Protocol`.
    pub fn to_error(&self) -> Error {
        let kind = kind_from_name(&self.kind).unwrap_or(ErrorKind::Protocol);
        let mut message = self.message.as_str();
        if let Some(service) = &self.service {
            let prefix = format!("service '{}': ", service.escape_debug());
            message = message.strip_prefix(&prefix).unwrap_or(message);
            return Error::new(kind, message).with_service(service);
        }
        Error::new(kind, message)
    }
}

/// The snake-case name of an error kind, as on the wire.
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "not_found",
        ErrorKind::InvalidSpec => "invalid_spec",
        ErrorKind::Spawn => "spawn",
        ErrorKind::InvalidInput => "invalid_input",
        ErrorKind::StateDirLocked => "state_dir_locked",
        ErrorKind::Store => "store",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Settled => "settled",
        ErrorKind::ShutDown => "shut_down",
        ErrorKind::Io => "io",
        ErrorKind::InUse => "in_use",
        ErrorKind::NotRunning => "not_running",
        ErrorKind::Refused => "refused",
        ErrorKind::Protocol => "protocol",
        ErrorKind::NotReady => "not_ready",
    }
}

fn kind_from_name(name: &str) -> Option<ErrorKind> {
    const KINDS: [ErrorKind; 15] = [
        ErrorKind::NotFound,
        ErrorKind::InvalidSpec,
        ErrorKind::Spawn,
        ErrorKind::InvalidInput,
        ErrorKind::StateDirLocked,
        ErrorKind::Store,
        ErrorKind::Timeout,
        ErrorKind::Settled,
        ErrorKind::ShutDown,
        ErrorKind::Io,
        ErrorKind::InUse,
        ErrorKind::NotRunning,
        ErrorKind::Refused,
        ErrorKind::Protocol,
        ErrorKind::NotReady,
    ];
    KINDS.into_iter().find(|k| kind_name(*k) == name)
}

/// The host that answered `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the host speaks ([`VERSION`]).
    pub protocol: u32,
    /// The host's sheepdog version.
    pub version: String,
    /// The host's pid (0 if the client cannot see its pid namespace).
    pub pid: u32,
    /// The state directory it serves.
    pub state_dir: String,
}

/// A service: the wire form of [`ServiceInfo`](crate::ServiceInfo).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Assigned at creation, never reused.
    pub id: u64,
    /// The name.
    pub name: String,
    /// The status: `starting`, `online`, `backoff`, `stopping`, `stopped`, `exited`, `errored`,
    /// `scheduled`.
    #[serde(with = "status")]
    pub status: crate::Status,
    /// The pid of the running process (its group's leader).
    pub pid: Option<u32>,
    /// Automatic restarts since the service was created.
    pub restarts: u64,
    /// When the current run started.
    pub started_at_ms: Option<u64>,
    /// How the last run ended.
    pub last_exit: Option<Exit>,
    /// In `backoff`, how long until the next start.
    pub next_start_in_ms: Option<u64>,
    /// Runs started since the host opened.
    pub generation: u64,
    /// Output dropped because the log could not be written.
    pub log_dropped_bytes: u64,
    /// The last `STATUS=` the service sent over `NOTIFY_SOCKET`.
    pub status_text: Option<String>,
    /// `NOTIFY_SOCKET` datagrams refused.
    pub notify_rejected: u64,
    /// When its schedule next restarts or runs it (milliseconds since the epoch), while the
    /// schedule is armed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scheduled_ms: Option<u64>,
    /// Whether the service is to be up: started and not since stopped. Only known from the
    /// registry (the host not running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_up: Option<bool>,
    /// The definition, as in a JSON fleet file.
    pub spec: ServiceSpec,
}

mod status {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(s: &crate::Status, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<crate::Status, D::Error> {
        let text = String::deserialize(d)?;
        crate::Status::from_str(&text)
            .ok_or_else(|| de::Error::custom(format!("unknown status '{text}'")))
    }
}

pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl From<&crate::ServiceInfo> for Service {
    fn from(info: &crate::ServiceInfo) -> Service {
        Service::from_info(info)
    }
}

impl From<&crate::Stats> for Stats {
    fn from(stats: &crate::Stats) -> Stats {
        Stats::from_stats(stats)
    }
}

impl Service {
    pub(crate) fn from_info(info: &crate::ServiceInfo) -> Service {
        let now = std::time::Instant::now();
        Service {
            id: info.id(),
            name: info.name().to_string(),
            status: info.status(),
            pid: info.pid(),
            restarts: info.restarts(),
            started_at_ms: info.started_at().map(millis),
            last_exit: info.last_exit().map(Exit::from_exit),
            next_start_in_ms: info
                .next_start()
                .map(|at| ms(at.saturating_duration_since(now))),
            generation: info.generation(),
            log_dropped_bytes: info.log_dropped_bytes(),
            status_text: info.status_text().map(str::to_string),
            notify_rejected: info.notify_rejected(),
            next_scheduled_ms: info.next_scheduled().map(millis),
            desired_up: None,
            spec: info.spec().clone(),
        }
    }
}

/// How a run ended: the wire form of [`Exit`](crate::Exit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When it ended.
    pub at_ms: u64,
    /// How long it ran.
    pub uptime_ms: u64,
    /// Why the supervisor ended it, when a check did.
    pub reason: Option<String>,
}

impl Exit {
    pub(crate) fn from_exit(e: &crate::Exit) -> Exit {
        Exit {
            code: e.code(),
            signal: e.signal(),
            at_ms: millis(e.at()),
            uptime_ms: ms(e.uptime()),
            reason: e.reason().map(str::to_string),
        }
    }
}

impl std::fmt::Display for Exit {
    /// As [`crate::Exit`] shows itself: `exit code 1 after 0.051s (unhealthy: …)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}")?,
            (None, Some(sig)) => write!(f, "killed by signal {sig}")?,
            (None, None) => f.write_str("unknown exit status")?,
        }
        write!(f, " after {:.3}s", self.uptime_ms as f64 / 1000.0)?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

/// A recorded run: the wire form of [`Run`](crate::Run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The run's id.
    pub id: i64,
    /// Its generation.
    pub generation: u64,
    /// Its main process (0: it could not be started).
    pub pid: u32,
    /// When it started.
    pub started_at_ms: u64,
    /// When it became ready.
    pub ready_at_ms: Option<u64>,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
    /// Its exit code.
    pub code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Why it ended: `exited`, `crashed`, `stopped`, `restarted`, `unhealthy`, `not ready`,
    /// `memory limit`, `out of memory`, `spawn failed`, `host died`.
    pub cause: Option<String>,
    /// The OS error of a failed spawn.
    pub errno: Option<i32>,
    /// Why a check ended it.
    pub reason: Option<String>,
    /// What the restart policy decided.
    pub decision: Option<String>,
    /// The delay before the restart the policy chose.
    pub restart_delay_ms: Option<u64>,
    /// User CPU time.
    pub user_cpu_ms: Option<u64>,
    /// System CPU time.
    pub system_cpu_ms: Option<u64>,
    /// Peak memory, from the run's memory cgroup.
    pub peak_memory_bytes: Option<u64>,
    /// The last lines of its stdout.
    pub last_stdout: String,
    /// The last lines of its stderr.
    pub last_stderr: String,
}

impl Run {
    pub(crate) fn from_run(r: &crate::Run) -> Run {
        let usage = r.usage();
        Run {
            id: r.id(),
            generation: r.generation(),
            pid: r.pid(),
            started_at_ms: millis(r.started_at()),
            ready_at_ms: r.ready_at().map(millis),
            ended_at_ms: r.ended_at().map(millis),
            code: r.code(),
            signal: r.signal(),
            cause: r.cause().map(|c| c.to_string()),
            errno: r.errno(),
            reason: r.reason().map(str::to_string),
            decision: r.decision().map(str::to_string),
            restart_delay_ms: r.restart_delay().map(ms),
            user_cpu_ms: usage.map(|u| ms(u.user_cpu())),
            system_cpu_ms: usage.map(|u| ms(u.system_cpu())),
            peak_memory_bytes: usage.and_then(|u| u.peak_memory_bytes()),
            last_stdout: r.last_stdout().to_string(),
            last_stderr: r.last_stderr().to_string(),
        }
    }
}

/// Why a service is in its status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The service.
    pub service: String,
    /// Its status.
    #[serde(with = "status")]
    pub status: crate::Status,
    /// Why, in words.
    pub text: String,
}

/// Resource use of a service: the wire form of [`Stats`](crate::Stats).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The service.
    pub name: String,
    /// Live processes of its run.
    pub processes: u32,
    /// Their threads.
    pub threads: u32,
    /// Their resident memory.
    pub rss_bytes: u64,
    /// CPU since the previous `stats` of this host's control socket (or since the run
    /// started), in percent of one core.
    pub cpu_percent: f64,
}

impl Stats {
    pub(crate) fn from_stats(s: &crate::Stats) -> Stats {
        Stats {
            name: s.name().to_string(),
            processes: s.processes(),
            threads: s.threads(),
            rss_bytes: s.rss_bytes(),
            cpu_percent: s.cpu_percent(),
        }
    }
}

/// What an apply did: the wire form of [`Applied`](crate::Applied).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// New services, started.
    pub started: Vec<String>,
    /// Services whose spec changed, restarted.
    pub restarted: Vec<String>,
    /// Services with instances whose number alone changed.
    #[serde(default)]
    pub scaled: Vec<String>,
    /// Services with `autostart = false`, defined or updated and not started.
    #[serde(default)]
    pub defined: Vec<String>,
    /// Services left as they were (started if they did not run).
    pub unchanged: Vec<String>,
    /// Services the fleet does not list, deleted (with `prune`).
    pub deleted: Vec<String>,
    /// Services that could not be started or deleted.
    pub failed: Vec<Failed>,
}

/// A service an apply could not start or delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// The service.
    pub name: String,
    /// Why.
    pub error: String,
}

impl Applied {
    pub(crate) fn from_applied(a: crate::Applied) -> Applied {
        Applied {
            started: a.started,
            restarted: a.restarted,
            scaled: a.scaled,
            defined: a.defined,
            unchanged: a.unchanged,
            deleted: a.deleted,
            failed: a
                .failed
                .into_iter()
                .map(|(name, error)| Failed { name, error })
                .collect(),
        }
    }
}

/// A line of a service's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The service.
    pub service: String,
    /// `stdout` or `stderr`.
    #[serde(with = "stream")]
    pub stream: crate::Stream,
    /// The line, without its newline, decoded as lossy UTF-8.
    pub text: String,
    /// Where the next line of this stream starts (`inode:offset`): `follow` from it to
    /// resume without losing or repeating a line. Only on followed lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

mod stream {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(s: &crate::Stream, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(match s {
            crate::Stream::Stdout => "stdout",
            crate::Stream::Stderr => "stderr",
        })
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<crate::Stream, D::Error> {
        match String::deserialize(d)?.as_str() {
            "stdout" => Ok(crate::Stream::Stdout),
            "stderr" => Ok(crate::Stream::Stderr),
            other => Err(de::Error::custom(format!("unknown stream '{other}'"))),
        }
    }
}

/// A follow began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Following {
    /// The service followed.
    pub service: String,
}

/// A subscription began.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {}

/// A stream is over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Why, as a lowercase phrase.
    pub reason: String,
}

/// An event: the wire form of [`Event`](crate::Event), `{"kind": "<event>", …fields}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A run started.
    Started {
        /// The service.
        service: String,
        /// Its new process.
        pid: u32,
    },
    /// A run ended.
    Exited {
        /// The service.
        service: String,
        /// The process that ended.
        pid: u32,
        /// How.
        exit: Exit,
    },
    /// The restart policy will restart the service after `delay_ms`.
    Restarting {
        /// The service.
        service: String,
        /// What ended the run.
        reason: String,
        /// The delay.
        delay_ms: u64,
    },
    /// The service waits `delay_ms` before its restart.
    Backoff {
        /// The service.
        service: String,
        /// The delay.
        delay_ms: u64,
    },
    /// An operator's stop completed.
    Stopped {
        /// The service.
        service: String,
    },
    /// The service gave up.
    Errored {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// The service became ready.
    Ready {
        /// The service.
        service: String,
    },
    /// The service failed its liveness check and is restarted.
    Unhealthy {
        /// The service.
        service: String,
        /// The last failure.
        reason: String,
    },
    /// A rolling reload stopped at this service: its new run did not become ready; the
    /// services after it were left as they were.
    ReloadFailed {
        /// The service.
        service: String,
        /// Why, and what was left as it was.
        reason: String,
    },
    /// The service was deleted.
    Deleted {
        /// The service.
        service: String,
    },
    /// The service's output could not be written to its log.
    LogError {
        /// The service.
        service: String,
        /// What failed.
        error: String,
    },
    /// The host's `open` killed what a dead previous host left of the service.
    Reclaimed {
        /// The service.
        service: String,
        /// The processes killed.
        pids: Vec<u32>,
    },
    /// The state directory was lost under the host: changes can no longer be stored.
    StateDirLost {
        /// What happened.
        error: String,
    },
    /// This subscription fell behind: `missed` events were dropped for it.
    Lagged {
        /// How many.
        missed: u64,
    },
}

impl Event {
    pub(crate) fn from_event(e: crate::Event) -> Event {
        use crate::Event as E;
        match e {
            E::Started { name, pid } => Event::Started { service: name, pid },
            E::Exited { name, pid, exit } => Event::Exited {
                service: name,
                pid,
                exit: Exit::from_exit(&exit),
            },
            E::Restarting {
                name,
                reason,
                delay,
            } => Event::Restarting {
                service: name,
                reason,
                delay_ms: ms(delay),
            },
            E::Backoff { name, delay } => Event::Backoff {
                service: name,
                delay_ms: ms(delay),
            },
            E::Stopped { name } => Event::Stopped { service: name },
            E::Errored { name, reason } => Event::Errored {
                service: name,
                reason,
            },
            E::Ready { name } => Event::Ready { service: name },
            E::Unhealthy { name, reason } => Event::Unhealthy {
                service: name,
                reason,
            },
            E::ReloadFailed { name, reason } => Event::ReloadFailed {
                service: name,
                reason,
            },
            E::Deleted { name } => Event::Deleted { service: name },
            E::LogError { name, error } => Event::LogError {
                service: name,
                error,
            },
            E::Reclaimed { name, pids } => Event::Reclaimed {
                service: name,
                pids,
            },
            E::StateDirLost { error } => Event::StateDirLost { error },
            E::Lagged { missed } => Event::Lagged { missed },
        }
    }

    /// The service the event is about, if one.
    pub fn service(&self) -> Option<&str> {
        match self {
            Event::Started { service, .. }
            | Event::Exited { service, .. }
            | Event::Restarting { service, .. }
            | Event::Backoff { service, .. }
            | Event::Stopped { service }
            | Event::Errored { service, .. }
            | Event::Ready { service }
            | Event::Unhealthy { service, .. }
            | Event::ReloadFailed { service, .. }
            | Event::Deleted { service }
            | Event::LogError { service, .. }
            | Event::Reclaimed { service, .. } => Some(service),
            Event::StateDirLost { .. } | Event::Lagged { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_with_their_defaults() {
        let r: Request = serde_json::from_str(r#"{"request":"history","target":"web"}"#).unwrap();
        assert_eq!(
            r,
            Request::History {
                target: "web".into(),
                limit: 20
            }
        );
        let r: Request = serde_json::from_str(r#"{"request":"stats"}"#).unwrap();
        assert_eq!(
            r,
            Request::Stats {
                target: "all".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"request":"reboot"}"#).is_err());
    }

    #[test]
    fn every_error_kind_round_trips() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::InUse,
            ErrorKind::NotRunning,
            ErrorKind::Refused,
            ErrorKind::Protocol,
        ] {
            assert_eq!(kind_from_name(kind_name(kind)), Some(kind));
        }
        let e = Error::new(ErrorKind::NotFound, "not found").with_service("web");
        let wire = ErrorReply::from_error(&e);
        assert_eq!(wire.message, "service 'web': not found");
        let back = wire.to_error();
        assert_eq!(back.to_string(), e.to_string());
        assert_eq!(back.kind(), ErrorKind::NotFound);
        assert_eq!(back.service(), Some("web"));
    }

    #[test]
    fn events_carry_their_kind() {
        let e = Event::from_event(crate::Event::Backoff {
            name: "web".into(),
            delay: Duration::from_millis(1500),
        });
        assert_eq!(
            serde_json::to_string(&Response::Event(e)).unwrap(),
            r#"{"event":{"kind":"backoff","service":"web","delay_ms":1500}}"#
        );
    }
}
