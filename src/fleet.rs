//! [`Fleet`]: a list of services read from a file (TOML, JSON, a Procfile, or imported from
//! PM2's or supervisord's configuration), and what
//! [`Supervisor::apply`](crate::Supervisor::apply) did to converge to it.

use crate::error::{Error, ErrorKind, Result};
use crate::graph;
use crate::spec::{validate_name, ServiceSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A fleet: services plus optional supervisor settings, as written in a fleet file.
///
/// TOML (`[[service]]` tables, every [`ServiceSpec`] option; durations as `"500ms"`):
///
/// ```
/// use sheepdog::Fleet;
///
/// let fleet = Fleet::from_toml_str(r#"
/// [[service]]
/// name = "web"
/// program = "python3"
/// args = ["-m", "http.server", "8080"]
/// ready = { tcp = 8080 }
/// restart = { policy = "on-failure", backoff = { kind = "exponential", base = "100ms", max = "30s" } }
/// "#).unwrap();
/// assert_eq!(fleet.services()[0].name(), "web");
///
/// let err = Fleet::from_toml_str("[[service]]\nname = \"x\"\nprogram = \"true\"\ncolour = 1\n").unwrap_err();
/// assert!(err.to_string().contains("line 4, column 1"), "{err}");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    #[serde(default, skip_serializing_if = "Settings::is_default")]
    supervisor: Settings,
    #[serde(default, rename = "service")]
    services: Vec<ServiceSpec>,
    /// What an importer could not carry over as it was.
    #[serde(skip)]
    warnings: Vec<String>,
}

/// The formats a fleet is read from; [`Format::detect`] tells it from a file's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// sheepdog's TOML ([`Fleet::from_toml_file`]).
    Toml,
    /// sheepdog's JSON ([`Fleet::from_json_file`]).
    Json,
    /// A Procfile ([`Fleet::from_procfile`]).
    Procfile,
    /// A PM2 ecosystem file ([`Fleet::from_pm2`]).
    Pm2,
    /// A supervisord configuration ([`Fleet::from_supervisord`]).
    Supervisord,
}

impl Format {
    /// The format of the file at `path`, from its name: `Procfile*` and `*.procfile` are
    /// Procfiles; `ecosystem.config.*`, `*.config.js`, `*.yml`/`*.yaml` and a `*.json` whose
    /// object has an `apps` list are PM2's; `*.conf`/`*.ini` holding a `[program:` section are
    /// supervisord's; `*.json` is sheepdog's JSON; anything else sheepdog's TOML.
    ///
    /// # Errors
    ///
    /// `Io` if a `.json`, `.conf` or `.ini` file (which is read to tell) cannot be read;
    /// `InvalidSpec` for a `.conf` or `.ini` without a `[program:` section.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::Format;
    ///
    /// assert_eq!(Format::detect("Procfile.dev").unwrap(), Format::Procfile);
    /// assert_eq!(Format::detect("ecosystem.config.js").unwrap(), Format::Pm2);
    /// assert_eq!(Format::detect("fleet.toml").unwrap(), Format::Toml);
    /// ```
    pub fn detect(path: impl AsRef<Path>) -> Result<Format> {
        let path = path.as_ref();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ext = |e: &str| name.ends_with(e);
        Ok(if name.starts_with("Procfile") || ext(".procfile") {
            Format::Procfile
        } else if name.starts_with("ecosystem.config.")
            || ext(".config.js")
            || ext(".config.cjs")
            || ext(".yml")
            || ext(".yaml")
        {
            Format::Pm2
        } else if ext(".json") {
            let text = read(path)?;
            let pm2 = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .is_some_and(|v| v.get("apps").is_some_and(|a| a.is_array()));
            if pm2 {
                Format::Pm2
            } else {
                Format::Json
            }
        } else if ext(".conf") || ext(".ini") {
            if !read(path)?.contains("[program:") {
                return Err(Error::new(
                    ErrorKind::InvalidSpec,
                    format!(
                        "fleet file '{}': no [program:…] section, so not a supervisord file; \
                         name the format",
                        path.display()
                    ),
                ));
            }
            Format::Supervisord
        } else {
            Format::Toml
        })
    }

    /// A format by the name a command-line flag gives: `toml`, `json`, `procfile`, `pm2`,
    /// `supervisord`.
    pub fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "toml" => Format::Toml,
            "json" => Format::Json,
            "procfile" => Format::Procfile,
            "pm2" => Format::Pm2,
            "supervisord" => Format::Supervisord,
            _ => return None,
        })
    }
}

/// Supervisor settings a fleet file may carry (command-line options take precedence).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The state directory (default: a temporary one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
}

impl Settings {
    fn is_default(&self) -> bool {
        *self == Settings::default()
    }
}

/// Whether [`Supervisor::apply`](crate::Supervisor::apply) removes services that the fleet
/// does not list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prune {
    /// Stop and delete them.
    Yes,
    /// Keep them.
    No,
}

/// What [`Supervisor::apply`](crate::Supervisor::apply) did, by service name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// New services, started.
    pub started: Vec<String>,
    /// Services whose spec changed, restarted with the new one.
    pub restarted: Vec<String>,
    /// Services left as they were (equal spec; started if they were not running).
    pub unchanged: Vec<String>,
    /// Services not in the fleet, stopped and deleted.
    pub deleted: Vec<String>,
    /// Services that could not be started, with the error.
    pub failed: Vec<(String, String)>,
}

/// An [`apply`](crate::Supervisor::apply) in steps, for a caller that makes the calls
/// itself: the supervisor's `apply` blocks on each, the control socket's thread must not.
/// `new` says what to start (one `start_many`), `started` takes its results, `unlisted` says
/// what a prune deletes (one `delete` each, in that order), `deleted` takes each result.
#[derive(Default)]
pub(crate) struct Convergence {
    applied: Applied,
    /// Each spec handed to `start_many`: its name and what starting it means.
    starting: Vec<(String, Change)>,
}

#[derive(Clone, Copy)]
enum Change {
    New,
    Changed,
    /// Listed, with the same spec, but not running.
    Again,
}

impl Convergence {
    /// Compares the services (`before`) with the fleet; returns the specs to start, in an
    /// order where each comes after its dependencies.
    pub(crate) fn new(
        before: &[crate::ServiceInfo],
        fleet: &Fleet,
    ) -> (Convergence, Vec<ServiceSpec>) {
        let before: std::collections::HashMap<&str, &crate::ServiceInfo> =
            before.iter().map(|i| (i.name(), i)).collect();
        let mut applied = Applied::default();
        let mut starting = Vec::new();
        let mut specs = Vec::new();
        for spec in fleet.in_start_order() {
            let name = spec.name().to_string();
            let change = match before.get(spec.name()) {
                None => Change::New,
                Some(info) if info.spec() != spec => Change::Changed,
                Some(info) if info.status().is_settled() => Change::Again,
                Some(_) => {
                    applied.unchanged.push(name);
                    continue;
                }
            };
            starting.push((name, change));
            specs.push(spec.clone());
        }
        (Convergence { applied, starting }, specs)
    }

    /// Takes the results of the `start_many`, in order.
    ///
    /// # Errors
    ///
    /// The first `ShutDown` or `Store` error: the apply stops there.
    pub(crate) fn started(&mut self, results: Vec<Result<crate::ServiceInfo>>) -> Result<()> {
        for ((name, change), result) in std::mem::take(&mut self.starting).into_iter().zip(results)
        {
            match result {
                Ok(_) => match change {
                    Change::New => self.applied.started.push(name),
                    Change::Changed => self.applied.restarted.push(name),
                    Change::Again => self.applied.unchanged.push(name),
                },
                Err(e) if matches!(e.kind(), ErrorKind::ShutDown | ErrorKind::Store) => {
                    return Err(e)
                }
                Err(e) => self.applied.failed.push((name, e.to_string())),
            }
        }
        Ok(())
    }

    /// The services a prune deletes: those the fleet does not list, in the order of
    /// `stop_waves` (the supervisor's `plan_stop("all")`), dependents first.
    pub(crate) fn unlisted(&self, fleet: &Fleet, stop_waves: Vec<Vec<String>>) -> Vec<String> {
        let listed: BTreeSet<&str> = fleet.services().iter().map(|s| s.name()).collect();
        stop_waves
            .into_iter()
            .flatten()
            .filter(|n| !listed.contains(n.as_str()))
            .collect()
    }

    /// Takes the result of one `delete`.
    ///
    /// # Errors
    ///
    /// The delete's error, unless it is `InUse` (a listed service depends on it: reported in
    /// [`Applied::failed`]).
    pub(crate) fn deleted(&mut self, name: String, result: Result<usize>) -> Result<()> {
        match result {
            Ok(_) => self.applied.deleted.push(name),
            Err(e) if e.kind() == ErrorKind::InUse => {
                self.applied.failed.push((name, e.to_string()))
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// What the apply did.
    pub(crate) fn finish(self) -> Applied {
        self.applied
    }
}

fn parse_error(origin: &str, line: usize, column: usize, message: &str) -> Error {
    Error::new(
        ErrorKind::InvalidSpec,
        format!(
            "fleet file '{origin}': line {line}, column {column}: {}",
            message.trim_end()
        ),
    )
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Fleet {
    /// A fleet of the given services.
    pub fn new(services: impl IntoIterator<Item = ServiceSpec>) -> Fleet {
        Fleet {
            supervisor: Settings::default(),
            services: services.into_iter().collect(),
            warnings: Vec::new(),
        }
    }

    /// Reads a fleet file in `format`, or the format its name tells ([`Format::detect`]).
    /// `profile` selects a PM2 file's `env_<profile>`; it is refused for other formats.
    ///
    /// # Errors
    ///
    /// Those of the format's reader; `InvalidSpec` for a profile given to a format without
    /// profiles.
    pub fn load(
        path: impl AsRef<Path>,
        format: Option<Format>,
        profile: Option<&str>,
    ) -> Result<Fleet> {
        let path = path.as_ref();
        let format = match format {
            Some(f) => f,
            None => Format::detect(path)?,
        };
        if profile.is_some() && format != Format::Pm2 {
            return Err(Error::new(
                ErrorKind::InvalidSpec,
                format!(
                    "fleet file '{}': a profile applies to PM2 files only",
                    path.display()
                ),
            ));
        }
        match format {
            Format::Toml => Fleet::from_toml_file(path),
            Format::Json => Fleet::from_json_file(path),
            Format::Procfile => Fleet::from_procfile(path),
            Format::Pm2 => Fleet::from_pm2(path, profile),
            Format::Supervisord => Fleet::from_supervisord(path),
        }
    }

    /// Imports a PM2 ecosystem file: `{"apps": [ … ]}` as JSON (`*.json`) or YAML
    /// (`*.yml`, `*.yaml`), or an `ecosystem.config.js`, which is evaluated by `node` (from
    /// the `PATH`, for at most 10 s). `profile` merges each app's `env_<profile>`
    /// (`env_production`) over its `env`.
    ///
    /// Each app is one service (`instances: N` gives `name-0` to `name-N-1`, each with
    /// `NODE_APP_INSTANCE`): `script` run by its `interpreter` (by default the one PM2 picks
    /// from the extension: `node` for `.js`, `python3` for `.py`, … ; `none` runs it
    /// directly) with `interpreter_args`/`node_args` and `args`; `cwd` (relative to the
    /// file); `env`; `autorestart: false` as [`RestartPolicy::never`](crate::RestartPolicy),
    /// `stop_exit_codes` as success codes; `min_uptime` as `stable_after`; `max_restarts`
    /// as a limit in a 1-hour window; `restart_delay` as a fixed backoff,
    /// `exp_backoff_restart_delay` as an exponential one up to 15 s; `kill_timeout` as the
    /// stop timeout, with PM2's SIGINT as the stop signal; `max_memory_restart` (`"300M"`)
    /// as `max_memory`; `cron_restart` as a [`Schedule`](crate::Schedule); `watch`,
    /// `ignore_watch`, `watch_delay` as a [`Watch`](crate::Watch); `time` as log timestamps.
    /// Every other option, and each one whose meaning differs, is named in
    /// [`warnings`](Fleet::warnings) (log file paths, `merge_logs`, cluster mode, …).
    ///
    /// # Errors
    ///
    /// `InvalidSpec` naming the file and the app for a malformed file or option, for an
    /// `ecosystem.config.js` when `node` is not on the `PATH` or fails, or for a service that
    /// breaks a rule; `Io` if the file cannot be read.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::Fleet;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let file = dir.path().join("process.json");
    /// std::fs::write(&file, r#"{"apps": [{
    ///     "name": "api", "script": "server.js", "instances": 2,
    ///     "env": {"PORT": "3000"}, "env_production": {"NODE_ENV": "production"},
    ///     "out_file": "/var/log/api.log"
    /// }]}"#)?;
    /// let fleet = Fleet::from_pm2(&file, Some("production"))?;
    /// assert_eq!(fleet.services()[1].name(), "api-1");
    /// assert_eq!(fleet.services()[0].program(), "node");
    /// assert!(fleet.warnings().iter().any(|w| w.contains("'out_file'")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_pm2(path: impl AsRef<Path>, profile: Option<&str>) -> Result<Fleet> {
        let path = path.as_ref();
        Fleet::imported(crate::import::pm2::import(path, profile)?, path)
    }

    /// Imports a supervisord configuration (`supervisord.conf`) and the files its
    /// `[include] files = …` globs name.
    ///
    /// Each `[program:x]` is one service (`numprocs` gives several, named by
    /// `process_name`): `command` split as supervisord splits it (no shell); `directory`;
    /// `environment` (`KEY="value",…`); `autorestart` (`true`, `false`, `unexpected` as
    /// on-failure) with `exitcodes` as success codes; `startsecs` as `stable_after`;
    /// `startretries` as a restart limit in a window; `stopsignal`, `stopwaitsecs`;
    /// `redirect_stderr` as merged logs; `stdout_logfile_maxbytes`/`_backups` as log
    /// rotation; `priority` as the order of the services. `%(ENV_X)s`, `%(program_name)s`,
    /// `%(process_num)02d`, `%(here)s`, `%(group_name)s` and `%(host_node_name)s` are
    /// expanded. Every other option and section, and each option whose meaning differs
    /// (`startretries`, `startsecs`, `priority`, `autostart=false`, `user`, `umask`,
    /// `stopasgroup=false`, log file paths), is named in [`warnings`](Fleet::warnings).
    ///
    /// # Errors
    ///
    /// `InvalidSpec` naming the file, the program and the option for a malformed file, value
    /// or expansion (an unset `%(ENV_X)s` too), or for a service that breaks a rule; `Io` if
    /// a file cannot be read.
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::Fleet;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let file = dir.path().join("supervisord.conf");
    /// std::fs::write(&file, "[program:worker]\ncommand=/usr/bin/env python3 -m worker\n\
    ///                         numprocs=2\nuser=www-data\n")?;
    /// let fleet = Fleet::from_supervisord(&file)?;
    /// assert_eq!(fleet.services()[1].name(), "worker_01");
    /// assert!(fleet.warnings().iter().any(|w| w.contains("user")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_supervisord(path: impl AsRef<Path>) -> Result<Fleet> {
        let path = path.as_ref();
        Fleet::imported(crate::import::supervisord::import(path)?, path)
    }

    fn imported(imported: crate::import::Imported, path: &Path) -> Result<Fleet> {
        let mut fleet = Fleet::new(imported.services);
        fleet.warnings = imported.warnings;
        fleet.check(&path.display().to_string())?;
        Ok(fleet)
    }

    /// What an importer ([`from_pm2`](Fleet::from_pm2),
    /// [`from_supervisord`](Fleet::from_supervisord)) could not carry over as it was: each
    /// warning names the file, the program and the option. Empty for sheepdog's own formats.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The services, in file order.
    pub fn services(&self) -> &[ServiceSpec] {
        &self.services
    }

    /// The supervisor settings.
    pub fn settings(&self) -> &Settings {
        &self.supervisor
    }

    /// Parses a TOML fleet.
    ///
    /// # Errors
    ///
    /// `InvalidSpec`, naming the line and column (an unknown key, a bad duration, a wrong
    /// type), or the rule a service breaks (a bad name, a duplicate, a cycle).
    pub fn from_toml_str(text: &str) -> Result<Fleet> {
        Fleet::parse_toml(text, "<string>")
    }

    /// Reads a TOML fleet file.
    ///
    /// # Errors
    ///
    /// As [`from_toml_str`](Fleet::from_toml_str); `Io` if the file cannot be read.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Fleet> {
        let path = path.as_ref();
        Fleet::parse_toml(&read(path)?, &path.display().to_string())
    }

    fn parse_toml(text: &str, origin: &str) -> Result<Fleet> {
        let fleet: Fleet = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            parse_error(origin, line, column, e.message())
        })?;
        fleet.check(origin)?;
        Ok(fleet)
    }

    /// Parses a JSON fleet: `{"service": [ {spec}, … ]}`.
    ///
    /// # Errors
    ///
    /// As [`from_toml_str`](Fleet::from_toml_str).
    pub fn from_json_str(text: &str) -> Result<Fleet> {
        Fleet::parse_json(text, "<string>")
    }

    /// Reads a JSON fleet file.
    ///
    /// # Errors
    ///
    /// As [`from_toml_str`](Fleet::from_toml_str); `Io` if the file cannot be read.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Fleet> {
        let path = path.as_ref();
        Fleet::parse_json(&read(path)?, &path.display().to_string())
    }

    fn parse_json(text: &str, origin: &str) -> Result<Fleet> {
        let fleet: Fleet = serde_json::from_str(text).map_err(|e| {
            parse_error(
                origin,
                e.line(),
                e.column(),
                &strip_position(&e.to_string()),
            )
        })?;
        fleet.check(origin)?;
        Ok(fleet)
    }

    /// Reads a Procfile (`name: command` per line, run with `sh -c`), with the variables of
    /// a `.env` file beside it (`KEY=value` lines, `#` comments, optional `export` and quotes),
    /// as foreman and honcho do.
    ///
    /// # Errors
    ///
    /// `InvalidSpec` naming the line of a malformed entry, a bad name or bytes that are not
    /// UTF-8 (in either file); `Io` if a file cannot be read.
    pub fn from_procfile(path: impl AsRef<Path>) -> Result<Fleet> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let env_path = path.with_file_name(".env");
        let env = match std::fs::read(&env_path) {
            Ok(bytes) => {
                let origin = env_path.display().to_string();
                parse_dotenv(&utf8_lines(&bytes, &origin)?, &origin)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("cannot read '{}'", env_path.display()),
                )
                .with_source(e))
            }
        };
        let bytes = std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot read fleet file '{}'", path.display()),
            )
            .with_source(e)
        })?;
        let fleet = Fleet::parse_procfile(&utf8_lines(&bytes, &origin)?, &origin, &env)?;
        fleet.check(&origin)?;
        Ok(fleet)
    }

    fn parse_procfile(text: &str, origin: &str, env: &BTreeMap<String, String>) -> Result<Fleet> {
        let mut services = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, command)) = line.split_once(':') else {
                return Err(parse_error(origin, i + 1, 1, "expected 'name: command'"));
            };
            let (name, command) = (name.trim(), command.trim());
            if command.is_empty() {
                return Err(parse_error(
                    origin,
                    i + 1,
                    line.len() + 1,
                    "the command is empty",
                ));
            }
            validate_name(name).map_err(|e| parse_error(origin, i + 1, 1, &e.to_string()))?;
            services.push(
                ServiceSpec::new(name, "sh")
                    .args(["-c", command])
                    .envs(env.clone()),
            );
        }
        Ok(Fleet::new(services))
    }

    /// Every spec is valid, names are unique, dependencies exist and form no cycle.
    fn check(&self, origin: &str) -> Result<()> {
        let invalid = |msg: String| {
            Error::new(
                ErrorKind::InvalidSpec,
                format!("fleet file '{origin}': {msg}"),
            )
        };
        let mut names = BTreeSet::new();
        for spec in &self.services {
            spec.validate()?;
            if !names.insert(spec.name()) {
                return Err(invalid(format!(
                    "service '{}' is defined twice",
                    spec.name()
                )));
            }
        }
        for spec in &self.services {
            for dep in spec.get_after() {
                if !names.contains(dep.name.as_str()) {
                    return Err(invalid(format!(
                        "service '{}' depends on unknown service '{}'",
                        spec.name(),
                        dep.name
                    )));
                }
            }
        }
        if let Some(cycle) = graph::find_cycle(&self.nodes()) {
            return Err(invalid(format!("dependency cycle: {}", cycle.join(" -> "))));
        }
        Ok(())
    }

    fn nodes(&self) -> Vec<graph::Node<'_>> {
        self.services
            .iter()
            .map(|s| graph::Node {
                name: s.name(),
                deps: s.get_after().iter().map(|d| d.name.as_str()).collect(),
            })
            .collect()
    }

    /// The services in an order where each comes after its dependencies.
    pub(crate) fn in_start_order(&self) -> Vec<&ServiceSpec> {
        let targets = self.services.iter().map(|s| s.name()).collect();
        let order: Vec<String> = graph::waves(&self.nodes(), &targets, false)
            .into_iter()
            .flatten()
            .collect();
        order
            .iter()
            .filter_map(|n| self.services.iter().find(|s| s.name() == n))
            .collect()
    }

    /// The fleet as TOML.
    ///
    /// # Errors
    ///
    /// `InvalidSpec` if a value cannot be written as TOML.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| {
            Error::new(ErrorKind::InvalidSpec, "cannot write the fleet as TOML").with_source(e)
        })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot read fleet file '{}'", path.display()),
        )
        .with_source(e)
    })
}

/// The text of a line-based file, or a parse error naming the first line (and column) whose
/// bytes are not UTF-8.
fn utf8_lines(bytes: &[u8], origin: &str) -> Result<String> {
    match String::from_utf8(bytes.to_vec()) {
        Ok(text) => Ok(text),
        Err(e) => {
            let valid = &bytes[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&valid[start..]).chars().count() + 1;
            Err(parse_error(
                origin,
                line,
                column,
                "the line is not valid UTF-8",
            ))
        }
    }
}

/// serde_json appends " at line L column C"; the position is reported separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// `KEY=value` lines; `#` comments; optional `export `; single or double quotes.
fn parse_dotenv(text: &str, origin: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(parse_error(origin, i + 1, 1, "expected KEY=value"));
        };
        let key = key.trim();
        if key.is_empty() || key.contains(|c: char| c.is_whitespace()) {
            return Err(parse_error(
                origin,
                i + 1,
                1,
                &format!("'{key}' is not a variable name"),
            ));
        }
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            let inner = &value[1..value.len() - 1];
            if value.starts_with('"') {
                inner.replace("\\n", "\n").replace("\\\"", "\"")
            } else {
                inner.to_string()
            }
        } else {
            value
                .split(" #")
                .next()
                .unwrap_or("")
                .trim_end()
                .to_string()
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::Ready;

    use crate::{Backoff, RestartPolicy};
    use proptest::prelude::*;
    use std::time::Duration;

    fn every_option() -> Fleet {
        let db = ServiceSpec::new("db", "postgres");
        // Every option away from its default; it depends on db and setup.
        let web = crate::spec::tests::every_option();
        let setup = ServiceSpec::new("setup", "true");
        let cleared = ServiceSpec::new("cleared", "true")
            .env_clear()
            .ready(Ready::After(Duration::from_millis(250)));
        let mut f = Fleet::new([db, setup, web, cleared]);
        f.supervisor.state_dir = Some("/var/lib/x".into());
        f
    }

    #[test]
    fn every_option_round_trips_through_toml_and_json() {
        let fleet = every_option();
        let toml_text = fleet.to_toml_string().unwrap();
        assert_eq!(
            Fleet::from_toml_str(&toml_text).unwrap(),
            fleet,
            "{toml_text}"
        );
        let json = serde_json::to_string_pretty(&fleet).unwrap();
        assert_eq!(Fleet::from_json_str(&json).unwrap(), fleet, "{json}");
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let text = "[[service]]\nname = \"a\"\nprogram = \"true\"\nstop_timeout = \"10 parsecs\"\n";
        let err = Fleet::from_toml_str(text).unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
        assert!(err.to_string().contains("unknown unit"), "{err}");
        let err = Fleet::from_toml_str("[[service]]\nname = 5\nprogram = \"true\"\n").unwrap_err();
        assert!(err.to_string().contains("line 2, column 8"), "{err}");
        let err = Fleet::from_json_str(
            "{\"service\": [{\"name\": \"a\", \"program\": \"true\",\n \"colour\": 1}]}",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("line 2") && err.to_string().contains("colour"),
            "{err}"
        );
    }

    #[test]
    fn duplicates_unknown_dependencies_and_cycles_are_refused() {
        let dup = "[[service]]\nname = \"a\"\nprogram = \"true\"\n[[service]]\nname = \"a\"\nprogram = \"true\"\n";
        assert!(Fleet::from_toml_str(dup)
            .unwrap_err()
            .to_string()
            .contains("defined twice"));
        let cyc = "[[service]]\nname = \"a\"\nprogram = \"true\"\nafter = [{ name = \"b\", condition = \"started\" }]\n\
                   [[service]]\nname = \"b\"\nprogram = \"true\"\nafter = [{ name = \"a\", condition = \"ready\" }]\n";
        assert!(Fleet::from_toml_str(cyc)
            .unwrap_err()
            .to_string()
            .contains("dependency cycle: a -> b -> a"));
        let unknown = "[[service]]\nname = \"a\"\nprogram = \"true\"\nafter = [{ name = \"z\", condition = \"started\" }]\n";
        assert!(Fleet::from_toml_str(unknown)
            .unwrap_err()
            .to_string()
            .contains("unknown service 'z'"));
    }

    #[test]
    fn procfile_and_dotenv() {
        let env = parse_dotenv(
            "# comment\nexport A=1\nB=\"two words\"\nC='x # y'\nD=plain # trailing\n",
            ".env",
        )
        .unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "x # y");
        assert_eq!(env["D"], "plain");
        let fleet = Fleet::parse_procfile(
            "web: python3 -m http.server $PORT\n\n# worker\nworker: ./work --fast\n",
            "Procfile",
            &env,
        )
        .unwrap();
        assert_eq!(fleet.services().len(), 2);
        assert_eq!(
            fleet.services()[0].get_args(),
            ["-c", "python3 -m http.server $PORT"]
        );
        assert!(fleet.services()[1]
            .get_envs()
            .any(|(k, v)| k == "B" && v == "two words"));
        let err = Fleet::parse_procfile("web python3\n", "Procfile", &env).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = utf8_lines(b"web: ok\n# fine\nbad: caf\xe9\n", "Procfile").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSpec);
        assert_eq!(
            err.to_string(),
            "fleet file 'Procfile': line 3, column 9: the line is not valid UTF-8"
        );
        assert!(parse_dotenv("=1\n", ".env").is_err());
    }

    #[test]
    fn the_readme_example_is_a_valid_fleet_with_every_section() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let block = &readme[start..start + readme[start..].find("```").unwrap()];
        // The example's dependency exists only in prose; add it so the fleet is complete.
        let text = format!("{block}\n[[service]]\nname = \"db\"\nprogram = \"postgres\"\n");
        let fleet = Fleet::from_toml_str(&text).unwrap();
        let web = &fleet.services()[0];
        assert_eq!(web.get_ready(), &Ready::Tcp(8080));
        assert_eq!(web.log_policy().get_keep(), 5);
        assert_eq!(web.get_health().unwrap().get_failures(), 3);
        assert_eq!(web.get_max_pids(), Some(64));
        assert_eq!(web.get_max_memory(), Some(256 << 20));
        assert_eq!(web.log_policy().get_tail_lines(), 20);
        assert_eq!(
            web.restart_policy(),
            &RestartPolicy::on_failure()
                .backoff(
                    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30))
                        .jitter(0.1)
                )
                .max_restarts(5, Duration::from_secs(60))
        );
        assert_eq!(
            fleet.settings().state_dir.as_deref(),
            Some("/var/lib/myapp/services")
        );
    }

    proptest! {
        #[test]
        fn any_toml_or_json_text_gives_a_fleet_or_an_error(text in ".{0,300}") {
            let _ = Fleet::from_toml_str(&text);
            let _ = Fleet::from_json_str(&text);
            let _ = Fleet::parse_procfile(&text, "Procfile", &BTreeMap::new());
            let _ = parse_dotenv(&text, ".env");
        }
    }
}

#[cfg(test)]
mod trigger_keys {
    use super::*;

    /// The README's TOML example of triggers is a fleet that parses into what it says.
    #[test]
    fn the_readme_trigger_example_parses() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("### Schedules, watches and output watchdogs")
            .nth(1)
            .expect("the section");
        let toml = section
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a TOML block");
        let fleet = Fleet::from_toml_str(toml).unwrap();
        let backup = fleet.services()[0].get_schedule().unwrap();
        assert!(backup.is_job() && backup.get_catch_up());
        assert_eq!(backup.get_time_zone(), Some("Europe/Paris"));
        let api = &fleet.services()[1];
        assert_eq!(api.get_schedule().unwrap().cron(), "0 4 * * *");
        assert_eq!(
            api.get_watch().unwrap().get_ignore(),
            ["*.log", "node_modules"]
        );
        assert_eq!(
            api.get_watchdog().unwrap().get_silence(),
            Some(std::time::Duration::from_secs(120))
        );
    }
}
