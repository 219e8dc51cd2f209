//! Rolling reloads: services restarted one at a time, each once the new run of the one
//! before is ready, so that a spec with two or more instances never has all of them down
//! at once. `reload` rolls a target with the specs its services have; a `start` that
//! changes the spec of several instances rolls them into it.
//!
//! A roll is a queue of services and the step under way: the service being restarted and
//! its generation when the restart began. Each turn of the loop looks at the step: the
//! first new run (the next generation) is ready (`Online`; for a one-shot task, exited 0),
//! still on its way (the old run stopping, the new one starting), or not going to be (it
//! ended, failed its readiness, was stopped or deleted, or the step's deadline passed).
//! The first failure stops the roll: the services after it keep their runs and their specs,
//! on disk too, and the caller gets a `NotReady` error that names them.
//!
//! Before it restarts a service that is ready, a roll checks that another instance of the
//! same spec is ready too: it would rather stop than take the last one down. Services that
//! are not ready go first, so that by the time the ready ones are touched the others have
//! come up.

use super::Engine;
use super::lifecycle;
use super::service::{Service, State, Then};
use super::timers::TimerKind;
use crate::containment::KILL_GRACE;
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;
use crate::info::{ServiceInfo, Status};
use crate::spec::ServiceSpec;
use crossbeam_channel::Sender;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who waits on a roll.
pub(super) enum RollReply {
    /// `start` of a changed spec: the info of its first service, for each caller.
    Info(Vec<Sender<Result<ServiceInfo>>>, u64),
    /// `reload`: how many services it restarted.
    Count(Sender<Result<usize>>),
}

pub(super) struct Roll {
    queue: VecDeque<u64>,
    /// The spec the services take as the roll reaches them (`None`: their own).
    spec: Option<Arc<ServiceSpec>>,
    current: Option<Step>,
    done: usize,
    reply: RollReply,
    /// Set once the roll is over; sent once the turn's writes are stored.
    outcome: Option<Result<()>>,
}

/// The service a roll is restarting.
struct Step {
    id: u64,
    /// Its generation when the restart began: the new run is the next one.
    generation: u64,
    deadline: Instant,
}

/// Where a step stands.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Waiting,
    Ready,
    Failed(String),
}

impl Roll {
    pub(super) fn new(
        queue: VecDeque<u64>,
        spec: Option<Arc<ServiceSpec>>,
        reply: RollReply,
    ) -> Roll {
        Roll {
            queue,
            spec,
            current: None,
            done: 0,
            reply,
            outcome: None,
        }
    }

    /// The services it has yet to touch, or is touching.
    fn touches(&self) -> impl Iterator<Item = u64> + '_ {
        self.current
            .iter()
            .map(|s| s.id)
            .chain(self.queue.iter().copied())
    }
}

/// How long a step may take: the old run's stop (its timeout, then SIGKILL and the wait
/// for the group, then the drain), the spawn, and the new run's readiness.
fn step_bound(spec: &ServiceSpec) -> Duration {
    spec.get_stop_timeout()
        .saturating_add(KILL_GRACE)
        .saturating_add(Duration::from_secs(1))
        .saturating_add(spec.get_ready_timeout())
}

/// Where the new run of a step stands: `svc` had `generation` when its restart began.
fn progress(svc: &Service, generation: u64) -> Progress {
    if svc.generation <= generation {
        // The old run is still ending, or the start waits for its dependencies.
        return Progress::Waiting;
    }
    let status = svc.status();
    if svc.generation == generation + 1 {
        match &svc.state {
            State::Running(run) if run.stop.is_none() => {
                // Not ready yet, or over and being recorded (a one-shot task's exit):
                // what follows decides.
                return if run.ready && run.is_live() {
                    Progress::Ready
                } else {
                    Progress::Waiting
                };
            }
            State::Exited
                if svc.spec.is_oneshot() && svc.last_exit.as_ref().is_some_and(|e| e.success()) =>
            {
                return Progress::Ready;
            }
            State::Waiting => return Progress::Waiting,
            _ => {}
        }
    }
    let last = svc
        .last_exit
        .as_ref()
        .map_or(String::new(), |e| format!(": {e}"));
    let why = match &svc.state {
        State::Errored(Some(e)) => format!("its new run could not start ({e})"),
        State::Stopped => "it was stopped".to_string(),
        _ => format!("its new run did not become ready (it is {status}{last})"),
    };
    Progress::Failed(why)
}

impl Engine {
    /// The order in which a roll takes `ids`: spec by spec, in the order they come; within a
    /// spec, the services that are not ready first, then the ready ones, each by index.
    pub(super) fn roll_order(&self, ids: &[u64]) -> VecDeque<u64> {
        let mut specs: Vec<&str> = Vec::new();
        for id in ids {
            if let Some(s) = self.services.get(id)
                && !specs.contains(&s.spec.name())
            {
                specs.push(s.spec.name());
            }
        }
        let mut order = VecDeque::new();
        for spec in specs {
            let mut group: Vec<&Service> = ids
                .iter()
                .filter_map(|id| self.services.get(id))
                .filter(|s| s.spec.name() == spec)
                .collect();
            group.sort_by_key(|s| (s.status() == Status::Online, s.instance));
            order.extend(group.iter().map(|s| s.id));
        }
        order
    }

    /// Starts a roll. One already under way over the same specs is overtaken: it ends with
    /// an error that says so (its restart under way goes on), and this one takes over.
    pub(super) fn begin_roll(&mut self, roll: Roll, now: Instant) {
        let specs: HashSet<&str> = roll
            .touches()
            .filter_map(|id| self.services.get(&id))
            .map(|s| s.spec.name())
            .collect();
        let mut overtaken = Vec::new();
        for (i, other) in self.rolls.iter().enumerate() {
            if other.outcome.is_none()
                && other
                    .touches()
                    .filter_map(|id| self.services.get(&id))
                    .any(|s| specs.contains(s.spec.name()))
            {
                overtaken.push(i);
            }
        }
        for i in overtaken {
            let name = self.rolls[i]
                .touches()
                .find_map(|id| self.services.get(&id))
                .map_or_else(String::new, |s| s.spec.name().to_string());
            let done = self.rolls[i].done;
            self.rolls[i].outcome = Some(Err(Error::new(
                ErrorKind::NotReady,
                format!(
                    "reload overtaken by a later start or reload of the same service, after {done} restarted"
                ),
            )
            .with_service(name)));
        }
        self.rolls.push(roll);
        self.advance_rolls(now);
    }

    /// Moves every roll on as far as it can go this turn.
    pub(super) fn advance_rolls(&mut self, now: Instant) {
        for i in 0..self.rolls.len() {
            if self.rolls[i].outcome.is_some() {
                continue;
            }
            if self.shutdown.is_some() {
                self.rolls[i].outcome = Some(Err(Error::shut_down()));
                continue;
            }
            self.advance_roll(i, now);
        }
    }

    fn advance_roll(&mut self, i: usize, now: Instant) {
        loop {
            if let Some(step) = &self.rolls[i].current {
                let (id, generation, deadline) = (step.id, step.generation, step.deadline);
                let progress = match self.services.get(&id) {
                    None => Progress::Failed("it was deleted".to_string()),
                    Some(svc) => match progress(svc, generation) {
                        Progress::Waiting if now >= deadline => Progress::Failed(format!(
                            "its new run was not ready within {}",
                            crate::duration::format(step_bound(&svc.spec))
                        )),
                        p => p,
                    },
                };
                match progress {
                    Progress::Waiting => return,
                    Progress::Ready => {
                        let roll = &mut self.rolls[i];
                        roll.done += 1;
                        roll.current = None;
                    }
                    Progress::Failed(why) => return self.fail_roll(i, id, why),
                }
            }
            let Some(id) = self.rolls[i].queue.pop_front() else {
                self.rolls[i].outcome = Some(Ok(()));
                return;
            };
            if !self.services.contains_key(&id) {
                continue; // deleted meanwhile: nothing to restart
            }
            if let Err(why) = self.begin_step(i, id, now) {
                return self.fail_roll(i, id, why);
            }
        }
    }

    /// Restarts the next service of roll `i` (into the roll's spec, if it has one).
    fn begin_step(&mut self, i: usize, id: u64, now: Instant) -> std::result::Result<(), String> {
        let svc = &self.services[&id];
        let group = self.services_of(svc.spec.name());
        if svc.status() == Status::Online && !svc.spec.is_oneshot() && group.len() >= 2 {
            let others_ready = group
                .iter()
                .any(|o| *o != id && self.services[o].status() == Status::Online);
            if !others_ready {
                return Err(format!(
                    "no other instance of '{}' is ready, and restarting it would leave none",
                    svc.spec.name()
                ));
            }
        }
        if let Some(spec) = self.rolls[i].spec.clone()
            && *self.services[&id].spec != *spec
        {
            let stored = self.io.store.transaction().and_then(|mut tx| {
                tx.update_spec(id, &spec)?;
                tx.commit()
            });
            if let Err(e) = stored {
                self.store_failed(&e);
                return Err(format!("its new spec could not be stored ({e})"));
            }
            let svc = self.services.get_mut(&id).expect("checked above");
            svc.spec = spec;
            svc.launch = None;
            if svc.desired_up {
                super::triggers::arm(svc, &mut self.io, None);
            }
            self.io.changes.touch(id);
        }
        let svc = &self.services[&id];
        let generation = svc.generation;
        let deadline = crate::duration::deadline(now, step_bound(&svc.spec));
        self.io.timers.push(deadline, 0, 0, TimerKind::Roll);
        self.rolls[i].current = Some(Step {
            id,
            generation,
            deadline,
        });
        self.with_service(id, now, |svc, io| {
            // As a manual restart: not a crash, the backoff starts afresh.
            svc.history = Default::default();
            lifecycle::begin_stop(svc, io, Then::Start, false, now)
        });
        Ok(())
    }

    /// Ends roll `i` at service `id`, which did not become ready: says why, and names what it
    /// left as it was.
    fn fail_roll(&mut self, i: usize, id: u64, why: String) {
        let name = self
            .services
            .get(&id)
            .map_or_else(|| format!("#{id}"), |s| s.name.to_string());
        let left: Vec<String> = self.rolls[i]
            .queue
            .iter()
            .filter_map(|id| self.services.get(id))
            .map(|s| s.name.to_string())
            .collect();
        let rest = match left.len() {
            0 => String::new(),
            _ => format!("; left as they were: {}", left.join(", ")),
        };
        let reason = format!("reload stopped: {why}{rest}");
        log::warn!("service '{name}': {reason}");
        self.io.changes.emit(Event::ReloadFailed {
            name: name.clone(),
            reason: reason.clone(),
        });
        self.rolls[i].outcome = Some(Err(
            Error::new(ErrorKind::NotReady, reason).with_service(name)
        ));
    }

    /// Replies to the rolls that are over, once the turn's writes are stored.
    pub(super) fn settle_rolls(&mut self) {
        let mut i = 0;
        while i < self.rolls.len() {
            if self.rolls[i].outcome.is_none() {
                i += 1;
                continue;
            }
            let roll = self.rolls.swap_remove(i);
            let outcome = roll.outcome.expect("checked above");
            match roll.reply {
                RollReply::Count(reply) => {
                    let _ = reply.send(outcome.map(|()| roll.done));
                }
                RollReply::Info(replies, first) => {
                    let result = outcome.and_then(|()| {
                        self.services.get(&first).map(Service::info).ok_or_else(|| {
                            Error::new(ErrorKind::NotFound, "was deleted while starting")
                        })
                    });
                    for reply in replies {
                        let _ = reply.send(result.clone());
                    }
                }
            }
        }
    }

    /// A rolling restart of the target's services (see the module docs): their desired
    /// states are stored first (up).
    pub(super) fn reload(&mut self, ids: Vec<u64>, reply: Sender<Result<usize>>, now: Instant) {
        if let Err(e) = self.set_desired_many(&ids, true) {
            let _ = reply.send(Err(e));
            return;
        }
        let order = self.roll_order(&ids);
        self.begin_roll(Roll::new(order, None, RollReply::Count(reply)), now);
    }
}
