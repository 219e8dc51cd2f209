//! `delete` of services that depend on each other removes them wave by wave, dependents
//! first, and returns as soon as the last wave is gone, whether they were running or not.

use crate::common::*;
use sheepdog::{Condition, ErrorKind};
use std::time::{Duration, Instant};

/// Far more than a delete of stopped services takes; the defect this guards against made
/// the call wait for an unrelated wake-up (29 s in one run, until shutdown in another).
const PROMPT: Duration = Duration::from_secs(3);

fn three_waves(h: &Harness) {
    let sup = h.sup();
    sup.start(h.sh("db", "exec sleep 600")).unwrap();
    sup.start(
        h.sh("api", "exec sleep 600")
            .after("db", Condition::Started),
    )
    .unwrap();
    sup.start(
        h.sh("web", "exec sleep 600")
            .after("api", Condition::Started),
    )
    .unwrap();
    assert_eq!(sup.plan_stop("all").unwrap().len(), 3);
}

fn delete_all_promptly(h: &Harness) {
    let sup = h.sup();
    let t = Instant::now();
    assert_eq!(sup.delete("all").unwrap(), 3);
    assert!(t.elapsed() < PROMPT, "delete took {:?}", t.elapsed());
    assert!(sup.list().unwrap().is_empty());
    for name in ["db", "api", "web"] {
        assert_eq!(
            sup.describe(name).unwrap_err().kind(),
            ErrorKind::NotFound,
            "{name}"
        );
    }
}

#[test]
fn deleting_a_stopped_fleet_of_three_waves_returns_at_once() {
    let h = Harness::new();
    three_waves(&h);
    assert_eq!(h.sup().stop("all").unwrap(), 3);
    delete_all_promptly(&h);
    h.finish();
}

#[test]
fn deleting_a_running_fleet_of_three_waves_returns_once_it_is_gone() {
    let h = Harness::new();
    three_waves(&h);
    delete_all_promptly(&h);
    h.finish();
}
