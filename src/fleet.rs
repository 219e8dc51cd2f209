//! [`Fleet`]: a list of services read from a file (TOML, JSON, a Procfile, or imported from
//! PM2's or supervisord's configuration), and what
//! [`Supervisor::apply`](crate::Supervisor::apply) did to converge to it.

use crate::error::{Error, ErrorKind, Result};
use crate::graph;
use crate::policy::RestartPolicy;
use crate::readiness::Condition;
use crate::spec::{ServiceSpec, validate_name};
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
            if pm2 { Format::Pm2 } else { Format::Json }
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
    /// Services whose failure (`errored`, or a one-shot that exited with failure) stops the
    /// fleet and makes `sheepdog run` exit non-zero, so that an orchestrator restarts it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub critical: Vec<String>,
    /// The services `/readyz` requires (default: every service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Vec<String>>,
    /// The address of the HTTP endpoints `sheepdog run` serves (`/livez`, `/readyz`,
    /// `/metrics`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<String>,
    /// One deadline for stopping the whole fleet (default: [`Fleet::grace`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::serde_opt"
    )]
    pub grace: Option<std::time::Duration>,
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
    /// Services whose spec changed, restarted with the new one (one instance at a time for
    /// a service with instances).
    pub restarted: Vec<String>,
    /// Services with instances whose number alone changed: instances added or removed, the
    /// others left running.
    pub scaled: Vec<String>,
    /// Services with `autostart = false` that were defined (new) or updated while stopped,
    /// and not started.
    pub defined: Vec<String>,
    /// Services left as they were (equal spec; started if they were not running).
    pub unchanged: Vec<String>,
    /// Services not in the fleet, stopped and deleted.
    pub deleted: Vec<String>,
    /// Services that could not be started, with the error.
    pub failed: Vec<(String, String)>,
}

/// The Procfile entry that is Heroku's release phase.
const RELEASE: &str = "release";

/// An [`apply`](crate::Supervisor::apply) in steps, for a caller that makes the calls
/// itself: the supervisor's `apply` blocks on each, the control socket's thread must not.
/// `new` says what to define (one `define` each, first) and what to start (one
/// `start_many`), `defined` and `started` take their results, `unlisted` says what a prune
/// deletes (one `delete` each, in that order), `deleted` takes each result.
#[derive(Default)]
pub(crate) struct Convergence {
    applied: Applied,
    /// Each spec handed to `define`, by name.
    defining: Vec<String>,
    /// Each spec handed to `start_many`: its name and what starting it means.
    starting: Vec<(String, Change)>,
}

/// What an apply does with the specs of one fleet entry.
pub(crate) struct Steps {
    /// Specs with `autostart = false`, new or changed while stopped: defined, not started.
    pub(crate) define: Vec<ServiceSpec>,
    /// Specs to start, each after its dependencies.
    pub(crate) start: Vec<ServiceSpec>,
}

#[derive(Clone, Copy, PartialEq)]
enum Change {
    New,
    /// A change that needs new runs (rolled one instance at a time).
    Changed,
    /// Only the number of instances changed.
    Scaled,
    /// Listed, with the same runs, but not running, or with a change that needs no new run.
    Idle,
}

impl Convergence {
    /// Compares the services (`before`) with the fleet, by spec name (the instances of a
    /// spec are one entry of the fleet).
    pub(crate) fn new(before: &[crate::ServiceInfo], fleet: &Fleet) -> (Convergence, Steps) {
        let mut by_spec: std::collections::HashMap<&str, Vec<&crate::ServiceInfo>> =
            std::collections::HashMap::new();
        for info in before {
            by_spec.entry(info.definition()).or_default().push(info);
        }
        let mut c = Convergence::default();
        let mut steps = Steps {
            define: Vec::new(),
            start: Vec::new(),
        };
        for spec in fleet.in_start_order() {
            let name = spec.name().to_string();
            let infos = by_spec.get(spec.name()).map_or(&[][..], Vec::as_slice);
            let settled = infos.iter().all(|i| i.status().is_settled());
            let differs = infos.iter().any(|i| i.spec() != spec);
            let change = if infos.is_empty() {
                Change::New
            } else if infos.iter().any(|i| !i.spec().same_run(spec)) {
                Change::Changed
            } else if infos
                .iter()
                .any(|i| i.spec().get_instances() != spec.get_instances())
            {
                Change::Scaled
            } else if settled || differs {
                Change::Idle
            } else {
                c.applied.unchanged.push(name);
                continue;
            };
            if !spec.get_autostart() && (change == Change::New || settled) {
                // Defined, not started: a new one stays down, a stopped one stopped.
                if !differs && change != Change::New {
                    c.applied.unchanged.push(name);
                } else {
                    c.defining.push(name);
                    steps.define.push(spec.clone());
                }
                continue;
            }
            c.starting.push((name, change));
            steps.start.push(spec.clone());
        }
        (c, steps)
    }

    /// Takes the results of the `define`s, in order.
    ///
    /// # Errors
    ///
    /// The first `ShutDown` or `Store` error: the apply stops there.
    pub(crate) fn defined(&mut self, results: Vec<Result<crate::ServiceInfo>>) -> Result<()> {
        for (name, result) in std::mem::take(&mut self.defining).into_iter().zip(results) {
            self.take(name, result.map(|_| ()), |a| &mut a.defined)?;
        }
        Ok(())
    }

    /// Takes the results of the `start_many`, in order.
    ///
    /// # Errors
    ///
    /// The first `ShutDown` or `Store` error: the apply stops there.
    pub(crate) fn started(&mut self, results: Vec<Result<crate::ServiceInfo>>) -> Result<()> {
        for ((name, change), result) in std::mem::take(&mut self.starting).into_iter().zip(results)
        {
            self.take(name, result.map(|_| ()), |a| match change {
                Change::New => &mut a.started,
                Change::Changed => &mut a.restarted,
                Change::Scaled => &mut a.scaled,
                Change::Idle => &mut a.unchanged,
            })?;
        }
        Ok(())
    }

    /// Files one result under `list` when it succeeded, under `failed` when it failed for
    /// that service alone.
    fn take(
        &mut self,
        name: String,
        result: Result<()>,
        list: impl FnOnce(&mut Applied) -> &mut Vec<String>,
    ) -> Result<()> {
        match result {
            Ok(()) => list(&mut self.applied).push(name),
            Err(e) if matches!(e.kind(), ErrorKind::ShutDown | ErrorKind::Store) => return Err(e),
            Err(e) => self.applied.failed.push((name, e.to_string())),
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
    /// `ignore_watch`, `watch_delay` as a [`Watch`](crate::Watch); `time` as log timestamps;
    /// `uid` and `gid` as the user and group to run as. Every other option, and each one whose meaning differs, is named in
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
    /// rotation; `priority` as the order of the services; `user`, `umask`; `autostart=false`
    /// as a service defined and not started. `%(ENV_X)s`, `%(program_name)s`,
    /// `%(process_num)02d`, `%(here)s`, `%(group_name)s` and `%(host_node_name)s` are
    /// expanded. Every other option and section, and each option whose meaning differs
    /// (`startretries`, `startsecs`, `priority`, `stopasgroup=false`, log file paths), is
    /// named in [`warnings`](Fleet::warnings).
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
    ///                         numprocs=2\nuser=www-data\nstdout_logfile=/var/log/w.log\n")?;
    /// let fleet = Fleet::from_supervisord(&file)?;
    /// assert_eq!(fleet.services()[1].name(), "worker_01");
    /// assert_eq!(fleet.services()[1].get_user(), Some("www-data"));
    /// assert!(fleet.warnings().iter().any(|w| w.contains("stdout_logfile")));
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
        let fleet = Fleet::parse_toml(&read(path)?, &path.display().to_string())?;
        Ok(fleet.beside(path))
    }

    /// The fleet with every relative `env_file` taken from the directory of the fleet file
    /// at `path`.
    fn beside(mut self, path: &Path) -> Fleet {
        let dir = path.parent().unwrap_or(Path::new(""));
        for spec in &mut self.services {
            if let Some(file) = spec.get_env_file().filter(|f| f.is_relative()) {
                *spec = spec.clone().env_file(dir.join(file));
            }
        }
        self
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
        let fleet = Fleet::parse_json(&read(path)?, &path.display().to_string())?;
        Ok(fleet.beside(path))
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
    /// A `release:` entry is Heroku's release phase: a [one-shot task](ServiceSpec::oneshot)
    /// that is not restarted, and that every other entry waits for (they start once it has
    /// exited 0; if it fails, they do not start).
    ///
    /// # Example
    ///
    /// ```
    /// use sheepdog::{Condition, Fleet};
    /// # fn main() -> sheepdog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("Procfile");
    /// std::fs::write(&path, "release: ./migrate\nweb: ./serve\n").unwrap();
    /// let fleet = Fleet::from_procfile(&path)?;
    /// assert!(fleet.services()[0].is_oneshot());
    /// assert_eq!(fleet.services()[1].get_after()[0].condition, Condition::Exited0);
    /// # Ok(()) }
    /// ```
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
                .with_source(e));
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
        if services.iter().any(|s| s.name() == RELEASE) {
            services = services
                .into_iter()
                .map(|s| match s.name() {
                    RELEASE => s.oneshot(true).restart(RestartPolicy::never()),
                    _ => s.after(RELEASE, Condition::Exited0),
                })
                .collect();
        }
        Ok(Fleet::new(services))
    }

    /// Every spec is valid, names (and the names of instances) are unique, dependencies
    /// exist and form no cycle.
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
            if !names.insert(spec.name().to_string()) {
                return Err(invalid(format!(
                    "service '{}' is defined twice",
                    spec.name()
                )));
            }
        }
        for spec in self.services.iter().filter(|s| s.get_instances().is_some()) {
            for index in spec.instance_indexes() {
                let name = spec.instance_name(index);
                if !names.insert(name.clone()) {
                    return Err(invalid(format!(
                        "service '{name}' is also the name of an instance of '{}'",
                        spec.name()
                    )));
                }
            }
        }
        for spec in &self.services {
            for dep in spec.get_after() {
                if !names.contains(&dep.name) {
                    return Err(invalid(format!(
                        "service '{}' depends on unknown service '{}'",
                        spec.name(),
                        dep.name
                    )));
                }
            }
        }
        let settings = &self.supervisor;
        let listed = settings
            .critical
            .iter()
            .chain(settings.ready.iter().flatten());
        if let Some(name) = listed.into_iter().find(|n| !names.contains(n.as_str())) {
            return Err(invalid(format!(
                "[supervisor] names unknown service '{name}'"
            )));
        }
        if let Some(cycle) = graph::find_cycle(&self.nodes()) {
            return Err(invalid(format!("dependency cycle: {}", cycle.join(" -> "))));
        }
        Ok(())
    }

    /// The dependency graph by service name (a dependency on an instance is one on its
    /// service).
    pub(crate) fn nodes(&self) -> Vec<graph::Node<'_>> {
        let owner = |dep: &'_ str| -> Option<&str> {
            let names = || self.services.iter().map(|s| s.name());
            names().find(|n| *n == dep).or_else(|| {
                self.services
                    .iter()
                    .filter(|s| s.get_instances().is_some())
                    .find(|s| {
                        s.instance_indexes()
                            .into_iter()
                            .any(|i| s.instance_name(i) == dep)
                    })
                    .map(|s| s.name())
            })
        };
        self.services
            .iter()
            .map(|s| graph::Node {
                name: s.name(),
                deps: s
                    .get_after()
                    .iter()
                    .map(|d| owner(&d.name).unwrap_or(&d.name))
                    .collect(),
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
    crate::dotenv::utf8_text(bytes).map_err(|p| parse_error(origin, p.line, p.column, &p.message))
}

/// serde_json appends " at line L column C"; the position is reported separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The variables of a dotenv text (see [`crate::dotenv`]).
fn parse_dotenv(text: &str, origin: &str) -> Result<BTreeMap<String, String>> {
    crate::dotenv::parse(text).map_err(|p| parse_error(origin, p.line, p.column, &p.message))
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
        assert!(
            Fleet::from_toml_str(dup)
                .unwrap_err()
                .to_string()
                .contains("defined twice")
        );
        let cyc = "[[service]]\nname = \"a\"\nprogram = \"true\"\nafter = [{ name = \"b\", condition = \"started\" }]\n\
                   [[service]]\nname = \"b\"\nprogram = \"true\"\nafter = [{ name = \"a\", condition = \"ready\" }]\n";
        assert!(
            Fleet::from_toml_str(cyc)
                .unwrap_err()
                .to_string()
                .contains("dependency cycle: a -> b -> a")
        );
        let unknown = "[[service]]\nname = \"a\"\nprogram = \"true\"\nafter = [{ name = \"z\", condition = \"started\" }]\n";
        assert!(
            Fleet::from_toml_str(unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown service 'z'")
        );
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
        assert!(
            fleet.services()[1]
                .get_envs()
                .any(|(k, v)| k == "B" && v == "two words")
        );
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
    fn sizes_take_units_and_env_files_are_found_beside_the_fleet_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(
            &path,
            "[[service]]\nname = \"web\"\nprogram = \"true\"\nmax_memory = \"300M\"\n\
             env_file = \"web.env\"\nlog = { max_bytes = \"1.5GiB\", line_max = \"4K\" }\n\
             [[service]]\nname = \"abs\"\nprogram = \"true\"\nenv_file = \"/etc/abs.env\"\n",
        )
        .unwrap();
        let fleet = Fleet::from_toml_file(&path).unwrap();
        let web = &fleet.services()[0];
        assert_eq!(web.get_max_memory(), Some(300 << 20));
        assert_eq!(web.log_policy().get_max_bytes(), 3 << 29);
        assert_eq!(web.log_policy().get_line_max(), 4096);
        assert_eq!(
            web.get_env_file(),
            Some(dir.path().join("web.env").as_path())
        );
        assert_eq!(
            fleet.services()[1].get_env_file(),
            Some(Path::new("/etc/abs.env"))
        );
        let err = Fleet::from_toml_str(
            "[[service]]\nname = \"a\"\nprogram = \"true\"\nmax_memory = \"lots\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
        assert!(err.to_string().contains("size 'lots'"), "{err}");
    }

    #[test]
    fn instances_name_services_that_may_be_depended_on_but_not_taken() {
        let fleet = Fleet::from_toml_str(
            "[[service]]\nname = \"web\"\nprogram = \"true\"\ninstances = 2\n\
             [[service]]\nname = \"probe\"\nprogram = \"true\"\n\
             after = [{ name = \"web.1\", condition = \"started\" }]\n",
        )
        .unwrap();
        assert_eq!(fleet.services()[0].get_instances(), Some(2));
        let order: Vec<&str> = fleet.in_start_order().iter().map(|s| s.name()).collect();
        assert_eq!(order, ["web", "probe"]);
        let err = Fleet::from_toml_str(
            "[[service]]\nname = \"web\"\nprogram = \"true\"\ninstances = 2\n\
             [[service]]\nname = \"web.1\"\nprogram = \"true\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("service 'web.1' is also the name of an instance of 'web'"),
            "{err}"
        );
        let err = Fleet::from_toml_str(
            "[[service]]\nname = \"web\"\nprogram = \"true\"\ninstances = 2\n\
             after = [{ name = \"web.0\", condition = \"started\" }]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    #[test]
    fn a_procfile_release_entry_is_a_one_shot_task_the_others_wait_for() {
        let fleet = Fleet::parse_procfile(
            "web: ./serve\nrelease: ./migrate\nworker: ./work\n",
            "Procfile",
            &BTreeMap::new(),
        )
        .unwrap();
        let [web, release, worker] = fleet.services() else {
            panic!("three entries")
        };
        assert!(release.is_oneshot() && !web.is_oneshot());
        assert_eq!(release.restart_policy(), &RestartPolicy::never());
        for s in [web, worker] {
            assert_eq!(s.get_after()[0].name, "release");
            assert_eq!(s.get_after()[0].condition, Condition::Exited0);
        }
        let order: Vec<&str> = fleet.in_start_order().iter().map(|s| s.name()).collect();
        assert_eq!(order[0], "release");
        let plain = Fleet::parse_procfile("web: ./serve\n", "Procfile", &BTreeMap::new()).unwrap();
        assert!(plain.services()[0].get_after().is_empty());
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
        assert_eq!(web.get_user(), Some("www-data"));
        assert_eq!(
            web.get_limit(crate::rlimit::Resource::AddressSpace),
            Some((2 << 30, 2 << 30))
        );
        assert_eq!(web.get_umask(), Some(0o027));
        // Every other TOML block of the README is a fleet too.
        let rest = &readme[start..];
        let mut instances_example = false;
        for (i, part) in rest.split("```toml\n").enumerate().skip(1) {
            let block = &part[..part.find("```").unwrap()];
            let fleet = Fleet::from_toml_str(block).unwrap_or_else(|e| panic!("block {i}: {e}"));
            if let [api, migrate] = fleet.services() {
                if api.name() != "api" {
                    continue;
                }
                assert_eq!(api.get_instances(), Some(4));
                assert_eq!(api.get_args()[1], "{instance+8000}");
                assert!(migrate.is_oneshot());
                instances_example = true;
            }
        }
        assert!(instances_example, "the instances example");
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
