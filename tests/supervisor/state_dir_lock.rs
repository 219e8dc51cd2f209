//! One supervisor per state directory: a second `open`, in this process or another, is
//! refused (`StateDirLocked`) while the first runs; the lock is released on shutdown.

use crate::prelude::*;
use sheepdog::{ErrorKind, Supervisor};

#[test]
fn a_second_supervisor_on_the_same_dir_is_refused() -> TestResult {
    let h = Harness::new()?;
    let err = Supervisor::open(h.state_dir())
        .err()
        .context("a second open of a directory in use is refused")?;
    assert_eq!(err.kind(), ErrorKind::StateDirLocked, "{err}");
    assert!(
        err.to_string().contains("in use by another supervisor"),
        "the message says why: {err}"
    );
    // Another process is refused too (flock is per open file, and process-wide here).
    let lock = h.state_dir().join("lock");
    let out = std::process::Command::new("flock")
        .arg("-n")
        .arg(&lock)
        .arg("true")
        .status()
        .context("flock(1) runs")?;
    assert!(!out.success(), "another process could take the lock");
    h.finish()
}

#[test]
fn the_lock_is_released_on_shutdown() -> TestResult {
    let mut h = Harness::new()?;
    h.reopen().context("reopen after shutdown")?;
    h.finish()
}
