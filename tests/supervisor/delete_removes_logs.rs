//! `delete` removes a service's logs, rotated ones too, and those of a service that has not
//! run since the supervisor opened: a later service of the same name starts afresh.

use crate::log_rotation::rotated_count;
use crate::prelude::*;
use sheepdog::{LogPolicy, RestartPolicy, Status, Stream};

#[test]
fn delete_removes_both_logs() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(
        h.sh("talker", "echo out; echo oops >&2")
            .restart(RestartPolicy::never()),
    )?;
    h.sup().wait_for("talker", Status::Exited, SECS_5)?;
    let out = h.sup().log_path("talker", Stream::Stdout)?;
    let err = h.sup().log_path("talker", Stream::Stderr)?;
    assert!(out.exists() && err.exists(), "both logs were written");
    h.sup().delete("talker")?;
    assert!(!out.exists() && !err.exists(), "delete removes the logs");
    h.finish()
}

#[test]
fn delete_removes_rotated_logs_and_a_new_service_starts_fresh() -> TestResult {
    let h = Harness::new()?;
    let policy = LogPolicy::default().max_bytes(100).keep(3);
    h.sup().start(
        h.sh("rot", "seq 1 200")
            .restart(RestartPolicy::never())
            .log(policy.clone()),
    )?;
    h.sup().wait_for("rot", Status::Exited, SECS_5)?;
    let base = h.sup().log_path("rot", Stream::Stdout)?;
    assert_eq!(rotated_count(&base), 3, "three rotated files are kept");
    h.sup().delete("rot")?;
    let logs = base.parent().context("logs/")?;
    let left: Vec<_> = std::fs::read_dir(logs)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "delete left logs behind: {left:?}");
    h.sup()
        .start(h.sh("rot", "echo fresh").restart(RestartPolicy::never()))?;
    h.sup().wait_for("rot", Status::Exited, SECS_5)?;
    assert_eq!(
        std::fs::read_to_string(&base)?,
        "fresh\n",
        "the new service's log holds only its own output"
    );
    h.finish()
}

/// The logs of a service that has not run since the supervisor opened (stopped before a
/// reopen) are removed by `delete` too.
#[test]
fn delete_removes_the_logs_of_a_service_that_has_not_run_since_reopen() -> TestResult {
    let mut h = Harness::new()?;
    h.sup().start(h.sh("c", "echo before; exec sleep 600"))?;
    let out = h.sup().log_path("c", Stream::Stdout)?;
    wait_lines(&out, 1, SECS_5)?;
    h.sup().stop("c")?;
    h.reopen()?;
    assert_eq!(h.sup().delete("c")?, 1, "the delete acts on the service");
    let err = out.with_extension("").with_extension("err.log");
    let left: Vec<_> = [&out, &err].into_iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "delete returned, yet {left:?} remain");
    h.sup().start(h.sh("c", "echo after; exec sleep 600"))?;
    let lines = wait_lines(&out, 1, SECS_5)?;
    assert_eq!(lines, ["after"], "the new service starts with a fresh log");
    h.finish()
}
