//! `delete` of services that depend on each other removes them wave by wave, dependents
//! first, and returns as soon as the last wave is gone, whether they were running or not.
//! Guards a defect: the call once waited for an unrelated wake-up (29 s in one run, until
//! shutdown in another).

use crate::prelude::*;
use sheepdog::{Condition, ErrorKind};
use std::time::{Duration, Instant};

/// Far more than a delete of stopped services takes.
const PROMPT: Duration = Duration::from_secs(3);

fn three_waves(h: &Harness) -> TestResult {
    let sup = h.sup();
    sup.start(h.sh("db", "exec sleep 600"))?;
    sup.start(
        h.sh("api", "exec sleep 600")
            .after("db", Condition::Started),
    )?;
    sup.start(
        h.sh("web", "exec sleep 600")
            .after("api", Condition::Started),
    )?;
    assert_eq!(sup.plan_stop("all")?.len(), 3, "three waves");
    Ok(())
}

fn delete_all_promptly(h: &Harness) -> TestResult {
    let sup = h.sup();
    let t = Instant::now();
    assert_eq!(sup.delete("all")?, 3, "the delete acts on every service");
    assert!(t.elapsed() < PROMPT, "delete took {:?}", t.elapsed());
    assert!(sup.list()?.is_empty(), "nothing is left");
    for name in ["db", "api", "web"] {
        assert_eq!(
            sup.describe(name).map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::NotFound),
            "{name} is deleted"
        );
    }
    Ok(())
}

#[test]
fn deleting_a_stopped_fleet_of_three_waves_returns_at_once() -> TestResult {
    let h = Harness::new()?;
    three_waves(&h)?;
    assert_eq!(h.sup().stop("all")?, 3, "the stop acts on every service");
    delete_all_promptly(&h)?;
    h.finish()
}

#[test]
fn deleting_a_running_fleet_of_three_waves_returns_once_it_is_gone() -> TestResult {
    let h = Harness::new()?;
    three_waves(&h)?;
    delete_all_promptly(&h)?;
    h.finish()
}
