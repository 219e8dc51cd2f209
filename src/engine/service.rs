//! A service and its run, as the supervision thread holds them: what state each is in is an
//! enum, and what the API sees (`Status`, `ServiceInfo`) is derived from it.

use crate::child::Launch;
use crate::containment::RunKey;
use crate::error::Error;
use crate::history::Cause;
use crate::info::{Exit, ServiceInfo, Status};
use crate::logs::RunTail;
use crate::policy::{Decision, History, Outcome};
use crate::probe;
use crate::spec::ServiceSpec;
use crate::sys::{NotifySocket, Rusage};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

pub(super) struct Service {
    pub(super) id: u64,
    /// Its name: the spec's, or `<spec's name>.<instance>` for an instance.
    pub(super) name: Arc<str>,
    /// Its index among the instances of its spec, if the spec has instances.
    pub(super) instance: Option<u32>,
    /// The spec it runs: its definition's, as it stood when this service last took it (a
    /// rolling reload changes the instances of one definition one at a time).
    pub(super) spec: Arc<ServiceSpec>,
    pub(super) desired_up: bool,
    /// Counts the runs begun (and each settling of a stop): a timer, a report or a pending
    /// reply names the generation it was made for.
    pub(super) generation: u64,
    pub(super) state: State,
    /// The restart policy's memory of recent crashes.
    pub(super) history: History,
    /// Automatic restarts so far.
    pub(super) restarts: u64,
    pub(super) last_exit: Option<Exit>,
    /// Bytes of output dropped because the log could not be written.
    pub(super) log_dropped: Arc<AtomicU64>,
    /// `NOTIFY_SOCKET` datagrams refused: not from a process of the run.
    pub(super) notify_rejected: u64,
    /// The argv and environment an operator's start made, reused by the policy's restarts.
    pub(super) launch: Option<Arc<Launch>>,
    /// Its schedule, watch and watchdog, as armed.
    pub(super) triggers: super::triggers::Armed,
}

/// Where a service is in its life.
pub(super) enum State {
    /// Stopped by the operator (or never started since `open`).
    Stopped,
    /// Ended by itself, and its policy does not restart that.
    Exited,
    /// Given up on: a crash loop, or a start by hand that could not spawn (its error, for the
    /// caller waiting on that start).
    Errored(Option<Error>),
    /// Started by the operator; waits for its dependencies.
    Waiting,
    /// Waiting out its backoff; restarted at `at`.
    Backoff { at: Instant },
    /// A run exists: alive, stopping, or finishing.
    Running(Box<Run>),
    /// No run, but a stop is ending what earlier runs left (process-group tier).
    Sweeping(Sweep),
    /// A scheduled job between runs, waiting for its next tick.
    Scheduled,
}

/// One run of a service.
pub(super) struct Run {
    pub(super) pid: u32,
    /// The poll token of its main process's pidfd.
    pub(super) token: u64,
    /// Its record in the store.
    pub(super) record: i64,
    pub(super) started: Instant,
    pub(super) started_at: SystemTime,
    /// The generation in the name of its cgroup (cgroup tier).
    pub(super) cgroup: Option<u64>,
    pub(super) phase: Phase,
    /// Its `Ready` condition held: `Online` (else `Starting`).
    pub(super) ready: bool,
    /// A stop in progress.
    pub(super) stop: Option<Stop>,
    /// The log pump has read its output to the end: the last lines, for its record.
    pub(super) drained: Option<Option<RunTail>>,
    pub(super) checks: Checks,
    pub(super) notify: Option<Notify>,
    /// Why the supervisor ended it, when it did (a stop, a restart, a failed check).
    pub(super) cause: Option<Cause>,
    /// Why, in words, when a check ended it or it left processes behind.
    pub(super) end_reason: Option<String>,
    /// Its command probes: cancelled (their processes killed) when it stops or ends.
    pub(super) probe: Arc<probe::Slot>,
}

/// What a run's main process is doing.
pub(super) enum Phase {
    /// It runs.
    Live,
    /// It was reaped; what is left of the run (group members, descendants) is ending.
    /// `followed`: what follows the reap was done (see `lifecycle::after_reap`).
    Lingering {
        exit: Reaped,
        check_every: Duration,
        followed: bool,
    },
    /// Nothing of the run is left; what follows is decided, and waits for its output to be
    /// drained into its log.
    Draining { exit: Reaped, next: Next },
}

/// The main process's end, as reaped.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reaped {
    pub(super) outcome: Outcome,
    pub(super) at: Instant,
    pub(super) wall: SystemTime,
    pub(super) usage: Option<Rusage>,
}

/// What follows a run that is over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Next {
    /// What the operator's stop asked for.
    Then(Then),
    /// What the restart policy decided.
    Policy(Decision),
}

/// What happens once a stopped run has fully ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Then {
    /// Stay stopped.
    Settle,
    /// Start again (a manual restart, or a new spec).
    Start,
    /// Remove the service.
    Delete,
    /// The run failed a check (unhealthy, not ready in time): the restart policy decides,
    /// as for a crash.
    Crash,
}

/// A stop under way.
pub(super) struct Stop {
    pub(super) then: Then,
    pub(super) deadline: Instant,
    /// SIGKILL was sent.
    pub(super) killed: bool,
}

/// A stop of a service without a run, ending what its earlier runs left.
pub(super) struct Sweep {
    pub(super) then: Then,
    pub(super) deadline: Instant,
    pub(super) killed: bool,
    /// The state to return to when it is done, before `then` (a stop leaves an exited
    /// service exited).
    pub(super) was: Box<State>,
}

/// The liveness checks' running counts.
#[derive(Default)]
pub(super) struct Checks {
    /// Consecutive failed liveness probes.
    pub(super) health_failures: u32,
    /// A `WATCHDOG=1` came since the last health tick.
    pub(super) pinged: bool,
    /// The last `STATUS=` the run sent.
    pub(super) status_text: Option<String>,
    /// Consecutive memory samples over the limit.
    pub(super) memory_strikes: u32,
}

/// A run's `NOTIFY_SOCKET`: the socket, its poll token.
pub(super) struct Notify {
    pub(super) sock: NotifySocket,
    pub(super) token: u64,
    /// A refused datagram was logged for this run (later ones are only counted).
    pub(super) logged_refusal: bool,
}

impl Service {
    pub(super) fn new(
        id: u64,
        instance: Option<u32>,
        spec: Arc<ServiceSpec>,
        desired_up: bool,
        state: State,
    ) -> Service {
        Service {
            id,
            name: Arc::from(spec.instance_name(instance)),
            instance,
            spec,
            desired_up,
            generation: 0,
            state,
            history: History::default(),
            restarts: 0,
            last_exit: None,
            log_dropped: Arc::default(),
            notify_rejected: 0,
            launch: None,
            triggers: Default::default(),
        }
    }

    /// The current run's key (or, without a run, the one a sweep tracks under).
    pub(super) fn key(&self) -> RunKey {
        RunKey {
            id: self.id,
            generation: self.generation,
        }
    }

    pub(super) fn run(&self) -> Option<&Run> {
        match &self.state {
            State::Running(run) => Some(run),
            _ => None,
        }
    }

    pub(super) fn run_mut(&mut self) -> Option<&mut Run> {
        match &mut self.state {
            State::Running(run) => Some(run),
            _ => None,
        }
    }

    /// Its main process runs and no stop was asked for: what a dependency `Started` waits
    /// for.
    pub(super) fn is_up(&self) -> bool {
        self.run()
            .is_some_and(|r| matches!(r.phase, Phase::Live) && r.stop.is_none())
    }

    /// A stop of it is under way (a run stopping, or a sweep).
    pub(super) fn is_stopping(&self) -> bool {
        match &self.state {
            State::Running(run) => run.stop.is_some(),
            State::Sweeping(_) => true,
            _ => false,
        }
    }

    pub(super) fn status(&self) -> Status {
        match &self.state {
            State::Stopped => Status::Stopped,
            State::Exited => Status::Exited,
            State::Errored(_) => Status::Errored,
            State::Waiting => Status::Starting,
            State::Backoff { .. } => Status::Backoff,
            State::Sweeping(_) => Status::Stopping,
            State::Scheduled => Status::Scheduled,
            State::Running(run) if run.stop.is_some() => Status::Stopping,
            State::Running(run) if run.ready => Status::Online,
            State::Running(_) => Status::Starting,
        }
    }

    pub(super) fn info(&self) -> ServiceInfo {
        let run = self.run();
        ServiceInfo {
            id: self.id,
            name: self.name.clone(),
            instance: self.instance,
            desired_up: self.desired_up,
            spec: self.spec.clone(),
            status: self.status(),
            pid: run
                .filter(|r| matches!(r.phase, Phase::Live))
                .map(|r| r.pid),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            next_start: match self.state {
                State::Backoff { at } => Some(at),
                _ => None,
            },
            started_at: run.map(|r| r.started_at),
            generation: self.generation,
            cgroup: run.and_then(|r| r.cgroup),
            log_dropped: self.log_dropped.clone(),
            status_text: run.and_then(|r| r.checks.status_text.clone()),
            notify_rejected: self.notify_rejected,
            next_scheduled: self.triggers.next_tick,
        }
    }
}

impl Run {
    pub(super) fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live)
    }
}
