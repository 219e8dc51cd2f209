//! Why a service is in its status, in words; and when a dependency counts as met (one answer
//! for both the start that waits on it and the explanation of that wait).

use super::service::{Service, State};
use crate::history::{Explanation, ordinal};
use crate::info::Status;
use crate::policy::Backoff;
use crate::readiness::{Condition, Dependency};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Whether `dep` is met by the services as they are: `Started` by a run that is up (its main
/// process runs and no stop was asked for), `Ready` by an online service, `Exited0` by one
/// that exited with code 0. A dependency on a spec with instances is met when every
/// instance meets it.
pub(super) fn dependency_met(dep: &Dependency, services: &BTreeMap<u64, Service>) -> bool {
    let mut named = services
        .values()
        .filter(|s| *s.name == dep.name || s.spec.name() == dep.name)
        .peekable();
    named.peek().is_some()
        && named.all(|d| match dep.condition {
            Condition::Started => d.is_up(),
            Condition::Ready => d.status() == Status::Online,
            Condition::Exited0 => {
                d.status() == Status::Exited
                    && d.last_exit.as_ref().is_some_and(|e| e.code() == Some(0))
            }
        })
}

/// Whether every dependency of `svc` is met.
pub(super) fn dependencies_met(svc: &Service, services: &BTreeMap<u64, Service>) -> bool {
    svc.spec
        .get_after()
        .iter()
        .all(|dep| dependency_met(dep, services))
}

/// Why `svc` is in its status, from the engine's own state and the policy.
pub(super) fn explain(
    svc: &Service,
    services: &BTreeMap<u64, Service>,
    now: Instant,
) -> Explanation {
    let fmt = crate::duration::format;
    let secs = |d: Duration| format!("{:.1}s", d.as_secs_f64());
    let policy = svc.spec.restart_policy();
    let status = svc.status();
    let text = match &svc.state {
        State::Waiting => {
            let unmet: Vec<String> = svc
                .spec
                .get_after()
                .iter()
                .filter(|d| !dependency_met(d, services))
                .map(|d| format!("{} to be {:?}", d.name, d.condition).to_lowercase())
                .collect();
            format!("waiting for {}", unmet.join(", "))
        }
        State::Running(run) if status == Status::Starting && svc.spec.is_oneshot() => format!(
            "one-shot task running (pid {}, up {}); done once it exits 0",
            run.pid,
            secs(run.started_at.elapsed().unwrap_or_default())
        ),
        State::Running(_) if status == Status::Starting => format!(
            "running, not ready yet ({:?}; gives up after {})",
            svc.spec.get_ready(),
            fmt(svc.spec.get_ready_timeout())
        ),
        State::Running(run) if status == Status::Online => {
            let up = run.started_at.elapsed().unwrap_or_default();
            format!(
                "pid {}, up {}, {} automatic restarts so far",
                run.pid,
                secs(up),
                svc.restarts
            )
        }
        State::Running(_) | State::Sweeping(_) => {
            "the stop signal was sent; waiting for the process group to end".to_string()
        }
        State::Backoff { at } => {
            let left = at.saturating_duration_since(now);
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
        State::Scheduled => match &svc.last_exit {
            Some(e) => format!("a scheduled job between runs; the last: {e}"),
            None => "a scheduled job waiting for its first run".to_string(),
        },
        State::Stopped => {
            "stopped by the operator (or shutdown); restart or start it to run it again".to_string()
        }
        State::Exited if svc.spec.is_oneshot() => match &svc.last_exit {
            Some(e) if e.success() => format!("done: the one-shot task ended with {e}"),
            Some(e) => format!("{e}; its restart policy does not restart that"),
            None => "ended".to_string(),
        },
        State::Exited => match &svc.last_exit {
            Some(e) => format!("{e}; its restart policy does not restart that"),
            None => "ended; its restart policy does not restart that".to_string(),
        },
        State::Errored(error) => match (error, &svc.last_exit) {
            (Some(e), _) => format!("{e}"),
            (None, Some(e)) => format!(
                "gave up after {} automatic restarts; last {e}",
                svc.restarts
            ),
            (None, None) => "gave up".to_string(),
        },
    };
    Explanation { status, text }
}
