//! A service can be defined without being started (supervisord's `autostart=false`): it is
//! stored `Stopped` with its desired state down, so a reopen does not start it either,
//! until it is started by name; then a reopen brings it back. A fleet's `autostart = false`
//! defines new services the same way.

use crate::prelude::*;
use sheepdog::{Fleet, Prune, Status};

#[test]
fn a_defined_service_waits_for_a_start_by_name_across_reopens() -> TestResult {
    let mut h = Harness::new()?;
    let info = h
        .sup()
        .define(h.sh("later", "exec sleep 600").instances(2))
        .unwrap();
    assert_eq!((info.name(), info.status()), ("later.0", Status::Stopped));
    assert!(!info.desired_up());
    assert!(tagged_processes(&h.token).is_empty(), "nothing runs");
    h.reopen().unwrap();
    assert_eq!(
        status(h.sup(), "later.1"),
        Status::Stopped,
        "not resurrected"
    );
    assert!(tagged_processes(&h.token).is_empty());
    assert_eq!(h.sup().start_target("later").unwrap(), 2);
    assert!(
        h.sup()
            .list()
            .unwrap()
            .iter()
            .all(|i| i.status() == Status::Online)
    );
    assert_eq!(
        h.sup().start_target("later").unwrap(),
        0,
        "running: left alone"
    );
    h.reopen().unwrap();
    h.sup().wait_for("later", Status::Online, SECS_10).unwrap();
    h.finish()
}

#[test]
fn autostart_false_in_a_fleet_defines_without_starting() -> TestResult {
    let h = Harness::new()?;
    let text = format!(
        "[[service]]\nname = \"manual\"\nprogram = \"/bin/sleep\"\nargs = [\"600\"]\n\
         autostart = false\nenv = {{ {TOKEN_VAR} = \"{}\" }}\n",
        h.token
    );
    let fleet = Fleet::from_toml_str(&text).unwrap();
    let applied = h.sup().apply(&fleet, Prune::Yes).unwrap();
    assert_eq!(applied.defined, ["manual"]);
    assert!(applied.started.is_empty());
    assert_eq!(status(h.sup(), "manual"), Status::Stopped);
    let again = h.sup().apply(&fleet, Prune::Yes).unwrap();
    assert_eq!(again.unchanged, ["manual"], "applied again: nothing to do");
    h.sup().start_target("manual").unwrap();
    let running = h.sup().apply(&fleet, Prune::Yes).unwrap();
    assert_eq!(
        running.unchanged,
        ["manual"],
        "a running one is left running"
    );
    assert_eq!(status(h.sup(), "manual"), Status::Online);
    h.finish()
}
