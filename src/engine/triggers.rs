//! Triggers, as the supervision thread runs them: schedules (ticks on the wall clock),
//! watches (inotify events, debounced) and output watchdogs (silence, a matching line).
//!
//! A service's triggers are *armed* while the operator wants it up: when a start (or a
//! resurrection) makes it so, or its spec changes; they are disarmed by a stop or a delete,
//! so a stopped service is never restarted by a tick or a change. Arming is idempotent for
//! a spec already armed, so the restarts the triggers cause never re-walk a watched tree.
//!
//! The ticks wait in one heap on wall-clock times, with one `timerfd` on `CLOCK_REALTIME`
//! set to the nearest (so a tick comes at its time after a suspend, and a clock that is set
//! wakes the loop); the watches share one inotify instance. Both fds sit in the loop's one
//! epoll: the thread count does not depend on how many services have triggers, and with
//! nothing due the thread does not wake.

use super::Engine;
use super::io::Io;
use super::lifecycle::{self, Step};
use super::service::{Service, State, Then};
use super::timers::TimerKind;
use crate::history::Cause;
use crate::logs::LastOutput;
use crate::policy::{Decision, Outcome, RunEnd};
use crate::sys::{Fired, FsEvent, Inotify, Registry, WallTimer};
use crate::trigger::{Cron, Ignore, Overlap};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{ALARM_TOKEN, INOTIFY_TOKEN};
/// Missed ticks are counted up to this many (a per-second schedule over a month offline
/// would otherwise take a while to count).
const MISSED_COUNT_MAX: u64 = 100_000;
/// Inotify events handled per turn; the rest stay readable for the next.
const FS_EVENTS_PER_TURN: usize = 256;
/// The most directories one service's watch holds (beyond, a warning says the rest of the
/// tree is not watched).
const WATCHED_DIRS_MAX: usize = 10_000;
/// A burst of changes delays the restart by at most this many debounce periods.
const DEBOUNCE_CAP: u32 = 10;
/// The most changed paths a restart's reason names.
const PATHS_NAMED: usize = 3;

/// The wall clock, and one alarm on it: a trait so that the engine's tests drive schedules
/// with a clock of their own.
pub(crate) trait Clock {
    /// The time now.
    fn wall(&self) -> SystemTime;
    /// Makes [`ALARM_TOKEN`] ready at `at` (or never).
    fn set_alarm(&mut self, at: Option<SystemTime>);
    /// The alarm's fd was ready: what it says.
    fn on_alarm(&mut self) -> Fired;
}

/// The real clock: `SystemTime` and a `timerfd`, made at the first alarm.
struct WallClock {
    timer: Option<WallTimer>,
    registry: Rc<Registry>,
}

impl Clock for WallClock {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn set_alarm(&mut self, at: Option<SystemTime>) {
        if self.timer.is_none() {
            if at.is_none() {
                return;
            }
            match WallTimer::new().and_then(|t| self.registry.add(&t, ALARM_TOKEN).map(|()| t)) {
                Ok(t) => self.timer = Some(t),
                Err(e) => return log::error!("cannot make the schedules' timer: {e}"),
            }
        }
        let timer = self.timer.as_ref().expect("made above");
        if let Err(e) = timer.set(at) {
            log::error!("cannot set the schedules' timer: {e}");
        }
    }

    fn on_alarm(&mut self) -> Fired {
        self.timer.as_ref().map_or(Fired::Nothing, WallTimer::read)
    }
}

/// What the triggers of every service share: the clock and the ticks waiting on it, and the
/// inotify instance with the directories it watches.
pub(crate) struct Triggers {
    pub(super) clock: Box<dyn Clock>,
    /// (tick time, service id), nearest first; an entry whose service has moved on (another
    /// `next_tick`, or disarmed) is dropped when it comes up.
    ticks: BinaryHeap<Reverse<(SystemTime, u64)>>,
    /// What the alarm is set to.
    alarm_at: Option<SystemTime>,
    registry: Rc<Registry>,
    inotify: Option<Inotify>,
    /// Watch descriptor → the directory and the services watching it.
    dirs: HashMap<i32, WatchedDir>,
    events: Vec<FsEvent>,
    /// The state directory: never watched (a service's own logs would restart it forever).
    exclude: Option<PathBuf>,
}

struct WatchedDir {
    path: PathBuf,
    services: Vec<u64>,
}

impl Triggers {
    pub(super) fn new(registry: Rc<Registry>) -> Triggers {
        Triggers {
            clock: Box::new(WallClock {
                timer: None,
                registry: registry.clone(),
            }),
            ticks: BinaryHeap::new(),
            alarm_at: None,
            registry,
            inotify: None,
            dirs: HashMap::new(),
            events: Vec::new(),
            exclude: None,
        }
    }

    /// Never watches `dir` or anything under it.
    pub(super) fn exclude(&mut self, dir: &Path) {
        self.exclude = Some(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()));
    }

    fn push_tick(&mut self, at: SystemTime, id: u64) {
        self.ticks.push(Reverse((at, id)));
    }

    /// Sets the alarm to the nearest tick, if that changed.
    fn update_alarm(&mut self) {
        let next = self.ticks.peek().map(|Reverse((at, _))| *at);
        if next != self.alarm_at {
            self.clock.set_alarm(next);
            self.alarm_at = next;
        }
    }

    fn inotify(&mut self) -> Option<&mut Inotify> {
        if self.inotify.is_none() {
            match Inotify::new().and_then(|i| self.registry.add(&i, INOTIFY_TOKEN).map(|()| i)) {
                Ok(i) => self.inotify = Some(i),
                Err(e) => {
                    log::error!("cannot watch files: {e}");
                    return None;
                }
            }
        }
        self.inotify.as_mut()
    }

    /// Watches `dir` for service `id`; returns its watch descriptor.
    fn watch_dir(&mut self, id: u64, dir: &Path) -> Option<i32> {
        let wd = match self.inotify()?.watch_dir(dir) {
            Ok(wd) => wd,
            Err(e) => {
                log::warn!("cannot watch '{}': {e}", dir.display());
                return None;
            }
        };
        let entry = self.dirs.entry(wd).or_insert_with(|| WatchedDir {
            path: dir.to_path_buf(),
            services: Vec::new(),
        });
        if !entry.services.contains(&id) {
            entry.services.push(id);
        }
        Some(wd)
    }

    /// Service `id` no longer watches `wd`; the directory's watch goes with its last service.
    fn unwatch(&mut self, id: u64, wd: i32) {
        let Some(dir) = self.dirs.get_mut(&wd) else {
            return;
        };
        dir.services.retain(|s| *s != id);
        if dir.services.is_empty() {
            self.dirs.remove(&wd);
            if let Some(i) = &self.inotify {
                i.unwatch(wd);
            }
        }
    }

    /// How many directories are watched, for every service.
    #[cfg(test)]
    pub(super) fn watched_dirs(&self) -> usize {
        self.dirs.len()
    }

    fn excluded(&self, path: &Path) -> bool {
        self.exclude.as_ref().is_some_and(|x| path.starts_with(x))
    }
}

/// One service's triggers, as armed for its spec.
#[derive(Default)]
pub(super) struct Armed {
    /// The spec they were armed for (`None`: disarmed).
    spec: Option<Arc<crate::spec::ServiceSpec>>,
    cron: Option<Rc<Cron>>,
    /// The next tick, while a schedule is armed.
    pub(super) next_tick: Option<SystemTime>,
    /// Ticks missed (the host down, the machine asleep, the clock set forward), counted
    /// since the schedule was armed.
    missed: u64,
    /// Ticks of a job skipped because its run was still going.
    skipped: u64,
    /// The next start of a job is a run (a tick, a catch-up, a restart by hand).
    run_now: bool,
    watch: Option<Watching>,
    /// When the current run last wrote (a watchdog's silence).
    last_output: Option<Arc<LastOutput>>,
    /// Why the last run ended, when a trigger ended it, for `explain`.
    last_cause: Option<(Cause, String)>,
}

struct Watching {
    roots: Vec<Root>,
    ignore: Ignore,
    debounce: Duration,
    wds: HashSet<i32>,
    /// A change waiting out the debounce.
    change: Option<Change>,
}

/// A watched path: a directory (and its tree), or a file (through its directory).
struct Root {
    dir: PathBuf,
    file: Option<OsString>,
}

struct Change {
    first: Instant,
    last: Instant,
    /// The timer set for it, if one is pending.
    timer: Option<Instant>,
    paths: Vec<String>,
    count: u64,
}

impl Change {
    fn due(&self, debounce: Duration) -> Instant {
        (self.last + debounce).min(self.first + debounce * DEBOUNCE_CAP)
    }
}

/// Whether the service is a scheduled job.
pub(super) fn is_job(svc: &Service) -> bool {
    svc.spec.get_schedule().is_some_and(|s| s.is_job())
}

/// Arms the triggers of a service the operator wants up, for its current spec (nothing if
/// they are armed for it already). `resurrected`: the host is opening, and `last_tick` is
/// the last tick the previous host handled (or `None`).
pub(super) fn arm(svc: &mut Service, io: &mut Io, resurrected: Option<Option<SystemTime>>) {
    if svc
        .triggers
        .spec
        .as_ref()
        .is_some_and(|s| Arc::ptr_eq(s, &svc.spec))
    {
        return;
    }
    disarm(svc, io);
    svc.triggers.spec = Some(svc.spec.clone());
    let name = svc.spec.name().to_string();
    if let Some(schedule) = svc.spec.get_schedule() {
        match Cron::new(schedule) {
            Ok(cron) => {
                let wall = io.triggers.clock.wall();
                let missed = match resurrected {
                    Some(Some(last)) => cron.count_between(last, wall, MISSED_COUNT_MAX),
                    _ => 0,
                };
                let job = schedule.is_job();
                if missed > 0 {
                    let what = match (job, schedule.get_catch_up()) {
                        (false, _) => "the restarts are dropped (the service starts now)",
                        (true, true) => "running once now (catch_up)",
                        (true, false) => "waiting for the next tick (no catch_up)",
                    };
                    log::info!(
                        "service '{name}': {missed} scheduled ticks passed while the host was down; {what}"
                    );
                }
                svc.triggers.missed = missed;
                svc.triggers.skipped = 0;
                svc.triggers.run_now =
                    job && (schedule.get_run_on_start() || (schedule.get_catch_up() && missed > 0));
                schedule_next(svc, io, &cron, wall);
                svc.triggers.cron = Some(Rc::new(cron));
            }
            Err(why) => log::error!("service '{name}': {why}"),
        }
    }
    if let Some(watch) = svc.spec.get_watch() {
        match Ignore::new(watch.get_ignore()) {
            Ok(ignore) => {
                let base = match svc.spec.get_current_dir() {
                    Some(dir) => PathBuf::from(dir),
                    None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
                };
                let mut w = Watching {
                    roots: Vec::new(),
                    ignore,
                    debounce: watch.get_debounce(),
                    wds: HashSet::new(),
                    change: None,
                };
                for path in watch.paths() {
                    let path = base.join(path);
                    let path = path.canonicalize().unwrap_or(path);
                    if path.is_dir() {
                        add_tree(svc.id, &name, &mut w, io, &path, &path);
                        w.roots.push(Root {
                            dir: path,
                            file: None,
                        });
                    } else if let (Some(dir), Some(file)) = (path.parent(), path.file_name()) {
                        if !path.exists() {
                            log::warn!(
                                "service '{name}': watched path '{}' does not exist; its directory is watched for it",
                                path.display()
                            );
                        }
                        if let Some(wd) = io.triggers.watch_dir(svc.id, dir) {
                            w.wds.insert(wd);
                        }
                        w.roots.push(Root {
                            dir: dir.to_path_buf(),
                            file: Some(file.to_os_string()),
                        });
                    }
                }
                svc.triggers.watch = Some(w);
            }
            Err(why) => log::error!("service '{name}': {why}"),
        }
    }
    io.changes.touch(svc.id);
}

/// Computes and queues the next tick after `after`.
fn schedule_next(svc: &mut Service, io: &mut Io, cron: &Cron, after: SystemTime) {
    svc.triggers.next_tick = cron.next_after(after);
    if let Some(at) = svc.triggers.next_tick {
        io.triggers.push_tick(at, svc.id);
    }
    io.store.set_tick(svc.id, after);
    io.changes.touch(svc.id);
}

/// Watches `dir` and every directory below it that is not ignored, for service `id`.
fn add_tree(id: u64, name: &str, w: &mut Watching, io: &mut Io, root: &Path, dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if io.triggers.excluded(&dir) {
            continue;
        }
        if w.wds.len() >= WATCHED_DIRS_MAX {
            log::warn!(
                "service '{name}': watching {WATCHED_DIRS_MAX} directories already; '{}' and what is left below '{}' are not watched (ignore some)",
                dir.display(),
                root.display()
            );
            return;
        }
        if let Some(wd) = io.triggers.watch_dir(id, &dir) {
            w.wds.insert(wd);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Not through a symbolic link: a link to `/` must not watch the machine.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let path = entry.path();
                let rel = path.strip_prefix(root).unwrap_or(&path);
                if !w.ignore.matches(rel) {
                    stack.push(path);
                }
            }
        }
    }
}

/// Disarms a service's triggers: no more ticks, no more watches, no pending change.
pub(super) fn disarm(svc: &mut Service, io: &mut Io) {
    let t = &mut svc.triggers;
    t.spec = None;
    t.cron = None;
    t.next_tick = None;
    t.run_now = false;
    if let Some(w) = t.watch.take() {
        for wd in w.wds {
            io.triggers.unwatch(svc.id, wd);
        }
    }
    io.changes.touch(svc.id);
}

/// An operator's restart of a job runs it now.
pub(super) fn restart_asked(svc: &mut Service) {
    if is_job(svc) {
        svc.triggers.run_now = true;
    }
}

/// Whether a start must not spawn: a job not due to run now waits for its tick
/// ([`State::Scheduled`]).
pub(super) fn holds_back(svc: &mut Service, io: &mut Io) -> bool {
    if !is_job(svc) || std::mem::take(&mut svc.triggers.run_now) {
        return false;
    }
    if !matches!(svc.state, State::Scheduled) {
        svc.state = State::Scheduled;
        io.changes.save(svc.id);
    }
    true
}

/// What the restart policy decided, for a job: a run that succeeded waits for its next
/// tick instead.
pub(super) fn job_decision(svc: &Service, end: &RunEnd, decision: Decision) -> Decision {
    let success =
        matches!(end.outcome, Outcome::Code(c) if svc.spec.restart_policy().is_success(c));
    if is_job(svc) && success {
        Decision::Exited
    } else {
        decision
    }
}

/// Whether a run that the policy does not restart leaves the service waiting for its next
/// tick: an armed job.
pub(super) fn waits_for_tick(svc: &Service) -> bool {
    is_job(svc) && svc.triggers.spec.is_some()
}

/// The state a run that the policy does not restart leaves: an armed job waits for its
/// next tick, anything else has exited.
pub(super) fn exited_state(svc: &Service) -> State {
    if waits_for_tick(svc) {
        State::Scheduled
    } else {
        State::Exited
    }
}

/// Ends the current run for a trigger (if one is live and not stopping already), and starts
/// the service again: a new run at once for a service without one.
fn restart_for(svc: &mut Service, io: &mut Io, cause: Cause, reason: String, now: Instant) -> Step {
    svc.triggers.last_cause = Some((cause, reason.clone()));
    // Like an operator's restart: not a crash, the backoff starts afresh.
    svc.history = Default::default();
    match &mut svc.state {
        State::Running(run) => {
            if run.stop.is_some() {
                return Step::Done;
            }
            if run.is_live() {
                run.cause = Some(cause);
            }
            run.end_reason = Some(reason);
            lifecycle::begin_stop(svc, io, Then::Start, false, now)
        }
        State::Backoff { .. } | State::Exited | State::Errored(_) | State::Scheduled => Step::Start,
        State::Waiting | State::Stopped | State::Sweeping(_) => Step::Done,
    }
}

impl Engine {
    /// Fires the ticks that are due on the wall clock, then sets the alarm to the next.
    pub(super) fn fire_ticks(&mut self, now: Instant) {
        if self.io.triggers.ticks.is_empty() && self.io.triggers.alarm_at.is_none() {
            return;
        }
        let wall = self.io.triggers.clock.wall();
        while let Some(&Reverse((at, id))) = self.io.triggers.ticks.peek() {
            if at > wall {
                break;
            }
            self.io.triggers.ticks.pop();
            let Some(svc) = self.services.get_mut(&id) else {
                continue;
            };
            if svc.triggers.next_tick != Some(at) {
                continue; // disarmed, or re-armed for another spec
            }
            let step = on_tick(svc, &mut self.io, at, wall, now);
            self.follow(id, step, now);
        }
        self.io.triggers.update_alarm();
    }

    /// The alarm's fd was ready: the tick is handled by `fire_ticks` this turn; the timer
    /// is set again (it fired, or the clock was set and cancelled it).
    pub(super) fn on_alarm(&mut self) {
        if self.io.triggers.clock.on_alarm() == Fired::ClockSet {
            log::info!("the wall clock was set: the schedules go by the new time");
        }
        // Whatever it said, the timer is no longer set.
        self.io.triggers.alarm_at = None;
    }

    /// Reads the inotify events and notes the changes of every service they concern.
    pub(super) fn on_fs_events(&mut self, now: Instant) {
        let mut events = std::mem::take(&mut self.io.triggers.events);
        events.clear();
        if let Some(i) = self.io.triggers.inotify.as_mut()
            && let Err(e) = i.read(&mut events, FS_EVENTS_PER_TURN)
        {
            log::error!("cannot read file changes: {e}");
        }
        for event in &events {
            if event.overflow {
                let ids: Vec<u64> = self
                    .services
                    .values()
                    .filter(|s| s.triggers.watch.is_some())
                    .map(|s| s.id)
                    .collect();
                for id in ids {
                    let svc = self.services.get_mut(&id).expect("listed above");
                    note_change(
                        svc,
                        &mut self.io,
                        "(events lost: the kernel's queue overflowed)".into(),
                        now,
                    );
                }
                continue;
            }
            let Some(dir) = self.io.triggers.dirs.get(&event.wd) else {
                continue;
            };
            if event.gone {
                let dir = self
                    .io
                    .triggers
                    .dirs
                    .remove(&event.wd)
                    .expect("present above");
                for id in dir.services {
                    if let Some(w) = self
                        .services
                        .get_mut(&id)
                        .and_then(|s| s.triggers.watch.as_mut())
                    {
                        w.wds.remove(&event.wd);
                    }
                }
                continue;
            }
            let path = match &event.name {
                Some(name) => dir.path.join(name),
                None => dir.path.clone(),
            };
            for id in dir.services.clone() {
                if let Some(svc) = self.services.get_mut(&id) {
                    on_fs_event(svc, &mut self.io, &path, event, now);
                }
            }
        }
        self.io.triggers.events = events;
    }
}

/// A schedule's tick came for `svc`: the next one is queued, then the service is restarted,
/// or its job run, as its schedule says.
fn on_tick(svc: &mut Service, io: &mut Io, at: SystemTime, wall: SystemTime, now: Instant) -> Step {
    let Some(cron) = svc.triggers.cron.clone() else {
        return Step::Done;
    };
    let name = svc.spec.name().to_string();
    // Ticks that also passed (the machine slept, the clock was set forward) go with this one.
    let passed = cron.count_between(at, wall, MISSED_COUNT_MAX);
    if passed > 0 {
        svc.triggers.missed += passed;
        log::info!(
            "service '{name}': {passed} scheduled ticks passed unseen (sleep, or the clock set forward); acting once"
        );
    }
    schedule_next(svc, io, &cron, wall.max(at));
    let Some(schedule) = svc.spec.get_schedule().cloned() else {
        return Step::Done;
    };
    if !svc.desired_up {
        return Step::Done;
    }
    let still_going = svc.run().is_some_and(|r| r.stop.is_none());
    if !schedule.is_job() {
        let reason = format!("scheduled restart ({})", schedule.cron());
        return restart_for(svc, io, Cause::Scheduled, reason, now);
    }
    if still_going && schedule.get_if_running() == Overlap::Skip {
        svc.triggers.skipped += 1;
        log::info!("service '{name}': a scheduled run is skipped: the last one is still going");
        return Step::Done;
    }
    svc.triggers.run_now = true;
    let reason = format!(
        "scheduled run ({}) while the last was still going",
        schedule.cron()
    );
    if still_going {
        restart_for(svc, io, Cause::Scheduled, reason, now)
    } else {
        svc.history = Default::default();
        match svc.state {
            State::Backoff { .. } | State::Exited | State::Errored(_) | State::Scheduled => {
                Step::Start
            }
            _ => Step::Done,
        }
    }
}

/// An inotify event at `path`, in a directory `svc` watches.
fn on_fs_event(svc: &mut Service, io: &mut Io, path: &Path, event: &FsEvent, now: Instant) {
    if io.triggers.excluded(path) {
        return;
    }
    let name = svc.spec.name().to_string();
    let id = svc.id;
    let Some(w) = svc.triggers.watch.as_mut() else {
        return;
    };
    let Some(root) = w.roots.iter().find(|r| match &r.file {
        Some(file) => path.parent() == Some(r.dir.as_path()) && path.file_name() == Some(file),
        None => path.starts_with(&r.dir),
    }) else {
        return;
    };
    let rel = match &root.file {
        Some(file) => PathBuf::from(file),
        None => path.strip_prefix(&root.dir).unwrap_or(path).to_path_buf(),
    };
    if rel.as_os_str().is_empty() || w.ignore.matches(&rel) {
        return;
    }
    if event.new_dir && root.file.is_none() {
        let root_dir = root.dir.clone();
        add_tree(id, &name, w, io, &root_dir, path);
    }
    note_change(svc, io, rel.display().to_string(), now);
}

/// A change to a watched path: the restart waits until the paths are quiet.
fn note_change(svc: &mut Service, io: &mut Io, path: String, now: Instant) {
    if !svc.desired_up {
        return;
    }
    let (id, generation) = (svc.id, svc.generation);
    let Some(w) = svc.triggers.watch.as_mut() else {
        return;
    };
    let change = w.change.get_or_insert_with(|| Change {
        first: now,
        last: now,
        timer: None,
        paths: Vec::new(),
        count: 0,
    });
    change.last = now;
    change.count += 1;
    if change.paths.len() < PATHS_NAMED && !change.paths.contains(&path) {
        change.paths.push(path);
    }
    if change.timer.is_none() {
        let at = change.due(w.debounce);
        change.timer = Some(at);
        io.timers.push(at, id, generation, TimerKind::WatchSettle);
    }
}

/// A change's debounce timer: the restart, once the paths were quiet long enough; else the
/// timer again, at the new due time.
pub(super) fn on_watch_settle(svc: &mut Service, io: &mut Io, at: Instant, now: Instant) -> Step {
    let (id, generation) = (svc.id, svc.generation);
    let Some(w) = svc.triggers.watch.as_mut() else {
        return Step::Done;
    };
    let Some(change) = w.change.as_mut() else {
        return Step::Done;
    };
    if change.timer != Some(at) {
        return Step::Done;
    }
    let due = change.due(w.debounce);
    if now < due {
        change.timer = Some(due);
        io.timers.push(due, id, generation, TimerKind::WatchSettle);
        return Step::Done;
    }
    let change = w.change.take().expect("checked above");
    if !svc.desired_up {
        return Step::Done;
    }
    let more = change.count.saturating_sub(change.paths.len() as u64);
    let mut reason = format!("files changed: {}", change.paths.join(", "));
    if more > 0 {
        reason += &format!(" (and {more} more changes)");
    }
    log::info!("service '{}': {reason}; restarting", svc.spec.name());
    if is_job(svc) && svc.run().is_none() {
        // A job between runs waits for its tick; the next run sees the new files.
        return Step::Done;
    }
    restart_for(svc, io, Cause::FilesChanged, reason, now)
}

/// A new run starts: its watchdog's clock and patterns for the log pump, and the first
/// silence check.
pub(super) fn arm_watchdog(
    svc: &mut Service,
    io: &mut Io,
    now: Instant,
) -> (Option<Arc<LastOutput>>, Vec<String>) {
    let Some(dog) = svc.spec.get_watchdog() else {
        svc.triggers.last_output = None;
        return (None, Vec::new());
    };
    let last = dog.get_silence().map(|quiet| {
        io.timers.push(
            crate::duration::deadline(now, quiet),
            svc.id,
            svc.generation,
            TimerKind::Silence,
        );
        Arc::new(LastOutput::new(now))
    });
    svc.triggers.last_output = last.clone();
    (last, dog.get_patterns().to_vec())
}

/// The silence check: a run that wrote nothing for its watchdog's silence is ended.
pub(super) fn on_silence_check(svc: &mut Service, io: &mut Io, now: Instant) -> Step {
    let (Some(quiet), Some(last)) = (
        svc.spec.get_watchdog().and_then(|d| d.get_silence()),
        svc.triggers.last_output.as_ref().map(|l| l.get()),
    ) else {
        return Step::Done;
    };
    if !svc.run().is_some_and(|r| r.is_live() && r.stop.is_none()) {
        return Step::Done;
    }
    if now.saturating_duration_since(last) < quiet {
        let at = crate::duration::deadline(last, quiet).max(now + Duration::from_millis(1));
        io.timers
            .push(at, svc.id, svc.generation, TimerKind::Silence);
        return Step::Done;
    }
    let reason = format!("watchdog: no output for {}", crate::duration::format(quiet));
    log::warn!("service '{}': {reason}", svc.spec.name());
    svc.triggers.last_cause = Some((Cause::Silent, reason.clone()));
    lifecycle::fail_run(svc, io, Cause::Silent, reason, now)
}

/// The log pump saw a line matching the watchdog's pattern number `pattern`.
pub(super) fn on_output_matched(
    svc: &mut Service,
    io: &mut Io,
    generation: u64,
    pattern: usize,
    line: &str,
    now: Instant,
) -> Step {
    if svc.generation != generation || !svc.run().is_some_and(|r| r.is_live() && r.stop.is_none()) {
        return Step::Done;
    }
    let pattern = svc
        .spec
        .get_watchdog()
        .and_then(|d| d.get_patterns().get(pattern))
        .map_or("?", String::as_str);
    let reason = format!("watchdog: output matched '{pattern}': {line}");
    log::warn!("service '{}': {reason}", svc.spec.name());
    svc.triggers.last_cause = Some((Cause::OutputMatched, reason.clone()));
    lifecycle::fail_run(svc, io, Cause::OutputMatched, reason, now)
}

/// What `explain` adds for the triggers: the next tick, ticks missed or skipped, a change
/// waiting out its debounce, and what a trigger last did.
pub(super) fn explain(svc: &Service, now: Instant) -> Vec<String> {
    let t = &svc.triggers;
    let mut out = Vec::new();
    if let (Some(schedule), Some(cron)) = (svc.spec.get_schedule(), &t.cron) {
        let what = if schedule.is_job() { "run" } else { "restart" };
        match t.next_tick {
            Some(at) => out.push(format!(
                "next scheduled {what} at {} ({})",
                cron.local(at),
                schedule.cron()
            )),
            None => out.push(format!("no scheduled {what} is left ({})", schedule.cron())),
        }
        if t.missed > 0 {
            out.push(format!(
                "{} ticks missed while the host was down or the clock jumped",
                t.missed
            ));
        }
        if t.skipped > 0 {
            out.push(format!(
                "{} ticks skipped: the last run was still going",
                t.skipped
            ));
        }
    }
    if let Some(change) = t.watch.as_ref().and_then(|w| {
        w.change
            .as_ref()
            .map(|c| (c.due(w.debounce).saturating_duration_since(now), &c.paths))
    }) {
        out.push(format!(
            "files changed ({}); restart in {:.1}s once they are quiet",
            change.1.join(", "),
            change.0.as_secs_f64()
        ));
    }
    if let Some((cause, reason)) = &t.last_cause {
        out.push(format!(
            "the last run ended by a trigger ({cause}): {reason}"
        ));
    }
    out
}

/// Loads the last tick of every schedule, for the arming of a resurrection.
pub(super) fn stored_ticks(io: &mut Io) -> HashMap<u64, SystemTime> {
    io.store.load_ticks().unwrap_or_else(|e| {
        log::warn!("{e}; missed scheduled ticks will not be counted");
        HashMap::new()
    })
}
