//! [`ServiceSpec`]: what to run and how to keep it running, as a `Command`-shaped builder.

use crate::error::{Error, ErrorKind, Result};
use crate::policy::RestartPolicy;
use crate::readiness::{Check, Condition, Dependency, Health, Ready};
use crate::rlimit::{Limit, Resource};
use crate::signal::Signal;
use crate::trigger::{Schedule, Watch, Watchdog};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::Duration;

/// The shortest health-check interval: a check is a probe (a connection, a process), and
/// running them back to back would only burn CPU.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);

/// The longest service name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// The most instances of one service.
pub(crate) const MAX_INSTANCES: u32 = 1000;

/// The variable that holds an instance's index, unless the spec names another.
pub(crate) const DEFAULT_INSTANCE_VAR: &str = "SHEEPDOG_INSTANCE";

/// The largest `pids.max` the kernel takes (`PID_MAX_LIMIT` on 64-bit Linux): no more
/// processes than that can exist at once anyway.
const MAX_PIDS_LIMIT: u64 = 4 << 20;

/// A service: the program to run, its arguments and environment, and how to restart and stop it.
///
/// Built by value like [`std::process::Command`]; compared by value; serialized with serde
/// (durations as `"500ms"`, `"10s"`). Validation happens at
/// [`Supervisor::start`](crate::Supervisor::start), which reports the rule a spec breaks.
///
/// # Example
///
/// ```
/// use sheepdog::{RestartPolicy, ServiceSpec, Signal};
/// use std::time::Duration;
///
/// let web = ServiceSpec::new("web", "python3")
///     .args(["-m", "http.server", "8080"])
///     .env("PYTHONUNBUFFERED", "1")
///     .current_dir("/tmp")
///     .restart(RestartPolicy::on_failure())
///     .stop_signal(Signal::Int)
///     .stop_timeout(Duration::from_secs(3));
/// assert_eq!(web.name(), "web");
/// assert_eq!(web.get_args(), ["-m", "http.server", "8080"]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    name: String,
    #[serde(with = "crate::os_value::one")]
    program: OsString,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::os_value::list"
    )]
    args: Vec<OsString>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "crate::os_value::env"
    )]
    env: BTreeMap<OsString, OsString>,
    #[serde(
        default,
        skip_serializing_if = "BTreeSet::is_empty",
        with = "crate::os_value::keys"
    )]
    env_remove: BTreeSet<OsString>,
    #[serde(default, skip_serializing_if = "is_false")]
    env_clear: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::os_value::opt"
    )]
    env_file: Option<OsString>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::os_value::opt"
    )]
    current_dir: Option<OsString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::rlimit::umask"
    )]
    umask: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    limits: BTreeMap<Resource, Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nice: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oom_score_adj: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance_var: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    oneshot: bool,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    autostart: bool,
    #[serde(default)]
    restart: RestartPolicy,
    #[serde(default = "default_stop_signal")]
    stop_signal: Signal,
    #[serde(default = "default_stop_timeout", with = "crate::duration::serde_str")]
    stop_timeout: Duration,
    #[serde(default)]
    log: LogPolicy,
    #[serde(default, skip_serializing_if = "is_immediately")]
    ready: Ready,
    #[serde(default = "default_ready_timeout", with = "crate::duration::serde_str")]
    ready_timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<Health>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    after: Vec<Dependency>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    restart_with: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::size::opt_bytes"
    )]
    max_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    watch: Option<Watch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    watchdog: Option<Watchdog>,
}

fn is_immediately(r: &Ready) -> bool {
    *r == Ready::Immediately
}

fn default_ready_timeout() -> Duration {
    Duration::from_secs(30)
}

/// How a service's output is stored: rotation, timestamps, streams, line cap.
///
/// Defaults: rotate at 10 MiB, keep 5 rotated files, no timestamps, stdout and stderr in
/// separate files, lines capped at 64 KiB (a longer line is split, with the marker
/// ` [sheepdog: line split]` before the inserted newline).
///
/// # Example
///
/// ```
/// use sheepdog::{LogPolicy, ServiceSpec};
///
/// let spec = ServiceSpec::new("chatty", "sh")
///     .args(["-c", "while :; do date; done"])
///     .log(LogPolicy::default().max_bytes(1 << 20).keep(3).timestamps(true));
/// assert_eq!(spec.log_policy().get_keep(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogPolicy {
    #[serde(deserialize_with = "crate::size::bytes")]
    max_bytes: u64,
    keep: u32,
    timestamps: bool,
    merge_stderr: bool,
    #[serde(deserialize_with = "crate::size::bytes_usize")]
    line_max: usize,
    tail_lines: usize,
    #[serde(deserialize_with = "crate::size::bytes_usize")]
    tail_bytes: usize,
}

/// The most output of one stream a run record keeps.
pub(crate) const TAIL_BYTES_MAX: usize = 64 << 10;

impl Default for LogPolicy {
    fn default() -> LogPolicy {
        LogPolicy {
            max_bytes: 10 << 20,
            keep: 5,
            timestamps: false,
            merge_stderr: false,
            line_max: 64 << 10,
            tail_lines: 20,
            tail_bytes: 4 << 10,
        }
    }
}

impl LogPolicy {
    /// Rotates a log file once it would grow past `bytes` (at a line boundary when one is
    /// within the line cap). 0 never rotates. By default, 10 MiB.
    pub fn max_bytes(mut self, bytes: u64) -> LogPolicy {
        self.max_bytes = bytes;
        self
    }

    /// How many rotated files (`.1` to `.k`) to keep; the oldest is removed. By default, 5.
    pub fn keep(mut self, k: u32) -> LogPolicy {
        self.keep = k;
        self
    }

    /// Prefixes each line with the RFC 3339 UTC time (milliseconds) at which it was read.
    /// By default, this is disabled: the log holds the bytes exactly as written.
    pub fn timestamps(mut self, yes: bool) -> LogPolicy {
        self.timestamps = yes;
        self
    }

    /// Sends stderr into the stdout log, in the order the service wrote them. By default,
    /// this is disabled.
    pub fn merge_stderr(mut self, yes: bool) -> LogPolicy {
        self.merge_stderr = yes;
        self
    }

    /// The longest line kept whole; a longer one is split with a marker. At least 64 bytes.
    /// By default, 64 KiB.
    pub fn line_max(mut self, bytes: usize) -> LogPolicy {
        self.line_max = bytes;
        self
    }

    /// How much of each stream's end the run history keeps ([`Run::last_stdout`]): the last
    /// `lines` lines, cut to the last `bytes` bytes (at most 64 KiB). `tail(0, 0)` keeps
    /// nothing. By default, 20 lines and 4 KiB.
    ///
    /// [`Run::last_stdout`]: crate::Run::last_stdout
    pub fn tail(mut self, lines: usize, bytes: usize) -> LogPolicy {
        self.tail_lines = lines;
        self.tail_bytes = bytes;
        self
    }

    /// The lines kept per stream in the run history.
    pub fn get_tail_lines(&self) -> usize {
        self.tail_lines
    }

    /// The bytes kept per stream in the run history.
    pub fn get_tail_bytes(&self) -> usize {
        self.tail_bytes
    }

    /// The rotation size (0: never).
    pub fn get_max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The number of rotated files kept.
    pub fn get_keep(&self) -> u32 {
        self.keep
    }

    /// Whether lines get a timestamp.
    pub fn get_timestamps(&self) -> bool {
        self.timestamps
    }

    /// Whether stderr goes into the stdout log.
    pub fn get_merge_stderr(&self) -> bool {
        self.merge_stderr
    }

    /// The line cap in bytes.
    pub fn get_line_max(&self) -> usize {
        self.line_max
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

fn default_stop_signal() -> Signal {
    Signal::Term
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(5)
}

impl ServiceSpec {
    /// A service called `name` that runs `program`. A program without a `/` is looked up on
    /// `PATH` (the spec's own `PATH` if it sets one) when the service starts.
    ///
    /// Like [`std::process::Command`], the program, arguments, environment and working
    /// directory are OS strings: any bytes but NUL, UTF-8 or not. A spec is stored as JSON,
    /// so a value that is not UTF-8 is written as `{ "hex": "…" }` (its bytes in hex) and an
    /// environment key that is not UTF-8 as `"=hex:…"`; UTF-8 values are plain strings.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::ServiceSpec;
    /// use std::ffi::OsString;
    /// use std::os::unix::ffi::OsStringExt;
    /// use std::path::PathBuf;
    ///
    /// let name = OsString::from_vec(b"caf\xe9.txt".to_vec()); // Latin-1, not UTF-8
    /// let spec = ServiceSpec::new("touch", PathBuf::from("/usr/bin/touch"))
    ///     .arg(&name)
    ///     .current_dir(PathBuf::from("/tmp"));
    /// assert_eq!(spec.get_args(), [name]);
    /// assert_eq!(spec.get_current_dir(), Some(std::path::Path::new("/tmp")));
    /// ```
    pub fn new(name: impl Into<String>, program: impl AsRef<OsStr>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: BTreeMap::new(),
            env_remove: BTreeSet::new(),
            env_clear: false,
            env_file: None,
            current_dir: None,
            user: None,
            group: None,
            umask: None,
            limits: BTreeMap::new(),
            nice: None,
            oom_score_adj: None,
            instances: None,
            instance_var: None,
            oneshot: false,
            autostart: true,
            restart: RestartPolicy::default(),
            stop_signal: default_stop_signal(),
            stop_timeout: default_stop_timeout(),
            log: LogPolicy::default(),
            ready: Ready::Immediately,
            ready_timeout: default_ready_timeout(),
            health: None,
            after: Vec::new(),
            restart_with: Vec::new(),
            max_memory: None,
            max_pids: None,
            schedule: None,
            watch: None,
            watchdog: None,
        }
    }

    /// Adds an argument. With [`instances`](Self::instances), `{instance}` in it becomes the
    /// instance's index and `{instance+N}` the index plus `N` (a port per instance:
    /// `"--port={instance+8000}"`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> ServiceSpec {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> ServiceSpec
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable. The service's environment is the host's, with the
    /// variables of its [`env_file`](Self::env_file) and then these applied, and
    /// `SHEEPDOG_RUN` set to the run's marker (containment finds a service's processes by it;
    /// a value set here is replaced). With [`instances`](Self::instances), `{instance}` in a
    /// value becomes the instance's index, as in [`arg`](Self::arg).
    ///
    /// The host's environment (and the env file) is read when a call starts the service
    /// (`start`, `restart`, `reload`); restarts by the restart policy reuse what that call
    /// read.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> ServiceSpec {
        let key = key.as_ref().to_os_string();
        self.env_remove.remove(&key);
        self.env.insert(key, value.as_ref().to_os_string());
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> ServiceSpec
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Removes a variable from the inherited environment (and any set by [`env`](Self::env)).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> ServiceSpec {
        let key = key.as_ref().to_os_string();
        self.env.remove(&key);
        self.env_remove.insert(key);
        self
    }

    /// Starts from an empty environment instead of the host's; variables set with
    /// [`env`](Self::env) are still passed.
    pub fn env_clear(mut self) -> ServiceSpec {
        self.env_clear = true;
        self.env_remove.clear();
        self
    }

    /// Reads variables from a dotenv file (`KEY=value` lines, `#` comments, an optional
    /// `export`, single or double quotes; the parser of [`Fleet::from_procfile`]'s `.env`)
    /// whenever a call starts the service. They come over the host's environment and under
    /// the variables set with [`env`](Self::env). A relative path is taken from the
    /// service's [`current_dir`](Self::current_dir), else the host's; a fleet file's is
    /// taken from the file's directory. A file that cannot be read or parsed fails the start
    /// with a `Spawn` error naming it (and the line). By default, none.
    ///
    /// [`Fleet::from_procfile`]: crate::Fleet::from_procfile
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::ServiceSpec;
    /// use std::path::{Path, PathBuf};
    ///
    /// let spec = ServiceSpec::new("web", "./serve")
    ///     .current_dir(PathBuf::from("/srv/web"))
    ///     .env_file("web.env"); // /srv/web/web.env, read at each start
    /// assert_eq!(spec.get_env_file(), Some(Path::new("web.env")));
    /// ```
    pub fn env_file(mut self, path: impl AsRef<Path>) -> ServiceSpec {
        self.env_file = Some(path.as_ref().as_os_str().to_os_string());
        self
    }

    /// The working directory of the service. By default, the host's. With
    /// [`user`](Self::user), it is entered as that user.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> ServiceSpec {
        self.current_dir = Some(dir.as_ref().as_os_str().to_os_string());
        self
    }

    /// Runs the service as `user`: a name, or a numeric uid. The new process takes the
    /// user's uid, its primary group (unless [`group`](Self::group) is set) and its
    /// supplementary groups (as `initgroups` finds them), and `HOME`, `USER`, `LOGNAME` and
    /// `SHELL` from its passwd entry, unless the spec sets them. A numeric uid without a
    /// passwd entry needs [`group`](Self::group) and gets no supplementary groups.
    ///
    /// Switching needs a privileged host: root, or `CAP_SETUID` and `CAP_SETGID`. A host
    /// without them gets a `Spawn` error that says so; a user or group that does not exist,
    /// a `Spawn` error naming it. The user is looked up (through NSS) when a call starts the
    /// service, not at each restart. The service's log files stay the supervisor's: the
    /// service writes into pipes the supervisor reads. By default, the service runs as the
    /// host does.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::ServiceSpec;
    ///
    /// let spec = ServiceSpec::new("cache", "memcached").user("nobody").group("nogroup");
    /// assert_eq!(spec.get_user(), Some("nobody"));
    /// ```
    pub fn user(mut self, user: impl Into<String>) -> ServiceSpec {
        self.user = Some(user.into());
        self
    }

    /// Runs the service with `group` (a name or a numeric gid) as its primary group; with
    /// [`user`](Self::user), its supplementary groups are the user's. Without `user`, the
    /// service keeps the host's uid and has no supplementary groups. Needs the privileges
    /// [`user`](Self::user) needs. By default, the user's primary group (or the host's).
    pub fn group(mut self, group: impl Into<String>) -> ServiceSpec {
        self.group = Some(group.into());
        self
    }

    /// The file mode creation mask of the service's processes (`umask(2)`), such as `0o027`.
    /// In files, a string of octal digits (`umask = "027"`). By default, the host's.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::ServiceSpec;
    ///
    /// let spec = ServiceSpec::new("batch", "./crunch")
    ///     .umask(0o027)
    ///     .nice(10)
    ///     .oom_score_adj(500);
    /// assert_eq!(spec.get_umask(), Some(0o027));
    /// assert_eq!((spec.get_nice(), spec.get_oom_score_adj()), (Some(10), Some(500)));
    /// ```
    pub fn umask(mut self, mask: u32) -> ServiceSpec {
        self.umask = Some(mask);
        self
    }

    /// Limits `resource` for the service's processes: `soft` is what they get, `hard` how
    /// far they may raise it themselves ([`UNLIMITED`](crate::UNLIMITED) for no limit).
    /// Raising a hard limit above the host's needs root (`CAP_SYS_RESOURCE`); a limit the
    /// kernel refuses fails the start with a `Spawn` error naming the resource. By default,
    /// the host's limits are inherited.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Resource, ServiceSpec, UNLIMITED};
    ///
    /// let spec = ServiceSpec::new("db", "postgres")
    ///     .limit(Resource::OpenFiles, 4096, 8192)
    ///     .limit(Resource::CoreSize, 0, UNLIMITED);
    /// assert_eq!(spec.get_limit(Resource::OpenFiles), Some((4096, 8192)));
    /// ```
    pub fn limit(mut self, resource: Resource, soft: u64, hard: u64) -> ServiceSpec {
        self.limits.insert(resource, Limit { soft, hard });
        self
    }

    /// The scheduling priority of the service's processes, from -20 (highest) to 19
    /// (lowest). A value below the host's own needs root (`CAP_SYS_NICE`). By default, the
    /// host's.
    pub fn nice(mut self, nice: i32) -> ServiceSpec {
        self.nice = Some(nice);
        self
    }

    /// How eagerly the kernel's OOM killer picks the service's processes, from -1000
    /// (never) to 1000 (first). A value below the host's own needs root
    /// (`CAP_SYS_RESOURCE`). By default, the host's.
    pub fn oom_score_adj(mut self, adj: i32) -> ServiceSpec {
        self.oom_score_adj = Some(adj);
        self
    }

    /// Runs `n` instances of the service (PM2's `instances`, supervisord's `numprocs`), named
    /// `<name>.0` to `<name>.<n-1>`. Each is a service of its own in `list`, `describe`,
    /// `history` and the logs (`<name>.<k>.out.log`), with its own run, restart policy and
    /// crash-loop limit; the service's name addresses all of them, `<name>.<k>` one. Each
    /// gets its index in [`instance_var`](Self::instance_var), and `{instance}` in its
    /// arguments and environment values becomes its index (see [`arg`](Self::arg)).
    /// [`Supervisor::scale`](crate::Supervisor::scale) changes `n` while they run;
    /// [`Supervisor::reload`](crate::Supervisor::reload) restarts them one at a time. `n` is
    /// from 1 to 1000. By default, one service named `<name>`, without an index.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::ServiceSpec;
    ///
    /// let web = ServiceSpec::new("web", "python3")
    ///     .args(["-m", "http.server", "{instance+8000}"])
    ///     .instances(4);
    /// assert_eq!(web.get_instances(), Some(4));
    /// ```
    pub fn instances(mut self, n: u32) -> ServiceSpec {
        self.instances = Some(n);
        self
    }

    /// The environment variable that holds an instance's index (PM2's `instance_var`). By
    /// default, `SHEEPDOG_INSTANCE`.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::ServiceSpec;
    ///
    /// let app = ServiceSpec::new("app", "node")
    ///     .arg("app.js")
    ///     .instances(2)
    ///     .instance_var("NODE_APP_INSTANCE"); // 0 in app.0, 1 in app.1
    /// assert_eq!(app.get_instance_var(), "NODE_APP_INSTANCE");
    /// ```
    pub fn instance_var(mut self, key: impl Into<String>) -> ServiceSpec {
        self.instance_var = Some(key.into());
        self
    }

    /// Makes the service a one-shot task: an exit with a success code (0, or the policy's
    /// [`success_codes`](RestartPolicy::success_codes)) means it is done (`Exited`, never
    /// restarted, whatever its policy); any other end is handled by its restart policy. It
    /// is `Starting` while it runs and never `Online`; dependents wait for it with
    /// [`Condition::Exited0`]. A one-shot task takes no [`ready`](Self::ready) condition and
    /// no [`health`](Self::health) check. By default, a service is long-running.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Condition, ServiceSpec};
    ///
    /// let migrate = ServiceSpec::new("migrate", "./manage.py").arg("migrate").oneshot(true);
    /// let web = ServiceSpec::new("web", "./serve").after("migrate", Condition::Exited0);
    /// assert!(migrate.is_oneshot());
    /// ```
    pub fn oneshot(mut self, yes: bool) -> ServiceSpec {
        self.oneshot = yes;
        self
    }

    /// Whether [`Supervisor::apply`](crate::Supervisor::apply) starts the service when it
    /// defines it (supervisord's `autostart`). With `false`, a new service is only defined:
    /// stopped, with its desired state down, until started by name
    /// ([`Supervisor::start_target`](crate::Supervisor::start_target)). A direct
    /// [`Supervisor::start`](crate::Supervisor::start) starts it anyway; see also
    /// [`Supervisor::define`](crate::Supervisor::define). By default, this is enabled.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Fleet, Prune, ServiceSpec, Supervisor};
    /// # fn main() -> sheepdog::Result<()> {
    /// let sup = Supervisor::temporary()?;
    /// let fleet = Fleet::new([ServiceSpec::new("manual", "sleep").arg("30").autostart(false)]);
    /// assert_eq!(sup.apply(&fleet, Prune::Yes)?.defined, ["manual"]);
    /// assert!(!sup.describe("manual")?.desired_up());
    /// # sup.shutdown()?; Ok(()) }
    /// ```
    pub fn autostart(mut self, yes: bool) -> ServiceSpec {
        self.autostart = yes;
        self
    }

    /// The restart policy. By default, [`RestartPolicy::always`].
    pub fn restart(mut self, policy: RestartPolicy) -> ServiceSpec {
        self.restart = policy;
        self
    }

    /// The signal sent to the service's process group to stop it. By default, [`Signal::Term`].
    pub fn stop_signal(mut self, signal: Signal) -> ServiceSpec {
        self.stop_signal = signal;
        self
    }

    /// How long a stop waits after the stop signal before it kills the whole process group
    /// with `SIGKILL`. By default, 5 s.
    pub fn stop_timeout(mut self, timeout: Duration) -> ServiceSpec {
        self.stop_timeout = timeout;
        self
    }

    /// How the service's output is stored. By default, [`LogPolicy::default`].
    pub fn log(mut self, policy: LogPolicy) -> ServiceSpec {
        self.log = policy;
        self
    }

    /// The log policy.
    pub fn log_policy(&self) -> &LogPolicy {
        &self.log
    }

    /// When the service counts as ready. By default, [`Ready::Immediately`].
    pub fn ready(mut self, ready: Ready) -> ServiceSpec {
        self.ready = ready;
        self
    }

    /// How long a start may take to become ready; past it the start failed and counts as a
    /// crash. By default, 30 s.
    pub fn ready_timeout(mut self, timeout: Duration) -> ServiceSpec {
        self.ready_timeout = timeout;
        self
    }

    /// A liveness check while the service runs. By default, none.
    pub fn health(mut self, health: Health) -> ServiceSpec {
        self.health = Some(health);
        self
    }

    /// Starts this service only once `name` meets `condition`. The dependency must exist
    /// when this service is started; a cycle is refused.
    pub fn after(mut self, name: impl Into<String>, condition: Condition) -> ServiceSpec {
        let name = name.into();
        self.after.retain(|d| d.name != name);
        self.after.push(Dependency { name, condition });
        self
    }

    /// Restarts this service whenever `name` is restarted by the operator. By default, a
    /// restart of a dependency leaves its dependents alone. `name` must be a valid service
    /// name (see [`after`](Self::after)).
    pub fn restart_with(mut self, name: impl Into<String>) -> ServiceSpec {
        let name = name.into();
        if !self.restart_with.contains(&name) {
            self.restart_with.push(name);
        }
        self
    }

    /// Restarts the service (through its restart policy, reason `memory limit`) when the
    /// resident memory of its whole process group (and cgroup) stays above `bytes` for two
    /// consecutive samples. Sampling (every second by default, see
    /// [`Builder::memory_sample_interval`](crate::Builder::memory_sample_interval)) runs only
    /// while some running service sets a limit. By default, no limit.
    ///
    /// With cgroup containment and a memory controller, the kernel also enforces the limit
    /// (`memory.max`, or `memory.limit_in_bytes` on a v1 hierarchy): a run that reaches it is
    /// OOM-killed, and its history records [`Cause::OutOfMemory`](crate::Cause::OutOfMemory).
    /// 0 is `InvalidSpec`; a limit larger than the kernel can count is the kernel's largest.
    pub fn max_memory(mut self, bytes: u64) -> ServiceSpec {
        self.max_memory = Some(bytes);
        self
    }

    /// The memory limit, if any.
    pub fn get_max_memory(&self) -> Option<u64> {
        self.max_memory
    }

    /// Caps the number of processes (and threads) the service may have at once, through the
    /// `pids` cgroup controller: a fork bomb gets `EAGAIN` from `fork` instead of taking the
    /// host down. Needs cgroup containment with a `pids` controller (v2, or v1 beside it); a
    /// supervisor without one refuses the service with an `InvalidSpec` error rather than
    /// run it unlimited. `n` is from 1 to 4194304 (the kernel's limit); others are
    /// `InvalidSpec`. By default, no cap.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::ServiceSpec;
    ///
    /// let spec = ServiceSpec::new("workers", "sh").args(["-c", "exec ./pool"]).max_pids(64);
    /// assert_eq!(spec.get_max_pids(), Some(64));
    /// ```
    pub fn max_pids(mut self, n: u64) -> ServiceSpec {
        self.max_pids = Some(n);
        self
    }

    /// The process cap, if any.
    pub fn get_max_pids(&self) -> Option<u64> {
        self.max_pids
    }

    /// The same spec under another name (an importer names a spec once it built it).
    pub(crate) fn renamed(mut self, name: String) -> ServiceSpec {
        self.name = name;
        self
    }

    /// Restarts the service, or runs it as a job, on a cron schedule (see [`Schedule`]). By
    /// default, none.
    pub fn schedule(mut self, schedule: Schedule) -> ServiceSpec {
        self.schedule = Some(schedule);
        self
    }

    /// The schedule, if any.
    pub fn get_schedule(&self) -> Option<&Schedule> {
        self.schedule.as_ref()
    }

    /// Restarts the service when files change (see [`Watch`]). By default, none.
    pub fn watch(mut self, watch: Watch) -> ServiceSpec {
        self.watch = Some(watch);
        self
    }

    /// The watch, if any.
    pub fn get_watch(&self) -> Option<&Watch> {
        self.watch.as_ref()
    }

    /// Restarts the service when its output stops or matches a pattern (see [`Watchdog`]).
    /// By default, none.
    pub fn watchdog(mut self, watchdog: Watchdog) -> ServiceSpec {
        self.watchdog = Some(watchdog);
        self
    }

    /// The output watchdog, if any.
    pub fn get_watchdog(&self) -> Option<&Watchdog> {
        self.watchdog.as_ref()
    }

    /// The readiness condition.
    pub fn get_ready(&self) -> &Ready {
        &self.ready
    }

    /// The ready timeout.
    pub fn get_ready_timeout(&self) -> Duration {
        self.ready_timeout
    }

    /// The liveness check, if any.
    pub fn get_health(&self) -> Option<&Health> {
        self.health.as_ref()
    }

    /// The dependencies.
    pub fn get_after(&self) -> &[Dependency] {
        &self.after
    }

    /// The services whose restart restarts this one.
    pub fn get_restart_with(&self) -> &[String] {
        &self.restart_with
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The program, as given.
    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// The arguments.
    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    /// The environment variables set by the spec.
    pub fn get_envs(&self) -> impl Iterator<Item = (&OsStr, &OsStr)> {
        self.env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str()))
    }

    /// The variables removed from the inherited environment.
    pub fn get_env_removed(&self) -> impl Iterator<Item = &OsStr> {
        self.env_remove.iter().map(OsString::as_os_str)
    }

    /// Whether the inherited environment is cleared.
    pub fn get_env_clear(&self) -> bool {
        self.env_clear
    }

    /// The env file, if set.
    pub fn get_env_file(&self) -> Option<&Path> {
        self.env_file.as_deref().map(Path::new)
    }

    /// The working directory, if set.
    pub fn get_current_dir(&self) -> Option<&Path> {
        self.current_dir.as_deref().map(Path::new)
    }

    /// The user the service runs as, if set.
    pub fn get_user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The group the service runs with, if set.
    pub fn get_group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// The file mode creation mask, if set.
    pub fn get_umask(&self) -> Option<u32> {
        self.umask
    }

    /// The soft and hard limit of `resource`, if set.
    pub fn get_limit(&self, resource: Resource) -> Option<(u64, u64)> {
        self.limits.get(&resource).map(|l| (l.soft, l.hard))
    }

    /// Every resource limit set: (resource, soft, hard).
    pub fn get_limits(&self) -> impl Iterator<Item = (Resource, u64, u64)> + '_ {
        self.limits.iter().map(|(r, l)| (*r, l.soft, l.hard))
    }

    /// The nice value, if set.
    pub fn get_nice(&self) -> Option<i32> {
        self.nice
    }

    /// The OOM score adjustment, if set.
    pub fn get_oom_score_adj(&self) -> Option<i32> {
        self.oom_score_adj
    }

    /// The number of instances, if set (`None`: one service, without an index).
    pub fn get_instances(&self) -> Option<u32> {
        self.instances
    }

    /// The variable that holds an instance's index.
    pub fn get_instance_var(&self) -> &str {
        self.instance_var.as_deref().unwrap_or(DEFAULT_INSTANCE_VAR)
    }

    /// Whether the service is a one-shot task.
    pub fn is_oneshot(&self) -> bool {
        self.oneshot
    }

    /// Whether `apply` starts the service when it defines it.
    pub fn get_autostart(&self) -> bool {
        self.autostart
    }

    /// The name of instance `k` of this service: `<name>.<k>` when it has instances, else
    /// the name itself.
    pub(crate) fn instance_name(&self, instance: Option<u32>) -> String {
        match instance {
            Some(k) => format!("{}.{k}", self.name),
            None => self.name.clone(),
        }
    }

    /// The indexes of its instances: `[None]` for a service without instances.
    pub(crate) fn instance_indexes(&self) -> Vec<Option<u32>> {
        match self.instances {
            Some(n) => (0..n).map(Some).collect(),
            None => vec![None],
        }
    }

    /// Whether a run of `other` is the same as a run of this spec: equal but for the
    /// number of instances and `autostart`, which change what exists, not what runs.
    pub(crate) fn same_run(&self, other: &ServiceSpec) -> bool {
        let strip = |s: &ServiceSpec| ServiceSpec {
            instances: s.instances.map(|_| 1),
            autostart: true,
            ..s.clone()
        };
        strip(self) == strip(other)
    }

    /// This spec with `n` instances.
    pub(crate) fn with_instances(&self, n: u32) -> ServiceSpec {
        ServiceSpec {
            instances: Some(n),
            ..self.clone()
        }
    }

    /// The restart policy.
    pub fn restart_policy(&self) -> &RestartPolicy {
        &self.restart
    }

    /// The stop signal.
    pub fn get_stop_signal(&self) -> Signal {
        self.stop_signal
    }

    /// The stop timeout.
    pub fn get_stop_timeout(&self) -> Duration {
        self.stop_timeout
    }

    /// Checks every rule a spec must meet before anything is stored or spawned.
    pub(crate) fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        let invalid =
            |msg: String| Err(Error::new(ErrorKind::InvalidSpec, msg).with_service(&self.name));
        if self.program.is_empty() {
            return invalid("invalid spec: the program is empty".into());
        }
        if has_nul(&self.program) {
            return invalid("invalid spec: the program contains a NUL byte".into());
        }
        if let Some(i) = self.args.iter().position(|a| has_nul(a)) {
            return invalid(format!(
                "invalid spec: argument {} contains a NUL byte",
                i + 1
            ));
        }
        for (key, value) in &self.env {
            if let Some(why) = env_key_problem(key) {
                return invalid(format!(
                    "invalid spec: environment key '{}' {why}",
                    key.to_string_lossy().escape_debug()
                ));
            }
            if has_nul(value) {
                return invalid(format!(
                    "invalid spec: the value of environment variable '{}' contains a NUL byte",
                    key.to_string_lossy()
                ));
            }
        }
        for key in &self.env_remove {
            if let Some(why) = env_key_problem(key) {
                return invalid(format!(
                    "invalid spec: environment key '{}' {why}",
                    key.to_string_lossy().escape_debug()
                ));
            }
        }
        if let Some(dir) = &self.current_dir
            && (dir.is_empty() || has_nul(dir))
        {
            return invalid(
                "invalid spec: the working directory is empty or contains a NUL byte".into(),
            );
        }
        if let Some(file) = &self.env_file
            && (file.is_empty() || has_nul(file))
        {
            return invalid("invalid spec: the env file is empty or contains a NUL byte".into());
        }
        for (what, value) in [("user", &self.user), ("group", &self.group)] {
            if let Some(v) = value
                && (v.is_empty() || v.contains(['\0', ':', '/']))
            {
                return invalid(format!(
                    "invalid spec: {what} '{}' is not a name or a number",
                    v.escape_debug()
                ));
            }
        }
        if let Some(mask) = self.umask.filter(|m| *m > 0o777) {
            return invalid(format!("invalid spec: umask {mask:o} (octal) is above 777"));
        }
        for (resource, limit) in &self.limits {
            if limit.soft > limit.hard {
                return invalid(format!(
                    "invalid spec: the soft limit of {resource} ({}) is above its hard limit ({})",
                    limit.soft, limit.hard
                ));
            }
        }
        if let Some(n) = self.nice.filter(|n| !(-20..=19).contains(n)) {
            return invalid(format!("invalid spec: nice {n} is outside -20 to 19"));
        }
        if let Some(n) = self.oom_score_adj.filter(|n| !(-1000..=1000).contains(n)) {
            return invalid(format!(
                "invalid spec: oom_score_adj {n} is outside -1000 to 1000"
            ));
        }
        if let Some(n) = self.instances.filter(|n| !(1..=MAX_INSTANCES).contains(n)) {
            return invalid(format!(
                "invalid spec: instances {n} is outside 1 to {MAX_INSTANCES}"
            ));
        }
        if let Some(key) = &self.instance_var
            && let Some(why) = env_key_problem(OsStr::new(key))
        {
            return invalid(format!(
                "invalid spec: instance_var '{}' {why}",
                key.escape_debug()
            ));
        }
        if self.oneshot && (self.ready != Ready::Immediately || self.health.is_some()) {
            return invalid(
                "invalid spec: a one-shot task is done when it exits 0: it takes no ready condition and no health check".into(),
            );
        }
        if self.log.line_max < 64 {
            return invalid(format!(
                "invalid spec: log line_max {} is below the minimum of 64 bytes",
                self.log.line_max
            ));
        }
        if let Some(n) = self.max_pids.filter(|n| !(1..=MAX_PIDS_LIMIT).contains(n)) {
            return invalid(format!(
                "invalid spec: max_pids {n} is outside 1 to {MAX_PIDS_LIMIT}, the kernel's limit"
            ));
        }
        if self.max_memory == Some(0) {
            return invalid("invalid spec: max_memory must be above zero".into());
        }
        if self.log.tail_bytes > TAIL_BYTES_MAX {
            return invalid(format!(
                "invalid spec: log tail_bytes {} is over the maximum of {TAIL_BYTES_MAX} bytes",
                self.log.tail_bytes
            ));
        }
        match &self.ready {
            Ready::LogLine(pattern) => {
                if let Err(e) = regex_lite::Regex::new(pattern) {
                    return invalid(format!(
                        "invalid spec: ready log-line pattern '{pattern}' is not a regular expression: {e}"
                    ));
                }
            }
            Ready::Tcp(0) => return invalid("invalid spec: ready tcp port 0".into()),
            Ready::Command(argv) if argv.is_empty() || argv.iter().any(|a| a.contains('\0')) => {
                return invalid(
                    "invalid spec: the ready command is empty or contains a NUL byte".into(),
                );
            }
            _ => {}
        }
        if let Some(h) = &self.health {
            match h.check() {
                Check::Tcp(0) => return invalid("invalid spec: health tcp port 0".into()),
                Check::Command(argv)
                    if argv.is_empty() || argv.iter().any(|a| a.contains('\0')) =>
                {
                    return invalid(
                        "invalid spec: the health command is empty or contains a NUL byte".into(),
                    );
                }
                Check::Http(url) if crate::readiness::parse_loopback_url(url).is_none() => {
                    return invalid(format!(
                        "invalid spec: health url '{url}' is not a plain http URL on a loopback address"
                    ));
                }
                _ => {}
            }
            if h.get_interval() < MIN_HEALTH_INTERVAL
                || h.get_timeout().is_zero()
                || h.get_failures() == 0
            {
                return invalid(format!(
                    "invalid spec: health interval must be at least {}, and timeout and failures above zero",
                    crate::duration::format(MIN_HEALTH_INTERVAL)
                ));
            }
        }
        for dep in &self.after {
            validate_name(&dep.name).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidSpec,
                    format!(
                        "invalid spec: dependency '{}' is not a valid name",
                        dep.name.escape_debug()
                    ),
                )
                .with_service(&self.name)
            })?;
            if dep.name == self.name {
                return invalid(format!(
                    "invalid spec: dependency cycle: {0} -> {0}",
                    self.name
                ));
            }
        }
        for name in &self.restart_with {
            validate_name(name).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidSpec,
                    format!(
                        "invalid spec: restart_with '{}' is not a valid name",
                        name.escape_debug()
                    ),
                )
                .with_service(&self.name)
            })?;
        }
        if let Err(why) = self.restart.backoff_config().check() {
            return invalid(format!("invalid spec: {why}"));
        }
        if let Some(why) = crate::trigger::problem(
            self.schedule.as_ref(),
            self.watch.as_ref(),
            self.watchdog.as_ref(),
        ) {
            return invalid(format!("invalid spec: {why}"));
        }
        Ok(())
    }
}

fn env_key_problem(key: &OsStr) -> Option<&'static str> {
    if key.is_empty() {
        Some("is empty")
    } else if key.as_bytes().contains(&b'=') {
        Some("contains '='")
    } else if has_nul(key) {
        Some("contains a NUL byte")
    } else {
        None
    }
}

fn has_nul(s: &OsStr) -> bool {
    s.as_bytes().contains(&0)
}

/// `{instance}` in `value` replaced by `k`, and `{instance+N}` by `k + N`: an argument or an
/// environment value of instance `k`.
pub(crate) fn expand_instance(value: &OsStr, k: u32) -> OsString {
    const OPEN: &[u8] = b"{instance";
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(OPEN.len()).position(|w| w == OPEN) {
        out.extend_from_slice(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let offset = match after.first() {
            Some(b'}') => Some((0u64, 1)),
            Some(b'+') => after.iter().position(|&b| b == b'}').and_then(|end| {
                let digits = std::str::from_utf8(&after[1..end]).ok()?;
                let n = digits
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| digits.parse::<u64>().ok())??;
                Some((n, end + 1))
            }),
            _ => None,
        };
        match offset {
            Some((n, used)) => {
                out.extend_from_slice((u64::from(k) + n).to_string().as_bytes());
                rest = &after[used..];
            }
            None => {
                out.extend_from_slice(OPEN);
                rest = after;
            }
        }
    }
    out.extend_from_slice(rest);
    OsString::from_vec(out)
}

/// Checks a service name: 1 to 64 bytes of `[A-Za-z0-9._-]`, not starting with `.`, not all
/// digits (those are ids), and not `all`.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ))
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(format!(
            "contains {c:?}; names use only A-Z, a-z, 0-9, '.', '_' and '-'"
        ))
    } else if name.starts_with('.') {
        Some("starts with '.'".to_string())
    } else if name.bytes().all(|b| b.is_ascii_digit()) {
        Some("is all digits, which would read as an id".to_string())
    } else if name == "all" {
        Some("is 'all', which names every service".to_string())
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::new(
            ErrorKind::InvalidSpec,
            format!("invalid name: the name {why}"),
        )
        .with_service(name)),
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::Backoff;
    use crate::readiness::Health;
    use proptest::prelude::*;

    #[test]
    fn names_follow_the_rules() {
        for good in ["web", "a", "Web-1.worker_2", "1a", &"x".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good} should be valid");
        }
        for (bad, rule) in [
            ("", "empty"),
            (&"x".repeat(65) as &str, "65 bytes"),
            ("web api", "contains ' '"),
            ("web/api", "contains '/'"),
            ("café", "contains 'é'"),
            (".hidden", "starts with '.'"),
            ("42", "all digits"),
            ("all", "'all'"),
            ("a\nb", "contains '\\n'"),
        ] {
            let err = validate_name(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidSpec);
            assert!(err.to_string().contains(rule), "{bad:?}: {err}");
        }
    }

    #[test]
    fn bad_argv_env_names_and_limits_are_invalid_spec() {
        let base = ServiceSpec::new("svc", "true");
        let cases = [
            (base.clone().arg("a\0b"), "argument 1 contains a NUL"),
            (base.clone().env("A=B", "v"), "contains '='"),
            (base.clone().env("", "v"), "is empty"),
            (base.clone().env("K", "v\0"), "NUL"),
            (ServiceSpec::new("svc", ""), "program is empty"),
            (ServiceSpec::new("svc", "tr\0ue"), "NUL"),
            (base.clone().current_dir(""), "working directory"),
            (base.clone().restart_with("../x"), "restart_with '../x'"),
            (base.clone().restart_with(""), "restart_with ''"),
            (base.clone().max_pids(0), "max_pids 0 is outside"),
            (base.clone().max_pids(u64::MAX), "the kernel's limit"),
            (
                base.clone().max_pids(MAX_PIDS_LIMIT + 1),
                "the kernel's limit",
            ),
            (base.clone().max_memory(0), "max_memory must be above zero"),
        ];
        for fits in [
            base.clone().max_pids(MAX_PIDS_LIMIT),
            base.clone().max_memory(1),
        ] {
            assert!(fits.validate().is_ok(), "{fits:?}");
        }
        for (spec, needle) in cases {
            let err = spec.validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidSpec);
            assert_eq!(err.service(), Some("svc"));
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    /// A spec that sets every option away from its default.
    pub(crate) fn every_option() -> ServiceSpec {
        ServiceSpec::new("web", "/usr/bin/python3")
            .args(["-m", "http.server"])
            .env("PORT", "8080")
            .env_remove("DEBUG")
            .current_dir("/srv")
            .restart(
                RestartPolicy::on_failure()
                    .backoff(
                        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30))
                            .jitter(0.1),
                    )
                    .stable_after(Duration::from_secs(10))
                    .max_restarts(5, Duration::from_secs(60))
                    .success_codes([0, 2]),
            )
            .stop_signal(Signal::Int)
            .stop_timeout(Duration::from_millis(1500))
            .log(
                LogPolicy::default()
                    .max_bytes(1000)
                    .keep(2)
                    .timestamps(true)
                    .merge_stderr(true)
                    .line_max(128)
                    .tail(5, 300),
            )
            .ready(Ready::LogLine("listening on \\d+".into()))
            .ready_timeout(Duration::from_secs(7))
            .health(
                Health::http("http://127.0.0.1:8080/healthz")
                    .interval(Duration::from_secs(2))
                    .failures(4),
            )
            .after("db", Condition::Ready)
            .after("setup", Condition::Exited0)
            .restart_with("db")
            .max_memory(256 << 20)
            .max_pids(64)
            .arg(OsString::from_vec(b"caf\xe9".to_vec()))
            .env(OsString::from_vec(b"K\xff".to_vec()), "v")
            .env_file(".env.web")
            .user("nobody")
            .group("nogroup")
            .umask(0o027)
            .limit(Resource::OpenFiles, 1024, 4096)
            .limit(
                Resource::CoreSize,
                crate::rlimit::UNLIMITED,
                crate::rlimit::UNLIMITED,
            )
            .nice(5)
            .oom_score_adj(300)
            .instances(3)
            .instance_var("NODE_APP_INSTANCE")
            .autostart(false)
            .schedule(Schedule::restart("0 4 * * *").time_zone("UTC"))
            .watch(
                Watch::new(["src"])
                    .ignore("*.log")
                    .debounce(Duration::from_secs(1)),
            )
            .watchdog(
                Watchdog::new()
                    .silence(Duration::from_secs(60))
                    .pattern("deadlock detected"),
            )
    }

    #[test]
    fn new_rules_are_invalid_spec() {
        let base = ServiceSpec::new("svc", "true");
        for (spec, needle) in [
            (base.clone().nice(20), "nice 20 is outside"),
            (base.clone().oom_score_adj(-1001), "oom_score_adj -1001"),
            (base.clone().instances(0), "instances 0 is outside"),
            (base.clone().instances(MAX_INSTANCES + 1), "instances 1001"),
            (
                base.clone().instance_var("A=B"),
                "instance_var 'A=B' contains '='",
            ),
            (base.clone().user(""), "user '' is not"),
            (base.clone().group("a:b"), "group 'a:b' is not"),
            (base.clone().umask(0o1000), "umask 1000"),
            (
                base.clone().limit(Resource::OpenFiles, 10, 5),
                "soft limit of nofile (10)",
            ),
            (base.clone().env_file(""), "env file is empty"),
            (
                base.clone().oneshot(true).ready(Ready::Tcp(1)),
                "a one-shot task",
            ),
            (
                base.clone().oneshot(true).health(Health::tcp(1)),
                "a one-shot task",
            ),
            (
                base.clone().arg(OsString::from_vec(b"a\0".to_vec())),
                "argument 1",
            ),
        ] {
            let err = spec.validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidSpec);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        assert!(
            base.clone()
                .nice(-20)
                .oom_score_adj(1000)
                .instances(1000)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn the_instance_placeholder_takes_the_index_and_an_offset() {
        let e = |v: &str, k| expand_instance(OsStr::new(v), k).into_string().unwrap();
        assert_eq!(e("--port={instance+8000}", 3), "--port=8003");
        assert_eq!(e("w{instance}-{instance}", 2), "w2-2");
        assert_eq!(
            e("{instance+}", 1),
            "{instance+}",
            "no number: left as written"
        );
        assert_eq!(e("{instance+x}", 1), "{instance+x}");
        assert_eq!(e("{instance", 1), "{instance");
        assert_eq!(e("{{instance}}", 4), "{4}");
        assert_eq!(e("none", 4), "none");
        let bytes = expand_instance(&OsString::from_vec(b"\xff{instance}".to_vec()), 7);
        assert_eq!(bytes.as_bytes(), b"\xff7", "bytes that are not UTF-8 stay");
    }

    #[test]
    fn same_run_ignores_the_number_of_instances_and_autostart() {
        let a = ServiceSpec::new("w", "true").instances(2);
        assert!(a.same_run(&a.clone().instances(5).autostart(false)));
        assert!(!a.same_run(&a.clone().arg("x")));
        assert!(
            !a.same_run(&ServiceSpec::new("w", "true")),
            "instances or none"
        );
        assert_eq!(a.instance_name(Some(1)), "w.1");
        assert_eq!(ServiceSpec::new("w", "true").instance_indexes(), [None]);
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let spec = every_option();
        let json = serde_json::to_string(&spec).unwrap();
        let back: ServiceSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec, "{json}");
    }

    #[test]
    fn minimal_json_takes_defaults_and_unknown_keys_are_errors() {
        let spec: ServiceSpec = serde_json::from_str(r#"{"name":"a","program":"true"}"#).unwrap();
        assert_eq!(spec, ServiceSpec::new("a", "true"));
        let err =
            serde_json::from_str::<ServiceSpec>(r#"{"name":"a","program":"true","colour":1}"#)
                .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    proptest! {
        #[test]
        fn validate_never_panics(name in ".{0,80}", program in ".{0,20}", arg in ".{0,20}", key in ".{0,10}") {
            let _ = ServiceSpec::new(name, program).arg(arg).env(key, "v").validate();
        }

        #[test]
        fn deserializing_arbitrary_json_never_panics(text in ".{0,200}") {
            let _ = serde_json::from_str::<ServiceSpec>(&text);
        }
    }
}
