//! What a run's checks decide: readiness (`Ready`), liveness (`Health`), `sd_notify`
//! messages, and memory limits. A failed check ends the run through
//! [`lifecycle::fail_run`], and the restart policy treats it as a crash.

use super::io::Io;
use super::lifecycle::{self, Step};
use super::service::Service;
use super::timers::TimerKind;
use crate::containment::RunKey;
use crate::events::Event;
use crate::history::Cause;
use crate::notify;
use crate::policy::History;
use crate::probe::{self, Purpose};
use crate::readiness::{Check, Ready};
use std::time::{Duration, Instant, SystemTime};

/// How often a readiness probe (TCP, command) is retried until it passes or times out.
const READY_PROBE_EVERY: Duration = Duration::from_millis(50);
/// Datagrams read from a notify socket per wake: a flood cannot hold the loop.
const NOTIFY_READS_MAX: usize = 64;

fn timer(svc: &Service, io: &mut Io, at: Instant, kind: TimerKind) {
    io.timers.push(at, svc.id, svc.generation, kind);
}

/// Sets up what makes a new run ready, and the deadline for it.
pub(super) fn arm_readiness(svc: &mut Service, io: &mut Io, now: Instant) {
    let spec = svc.spec.clone();
    if spec.is_oneshot() {
        // Done when it exits 0, not ready before: `Starting` while it runs.
        return;
    }
    let after = |d: Duration| crate::duration::deadline(now, d);
    match spec.get_ready() {
        Ready::Immediately => return mark_ready(svc, io, now),
        Ready::After(d) => timer(svc, io, after(*d), TimerKind::ReadyAfter),
        Ready::Tcp(_) | Ready::Command(_) => timer(svc, io, now, TimerKind::ReadyProbe),
        Ready::LogLine(_) | Ready::Notify => {}
    }
    timer(
        svc,
        io,
        after(spec.get_ready_timeout()),
        TimerKind::ReadyTimeout,
    );
}

/// A live run not yet ready, not stopping: what readiness checks act on.
fn awaits_readiness(svc: &Service) -> bool {
    svc.run()
        .is_some_and(|r| !r.ready && r.is_live() && r.stop.is_none())
}

/// The run is ready: `Online`, and its liveness checks begin.
pub(super) fn mark_ready(svc: &mut Service, io: &mut Io, now: Instant) {
    if !awaits_readiness(svc) {
        return;
    }
    let immediately = *svc.spec.get_ready() == Ready::Immediately;
    let health = svc.spec.get_health().cloned();
    let run = svc.run_mut().expect("checked above");
    run.ready = true;
    if !immediately {
        // Recorded at once for `Immediately` (the run's record says so from its start).
        io.store.set_ready(run.record, SystemTime::now());
    }
    io.changes.save(svc.id);
    io.changes.emit(Event::Ready {
        name: svc.name.to_string(),
    });
    if let Some(h) = health {
        let first = h
            .get_initial_delay()
            .saturating_add(if *h.check() == Check::Notify {
                h.get_interval()
            } else {
                Duration::ZERO
            });
        timer(
            svc,
            io,
            crate::duration::deadline(now, first),
            TimerKind::HealthProbe,
        );
    }
}

/// A readiness or liveness timer of the run came due.
pub(super) fn on_timer(svc: &mut Service, io: &mut Io, kind: TimerKind, now: Instant) -> Step {
    match kind {
        TimerKind::ReadyAfter => mark_ready(svc, io, now),
        TimerKind::ReadyTimeout if awaits_readiness(svc) => {
            let reason = format!(
                "not ready within {}",
                crate::duration::format(svc.spec.get_ready_timeout())
            );
            log::warn!("service '{}': {reason}", &*svc.name);
            return lifecycle::fail_run(svc, io, Cause::NotReady, reason, now);
        }
        TimerKind::ReadyProbe if awaits_readiness(svc) => {
            let check = match svc.spec.get_ready() {
                Ready::Tcp(port) => Some(Check::Tcp(*port)),
                Ready::Command(argv) => Some(Check::Command(argv.clone())),
                _ => None,
            };
            if let Some(check) = check {
                let timeout = svc.spec.get_ready_timeout().min(Duration::from_secs(1));
                submit(svc, io, Purpose::Ready, check, timeout);
            }
        }
        TimerKind::HealthProbe => return health_tick(svc, io, now),
        _ => {}
    }
    Step::Done
}

/// A live, ready run, not stopping: what liveness checks act on.
fn is_checked(svc: &Service) -> bool {
    svc.run()
        .is_some_and(|r| r.ready && r.is_live() && r.stop.is_none())
}

fn health_tick(svc: &mut Service, io: &mut Io, now: Instant) -> Step {
    let Some(h) = svc.spec.get_health().cloned() else {
        return Step::Done;
    };
    if !is_checked(svc) {
        return Step::Done;
    }
    if *h.check() == Check::Notify {
        let run = svc.run_mut().expect("checked above");
        let pinged = std::mem::replace(&mut run.checks.pinged, false);
        let outcome = if pinged {
            Ok(())
        } else {
            Err(format!(
                "no WATCHDOG=1 within {}",
                crate::duration::format(h.get_interval())
            ))
        };
        // Counted like a probe; the next tick is scheduled there.
        return health_outcome(svc, io, outcome, now);
    }
    submit(svc, io, Purpose::Health, h.check().clone(), h.get_timeout());
    Step::Done
}

fn submit(svc: &Service, io: &mut Io, purpose: Purpose, check: Check, timeout: Duration) {
    let Some(run) = svc.run() else { return };
    io.probes.submit(probe::Job {
        id: svc.id,
        generation: svc.generation,
        purpose,
        check,
        timeout,
        slot: run.probe.clone(),
    });
}

/// A probe worker's report.
pub(super) fn on_probed(
    svc: &mut Service,
    io: &mut Io,
    report: probe::Report,
    now: Instant,
) -> Step {
    if svc.generation != report.generation {
        return Step::Done;
    }
    match report.purpose {
        Purpose::Ready if awaits_readiness(svc) => match report.outcome {
            Ok(()) => mark_ready(svc, io, now),
            Err(_) => timer(svc, io, now + READY_PROBE_EVERY, TimerKind::ReadyProbe),
        },
        Purpose::Ready => {}
        Purpose::Health if is_checked(svc) => return health_outcome(svc, io, report.outcome, now),
        Purpose::Health => {}
    }
    Step::Done
}

fn health_outcome(svc: &mut Service, io: &mut Io, outcome: probe::Outcome, now: Instant) -> Step {
    let h = svc.spec.get_health().cloned().expect("checked for health");
    let run = svc.run_mut().expect("checked above");
    match outcome {
        Ok(()) => run.checks.health_failures = 0,
        Err(reason) => {
            run.checks.health_failures += 1;
            if run.checks.health_failures >= h.get_failures() {
                let name = svc.name.to_string();
                log::warn!("service '{name}': unhealthy: {reason}");
                io.changes.emit(Event::Unhealthy {
                    name,
                    reason: reason.clone(),
                });
                return lifecycle::fail_run(
                    svc,
                    io,
                    Cause::Unhealthy,
                    format!("unhealthy: {reason}"),
                    now,
                );
            }
        }
    }
    timer(
        svc,
        io,
        crate::duration::deadline(now, h.get_interval()),
        TimerKind::HealthProbe,
    );
    Step::Done
}

/// A line of the run's output matched its `Ready::LogLine` pattern.
pub(super) fn on_ready_line(svc: &mut Service, io: &mut Io, generation: u64, now: Instant) {
    if svc.generation == generation {
        mark_ready(svc, io, now);
    }
}

/// Reads the run's `NOTIFY_SOCKET` datagrams (`sd_notify`): those from a process of the run
/// count, the others are refused and counted.
pub(super) fn on_notify(svc: &mut Service, io: &mut Io, now: Instant) {
    let key = svc.key();
    let name = svc.name.to_string();
    let mut buf = [0u8; 4096];
    let mut ready = false;
    let mut reset = false;
    let mut refused = 0;
    {
        let Some(run) = svc.run_mut() else { return };
        let Some(n) = run.notify.as_mut() else { return };
        for _ in 0..NOTIFY_READS_MAX {
            let datagram = match n.sock.recv(&mut buf) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("service '{name}': cannot read its notify socket: {e}");
                    break;
                }
            };
            let from_run = datagram
                .sender
                .as_ref()
                .is_some_and(|c| io.procs.speaks_for(key, c));
            if !from_run {
                refused += 1;
                if !std::mem::replace(&mut n.logged_refusal, true) {
                    let who = datagram
                        .sender
                        .map_or("an unknown sender".to_string(), |c| {
                            format!("pid {} (uid {})", c.pid, c.uid)
                        });
                    log::warn!(
                        "service '{name}': refused a notify datagram from {who}: not a process of its run (further refusals are only counted)"
                    );
                }
                continue;
            }
            let m = notify::parse(&buf[..datagram.len]);
            ready |= m.ready;
            run.checks.pinged |= m.watchdog;
            if let Some(text) = m.status {
                run.checks.status_text = Some(text);
            }
            reset |= m.restart_reset;
        }
    }
    svc.notify_rejected += refused;
    if reset {
        svc.history = History::default();
    }
    io.changes.touch(svc.id);
    if ready {
        mark_ready(svc, io, now);
    }
}

/// The services with a memory limit, measured: one over its limit for two samples in a row
/// is ended (and restarted by its policy). Returns the keys of those to end, with why; and
/// whether any limited service runs (the sampling then goes on).
pub(super) fn over_memory<'a>(
    services: impl Iterator<Item = &'a mut Service>,
    io: &mut Io,
) -> (Vec<(RunKey, String)>, bool) {
    let mut limited: Vec<(&mut Service, u64)> = services
        .filter(|s| is_checked_or_starting(s))
        .filter_map(|s| {
            let limit = s.spec.get_max_memory()?;
            Some((s, limit))
        })
        .collect();
    if limited.is_empty() {
        return (Vec::new(), false);
    }
    let keys: Vec<RunKey> = limited.iter().map(|(s, _)| s.key()).collect();
    let used = io.procs.memory(&keys);
    let mut over = Vec::new();
    for ((svc, limit), used) in limited.iter_mut().zip(used) {
        let key = svc.key();
        let name = svc.name.to_string();
        let run = svc.run_mut().expect("filtered above");
        if used > *limit {
            run.checks.memory_strikes += 1;
            if run.checks.memory_strikes >= 2 {
                let reason = format!("memory limit: {} MiB over {} MiB", used >> 20, *limit >> 20);
                log::warn!("service '{name}': {reason}");
                over.push((key, reason));
            }
        } else {
            run.checks.memory_strikes = 0;
        }
    }
    (over, true)
}

/// A live run not stopping, ready or not: what memory sampling measures.
fn is_checked_or_starting(svc: &Service) -> bool {
    svc.run().is_some_and(|r| r.is_live() && r.stop.is_none())
}
