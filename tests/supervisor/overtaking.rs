//! Two operations on one service, the second issued while the first still waits on the
//! supervision thread: every call returns within its documented bound, says what became of
//! it, and the service ends in the state of the last call.
//!
//! A stop overtaken by a start once waited for a "no run" that never came: the start brought
//! up a new run, and the stop's caller stayed blocked until some later call stopped the
//! service again.

use crate::prelude::*;
use sheepdog::{ErrorKind, Ready, ServiceSpec, Status, Supervisor};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after the first call began the stop the second one is made.
const OVERTAKE_AFTER: Duration = Duration::from_millis(200);
/// The stop timeout of the service: the handler fits in it.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The documented bound of a call that waits for one stop and one spawn: the stop timeout,
/// the SIGKILL grace and log drain after it, and a margin for a loaded machine.
fn bound() -> Duration {
    STOP_TIMEOUT + sheepdog::STOP_OVERHEAD + Duration::from_secs(2)
}

/// A service whose stop signal handler takes a second before it exits; it is ready once
/// the handler is in place.
fn slow_stopper(h: &Harness, variant: &str) -> ServiceSpec {
    h.sh(
        "r",
        "trap 'sleep 1; exit 0' TERM; echo trapped; while :; do sleep 0.1; done",
    )
    .env("VARIANT", variant)
    .ready(Ready::LogLine("trapped".into()))
    .stop_timeout(STOP_TIMEOUT)
}

/// Runs `call` on a thread of its own; the returned handle gives its result, or fails the
/// test if it does not come within `bound`.
struct Call<T> {
    what: &'static str,
    rx: crossbeam_channel::Receiver<(T, Duration)>,
}

impl<T: Send + 'static> Call<T> {
    fn spawn(what: &'static str, call: impl FnOnce() -> T + Send + 'static) -> Call<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let t = Instant::now();
            let result = call();
            let _ = tx.send((result, t.elapsed()));
        });
        Call { what, rx }
    }

    fn join(self, bound: Duration) -> TestResult<T> {
        match self.rx.recv_timeout(bound) {
            Ok((result, _took)) => Ok(result),
            Err(_) => Err(Failure::new(format!(
                "{} did not return within {bound:?}",
                self.what
            ))),
        }
    }
}

/// Waits until the first call has begun the stop (the service is `Stopping`), then a
/// little longer, so the second call overtakes it however slowly the first thread started.
fn overtake_while_stopping(sup: &Supervisor) -> TestResult {
    wait_until(SECS_10, || {
        (sup.describe("r").ok()?.status() == Status::Stopping).then_some(())
    })
    .context("the first call began the stop")?;
    std::thread::sleep(OVERTAKE_AFTER);
    Ok(())
}

/// A harness with the slow stopper running, and a shared handle on its supervisor.
fn running() -> TestResult<(Harness, Arc<Supervisor>)> {
    let mut h = Harness::new()?;
    let sup = Arc::new(h.take());
    sup.start(slow_stopper(&h, "a"))?;
    sup.wait_for("r", Status::Online, SECS_5)?;
    Ok((h, sup))
}

fn finish(mut h: Harness, sup: Arc<Supervisor>) -> TestResult {
    h.sup = Some(Arc::try_unwrap(sup).ok().context("every call returned")?);
    h.finish()
}

fn stop_overtaken_by(
    second: impl FnOnce(&Harness, &Supervisor) -> TestResult<Status>,
) -> TestResult {
    let (h, sup) = running()?;
    let stopping = Call::spawn("stop", {
        let sup = sup.clone();
        move || sup.stop("r")
    });
    overtake_while_stopping(&sup)?;
    let status = second(&h, &sup)?;
    assert!(status.is_running(), "the later start won: {status}");
    assert_eq!(stopping.join(bound())??, 1, "the stop returned");
    sup.wait_for("r", Status::Online, SECS_10)?;
    assert_eq!(
        sup.describe("r")?.status(),
        Status::Online,
        "the service runs, as the last call asked"
    );
    finish(h, sup)
}

#[test]
fn a_stop_overtaken_by_a_start_returns() -> TestResult {
    stop_overtaken_by(|h, sup| Ok(sup.start(slow_stopper(h, "a"))?.status()))
}

#[test]
fn a_stop_overtaken_by_a_start_with_a_changed_spec_returns() -> TestResult {
    stop_overtaken_by(|h, sup| Ok(sup.start(slow_stopper(h, "b"))?.status()))
}

#[test]
fn a_stop_overtaken_by_a_restart_returns() -> TestResult {
    stop_overtaken_by(|_, sup| {
        assert_eq!(sup.restart("r")?, 1, "the restart acts on the service");
        Ok(sup.describe("r")?.status())
    })
}

#[test]
fn a_restart_overtaken_by_a_stop_returns() -> TestResult {
    let (h, sup) = running()?;
    let restarting = Call::spawn("restart", {
        let sup = sup.clone();
        move || sup.restart("r")
    });
    overtake_while_stopping(&sup)?;
    assert_eq!(sup.stop("r")?, 1, "the stop acts on the service");
    assert_eq!(restarting.join(bound())??, 1, "the restart returned");
    assert_eq!(
        sup.describe("r")?.status(),
        Status::Stopped,
        "the service is stopped, as the last call asked"
    );
    finish(h, sup)
}

#[test]
fn a_start_overtaken_by_a_delete_returns_not_found() -> TestResult {
    let (h, sup) = running()?;
    // A changed spec: the start first stops the running one.
    let starting = Call::spawn("start", {
        let (sup, spec) = (sup.clone(), slow_stopper(&h, "b"));
        move || sup.start(spec)
    });
    overtake_while_stopping(&sup)?;
    assert_eq!(sup.delete("r")?, 1, "the delete acts on the service");
    let err = starting
        .join(bound())?
        .err()
        .context("the start overtaken by a delete fails")?;
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(
        sup.describe("r").map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "the service is deleted, as the last call asked"
    );
    finish(h, sup)
}

#[test]
fn a_stop_overtaken_by_a_delete_returns() -> TestResult {
    let (h, sup) = running()?;
    let stopping = Call::spawn("stop", {
        let sup = sup.clone();
        move || sup.stop("r")
    });
    overtake_while_stopping(&sup)?;
    assert_eq!(sup.delete("r")?, 1, "the delete acts on the service");
    assert_eq!(stopping.join(bound())??, 1, "the stop returned");
    assert!(sup.list()?.is_empty(), "the service is deleted");
    finish(h, sup)
}

#[test]
fn a_wait_for_a_deleted_service_returns_not_found() -> TestResult {
    let mut h = Harness::new()?;
    let sup = Arc::new(h.take());
    // Never ready: it stays `Starting`.
    sup.start(
        h.sh("r", "exec sleep 600")
            .ready(sheepdog::Ready::LogLine("never".into()))
            .ready_timeout(Duration::from_secs(600)),
    )?;
    let waiting = Call::spawn("wait_for", {
        let sup = sup.clone();
        move || sup.wait_for("r", Status::Online, Duration::from_secs(60))
    });
    std::thread::sleep(OVERTAKE_AFTER);
    assert_eq!(sup.delete("r")?, 1, "the delete acts on the service");
    let err = waiting
        .join(bound())?
        .err()
        .context("the wait for a deleted service fails")?;
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    finish(h, sup)
}

/// Shutdown while the first call of each pair still waits: both return.
fn shutdown_during(
    first: impl FnOnce(&Harness, &Arc<Supervisor>) -> Call<Option<ErrorKind>>,
) -> TestResult {
    let (h, sup) = running()?;
    let pending = first(&h, &sup);
    overtake_while_stopping(&sup)?;
    let shutting = Call::spawn("shutdown", {
        let sup = sup.clone();
        move || sup.shutdown()
    });
    shutting.join(bound())??;
    if let Some(kind) = pending.join(bound())? {
        assert_eq!(
            kind,
            ErrorKind::ShutDown,
            "the pending call failed only because of the shutdown"
        );
    }
    finish(h, sup)
}

#[test]
fn shutdown_during_a_stop_lets_it_return() -> TestResult {
    shutdown_during(|_, sup| {
        let sup = sup.clone();
        Call::spawn("stop", move || sup.stop("r").err().map(|e| e.kind()))
    })
}

#[test]
fn shutdown_during_a_restart_lets_it_return() -> TestResult {
    shutdown_during(|_, sup| {
        let sup = sup.clone();
        Call::spawn("restart", move || sup.restart("r").err().map(|e| e.kind()))
    })
}

#[test]
fn shutdown_during_a_start_with_a_changed_spec_lets_it_return() -> TestResult {
    shutdown_during(|h, sup| {
        let (sup, spec) = (sup.clone(), slow_stopper(h, "b"));
        Call::spawn("start", move || sup.start(spec).err().map(|e| e.kind()))
    })
}

#[test]
fn shutdown_during_a_delete_lets_it_return() -> TestResult {
    shutdown_during(|_, sup| {
        let sup = sup.clone();
        Call::spawn("delete", move || sup.delete("r").err().map(|e| e.kind()))
    })
}
