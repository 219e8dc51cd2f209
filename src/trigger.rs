//! Triggers: what restarts or runs a service besides its own exit. A [`Schedule`] (a cron
//! expression in a time zone), a [`Watch`] (files that change), a [`Watchdog`] (output that
//! stops, or says something alarming). Value types with serde, and the evaluation the
//! supervision thread needs: the next tick of a cron expression, the ignore patterns of a
//! watch. The cron parser (croner), the time zones (jiff) and the glob matcher (globset) live
//! here and nowhere else; no public signature shows their types.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What a tick of a scheduled job does when the job's previous run is still going.
///
/// A service never has two runs at once, so the choice is between the two runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Overlap {
    /// The tick is skipped (and counted, see `explain`); the run goes on. The default.
    #[default]
    Skip,
    /// The run is stopped (stop signal, `stop_timeout`, SIGKILL), then a new one starts.
    Restart,
}

/// A schedule: a cron expression, in a time zone, that restarts a service (a long-running
/// one, like PM2's `cron_restart`) or runs it (a job, like process-compose's `schedule`).
///
/// The expression has five fields (minute, hour, day of month, month, day of week) or six
/// (seconds first); names (`MON`, `JAN`), ranges, steps, lists, `L`, `W`, `#` and the
/// aliases `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly` are understood. The time
/// zone is an IANA name (`Europe/Paris`, `UTC`); by default the host's local time zone.
/// Across a daylight-saving change a tick in the skipped hour happens once, after it; one
/// in the repeated hour happens once, at its first occurrence.
///
/// - **Scheduled restart** ([`Schedule::restart`]): each tick restarts the service as
///   [`Supervisor::restart`](crate::Supervisor::restart) would (stop signal, then a new run;
///   the run's history records [`Cause::Scheduled`](crate::Cause::Scheduled)). A service in
///   backoff, exited or errored is started. A tick that finds a restart still under way is
///   skipped. A stopped service is not started by its schedule.
/// - **Scheduled job** ([`Schedule::run`]): starting the service arms the schedule without
///   running it ([`Status::Scheduled`](crate::Status::Scheduled)), unless
///   [`run_on_start`](Schedule::run_on_start); each tick runs it. A run that ends with a
///   success code waits for the next tick; a failed one goes through the restart policy
///   (by default retried with backoff; `RestartPolicy::never()` for no retry). A tick that
///   finds the previous run still going follows [`if_running`](Schedule::if_running).
///   [`Supervisor::restart`](crate::Supervisor::restart) runs the job now.
///
/// Ticks missed while the host was down (the last tick is stored in the state directory)
/// are counted and shown by `explain`; a restart schedule drops them (the service starts
/// when the host opens anyway), a job runs once at `open` for all of them if
/// [`catch_up`](Schedule::catch_up), else waits for its next tick. The same holds for ticks
/// passed over while the machine slept or the clock was set forward: at most one run for
/// them, and never two runs for one tick when the clock is set back.
///
/// # Example
///
/// ```
/// use sheepdog::{Overlap, Schedule, ServiceSpec};
///
/// let web = ServiceSpec::new("web", "node")
///     .arg("server.js")
///     .schedule(Schedule::restart("0 4 * * *").time_zone("Europe/Paris"));
/// let backup = ServiceSpec::new("backup", "/usr/local/bin/backup")
///     .schedule(Schedule::run("*/15 * * * *").if_running(Overlap::Skip).catch_up(true));
/// assert!(backup.get_schedule().unwrap().is_job());
/// assert_eq!(web.get_schedule().unwrap().cron(), "0 4 * * *");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restart: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "is_skip")]
    if_running: Overlap,
    #[serde(default, skip_serializing_if = "is_false")]
    run_on_start: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    catch_up: bool,
}

fn is_skip(o: &Overlap) -> bool {
    *o == Overlap::Skip
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Schedule {
    /// Restarts the service at each tick of `cron`.
    pub fn restart(cron: impl Into<String>) -> Schedule {
        Schedule::new(Some(cron.into()), None)
    }

    /// Runs the service (a job) at each tick of `cron`.
    pub fn run(cron: impl Into<String>) -> Schedule {
        Schedule::new(None, Some(cron.into()))
    }

    fn new(restart: Option<String>, run: Option<String>) -> Schedule {
        Schedule {
            restart,
            run,
            time_zone: None,
            if_running: Overlap::Skip,
            run_on_start: false,
            catch_up: false,
        }
    }

    /// The IANA time zone the expression is read in (`"UTC"`, `"America/New_York"`). By
    /// default, the host's local time zone (`TZ`, else `/etc/localtime`).
    pub fn time_zone(mut self, name: impl Into<String>) -> Schedule {
        self.time_zone = Some(name.into());
        self
    }

    /// For a job: what a tick does while the previous run still goes. By default,
    /// [`Overlap::Skip`].
    pub fn if_running(mut self, overlap: Overlap) -> Schedule {
        self.if_running = overlap;
        self
    }

    /// For a job: also run it when it is started (and when the host opens). By default, this
    /// is disabled: the first run is at the first tick.
    pub fn run_on_start(mut self, yes: bool) -> Schedule {
        self.run_on_start = yes;
        self
    }

    /// For a job: when ticks were missed while the host was down, run it once as the host
    /// opens (as systemd's `Persistent=true`). By default, this is disabled.
    pub fn catch_up(mut self, yes: bool) -> Schedule {
        self.catch_up = yes;
        self
    }

    /// The cron expression.
    pub fn cron(&self) -> &str {
        self.restart
            .as_deref()
            .or(self.run.as_deref())
            .unwrap_or("")
    }

    /// Whether the schedule runs a job (else it restarts a long-running service).
    pub fn is_job(&self) -> bool {
        self.run.is_some()
    }

    /// The time zone, if one is set.
    pub fn get_time_zone(&self) -> Option<&str> {
        self.time_zone.as_deref()
    }

    /// What a tick does to a job's run that still goes.
    pub fn get_if_running(&self) -> Overlap {
        self.if_running
    }

    /// Whether a job also runs when started.
    pub fn get_run_on_start(&self) -> bool {
        self.run_on_start
    }

    /// Whether a job catches up on ticks missed while the host was down.
    pub fn get_catch_up(&self) -> bool {
        self.catch_up
    }

    /// The rule this schedule breaks, if any.
    fn problem(&self) -> Option<String> {
        match (&self.restart, &self.run) {
            (Some(_), Some(_)) => {
                return Some("schedule sets both 'restart' and 'run'; choose one".into());
            }
            (None, None) => return Some("schedule sets neither 'restart' nor 'run'".into()),
            _ => {}
        }
        if self.restart.is_some()
            && (self.run_on_start || self.catch_up || self.if_running != Overlap::Skip)
        {
            return Some(
                "schedule: if_running, run_on_start and catch_up apply to a scheduled run, not a restart"
                    .into(),
            );
        }
        Cron::new(self).err()
    }
}

/// Restarts a service when files under some paths change: like PM2's `watch`, but a stopped
/// service stays stopped, and a burst of changes gives one restart.
///
/// Paths are files or directories (watched with every directory below them, including those
/// created later), relative to the service's working directory (or the host's). A change
/// is an entry created, deleted, written, or moved in or out. Once a change comes, the
/// supervisor waits for the paths to be quiet for [`debounce`](Watch::debounce) (at most ten
/// times that from the first change), then restarts the service as
/// [`Supervisor::restart`](crate::Supervisor::restart) would; its history records
/// [`Cause::FilesChanged`](crate::Cause::FilesChanged) with the paths. A service in backoff,
/// exited or errored is started; a stopped one is not (its directories are not even
/// watched). The state directory is never watched, so the service's own logs cannot restart
/// it.
///
/// Ignore patterns are globs in the manner of `.gitignore`: a pattern without a `/`
/// (`*.log`, `node_modules`) matches a name at any depth, one with a `/` (`build/**`,
/// `/tmp`) matches the path from the watched directory; a matched directory is not watched.
/// The directories are watched with inotify, in the supervision thread's own wait: no thread
/// per service, and no polling. Arming a watch (at a start, or when the host opens) walks the
/// tree in the supervision thread, about 20 µs per directory (`benches/triggers.rs`): a
/// service's watch holds at most 10,000 directories (about 0.2 s to arm; beyond, a warning is
/// logged and the rest is not watched), so ignore the big trees (`node_modules`, `target`).
///
/// # Example
///
/// ```
/// use sheepdog::{ServiceSpec, Watch};
/// use std::time::Duration;
///
/// let dev = ServiceSpec::new("api", "node").arg("server.js").watch(
///     Watch::new(["src", "config.json"])
///         .ignore("*.log")
///         .ignore("node_modules")
///         .debounce(Duration::from_millis(300)),
/// );
/// assert_eq!(dev.get_watch().unwrap().paths(), ["src", "config.json"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ignore: Vec<String>,
    #[serde(default = "default_debounce", with = "crate::duration::serde_str")]
    debounce: Duration,
}

fn default_debounce() -> Duration {
    Duration::from_millis(500)
}

impl Watch {
    /// Watches `paths`.
    pub fn new<I, S>(paths: I) -> Watch
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Watch {
            paths: paths.into_iter().map(Into::into).collect(),
            ignore: Vec::new(),
            debounce: default_debounce(),
        }
    }

    /// Ignores changes to paths matching `pattern` (a glob, see above).
    pub fn ignore(mut self, pattern: impl Into<String>) -> Watch {
        self.ignore.push(pattern.into());
        self
    }

    /// How long the paths must be quiet after a change before the restart. By default,
    /// 500 ms.
    pub fn debounce(mut self, quiet: Duration) -> Watch {
        self.debounce = quiet;
        self
    }

    /// The watched paths, as given.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The ignore patterns.
    pub fn get_ignore(&self) -> &[String] {
        &self.ignore
    }

    /// The quiet time before a restart.
    pub fn get_debounce(&self) -> Duration {
        self.debounce
    }

    fn problem(&self) -> Option<String> {
        if self.paths.is_empty() {
            return Some("watch: no paths".into());
        }
        if self.paths.iter().any(|p| p.is_empty() || p.contains('\0')) {
            return Some("watch: a path is empty or contains a NUL byte".into());
        }
        Ignore::new(&self.ignore).err()
    }
}

/// Restarts a service whose output stops, or says something alarming: a liveness check
/// that reads the logs.
///
/// [`silence`](Watchdog::silence): no byte on stdout or stderr for that long (counted from
/// the run's start, then from its last output). [`pattern`](Watchdog::pattern): a line of
/// stdout or stderr matches a regular expression (the syntax of the `regex` crate, as for
/// `Ready::LogLine`). Either ends the run the way a failed health check does: the stop
/// signal to its group, then the restart policy decides (by default, a restart with
/// backoff). The run's history records [`Cause::Silent`](crate::Cause::Silent) or
/// [`Cause::OutputMatched`](crate::Cause::OutputMatched) with the line, and `explain` says
/// so. The log pump sees every line already, so a watchdog adds no thread and no read; a
/// silence check wakes the supervision thread once per silence period at most.
///
/// A program must flush its lines for them to be seen when written (Python buffers its
/// output unless run with `-u` or `PYTHONUNBUFFERED=1`; `stdbuf -oL` helps C programs).
///
/// # Example
///
/// ```
/// use sheepdog::{ServiceSpec, Watchdog};
/// use std::time::Duration;
///
/// let worker = ServiceSpec::new("worker", "./worker").watchdog(
///     Watchdog::new()
///         .silence(Duration::from_secs(120))
///         .pattern("deadlock detected|out of connections"),
/// );
/// assert_eq!(worker.get_watchdog().unwrap().get_silence(), Some(Duration::from_secs(120)));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::serde_opt"
    )]
    silence: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    patterns: Vec<String>,
}

/// The shortest silence a watchdog waits for: shorter would only make the supervision
/// thread spin on a quiet service.
const MIN_SILENCE: Duration = Duration::from_millis(100);

impl Watchdog {
    /// A watchdog that checks nothing yet.
    pub fn new() -> Watchdog {
        Watchdog::default()
    }

    /// Ends a run that writes nothing for `quiet` (at least 100 ms).
    pub fn silence(mut self, quiet: Duration) -> Watchdog {
        self.silence = Some(quiet);
        self
    }

    /// Ends a run that writes a line matching `regex`.
    pub fn pattern(mut self, regex: impl Into<String>) -> Watchdog {
        self.patterns.push(regex.into());
        self
    }

    /// The silence that ends a run, if any.
    pub fn get_silence(&self) -> Option<Duration> {
        self.silence
    }

    /// The patterns whose match ends a run.
    pub fn get_patterns(&self) -> &[String] {
        &self.patterns
    }

    fn problem(&self) -> Option<String> {
        if self.silence.is_none() && self.patterns.is_empty() {
            return Some("watchdog: neither a silence nor a pattern".into());
        }
        if self.silence.is_some_and(|d| d < MIN_SILENCE) {
            return Some(format!(
                "watchdog: silence is below the minimum of {}",
                crate::duration::format(MIN_SILENCE)
            ));
        }
        for p in &self.patterns {
            if let Err(e) = regex_lite::Regex::new(p) {
                return Some(format!(
                    "watchdog pattern '{p}' is not a regular expression: {e}"
                ));
            }
        }
        None
    }
}

/// The rule the triggers of a spec break, if any, as the end of an `invalid spec: …`
/// message.
pub(crate) fn problem(
    schedule: Option<&Schedule>,
    watch: Option<&Watch>,
    watchdog: Option<&Watchdog>,
) -> Option<String> {
    schedule
        .and_then(Schedule::problem)
        .or_else(|| watch.and_then(Watch::problem))
        .or_else(|| watchdog.and_then(Watchdog::problem))
}

/// A schedule's cron expression in its time zone, parsed: the next tick after a time.
pub(crate) struct Cron {
    cron: croner::Cron,
    zone: jiff::tz::TimeZone,
}

impl Cron {
    pub(crate) fn new(schedule: &Schedule) -> Result<Cron, String> {
        let text = schedule.cron();
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(text)
            .map_err(|e| format!("schedule '{text}' is not a cron expression: {e}"))?;
        let zone = match schedule.get_time_zone() {
            None => jiff::tz::TimeZone::system(),
            Some(name) => jiff::tz::TimeZone::get(name)
                .map_err(|_| format!("schedule: unknown time zone '{name}'"))?,
        };
        let c = Cron { cron, zone };
        // An expression that names no real time (`0 0 30 2 *`) never ticks: refused, rather
        // than a service that silently never runs.
        if c.next_after(SystemTime::now()).is_none() {
            return Err(format!("schedule '{text}' never happens"));
        }
        Ok(c)
    }

    /// The first tick strictly after `t`, if any (within the years the calendar covers).
    pub(crate) fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let ts = jiff::Timestamp::try_from(t).ok()?;
        let zoned = ts.to_zoned(self.zone.clone());
        let next = self.cron.find_next_occurrence(&zoned, false).ok()?;
        Some(SystemTime::from(next.timestamp()))
    }

    /// How many ticks fall in `(after, until]`, counting no further than `max`.
    pub(crate) fn count_between(&self, after: SystemTime, until: SystemTime, max: u64) -> u64 {
        let mut n = 0;
        let mut t = after;
        while n < max {
            match self.next_after(t) {
                Some(next) if next <= until => {
                    n += 1;
                    t = next;
                }
                _ => break,
            }
        }
        n
    }

    /// `t` in the schedule's time zone, for people: `2025-03-30 04:00:00 +02:00 (Europe/Paris)`.
    pub(crate) fn local(&self, t: SystemTime) -> String {
        match jiff::Timestamp::try_from(t) {
            Ok(ts) => {
                let z = ts.to_zoned(self.zone.clone());
                let name = self.zone.iana_name().unwrap_or("local");
                format!("{} ({name})", z.strftime("%Y-%m-%d %H:%M:%S %:z"))
            }
            Err(_) => "(out of range)".to_string(),
        }
    }
}

/// A watch's ignore patterns, compiled.
pub(crate) struct Ignore {
    set: globset::GlobSet,
}

impl Ignore {
    pub(crate) fn new(patterns: &[String]) -> Result<Ignore, String> {
        let mut b = globset::GlobSetBuilder::new();
        for p in patterns {
            let anchored = p.trim_end_matches('/');
            let (base, anchored) = match anchored.strip_prefix('/') {
                Some(rest) => (rest.to_string(), true),
                None => (anchored.to_string(), anchored.contains('/')),
            };
            let base = if anchored { base } else { format!("**/{base}") };
            for glob in [base.clone(), format!("{base}/**")] {
                let g = globset::GlobBuilder::new(&glob)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("watch: ignore pattern '{p}' is not a glob: {e}"))?;
                b.add(g);
            }
        }
        let set = b
            .build()
            .map_err(|e| format!("watch: ignore patterns: {e}"))?;
        Ok(Ignore { set })
    }

    /// Whether `rel` (a path relative to a watched directory) is ignored.
    pub(crate) fn matches(&self, rel: &Path) -> bool {
        !self.set.is_empty() && self.set.is_match(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn five_and_six_fields_in_a_time_zone() {
        // 2024-01-01T00:00:00Z is 1704067200.
        let jan1 = 1_704_067_200;
        let daily = Cron::new(&Schedule::restart("0 4 * * *").time_zone("UTC")).unwrap();
        assert_eq!(daily.next_after(at(jan1)), Some(at(jan1 + 4 * 3600)));
        let paris = Cron::new(&Schedule::restart("0 4 * * *").time_zone("Europe/Paris")).unwrap();
        assert_eq!(
            paris.next_after(at(jan1)),
            Some(at(jan1 + 3 * 3600)),
            "04:00 in Paris is 03:00 UTC in winter"
        );
        assert!(
            paris
                .local(at(jan1 + 3 * 3600))
                .starts_with("2024-01-01 04:00:00 +01:00")
        );
        let every_2s = Cron::new(&Schedule::run("*/2 * * * * *").time_zone("UTC")).unwrap();
        assert_eq!(every_2s.next_after(at(jan1)), Some(at(jan1 + 2)));
        assert_eq!(every_2s.count_between(at(jan1), at(jan1 + 60), 1000), 30);
        assert_eq!(every_2s.count_between(at(jan1), at(jan1 + 60), 7), 7);
        let hourly = Cron::new(&Schedule::run("@hourly").time_zone("UTC")).unwrap();
        assert_eq!(hourly.next_after(at(jan1)), Some(at(jan1 + 3600)));
    }

    #[test]
    fn a_daylight_saving_gap_gives_one_tick_after_it() {
        // 2024-03-31 in Paris: 02:00 becomes 03:00. 2024-03-31T00:00:00Z is 1711843200.
        let cron = Cron::new(&Schedule::run("30 2 * * *").time_zone("Europe/Paris")).unwrap();
        let night = at(1_711_843_200);
        let next = cron.next_after(night).unwrap();
        let ticks = cron.count_between(night, night + Duration::from_secs(86_400 - 1), 10);
        assert_eq!(
            ticks, 1,
            "one tick on the day of the gap, not zero, not two"
        );
        assert!(next > night && next < night + Duration::from_secs(6 * 3600));
    }

    #[test]
    fn bad_schedules_watches_and_watchdogs_are_named() {
        type Case = (
            Option<Schedule>,
            Option<Watch>,
            Option<Watchdog>,
            &'static str,
        );
        let cases: [Case; 9] = [
            (
                Some(Schedule::restart("61 * * * *")),
                None,
                None,
                "not a cron expression",
            ),
            (
                Some(Schedule::restart("0 4 * * *").time_zone("Mars/Olympus")),
                None,
                None,
                "unknown time zone",
            ),
            (
                Some(Schedule::restart("0 0 30 2 *")),
                None,
                None,
                "never happens",
            ),
            (
                Some(Schedule::restart("* * * * *").catch_up(true)),
                None,
                None,
                "apply to a scheduled run",
            ),
            (
                None,
                Some(Watch::new(Vec::<String>::new())),
                None,
                "no paths",
            ),
            (
                None,
                Some(Watch::new(["src"]).ignore("[")),
                None,
                "not a glob",
            ),
            (None, None, Some(Watchdog::new()), "neither"),
            (
                None,
                None,
                Some(Watchdog::new().pattern("(")),
                "not a regular expression",
            ),
            (
                None,
                None,
                Some(Watchdog::new().silence(Duration::from_millis(5))),
                "below the minimum",
            ),
        ];
        for (s, w, d, needle) in cases {
            let why = problem(s.as_ref(), w.as_ref(), d.as_ref()).expect(needle);
            assert!(why.contains(needle), "{why}");
        }
        assert_eq!(
            problem(
                Some(&Schedule::run("0 * * * *").catch_up(true)),
                Some(&Watch::new(["."])),
                Some(&Watchdog::new().silence(Duration::from_secs(1)))
            ),
            None
        );
    }

    #[test]
    fn ignore_patterns_work_like_gitignore() {
        let ig = Ignore::new(&[
            "*.log".into(),
            "node_modules".into(),
            "build/**".into(),
            "/tmp".into(),
        ])
        .unwrap();
        for ignored in [
            "a.log",
            "deep/down/b.log",
            "node_modules",
            "node_modules/x/index.js",
            "pkg/node_modules/y.js",
            "build/out.js",
            "tmp",
            "tmp/x",
        ] {
            assert!(ig.matches(Path::new(ignored)), "{ignored}");
        }
        for kept in [
            "src/app.js",
            "log.txt",
            "src/tmp/x",
            "rebuild/x.js",
            "a.logs",
        ] {
            assert!(!ig.matches(Path::new(kept)), "{kept}");
        }
        assert!(!Ignore::new(&[]).unwrap().matches(Path::new("x")));
    }

    #[test]
    fn triggers_round_trip_through_json() {
        let s = Schedule::run("*/5 * * * * *")
            .time_zone("UTC")
            .if_running(Overlap::Restart)
            .run_on_start(true)
            .catch_up(true);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            serde_json::from_str::<Schedule>(&json).unwrap(),
            s,
            "{json}"
        );
        let w = Watch::new(["src"])
            .ignore("*.tmp")
            .debounce(Duration::from_secs(2));
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<Watch>(&json).unwrap(), w, "{json}");
        let d = Watchdog::new()
            .silence(Duration::from_secs(9))
            .pattern("boom");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(
            serde_json::from_str::<Watchdog>(&json).unwrap(),
            d,
            "{json}"
        );
    }
}
