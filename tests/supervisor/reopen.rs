//! The registry survives the host: a reopen restores every definition byte for byte, its
//! id (never reused) and its desired state (up: resurrected; down: stays down, with its last
//! exit); `resurrect(false)` starts nothing.

use crate::prelude::*;
use sheepdog::{ErrorKind, Status, Supervisor};

#[test]
fn reopen_restores_definitions_ids_and_desired_state() -> TestResult {
    let mut h = Harness::new()?;
    let up = h.sup().start(h.sh("up", "exec sleep 60").env("X", "1"))?;
    let down = h.sup().start(h.sh("down", "exec sleep 60"))?;
    let gone = h.sup().start(h.sh("gone", "exec sleep 60"))?;
    h.sup().stop("down")?;
    h.sup().delete("gone")?;
    h.reopen()?;

    let up2 = h.sup().describe("up")?;
    assert_eq!(up2.id(), up.id(), "the id survives");
    assert_eq!(up2.spec(), up.spec(), "the spec survives byte for byte");
    assert_eq!(up2.status(), Status::Online, "desired up: resurrected");
    assert_ne!(up2.pid(), up.pid(), "resurrected as a new process");
    let down2 = h.sup().describe("down")?;
    assert_eq!(down2.id(), down.id(), "the id survives");
    assert_eq!(down2.status(), Status::Stopped, "desired down: stays down");
    assert!(down2.last_exit().is_some(), "the last exit survives");
    assert_eq!(
        h.sup().describe("gone").map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "a deleted service stays deleted"
    );
    let next = h.sup().start(h.sh("next", "exec sleep 60"))?;
    assert!(
        next.id() > gone.id(),
        "ids are never reused ({} after {})",
        next.id(),
        gone.id()
    );
    assert_eq!(
        h.sup().describe(&up.id().to_string())?.name(),
        "up",
        "a service is found by its id"
    );
    h.finish()
}

#[test]
fn resurrect_can_be_turned_off() -> TestResult {
    let mut h = Harness::new()?;
    h.sup().start(h.sh("up", "exec sleep 60"))?;
    h.take().shutdown()?;
    h.open(Supervisor::builder().resurrect(false))?;
    assert_eq!(
        h.sup().describe("up")?.status(),
        Status::Stopped,
        "not resurrected"
    );
    let left = h.tagged();
    assert!(left.is_empty(), "nothing was started: {left:?}");
    h.sup().restart("up")?;
    assert_eq!(
        h.sup().describe("up")?.status(),
        Status::Online,
        "a restart starts it"
    );
    h.finish()
}
