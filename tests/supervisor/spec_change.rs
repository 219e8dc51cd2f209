//! `start` of a service that runs: with an equal spec it is a no-op; with a changed spec the
//! old run is stopped first and the new one started, under the same id.

use crate::prelude::*;

#[test]
fn start_with_an_equal_spec_is_a_no_op_and_a_changed_one_restarts() -> TestResult {
    let h = Harness::new()?;
    let first = h.sup().start(h.sh("svc", "exec sleep 60"))?;
    let again = h.sup().start(h.sh("svc", "exec sleep 60"))?;
    assert_eq!(again.pid(), first.pid(), "equal spec: untouched");
    let changed = h.sup().start(h.sh("svc", "exec sleep 61"))?;
    assert_ne!(changed.pid(), first.pid(), "a changed spec runs anew");
    assert_eq!(
        changed.spec().get_args()[1],
        "exec sleep 61",
        "the new spec is the one in force"
    );
    let old = first.pid().context("a started service has a pid")?;
    assert!(!is_alive(old), "the old run was stopped first");
    assert_eq!(changed.id(), first.id(), "the id is kept");
    h.finish()
}
