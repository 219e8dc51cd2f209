//! Dropping a supervisor is a shutdown: every service is stopped, and a `temporary()` state
//! directory is removed.

use crate::prelude::*;
use sheepdog::{ServiceSpec, Supervisor};

#[test]
fn drop_stops_everything_and_removes_a_temporary_state_dir() -> TestResult {
    let token = new_token();
    let sup = Supervisor::temporary()?;
    let dir = sup.state_dir().to_path_buf();
    sup.start(
        ServiceSpec::new("nap", "sleep")
            .arg("600")
            .env(TOKEN_VAR, &token),
    )?;
    wait_for_tagged(&token, 1, "the service runs")?;
    drop(sup);
    let left = tagged_processes(&token);
    assert!(left.is_empty(), "drop left the service running: {left:?}");
    assert!(!dir.exists(), "drop removed the temporary state directory");
    Ok(())
}
