//! [`ServiceSpec`]: what to run and how to keep it running, as a `Command`-shaped builder.

use crate::error::{Error, ErrorKind, Result};
use crate::policy::RestartPolicy;
use crate::readiness::{Check, Condition, Dependency, Health, Ready};
use crate::signal::Signal;
use crate::trigger::{Schedule, Watch, Watchdog};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The shortest health-check interval: a check is a probe (a connection, a process), and
/// running them back to back would only burn CPU.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);

/// The longest service name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

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
    program: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    env_remove: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    env_clear: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current_dir: Option<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    max_bytes: u64,
    keep: u32,
    timestamps: bool,
    merge_stderr: bool,
    line_max: usize,
    tail_lines: usize,
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

fn default_stop_signal() -> Signal {
    Signal::Term
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(5)
}

impl ServiceSpec {
    /// A service called `name` that runs `program`. A program without a `/` is looked up on
    /// `PATH` (the spec's own `PATH` if it sets one) when the service starts.
    pub fn new(name: impl Into<String>, program: impl Into<String>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            env_remove: BTreeSet::new(),
            env_clear: false,
            current_dir: None,
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

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> ServiceSpec {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> ServiceSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable. The service's environment is the host's, with these
    /// changes applied, and `SHEEPDOG_RUN` set to the run's marker (containment finds a
    /// service's processes by it; a value set here is replaced).
    ///
    /// The host's environment is read when a call starts the service (`start`, `restart`);
    /// restarts by the restart policy reuse what that call read.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> ServiceSpec {
        let key = key.into();
        self.env_remove.remove(&key);
        self.env.insert(key, value.into());
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> ServiceSpec
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Removes a variable from the inherited environment (and any set by [`env`](Self::env)).
    pub fn env_remove(mut self, key: impl Into<String>) -> ServiceSpec {
        let key = key.into();
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

    /// The working directory of the service. By default, the host's.
    pub fn current_dir(mut self, dir: impl Into<String>) -> ServiceSpec {
        self.current_dir = Some(dir.into());
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
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The arguments.
    pub fn get_args(&self) -> &[String] {
        &self.args
    }

    /// The environment variables set by the spec.
    pub fn get_envs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The variables removed from the inherited environment.
    pub fn get_env_removed(&self) -> impl Iterator<Item = &str> {
        self.env_remove.iter().map(String::as_str)
    }

    /// Whether the inherited environment is cleared.
    pub fn get_env_clear(&self) -> bool {
        self.env_clear
    }

    /// The working directory, if set.
    pub fn get_current_dir(&self) -> Option<&str> {
        self.current_dir.as_deref()
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
        if self.program.contains('\0') {
            return invalid("invalid spec: the program contains a NUL byte".into());
        }
        if let Some(i) = self.args.iter().position(|a| a.contains('\0')) {
            return invalid(format!(
                "invalid spec: argument {} contains a NUL byte",
                i + 1
            ));
        }
        for (key, value) in &self.env {
            if let Some(why) = env_key_problem(key) {
                return invalid(format!(
                    "invalid spec: environment key '{}' {why}",
                    key.escape_debug()
                ));
            }
            if value.contains('\0') {
                return invalid(format!(
                    "invalid spec: the value of environment variable '{key}' contains a NUL byte"
                ));
            }
        }
        for key in &self.env_remove {
            if let Some(why) = env_key_problem(key) {
                return invalid(format!(
                    "invalid spec: environment key '{}' {why}",
                    key.escape_debug()
                ));
            }
        }
        if let Some(dir) = &self.current_dir {
            if dir.is_empty() || dir.contains('\0') {
                return invalid(
                    "invalid spec: the working directory is empty or contains a NUL byte".into(),
                );
            }
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
                    return invalid(format!("invalid spec: ready log-line pattern '{pattern}' is not a regular expression: {e}"));
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

fn env_key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("is empty")
    } else if key.contains('=') {
        Some("contains '='")
    } else if key.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    }
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
