//! The state directory's disk fills up under a running supervisor: calls that must write
//! fail with `Store` errors (rather than panicking or hanging), the running services (and a
//! crash-looping one) go on, nothing is half-created, and everything works again once there
//! is room; whatever a call on the full disk returned, what `describe` shows after it is
//! what a reopen restores. Needs root (a tmpfs); skipped otherwise.

use crate::prelude::*;
use sheepdog::{Backoff, ErrorKind, RestartPolicy, Status, Supervisor};
use std::sync::Arc;
use std::time::Duration;

/// A call that takes longer than this hangs.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// Shuts down (in time), unmounts, and checks that nothing is left.
fn shut_down_and_check(mut h: Harness, mount: Mount) -> TestResult {
    if let Some(sup) = h.sup.take() {
        within("shutdown", CALL_DEADLINE, move || sup.shutdown())??;
    }
    drop(mount);
    h.finish()
}

/// A harness whose state directory is a 1 MiB tmpfs, not opened yet; `None` (with the skip
/// said) where no tmpfs can be mounted.
fn on_a_small_disk(test: &str) -> TestResult<Option<(Harness, Mount)>> {
    let h = Harness::unopened()?;
    match Mount::tmpfs(&h.state_dir(), "1m") {
        Ok(m) => Ok(Some((h, m))),
        Err(e) => {
            skip(
                test,
                format!("cannot mount a tmpfs ({e}); this test needs root"),
            )?;
            Ok(None)
        }
    }
}

#[test]
fn a_full_state_disk_gives_store_errors_keeps_services_running_and_recovers() -> TestResult {
    let test =
        test_name!("a_full_state_disk_gives_store_errors_keeps_services_running_and_recovers");
    let Some((mut h, mount)) = on_a_small_disk(test)? else {
        return Ok(());
    };
    let sup = Arc::new(Supervisor::open(h.state_dir())?);
    sup.start(h.sh("runner", "exec sleep 600"))?;
    let looper = h
        .sh("looper", "sleep 0.02; exit 1")
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(20))));
    sup.start(looper)?;
    let runner = online_pid(&sup, "runner")?;
    let filler = fill(&h.state_dir())?;

    let fresh = {
        let (sup, spec) = (sup.clone(), h.sh("fresh", "exec sleep 600"));
        within("start on a full disk", CALL_DEADLINE, move || {
            sup.start(spec)
        })?
    };
    let err = fresh
        .err()
        .context("a new service cannot be saved on a full disk")?;
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(
        err.to_string().contains("sheepdog.db"),
        "the error names the state file: {err}"
    );
    assert_eq!(
        sup.describe("fresh").map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "a service that could not be saved is not half-created"
    );
    // A changed spec cannot be saved either; the running one is left alone.
    let changed = {
        let (sup, spec) = (sup.clone(), h.sh("runner", "exec sleep 601"));
        within("a spec change on a full disk", CALL_DEADLINE, move || {
            sup.start(spec)
        })?
    };
    assert_eq!(
        changed.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::Store),
        "a spec change on a full disk"
    );
    assert_eq!(
        online_pid(&sup, "runner")?,
        runner,
        "the runner was left alone"
    );
    let generation = sup.describe("looper")?.generation();
    let went_on = wait_until(SECS_5, || {
        (sup.describe("looper").ok()?.generation() >= generation + 3).then_some(())
    });
    assert!(went_on.is_some(), "the crash loop went on on a full disk");
    answers(&sup);

    std::fs::remove_file(&filler)?;
    let info = sup
        .start(h.sh("fresh", "exec sleep 600"))
        .context("room again: a new service is saved and started")?;
    assert_eq!(info.status(), Status::Online, "the new service runs");
    assert_eq!(
        online_pid(&sup, "runner")?,
        runner,
        "the runner never stopped"
    );
    assert_eq!(sup.stop("looper")?, 1, "the stop acts on the looper");
    h.sup = Some(Arc::try_unwrap(sup).ok().context("no other handle")?);
    h.reopen().context("reopen once there is room")?;
    for name in ["runner", "fresh"] {
        online_pid(h.sup(), name)?;
    }
    assert_eq!(
        status(h.sup(), "looper"),
        Status::Stopped,
        "the stop was kept"
    );
    shut_down_and_check(h, mount)
}

/// A stop, delete or restart on a full disk, whatever it returns: what `describe` shows
/// after the call is what a reopen restores. The README promises that desired states are
/// committed before the call returns; a call that cannot commit must not leave the
/// supervisor showing a state that the next open silently undoes.
#[test]
fn stop_delete_and_restart_on_a_full_disk_show_what_a_reopen_restores() -> TestResult {
    let test = test_name!("stop_delete_and_restart_on_a_full_disk_show_what_a_reopen_restores");
    let Some((mut h, mount)) = on_a_small_disk(test)? else {
        return Ok(());
    };
    h.open(Supervisor::builder())?;
    for name in ["stopped", "deleted", "restarted"] {
        h.sup().start(h.sh(name, "exec sleep 600"))?;
    }
    h.sup().stop("restarted")?;
    let filler = fill(&h.state_dir())?;
    let results = [
        ("stop", "stopped", h.sup().stop("stopped").map(|_| ())),
        ("delete", "deleted", h.sup().delete("deleted").map(|_| ())),
        (
            "restart",
            "restarted",
            h.sup().restart("restarted").map(|_| ()),
        ),
    ];
    // Up (running or on its way) or not; `None` for a service that is gone.
    let up = |sup: &Supervisor, name: &str| {
        sup.describe(name)
            .ok()
            .map(|i| i.status().is_running() || i.status() == Status::Backoff)
    };
    let shown: Vec<Option<bool>> = results.iter().map(|(_, n, _)| up(h.sup(), n)).collect();
    for (what, _, result) in &results {
        if let Err(e) = result {
            assert_eq!(e.kind(), ErrorKind::Store, "{what}: {e}");
        }
    }
    std::fs::remove_file(&filler)?;
    h.reopen()?;
    let problems: Vec<String> = results
        .iter()
        .zip(&shown)
        .filter_map(|((what, name, result), shown)| {
            let restored = up(h.sup(), name);
            let word = |s: &Option<bool>| match s {
                Some(true) => "up",
                Some(false) => "down",
                None => "gone",
            };
            (restored != *shown).then(|| {
                format!(
                    "{what} {name} returned {:?} on the full disk and left it {}; after reopen it is {}",
                    result.as_ref().map_err(|e| e.kind()),
                    word(shown),
                    word(&restored)
                )
            })
        })
        .collect();
    let clean = problems.is_empty();
    shut_down_and_check(h, mount)?;
    assert!(clean, "{}", problems.join("\n"));
    Ok(())
}
