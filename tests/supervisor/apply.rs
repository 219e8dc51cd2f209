//! `apply` converges to a fleet: it starts what is new, restarts what changed, leaves alone
//! what did not, deletes what is gone (with `Prune::Yes` only), and reports a service that
//! cannot start while the others still start.

use crate::prelude::*;
use sheepdog::{Fleet, Prune, ServiceSpec};

#[test]
fn apply_adds_changes_and_prunes() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh("old", "exec sleep 600"))?;
    let v1 = Fleet::new([h.sh("a", "exec sleep 600"), h.sh("b", "exec sleep 600")]);
    let applied = h.sup().apply(&v1, Prune::No)?;
    assert_eq!(
        (applied.started.clone(), applied.deleted.clone()),
        (vec!["a".into(), "b".into()], vec![]),
        "(started, deleted)"
    );
    assert!(h.sup().describe("old").is_ok(), "Prune::No keeps it");

    let a_pid = h.sup().describe("a")?.pid();
    let b_pid = h.sup().describe("b")?.pid();
    let v2 = Fleet::new([h.sh("a", "exec sleep 601"), h.sh("b", "exec sleep 600")]);
    let applied = h.sup().apply(&v2, Prune::Yes)?;
    assert_eq!(applied.restarted, ["a"], "restarted");
    assert_eq!(applied.unchanged, ["b"], "unchanged");
    assert_eq!(applied.deleted, ["old"], "deleted");
    assert_ne!(h.sup().describe("a")?.pid(), a_pid, "a runs anew");
    assert_eq!(h.sup().describe("b")?.pid(), b_pid, "b is left alone");
    assert!(h.sup().describe("old").is_err(), "old is gone");

    // A service that cannot start is reported, and the others still start.
    let v3 = Fleet::new([
        h.sh("a", "exec sleep 601"),
        ServiceSpec::new("broken", "/no/such/program"),
        h.sh("c", "exec sleep 600"),
    ]);
    let applied = h.sup().apply(&v3, Prune::Yes)?;
    assert_eq!(applied.failed.len(), 1, "one failed: {applied:?}");
    assert!(
        applied.failed[0].1.contains("not found"),
        "it says why: {applied:?}"
    );
    assert_eq!(applied.started, ["c"], "started");
    assert_eq!(applied.deleted, ["b"], "deleted");
    h.finish()
}
