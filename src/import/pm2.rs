//! PM2's ecosystem files: `{"apps": [ … ]}` as JSON or YAML, or `ecosystem.config.js`
//! evaluated by `node`. Each app becomes one service, or `instances` of them.

use super::{Imported, invalid};
use crate::error::{Error, ErrorKind, Result};
use crate::policy::{Backoff, RestartPolicy};
use crate::signal::Signal;
use crate::spec::{LogPolicy, ServiceSpec};
use crate::trigger::{Schedule, Watch};
use serde_json::{Map, Value};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long `node` may take to evaluate an `ecosystem.config.js`.
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the ecosystem file at `path`; `profile` selects each app's `env_<profile>`.
pub(crate) fn import(path: &Path, profile: Option<&str>) -> Result<Imported> {
    let origin = path.display().to_string();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let value: Value = if [".js", ".cjs", ".mjs"].iter().any(|e| name.ends_with(e)) {
        evaluate("node", path)?
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot read PM2 file '{origin}'")).with_source(e)
        })?;
        if name.ends_with(".yml") || name.ends_with(".yaml") {
            serde_saphyr::from_str(&text).map_err(|e| invalid(&origin, e))?
        } else {
            serde_json::from_str(&text).map_err(|e| invalid(&origin, e))?
        }
    };
    let apps = match &value {
        Value::Array(apps) => apps,
        Value::Object(o) => match o.get("apps") {
            Some(Value::Array(apps)) => apps,
            Some(Value::Object(_)) => std::slice::from_ref(&o["apps"]),
            _ => return Err(invalid(&origin, "no 'apps' list")),
        },
        _ => return Err(invalid(&origin, "no 'apps' list")),
    };
    let mut warnings = Vec::new();
    if let Value::Object(o) = &value {
        for key in o.keys().filter(|k| *k != "apps") {
            warnings.push(format!(
                "'{origin}': '{key}' has no equivalent and is ignored (only 'apps' is imported)"
            ));
        }
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut services = Vec::new();
    let mut profile_seen = false;
    for (i, app) in apps.iter().enumerate() {
        let Value::Object(app) = app else {
            return Err(invalid(&origin, format!("apps[{i}] is not an object")));
        };
        let mut ctx = App {
            origin: &origin,
            app,
            label: String::new(),
            warnings: &mut warnings,
        };
        ctx.label = match app.get("name").and_then(Value::as_str) {
            Some(n) => format!("app '{n}'"),
            None => format!("apps[{i}]"),
        };
        profile_seen |= profile.is_some_and(|p| app.contains_key(&format!("env_{p}")));
        services.extend(ctx.services(base, profile)?);
    }
    if let Some(p) = profile
        && !profile_seen
    {
        warnings.push(format!(
            "'{origin}': no app has 'env_{p}': the profile '{p}' changes nothing"
        ));
    }
    Ok(Imported { services, warnings })
}

/// Evaluates an `ecosystem.config.js` with `node` (the program `node`, bounded by
/// [`NODE_TIMEOUT`]) and reads what it exports.
fn evaluate(node: &str, path: &Path) -> Result<Value> {
    let origin = path.display().to_string();
    let abs = path.canonicalize().map_err(|e| {
        Error::new(ErrorKind::Io, format!("cannot read PM2 file '{origin}'")).with_source(e)
    })?;
    let mut child = std::process::Command::new(node)
        .arg("-e")
        .arg("process.stdout.write(JSON.stringify(require(process.argv[1])))")
        .arg(&abs)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                "node is not on the PATH; install Node.js, or convert the file to JSON or YAML \
                 (pm2 ecosystem files are plain objects: JSON.stringify(require('./ecosystem.config.js')))"
                    .to_string()
            } else {
                format!("cannot run node: {e}")
            };
            Error::new(ErrorKind::InvalidSpec, format!("'{origin}': {why}"))
        })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + NODE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| {
            Error::new(ErrorKind::Io, format!("'{origin}': cannot wait for node")).with_source(e)
        })? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Our own child, not yet reaped: its pid is still its own.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        None => Err(invalid(
            &origin,
            format!("node did not finish within {}s", NODE_TIMEOUT.as_secs()),
        )),
        Some(s) if !s.success() => {
            let message = String::from_utf8_lossy(&err);
            let first = message
                .lines()
                .find(|l| l.contains("Error"))
                .unwrap_or_else(|| message.lines().next().unwrap_or(""));
            Err(invalid(
                &origin,
                format!("node could not evaluate it: {}", first.trim()),
            ))
        }
        Some(_) => serde_json::from_slice(&out)
            .map_err(|e| invalid(&origin, format!("node printed no JSON object: {e}"))),
    }
}

/// One app of the file, being read.
struct App<'a> {
    origin: &'a str,
    app: &'a Map<String, Value>,
    label: String,
    warnings: &'a mut Vec<String>,
}

/// The options of an app that map to a spec; any other (but `env_*`) is warned about.
const KNOWN: &[&str] = &[
    "name",
    "script",
    "args",
    "interpreter",
    "interpreter_args",
    "node_args",
    "cwd",
    "env",
    "instances",
    "exec_mode",
    "autorestart",
    "max_restarts",
    "min_uptime",
    "restart_delay",
    "exp_backoff_restart_delay",
    "kill_timeout",
    "max_memory_restart",
    "cron_restart",
    "watch",
    "ignore_watch",
    "watch_delay",
    "stop_exit_codes",
    "time",
    "uid",
    "gid",
];

impl App<'_> {
    fn warn(&mut self, key: &str, why: impl std::fmt::Display) {
        self.warnings
            .push(format!("'{}': {} '{key}': {why}", self.origin, self.label));
    }

    fn error(&self, key: &str, why: impl std::fmt::Display) -> Error {
        invalid(self.origin, format!("{} '{key}': {why}", self.label))
    }

    fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.app.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.error(key, "not a string")),
        }
    }

    /// A string or a list of strings (`args`, `interpreter_args`): a string is split as a
    /// shell would.
    fn words(&self, key: &str) -> Result<Vec<String>> {
        match self.app.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => {
                shlex::split(s).ok_or_else(|| self.error(key, "unbalanced quotes"))
            }
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(self.error(key, "not a list of strings")),
                })
                .collect(),
            Some(_) => Err(self.error(key, "not a string or a list")),
        }
    }

    /// A duration in milliseconds (a number), or a string with a unit (`"2s"`, `"500ms"`).
    fn millis(&self, key: &str) -> Result<Option<Duration>> {
        match self.app.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|ms| Some(Duration::from_millis(ms)))
                .ok_or_else(|| self.error(key, "not a whole number of milliseconds")),
            Some(Value::String(s)) => match s.trim().parse::<u64>() {
                Ok(ms) => Ok(Some(Duration::from_millis(ms))),
                Err(_) => crate::duration::parse(s)
                    .map(Some)
                    .map_err(|e| self.error(key, e)),
            },
            Some(_) => Err(self.error(key, "not a duration")),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.app.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
            Some(_) => Err(self.error(key, "not true or false")),
        }
    }

    fn env(&self, key: &str) -> Result<Vec<(String, String)>> {
        match self.app.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Object(o)) => Ok(o
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()),
            Some(_) => Err(self.error(key, "not an object")),
        }
    }

    fn services(&mut self, base: &Path, profile: Option<&str>) -> Result<Vec<ServiceSpec>> {
        let script = self
            .str("script")?
            .ok_or_else(|| invalid(self.origin, format!("{} has no 'script'", self.label)))?
            .to_string();
        let name = match self.str("name")? {
            Some(n) => n.to_string(),
            None => Path::new(&script)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("app")
                .to_string(),
        };
        self.label = format!("app '{name}'");
        let keys: Vec<String> = self.app.keys().cloned().collect();
        for key in &keys {
            if KNOWN.contains(&key.as_str()) || key.starts_with("env_") {
                continue;
            }
            let why = match key.as_str() {
                "out_file" | "error_file" | "log_file" | "output" | "error" | "log" => {
                    "no equivalent: logs are kept in the state directory (see Supervisor::logs)"
                }
                "merge_logs" | "combine_logs" => {
                    "no equivalent: each instance keeps its own stdout and stderr logs"
                }
                "log_date_format" => {
                    "no equivalent format: set the log policy's timestamps for RFC 3339 times"
                }
                "wait_ready" | "listen_timeout" => {
                    "no equivalent: process.send('ready') is not read; set 'ready' (a log line, a port, a probe)"
                }
                "user" => "no equivalent: PM2's 'user' is for its startup script; set 'uid'",
                _ => "no equivalent; ignored",
            };
            self.warn(key, why);
        }
        // The program: the interpreter PM2 picks from the extension, or the script itself.
        let interpreter = match self.str("interpreter")? {
            Some("none") => None,
            Some(i) => Some(i.to_string()),
            None => {
                let ext = Path::new(&script).extension().and_then(|e| e.to_str());
                match ext {
                    Some("js" | "mjs" | "cjs") => Some("node".to_string()),
                    Some("py") => Some("python3".to_string()),
                    Some("sh") => Some("bash".to_string()),
                    Some("rb") => Some("ruby".to_string()),
                    Some("php") => Some("php".to_string()),
                    Some("pl") => Some("perl".to_string()),
                    Some("ts") => Some("ts-node".to_string()),
                    _ => None,
                }
            }
        };
        let args = self.words("args")?;
        let mut argv = match interpreter {
            Some(i) => {
                let mut v = vec![i];
                v.extend(self.words("interpreter_args")?);
                v.extend(self.words("node_args")?);
                v.push(script.clone());
                v
            }
            None => vec![script.clone()],
        };
        argv.extend(args);
        let mut env = self.env("env")?;
        if let Some(p) = profile {
            env.extend(self.env(&format!("env_{p}"))?);
        }
        // The restart policy: PM2 restarts whatever the exit, but for `stop_exit_codes`.
        let codes: Vec<i32> = match self.app.get("stop_exit_codes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Number(n)) => n.as_i64().map(|c| c as i32).into_iter().collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_i64)
                .map(|c| c as i32)
                .collect(),
            Some(_) => return Err(self.error("stop_exit_codes", "not a list of codes")),
        };
        let mut policy = match (self.boolean("autorestart")?, codes.is_empty()) {
            (Some(false), _) => RestartPolicy::never(),
            (_, true) => RestartPolicy::always(),
            (_, false) => RestartPolicy::on_failure().success_codes(codes),
        };
        let min_uptime = self.millis("min_uptime")?;
        if let Some(up) = min_uptime {
            policy = policy.stable_after(up);
        }
        if let Some(n) = self.app.get("max_restarts").filter(|v| !v.is_null()) {
            let n = n
                .as_u64()
                .ok_or_else(|| self.error("max_restarts", "not a count"))?;
            let window = Duration::from_secs(3600);
            policy = policy.max_restarts(n.min(u64::from(u32::MAX)) as u32, window);
            let up = min_uptime.unwrap_or(Duration::from_secs(1));
            self.warn(
                "max_restarts",
                format!(
                    "PM2 counts unstable restarts in a row (runs shorter than min_uptime) with \
                     no window; mapped to max_restarts({n}) within a sliding 1h window, the \
                     count reset by a run longer than {}",
                    crate::duration::format(up)
                ),
            );
        }
        if let Some(base) = self.millis("exp_backoff_restart_delay")? {
            policy = policy.backoff(Backoff::exponential(base, Duration::from_secs(15)));
        } else if let Some(delay) = self.millis("restart_delay")? {
            policy = policy.backoff(Backoff::fixed(delay));
        }
        let mut spec_base = ServiceSpec::new("x", argv[0].clone())
            .args(argv[1..].iter().cloned())
            .envs(env)
            .restart(policy)
            // PM2's defaults: SIGINT, then SIGKILL after 1.6 s.
            .stop_signal(Signal::Int)
            .stop_timeout(
                self.millis("kill_timeout")?
                    .unwrap_or(Duration::from_millis(1600)),
            );
        if let Some(cwd) = self.str("cwd")? {
            spec_base = spec_base.current_dir(base.join(cwd).display().to_string());
        }
        if self.boolean("time")? == Some(true) {
            spec_base = spec_base.log(LogPolicy::default().timestamps(true));
        }
        match self.app.get("max_memory_restart") {
            None | Some(Value::Null) => {}
            Some(v) => {
                let bytes = match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => super::bytes(s),
                    _ => None,
                }
                .ok_or_else(|| self.error("max_memory_restart", "not a size like \"300M\""))?;
                spec_base = spec_base.max_memory(bytes);
                self.warn(
                    "max_memory_restart",
                    "mapped to max_memory: a restart once above it for two samples, and where a \
                     cgroup is used, also a hard limit that the kernel enforces (OOM kill)",
                );
            }
        }
        if let Some(cron) = self.str("cron_restart")? {
            spec_base = spec_base.schedule(Schedule::restart(cron));
        }
        let watch_paths = match self.app.get("watch") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(vec![".".to_string()]),
            Some(_) => Some(self.words("watch")?),
        };
        if let Some(paths) = watch_paths {
            let mut watch = Watch::new(paths);
            for pattern in self.words("ignore_watch")? {
                watch = watch.ignore(pattern);
            }
            if let Some(d) = self.millis("watch_delay")? {
                watch = watch.debounce(d);
            }
            spec_base = spec_base.watch(watch);
        }
        // The user and group to run as, by name or number.
        for key in ["uid", "gid"] {
            let id = match self.app.get(key) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) if n.is_u64() => n.to_string(),
                Some(_) => return Err(self.error(key, "not a user name or id")),
            };
            spec_base = if key == "uid" {
                spec_base.user(id)
            } else {
                spec_base.group(id)
            };
        }
        let instances = match self.app.get("instances") {
            None | Some(Value::Null) => 1,
            Some(Value::String(s)) if s == "max" => cpus(),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(0) => cpus(),
                Some(n) if n < 0 => cpus().saturating_sub(n.unsigned_abs() as usize).max(1),
                Some(n) => n as usize,
                None => return Err(self.error("instances", "not a count")),
            },
            Some(_) => return Err(self.error("instances", "not a count or \"max\"")),
        };
        if self.str("exec_mode")? == Some("cluster")
            || self.str("exec_mode")? == Some("cluster_mode")
        {
            self.warn(
                "exec_mode",
                "no cluster mode: each instance is a separate process (NODE_APP_INSTANCE is set); \
                 instances that listen on one port need SO_REUSEPORT or distinct ports",
            );
        }
        if instances > 1000 {
            return Err(self.error("instances", "more than 1000"));
        }
        Ok(if instances == 1 {
            vec![spec_base.renamed(name)]
        } else {
            (0..instances)
                .map(|i| {
                    spec_base
                        .clone()
                        .renamed(format!("{name}-{i}"))
                        .env("NODE_APP_INSTANCE", i.to_string())
                })
                .collect()
        })
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_node_a_js_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ecosystem.config.js");
        std::fs::write(&file, "module.exports = { apps: [] }").unwrap();
        let err = evaluate("/nonexistent/node", &file).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSpec);
        assert!(err.to_string().contains("node is not on the PATH"), "{err}");
        assert!(err.to_string().contains("ecosystem.config.js"), "{err}");
    }

    #[test]
    fn a_js_file_that_throws_names_the_error() {
        if std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: node is not on the PATH");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ecosystem.config.js");
        std::fs::write(&file, "throw new Error('no config here')").unwrap();
        let err = evaluate("node", &file).unwrap_err();
        assert!(err.to_string().contains("no config here"), "{err}");
    }
}
