//! `reload` restarts a service's instances one at a time, each once the one before is ready
//! again: a watcher that reads the published table all the while never sees fewer than two
//! of three instances ready. A `start` with a changed spec rolls the same way; a new run
//! that does not become ready stops the roll, the call fails with `NotReady` naming what it
//! left alone, and those instances keep their runs and their old spec, across a reopen too.

use crate::prelude::*;
use sheepdog::{ErrorKind, Event, Ready, ServiceSpec, Status, Supervisor};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn web(h: &Harness, script: &str) -> ServiceSpec {
    h.sh("web", script)
        .ready(Ready::LogLine("^ready$".into()))
        .ready_timeout(Duration::from_secs(5))
        .stop_timeout(Duration::from_secs(2))
        .instances(3)
}

const SLOW_START: &str = "sleep 0.2; echo ready; exec sleep 600";

/// Watches the published table until stopped; returns the fewest instances of `web` seen
/// online at once.
fn watch(sup: Arc<Supervisor>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut fewest = usize::MAX;
        while !done.load(Ordering::Relaxed) {
            let online = sup
                .list()
                .unwrap()
                .iter()
                .filter(|i| i.definition() == "web" && i.status() == Status::Online)
                .count();
            fewest = fewest.min(online);
            std::thread::sleep(Duration::from_millis(1));
        }
        fewest
    })
}

/// Checks that a roll stopped at `web.0`, leaving `web.1` and `web.2` alone: the call's error
/// says so, and so does an event.
fn stopped_at_web0(err: sheepdog::Error, events: &sheepdog::Events) -> TestResult {
    assert_eq!(err.kind(), ErrorKind::NotReady);
    assert_eq!(err.service(), Some("web.0"));
    assert!(
        err.to_string().contains("left as they were: web.1, web.2"),
        "{err}"
    );
    expect_event(
        events,
        SECS_5,
        "ReloadFailed",
        |e| matches!(e, Event::ReloadFailed { name, .. } if name == "web.0"),
    )?;
    Ok(())
}

#[test]
fn a_reload_keeps_all_but_one_instance_ready_throughout() -> TestResult {
    let mut h = Harness::new()?;
    let sup = Arc::new(h.sup.take().unwrap());
    sup.start(web(&h, SLOW_START)).unwrap();
    sup.wait_for("web", Status::Online, SECS_10).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch(sup.clone(), done.clone());
    assert_eq!(sup.reload("web").unwrap(), 3);
    done.store(true, Ordering::Relaxed);
    let fewest = watcher.join().unwrap();
    assert_eq!(fewest, 2, "one instance down at a time, never more");
    for info in sup.list().unwrap() {
        assert_eq!(info.generation(), 2, "{}", info.name());
        assert_eq!(info.status(), Status::Online);
        assert_eq!(info.restarts(), 0, "a reload is no crash");
    }
    h.sup = Some(Arc::into_inner(sup).unwrap());
    h.finish()
}

#[test]
fn a_changed_spec_rolls_in_and_stops_where_a_new_run_is_not_ready() -> TestResult {
    let mut h = Harness::new()?;
    let sup = Arc::new(h.sup.take().unwrap());
    let old = web(&h, SLOW_START);
    sup.start(old.clone()).unwrap();
    sup.wait_for("web", Status::Online, SECS_10).unwrap();
    // A good change rolls through, keeping two ready.
    let good = web(&h, "sleep 0.1; echo ready; exec sleep 601");
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch(sup.clone(), done.clone());
    let first = sup.start(good.clone()).unwrap();
    done.store(true, Ordering::Relaxed);
    assert_eq!(watcher.join().unwrap(), 2);
    assert_eq!((first.name(), first.status()), ("web.0", Status::Online));
    assert!(sup.list().unwrap().iter().all(|i| i.spec() == &good));
    // A bad one stops at the first instance.
    let events = sup.subscribe();
    let bad = web(&h, "echo not today >&2; exit 1");
    stopped_at_web0(sup.start(bad.clone()).unwrap_err(), &events)?;
    for name in ["web.1", "web.2"] {
        let info = sup.describe(name).unwrap();
        assert_eq!(info.spec(), &good, "{name} keeps the spec it had");
        assert_eq!(info.status(), Status::Online, "{name} keeps running");
    }
    assert_eq!(sup.describe("web.0").unwrap().spec(), &bad);
    h.sup = Some(Arc::into_inner(sup).unwrap());
    h.reopen().unwrap();
    for name in ["web.1", "web.2"] {
        let info = h.sup().describe(name).unwrap();
        assert_eq!(info.spec(), &good, "{name}: the registry kept the old spec");
    }
    h.finish()
}

#[test]
fn a_reload_whose_new_run_misses_its_readiness_leaves_the_rest_running() -> TestResult {
    let mut h = Harness::new()?;
    let sup = Arc::new(h.sup.take().unwrap());
    let flag = h.dir.path().join("broken");
    // Once the flag exists, a new run starts but never says it is ready.
    let script = format!(
        "if [ -e {} ]; then exec sleep 600; fi; echo ready; exec sleep 600",
        flag.display()
    );
    let spec = web(&h, &script).ready_timeout(Duration::from_millis(500));
    sup.start(spec).unwrap();
    sup.wait_for("web", Status::Online, SECS_10).unwrap();
    let before: Vec<Option<u32>> = sup.list().unwrap().iter().map(|i| i.pid()).collect();
    std::fs::write(&flag, "").unwrap();
    let events = sup.subscribe();
    stopped_at_web0(sup.reload("web").unwrap_err(), &events)?;
    let after: Vec<Option<u32>> = sup.list().unwrap().iter().map(|i| i.pid()).collect();
    assert_ne!(after[0], before[0], "web.0 was restarted");
    assert_eq!(
        &after[1..],
        &before[1..],
        "web.1 and web.2 were not touched"
    );
    for name in ["web.1", "web.2"] {
        let info = sup.describe(name).unwrap();
        assert_eq!(info.status(), Status::Online, "{name} still ready");
        assert_eq!(info.generation(), 1, "{name}");
    }
    h.sup = Some(Arc::into_inner(sup).unwrap());
    h.finish()
}
