//! After `shutdown`, the last published state stays readable and every call that needs the
//! supervision thread says it is gone: the behaviour `Supervisor::shutdown` documents, method
//! by method.

use crate::common::*;
use sheepdog::{ErrorKind, Fleet, Prune, Status, Stream};
use std::time::Duration;

#[test]
fn after_shutdown_reads_show_the_final_state_and_changes_fail_with_shut_down() {
    let h = Harness::new();
    h.sup()
        .start(h.sh("nap", "echo hello; exec sleep 600"))
        .unwrap();
    let log = h.sup().log_path("nap", Stream::Stdout).unwrap();
    wait_lines(&log, 1, SECS_5);
    let cursor = h.sup().follow("nap", Stream::Stdout).unwrap().cursor();
    h.sup().shutdown().unwrap();
    h.sup().shutdown().unwrap(); // idempotent
    let sup = h.sup();

    let refused = [
        ("start", sup.start(h.sh("nap", "true")).err()),
        ("start_many", sup.start_many([h.sh("x", "true")]).err()),
        ("stop", sup.stop("nap").err()),
        ("restart", sup.restart("nap").err()),
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
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::ShutDown), "{method}");
    }
    assert_eq!(sup.subscribe().count(), 0, "subscribe after shutdown");

    assert_eq!(sup.describe("nap").unwrap().status(), Status::Stopped);
    assert_eq!(sup.list().unwrap().len(), 1);
    sup.wait_for("nap", Status::Stopped, Duration::from_secs(1))
        .expect("a status already reached");
    assert_eq!(sup.plan_start("all").unwrap(), [["nap"]]);
    assert_eq!(sup.plan_stop("all").unwrap(), [["nap"]]);
    let stats = sup.stats("all").unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].processes(), 0, "nothing runs");
    assert_eq!(sup.log_path("nap", Stream::Stdout).unwrap(), log);
    assert_eq!(sup.tail("nap", Stream::Stdout, 1).unwrap(), ["hello"]);
    let mut from_start = sup.follow_from_start("nap", Stream::Stdout).unwrap();
    assert_eq!(
        from_start.recv_timeout(SECS_5).as_deref(),
        Some("hello"),
        "follow_from_start"
    );
    let mut resumed = sup.follow_from("nap", Stream::Stdout, cursor).unwrap();
    assert_eq!(resumed.recv_timeout(Duration::from_millis(100)), None);
    h.finish();
}
