//! [`Io`]: everything the lifecycle of a service touches outside its own state, handed to
//! it as one `&mut` beside the `&mut Service`: the run's processes (the containment tier),
//! the log pump, the probe workers, the store, the poller's set, the timers, and what this
//! loop turn changed (to store, to publish, to announce).
//!
//! The processes, the pump and the probes are traits, so that the state machine can be
//! tested without a process: the engine's unit tests give it fakes.

use super::lifecycle::Unrecorded;
use super::timers::Timers;
use crate::child::Launch;
use crate::containment::marker::Session;
use crate::containment::{ProbeCgroups, Processes, RunKey};
use crate::events::Event;
use crate::logs::{Pump, RunOutput};
use crate::probe::{self, Pool};
use crate::store::Store;
use crate::sys::{Registry, Waker};
use crossbeam_channel::Sender;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The log pump, as the lifecycle uses it.
pub(crate) trait Outputs {
    /// Hands over a new run's pipes.
    fn attach(&mut self, output: RunOutput);
    /// The run's main process exited: drain its pipes, then report.
    fn detach(&mut self, id: u64, generation: u64);
    /// The engine does not wait for this detached run's drain: report it without a wake-up.
    fn unhurried(&mut self, id: u64, generation: u64);
    /// The service is deleted: remove its logs, then report.
    fn forget(&mut self, id: u64, name: Arc<str>);
    /// Removes empty directories, off the supervision thread.
    fn remove_dirs(&mut self, dirs: Vec<PathBuf>);
    /// Wakes the pump for what was sent in this turn.
    fn wake(&mut self);
    /// Drains what is left (within the drain deadline) and stops the pump.
    fn shutdown(&mut self);
}

impl Outputs for Pump {
    fn attach(&mut self, output: RunOutput) {
        Pump::attach(self, output)
    }
    fn detach(&mut self, id: u64, generation: u64) {
        Pump::detach(self, id, generation)
    }
    fn unhurried(&mut self, id: u64, generation: u64) {
        Pump::unhurried(self, id, generation)
    }
    fn forget(&mut self, id: u64, name: Arc<str>) {
        Pump::forget(self, id, name)
    }
    fn remove_dirs(&mut self, dirs: Vec<PathBuf>) {
        Pump::remove_dirs(self, dirs)
    }
    fn wake(&mut self) {
        Pump::wake(self)
    }
    fn shutdown(&mut self) {
        Pump::shutdown(self)
    }
}

/// The probe workers, as the checks use them.
pub(crate) trait Probes {
    fn submit(&mut self, job: probe::Job);
}

/// The real probe workers, started on the first probe.
pub(crate) struct ProbePool {
    pool: Option<Pool>,
    reports: Sender<probe::Report>,
    waker: Arc<Waker>,
    cgroups: Option<ProbeCgroups>,
}

impl ProbePool {
    pub(crate) fn new(
        reports: Sender<probe::Report>,
        waker: Arc<Waker>,
        cgroups: Option<ProbeCgroups>,
    ) -> ProbePool {
        ProbePool {
            pool: None,
            reports,
            waker,
            cgroups,
        }
    }
}

impl Probes for ProbePool {
    fn submit(&mut self, job: probe::Job) {
        if self.pool.is_none() {
            match Pool::start(
                self.reports.clone(),
                self.waker.clone(),
                self.cgroups.clone(),
            ) {
                Ok(pool) => self.pool = Some(pool),
                Err(e) => return log::error!("cannot start the probe workers: {e}"),
            }
        }
        self.pool.as_ref().expect("started above").submit(job);
    }
}

/// What a loop turn changed: services to publish, statuses to store, services removed, and
/// the events that led there (sent after the snapshot is published, so that a subscriber
/// that sees an event also sees its state).
#[derive(Default)]
pub(super) struct Changes {
    pub(super) dirty: HashSet<u64>,
    pub(super) unsaved: HashSet<u64>,
    pub(super) removed: Vec<u64>,
    pub(super) events: Vec<Event>,
}

impl Changes {
    /// The service's snapshot changed.
    pub(super) fn touch(&mut self, id: u64) {
        self.dirty.insert(id);
    }

    /// Its status changed too: stored at the end of the turn (a stop moves through several
    /// statuses in one turn, and only the last needs writing).
    pub(super) fn save(&mut self, id: u64) {
        self.dirty.insert(id);
        self.unsaved.insert(id);
    }

    pub(super) fn emit(&mut self, event: Event) {
        self.events.push(event);
    }
}

/// What a poll token of the supervision thread's stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// The main process of the service's run: it exited.
    Leader(u64),
    /// The notify socket of the service's run: a datagram came.
    Notify(u64),
}

/// Who this supervisor is, for the runs it starts.
pub(super) struct Identity {
    /// Names this supervisor in each run's `SHEEPDOG_RUN`.
    pub(super) run_key: String,
    /// This session: the key run markers are sealed with.
    pub(super) session: Session,
    /// The real uid of the host, which every run has.
    pub(super) uid: u32,
    pub(super) boot_id: String,
}

/// See the module docs.
pub(super) struct Io {
    pub(super) procs: Box<dyn Processes>,
    pub(super) outputs: Box<dyn Outputs>,
    pub(super) probes: Box<dyn Probes>,
    pub(super) store: Store,
    /// The poller's set, for the runs' notify sockets.
    pub(super) registry: Rc<Registry>,
    pub(super) timers: Timers,
    pub(super) changes: Changes,
    pub(super) identity: Identity,
    /// How often memory limits are checked, and whether a check is scheduled.
    pub(super) memory_sample: Duration,
    pub(super) memory_sampling: bool,
    /// No stop that begins waits past this for its group to end (a shutdown's deadline).
    pub(super) stop_by: Option<Instant>,
    /// Poll tokens for runs and notify sockets, counted from 1, and what each stands for.
    next_token: u64,
    pub(super) tokens: HashMap<u64, Owner>,
    /// Runs over before their output was drained, waiting for their last lines to be
    /// recorded.
    pub(super) unrecorded: HashMap<RunKey, Unrecorded>,
    /// A `Record` timer is set: the pump reports those runs' drains without a wake-up, and
    /// this timer reads them if no other turn comes first.
    pub(super) deferred_timer: bool,
    /// A main process was reaped in this turn.
    pub(super) reaped: bool,
    /// When the last turn that reaped a main process ended.
    last_reaped: Option<Instant>,
    /// Directories of runs that are over, held while exits come in: their removal (about
    /// 40 µs of kernel time each for a cgroup, and a lock that opening cgroup files waits
    /// on) waits until no exit has come for [`DIRS_QUIET`], so a stop-all reaps its 1000
    /// runs first. (A turn without exits is not enough: a stop-all has many, serving the
    /// pump's reports and the API, and dirs removed then took the CPU its exits needed.)
    held_dirs: Vec<PathBuf>,
    rng: u64,
    /// The host's environment, read at most once per loop turn when a start needs it: a
    /// `start_many` of 1000 services shares one copy.
    host_env: Option<Arc<[CString]>>,
    /// The wall clock and the ticks of schedules, the inotify instance of watches.
    pub(super) triggers: super::triggers::Triggers,
}

/// At most this many directories are held while exits come in.
const HELD_DIRS_MAX: usize = 4096;

/// Held directories are removed once no exit has come for this long.
const DIRS_QUIET: Duration = super::lifecycle::RECORD_WITHIN;

impl Io {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        procs: Box<dyn Processes>,
        outputs: Box<dyn Outputs>,
        probes: Box<dyn Probes>,
        store: Store,
        registry: Rc<Registry>,
        identity: Identity,
        memory_sample: Duration,
        seed: u64,
    ) -> Io {
        Io {
            procs,
            outputs,
            probes,
            store,
            registry: registry.clone(),
            timers: Timers::default(),
            changes: Changes::default(),
            identity,
            memory_sample,
            memory_sampling: false,
            stop_by: None,
            next_token: 1,
            tokens: HashMap::new(),
            unrecorded: HashMap::new(),
            deferred_timer: false,
            reaped: false,
            last_reaped: None,
            held_dirs: Vec::new(),
            rng: seed | 1,
            host_env: None,
            triggers: super::triggers::Triggers::new(registry.clone()),
        }
    }

    pub(super) fn token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// A sample in [0, 1) for backoff jitter (xorshift; quality is not a concern here).
    pub(super) fn random_unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The host's environment as this turn read it.
    pub(super) fn host_env(&mut self) -> &Arc<[CString]> {
        self.host_env.get_or_insert_with(crate::child::host_env)
    }

    /// The launch a start makes: the spec's argv and environment over the host's (as its
    /// instance `instance`), and who it runs as.
    pub(super) fn launch(
        &mut self,
        spec: &crate::spec::ServiceSpec,
        instance: Option<u32>,
    ) -> crate::Result<Launch> {
        Launch::new(spec, instance, &self.host_env().clone())
    }

    /// What a loop turn ends with, before it publishes or replies: the statuses and run
    /// records of the turn committed, the log pump woken for what was sent to it, and what
    /// the turn read of the machine forgotten.
    /// Hands the held directories to the pump for removal.
    pub(super) fn remove_held_dirs(&mut self) {
        if !self.held_dirs.is_empty() {
            self.outputs
                .remove_dirs(std::mem::take(&mut self.held_dirs));
        }
    }

    pub(super) fn end_turn(&mut self, now: Instant) {
        self.store.flush();
        self.held_dirs.extend(self.procs.take_dirs());
        if std::mem::take(&mut self.reaped) {
            self.last_reaped = Some(now);
        }
        if !self.held_dirs.is_empty() {
            let quiet = self
                .last_reaped
                .is_none_or(|at| now.saturating_duration_since(at) >= DIRS_QUIET);
            if quiet || self.held_dirs.len() >= HELD_DIRS_MAX {
                self.remove_held_dirs();
            } else {
                // Its turn comes after the quiet time, or sets it again.
                super::lifecycle::arm_deferred(self, now);
            }
        }
        self.outputs.wake();
        self.procs.end_turn();
        self.host_env = None;
    }
}
