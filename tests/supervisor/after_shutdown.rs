//! After `shutdown` (which may be called again), the last published state stays readable
//! (`describe`, `list`, plans, stats, logs) and every call that needs the supervision thread
//! fails with `ShutDown`; a subscription made before ends after the shutdown's last events.
//! The behaviour `Supervisor::shutdown` documents, method by method.

use crate::prelude::*;
use sheepdog::{ErrorKind, Event, Fleet, Prune, Status, Stream};
use std::time::Duration;

#[test]
fn after_shutdown_reads_show_the_final_state_and_changes_fail_with_shut_down() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh("nap", "echo hello; exec sleep 600"))?;
    let log = h.sup().log_path("nap", Stream::Stdout)?;
    wait_lines(&log, 1, SECS_5)?;
    let cursor = h.sup().follow("nap", Stream::Stdout)?.cursor();
    h.sup().shutdown()?;
    h.sup().shutdown().context("a second shutdown")?;
    let sup = h.sup();

    let refused = [
        ("start", sup.start(h.sh("nap", "true")).err()),
        ("start_many", sup.start_many([h.sh("x", "true")]).err()),
        ("stop", sup.stop("nap").err()),
        ("restart", sup.restart("nap").err()),
        ("restart all", sup.restart("all").err()),
        ("delete", sup.delete("nap").err()),
        (
            "wait_for",
            sup.wait_for("nap", Status::Online, Duration::from_secs(1))
                .err(),
        ),
        ("history", sup.history("nap", 1).err()),
        ("explain", sup.explain("nap").err()),
        ("apply", sup.apply(&Fleet::new([]), Prune::Yes).err()),
    ];
    for (method, err) in refused {
        assert_eq!(
            err.map(|e| e.kind()),
            Some(ErrorKind::ShutDown),
            "{method} after shutdown"
        );
    }
    assert_eq!(
        sup.subscribe().count(),
        0,
        "subscribe after shutdown: no events"
    );

    assert_eq!(sup.describe("nap")?.status(), Status::Stopped, "describe");
    assert_eq!(sup.list()?.len(), 1, "list");
    sup.wait_for("nap", Status::Stopped, Duration::from_secs(1))
        .context("wait_for a status already reached")?;
    assert_eq!(sup.plan_start("all")?, [["nap"]], "plan_start");
    assert_eq!(sup.plan_stop("all")?, [["nap"]], "plan_stop");
    let stats = sup.stats("all")?;
    assert_eq!(stats.len(), 1, "stats of every service");
    assert_eq!(stats[0].processes(), 0, "nothing runs");
    assert_eq!(sup.log_path("nap", Stream::Stdout)?, log, "log_path");
    assert_eq!(sup.tail("nap", Stream::Stdout, 1)?, ["hello"], "tail");
    let mut from_start = sup.follow_from_start("nap", Stream::Stdout)?;
    assert_eq!(
        from_start.recv_timeout(SECS_5).as_deref(),
        Some("hello"),
        "follow_from_start"
    );
    let mut resumed = sup.follow_from("nap", Stream::Stdout, cursor)?;
    assert_eq!(
        resumed.recv_timeout(Duration::from_millis(100)),
        None,
        "follow_from a cursor at the end: nothing new"
    );
    h.finish()
}

#[test]
fn a_subscription_ends_after_the_last_events_of_shutdown() -> TestResult {
    let h = Harness::new()?;
    let events = h.sup().subscribe();
    h.sup().start(h.sh("x", "exec sleep 60"))?;
    h.sup().shutdown()?;
    let rest: Vec<Event> = events.collect();
    assert!(
        matches!(rest.last(), Some(Event::Stopped { .. })),
        "the last event is the service's stop: {rest:?}"
    );
    h.finish()
}
