//! The supervision thread: it owns the store, every child and every timer.
//!
//! It blocks in exactly one place, the poller, which wakes on a child's exit (its pidfd), an
//! API request (the waker), or the nearest deadline (a restart due, a stop timeout). It never
//! sleeps per service and never polls on a fixed tick; the only repeated checks are for a
//! stopping service whose leader has exited while other members of its group live on, and
//! they stop when the group is empty or its deadline passes.
//!
//! Every run has a generation number. A timer or a completion names the generation it was
//! made for and is ignored if the service has moved on, so a stop, delete, restart or start
//! during a backoff can never bring back a stale run, and a service never has two live runs.

use crate::child;
use crate::error::{Error, ErrorKind, Result};
use crate::events::{Event, Hub};
use crate::graph;
use crate::history::Cause;
use crate::info::{Exit, ServiceInfo, Status};
use crate::logs::reader::Activity;
use crate::logs::{self, Pump};
use crate::marker::{self, Session, RUN_VAR};
use crate::notify;
use crate::policy::{Decision, History, Outcome, RunEnd};
use crate::probe::{self, Pool, Purpose};
use crate::readiness::{Check, Condition, Ready};
use crate::reclaim;
use crate::spec::{ServiceSpec, Signal};
use crate::store::Store;
use crate::store::{NewRun, RunEnding};
use crate::sys::{self, Poller, RawExit, WAKER_TOKEN};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The poll tokens of the state directory's watch and of the guardian's pidfd, below the
/// waker's; those of runs count up from 1.
const STATE_TOKEN: u64 = WAKER_TOKEN - 1;
const GUARDIAN_TOKEN: u64 = WAKER_TOKEN - 2;
/// How long the lock file may be missing from a state directory that is still there before
/// it is made again: long enough for an `rm -rf` of the directory to finish first (making
/// the lock inside would leave it unable to remove the directory).
const RELOCK_SETTLE: Duration = Duration::from_millis(500);
/// After a SIGKILL, how long to wait for the group to be gone before giving up on it.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// The first and the longest interval between checks of a lingering group.
const GROUP_CHECK_MIN: Duration = Duration::from_millis(2);
const GROUP_CHECK_MAX: Duration = Duration::from_millis(100);
/// How often a readiness probe (TCP, command) is retried until it passes or times out.
const READY_PROBE_EVERY: Duration = Duration::from_millis(50);
/// The shortest delay before retrying an automatic restart whose spawn failed, so a missing
/// program with `Backoff::none()` cannot spin the thread.
const SPAWN_RETRY_MIN: Duration = Duration::from_millis(100);
/// The most ready fds (exits, notify sockets) one wait of the loop returns.
pub(crate) const EVENTS_PER_TURN: usize = 16;
/// How long one turn of the loop may spend on exits and due restarts, each of which may
/// spawn a process (about half a millisecond), before it serves the API: what is left stays
/// ready (the fds are level-triggered, the timers due) for the next turn. Under a storm of
/// exits a request waits for a few spawns, not for hundreds.
const TURN_BUDGET: Duration = Duration::from_millis(2);

/// A request from the API to the supervision thread.
pub(crate) enum Request {
    Start {
        spec: Box<ServiceSpec>,
        reply: Sender<Result<ServiceInfo>>,
    },
    StartMany {
        items: Vec<(ServiceSpec, Sender<Result<ServiceInfo>>)>,
    },
    History {
        target: String,
        limit: usize,
        reply: Sender<Result<Vec<crate::history::Run>>>,
    },
    Explain {
        target: String,
        reply: Sender<Result<crate::history::Explanation>>,
    },
    Stop {
        target: String,
        reply: Sender<Result<usize>>,
    },
    Restart {
        target: String,
        reply: Sender<Result<usize>>,
    },
    Delete {
        target: String,
        reply: Sender<Result<usize>>,
    },
    Shutdown {
        reply: Sender<Result<()>>,
    },
    /// From the log pump: a run's pipes are read to their end (or their deadline passed).
    Drained {
        id: u64,
        generation: u64,
        tail: Option<logs::RunTail>,
    },
    /// From the log pump: a deleted service's logs are closed and removed.
    LogsForgotten {
        id: u64,
    },
    /// From the log pump: a line matched the run's `Ready::LogLine` pattern.
    ReadyLine {
        id: u64,
        generation: u64,
    },
    /// From a probe worker: the outcome of a readiness or liveness probe.
    Probed {
        id: u64,
        generation: u64,
        purpose: Purpose,
        outcome: probe::Outcome,
    },
}

/// What the API reads without asking the thread: a snapshot published after every change,
/// and the event hub.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) table: Mutex<Table>,
    pub(crate) changed: Condvar,
    pub(crate) hub: Hub,
    pub(crate) activity: Arc<Activity>,
    /// What `open` found left running by a dead previous host and killed: (service, pids).
    pub(crate) reclaimed: Mutex<Vec<(String, Vec<u32>)>>,
    /// Rung at the end of each loop turn, when the turn's replies are sent: the control
    /// socket's thread waits on it for the replies to its calls.
    pub(crate) replied: crate::bell::Bell,
}

#[derive(Default)]
pub(crate) struct Table {
    pub(crate) services: BTreeMap<u64, ServiceInfo>,
    pub(crate) shut_down: bool,
}

impl Table {
    /// Resolves a target (a name, a numeric id, or `all`) to ids.
    pub(crate) fn resolve(&self, target: &str) -> Result<Vec<u64>> {
        resolve(target, self.services.iter().map(|(id, s)| (*id, s.name())))
    }
}

fn resolve<'a>(target: &str, services: impl Iterator<Item = (u64, &'a str)>) -> Result<Vec<u64>> {
    if target == "all" {
        return Ok(services.map(|(id, _)| id).collect());
    }
    let by_id = (!target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()))
        .then(|| target.parse::<u64>().ok())
        .flatten();
    for (id, name) in services {
        if Some(id) == by_id || (by_id.is_none() && name == target) {
            return Ok(vec![id]);
        }
    }
    Err(Error::new(ErrorKind::NotFound, "no such service").with_service(target))
}

/// A definition `start_many` has checked and not yet stored.
struct Definition {
    spec: ServiceSpec,
    /// The service it redefines; `None`: a new one, whose id comes with the commit.
    id: Option<u64>,
    /// Its spec differs from the one in force (always, for a new service).
    changed: bool,
    /// The callers waiting on it: more than one when a batch names it more than once.
    replies: Vec<Sender<Result<ServiceInfo>>>,
}

/// What happens once a stopping run has fully ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// Stay stopped.
    Settle,
    /// Start again (a manual restart, or a new spec).
    Start,
    /// Remove the service.
    Delete,
    /// The run failed a check (unhealthy, not ready in time): apply the restart policy as
    /// for a crash.
    Crash,
}

struct Stopping {
    deadline: Instant,
    killed: bool,
    then: Then,
    /// Process-group containment: when the stop read /proc for the service's marked
    /// processes. Whatever the run forks after that is looked for before the stop counts as
    /// done.
    scanned: Option<Scan>,
}

/// Process-group containment: a stop (or delete) of a service with no live run, ending what
/// its earlier runs left outside their process groups (a `setsid` daemon of a main process
/// that exited by itself, which nothing else holds in this tier). Its escapees are tracked
/// under the service's current generation.
struct Sweep {
    deadline: Instant,
    killed: bool,
    then: Then,
    /// When the sweep read /proc: processes started later are looked for before it is done.
    scanned: Scan,
    generation: u64,
    /// The status to return to before `then` settles it (a stop leaves an exited service
    /// exited).
    was: Status,
}

/// The moment of a read of /proc, in the terms processes started later can be told by.
#[derive(Clone, Copy)]
struct Scan {
    /// Clock ticks since boot (a process's start time is in these).
    ticks: u64,
    /// The last pid the kernel had handed out (`None` where it cannot be read).
    last_pid: Option<u32>,
}

impl Scan {
    fn now() -> Scan {
        // The pid first: a process created between the two reads is then looked at again.
        let last_pid = sys::last_pid();
        Scan {
            ticks: sys::boot_ticks(),
            last_pid,
        }
    }
}

struct Run {
    pid: u32,
    pidfd: OwnedFd,
    token: u64,
    run_id: Option<i64>,
    started: Instant,
    /// Set when the leader has been reaped; the group may still have members.
    ended: Option<(RawExit, Instant, SystemTime)>,
    stopping: Option<Stopping>,
    check_interval: Duration,
    /// The log pump has read the run's pipes to their end.
    drained: bool,
    /// The run is over and waits only for `drained` to be recorded.
    awaiting_drain: bool,
    /// For a run that ended by itself: the policy's decision, made at the exit.
    decision: Option<Decision>,
    /// Ready (per the spec's `Ready`); until then the status is `Starting`.
    ready: bool,
    /// Consecutive failed liveness probes.
    health_failures: u32,
    /// The `NOTIFY_SOCKET` of the run.
    notify: Option<Notify>,
    /// Whether a `WATCHDOG=1` came since the last health tick.
    pinged: bool,
    /// The last `STATUS=` the run sent.
    status_text: Option<String>,
    /// Why the supervisor ended the run, if it did so because of a check.
    end_reason: Option<String>,
    /// Consecutive memory samples over the limit.
    memory_strikes: u32,
    /// Why the supervisor ended it, when it did (a stop, a restart, a failed check).
    cause: Option<Cause>,
    /// What the kernel counted when it was reaped.
    usage: Option<sys::Usage>,
    /// Kills in its memory cgroup by the OOM killer when it started.
    oom_kills_at_start: u64,
    /// `begin_stops` already sent the stop signal.
    signalled: bool,
    /// With cgroups: the generation in the name of the run's cgroup, its own or an earlier
    /// run's (reused when that one ended with nothing killed and no limits).
    cgroup: u64,
    /// `cgroup.kill` was written to its cgroup, which is then never reused: a child cloned
    /// into a killed cgroup dies at birth.
    cgroup_killed: bool,
    /// Its command probes: cancelled (their processes killed) when it stops or ends.
    probe: Arc<probe::Slot>,
}

/// A run's `NOTIFY_SOCKET`: the socket, its poll token, and who may speak on it.
struct Notify {
    sock: sys::NotifySocket,
    token: u64,
    access: notify::Access,
    /// A refused datagram was logged for this run (later ones are only counted).
    logged_refusal: bool,
}

/// Datagrams read from a notify socket per wake: a flood cannot hold the loop.
const NOTIFY_READS_MAX: usize = 64;

struct Service {
    id: u64,
    spec: Arc<ServiceSpec>,
    desired_up: bool,
    status: Status,
    generation: u64,
    run: Option<Run>,
    history: History,
    restarts: u64,
    last_exit: Option<Exit>,
    next_start: Option<Instant>,
    started_at: Option<SystemTime>,
    /// The error of the latest manual spawn attempt, for the caller waiting on it.
    spawn_error: Option<(u64, Error)>,
    /// Bytes of output dropped because the log could not be written.
    log_dropped: Arc<AtomicU64>,
    /// Started by the operator but waiting for its dependencies.
    waiting: bool,
    /// An empty, never-killed cgroup of a finished run, for the next run to start in: no
    /// `mkdir` on the restart path, and no `rmdir` after it.
    spare_cgroup: Option<u64>,
    /// The argv and environment an operator's start made, reused by the policy's restarts.
    launch: Option<Arc<child::Launch>>,
    /// A stop without a run that is ending escaped processes of earlier runs.
    sweep: Option<Sweep>,
    /// `NOTIFY_SOCKET` datagrams refused: not from a process of the run.
    notify_rejected: u64,
}

impl Service {
    fn new(id: u64, spec: ServiceSpec, desired_up: bool, status: Status) -> Service {
        Service {
            id,
            spec: Arc::new(spec),
            desired_up,
            status,
            generation: 0,
            run: None,
            history: History::default(),
            restarts: 0,
            last_exit: None,
            next_start: None,
            started_at: None,
            spawn_error: None,
            log_dropped: Arc::default(),
            waiting: false,
            spare_cgroup: None,
            launch: None,
            sweep: None,
            notify_rejected: 0,
        }
    }

    /// A stop of this service without a run is still ending escaped processes of its
    /// earlier runs: a stop or delete waiting on it is not done.
    fn sweeping(&self) -> bool {
        self.sweep.is_some()
    }

    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            id: self.id,
            spec: self.spec.clone(),
            status: self.status,
            pid: self
                .run
                .as_ref()
                .filter(|r| r.ended.is_none())
                .map(|r| r.pid),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            next_start: self.next_start,
            started_at: self.run.as_ref().and(self.started_at),
            generation: self.generation,
            cgroup: self.run.as_ref().map(|r| r.cgroup),
            log_dropped: self.log_dropped.clone(),
            status_text: self.run.as_ref().and_then(|r| r.status_text.clone()),
            notify_rejected: self.notify_rejected,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Restart,
    StopDeadline,
    GroupCheck,
    GiveUp,
    SweepDeadline,
    SweepGiveUp,
    ReadyAfter,
    ReadyTimeout,
    ReadyProbe,
    HealthProbe,
    MemorySample,
    /// Take the lock of the state directory's path again (its lock file went away).
    Relock,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    id: u64,
    generation: u64,
    kind: TimerKind,
}

enum Want {
    /// The run of the recorded generation is over: no run left, or a newer one started by a
    /// later request.
    Down,
    /// Removed.
    Gone,
    /// A run newer than the recorded generation was attempted, or nothing is pending.
    Up,
}

enum Reply {
    Count(Sender<Result<usize>>, usize),
    Info(Sender<Result<ServiceInfo>>),
    /// Shutdown's waves: nobody waits on this one.
    Nobody,
}

struct Pending {
    targets: Vec<(u64, u64)>,
    want: Want,
    reply: Reply,
    /// Later waves of a stop or delete in dependency order: begun when the earlier ones are
    /// down.
    stages: VecDeque<Vec<u64>>,
    then: Then,
    /// Sent instead of the count when the operation completes (its state was not stored).
    error: Option<Error>,
}

pub(crate) struct Config {
    /// The state directory, locked.
    pub(crate) state: crate::state_dir::StateDir,
    pub(crate) cgroups: Option<crate::containment::Cgroups>,
    pub(crate) log_dir: logs::LogDir,
    pub(crate) resurrect: bool,
    pub(crate) fd_limit: u64,
    pub(crate) memory_sample: Duration,
    /// The host is a child subreaper: orphans re-parented to it are claimed.
    pub(crate) subreaper: bool,
    /// Names this supervisor in each run's `SHEEPDOG_RUN`.
    pub(crate) run_key: String,
    /// This session: the key run markers are sealed with (stored by `init`).
    pub(crate) session: Session,
    /// The guardian that cleans up if the host dies, when there is one.
    pub(crate) guardian: Option<crate::guardian::Watch>,
}

/// A process of a run tracked one by one, through a pidfd: a descendant that left its
/// service's process group (claimed by a subreaper host, or found by its `SHEEPDOG_RUN`), or,
/// during a stop in the process-group tier, a member of the group that may still leave it.
struct Escapee {
    pid: u32,
    pidfd: OwnedFd,
    id: u64,
    generation: u64,
    /// It was in the run's group when the stop signalled the group, so that signal reached
    /// it; only a SIGKILL is sent to it again.
    got_group_signal: bool,
}

pub(crate) struct Engine {
    store: Store,
    /// The state directory: held (its lock with it) while the engine runs.
    state: crate::state_dir::StateDir,
    /// Fires when the state directory, the registry or the lock file goes away.
    state_watch: Option<sys::DirWatch>,
    /// Changes can no longer be stored, and that was reported.
    state_lost: bool,
    /// A `Relock` timer is pending.
    relock_due: bool,
    poller: Poller,
    requests: Receiver<Request>,
    shared: Arc<Shared>,
    boot_id: String,
    services: BTreeMap<u64, Service>,
    tokens: HashMap<u64, u64>,
    next_token: u64,
    timers: BinaryHeap<Reverse<Timer>>,
    pending: Vec<Pending>,
    shutdown: Option<Sender<Result<()>>>,
    dirty: HashSet<u64>,
    removed: Vec<u64>,
    outbox: Vec<Event>,
    rng: u64,
    pump: Pump,
    /// Deleted services whose logs the pump has not yet removed.
    forgetting: HashSet<u64>,
    /// The open-file limit, for the fd budget check at `start`.
    fd_limit: u64,
    /// Probe workers, started on the first probe.
    probes: Option<Pool>,
    /// For the probe workers to report back.
    requests_tx: Sender<Request>,
    /// Poll tokens of notify sockets, to their service.
    notify_tokens: HashMap<u64, u64>,
    /// A cgroup per service, when the hierarchy allows it.
    cgroups: Option<crate::containment::Cgroups>,
    /// Deletes that could not be stored, for the callers waiting on them.
    failed_deletes: HashMap<u64, Error>,
    /// How often memory limits are checked, and whether a check is scheduled.
    memory_sample: Duration,
    memory_sampling: bool,
    subreaper: bool,
    run_key: String,
    /// Seals each run's marker; `init` stores it.
    session: Session,
    /// The real uid of the host, which every run has.
    uid: u32,
    /// The guardian, watched through its pidfd: replaced if it dies while the host lives,
    /// stood down at shutdown.
    guardian: Option<crate::guardian::Watch>,
    /// Claimed escapees, by poll token.
    escapees: HashMap<u64, Escapee>,
    /// Orphans the supervisor could not attribute, reported once each.
    unclaimed: HashSet<u32>,
    /// Subreaper: the process groups of the runs started (the newest 4096), to tell a dead
    /// orphan of ours from the host's own children.
    run_groups: HashSet<u32>,
    run_groups_order: VecDeque<u32>,
    /// Services whose status changed in this loop turn, stored at its end.
    unsaved: HashSet<u64>,
    /// Process-group containment: the processes carrying our `SHEEPDOG_RUN`, by service id,
    /// and when they were read: once per loop iteration when a stop needs them.
    marked: Option<(Scan, HashMap<u64, Vec<Marked>>)>,
    /// The processes on the machine, read at most once per loop iteration when a stopping
    /// run's group empties (process-group containment).
    procs: Option<Vec<sys::ProcStat>>,
    /// The host's environment, read at most once per loop iteration when a start needs it:
    /// a `start_many` of 1000 services shares one copy.
    host_env: Option<Arc<[std::ffi::CString]>>,
}

/// At most this many new pids are looked at one by one when a stop looks for late processes;
/// more, and the stop reads /proc instead.
const LATE_PIDS_MAX: u32 = 4096;

/// A process that carries a marker of this session's runs and is provably ours.
struct Marked {
    pid: u32,
    pgrp: u32,
    /// Clock ticks since boot.
    start_time: u64,
    /// The variable's value.
    marker: String,
}

impl Engine {
    pub(crate) fn new(
        store: Store,
        poller: Poller,
        requests: Receiver<Request>,
        shared: Arc<Shared>,
        config: Config,
        pump: Pump,
        requests_tx: Sender<Request>,
    ) -> Engine {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id()).rotate_left(32);
        Engine {
            store,
            state: config.state,
            state_watch: None,
            state_lost: false,
            relock_due: false,
            poller,
            requests,
            shared,
            boot_id: sys::boot_id(),
            services: BTreeMap::new(),
            tokens: HashMap::new(),
            next_token: 1,
            timers: BinaryHeap::new(),
            pending: Vec::new(),
            shutdown: None,
            dirty: HashSet::new(),
            removed: Vec::new(),
            outbox: Vec::new(),
            rng: seed | 1,
            pump,
            forgetting: HashSet::new(),
            fd_limit: config.fd_limit,
            probes: None,
            requests_tx,
            notify_tokens: HashMap::new(),
            cgroups: config.cgroups,
            failed_deletes: HashMap::new(),
            memory_sample: config.memory_sample,
            memory_sampling: false,
            subreaper: config.subreaper,
            run_key: config.run_key,
            session: config.session,
            uid: sys::real_uid(),
            guardian: config.guardian,
            escapees: HashMap::new(),
            unclaimed: HashSet::new(),
            run_groups: HashSet::new(),
            run_groups_order: VecDeque::new(),
            marked: None,
            procs: None,
            host_env: None,
            unsaved: HashSet::new(),
        }
    }

    /// Loads the registry, kills what a dead previous host left running, and starts every
    /// service whose desired state is up (if `resurrect`). Runs on the supervision thread.
    pub(crate) fn init(&mut self, resurrect: bool) -> Result<()> {
        self.watch_guardian();
        self.watch_state_dir();
        let reclaimed = crate::reclaim::reclaim(
            &mut self.store,
            self.cgroups.as_ref(),
            &self.run_key,
            KILL_GRACE,
        )?;
        self.session.id = self.store.insert_session(
            &self.session.boot_id,
            self.session.started_ticks,
            &self.session.key,
            self.session.cgroup,
        )?;
        for stored in self.store.load_services()? {
            let status = match stored.status {
                s if s.is_running() || s == Status::Backoff => Status::Stopped,
                s => s,
            };
            let id = stored.id;
            self.services.insert(
                id,
                Service {
                    restarts: stored.restarts,
                    last_exit: stored.last_exit,
                    ..Service::new(id, stored.spec, stored.desired_up, status)
                },
            );
            self.dirty.insert(id);
            if status != stored.status {
                self.save_state(id);
            }
        }
        {
            let mut list = self.shared.reclaimed.lock();
            let mut events = Vec::new();
            for (id, pids) in reclaimed {
                let name = self
                    .services
                    .get(&id)
                    .map_or_else(|| format!("#{id}"), |s| s.spec.name().to_string());
                log::warn!(
                    "service '{name}': killed {} processes left running by a previous host",
                    pids.len()
                );
                events.push(Event::Reclaimed {
                    name: name.clone(),
                    pids: pids.clone(),
                });
                list.push((name, pids));
            }
            self.shared.hub.set_preamble(events);
        }
        if resurrect {
            let up: Vec<u64> = self
                .services
                .values()
                .filter(|s| s.desired_up)
                .map(|s| s.id)
                .collect();
            for id in up {
                if let Err(e) = self.spawn_run(id, false) {
                    log::warn!("{e}");
                }
            }
        }
        self.end_turn();
        self.publish();
        Ok(())
    }

    /// The loop: wait, then handle exits, requests and due timers; publish; reply.
    pub(crate) fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let timeout = self
                .timers
                .peek()
                .map(|Reverse(t)| t.at.saturating_duration_since(Instant::now()));
            ready.clear();
            if let Err(e) = self.poller.wait(timeout, &mut ready) {
                log::error!("supervision wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            let budget = Instant::now() + TURN_BUDGET;
            for (i, &token) in ready.iter().enumerate() {
                if i > 0 && Instant::now() >= budget {
                    break; // still ready: reported again by the next wait
                }
                if token != WAKER_TOKEN {
                    if let Some(&id) = self.tokens.get(&token) {
                        self.on_leader_exit(id);
                    } else if let Some(&id) = self.notify_tokens.get(&token) {
                        self.on_notify(id);
                    } else if token == STATE_TOKEN {
                        self.on_state_dir_event();
                    } else if self.escapees.contains_key(&token) {
                        self.on_escapee_exit(token);
                    } else if token == GUARDIAN_TOKEN {
                        self.on_guardian_exit();
                    }
                }
            }
            while let Ok(request) = self.requests.try_recv() {
                self.handle(request);
            }
            self.fire_timers(budget);
            self.marked = None;
            self.procs = None;
            self.host_env = None;
            self.start_waiting();
            self.advance_waves();
            self.end_turn();
            self.publish();
            self.settle_pending();
            self.shared.replied.ring();
            if self.shutdown.is_some()
                && self.pending.is_empty()
                && self.services.values().all(|s| s.run.is_none())
            {
                break;
            }
        }
        self.reap_escapees_at_exit();
        self.pump.shutdown();
        // Drained at shutdown: the last runs' output goes into their records.
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Request::Drained {
                    id,
                    generation,
                    tail,
                } => self.on_drained(id, generation, tail),
                other => refuse(other),
            }
        }
        self.end_turn();
        self.publish();
        {
            let mut table = self.shared.table.lock();
            table.shut_down = true;
        }
        self.shared.changed.notify_all();
        self.shared.hub.close();
        // Refuse whatever arrived meanwhile.
        while let Ok(request) = self.requests.try_recv() {
            refuse(request);
        }
        // The supervisor's cgroups go (they are empty), then the guardian: it has nothing
        // left to clean up.
        self.cgroups = None;
        if let Some(guardian) = self.guardian.as_mut() {
            guardian.stand_down();
        }
        if let Some(reply) = self.shutdown.take() {
            let _ = reply.send(Ok(()));
        }
        self.shared.replied.ring();
    }

    fn watch_guardian(&mut self) {
        if let Some(fd) = self.guardian.as_ref().and_then(|g| g.pidfd()) {
            if let Err(e) = self.poller.add(fd, GUARDIAN_TOKEN) {
                log::error!("cannot watch the guardian: {e}");
            }
        }
    }

    /// The guardian's pidfd fired: it died while the host lives. A new one is started.
    fn on_guardian_exit(&mut self) {
        let Some(guardian) = self.guardian.as_mut() else {
            return;
        };
        if let Some(fd) = guardian.pidfd() {
            self.poller.remove(fd);
        }
        guardian.on_exit();
        self.watch_guardian();
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Drained {
                id,
                generation,
                tail,
            } => return self.on_drained(id, generation, tail),
            Request::LogsForgotten { id } => {
                self.forgetting.remove(&id);
                return;
            }
            Request::ReadyLine { id, generation } => return self.mark_ready(id, generation),
            Request::Probed {
                id,
                generation,
                purpose,
                outcome,
            } => return self.on_probed(id, generation, purpose, outcome),
            _ => {}
        }
        if self.shutdown.is_some() {
            return refuse(request);
        }
        match request {
            Request::Drained { .. }
            | Request::LogsForgotten { .. }
            | Request::ReadyLine { .. }
            | Request::Probed { .. } => unreachable!("handled above"),
            Request::Start { spec, reply } => self.start(*spec, reply),
            Request::StartMany { items } => self.start_many(items),
            Request::History {
                target,
                limit,
                reply,
            } => {
                let result = self
                    .resolve_one(&target)
                    .and_then(|id| self.store.runs(id, limit));
                let _ = reply.send(result);
            }
            Request::Explain { target, reply } => {
                let result = self.resolve_one(&target).map(|id| self.explain(id));
                let _ = reply.send(result);
            }
            Request::Stop { target, reply } => match self.resolve(&target) {
                Ok(ids) => {
                    // Stored first (one transaction for all): if that fails, nothing is done.
                    if let Err(e) = self.set_desired_many(&ids, false) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    let n = ids.len();
                    self.begin_staged(ids, Then::Settle, Want::Down, Reply::Count(reply, n));
                }
                Err(e) => drop(reply.send(Err(e))),
            },
            Request::Restart { target, reply } => match self.resolve(&target) {
                Ok(ids) => {
                    let ids = self.with_restart_with(ids);
                    let targets = self.targets(&ids);
                    if let Err(e) = self.set_desired_many(&ids, true) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    let error = None;
                    for &id in &ids {
                        self.services.get_mut(&id).expect("resolved above").history =
                            History::default();
                        self.begin_stop(id, Then::Start);
                    }
                    self.pending.push(Pending {
                        targets,
                        want: Want::Up,
                        reply: Reply::Count(reply, ids.len()),
                        stages: VecDeque::new(),
                        then: Then::Start,
                        error,
                    });
                }
                Err(e) => drop(reply.send(Err(e))),
            },
            Request::Delete { target, reply } => match self.resolve(&target) {
                Ok(ids) => {
                    if let Err(e) = self.check_no_dependents(&ids) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    // Removed on disk first, all at once: if that fails, nothing is done.
                    if let Err(e) = self.delete_rows(&ids) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    let n = ids.len();
                    self.begin_staged(ids, Then::Delete, Want::Gone, Reply::Count(reply, n));
                }
                Err(e) => drop(reply.send(Err(e))),
            },
            Request::Shutdown { reply } => {
                self.shutdown = Some(reply);
                let ids: Vec<u64> = self.services.keys().copied().collect();
                self.begin_staged(ids, Then::Settle, Want::Down, Reply::Nobody);
            }
        }
    }

    /// Stops (or deletes) `ids` in dependency order: dependents first, each wave once the
    /// one before is down, in parallel within a wave.
    fn begin_staged(&mut self, ids: Vec<u64>, then: Then, want: Want, reply: Reply) {
        let mut stages: VecDeque<Vec<u64>> = self.stop_waves(&ids).into();
        let first = stages.pop_front().unwrap_or_default();
        let targets = self.targets(&first);
        self.begin_stops(&first, then);
        self.pending.push(Pending {
            targets,
            want,
            reply,
            stages,
            then,
            error: None,
        });
    }

    /// The services' dependency graph, by name.
    fn graph_nodes(&self) -> Vec<graph::Node<'_>> {
        self.services
            .values()
            .map(|s| graph::Node {
                name: s.spec.name(),
                deps: s.spec.get_after().iter().map(|d| d.name.as_str()).collect(),
            })
            .collect()
    }

    fn stop_waves(&self, ids: &[u64]) -> Vec<Vec<u64>> {
        let nodes = self.graph_nodes();
        let targets: BTreeSet<&str> = ids
            .iter()
            .filter_map(|id| self.services.get(id))
            .map(|s| s.spec.name())
            .collect();
        let by_name: HashMap<&str, u64> = self
            .services
            .values()
            .map(|s| (s.spec.name(), s.id))
            .collect();
        graph::waves(&nodes, &targets, true)
            .into_iter()
            .map(|wave| {
                wave.iter()
                    .filter_map(|n| by_name.get(n.as_str()).copied())
                    .collect()
            })
            .collect()
    }

    /// Adds the services that asked to be restarted with one of `ids` (`restart_with`).
    fn with_restart_with(&self, mut ids: Vec<u64>) -> Vec<u64> {
        loop {
            let names: HashSet<&str> = ids
                .iter()
                .filter_map(|id| self.services.get(id))
                .map(|s| s.spec.name())
                .collect();
            let more: Vec<u64> = self
                .services
                .values()
                .filter(|s| {
                    !ids.contains(&s.id)
                        && s.spec
                            .get_restart_with()
                            .iter()
                            .any(|n| names.contains(n.as_str()))
                })
                .map(|s| s.id)
                .collect();
            if more.is_empty() {
                return ids;
            }
            ids.extend(more);
        }
    }

    /// Whether every dependency of `id` meets its condition.
    fn deps_met(&self, id: u64) -> bool {
        let svc = &self.services[&id];
        svc.spec.get_after().iter().all(|dep| {
            let Some(d) = self.services.values().find(|s| s.spec.name() == dep.name) else {
                return false;
            };
            match dep.condition {
                Condition::Started => d
                    .run
                    .as_ref()
                    .is_some_and(|r| r.ended.is_none() && r.stopping.is_none()),
                Condition::Ready => d.status == Status::Online,
                Condition::Exited0 => {
                    d.status == Status::Exited
                        && d.last_exit.as_ref().is_some_and(|e| e.code == Some(0))
                }
            }
        })
    }

    /// Starts the services that wait for dependencies now met.
    fn start_waiting(&mut self) {
        let ready: Vec<u64> = self
            .services
            .values()
            .filter(|s| s.waiting && s.desired_up && s.run.is_none())
            .map(|s| s.id)
            .filter(|id| self.deps_met(*id))
            .collect();
        for id in ready {
            if let Err(e) = self.spawn_run(id, false) {
                log::warn!("{e}");
            }
        }
    }

    /// One service by name or id (not `all`).
    fn resolve_one(&self, target: &str) -> Result<u64> {
        if target == "all" {
            return Err(Error::new(
                ErrorKind::InvalidSpec,
                "this takes one service, not all",
            ));
        }
        Ok(self.resolve(target)?[0])
    }

    fn resolve(&self, target: &str) -> Result<Vec<u64>> {
        resolve(
            target,
            self.services.iter().map(|(id, s)| (*id, s.spec.name())),
        )
    }

    fn targets(&self, ids: &[u64]) -> Vec<(u64, u64)> {
        ids.iter()
            .filter_map(|id| Some((*id, self.services.get(id)?.generation)))
            .collect()
    }

    fn start(&mut self, spec: ServiceSpec, reply: Sender<Result<ServiceInfo>>) {
        self.start_many(vec![(spec, reply)]);
    }

    /// Starts services. Every definition is checked first; then all of them are stored in one
    /// transaction (one fsync however many); only then are they changed in memory and spawned
    /// (or restarted into their new spec). A spec that breaks a rule gets its own error and
    /// the others go on; a failure to store gives every one of them the error and changes
    /// nothing, in memory or on disk.
    fn start_many(&mut self, items: Vec<(ServiceSpec, Sender<Result<ServiceInfo>>)>) {
        let mut defs: Vec<Definition> = Vec::new();
        let mut open_fds = None;
        for (spec, reply) in items {
            if let Err(e) = self.check_definition(&spec, &defs, &mut open_fds) {
                let _ = reply.send(Err(e));
                continue;
            }
            if let Some(d) = defs.iter_mut().find(|d| d.spec.name() == spec.name()) {
                // Named again in the same batch: the later spec wins.
                d.changed = d.id.is_none_or(|id| *self.services[&id].spec != spec);
                d.spec = spec;
                d.replies.push(reply);
                continue;
            }
            let id = self
                .services
                .values()
                .find(|s| s.spec.name() == spec.name())
                .map(|s| s.id);
            defs.push(Definition {
                changed: id.is_none_or(|id| *self.services[&id].spec != spec),
                spec,
                id,
                replies: vec![reply],
            });
        }
        if defs.is_empty() {
            return;
        }
        let services = &self.services;
        let stored = self.store.transaction().and_then(|mut tx| {
            for d in &mut defs {
                match d.id {
                    None => d.id = Some(tx.insert_service(&d.spec, true, Status::Starting)?),
                    Some(id) => {
                        if d.changed {
                            tx.update_spec(id, &d.spec)?;
                        }
                        if !services[&id].desired_up {
                            tx.set_desired(id, true)?;
                        }
                    }
                }
            }
            tx.commit()
        });
        if let Err(e) = stored {
            self.store_failed(&e);
            for reply in defs.into_iter().flat_map(|d| d.replies) {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        // Stored: now in memory.
        let mut accepted = Vec::new();
        for d in defs {
            let id = d.id.expect("given by the commit above");
            let existed = self.services.contains_key(&id);
            if !existed {
                self.services
                    .insert(id, Service::new(id, d.spec, true, Status::Starting));
            } else if d.changed {
                let svc = self.services.get_mut(&id).expect("present");
                svc.spec = Arc::new(d.spec);
                svc.launch = None;
                svc.history = History::default();
            }
            self.services.get_mut(&id).expect("present").desired_up = true;
            self.dirty.insert(id);
            accepted.push((id, existed && !d.changed, d.replies));
        }
        for (id, unchanged, replies) in accepted {
            let svc = &self.services[&id];
            let running_as_asked = unchanged
                && matches!(svc.status, Status::Online | Status::Starting)
                && (svc
                    .run
                    .as_ref()
                    .is_some_and(|r| r.ended.is_none() && r.stopping.is_none())
                    || svc.waiting);
            if running_as_asked {
                for reply in replies {
                    let _ = reply.send(Ok(svc.info()));
                }
                continue;
            }
            let generation = svc.generation;
            self.begin_stop(id, Then::Start);
            for reply in replies {
                self.pending.push(Pending {
                    targets: vec![(id, generation)],
                    want: Want::Up,
                    reply: Reply::Info(reply),
                    stages: VecDeque::new(),
                    then: Then::Start,
                    error: None,
                });
            }
        }
    }

    /// Checks a spec for `start_many`, against the services as they will be with the
    /// definitions before it in the same batch. `open_fds` caches the count of open fds for
    /// the batch.
    fn check_definition(
        &self,
        spec: &ServiceSpec,
        planned: &[Definition],
        open_fds: &mut Option<u64>,
    ) -> Result<()> {
        spec.validate()?;
        self.check_dependencies(spec, planned)?;
        if spec.get_max_pids().is_some() && !self.cgroups.as_ref().is_some_and(|c| c.limits_pids())
        {
            return Err(Error::new(
                ErrorKind::InvalidSpec,
                "invalid spec: max_pids needs the pids cgroup controller, which this supervisor does not have (see Supervisor::containment)",
            )
            .with_service(spec.name()));
        }
        let new = |name: &str| !self.services.values().any(|s| s.spec.name() == name);
        if new(spec.name()) {
            let services = 1 + planned
                .iter()
                .filter(|d| d.id.is_none() && d.spec.name() != spec.name())
                .count();
            let open = *open_fds.get_or_insert_with(|| sys::open_fds().unwrap_or(0));
            let need = fd_budget(open, services);
            if need > self.fd_limit {
                return Err(Error::new(
                    ErrorKind::Spawn,
                    format!(
                        "cannot start: {services} more services need about {need} file descriptors ({open} open now), and the limit is {} (raise RLIMIT_NOFILE)",
                        self.fd_limit
                    ),
                )
                .with_service(spec.name()));
            }
        }
        Ok(())
    }

    /// Every dependency exists (or is defined earlier in the same batch), and the graph with
    /// this spec in it has no cycle.
    fn check_dependencies(&self, spec: &ServiceSpec, planned: &[Definition]) -> Result<()> {
        let invalid =
            |msg: String| Error::new(ErrorKind::InvalidSpec, msg).with_service(spec.name());
        for dep in spec.get_after() {
            if !self.services.values().any(|s| s.spec.name() == dep.name)
                && !planned.iter().any(|d| d.spec.name() == dep.name)
            {
                return Err(invalid(format!(
                    "invalid spec: unknown dependency '{}'",
                    dep.name
                )));
            }
        }
        // A cycle through this service needs an edge out of it.
        if spec.get_after().is_empty() {
            return Ok(());
        }
        // The new spec first, so that a cycle is named from the service being started.
        let mut nodes = vec![graph::Node {
            name: spec.name(),
            deps: spec.get_after().iter().map(|d| d.name.as_str()).collect(),
        }];
        let planned = planned.iter().filter(|d| d.spec.name() != spec.name());
        nodes.extend(planned.clone().map(|d| graph::Node {
            name: d.spec.name(),
            deps: d.spec.get_after().iter().map(|d| d.name.as_str()).collect(),
        }));
        nodes.extend(self.graph_nodes().into_iter().filter(|n| {
            n.name != spec.name() && !planned.clone().any(|d| d.spec.name() == n.name)
        }));
        match graph::find_cycle(&nodes) {
            Some(cycle) => Err(invalid(format!(
                "invalid spec: dependency cycle: {}",
                cycle.join(" -> ")
            ))),
            None => Ok(()),
        }
    }

    /// Refuses to delete a service that a service outside `ids` names in `after`.
    fn check_no_dependents(&self, ids: &[u64]) -> Result<()> {
        let doomed: HashSet<&str> = ids.iter().map(|id| self.services[id].spec.name()).collect();
        for svc in self.services.values() {
            if doomed.contains(svc.spec.name()) {
                continue;
            }
            if let Some(dep) = svc
                .spec
                .get_after()
                .iter()
                .find(|d| doomed.contains(d.name.as_str()))
            {
                return Err(Error::new(
                    ErrorKind::InUse,
                    format!(
                        "cannot delete: '{}' depends on it (delete or change '{}' first)",
                        svc.spec.name(),
                        svc.spec.name()
                    ),
                )
                .with_service(dep.name.as_str()));
            }
        }
        Ok(())
    }

    /// Sets the desired state of several services: stored in one transaction, then in
    /// memory. On failure neither changes.
    fn set_desired_many(&mut self, ids: &[u64], up: bool) -> Result<()> {
        let changed: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| self.services.get(id).is_some_and(|s| s.desired_up != up))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let stored = self.store.transaction().and_then(|mut tx| {
            for &id in &changed {
                tx.set_desired(id, up)?;
            }
            tx.commit()
        });
        if let Err(e) = stored {
            self.store_failed(&e);
            return Err(e);
        }
        for id in &changed {
            self.services
                .get_mut(id)
                .expect("filtered above")
                .desired_up = up;
        }
        Ok(())
    }

    /// Removes services from the registry, all in one transaction; in memory they stay until
    /// their stop is over. On failure nothing changes.
    fn delete_rows(&mut self, ids: &[u64]) -> Result<()> {
        let stored = self.store.transaction().and_then(|mut tx| {
            for &id in ids {
                tx.delete_service(id)?;
            }
            tx.commit()
        });
        if let Err(e) = stored {
            self.store_failed(&e);
            return Err(e);
        }
        for id in ids {
            if let Some(svc) = self.services.get_mut(id) {
                // Nothing may start it again while it stops.
                svc.desired_up = false;
            }
        }
        Ok(())
    }

    /// A change could not be stored: logged, and if it is because the state directory went
    /// away, reported as such.
    fn store_failed(&mut self, e: &Error) {
        log::error!("{e}");
        self.after_state_loss();
    }

    /// Watches the state directory (the one at its path now, after a relock): its deletion
    /// or replacement is then noticed at once, not only at the next change.
    fn watch_state_dir(&mut self) {
        match self.state.watch() {
            Ok(watch) => match self.poller.add(&watch, STATE_TOKEN) {
                // The previous watch, if any, leaves the poller as its fd closes.
                Ok(()) => self.state_watch = Some(watch),
                Err(e) => log::warn!("cannot watch the state directory: {e}"),
            },
            Err(e) => log::warn!(
                "cannot watch the state directory ({e}): its removal will be noticed at the next change"
            ),
        }
    }

    /// The state directory, the registry or the lock file was deleted, moved or replaced
    /// (or SQLite made or removed a file of its own there).
    fn on_state_dir_event(&mut self) {
        if let Some(watch) = &self.state_watch {
            watch.drain();
        }
        if self.store.check().is_err() {
            self.after_state_loss();
        }
    }

    /// Once changes can no longer be stored: says so, once (log and event), and makes sure
    /// this supervisor still holds the lock of the state directory's path, so that no
    /// second supervisor opens it while this one runs.
    fn after_state_loss(&mut self) {
        let Some(e) = self.store.lost() else {
            return;
        };
        if !self.state_lost {
            self.state_lost = true;
            log::error!("{e}");
            self.outbox.push(Event::StateDirLost {
                error: e.to_string(),
            });
        }
        if self.state.dir_gone() {
            self.relock();
        } else if !self.relock_due {
            self.relock_due = true;
            let at = Instant::now() + RELOCK_SETTLE;
            self.push_timer(at, 0, 0, TimerKind::Relock);
        }
    }

    /// Takes the lock of the state directory's path again if the one held is no longer
    /// there.
    fn relock(&mut self) {
        self.relock_due = false;
        match self.state.relock() {
            Ok(false) => {}
            Ok(true) => {
                log::warn!(
                    "took the lock of '{}' again, so that no other supervisor opens it while this one runs",
                    self.state.lock_path().display()
                );
                self.watch_state_dir();
            }
            Err(e) => log::error!("{e}"),
        }
    }

    /// Why the service is in its status, from the engine's own state and the policy.
    fn explain(&self, id: u64) -> crate::history::Explanation {
        use crate::history::ordinal;
        use crate::policy::Backoff;
        let svc = &self.services[&id];
        let fmt = crate::duration::format;
        let secs = |d: Duration| format!("{:.1}s", d.as_secs_f64());
        let policy = svc.spec.restart_policy();
        let text = match svc.status {
            Status::Starting if svc.waiting => {
                let unmet: Vec<String> = svc
                    .spec
                    .get_after()
                    .iter()
                    .filter(|d| {
                        let dep = self.services.values().find(|s| s.spec.name() == d.name);
                        !dep.is_some_and(|s| match d.condition {
                            Condition::Started => s.run.is_some(),
                            Condition::Ready => s.status == Status::Online,
                            Condition::Exited0 => {
                                s.status == Status::Exited
                                    && s.last_exit.as_ref().is_some_and(|e| e.code == Some(0))
                            }
                        })
                    })
                    .map(|d| format!("{} to be {:?}", d.name, d.condition).to_lowercase())
                    .collect();
                format!("waiting for {}", unmet.join(", "))
            }
            Status::Starting => format!(
                "running, not ready yet ({:?}; gives up after {})",
                svc.spec.get_ready(),
                fmt(svc.spec.get_ready_timeout())
            ),
            Status::Online => {
                let up = svc
                    .started_at
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                let pid = svc.run.as_ref().map_or(0, |r| r.pid);
                format!(
                    "pid {pid}, up {}, {} automatic restarts so far",
                    secs(up),
                    svc.restarts
                )
            }
            Status::Backoff => {
                let left = svc
                    .next_start
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                let kind = match policy.backoff_config() {
                    Backoff::None => "no backoff".to_string(),
                    Backoff::Fixed { delay } => format!("fixed backoff of {}", fmt(*delay)),
                    Backoff::Exponential { base, max, .. } => {
                        format!("exponential backoff from {} to {}", fmt(*base), fmt(*max))
                    }
                };
                let last = svc
                    .last_exit
                    .as_ref()
                    .map_or(String::new(), |e| format!("after {e}; "));
                format!(
                    "{last}{} restart in a row, next start in {} ({kind}, resets after {} of uptime)",
                    ordinal(svc.history.consecutive),
                    secs(left),
                    fmt(policy.get_stable_after())
                )
            }
            Status::Stopping => {
                "the stop signal was sent; waiting for the process group to end".to_string()
            }
            Status::Stopped => {
                "stopped by the operator (or shutdown); restart or start it to run it again"
                    .to_string()
            }
            Status::Exited => match &svc.last_exit {
                Some(e) => format!("{e}; its restart policy does not restart that"),
                None => "ended; its restart policy does not restart that".to_string(),
            },
            Status::Errored => match (&svc.spawn_error, &svc.last_exit) {
                (Some((_, e)), _) => format!("{e}"),
                (None, Some(e)) => format!(
                    "gave up after {} automatic restarts; last {e}",
                    svc.restarts
                ),
                (None, None) => "gave up".to_string(),
            },
        };
        crate::history::Explanation {
            status: svc.status,
            text,
        }
    }

    /// Ends the current run (if any) gracefully, then does `then`. Without a run, `then`
    /// happens at once. A later request overrides an earlier one's `then`, except that a
    /// delete is never undone.
    /// Begins stopping several services: every stop signal goes out first, then the
    /// bookkeeping of each stop, so that a thousand services are all ending while the
    /// supervisor records it.
    fn begin_stops(&mut self, ids: &[u64], then: Then) {
        if ids.len() > 1 {
            for id in ids {
                let Some(svc) = self.services.get_mut(id) else {
                    continue;
                };
                let signal = svc.spec.get_stop_signal();
                if let Some(run) = svc
                    .run
                    .as_mut()
                    .filter(|r| r.stopping.is_none() && r.ended.is_none() && !r.signalled)
                {
                    run.signalled = sys::signal_group(&run.pidfd, run.pid, signal).is_ok();
                }
            }
        }
        for &id in ids {
            self.begin_stop(id, then);
        }
    }

    fn begin_stop(&mut self, id: u64, then: Then) {
        let now = Instant::now();
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        svc.next_start = None;
        let Some(run) = svc.run.as_mut() else {
            if let Some(sweep) = svc.sweep.as_mut() {
                if sweep.then != Then::Delete {
                    sweep.then = then;
                }
                return;
            }
            if !self.begin_sweep(id, then) {
                self.after_run(id, then);
            }
            return;
        };
        if let Some(stopping) = run.stopping.as_mut() {
            if stopping.then != Then::Delete {
                stopping.then = then;
            }
            if then == Then::Settle || then == Then::Delete {
                // An operator's stop wins over a check that was already ending the run.
                run.cause = Some(Cause::Stopped);
            }
            return;
        }
        // A probe of a stopping run has nothing left to tell.
        run.probe.cancel();
        if run.ended.is_none() {
            run.cause.get_or_insert(match then {
                Then::Settle | Then::Delete => Cause::Stopped,
                Then::Start => Cause::Restarted,
                Then::Crash => Cause::Crashed,
            });
        }
        let signal = svc.spec.get_stop_signal();
        let deadline = crate::duration::deadline(now, svc.spec.get_stop_timeout());
        run.stopping = Some(Stopping {
            deadline,
            killed: signal == Signal::Kill,
            then,
            scanned: None,
        });
        if run.ended.is_none() && !std::mem::take(&mut run.signalled) {
            if let Err(e) = sys::signal_group(&run.pidfd, run.pid, signal) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    log::warn!(
                        "service '{}': cannot send the stop signal: {e}",
                        svc.spec.name()
                    );
                }
            }
        }
        if let Some(cg) = &self.cgroups {
            // Members of the service's cgroup that left its process group get it too.
            let pgid = run.pid;
            let pids = cg.pids(id, run.cgroup);
            if pids.iter().any(|&p| p != pgid) {
                for pid in pids {
                    if pid != pgid && sys::proc_stat(pid).is_some_and(|s| s.pgrp != pgid) {
                        let _ = sys::kill_pid(pid, signal);
                    }
                }
            }
        }
        svc.status = Status::Stopping;
        let generation = svc.generation;
        if self.subreaper {
            self.claim_escapees();
        } else if self.cgroups.is_none() {
            self.find_marked(id, generation);
        }
        self.signal_escapees(id, generation, signal);
        self.dirty.insert(id);
        self.save_state(id);
        self.push_timer(deadline, id, generation, TimerKind::StopDeadline);
        if self.services[&id]
            .run
            .as_ref()
            .is_some_and(|r| r.ended.is_some())
        {
            self.check_group(id);
        }
    }

    /// Process-group containment, at a stop of a service without a run: tracks the escaped
    /// processes of its earlier runs in this session, sends them the stop signal, and makes
    /// the stop wait for them (SIGKILL after the stop timeout). Returns whether there were
    /// any. Other tiers need none: a cgroup, or the subreaper, ends them with their run.
    fn begin_sweep(&mut self, id: u64, then: Then) -> bool {
        let process_groups_only = self.cgroups.is_none() && !self.subreaper;
        // Generation 0: nothing of it ran in this session (a dead host's leftovers were
        // reclaimed at `open`).
        if !process_groups_only || self.services[&id].generation == 0 {
            return false;
        }
        let (scanned, found) = self.take_marked(id);
        let tracked: HashSet<u32> = self.escapees.values().map(|e| e.pid).collect();
        let svc = &self.services[&id];
        let (generation, signal) = (svc.generation, svc.spec.get_stop_signal());
        let name = svc.spec.clone();
        let mut any = false;
        for m in found {
            if tracked.contains(&m.pid) {
                continue;
            }
            let Some(pidfd) = reclaim::pin(m.pid, &m.marker) else {
                continue;
            };
            log::info!(
                "service '{}': process {} of an earlier run left its process group; stopping it",
                name.name(),
                m.pid
            );
            let _ = sys::signal_process(&pidfd, signal);
            self.track_escapee(m.pid, pidfd, id, generation, false);
            any = true;
        }
        if !any {
            return false;
        }
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let deadline = crate::duration::deadline(Instant::now(), svc.spec.get_stop_timeout());
        svc.sweep = Some(Sweep {
            deadline,
            killed: signal == Signal::Kill,
            then,
            scanned,
            generation,
            was: svc.status,
        });
        svc.status = Status::Stopping;
        self.dirty.insert(id);
        self.save_state(id);
        self.push_timer(deadline, id, generation, TimerKind::SweepDeadline);
        true
    }

    /// A sweep's escapee ended: once none is left (nor started since the sweep read /proc),
    /// the stop that began it goes on.
    fn check_sweep(&mut self, id: u64) {
        let Some(svc) = self.services.get(&id) else {
            return;
        };
        let Some(sweep) = &svc.sweep else { return };
        let generation = sweep.generation;
        if self
            .escapees
            .values()
            .any(|e| e.id == id && e.generation == generation)
        {
            return;
        }
        let signal = if sweep.killed {
            Signal::Kill
        } else {
            svc.spec.get_stop_signal()
        };
        if self.late_marked(id, generation, sweep.scanned, signal) {
            return;
        }
        self.finish_sweep(id);
    }

    fn finish_sweep(&mut self, id: u64) {
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let sweep = svc.sweep.take().expect("only called during a sweep");
        svc.status = sweep.was;
        self.dirty.insert(id);
        self.save_state(id);
        self.after_run(id, sweep.then);
    }

    /// What follows a run that was stopped on purpose (or no run at all).
    fn after_run(&mut self, id: u64, then: Then) {
        match then {
            Then::Settle => {
                let svc = self.services.get_mut(&id).expect("callers pass a known id");
                let was = svc.status;
                svc.waiting = false;
                if was == Status::Stopping
                    || was == Status::Backoff
                    || was == Status::Starting
                    || was == Status::Online
                {
                    svc.status = Status::Stopped;
                    svc.generation += 1; // cancels any pending restart timer
                    self.dirty.insert(id);
                    self.save_state(id);
                    self.outbox.push(Event::Stopped {
                        name: self.services[&id].spec.name().to_string(),
                    });
                }
            }
            Then::Start => {
                if let Err(e) = self.spawn_run(id, false) {
                    log::warn!("{e}");
                }
            }
            Then::Delete => self.delete_now(id),
            Then::Crash => unreachable!("a crash is settled by the policy in complete_run"),
        }
    }

    /// Removes a deleted service from memory, once its stop is over (its row went when the
    /// delete was asked for).
    fn delete_now(&mut self, id: u64) {
        let Some(svc) = self.services.remove(&id) else {
            return;
        };
        if let Some(cg) = &self.cgroups {
            cg.remove_service(Some(id));
        }
        // The pump is the only writer of the logs, so it removes them; `delete` waits for it.
        self.pump.forget(id, Arc::from(svc.spec.name()));
        self.forgetting.insert(id);
        self.dirty.remove(&id);
        self.removed.push(id);
        self.outbox.push(Event::Deleted {
            name: svc.spec.name().to_string(),
        });
    }

    /// Spawns a new run. `auto` marks a restart by policy (counted in `restarts`); a manual
    /// start that fails leaves the service `Errored` and returns the error.
    fn spawn_run(&mut self, id: u64, auto: bool) -> Result<()> {
        // An operator's start waits for the service's dependencies; a restart by policy does not.
        if !auto && !self.deps_met(id) {
            let svc = self.services.get_mut(&id).expect("callers pass a known id");
            svc.waiting = true;
            svc.next_start = None;
            svc.spawn_error = None;
            if svc.status != Status::Starting {
                svc.status = Status::Starting;
                self.save_state(id);
            }
            self.dirty.insert(id);
            return Ok(());
        }
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        svc.waiting = false;
        debug_assert!(svc.run.is_none(), "a service never has two live runs");
        svc.generation += 1;
        svc.next_start = None;
        let spec = svc.spec.clone();
        let name = spec.name();
        let setup_failed = |what: &str, e: std::io::Error| {
            Error::new(
                ErrorKind::Spawn,
                format!("cannot start: cannot create its {what}"),
            )
            .with_service(name)
            .with_source(e)
        };
        let pipes = match logs::make_pipes(spec.log_policy().get_merge_stderr()) {
            Ok(p) => p,
            Err(e) => return self.spawn_failed(id, auto, setup_failed("output pipes", e)),
        };
        let err_write = pipes.err.as_ref().map_or(&pipes.out_write, |(_, w)| w);
        let generation = self.services[&id].generation;
        let wants_notify = *spec.get_ready() == Ready::Notify
            || spec
                .get_health()
                .is_some_and(|h| *h.check() == Check::Notify);
        let mut extra_env = vec![(
            RUN_VAR.to_string(),
            self.session.seal(&self.run_key, id, generation, self.uid),
        )];
        let notify = if wants_notify {
            match notify::bind() {
                Ok((sock, name)) => {
                    extra_env.push(("NOTIFY_SOCKET".to_string(), format!("@{name}")));
                    if let Some(h) = spec.get_health().filter(|h| *h.check() == Check::Notify) {
                        extra_env.push((
                            "WATCHDOG_USEC".to_string(),
                            h.get_interval().as_micros().to_string(),
                        ));
                    }
                    Some(sock)
                }
                Err(e) => return self.spawn_failed(id, auto, setup_failed("notify socket", e)),
            }
        } else {
            None
        };
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let launch = match svc.launch.clone().filter(|_| auto) {
            Some(launch) => launch,
            None => {
                match child::Launch::new(&spec, self.host_env.get_or_insert_with(child::host_env)) {
                    Ok(launch) => svc.launch.insert(Arc::new(launch)).clone(),
                    Err(e) => return self.spawn_failed(id, auto, e),
                }
            }
        };
        let limits = crate::containment::Limits {
            max_pids: spec.get_max_pids(),
            max_memory: spec.get_max_memory(),
        };
        // A spare cgroup is only for a run without limits: limits and the per-run memory
        // figures live in cgroups of the run's own.
        let spare = self
            .services
            .get_mut(&id)
            .and_then(|s| s.spare_cgroup.take());
        let cgroup = match spare.filter(|_| limits.is_none()) {
            Some(spare) => spare,
            None => {
                if let (Some(spare), Some(cg)) = (spare, &self.cgroups) {
                    self.pump.remove_dirs(cg.run_dirs(id, spare));
                }
                generation
            }
        };
        let cgroup_procs = match self
            .cgroups
            .as_ref()
            .map(|c| c.prepare(id, cgroup, limits))
            .transpose()
        {
            Ok(p) => p,
            Err(e) => return self.spawn_failed(id, auto, setup_failed("cgroup", e)),
        };
        let spawned = child::spawn(
            &spec,
            &launch,
            &pipes.out_write,
            err_write,
            &extra_env,
            cgroup_procs.as_ref(),
        );
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        self.dirty.insert(id);
        match spawned {
            Ok(child) => {
                let now = Instant::now();
                let wall = SystemTime::now();
                let token = self.next_token;
                self.next_token += 1;
                if let Err(e) = self.poller.add(&child.pidfd, token) {
                    // Without the exit notification we could not supervise it: end it.
                    log::error!("service '{name}': cannot watch the new process: {e}");
                    let _ = sys::signal_group(&child.pidfd, child.pid, Signal::Kill);
                }
                self.tokens.insert(token, id);
                if auto {
                    svc.restarts += 1;
                }
                let immediately = *spec.get_ready() == Ready::Immediately;
                svc.status = if immediately {
                    Status::Online
                } else {
                    Status::Starting
                };
                svc.started_at = Some(wall);
                svc.spawn_error = None;
                // The pidfs inode names the process for good; only older kernels need its
                // start time (one /proc read more on the restart path).
                let pidfd_ino = sys::pidfd_inode(&child.pidfd);
                let start_ticks = match pidfd_ino {
                    Some(_) => None,
                    None => sys::proc_stat(child.pid).map(|s| s.start_time),
                };
                let run_id = Some(self.store.insert_run(&NewRun {
                    service_id: id,
                    generation: svc.generation,
                    pid: child.pid,
                    boot_id: &self.boot_id,
                    start_ticks,
                    pidfd_ino,
                    started_at: wall,
                    ready: immediately,
                }));
                let pid = child.pid;
                if self.subreaper {
                    self.run_groups.insert(pid);
                    self.run_groups_order.push_back(pid);
                    if self.run_groups_order.len() > 4096 {
                        if let Some(old) = self.run_groups_order.pop_front() {
                            self.run_groups.remove(&old);
                        }
                    }
                }
                let oom_kills_at_start = self.cgroups.as_ref().map_or(0, |cg| {
                    cg.oom_kills(id, cgroup, spec.get_max_memory().is_some())
                });
                let logs::RunPipesForSpawn { out_read, err, .. } = pipes;
                let watch = match spec.get_ready() {
                    Ready::LogLine(pattern) => Some(pattern.clone()),
                    _ => None,
                };
                self.pump.attach(
                    id,
                    svc.generation,
                    Arc::from(name),
                    spec.log_policy().clone(),
                    out_read,
                    err.map(|(read, _)| read),
                    svc.log_dropped.clone(),
                    watch,
                    run_id,
                );
                let access = match (&self.cgroups, &cgroup_procs) {
                    (Some(cg), Some(prepared)) => {
                        sys::inode_of(&prepared.dir_fd).ok().map(|cgroup_id| {
                            notify::Access::Cgroup {
                                id: cgroup_id,
                                path: cg.proc_path(id, cgroup),
                            }
                        })
                    }
                    _ => Some(notify::Access::Group {
                        pgid: pid,
                        service: id,
                        generation: svc.generation,
                    }),
                };
                let notify = notify.zip(access).and_then(|(sock, access)| {
                    let token = self.next_token;
                    self.next_token += 1;
                    match self.poller.add(&sock, token) {
                        Ok(()) => {
                            self.notify_tokens.insert(token, id);
                            Some(Notify {
                                sock,
                                token,
                                access,
                                logged_refusal: false,
                            })
                        }
                        Err(e) => {
                            log::error!("service '{name}': cannot watch its notify socket: {e}");
                            None
                        }
                    }
                });
                svc.run = Some(Run {
                    pid,
                    pidfd: child.pidfd,
                    token,
                    run_id,
                    started: now,
                    ended: None,
                    stopping: None,
                    check_interval: GROUP_CHECK_MIN,
                    drained: false,
                    awaiting_drain: false,
                    decision: None,
                    ready: false,
                    health_failures: 0,
                    notify,
                    pinged: false,
                    status_text: None,
                    end_reason: None,
                    memory_strikes: 0,
                    cause: None,
                    usage: None,
                    oom_kills_at_start,
                    signalled: false,
                    cgroup,
                    cgroup_killed: false,
                    probe: Arc::default(),
                });
                if spec.get_max_memory().is_some() && !self.memory_sampling {
                    self.memory_sampling = true;
                    let at = crate::duration::deadline(Instant::now(), self.memory_sample);
                    self.push_timer(at, 0, 0, TimerKind::MemorySample);
                }
                self.save_state(id);
                self.outbox.push(Event::Started {
                    name: name.to_string(),
                    pid,
                });
                self.arm_readiness(id);
                Ok(())
            }
            Err(e) => {
                // Nothing ran in the run's cgroup: the next attempt may use it.
                if let Some(cg) = &self.cgroups {
                    if limits.is_none() {
                        svc.spare_cgroup = Some(cgroup);
                    } else {
                        self.pump.remove_dirs(cg.run_dirs(id, cgroup));
                    }
                }
                self.spawn_failed(id, auto, e)
            }
        }
    }

    fn spawn_failed(&mut self, id: u64, auto: bool, e: Error) -> Result<()> {
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let name = svc.spec.name().to_string();
        let generation = svc.generation;
        let exit = Exit {
            code: None,
            signal: None,
            at: SystemTime::now(),
            uptime: Duration::ZERO,
            reason: Some(e.to_string()),
        };
        let errno = e.os_error();
        let record = |store: &mut Store, boot_id: &str, decision: Option<&str>, delay| {
            let ending = RunEnding {
                exit: &exit,
                cause: Cause::SpawnFailed,
                errno,
                decision,
                delay,
                usage: None,
            };
            store.insert_failed_run(id, generation, boot_id, &ending);
        };
        if auto {
            // A failed automatic restart counts as a crash of zero uptime, so a briefly
            // missing program or working directory does not end the service for good.
            log::warn!("{e}");
            let now = Instant::now();
            let decision = self.decide(
                id,
                RunEnd {
                    started: now,
                    ended: now,
                    outcome: Outcome::Unknown,
                },
            );
            let (text, delay) = describe_decision(&decision, SPAWN_RETRY_MIN);
            record(&mut self.store, &self.boot_id, Some(&text), delay);
            self.act(id, decision, SPAWN_RETRY_MIN);
            return Err(e);
        }
        record(
            &mut self.store,
            &self.boot_id,
            Some("errored: a start by hand is not retried"),
            None,
        );
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        svc.status = Status::Errored;
        svc.spawn_error = Some((svc.generation, clone_error(&e)));
        self.save_state(id);
        self.outbox.push(Event::Errored {
            name,
            reason: e.to_string(),
        });
        Err(e)
    }

    fn on_leader_exit(&mut self, id: u64) {
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        let Some(run) = svc.run.as_mut() else { return };
        if run.ended.is_some() {
            return;
        }
        let raw = match sys::reap(&run.pidfd) {
            Ok(Some((raw, usage))) => {
                run.usage = usage;
                raw
            }
            Ok(None) => return, // spurious readiness
            Err(e) => {
                log::error!(
                    "service '{}': cannot collect the exit status: {e}",
                    svc.spec.name()
                );
                RawExit::Unknown
            }
        };
        run.ended = Some((raw, Instant::now(), SystemTime::now()));
        self.poller.remove(&run.pidfd);
        self.tokens.remove(&run.token);
        self.pump.detach(id, svc.generation);
        self.dirty.insert(id);
        if run.stopping.is_some() {
            self.check_group(id);
        } else {
            // It ended by itself. Whatever it left in its group goes with it: a new run must
            // never meet the old one's descendants.
            let generation = svc.generation;
            let cgroup = run.cgroup;
            let in_cgroup = self
                .cgroups
                .as_ref()
                .is_some_and(|cg| cg.populated(id, cgroup));
            let escaped = self.subreaper && {
                self.claim_escapees();
                self.signal_escapees(id, generation, Signal::Kill) > 0
            };
            let svc = self.services.get_mut(&id).expect("still present");
            let run = svc.run.as_mut().expect("still running");
            if sys::group_has_members(&run.pidfd, run.pid) || in_cgroup || escaped {
                log::warn!(
                    "service '{}': its main process exited; killing what it left running",
                    svc.spec.name()
                );
                run.end_reason.get_or_insert_with(|| {
                    "its main process exited and left processes running; they were killed"
                        .to_string()
                });
                let _ = sys::signal_group(&run.pidfd, run.pid, Signal::Kill);
            }
            if in_cgroup || escaped {
                // Escaped descendants too; and the next run waits until they are gone.
                if let Some(cg) = self.cgroups.as_ref().filter(|_| in_cgroup) {
                    run.cgroup_killed = true;
                    let _ = cg.kill(id, cgroup);
                }
                self.timer(id, KILL_GRACE, TimerKind::GiveUp);
                self.check_group(id);
            } else {
                self.finish_run(id);
            }
        }
    }

    /// For a stopping run whose leader has exited: finish if the group is empty, else check
    /// again shortly.
    fn check_group(&mut self, id: u64) {
        self.claim_escapees();
        let generation = self.services[&id].generation;
        let escapees_gone = !self
            .escapees
            .values()
            .any(|e| e.id == id && e.generation == generation);
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let run = svc.run.as_mut().expect("only called with a run");
        let group_empty = !sys::group_has_members(&run.pidfd, run.pid)
            || sys::live_groups(&HashSet::from([run.pid])).is_empty();
        let cgroup = run.cgroup;
        let cgroup_empty = self
            .cgroups
            .as_ref()
            .is_none_or(|cg| !cg.populated(id, cgroup));
        let process_groups_only = self.cgroups.is_none() && !self.subreaper;
        if group_empty
            && cgroup_empty
            && escapees_gone
            && !(process_groups_only && self.find_late_marked(id, generation))
        {
            self.finish_run(id);
            return;
        }
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let run = svc.run.as_mut().expect("only called with a run");
        let at = Instant::now() + run.check_interval;
        run.check_interval = (run.check_interval * 2).min(GROUP_CHECK_MAX);
        let generation = svc.generation;
        self.push_timer(at, id, generation, TimerKind::GroupCheck);
    }

    /// With a subreaper host: claims the orphans re-parented to it, by their `SHEEPDOG_RUN`.
    /// An orphan of a run that is over is killed at once; one without the variable is
    /// reported once if it sits in a session of its own (a `setsid` daemon), the mark of an
    /// escape, since the host's own children look the same otherwise.
    fn claim_escapees(&mut self) {
        if !self.subreaper {
            return;
        }
        let leaders: HashSet<u32> = self
            .services
            .values()
            .filter_map(|s| s.run.as_ref().filter(|r| r.ended.is_none()).map(|r| r.pid))
            .collect();
        let claimed: HashSet<u32> = self.escapees.values().map(|e| e.pid).collect();
        let host_session = sys::session_of(std::process::id());
        for pid in sys::own_children() {
            if leaders.contains(&pid) || claimed.contains(&pid) || self.unclaimed.contains(&pid) {
                continue;
            }
            // Our child until reaped, so its pid cannot be reused meanwhile. A zombie shows
            // no environment; one that was in the process group of a run of ours (a member
            // whose leader died first, re-parented dead) is ours to reap.
            let stat = sys::proc_stat(pid);
            if stat.as_ref().is_some_and(|s| s.state == b'Z') {
                let pgrp = stat.map_or(0, |s| s.pgrp);
                if self.run_groups.contains(&pgrp) {
                    if let Ok(fd) = sys::pidfd_open(pid) {
                        let _ = sys::reap(&fd);
                    }
                    continue;
                }
            }
            let claimed = stat
                .as_ref()
                .and_then(|s| marker::claim(s, &self.run_key, std::slice::from_ref(&self.session)));
            let Some(claimed) = claimed else {
                let name = || {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    comm.trim().to_string()
                };
                if sys::environ_value(pid, RUN_VAR).is_some() {
                    log::warn!(
                        "process {pid} ({}) was re-parented to the host with a {RUN_VAR} that does not prove it a run's (forged, copied or of another uid): it is left alone",
                        name()
                    );
                } else if sys::session_of(pid) != host_session {
                    log::warn!(
                        "process {pid} ({}) was re-parented to the host in a session of its own and carries no {RUN_VAR}: it cannot be attributed to a service and is left alone",
                        name()
                    );
                }
                self.unclaimed.insert(pid);
                continue;
            };
            let (id, generation) = (claimed.owner.id, claimed.owner.generation);
            let Some(pidfd) = reclaim::pin(pid, &claimed.marker) else {
                continue;
            };
            let current = self.services.get(&id).is_some_and(|s| {
                s.generation == generation && s.run.as_ref().is_some_and(|r| r.ended.is_none())
            });
            if !current {
                let _ = sys::signal_process(&pidfd, Signal::Kill);
            }
            log::info!("service id {id}: process {pid} left its process group; it is tracked");
            self.track_escapee(pid, pidfd, id, generation, false);
        }
    }

    /// Watches an escapee's pidfd and files it under the run (`id`, `generation`).
    fn track_escapee(
        &mut self,
        pid: u32,
        pidfd: OwnedFd,
        id: u64,
        generation: u64,
        got_group_signal: bool,
    ) {
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = self.poller.add(&pidfd, token) {
            log::error!("cannot watch escaped process {pid}: {e}");
            return;
        }
        self.escapees.insert(
            token,
            Escapee {
                pid,
                pidfd,
                id,
                generation,
                got_group_signal,
            },
        );
    }

    /// Process-group containment, at a stop: tracks every process that carries the service's
    /// `SHEEPDOG_RUN` (any run of it) under the stopping run, so that the stop signals them,
    /// waits for them and SIGKILLs them at the deadline. Members of the group are tracked too:
    /// one that leaves the group after this (`setsid`) stays known. One pass over /proc per
    /// loop iteration serves every stop in it (a stop-all reads /proc once).
    fn find_marked(&mut self, id: u64, generation: u64) {
        let (scanned, found) = self.take_marked(id);
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let Some(run) = svc.run.as_mut() else { return };
        if let Some(stopping) = run.stopping.as_mut() {
            stopping.scanned = Some(scanned);
        }
        let leader = run.pid;
        let tracked: HashSet<u32> = self.escapees.values().map(|e| e.pid).collect();
        for m in found {
            if m.pid == leader || tracked.contains(&m.pid) {
                continue;
            }
            let Some(pidfd) = reclaim::pin(m.pid, &m.marker) else {
                continue;
            };
            if m.pgrp != leader {
                log::info!(
                    "service id {id}: process {} left its process group; stopping it too",
                    m.pid
                );
            }
            // A member the group's stop signal reached: one that was in the group and had
            // started a clock tick or more before this read. One forked in between (a
            // handler of the stop signal that forks) gets the signal of its own.
            let got_group_signal = m.pgrp == leader && m.start_time + 1 < scanned.ticks;
            self.track_escapee(m.pid, pidfd, id, generation, got_group_signal);
        }
    }

    /// The processes provably of service `id`'s runs in this session, and when /proc was
    /// read for them: once per loop turn for all services (a stop-all reads it once).
    fn take_marked(&mut self, id: u64) -> (Scan, Vec<Marked>) {
        let (run_key, session) = (&self.run_key, &self.session);
        let (scanned, by_id) = self.marked.get_or_insert_with(|| {
            let scanned = Scan::now();
            let mut by_id: HashMap<u64, Vec<Marked>> = HashMap::new();
            for (owner, m) in marked_processes(&sys::all_processes(), run_key, session) {
                by_id.entry(owner).or_default().push(m);
            }
            (scanned, by_id)
        });
        (*scanned, by_id.remove(&id).unwrap_or_default())
    }

    /// Process-group containment, when a stopping run's group has emptied: looks for
    /// processes of the service started since its stop read /proc (forked by a member that
    /// was still running, then gone from the group), tracks them and sends them the stop
    /// signal, or SIGKILL after the deadline. Returns whether it found any.
    fn find_late_marked(&mut self, id: u64, generation: u64) -> bool {
        let svc = &self.services[&id];
        let Some(stopping) = svc.run.as_ref().and_then(|r| r.stopping.as_ref()) else {
            return false;
        };
        let Some(before) = stopping.scanned else {
            return false;
        };
        let signal = if stopping.killed {
            Signal::Kill
        } else {
            svc.spec.get_stop_signal()
        };
        self.late_marked(id, generation, before, signal)
    }

    /// Looks for processes of service `id` started since `before` (see
    /// [`find_late_marked`](Engine::find_late_marked)), tracks them under `generation` and
    /// sends them `signal`. Returns whether it found any.
    fn late_marked(&mut self, id: u64, generation: u64, before: Scan, signal: Signal) -> bool {
        let last_pid = sys::last_pid();
        let tracked: HashSet<u32> = self.escapees.values().map(|e| e.pid).collect();
        // Pids are handed out in order: what was created since the stop's read has a pid
        // after the last one then. That is a few pids to look at, or none (a stop-all of 1000
        // would otherwise read all of /proc once per loop turn). After a wrap, or where the
        // last pid cannot be read, every process started since then (by its start time) is.
        let candidates: Vec<u32> = match (before.last_pid, last_pid) {
            (Some(a), Some(b)) if a == b => Vec::new(),
            (Some(a), Some(b)) if b > a && b - a <= LATE_PIDS_MAX => (a + 1..=b).collect(),
            _ => {
                // A process started in the tick of the read may have been missed by it.
                let since = before.ticks.saturating_sub(1);
                let procs = self.procs.get_or_insert_with(sys::all_processes);
                procs
                    .iter()
                    .filter(|p| p.start_time >= since)
                    .map(|p| p.pid)
                    .collect()
            }
        };
        let me = std::process::id();
        let mut found = false;
        for pid in candidates {
            if pid == me || tracked.contains(&pid) {
                continue;
            }
            let Some(stat) = sys::proc_stat(pid) else {
                continue;
            };
            let sessions = std::slice::from_ref(&self.session);
            let Some(claimed) = marker::claim(&stat, &self.run_key, sessions) else {
                continue;
            };
            if claimed.owner.id != id {
                continue;
            }
            let Some(pidfd) = reclaim::pin(pid, &claimed.marker) else {
                continue;
            };
            log::info!(
                "service id {id}: process {pid} was started during its stop; stopping it too"
            );
            let _ = sys::signal_process(&pidfd, signal);
            self.track_escapee(pid, pidfd, id, generation, false);
            found = true;
        }
        found
    }

    /// Sends `signal` to the tracked escapees of a run (one the group's stop signal reached,
    /// only a SIGKILL); returns how many there were.
    fn signal_escapees(&self, id: u64, generation: u64, signal: Signal) -> usize {
        let mut n = 0;
        for e in self.escapees.values() {
            if e.id == id
                && e.generation == generation
                && (!e.got_group_signal || signal == Signal::Kill)
            {
                let _ = sys::signal_process(&e.pidfd, signal);
                n += 1;
            }
        }
        n
    }

    /// At shutdown every service is down, but an escapee of a run that was already over
    /// may still be dying: kill what is left and reap it (boundedly), so that no zombie of
    /// ours stays with the host.
    fn reap_escapees_at_exit(&mut self) {
        self.claim_escapees();
        for e in self.escapees.values() {
            let _ = sys::signal_process(&e.pidfd, Signal::Kill);
        }
        let deadline = Instant::now() + KILL_GRACE;
        while !self.escapees.is_empty() && Instant::now() < deadline {
            self.escapees
                .retain(|_, e| matches!(sys::reap(&e.pidfd), Ok(None)));
            if !self.escapees.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for e in self.escapees.values() {
            log::error!("escaped process {} survived SIGKILL at shutdown", e.pid);
        }
    }

    /// A claimed escapee exited: reap it.
    fn on_escapee_exit(&mut self, token: u64) {
        let Some(e) = self.escapees.get(&token) else {
            return;
        };
        if let Ok(None) = sys::reap(&e.pidfd) {
            return; // spurious readiness
        }
        let e = self.escapees.remove(&token).expect("present above");
        self.poller.remove(&e.pidfd);
        self.check_sweep(e.id);
    }

    /// The run is over (leader reaped, group empty or killed): record it, then decide.
    /// The run is over as a process (leader reaped, group empty or given up on). Decides what
    /// follows, then completes it once the log pump has drained its output, so that a service
    /// reported exited or stopped has all of its output in its log. An immediate restart does
    /// not wait: the pump writes the old run's remaining output before the new run's.
    fn finish_run(&mut self, id: u64) {
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let run = svc.run.as_mut().expect("only called with a run");
        let by_policy = run.stopping.as_ref().is_none_or(|s| s.then == Then::Crash);
        if by_policy && run.decision.is_none() {
            let (raw, ended, _) =
                run.ended
                    .unwrap_or((RawExit::Unknown, Instant::now(), SystemTime::now()));
            let end = RunEnd {
                started: run.started,
                ended,
                outcome: match raw {
                    RawExit::Code(c) => Outcome::Code(c),
                    RawExit::Signal(s) => Outcome::Signal(s),
                    RawExit::Unknown => Outcome::Unknown,
                },
            };
            let decision = self.decide(id, end);
            let run = self
                .services
                .get_mut(&id)
                .and_then(|s| s.run.as_mut())
                .expect("still running");
            run.decision = Some(decision);
        }
        let run = self
            .services
            .get_mut(&id)
            .and_then(|s| s.run.as_mut())
            .expect("still running");
        let immediate =
            matches!(run.decision, Some(Decision::Restart { delay, .. }) if delay.is_zero());
        if !run.drained && !immediate {
            run.awaiting_drain = true;
            return;
        }
        self.complete_run(id);
    }

    fn on_drained(&mut self, id: u64, generation: u64, tail: Option<logs::RunTail>) {
        if let Some(tail) = tail.filter(|t| !t.stdout.is_empty() || !t.stderr.is_empty()) {
            self.store.set_tail(tail.run_id, &tail.stdout, &tail.stderr);
        }
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        if svc.generation != generation {
            return;
        }
        let Some(run) = svc.run.as_mut() else { return };
        run.drained = true;
        if run.awaiting_drain {
            self.complete_run(id);
        }
    }

    fn complete_run(&mut self, id: u64) {
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let mut run = svc.run.take().expect("only called with a run");
        run.probe.cancel();
        if run.ended.is_none() {
            self.poller.remove(&run.pidfd);
            self.tokens.remove(&run.token);
        }
        if let Some(n) = run.notify.take() {
            self.poller.remove(&n.sock);
            self.notify_tokens.remove(&n.token);
        }
        let (raw, ended, wall) =
            run.ended
                .unwrap_or((RawExit::Unknown, Instant::now(), SystemTime::now()));
        let exit = Exit {
            code: match raw {
                RawExit::Code(c) => Some(c),
                _ => None,
            },
            signal: match raw {
                RawExit::Signal(s) => Some(s),
                _ => None,
            },
            at: wall,
            uptime: ended.saturating_duration_since(run.started),
            reason: run.end_reason.clone(),
        };
        let limited = svc.spec.get_max_memory().is_some();
        let oom = self
            .cgroups
            .as_ref()
            .is_some_and(|cg| cg.oom_kills(id, run.cgroup, limited) > run.oom_kills_at_start);
        if let (Some(usage), Some(cg)) = (run.usage.as_mut(), &self.cgroups) {
            usage.peak_memory = cg.peak_memory(id, run.cgroup, limited);
        }
        let cause = match (run.cause, raw) {
            (Some(cause), _) => cause,
            (None, _) if oom => Cause::OutOfMemory,
            (None, RawExit::Code(0)) => Cause::Exited,
            (None, _) => Cause::Crashed,
        };
        let svc = self.services.get_mut(&id).expect("still present");
        svc.last_exit = Some(exit.clone());
        svc.started_at = None;
        // The run's cgroup is empty now. When a restart follows, the next run starts in it
        // (unless it was killed, or has limits): no `mkdir` on the restart path, no `rmdir`
        // after. Otherwise the pump removes it, as a stop-all of 1000 would leave 1000 for
        // the shutdown to remove one by one.
        let next_run_follows = match run.stopping.as_ref().map(|s| s.then) {
            Some(Then::Start) => true,
            None | Some(Then::Crash) => matches!(run.decision, Some(Decision::Restart { .. })),
            Some(Then::Settle) | Some(Then::Delete) => false,
        };
        let spare = self.cgroups.is_some() && !run.cgroup_killed && !limited && next_run_follows;
        if spare {
            svc.spare_cgroup = Some(run.cgroup);
        }
        self.outbox.push(Event::Exited {
            name: svc.spec.name().to_string(),
            pid: run.pid,
            exit: exit.clone(),
        });
        self.dirty.insert(id);
        match run.stopping {
            Some(ref stopping) if stopping.then != Then::Crash => {
                let svc = self.services.get_mut(&id).expect("still present");
                svc.status = Status::Stopping; // settled by `after_run`
                self.after_run(id, stopping.then);
            }
            _ => {
                let decision = run.decision.expect("decided in finish_run");
                self.act(id, decision, Duration::ZERO);
            }
        }
        // After the decision: an immediate restart is spawned before this cleanup and any write.
        // Removing a cgroup takes the kernel tens of microseconds; the pump does it.
        if let Some(cg) = self.cgroups.as_ref().filter(|_| !spare) {
            self.pump.remove_dirs(cg.run_dirs(id, run.cgroup));
        }
        if let Some(run_id) = run.run_id {
            let by_policy = run.stopping.is_none_or(|s| s.then == Then::Crash);
            let (decision, delay) = match run.decision.filter(|_| by_policy) {
                Some(d) => {
                    let (text, delay) = describe_decision(&d, Duration::ZERO);
                    (Some(text), delay)
                }
                None => (None, None),
            };
            let ending = RunEnding {
                exit: &exit,
                cause,
                errno: None,
                decision: decision.as_deref(),
                delay,
                usage: run.usage,
            };
            self.store.end_run(id, run_id, &ending);
        }
    }

    fn timer(&mut self, id: u64, after: Duration, kind: TimerKind) {
        let generation = self.services[&id].generation;
        self.push_timer(
            crate::duration::deadline(Instant::now(), after),
            id,
            generation,
            kind,
        );
    }

    fn push_timer(&mut self, at: Instant, id: u64, generation: u64, kind: TimerKind) {
        self.timers.push(Reverse(Timer {
            at,
            id,
            generation,
            kind,
        }));
    }

    /// Sets up what makes a new run ready, and the deadline for it.
    fn arm_readiness(&mut self, id: u64) {
        let spec = self.services[&id].spec.clone();
        match spec.get_ready() {
            Ready::Immediately => {
                let generation = self.services[&id].generation;
                return self.mark_ready(id, generation);
            }
            Ready::After(d) => self.timer(id, *d, TimerKind::ReadyAfter),
            Ready::Tcp(_) | Ready::Command(_) => {
                self.timer(id, Duration::ZERO, TimerKind::ReadyProbe)
            }
            Ready::LogLine(_) | Ready::Notify => {}
        }
        self.timer(id, spec.get_ready_timeout(), TimerKind::ReadyTimeout);
    }

    /// The run of `generation` is ready: `Online`, and its liveness checks begin.
    fn mark_ready(&mut self, id: u64, generation: u64) {
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        if svc.generation != generation {
            return;
        }
        let Some(run) = svc.run.as_mut() else { return };
        if run.ready || run.ended.is_some() || run.stopping.is_some() {
            return;
        }
        run.ready = true;
        svc.status = Status::Online;
        self.dirty.insert(id);
        let name = svc.spec.name().to_string();
        let health = svc.spec.get_health().cloned();
        if *svc.spec.get_ready() != Ready::Immediately {
            if let Some(run_id) = run.run_id {
                self.store.set_ready(run_id, SystemTime::now());
            }
            self.save_state(id);
        }
        self.outbox.push(Event::Ready { name });
        if let Some(h) = health {
            let first = h
                .get_initial_delay()
                .saturating_add(if *h.check() == Check::Notify {
                    h.get_interval()
                } else {
                    Duration::ZERO
                });
            self.timer(id, first, TimerKind::HealthProbe);
        }
    }

    fn submit_probe(&mut self, id: u64, purpose: Purpose, check: Check, timeout: Duration) {
        if self.probes.is_none() {
            match self.poller.waker().and_then(|w| {
                let cgroups = self
                    .cgroups
                    .as_ref()
                    .map(|c| c.probe_cgroups())
                    .transpose()?;
                Pool::start(self.requests_tx.clone(), w, cgroups)
            }) {
                Ok(pool) => self.probes = Some(pool),
                Err(e) => {
                    log::error!("cannot start the probe workers: {e}");
                    return;
                }
            }
        }
        let svc = &self.services[&id];
        let Some(run) = svc.run.as_ref() else {
            return;
        };
        self.probes
            .as_ref()
            .expect("started above")
            .submit(probe::Job {
                id,
                generation: svc.generation,
                purpose,
                check,
                timeout,
                slot: run.probe.clone(),
            });
    }

    fn on_probed(&mut self, id: u64, generation: u64, purpose: Purpose, outcome: probe::Outcome) {
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        if svc.generation != generation {
            return;
        }
        let Some(run) = svc.run.as_mut() else { return };
        if run.ended.is_some() || run.stopping.is_some() {
            return;
        }
        match purpose {
            Purpose::Ready if run.ready => {}
            Purpose::Ready => match outcome {
                Ok(()) => self.mark_ready(id, generation),
                Err(_) => self.timer(id, READY_PROBE_EVERY, TimerKind::ReadyProbe),
            },
            Purpose::Health => {
                let h = svc.spec.get_health().cloned().expect("probed for health");
                match outcome {
                    Ok(()) => run.health_failures = 0,
                    Err(reason) => {
                        run.health_failures += 1;
                        if run.health_failures >= h.get_failures() {
                            return self.unhealthy(id, reason);
                        }
                    }
                }
                self.timer(id, h.get_interval(), TimerKind::HealthProbe);
            }
        }
    }

    /// Checks the memory limits: a service over its limit for two samples in a row is ended
    /// (and restarted by its policy). Reschedules itself only while a limited service runs.
    fn sample_memory(&mut self) {
        let limited: Vec<(u64, u64, u32, u64)> = self
            .services
            .values()
            .filter_map(|s| {
                let limit = s.spec.get_max_memory()?;
                let run = s
                    .run
                    .as_ref()
                    .filter(|r| r.ended.is_none() && r.stopping.is_none())?;
                Some((s.id, run.cgroup, run.pid, limit))
            })
            .collect();
        if limited.is_empty() {
            self.memory_sampling = false;
            return;
        }
        let page = sys::page_size();
        let mut rss: HashMap<u32, u64> = HashMap::new();
        let groups: HashSet<u32> = limited.iter().map(|l| l.2).collect();
        let mut by_pid = HashMap::new();
        for p in sys::all_processes() {
            if groups.contains(&p.pgrp) {
                *rss.entry(p.pgrp).or_default() +=
                    sys::resident_pages(p.pid).unwrap_or(p.rss_pages) * page;
            }
            by_pid.insert(p.pid, p);
        }
        for (id, cgroup, pgid, limit) in limited {
            let mut used = rss.get(&pgid).copied().unwrap_or(0);
            if let Some(cg) = &self.cgroups {
                // Members that left the process group count too.
                for pid in cg.pids(id, cgroup) {
                    if let Some(p) = by_pid.get(&pid).filter(|p| p.pgrp != pgid) {
                        used += sys::resident_pages(p.pid).unwrap_or(p.rss_pages) * page;
                    }
                }
            }
            let run = self
                .services
                .get_mut(&id)
                .and_then(|s| s.run.as_mut())
                .expect("listed above");
            if used > limit {
                run.memory_strikes += 1;
                if run.memory_strikes >= 2 {
                    let reason =
                        format!("memory limit: {} MiB over {} MiB", used >> 20, limit >> 20);
                    log::warn!("service '{}': {reason}", self.services[&id].spec.name());
                    self.fail_run(id, Cause::MemoryLimit, reason);
                }
            } else {
                run.memory_strikes = 0;
            }
        }
        let at = crate::duration::deadline(Instant::now(), self.memory_sample);
        self.push_timer(at, 0, 0, TimerKind::MemorySample);
    }

    fn unhealthy(&mut self, id: u64, reason: String) {
        let name = self.services[&id].spec.name().to_string();
        log::warn!("service '{name}': unhealthy: {reason}");
        self.outbox.push(Event::Unhealthy {
            name,
            reason: reason.clone(),
        });
        self.fail_run(id, Cause::Unhealthy, format!("unhealthy: {reason}"));
    }

    /// Ends a run that failed a check; the restart policy then treats it as a crash.
    fn fail_run(&mut self, id: u64, cause: Cause, reason: String) {
        if let Some(run) = self.services.get_mut(&id).and_then(|s| s.run.as_mut()) {
            run.end_reason = Some(reason);
            run.cause.get_or_insert(cause);
        }
        self.begin_stop(id, Then::Crash);
    }

    /// Reads the run's `NOTIFY_SOCKET` datagrams (`sd_notify`): those from a process of the
    /// run count, the others are refused and counted (see [`crate::notify`]).
    fn on_notify(&mut self, id: u64) {
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        let generation = svc.generation;
        let Some(run) = svc.run.as_mut() else { return };
        let Some(n) = run.notify.as_mut() else { return };
        let mut buf = [0u8; 4096];
        let mut ready = false;
        for _ in 0..NOTIFY_READS_MAX {
            let datagram = match n.sock.recv(&mut buf) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => {
                    log::warn!(
                        "service '{}': cannot read its notify socket: {e}",
                        svc.spec.name()
                    );
                    break;
                }
            };
            let from_run = datagram
                .sender
                .as_ref()
                .is_some_and(|c| notify::from_run(c, &n.access, &self.run_key, &self.session));
            if !from_run {
                svc.notify_rejected += 1;
                if !std::mem::replace(&mut n.logged_refusal, true) {
                    let who = datagram
                        .sender
                        .map_or("an unknown sender".to_string(), |c| {
                            format!("pid {} (uid {})", c.pid, c.uid)
                        });
                    log::warn!(
                        "service '{}': refused a notify datagram from {who}: not a process of its run (further refusals are only counted)",
                        svc.spec.name()
                    );
                }
                continue;
            }
            let m = notify::parse(&buf[..datagram.len]);
            ready |= m.ready;
            run.pinged |= m.watchdog;
            if let Some(text) = m.status {
                run.status_text = Some(text);
            }
            if m.restart_reset {
                svc.history = History::default();
            }
        }
        self.dirty.insert(id);
        if ready {
            self.mark_ready(id, generation);
        }
    }

    /// Asks the policy about a run that ended by itself, and keeps the history it returns.
    fn decide(&mut self, id: u64, end: RunEnd) -> Decision {
        let jitter = self.random_unit();
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let (decision, history) = svc.spec.restart_policy().decide(&svc.history, &end, jitter);
        svc.history = history;
        decision
    }

    fn act(&mut self, id: u64, decision: Decision, min_delay: Duration) {
        let svc = self.services.get_mut(&id).expect("callers pass a known id");
        let name = svc.spec.name().to_string();
        match decision {
            Decision::Restart { delay, .. } => {
                let delay = delay.max(min_delay);
                let reason = match &svc.last_exit {
                    Some(e) if min_delay.is_zero() => e.to_string(),
                    _ => "its start failed".to_string(),
                };
                self.outbox.push(Event::Restarting {
                    name: name.clone(),
                    reason,
                    delay,
                });
                let svc = self.services.get_mut(&id).expect("callers pass a known id");
                if delay.is_zero() {
                    let _ = self.spawn_run(id, true);
                } else {
                    let at = crate::duration::deadline(Instant::now(), delay);
                    svc.status = Status::Backoff;
                    svc.next_start = Some(at);
                    let generation = svc.generation;
                    self.save_state(id);
                    self.push_timer(at, id, generation, TimerKind::Restart);
                    self.outbox.push(Event::Backoff { name, delay });
                }
            }
            Decision::Exited => {
                svc.status = Status::Exited;
                self.save_state(id);
            }
            Decision::Errored { crashes, window } => {
                svc.status = Status::Errored;
                self.save_state(id);
                self.outbox.push(Event::Errored {
                    name,
                    reason: format!(
                        "crash loop: {crashes} crashes within {}, more than the {} restarts allowed",
                        crate::duration::format(window),
                        crashes.saturating_sub(1)
                    ),
                });
            }
        }
    }

    /// Acts on the timers that are due; once the turn's `budget` is spent, on no more
    /// restarts: the rest stay due, and the next turn's wait returns at once for them.
    fn fire_timers(&mut self, budget: Instant) {
        let now = Instant::now();
        let mut restarted = false;
        while let Some(Reverse(timer)) = self.timers.peek().copied() {
            if timer.at > now {
                break;
            }
            if timer.kind == TimerKind::Restart {
                if restarted && Instant::now() >= budget {
                    break;
                }
                restarted = true;
            }
            self.timers.pop();
            if timer.kind == TimerKind::Relock {
                self.relock();
                continue;
            }
            if timer.kind == TimerKind::MemorySample {
                self.sample_memory();
                continue;
            }
            let Some(svc) = self.services.get_mut(&timer.id) else {
                continue;
            };
            if svc.generation != timer.generation {
                continue;
            }
            match timer.kind {
                TimerKind::Restart => {
                    if svc.status == Status::Backoff
                        && svc.run.is_none()
                        && svc.next_start == Some(timer.at)
                    {
                        let _ = self.spawn_run(timer.id, true);
                    }
                }
                TimerKind::StopDeadline => {
                    let Some(run) = svc.run.as_mut() else {
                        continue;
                    };
                    let Some(stopping) = run.stopping.as_mut() else {
                        continue;
                    };
                    if stopping.deadline != timer.at {
                        continue;
                    }
                    if !stopping.killed {
                        stopping.killed = true;
                        log::info!(
                            "service '{}': still running {} after the stop signal; sending SIGKILL to its group",
                            svc.spec.name(),
                            crate::duration::format(svc.spec.get_stop_timeout())
                        );
                        let _ = sys::signal_group(&run.pidfd, run.pid, Signal::Kill);
                        if let Some(cg) = &self.cgroups {
                            run.cgroup_killed = true;
                            let _ = cg.kill(timer.id, run.cgroup);
                        }
                        self.signal_escapees(timer.id, timer.generation, Signal::Kill);
                    }
                    self.push_timer(
                        now + KILL_GRACE,
                        timer.id,
                        timer.generation,
                        TimerKind::GiveUp,
                    );
                }
                TimerKind::SweepDeadline => {
                    let Some(sweep) = svc.sweep.as_mut() else {
                        continue;
                    };
                    if sweep.deadline != timer.at || sweep.killed {
                        continue;
                    }
                    sweep.killed = true;
                    log::info!(
                        "service '{}': processes of earlier runs still running {} after the stop signal; sending SIGKILL",
                        svc.spec.name(),
                        crate::duration::format(svc.spec.get_stop_timeout())
                    );
                    self.signal_escapees(timer.id, timer.generation, Signal::Kill);
                    self.push_timer(
                        now + KILL_GRACE,
                        timer.id,
                        timer.generation,
                        TimerKind::SweepGiveUp,
                    );
                }
                TimerKind::SweepGiveUp => {
                    if svc.sweep.is_some() {
                        log::error!(
                            "service '{}': processes of earlier runs survived SIGKILL for {}s; giving up on them",
                            svc.spec.name(),
                            KILL_GRACE.as_secs()
                        );
                        self.finish_sweep(timer.id);
                    }
                }
                TimerKind::GroupCheck => {
                    if svc.run.as_ref().is_some_and(|r| r.ended.is_some()) {
                        self.check_group(timer.id);
                    }
                }
                TimerKind::ReadyAfter => {
                    if svc
                        .run
                        .as_ref()
                        .is_some_and(|r| !r.ready && r.ended.is_none())
                    {
                        self.mark_ready(timer.id, timer.generation);
                    }
                }
                TimerKind::ReadyTimeout => {
                    let waiting = svc
                        .run
                        .as_ref()
                        .is_some_and(|r| !r.ready && r.ended.is_none() && r.stopping.is_none());
                    if waiting {
                        let reason = format!(
                            "not ready within {}",
                            crate::duration::format(svc.spec.get_ready_timeout())
                        );
                        log::warn!("service '{}': {reason}", svc.spec.name());
                        self.fail_run(timer.id, Cause::NotReady, reason);
                    }
                }
                TimerKind::ReadyProbe => {
                    let waiting = svc
                        .run
                        .as_ref()
                        .is_some_and(|r| !r.ready && r.ended.is_none() && r.stopping.is_none());
                    let check = match svc.spec.get_ready() {
                        Ready::Tcp(port) => Some(Check::Tcp(*port)),
                        Ready::Command(argv) => Some(Check::Command(argv.clone())),
                        _ => None,
                    };
                    if let (true, Some(check)) = (waiting, check) {
                        let timeout = svc.spec.get_ready_timeout().min(Duration::from_secs(1));
                        self.submit_probe(timer.id, Purpose::Ready, check, timeout);
                    }
                }
                TimerKind::HealthProbe => {
                    let live = svc
                        .run
                        .as_ref()
                        .is_some_and(|r| r.ready && r.ended.is_none() && r.stopping.is_none());
                    let Some(h) = svc.spec.get_health().cloned() else {
                        continue;
                    };
                    if !live {
                        continue;
                    }
                    if *h.check() == Check::Notify {
                        let run = svc.run.as_mut().expect("live");
                        let pinged = std::mem::replace(&mut run.pinged, false);
                        let outcome = if pinged {
                            Ok(())
                        } else {
                            Err(format!(
                                "no WATCHDOG=1 within {}",
                                crate::duration::format(h.get_interval())
                            ))
                        };
                        // Counted like a probe; the next tick is scheduled there.
                        self.on_probed(timer.id, timer.generation, Purpose::Health, outcome);
                    } else {
                        self.submit_probe(
                            timer.id,
                            Purpose::Health,
                            h.check().clone(),
                            h.get_timeout(),
                        );
                    }
                }
                TimerKind::MemorySample | TimerKind::Relock => {
                    unreachable!("handled before the service lookup")
                }
                TimerKind::GiveUp => {
                    if svc.run.as_ref().is_some_and(|r| r.ended.is_some()) {
                        log::error!(
                            "service '{}': members of its process group survived SIGKILL for {}s; giving up on them",
                            svc.spec.name(),
                            KILL_GRACE.as_secs()
                        );
                        self.finish_run(timer.id);
                    }
                }
            }
        }
    }

    /// Marks the service's status for storing at the end of this loop turn: a stop moves
    /// through several statuses in one turn, and only the last needs writing.
    fn save_state(&mut self, id: u64) {
        self.unsaved.insert(id);
    }

    /// What every loop turn ends with, before it publishes or replies: the statuses and run
    /// records of the turn committed, and the log pump woken for what was sent to it.
    fn end_turn(&mut self) {
        self.write_states();
        self.store.flush();
        self.pump.wake();
    }

    /// Stores the statuses changed in this loop turn.
    fn write_states(&mut self) {
        for id in std::mem::take(&mut self.unsaved) {
            let Some(svc) = self.services.get(&id) else {
                continue; // deleted meanwhile
            };
            self.store
                .set_state(id, svc.status, svc.restarts, svc.last_exit.as_ref());
        }
    }

    /// Copies changed services into the shared snapshot, wakes waiters, then sends the
    /// events that led there (so a subscriber that sees an event also sees its state).
    fn publish(&mut self) {
        if !self.dirty.is_empty() || !self.removed.is_empty() {
            let mut table = self.shared.table.lock();
            for id in self.removed.drain(..) {
                table.services.remove(&id);
            }
            for id in self.dirty.drain() {
                if let Some(svc) = self.services.get(&id) {
                    table.services.insert(id, svc.info());
                }
            }
            drop(table);
            self.shared.changed.notify_all();
        }
        for event in self.outbox.drain(..) {
            self.shared.hub.emit(event);
        }
    }

    /// Whether what the pending request waits for has happened, for every target of the
    /// waves begun so far.
    fn pending_done(&self, pending: &Pending) -> bool {
        pending.targets.iter().all(|&(id, generation)| {
            let Some(svc) = self.services.get(&id) else {
                return !self.forgetting.contains(&id);
            };
            match pending.want {
                // The run it stopped is over: nothing runs, or a later call has already
                // started a newer run (a start or restart that overtook the stop); and no
                // daemon an earlier run left is still being ended.
                Want::Down => (svc.run.is_none() || svc.generation > generation) && !svc.sweeping(),
                Want::Gone => self.failed_deletes.contains_key(&id),
                // A new run was attempted (whatever became of it since), or nothing will
                // start: a racing stop won, or it waits for its dependencies.
                Want::Up => {
                    svc.generation > generation
                        || svc.waiting
                        || (svc.run.is_none() && svc.status != Status::Stopping)
                }
            }
        })
    }

    /// Begins the next wave of every staged stop or delete whose current wave is down (their
    /// dependencies), as many waves as are down already. Runs before the turn ends, so what
    /// a wave sends the log pump (a deleted service's logs to remove) wakes it in this turn.
    fn advance_waves(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].stages.is_empty() || !self.pending_done(&self.pending[i]) {
                i += 1;
                continue;
            }
            let wave = self.pending[i].stages.pop_front().expect("checked above");
            let then = self.pending[i].then;
            let wave: Vec<u64> = wave
                .into_iter()
                .filter(|id| self.services.contains_key(id))
                .collect();
            let targets = self.targets(&wave);
            self.pending[i].targets.extend(targets);
            self.begin_stops(&wave, then);
            // Check this pending again: the wave may be down already.
        }
    }

    /// Replies to every request whose last wave is done.
    fn settle_pending(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            if !self.pending[i].stages.is_empty() || !self.pending_done(&self.pending[i]) {
                i += 1;
                continue;
            }
            let pending = self.pending.swap_remove(i);
            match pending.reply {
                Reply::Count(reply, n) => {
                    let first_error = match pending.want {
                        Want::Up => pending.targets.iter().find_map(|(id, _)| {
                            let svc = self.services.get(id)?;
                            svc.spawn_error
                                .as_ref()
                                .filter(|(g, _)| {
                                    *g == svc.generation && svc.status == Status::Errored
                                })
                                .map(|(_, e)| clone_error(e))
                        }),
                        _ => None,
                    };
                    let failed_delete = match pending.want {
                        Want::Gone => pending
                            .targets
                            .iter()
                            .find_map(|(id, _)| self.failed_deletes.remove(id)),
                        _ => None,
                    };
                    let first_error = pending.error.or(failed_delete).or(first_error);
                    let _ = reply.send(first_error.map_or(Ok(n), Err));
                }
                Reply::Info(reply) => {
                    let (id, _) = pending.targets[0];
                    let result = match self.services.get(&id) {
                        None => Err(Error::new(
                            ErrorKind::NotFound,
                            "was deleted while starting",
                        )),
                        Some(svc) => match &svc.spawn_error {
                            Some((g, e))
                                if *g == svc.generation && svc.status == Status::Errored =>
                            {
                                Err(clone_error(e))
                            }
                            _ => Ok(svc.info()),
                        },
                    };
                    let _ = reply.send(result);
                }
                Reply::Nobody => {}
            }
        }
    }

    /// A sample in [0, 1) for backoff jitter (xorshift; quality is not a concern here).
    fn random_unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The fds a running service holds: its pidfd, its pipes' read ends, its two log files, and
/// a notify socket.
const FDS_PER_SERVICE: u64 = 6;
/// The fds held for a moment beyond those: a spawn's pipe write ends and cgroup directory, a
/// probe's, a read of /proc, SQLite's.
const FDS_SPARE: u64 = 8;

/// The fds in use once `n` more services run, with `open` open now (the host's and the
/// supervisor's own, and those of the services running): what fits the limit is allowed.
fn fd_budget(open: u64, n: usize) -> u64 {
    open + n as u64 * FDS_PER_SERVICE + FDS_SPARE
}

/// The processes among `procs` (other than this one) that are provably descendants of a
/// run of this session (see [`crate::marker`]), with the service id each belongs to.
fn marked_processes(
    procs: &[sys::ProcStat],
    run_key: &str,
    session: &Session,
) -> Vec<(u64, Marked)> {
    let me = std::process::id();
    procs
        .iter()
        .filter(|p| p.pid != me)
        .filter_map(|p| {
            let claimed = marker::claim(p, run_key, std::slice::from_ref(session))?;
            Some((
                claimed.owner.id,
                Marked {
                    pid: p.pid,
                    pgrp: p.pgrp,
                    start_time: p.start_time,
                    marker: claimed.marker,
                },
            ))
        })
        .collect()
}

/// A decision of the restart policy in words, and its delay if it restarts.
fn describe_decision(decision: &Decision, min_delay: Duration) -> (String, Option<Duration>) {
    match *decision {
        Decision::Restart { delay, attempt } => {
            let delay = delay.max(min_delay);
            (
                format!(
                    "restart in {} ({} restart in a row)",
                    crate::duration::format(delay),
                    crate::history::ordinal(attempt)
                ),
                Some(delay),
            )
        }
        Decision::Exited => (
            "not restarted: the policy does not restart this exit".to_string(),
            None,
        ),
        Decision::Errored { crashes, window } => (
            format!(
                "errored: crash loop, {crashes} crashes within {}",
                crate::duration::format(window)
            ),
            None,
        ),
    }
}

fn clone_error(e: &Error) -> Error {
    e.clone()
}

fn refuse(request: Request) {
    match request {
        Request::Start { reply, .. } => drop(reply.send(Err(Error::shut_down()))),
        Request::History { reply, .. } => drop(reply.send(Err(Error::shut_down()))),
        Request::Explain { reply, .. } => drop(reply.send(Err(Error::shut_down()))),
        Request::StartMany { items } => {
            for (_, reply) in items {
                let _ = reply.send(Err(Error::shut_down()));
            }
        }
        Request::Stop { reply, .. }
        | Request::Restart { reply, .. }
        | Request::Delete { reply, .. } => drop(reply.send(Err(Error::shut_down()))),
        Request::Shutdown { reply } => drop(reply.send(Ok(()))),
        Request::Drained { .. }
        | Request::LogsForgotten { .. }
        | Request::ReadyLine { .. }
        | Request::Probed { .. } => {}
    }
}
