//! The supervision thread: it owns every service's state, the store, and (through the
//! containment tier) every child.
//!
//! It blocks in exactly one place, the poller, which wakes on a child's exit (its pidfd), a
//! notify datagram, an API request, a report of the log pump or a probe worker (each wakes
//! the waker), or the nearest deadline. It never sleeps per service and never polls on a
//! fixed tick. Each turn of the loop:
//!
//! 1. reaps every main process that exited, then handles what follows each exit and what
//!    else is ready (datagrams), within a time budget, so that requests are served between
//!    spawns even under a storm of exits;
//! 2. handles the API's requests and the pump's and probes' reports;
//! 3. fires the due timers;
//! 4. starts what waited for its dependencies, and the next wave of staged stops;
//! 5. stores the turn's changes (one transaction), publishes the snapshot, sends the events,
//!    and replies to the requests that are done.
//!
//! Every run has a generation. A timer, a report or a pending reply names the generation it
//! was made for and is ignored if the service has moved on, so a stop, delete, restart or
//! start during a backoff can never bring back a stale run, and a service never has two
//! live runs.
//!
//! The state machine itself is in [`lifecycle`] and [`checks`], as functions of one service
//! and the [`io::Io`] it needs; this module routes events to them and does what needs every
//! service (dependencies, waves, the registry's batches).

mod checks;
mod define;
mod explain;
mod inbox;
pub(crate) mod io;
mod lifecycle;
mod pending;
mod roll;
mod service;
mod timers;
mod triggers;

#[cfg(test)]
mod tests;

pub(crate) use inbox::Request;

use crate::containment::{RunKey, Tier};
use crate::error::Result;
use crate::events::Event;
use crate::graph;
use crate::logs::{self, Pump};
use crate::probe;
use crate::snapshot;
pub(crate) use crate::snapshot::Shared;
use crate::state_dir::StateDir;
use crate::sys::{self, DirWatch, Poller, WAKER_TOKEN};
use crossbeam_channel::{Receiver, Sender};
use define::{Mode, Stored};
use io::{Io, Owner};
use lifecycle::Step;
use pending::{Pending, Reply, Want};
use service::{Service, State, Then};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timers::TimerKind;

/// The poll tokens of what the supervision thread watches besides runs, all here so that
/// none is given twice, below the waker's: the state directory's watch, the guardian's
/// pidfd, the triggers' wall-clock alarm and inotify instance, the orphan reaper's SIGCHLD
/// pipe. Those of runs count up from 1 (the containment tier's from 2^61 and 2^62).
const STATE_TOKEN: u64 = WAKER_TOKEN - 1;
const GUARDIAN_TOKEN: u64 = WAKER_TOKEN - 2;
const ALARM_TOKEN: u64 = WAKER_TOKEN - 3;
const INOTIFY_TOKEN: u64 = WAKER_TOKEN - 4;
const ORPHANS_TOKEN: u64 = WAKER_TOKEN - 5;
/// How long the lock file may be missing from a state directory that is still there before
/// it is made again: long enough for an `rm -rf` of the directory to finish first (making
/// the lock inside would leave it unable to remove the directory).
const RELOCK_SETTLE: Duration = Duration::from_millis(500);
/// The most ready fds (exits, notify sockets) one wait of the loop returns: as many exits as
/// a stop-all of a large fleet brings at once, each reaped in the turn (about 13 µs each).
pub(crate) const EVENTS_PER_TURN: usize = 1024;
/// How long one turn of the loop may spend on exits and due restarts, each of which may
/// spawn a process (about half a millisecond), before it serves the API: what is left stays
/// ready (the fds are level-triggered, the timers due) for the next turn. Under a storm of
/// exits a request waits for a few spawns, not for hundreds.
const TURN_BUDGET: Duration = Duration::from_millis(2);
/// How many services the bookkeeping of a stop of many goes through between two looks for
/// exits to reap ([`Engine::reap_ready`]).
const REAP_EVERY: usize = 64;

/// What the supervision thread is made of, handed over by `Supervisor::open`.
pub(crate) struct Config {
    /// The state directory, locked.
    pub(crate) state: StateDir,
    pub(crate) tier: Tier,
    /// The tier can enforce `max_pids`.
    pub(crate) limits_pids: bool,
    pub(crate) pump: Pump,
    pub(crate) probes: io::ProbePool,
    pub(crate) store: crate::store::Store,
    pub(crate) resurrect: bool,
    /// The open-file limit, for the fd budget check at `start`.
    pub(crate) fd_limit: u64,
    pub(crate) memory_sample: Duration,
    pub(crate) run_key: String,
    pub(crate) session: crate::containment::marker::Session,
    /// The guardian that cleans up if the host dies, when there is one.
    pub(crate) guardian: Option<crate::guardian::Watch>,
    /// Reaps the orphans re-parented to the host, when it is an init.
    pub(crate) reaper: Option<sys::OrphanReaper>,
}

/// Where the supervision thread hears from: the API, the log pump, the probe workers.
pub(crate) struct Inbox {
    pub(crate) requests: Receiver<Request>,
    pub(crate) logs: Receiver<logs::Report>,
    pub(crate) probes: Receiver<probe::Report>,
}

pub(crate) struct Engine {
    services: BTreeMap<u64, Service>,
    io: Io,
    poller: Poller,
    inbox: Inbox,
    shared: Arc<Shared>,
    pending: Vec<Pending>,
    /// Rolling reloads under way.
    rolls: Vec<roll::Roll>,
    shutdown: Option<Sender<Result<()>>>,
    /// Deleted services whose logs the pump has not yet removed.
    forgetting: HashSet<u64>,
    fd_limit: u64,
    /// `max_pids` can be enforced.
    limits_pids: bool,
    /// `init` starts every service whose desired state is up.
    resurrect: bool,
    /// The state directory: held (its lock with it) while the engine runs.
    state: StateDir,
    /// Fires when the state directory, the registry or the lock file goes away.
    state_watch: Option<DirWatch>,
    /// Changes can no longer be stored, and that was reported.
    state_lost: bool,
    /// A `Relock` timer is pending.
    relock_due: bool,
    /// The guardian, watched through its pidfd: replaced if it dies while the host lives,
    /// stood down at shutdown.
    guardian: Option<crate::guardian::Watch>,
    reaper: Option<sys::OrphanReaper>,
    /// While a `start_many`, a start of a target or the resurrection at `open` runs: the
    /// operator's starts it gathers, spawned together at its end (see
    /// [`Engine::spawn_batch`]).
    batch: Option<Batch>,
    /// Runs reaped and not yet followed up (see [`Engine::turn`]), oldest first.
    exits: VecDeque<RunKey>,
    /// [`TURN_BUDGET`], but for tests.
    turn_budget: Duration,
    /// A look for exits in the middle of a turn ([`Engine::reap_ready`]) took the waker's
    /// wake-up: the next wait does not block, as what woke it may not be read yet.
    woken: bool,
}

/// The services a batch of starts will spawn, in the order their starts came.
#[derive(Default)]
struct Batch {
    order: Vec<u64>,
    ids: HashSet<u64>,
}

impl Engine {
    /// The engine `config` describes, waiting on `poller` for what `inbox` brings.
    pub(crate) fn new(config: Config, poller: Poller, inbox: Inbox, shared: Arc<Shared>) -> Engine {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id()).rotate_left(32);
        let identity = io::Identity {
            run_key: config.run_key,
            session: config.session,
            uid: sys::real_uid(),
            boot_id: sys::boot_id(),
        };
        let io = Io::new(
            Box::new(config.tier),
            Box::new(config.pump),
            Box::new(config.probes),
            config.store,
            poller.registry(),
            identity,
            config.memory_sample,
            seed,
        );
        let mut engine = Engine::assemble(io, poller, inbox, shared, config.state);
        engine.fd_limit = config.fd_limit;
        engine.limits_pids = config.limits_pids;
        engine.resurrect = config.resurrect;
        engine.guardian = config.guardian;
        engine.reaper = config.reaper;
        engine
    }

    /// An engine of `io`, with no fd limit, no `max_pids`, no resurrection and no guardian
    /// until told otherwise.
    fn assemble(
        io: Io,
        poller: Poller,
        inbox: Inbox,
        shared: Arc<Shared>,
        state: StateDir,
    ) -> Engine {
        Engine {
            services: BTreeMap::new(),
            io,
            poller,
            inbox,
            shared,
            pending: Vec::new(),
            rolls: Vec::new(),
            shutdown: None,
            forgetting: HashSet::new(),
            fd_limit: u64::MAX,
            limits_pids: false,
            resurrect: false,
            state,
            state_watch: None,
            state_lost: false,
            relock_due: false,
            guardian: None,
            reaper: None,
            batch: None,
            exits: VecDeque::new(),
            turn_budget: TURN_BUDGET,
            woken: false,
        }
    }

    /// Loads the registry, kills what a dead previous host left running, and starts every
    /// service whose desired state is up (if `resurrect`). Runs on the supervision thread.
    pub(crate) fn init(&mut self) -> Result<()> {
        let resurrect = self.resurrect;
        self.watch_guardian();
        self.watch_state_dir();
        self.watch_orphans();
        let reclaimed = self.io.procs.reclaim(&mut self.io.store)?;
        let s = &self.io.identity.session;
        let session =
            self.io
                .store
                .insert_session(&s.boot_id, s.started_ticks, &s.key, s.cgroup)?;
        self.io.identity.session.id = session;
        self.io.procs.session_stored(session);
        for stored in self.io.store.load_services()? {
            // What ran when the last host stopped runs no more.
            let state = match stored.status {
                crate::info::Status::Exited => State::Exited,
                crate::info::Status::Errored => State::Errored(None),
                _ => State::Stopped,
            };
            let id = stored.id;
            let mut svc = Service::new(
                id,
                stored.instance,
                Arc::new(stored.spec),
                stored.desired_up,
                state,
            );
            svc.restarts = stored.restarts;
            svc.last_exit = stored.last_exit;
            if svc.status() != stored.status {
                self.io.changes.save(id);
            }
            self.io.changes.touch(id);
            self.services.insert(id, svc);
        }
        {
            let mut list = self.shared.reclaimed.lock();
            let mut events = Vec::new();
            for (id, pids) in reclaimed {
                let name = self
                    .services
                    .get(&id)
                    .map_or_else(|| format!("#{id}"), |s| s.name.to_string());
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
        if let Some(dir) = self.state.db_path().parent() {
            self.io.triggers.exclude(dir);
        }
        if resurrect {
            let up: Vec<u64> = self
                .services
                .values()
                .filter(|s| s.desired_up)
                .map(|s| s.id)
                .collect();
            let now = Instant::now();
            let ticks = triggers::stored_ticks(&mut self.io);
            self.batched(now, |engine| {
                for id in up {
                    let svc = engine.services.get_mut(&id).expect("listed above");
                    triggers::arm(svc, &mut engine.io, Some(ticks.get(&id).copied()));
                    engine.start_service(id, now);
                }
            });
        }
        self.end_turn(Instant::now());
        self.publish();
        Ok(())
    }

    /// The loop: wait, then handle what is ready, the inbox and the due timers; store,
    /// publish, reply. Ends once a shutdown has stopped every service.
    pub(crate) fn run(&mut self) -> Option<Sender<Result<()>>> {
        let mut ready = Vec::new();
        loop {
            let timeout = if self.exits.is_empty() && !std::mem::take(&mut self.woken) {
                self.io
                    .timers
                    .next()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            ready.clear();
            if let Err(e) = self.poller.wait(timeout, &mut ready) {
                log::error!("supervision wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.turn(&ready, Instant::now());
            if self.shutdown.is_some()
                && self.pending.is_empty()
                && self.rolls.is_empty()
                && self.services.values().all(|s| s.run().is_none())
            {
                break;
            }
        }
        self.shutdown.take()
    }

    /// One turn of the loop, after the wait returned `ready` at `now`.
    ///
    /// Exits first: every main process that exited is reaped before anything else is done
    /// (a process is gone only once reaped, and a reap costs a few microseconds), then what
    /// follows each reap, oldest first, within the turn's budget. What is left waits in
    /// `exits`, and the next wait does not block.
    fn turn(&mut self, ready: &[u64], now: Instant) {
        let budget = Instant::now() + self.turn_budget;
        self.reap_exits(ready, now);
        let mut done = 0;
        while done == 0 || Instant::now() < budget {
            let Some(run) = self.exits.pop_front() else {
                break;
            };
            self.with_service(run.id, now, |svc, io| {
                lifecycle::after_reap(svc, io, run, now)
            });
            done += 1;
        }
        for (i, &token) in ready.iter().enumerate() {
            if i > 0 && Instant::now() >= budget {
                break; // still ready: reported again by the next wait
            }
            self.on_ready(token, now);
        }
        self.read_inbox(now);
        self.fire_timers(budget, now);
        self.fire_ticks(now);
        self.start_waiting(now);
        self.advance_rolls(now);
        self.advance_waves(now);
        self.end_turn(now);
        self.publish();
        self.settle_pending();
        self.settle_rolls();
        self.shared.replied.ring();
    }

    /// After [`run`](Engine::run): drains the last output into the runs' records, refuses
    /// what arrived meanwhile, marks the snapshot shut down, removes the supervisor's
    /// cgroups, stands the guardian down.
    pub(crate) fn finish(mut self) {
        // The last output: the pump drains what is left (within its deadline), removes the
        // directories of the last runs, and stops.
        self.io.remove_held_dirs();
        self.io.outputs.shutdown();
        // What it reported meanwhile: the last runs' output goes into their records.
        let now = Instant::now();
        while let Ok(report) = self.inbox.logs.try_recv() {
            if let logs::Report::Drained {
                id,
                generation,
                tail,
            } = report
            {
                let _ = lifecycle::on_drained(
                    self.services.get_mut(&id),
                    &mut self.io,
                    RunKey { id, generation },
                    tail,
                    now,
                );
            }
        }
        self.write_states();
        self.io.store.flush();
        self.publish();
        self.shared.table.lock().shut_down = true;
        self.shared.changed.notify_all();
        self.shared.hub.close();
        while let Ok(request) = self.inbox.requests.try_recv() {
            request.refuse();
        }
        // What escaped and is still dying is reaped; the (empty) cgroups go; then the
        // guardian: it has nothing left to clean up.
        self.io.procs.finish();
        self.reap_orphans();
        if let Some(guardian) = self.guardian.as_mut() {
            guardian.stand_down();
        }
    }

    /// Routes a ready poll token.
    fn on_ready(&mut self, token: u64, now: Instant) {
        match token {
            WAKER_TOKEN => {}
            STATE_TOKEN => self.on_state_dir_event(),
            GUARDIAN_TOKEN => self.on_guardian_exit(),
            ORPHANS_TOKEN => self.reap_orphans(),
            ALARM_TOKEN => self.on_alarm(),
            INOTIFY_TOKEN => self.on_fs_events(now),
            _ => match self.io.tokens.get(&token).copied() {
                // Reaped at the start of the turn.
                Some(Owner::Leader(_)) => {}
                Some(Owner::Notify(id)) => {
                    if let Some(svc) = self.services.get_mut(&id) {
                        checks::on_notify(svc, &mut self.io, now);
                    }
                }
                None => {
                    if let Some(run) = self.io.procs.on_ready(token) {
                        self.with_service(run.id, now, |svc, io| {
                            lifecycle::on_tracked_exit(svc, io, now)
                        });
                    }
                }
            },
        }
    }

    /// Registers the orphan reaper's SIGCHLD pipe, and reaps what exited before it was set.
    fn watch_orphans(&mut self) {
        let Some(fd) = self.reaper.as_ref().and_then(|r| r.fd()) else {
            return;
        };
        if let Err(e) = self.poller.add(&fd, ORPHANS_TOKEN) {
            log::warn!("cannot watch for orphans: {e}");
        }
        self.reap_orphans();
    }

    /// Reaps the orphans that exited (an init's duty; see [`crate::Orphans`]).
    fn reap_orphans(&mut self) {
        if let Some(reaper) = &self.reaper {
            let n = reaper.reap();
            self.shared
                .orphans_reaped
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Reaps the main processes that exited, in the middle of a long turn: a stop of a
    /// thousand services keeps the thread busy while the first of them are already dead, and
    /// a process is gone only once reaped. What follows each reap waits in `exits`; the rest
    /// of what the wait found (every fd is level-triggered) is reported again by the next.
    fn reap_ready(&mut self, now: Instant) {
        let mut ready = Vec::new();
        if let Err(e) = self.poller.wait(Some(Duration::ZERO), &mut ready) {
            log::warn!("supervision wait failed: {e}");
        }
        self.woken |= ready.contains(&WAKER_TOKEN);
        self.reap_exits(&ready, now);
    }

    /// Reaps the main processes whose pidfds are among the ready `tokens`; what follows each
    /// reap waits in `exits`.
    fn reap_exits(&mut self, tokens: &[u64], now: Instant) {
        for &token in tokens {
            if let Some(Owner::Leader(id)) = self.io.tokens.get(&token).copied()
                && let Some(svc) = self.services.get_mut(&id)
                && lifecycle::reap(svc, &mut self.io, now)
            {
                self.exits.push_back(svc.key());
            }
        }
    }

    /// Runs a lifecycle step on service `id` (if it still exists) and follows up on what it
    /// hands back.
    fn with_service(
        &mut self,
        id: u64,
        now: Instant,
        f: impl FnOnce(&mut Service, &mut Io) -> Step,
    ) {
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        let step = f(svc, &mut self.io);
        self.follow(id, step, now);
    }

    /// What the lifecycle could not do alone: an operator's start (dependencies first), or
    /// the removal of a deleted service.
    fn follow(&mut self, id: u64, step: Step, now: Instant) {
        match step {
            Step::Done => {}
            Step::Start => self.start_service(id, now),
            Step::Delete => self.delete_now(id),
        }
    }

    /// An operator's start: spawned if its dependencies are met, else `Waiting` for them. A
    /// spawn that fails leaves it `Errored` (the pending reply carries the error).
    fn start_service(&mut self, id: u64, now: Instant) {
        let Some(svc) = self.services.get(&id) else {
            return;
        };
        if self.batch.as_ref().is_some_and(|b| b.ids.contains(&id)) {
            return;
        }
        if !svc.spec.get_after().is_empty() {
            // Its dependencies are judged with the batch's services spawned, as they would
            // be one by one.
            self.spawn_batch(now);
        }
        let Some(svc) = self.services.get(&id) else {
            return;
        };
        if !explain::dependencies_met(svc, &self.services) {
            let svc = self.services.get_mut(&id).expect("present above");
            if !matches!(svc.state, State::Waiting) {
                svc.state = State::Waiting;
                self.io.changes.save(id);
            }
            return;
        }
        let svc = self.services.get_mut(&id).expect("present above");
        if triggers::holds_back(svc, &mut self.io) {
            return;
        }
        if let Some(batch) = &mut self.batch {
            batch.order.push(id);
            batch.ids.insert(id);
            return;
        }
        if let Err(e) = lifecycle::spawn(svc, &mut self.io, false, now) {
            log::warn!("{e}");
        }
    }

    /// Runs `f` with a batch of starts open (unless one is already): the operator's starts
    /// it makes are spawned together when it returns.
    fn batched(&mut self, now: Instant, f: impl FnOnce(&mut Engine)) {
        if self.batch.is_some() {
            return f(self);
        }
        self.batch = Some(Batch::default());
        f(self);
        self.spawn_batch(now);
        self.batch = None;
    }

    /// Spawns the starts the open batch gathered, all at once (the tier spreads them over
    /// its spawning threads), and leaves the batch open and empty. Each service ends as
    /// [`lifecycle::spawn`] would have left it, in the order its start came.
    fn spawn_batch(&mut self, now: Instant) {
        let Some(batch) = self.batch.as_mut().map(std::mem::take) else {
            return;
        };
        if batch.order.is_empty() {
            return;
        }
        // The first plans are spawned while the next are prepared.
        self.io.procs.begin_batch(batch.order.len());
        let mut prepared = Vec::with_capacity(batch.order.len());
        for id in batch.order {
            let Some(svc) = self.services.get_mut(&id) else {
                continue;
            };
            match lifecycle::prepare(svc, &mut self.io, false, now) {
                Ok((plan, rest)) => {
                    self.io.procs.push(plan);
                    prepared.push((id, rest));
                }
                Err(e) => log::warn!("{e}"),
            }
        }
        let spawned = self.io.procs.finish_batch();
        for ((id, rest), spawned) in prepared.into_iter().zip(spawned) {
            let svc = self
                .services
                .get_mut(&id)
                .expect("nothing removes a service between its prepare and its spawn");
            if let Err(e) = lifecycle::started(svc, &mut self.io, false, rest, spawned, now) {
                log::warn!("{e}");
            }
        }
    }

    /// Starts the services that wait for dependencies now met.
    fn start_waiting(&mut self, now: Instant) {
        let ready: Vec<u64> = self
            .services
            .values()
            .filter(|s| matches!(s.state, State::Waiting) && s.desired_up)
            .filter(|s| explain::dependencies_met(s, &self.services))
            .map(|s| s.id)
            .collect();
        for id in ready {
            self.start_service(id, now);
        }
    }

    /// Removes a deleted service from memory once its stop is over (its row went when the
    /// delete was asked for); the pump removes its logs.
    fn delete_now(&mut self, id: u64) {
        let Some(svc) = self.services.remove(&id) else {
            return;
        };
        self.io.procs.forget(id);
        self.io.outputs.forget(id, svc.name.clone());
        self.forgetting.insert(id);
        self.io.changes.dirty.remove(&id);
        self.io.changes.unsaved.remove(&id);
        self.io.changes.removed.push(id);
        self.io.changes.emit(Event::Deleted {
            name: svc.name.to_string(),
        });
    }

    /// Reads everything that came since the last turn: the API's requests, the pump's and
    /// the probes' reports.
    fn read_inbox(&mut self, now: Instant) {
        while let Ok(report) = self.inbox.logs.try_recv() {
            match report {
                logs::Report::Drained {
                    id,
                    generation,
                    tail,
                } => {
                    let step = lifecycle::on_drained(
                        self.services.get_mut(&id),
                        &mut self.io,
                        RunKey { id, generation },
                        tail,
                        now,
                    );
                    self.follow(id, step, now);
                }
                logs::Report::Forgotten { id } => {
                    self.forgetting.remove(&id);
                }
                logs::Report::ReadyLine { id, generation } => {
                    if let Some(svc) = self.services.get_mut(&id) {
                        checks::on_ready_line(svc, &mut self.io, generation, now);
                    }
                }
                logs::Report::OutputMatched {
                    id,
                    generation,
                    pattern,
                    line,
                } => self.with_service(id, now, |svc, io| {
                    triggers::on_output_matched(svc, io, generation, pattern, &line, now)
                }),
            }
        }
        while let Ok(report) = self.inbox.probes.try_recv() {
            let id = report.id;
            self.with_service(id, now, |svc, io| checks::on_probed(svc, io, report, now));
        }
        while let Ok(request) = self.inbox.requests.try_recv() {
            if self.shutdown.is_some() {
                request.refuse();
            } else {
                self.handle(request, now);
            }
        }
    }

    fn handle(&mut self, request: Request, now: Instant) {
        match request {
            Request::Start { spec, reply } => {
                self.start_many(vec![(*spec, reply)], Mode::Start, now)
            }
            Request::StartMany { items } => self.start_many(items, Mode::Start, now),
            Request::Define { spec, reply } => {
                self.start_many(vec![(*spec, reply)], Mode::Define, now)
            }
            Request::StartTarget { target, reply } => match self.resolve(&target) {
                Ok(ids) => self.start_target(ids, reply, now),
                Err(e) => drop(reply.send(Err(e))),
            },
            Request::Scale {
                name,
                instances,
                reply,
            } => self.scale(&name, instances, reply, now),
            Request::Reload { target, reply } => match self.resolve(&target) {
                Ok(ids) => self.reload(ids, reply, now),
                Err(e) => drop(reply.send(Err(e))),
            },
            Request::History {
                target,
                limit,
                reply,
            } => {
                let result = self
                    .resolve_one(&target, "history")
                    .and_then(|id| self.io.store.runs(id, limit));
                let _ = reply.send(result);
            }
            Request::Explain { target, reply } => {
                let result = self.resolve_one(&target, "explain").map(|id| {
                    let svc = &self.services[&id];
                    let mut e = explain::explain(svc, &self.services, now);
                    for line in triggers::explain(svc, now) {
                        e.text += &format!("; {line}");
                    }
                    e
                });
                let _ = reply.send(result);
            }
            Request::Stop { target, reply } => match self.resolve(&target) {
                Ok(ids) => {
                    let mut stages: VecDeque<Vec<u64>> = self.stop_waves(&ids).into();
                    let first = stages.pop_front().unwrap_or_default();
                    let n = ids.len();
                    match self.stop_desired(&ids, &first) {
                        Stored::Refused(e) => drop(reply.send(Err(e))),
                        Stored::Done(signalled) => {
                            self.disarm_triggers(&ids);
                            let targets = self.targets(&first);
                            self.begin_stops_signalled(&first, &signalled, Then::Settle, now);
                            self.pending.push(Pending {
                                targets,
                                want: Want::Down,
                                reply: Reply::Count(reply, n),
                                stages,
                                then: Then::Settle,
                            });
                        }
                        Stored::Lost(e, signalled) => {
                            // The disk still wants them up: what was signalled is started
                            // again once stopped, so that what the supervisor shows is what
                            // the next `open` restores. The rest is left alone.
                            let _ = reply.send(Err(e));
                            let ids: Vec<u64> = first
                                .into_iter()
                                .filter(|id| signalled.contains(id))
                                .collect();
                            self.begin_stops_signalled(&ids, &signalled, Then::Start, now);
                        }
                    }
                }
                Err(e) => drop(reply.send(Err(e))),
            },
            Request::Restart { target, reply } => match self.resolve(&target) {
                Ok(ids) => {
                    let ids = self.with_restart_with(ids);
                    if let Err(e) = self.set_desired_many(&ids, true) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    let targets = self.targets(&ids);
                    for &id in &ids {
                        // A manual restart is not a crash: the backoff starts afresh.
                        self.with_service(id, now, |svc, io| {
                            svc.history = Default::default();
                            triggers::arm(svc, io, None);
                            triggers::restart_asked(svc);
                            lifecycle::begin_stop(svc, io, Then::Start, false, now)
                        });
                    }
                    self.pending.push(Pending {
                        targets,
                        want: Want::Up,
                        reply: Reply::Count(reply, ids.len()),
                        stages: VecDeque::new(),
                        then: Then::Start,
                    });
                }
                Err(e) => drop(reply.send(Err(e))),
            },
            Request::Delete { target, reply } => match self.resolve(&target) {
                Ok(ids) => {
                    if let Err(e) = self.check_deletable(&ids) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    // Removed on disk first, all at once: if that fails, nothing is done.
                    if let Err(e) = self.delete_rows(&ids) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    self.disarm_triggers(&ids);
                    let n = ids.len();
                    let reply = Reply::Count(reply, n);
                    self.begin_staged(ids, Then::Delete, Want::Gone, reply, now);
                }
                Err(e) => drop(reply.send(Err(e))),
            },
            Request::Ping { reply } => drop(reply.send(Ok(()))),
            Request::Shutdown { reply, by } => {
                self.shutdown = Some(reply);
                self.io.stop_by = by;
                let ids: Vec<u64> = self.services.keys().copied().collect();
                // No tick or change starts anything while the waves stop the fleet; the
                // next `open` arms the triggers again.
                self.disarm_triggers(&ids);
                self.begin_staged(ids, Then::Settle, Want::Down, Reply::Nobody, now);
            }
        }
    }

    /// The services a target (a name, an id, the name of a spec with instances, `all`)
    /// names.
    fn resolve(&self, target: &str) -> Result<Vec<u64>> {
        snapshot::resolve(
            target,
            self.services
                .iter()
                .map(|(id, s)| (*id, &*s.name, s.spec.name())),
        )
    }

    /// One service by name or id (not `all`, not a spec with several instances).
    fn resolve_one(&self, target: &str, what: &str) -> Result<u64> {
        snapshot::resolve_one(
            target,
            what,
            self.services
                .iter()
                .map(|(id, s)| (*id, &*s.name, s.spec.name())),
        )
    }

    /// (id, generation) of each of `ids`, for a pending reply to wait on.
    fn targets(&self, ids: &[u64]) -> Vec<(u64, u64)> {
        ids.iter()
            .filter_map(|id| Some((*id, self.services.get(id)?.generation)))
            .collect()
    }

    /// Stops (or deletes) `ids` in dependency order: dependents first, each wave once the
    /// one before is down, in parallel within a wave.
    fn begin_staged(&mut self, ids: Vec<u64>, then: Then, want: Want, reply: Reply, now: Instant) {
        let mut stages: VecDeque<Vec<u64>> = self.stop_waves(&ids).into();
        let first = stages.pop_front().unwrap_or_default();
        let targets = self.targets(&first);
        self.begin_stops(&first, then, now);
        self.pending.push(Pending {
            targets,
            want,
            reply,
            stages,
            then,
        });
    }

    /// Begins stopping several services: every stop signal goes out first, then the
    /// bookkeeping of each stop, so that a thousand services are all ending while the
    /// supervisor records it.
    fn begin_stops(&mut self, ids: &[u64], then: Then, now: Instant) {
        let signalled = self.signal_groups(ids);
        self.begin_stops_signalled(ids, &signalled, then, now);
    }

    /// The first pass of a stop of several services: the stop signal to each live run's
    /// group. Returns the services signalled (none for a stop of one: it signals in
    /// `begin_stop`).
    pub(super) fn signal_groups(&mut self, ids: &[u64]) -> HashSet<u64> {
        let mut signalled = HashSet::new();
        if ids.len() > 1 {
            for id in ids {
                if let Some(svc) = self.services.get(id)
                    && lifecycle::signal_group_first(svc, &mut *self.io.procs)
                {
                    signalled.insert(*id);
                }
            }
        }
        signalled
    }

    /// The bookkeeping of each stop of `ids`, whose groups in `signalled` have the stop
    /// signal already. The first of them die meanwhile: their exits are reaped as it goes.
    fn begin_stops_signalled(
        &mut self,
        ids: &[u64],
        signalled: &HashSet<u64>,
        then: Then,
        now: Instant,
    ) {
        for (i, &id) in ids.iter().enumerate() {
            if !signalled.is_empty() && i % REAP_EVERY == 0 {
                self.reap_ready(now);
            }
            let group_signalled = signalled.contains(&id);
            self.with_service(id, now, |svc, io| {
                lifecycle::begin_stop(svc, io, then, group_signalled, now)
            });
        }
    }

    /// The name of the spec of the service called `name` (an instance's), or `name`: what a
    /// dependency on `name` is in the graph.
    fn definition_of<'a>(&'a self, name: &'a str) -> &'a str {
        self.services
            .values()
            .find(|s| &*s.name == name)
            .map_or(name, |s| s.spec.name())
    }

    /// The services' dependency graph, by the names of their specs (the instances of a
    /// spec are one node).
    fn graph_nodes(&self) -> Vec<graph::Node<'_>> {
        let mut seen = HashSet::new();
        self.services
            .values()
            .filter(|s| seen.insert(s.spec.name()))
            .map(|s| graph::Node {
                name: s.spec.name(),
                deps: s
                    .spec
                    .get_after()
                    .iter()
                    .map(|d| self.definition_of(&d.name))
                    .collect(),
            })
            .collect()
    }

    fn stop_waves(&self, ids: &[u64]) -> Vec<Vec<u64>> {
        // Without dependencies anywhere, one wave: no graph to build (a stop-all of 1000).
        if self
            .services
            .values()
            .all(|s| s.spec.get_after().is_empty())
        {
            return vec![ids.to_vec()];
        }
        let nodes = self.graph_nodes();
        let targets: BTreeSet<&str> = ids
            .iter()
            .filter_map(|id| self.services.get(id))
            .map(|s| s.spec.name())
            .collect();
        let mut by_name: HashMap<&str, Vec<u64>> = HashMap::new();
        for id in ids {
            if let Some(s) = self.services.get(id) {
                by_name.entry(s.spec.name()).or_default().push(*id);
            }
        }
        graph::waves(&nodes, &targets, true)
            .into_iter()
            .map(|wave| {
                wave.iter()
                    .filter_map(|n| by_name.get(n.as_str()))
                    .flatten()
                    .copied()
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

    /// Acts on the timers that are due; once the turn's `budget` is spent, on no more
    /// restarts: the rest stay due, and the next turn's wait returns at once for them.
    fn fire_timers(&mut self, budget: Instant, now: Instant) {
        let mut restarted = false;
        while let Some(timer) = self.io.timers.peek_due(now) {
            if timer.kind == TimerKind::Restart {
                if restarted && Instant::now() >= budget {
                    break;
                }
                restarted = true;
            }
            self.io.timers.pop();
            match timer.kind {
                TimerKind::Relock => {
                    self.relock();
                    continue;
                }
                TimerKind::MemorySample => {
                    self.sample_memory(now);
                    continue;
                }
                // Only a wake-up: the rolls look at their deadlines each turn.
                TimerKind::Roll => continue,
                TimerKind::Deferred => {
                    lifecycle::on_deferred_timer(&mut self.io, now);
                    continue;
                }
                TimerKind::WatchSettle => {
                    self.with_service(timer.id, now, |svc, io| {
                        triggers::on_watch_settle(svc, io, timer.at, now)
                    });
                    continue;
                }
                _ => {}
            }
            let Some(svc) = self.services.get_mut(&timer.id) else {
                continue;
            };
            if svc.generation != timer.generation {
                continue;
            }
            let io = &mut self.io;
            let step = match timer.kind {
                TimerKind::Restart => {
                    lifecycle::on_backoff_over(svc, io, timer.at, now);
                    Step::Done
                }
                TimerKind::StopDeadline => {
                    lifecycle::on_stop_deadline(svc, io, timer.at, now);
                    Step::Done
                }
                TimerKind::GroupCheck => lifecycle::on_group_check(svc, io, now),
                TimerKind::GiveUp => lifecycle::on_give_up(svc, io, now),
                TimerKind::SweepDeadline => {
                    lifecycle::on_sweep_deadline(svc, io, timer.at, now);
                    Step::Done
                }
                TimerKind::SweepGiveUp => lifecycle::check_sweep(svc, io, true),
                TimerKind::ReadyAfter
                | TimerKind::ReadyTimeout
                | TimerKind::ReadyProbe
                | TimerKind::HealthProbe => checks::on_timer(svc, io, timer.kind, now),
                TimerKind::Silence => triggers::on_silence_check(svc, io, now),
                TimerKind::MemorySample
                | TimerKind::Relock
                | TimerKind::Roll
                | TimerKind::Deferred
                | TimerKind::WatchSettle => {
                    unreachable!("handled above")
                }
            };
            self.follow(timer.id, step, now);
        }
    }

    /// Measures the services with a memory limit and ends those over it for two samples;
    /// reschedules itself only while a limited service runs.
    fn sample_memory(&mut self, now: Instant) {
        let (over, any) = checks::over_memory(self.services.values_mut(), &mut self.io);
        for (key, reason) in over {
            self.with_service(key.id, now, |svc, io| {
                lifecycle::fail_run(svc, io, crate::history::Cause::MemoryLimit, reason, now)
            });
        }
        self.io.memory_sampling = any;
        if any {
            let at = crate::duration::deadline(now, self.io.memory_sample);
            self.io.timers.push(at, 0, 0, TimerKind::MemorySample);
        }
    }

    /// What every loop turn ends with, before it publishes or replies: the statuses and run
    /// records of the turn committed, and the log pump woken for what was sent to it.
    fn end_turn(&mut self, now: Instant) {
        self.write_states();
        self.io.end_turn(now);
    }

    /// Stores the statuses changed in this loop turn.
    fn write_states(&mut self) {
        for id in std::mem::take(&mut self.io.changes.unsaved) {
            let Some(svc) = self.services.get(&id) else {
                continue; // deleted meanwhile
            };
            self.io
                .store
                .set_state(id, svc.status(), svc.restarts, svc.last_exit.as_ref());
        }
    }

    /// Copies changed services into the shared snapshot, wakes waiters, then sends the
    /// events that led there (so a subscriber that sees an event also sees its state).
    fn publish(&mut self) {
        let changes = &mut self.io.changes;
        if !changes.dirty.is_empty() || !changes.removed.is_empty() {
            let mut table = self.shared.table.lock();
            for id in changes.removed.drain(..) {
                table.services.remove(&id);
            }
            for id in changes.dirty.drain() {
                if let Some(svc) = self.services.get(&id) {
                    table.services.insert(id, svc.info());
                }
            }
            drop(table);
            self.shared.changed.notify_all();
        }
        for event in changes.events.drain(..) {
            self.shared.hub.emit(event);
        }
    }

    /// Begins the next wave of every staged stop or delete whose current wave is down (their
    /// dependencies), as many waves as are down already. Runs before the turn ends, so what
    /// a wave sends the log pump (a deleted service's logs to remove) wakes it in this turn.
    fn advance_waves(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            if p.stages.is_empty() || !p.done(&self.services, &self.forgetting) {
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
            self.begin_stops(&wave, then, now);
            // Check this pending again: the wave may be down already.
        }
    }

    /// Replies to every request whose last wave is done.
    fn settle_pending(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            if !p.stages.is_empty() || !p.done(&self.services, &self.forgetting) {
                i += 1;
                continue;
            }
            self.pending.swap_remove(i).reply(&self.services);
        }
    }

    fn watch_guardian(&mut self) {
        if let Some(fd) = self.guardian.as_ref().and_then(|g| g.pidfd())
            && let Err(e) = self.poller.add(fd, GUARDIAN_TOKEN)
        {
            log::error!("cannot watch the guardian: {e}");
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
        if self.io.store.check().is_err() {
            self.after_state_loss();
        }
    }

    /// A change could not be stored: logged, and if it is because the state directory went
    /// away, reported as such.
    pub(super) fn store_failed(&mut self, e: &crate::Error) {
        log::error!("{e}");
        self.after_state_loss();
    }

    /// Once changes can no longer be stored: says so, once (log and event), and makes sure
    /// this supervisor still holds the lock of the state directory's path, so that no
    /// second supervisor opens it while this one runs.
    fn after_state_loss(&mut self) {
        let Some(e) = self.io.store.lost() else {
            return;
        };
        if !self.state_lost {
            self.state_lost = true;
            log::error!("{e}");
            let error = e.to_string();
            self.io.changes.emit(Event::StateDirLost { error });
        }
        if self.state.dir_gone() {
            self.relock();
        } else if !self.relock_due {
            self.relock_due = true;
            let at = Instant::now() + RELOCK_SETTLE;
            self.io.timers.push(at, 0, 0, TimerKind::Relock);
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
}
