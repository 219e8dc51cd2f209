//! A run's life, from its spawn to its record: each function takes the service and the
//! [`Io`] it needs, and leaves the service in its next state.
//!
//! The way out is one straight pipeline:
//!
//! ```text
//! reap:       the main process, first thing in a turn, for every exit
//! after_reap: kill what it left (if it ended by itself)
//!             └► Lingering until nothing of the run is left (GroupCheck timers, escapees)
//! over:       decide what follows (the policy, or what the stop asked for) ─► Draining
//! complete:   (once the log pump drained its output, or at once for an immediate restart)
//!             record the run (one write) ─► act: restart, back off, settle, or a Step
//! ```
//!
//! A stop joins it: the stop signal, then SIGKILL at the deadline; the main process's exit
//! then takes the same way, with the stop's `Then` in place of the policy's decision.

use super::checks;
use super::io::{Io, Owner};
use super::service::{Next, Notify, Phase, Reaped, Run, Service, State, Stop, Sweep, Then};
use super::timers::TimerKind;
use crate::containment::{KILL_GRACE, Leftovers, Plan, Processes, RunKey};
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;
use crate::history::{Cause, Usage};
use crate::info::Exit;
use crate::logs::{self, RunOutput, RunTail};
use crate::notify;
use crate::policy::{Decision, Outcome, RunEnd};
use crate::readiness::{Check, Ready};
use crate::signal::Signal;
use crate::store::{NewRun, RunEnding};
use crate::sys::RawExit;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The first and the longest interval between checks of a lingering run.
const GROUP_CHECK_MIN: Duration = Duration::from_millis(2);
const GROUP_CHECK_MAX: Duration = Duration::from_millis(100);
/// How long the record of a run restarted at once may wait for a turn of its own: the
/// pump reports its drain without waking the thread, and a crash loop's next exit reads it
/// (one store transaction and one wake-up less per restart).
pub(super) const RECORD_WITHIN: Duration = Duration::from_millis(50);
/// The shortest delay before retrying an automatic restart whose spawn failed, so a missing
/// program with `Backoff::none()` cannot spin the thread.
pub(super) const SPAWN_RETRY_MIN: Duration = Duration::from_millis(100);

/// What the engine must do next for a service, when the lifecycle cannot do it alone: a
/// start waits for dependencies, and a delete removes the service from the registry.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Done,
    /// Start it (an operator's start: dependencies first).
    Start,
    /// Remove it.
    Delete,
}

/// A run over before its output was drained (an immediate restart does not wait): what its
/// record says, written once the last lines come.
pub(super) struct Unrecorded {
    service_id: u64,
    record: i64,
    exit: Exit,
    cause: Cause,
    decision: Option<String>,
    delay: Option<Duration>,
    usage: Option<Usage>,
}

impl Unrecorded {
    fn write(self, io: &mut Io, tail: Option<&RunTail>) {
        let (stdout, stderr) = tail.map_or((&[][..], &[][..]), |t| (&t.stdout, &t.stderr));
        io.store.end_run(
            self.service_id,
            self.record,
            &RunEnding {
                exit: &self.exit,
                cause: self.cause,
                errno: None,
                decision: self.decision.as_deref(),
                delay: self.delay,
                usage: self.usage,
                stdout,
                stderr,
            },
        );
    }
}

fn outcome(raw: RawExit) -> Outcome {
    match raw {
        RawExit::Code(c) => Outcome::Code(c),
        RawExit::Signal(s) => Outcome::Signal(s),
        RawExit::Unknown => Outcome::Unknown,
    }
}

/// Spawns a new run (the caller saw to the dependencies of an operator's start). `auto`
/// marks a restart by the policy: counted in `restarts`, reusing the launch the operator's
/// start made, and retried by the policy if the spawn fails; a start by hand that fails
/// leaves the service `Errored` and returns the error.
pub(super) fn spawn(svc: &mut Service, io: &mut Io, auto: bool, now: Instant) -> Result<()> {
    let (plan, rest) = prepare(svc, io, auto, now)?;
    let spawned = io.procs.spawn(plan);
    started(svc, io, auto, rest, spawned, now)
}

/// What a spawn keeps on the supervision thread while its [`Plan`] is spawned: the read
/// ends of its output pipes and its notify socket.
pub(super) struct Prepared {
    token: u64,
    launch: Arc<crate::child::Launch>,
    out_read: std::os::fd::OwnedFd,
    err_read: Option<std::os::fd::OwnedFd>,
    notify: Option<crate::sys::NotifySocket>,
}

/// The first half of [`spawn`]: a new generation, its pipes, launch, marker and notify
/// socket, and the plan to spawn. A failure here is the spawn's failure (as [`spawn`]
/// handles it), and there is nothing to spawn.
pub(super) fn prepare(
    svc: &mut Service,
    io: &mut Io,
    auto: bool,
    now: Instant,
) -> Result<(Plan, Prepared)> {
    svc.generation += 1;
    let spec = svc.spec.clone();
    let name = svc.name.clone();
    let setup_failed = |what: &str, e: std::io::Error| {
        Error::new(
            ErrorKind::Spawn,
            format!("cannot start: cannot create its {what}"),
        )
        .with_service(&*name)
        .with_source(e)
    };
    let pipes = match logs::make_pipes(spec.log_policy().get_merge_stderr()) {
        Ok(p) => p,
        Err(e) => {
            return Err(spawn_failed(
                svc,
                io,
                auto,
                setup_failed("output pipes", e),
                now,
            ));
        }
    };
    let launch = match svc.launch.clone().filter(|_| auto) {
        Some(launch) => launch,
        None => match io.launch(&spec, svc.instance) {
            Ok(launch) => svc.launch.insert(Arc::new(launch)).clone(),
            Err(e) => return Err(spawn_failed(svc, io, auto, e, now)),
        },
    };
    let key = svc.key();
    let id = &io.identity;
    // Sealed with the uid the run has: a process is claimed by its marker only if its real
    // uid is the marker's.
    let uid = launch.uid().unwrap_or(id.uid);
    let mut env = vec![(
        crate::containment::marker::RUN_VAR.to_string(),
        id.session.seal(&id.run_key, key.id, key.generation, uid),
    )];
    let wants_notify = *spec.get_ready() == Ready::Notify
        || spec
            .get_health()
            .is_some_and(|h| *h.check() == Check::Notify);
    let notify = if wants_notify {
        match notify::bind() {
            Ok((sock, name)) => {
                env.push(("NOTIFY_SOCKET".to_string(), format!("@{name}")));
                if let Some(h) = spec.get_health().filter(|h| *h.check() == Check::Notify) {
                    env.push((
                        "WATCHDOG_USEC".to_string(),
                        h.get_interval().as_micros().to_string(),
                    ));
                }
                Some(sock)
            }
            Err(e) => {
                return Err(spawn_failed(
                    svc,
                    io,
                    auto,
                    setup_failed("notify socket", e),
                    now,
                ));
            }
        }
    } else {
        None
    };
    let token = io.token();
    let logs::RunPipesForSpawn {
        out_read,
        out_write,
        err,
    } = pipes;
    let (err_read, err_write) = err.unzip();
    let plan = Plan {
        run: key,
        spec,
        launch: launch.clone(),
        stdout: out_write,
        stderr: err_write,
        env,
        token,
    };
    let rest = Prepared {
        token,
        launch,
        out_read,
        err_read,
        notify,
    };
    Ok((plan, rest))
}

/// The second half of [`spawn`]: the tier's answer `spawned` taken in, the service
/// `Running` (or its failure handled).
pub(super) fn started(
    svc: &mut Service,
    io: &mut Io,
    auto: bool,
    prepared: Prepared,
    spawned: Result<crate::containment::Spawned>,
    now: Instant,
) -> Result<()> {
    let Prepared {
        token,
        launch,
        out_read,
        err_read,
        notify,
    } = prepared;
    let spec = svc.spec.clone();
    let name = svc.name.clone();
    let key = svc.key();
    let spawned = match spawned {
        Ok(s) => s,
        Err(e) => return Err(spawn_failed(svc, io, auto, e, now)),
    };
    io.tokens.insert(token, Owner::Leader(svc.id));
    if auto {
        svc.restarts += 1;
    }
    let wall = SystemTime::now();
    let immediately = *spec.get_ready() == Ready::Immediately;
    let record = io.store.insert_run(&NewRun {
        service_id: svc.id,
        generation: key.generation,
        pid: spawned.pid,
        boot_id: &io.identity.boot_id,
        start_ticks: spawned.start_ticks,
        pidfd_ino: spawned.pidfd_ino,
        started_at: wall,
        ready: immediately,
        uid: launch.uid(),
    });
    let (last_output, alarms) = super::triggers::arm_watchdog(svc, io, now);
    io.outputs.attach(RunOutput {
        id: svc.id,
        generation: key.generation,
        name: name.clone(),
        policy: spec.log_policy().clone(),
        stdout: out_read,
        stderr: err_read,
        dropped: svc.log_dropped.clone(),
        watch: match spec.get_ready() {
            Ready::LogLine(pattern) => Some(pattern.clone()),
            _ => None,
        },
        keep_tail: true,
        last_output,
        alarms,
    });
    let notify = notify.and_then(|sock| {
        let token = io.token();
        match io.registry.add(&sock, token) {
            Ok(()) => {
                io.tokens.insert(token, Owner::Notify(svc.id));
                Some(Notify {
                    sock,
                    token,
                    logged_refusal: false,
                })
            }
            Err(e) => {
                log::error!("service '{}': cannot watch its notify socket: {e}", &*name);
                None
            }
        }
    });
    svc.state = State::Running(Box::new(Run {
        pid: spawned.pid,
        token,
        record,
        started: now,
        started_at: wall,
        cgroup: spawned.cgroup,
        phase: Phase::Live,
        ready: false,
        stop: None,
        drained: None,
        checks: Default::default(),
        notify,
        cause: None,
        end_reason: None,
        probe: Arc::default(),
    }));
    if spec.get_max_memory().is_some() && !io.memory_sampling {
        io.memory_sampling = true;
        let at = crate::duration::deadline(now, io.memory_sample);
        io.timers.push(at, 0, 0, TimerKind::MemorySample);
    }
    io.changes.save(svc.id);
    io.changes.emit(Event::Started {
        name: name.to_string(),
        pid: spawned.pid,
    });
    checks::arm_readiness(svc, io, now);
    Ok(())
}

/// A spawn failed: recorded as a run that ended when it began. An automatic restart counts
/// it as a crash of zero uptime (so a briefly missing program or working directory does not
/// end the service for good); a start by hand leaves the service `Errored`.
fn spawn_failed(svc: &mut Service, io: &mut Io, auto: bool, e: Error, now: Instant) -> Error {
    let exit = Exit {
        code: None,
        signal: None,
        at: SystemTime::now(),
        uptime: Duration::ZERO,
        reason: Some(e.to_string()),
    };
    let decision = auto.then(|| {
        log::warn!("{e}");
        decide(
            svc,
            io,
            RunEnd {
                started: now,
                ended: now,
                outcome: Outcome::Unknown,
            },
        )
    });
    let (text, delay) = match &decision {
        Some(d) => {
            let (text, delay) = describe_decision(d, SPAWN_RETRY_MIN);
            (text, delay)
        }
        None => ("errored: a start by hand is not retried".to_string(), None),
    };
    io.store.insert_failed_run(
        svc.id,
        svc.generation,
        &io.identity.boot_id,
        &RunEnding {
            exit: &exit,
            cause: Cause::SpawnFailed,
            errno: e.os_error(),
            decision: Some(&text),
            delay,
            usage: None,
            stdout: &[],
            stderr: &[],
        },
    );
    match decision {
        Some(decision) => act(svc, io, decision, SPAWN_RETRY_MIN, now),
        None => {
            svc.state = State::Errored(Some(e.clone()));
            io.changes.save(svc.id);
            io.changes.emit(Event::Errored {
                name: svc.name.to_string(),
                reason: e.to_string(),
            });
        }
    }
    e
}

/// Asks the policy about a run that ended by itself, and keeps the history it returns. A
/// one-shot task that succeeded is done, whatever its policy.
fn decide(svc: &mut Service, io: &mut Io, end: RunEnd) -> Decision {
    let policy = svc.spec.restart_policy();
    if svc.spec.is_oneshot() && matches!(end.outcome, Outcome::Code(c) if policy.is_success(c)) {
        svc.history = Default::default();
        return Decision::Exited;
    }
    let jitter = io.random_unit();
    let (decision, history) = svc.spec.restart_policy().decide(&svc.history, &end, jitter);
    svc.history = history;
    super::triggers::job_decision(svc, &end, decision)
}

/// A decision of the restart policy in words, and its delay if it restarts.
pub(super) fn describe_decision(
    decision: &Decision,
    min_delay: Duration,
) -> (String, Option<Duration>) {
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

/// Carries out a decision of the restart policy for a service without a run: restart now or
/// after a backoff, or leave it exited or errored.
fn act(svc: &mut Service, io: &mut Io, decision: Decision, min_delay: Duration, now: Instant) {
    let name = svc.name.to_string();
    match decision {
        Decision::Restart { delay, .. } => {
            let delay = delay.max(min_delay);
            let reason = match &svc.last_exit {
                Some(e) if min_delay.is_zero() => e.to_string(),
                _ => "its start failed".to_string(),
            };
            io.changes.emit(Event::Restarting {
                name: name.clone(),
                reason,
                delay,
            });
            if delay.is_zero() {
                let _ = spawn(svc, io, true, now);
            } else {
                let at = crate::duration::deadline(now, delay);
                svc.state = State::Backoff { at };
                io.timers
                    .push(at, svc.id, svc.generation, TimerKind::Restart);
                io.changes.save(svc.id);
                io.changes.emit(Event::Backoff { name, delay });
            }
        }
        Decision::Exited => {
            svc.state = super::triggers::exited_state(svc);
            io.changes.save(svc.id);
        }
        Decision::Errored { crashes, window } => {
            svc.state = State::Errored(None);
            io.changes.save(svc.id);
            io.changes.emit(Event::Errored {
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

/// The backoff is over: restart (a timer of the generation the backoff was set for).
pub(super) fn on_backoff_over(svc: &mut Service, io: &mut Io, at: Instant, now: Instant) {
    if matches!(svc.state, State::Backoff { at: due } if due == at) {
        let _ = spawn(svc, io, true, now);
    }
}

/// Begins to end the current run gracefully, then does `then`; without a run, `then`
/// happens at once (after a sweep, in the process-group tier). A later stop overrides an
/// earlier one's `then`, except that a delete is never undone. `group_signalled`: the stop
/// signal already went to the run's group (a stop of many signals every group first).
pub(super) fn begin_stop(
    svc: &mut Service,
    io: &mut Io,
    then: Then,
    group_signalled: bool,
    now: Instant,
) -> Step {
    let key = svc.key();
    let signal = svc.spec.get_stop_signal();
    let deadline = crate::duration::deadline(now, svc.spec.get_stop_timeout());
    let deadline = io.stop_by.map_or(deadline, |by| deadline.min(by));
    match &mut svc.state {
        State::Running(run) => {
            if let Some(stop) = run.stop.as_mut() {
                if stop.then != Then::Delete {
                    stop.then = then;
                }
                if matches!(then, Then::Settle | Then::Delete) {
                    // An operator's stop wins over a check that was already ending the run.
                    run.cause = Some(Cause::Stopped);
                }
                if let Phase::Draining { next, .. } = &mut run.phase
                    && stop.then != Then::Crash
                {
                    *next = Next::Then(stop.then);
                }
                return Step::Done;
            }
            // A probe of a stopping run has nothing left to tell.
            run.probe.cancel();
            // A run reaped since the stop signal went to its group ended of this stop: a stop
            // of many reaps the first exits while it goes through the services.
            if run.is_live() || group_signalled {
                run.cause.get_or_insert(match then {
                    Then::Settle | Then::Delete => Cause::Stopped,
                    Then::Start => Cause::Restarted,
                    Then::Crash => Cause::Crashed,
                });
            }
            run.stop = Some(Stop {
                then,
                deadline,
                killed: signal == Signal::Kill,
            });
            io.changes.save(svc.id);
            match &mut run.phase {
                Phase::Live => {
                    io.procs.stop(key, signal, group_signalled);
                    io.timers
                        .push(deadline, svc.id, svc.generation, TimerKind::StopDeadline);
                    Step::Done
                }
                Phase::Lingering { followed, .. } => {
                    // What `after_reap` would do, the stop does now.
                    *followed = true;
                    io.procs.stop(key, signal, group_signalled);
                    io.timers
                        .push(deadline, svc.id, svc.generation, TimerKind::StopDeadline);
                    check_linger(svc, io, now)
                }
                // Over already: only what follows changes, unless a check ended it.
                Phase::Draining { next, .. } => {
                    if then != Then::Crash {
                        *next = Next::Then(then);
                    }
                    Step::Done
                }
            }
        }
        State::Sweeping(sweep) => {
            if sweep.then != Then::Delete {
                sweep.then = then;
            }
            Step::Done
        }
        _ => {
            if io.procs.sweep(key, signal) {
                let was = std::mem::replace(&mut svc.state, State::Stopped);
                svc.state = State::Sweeping(Sweep {
                    then,
                    deadline,
                    killed: signal == Signal::Kill,
                    was: Box::new(was),
                });
                io.changes.save(svc.id);
                io.timers
                    .push(deadline, svc.id, svc.generation, TimerKind::SweepDeadline);
                return Step::Done;
            }
            let active = matches!(
                svc.state,
                State::Waiting | State::Backoff { .. } | State::Scheduled
            );
            after_stop(svc, io, then, active)
        }
    }
}

/// What follows a stop that is over (or found nothing to stop). `active`: the service was
/// running, starting or waiting to restart, and a stop settles it `Stopped` (an exited or
/// errored one stays as it is).
fn after_stop(svc: &mut Service, io: &mut Io, then: Then, active: bool) -> Step {
    match then {
        Then::Settle => {
            if active {
                svc.state = State::Stopped;
                // A pending restart timer (or reply) of the old generation is done with.
                svc.generation += 1;
                io.changes.save(svc.id);
                io.changes.emit(Event::Stopped {
                    name: svc.name.to_string(),
                });
            }
            Step::Done
        }
        Then::Start => Step::Start,
        Then::Delete => Step::Delete,
        Then::Crash => unreachable!("a check's stop is settled by the policy in `over`"),
    }
}

/// A run failed a check (not ready in time, unhealthy, over its memory limit): it is ended,
/// and the restart policy then treats it as a crash.
pub(super) fn fail_run(
    svc: &mut Service,
    io: &mut Io,
    cause: Cause,
    reason: String,
    now: Instant,
) -> Step {
    if let Some(run) = svc.run_mut() {
        run.end_reason = Some(reason);
        run.cause.get_or_insert(cause);
    }
    begin_stop(svc, io, Then::Crash, false, now)
}

/// The stop timeout passed: SIGKILL to everything of the run, and a last deadline for it to
/// be gone.
pub(super) fn on_stop_deadline(svc: &mut Service, io: &mut Io, at: Instant, now: Instant) {
    let key = svc.key();
    let timeout = svc.spec.get_stop_timeout();
    let name = svc.name.to_string();
    let Some(stop) = svc.run_mut().and_then(|r| r.stop.as_mut()) else {
        return;
    };
    if stop.deadline != at {
        return;
    }
    if !stop.killed {
        stop.killed = true;
        log::info!(
            "service '{name}': still running {} after the stop signal; sending SIGKILL to its group",
            crate::duration::format(timeout)
        );
        io.procs.kill(key);
    }
    io.timers
        .push(now + KILL_GRACE, key.id, key.generation, TimerKind::GiveUp);
}

/// The main process's pidfd fired: the exit pipeline begins. Reaps the run's main process
/// if it exited: the run lingers from then on, and [`after_reap`] decides what follows.
/// `false` if there was nothing to reap (a spurious readiness, or a run that is not live).
///
/// Reaping is cheap and is what makes a process gone, so a turn reaps every exit it is told
/// of before it does the rest of any: under a stop-all of 1000, the last process is gone
/// while the records of the first are still being written.
pub(super) fn reap(svc: &mut Service, io: &mut Io, now: Instant) -> bool {
    let key = svc.key();
    let Some(run) = svc.run_mut().filter(|r| r.is_live()) else {
        return false;
    };
    let Some(reaped) = io.procs.reap(key) else {
        return false; // spurious readiness
    };
    io.reaped = true;
    io.tokens.remove(&run.token);
    io.outputs.detach(key.id, key.generation);
    io.changes.touch(key.id);
    run.phase = Phase::Lingering {
        exit: Reaped {
            outcome: outcome(reaped.exit),
            at: now,
            wall: SystemTime::now(),
            usage: reaped.usage,
        },
        check_every: GROUP_CHECK_MIN,
        followed: false,
    };
    true
}

/// What follows the reap of a run's main process: if the run was being stopped, it is over
/// once nothing of it is left; if it ended by itself, whatever it left goes with it. Once
/// only: a run that is no longer lingering, or that a stop looked at in between, is left as
/// it is.
pub(super) fn after_reap(svc: &mut Service, io: &mut Io, key: RunKey, now: Instant) -> Step {
    if svc.key() != key {
        return Step::Done;
    }
    let Some(run) = svc.run_mut() else {
        return Step::Done;
    };
    match &mut run.phase {
        Phase::Lingering { followed, .. } if !*followed => *followed = true,
        _ => return Step::Done,
    }
    if run.stop.is_some() {
        return check_linger(svc, io, now);
    }
    // It ended by itself. Whatever it left goes with it: a new run must never meet the old
    // one's descendants.
    match io.procs.kill_leftovers(key) {
        Leftovers::None => over(svc, io, now),
        Leftovers::Killed => {
            left_running(run);
            over(svc, io, now)
        }
        Leftovers::Lingering => {
            left_running(run);
            io.timers
                .push(now + KILL_GRACE, key.id, key.generation, TimerKind::GiveUp);
            check_linger(svc, io, now)
        }
    }
}

fn left_running(run: &mut Run) {
    run.end_reason.get_or_insert_with(|| {
        "its main process exited and left processes running; they were killed".to_string()
    });
}

/// A lingering run: over if nothing of it is left, else looked at again shortly.
fn check_linger(svc: &mut Service, io: &mut Io, now: Instant) -> Step {
    let key = svc.key();
    let stop_signal = svc.spec.get_stop_signal();
    let Some(run) = svc.run_mut() else {
        return Step::Done;
    };
    let Phase::Lingering { check_every, .. } = &mut run.phase else {
        return Step::Done;
    };
    let signal = match &run.stop {
        Some(stop) if stop.killed => Signal::Kill,
        _ => stop_signal,
    };
    if io.procs.is_empty(key, signal) {
        return over(svc, io, now);
    }
    let at = now + *check_every;
    *check_every = (*check_every * 2).min(GROUP_CHECK_MAX);
    io.timers
        .push(at, key.id, key.generation, TimerKind::GroupCheck);
    Step::Done
}

/// A timer to look again at a lingering run.
pub(super) fn on_group_check(svc: &mut Service, io: &mut Io, now: Instant) -> Step {
    check_linger(svc, io, now)
}

/// What was killed did not go away within [`KILL_GRACE`]: the run is over anyway.
pub(super) fn on_give_up(svc: &mut Service, io: &mut Io, now: Instant) -> Step {
    if !svc
        .run()
        .is_some_and(|r| matches!(r.phase, Phase::Lingering { .. }))
    {
        return Step::Done;
    }
    log::error!(
        "service '{}': members of its process group survived SIGKILL for {}s; giving up on them",
        &*svc.name,
        KILL_GRACE.as_secs()
    );
    over(svc, io, now)
}

/// Nothing of the run is left: decides what follows (the policy for a run that ended by
/// itself or failed a check, else what the stop asked for), then completes it once its
/// output is drained. An immediate restart does not wait: the pump writes the old run's
/// remaining output before the new run's.
fn over(svc: &mut Service, io: &mut Io, now: Instant) -> Step {
    let Some(run) = svc.run() else {
        return Step::Done;
    };
    let Phase::Lingering { exit, .. } = run.phase else {
        return Step::Done;
    };
    let next = match run.stop.as_ref().map(|s| s.then) {
        Some(then) if then != Then::Crash => Next::Then(then),
        _ => {
            let end = RunEnd {
                started: run.started,
                ended: exit.at,
                outcome: exit.outcome,
            };
            Next::Policy(decide(svc, io, end))
        }
    };
    let run = svc.run_mut().expect("checked above");
    run.phase = Phase::Draining { exit, next };
    let immediate =
        matches!(next, Next::Policy(Decision::Restart { delay, .. }) if delay.is_zero());
    if run.drained.is_some() || immediate {
        return complete(svc, io, now);
    }
    Step::Done
}

/// The log pump has read a run's output to its end. Completes the run if it was waiting for
/// that, or writes the record of one completed before (an immediate restart).
pub(super) fn on_drained(
    svc: Option<&mut Service>,
    io: &mut Io,
    key: RunKey,
    tail: Option<RunTail>,
    now: Instant,
) -> Step {
    if let Some(unrecorded) = io.unrecorded.remove(&key) {
        unrecorded.write(io, tail.as_ref());
        return Step::Done;
    }
    let Some(svc) = svc.filter(|s| s.generation == key.generation) else {
        return Step::Done;
    };
    let Some(run) = svc.run_mut() else {
        return Step::Done;
    };
    run.drained = Some(tail);
    if matches!(run.phase, Phase::Draining { .. }) {
        return complete(svc, io, now);
    }
    Step::Done
}

/// The run is over and what follows is decided: records it (once its last output is known)
/// and acts.
fn complete(svc: &mut Service, io: &mut Io, now: Instant) -> Step {
    let key = svc.key();
    let State::Running(run) = std::mem::replace(&mut svc.state, State::Stopped) else {
        unreachable!("complete is only called with a run");
    };
    let run = *run;
    let Phase::Draining { exit: reaped, next } = run.phase else {
        unreachable!("complete is only called once the run is draining");
    };
    run.probe.cancel();
    if let Some(n) = &run.notify {
        io.registry.remove(&n.sock);
        io.tokens.remove(&n.token);
    }
    let follows = match next {
        Next::Then(then) => then == Then::Start,
        Next::Policy(decision) => matches!(decision, Decision::Restart { .. }),
    };
    let ended = io.procs.end(key, follows);
    let exit = Exit {
        code: match reaped.outcome {
            Outcome::Code(c) => Some(c),
            _ => None,
        },
        signal: match reaped.outcome {
            Outcome::Signal(s) => Some(s),
            _ => None,
        },
        at: reaped.wall,
        uptime: reaped.at.saturating_duration_since(run.started),
        reason: run.end_reason.clone(),
    };
    let cause = match (run.cause, reaped.outcome) {
        (Some(cause), _) => cause,
        (None, _) if ended.oom_killed => Cause::OutOfMemory,
        (None, Outcome::Code(0)) => Cause::Exited,
        (None, _) => Cause::Crashed,
    };
    svc.last_exit = Some(exit.clone());
    io.changes.emit(Event::Exited {
        name: svc.name.to_string(),
        pid: run.pid,
        exit: exit.clone(),
    });
    io.changes.save(svc.id);
    let (decision, delay) = match next {
        Next::Policy(Decision::Exited) if svc.spec.is_oneshot() && cause == Cause::Exited => {
            (Some("done: the one-shot task succeeded".to_string()), None)
        }
        Next::Policy(d) => {
            let (mut text, delay) = describe_decision(&d, Duration::ZERO);
            if matches!(d, Decision::Exited) && super::triggers::waits_for_tick(svc) {
                text = "a scheduled job: it waits for its next tick".to_string();
            }
            (Some(text), delay)
        }
        Next::Then(_) => (None, None),
    };
    let unrecorded = Unrecorded {
        service_id: svc.id,
        record: run.record,
        exit,
        cause,
        decision,
        delay,
        usage: reaped.usage.map(|u| Usage {
            peak_memory: ended.peak_memory,
            user: u.user,
            system: u.system,
        }),
    };
    match run.drained {
        Some(tail) => unrecorded.write(io, tail.as_ref()),
        None => {
            io.unrecorded.insert(key, unrecorded);
            io.outputs.unhurried(key.id, key.generation);
            arm_deferred(io, now);
        }
    }
    match next {
        Next::Then(then) => after_stop(svc, io, then, true),
        Next::Policy(decision) => {
            act(svc, io, decision, Duration::ZERO, now);
            Step::Done
        }
    }
}

/// Sets the `Deferred` timer unless it is set: the unrecorded runs' drains are read, and
/// the held directories handed over, by then.
pub(super) fn arm_deferred(io: &mut Io, now: Instant) {
    if !io.deferred_timer {
        io.deferred_timer = true;
        io.timers
            .push(now + RECORD_WITHIN, 0, 0, TimerKind::Deferred);
    }
}

/// The `Deferred` timer fired: set again while runs are still unrecorded (its turn, having
/// reaped nothing, hands the held directories over).
pub(super) fn on_deferred_timer(io: &mut Io, now: Instant) {
    io.deferred_timer = false;
    if !io.unrecorded.is_empty() {
        arm_deferred(io, now);
    }
}

/// A sweep's stop timeout passed: SIGKILL to what it found.
pub(super) fn on_sweep_deadline(svc: &mut Service, io: &mut Io, at: Instant, now: Instant) {
    let key = svc.key();
    let timeout = svc.spec.get_stop_timeout();
    let name = svc.name.to_string();
    let State::Sweeping(sweep) = &mut svc.state else {
        return;
    };
    if sweep.deadline != at || sweep.killed {
        return;
    }
    sweep.killed = true;
    log::info!(
        "service '{name}': processes of earlier runs still running {} after the stop signal; sending SIGKILL",
        crate::duration::format(timeout)
    );
    io.procs.kill(key);
    io.timers.push(
        now + KILL_GRACE,
        key.id,
        key.generation,
        TimerKind::SweepGiveUp,
    );
}

/// A process a sweep tracks ended (or its give-up time came: `give_up`): once none is left,
/// the stop that began the sweep goes on.
pub(super) fn check_sweep(svc: &mut Service, io: &mut Io, give_up: bool) -> Step {
    let key = svc.key();
    let stop_signal = svc.spec.get_stop_signal();
    let State::Sweeping(sweep) = &svc.state else {
        return Step::Done;
    };
    let signal = if sweep.killed {
        Signal::Kill
    } else {
        stop_signal
    };
    if give_up {
        log::error!(
            "service '{}': processes of earlier runs survived SIGKILL for {}s; giving up on them",
            &*svc.name,
            KILL_GRACE.as_secs()
        );
    } else if !io.procs.sweep_done(key, signal) {
        return Step::Done;
    }
    let State::Sweeping(sweep) = std::mem::replace(&mut svc.state, State::Stopped) else {
        unreachable!("matched above");
    };
    svc.state = *sweep.was;
    io.changes.save(svc.id);
    let active = matches!(
        svc.state,
        State::Waiting | State::Backoff { .. } | State::Scheduled
    );
    after_stop(svc, io, sweep.then, active)
}

/// The exit of a process of the run's that the tier tracks one by one: the run's lingering
/// or a sweep may be over.
pub(super) fn on_tracked_exit(svc: &mut Service, io: &mut Io, now: Instant) -> Step {
    match &svc.state {
        State::Sweeping(_) => check_sweep(svc, io, false),
        // Not before `after_reap`: it decides what a run that ended by itself left.
        State::Running(run) if matches!(run.phase, Phase::Lingering { followed: true, .. }) => {
            check_linger(svc, io, now)
        }
        _ => Step::Done,
    }
}

/// Sends the stop signal to a live run's process group, and nothing else: the first pass of
/// a stop of many services. Returns whether it was sent (then [`begin_stop`] does not send it
/// again).
pub(super) fn signal_group_first(svc: &Service, procs: &mut dyn Processes) -> bool {
    svc.run().is_some_and(|r| r.is_live() && r.stop.is_none())
        && procs.signal_group(svc.key(), svc.spec.get_stop_signal())
}
