//! A service's environment is the host's, with the spec's changes (or only the spec's, with
//! `env_clear`), read when a call starts the service: restarts by the policy reuse it, an
//! operator's restart reads the host's again. The run's own `SHEEPDOG_RUN` marker wins over
//! one in the spec: it is how containment finds the service's processes.

use crate::prelude::*;
use sheepdog::{Backoff, RestartPolicy, ServiceSpec, Status, Stream};

#[test]
fn the_environment_is_the_hosts_with_the_specs_changes() -> TestResult {
    let h = Harness::new()?;
    std::env::set_var("SHEEPDOG_HOST_ONLY", "from-host");
    std::env::set_var("SHEEPDOG_REMOVE_ME", "x");
    let spec = h
        .sh(
            "env",
            "echo \"$SHEEPDOG_HOST_ONLY|$SPEC_VAR|${SHEEPDOG_REMOVE_ME-unset}\"",
        )
        .env("SPEC_VAR", "from-spec")
        .env_remove("SHEEPDOG_REMOVE_ME")
        .restart(RestartPolicy::never());
    h.sup().start(spec)?;
    h.sup().wait_for("env", Status::Exited, SECS_5)?;
    let out = std::fs::read_to_string(h.sup().log_path("env", Stream::Stdout)?)?;
    assert_eq!(
        out, "from-host|from-spec|unset\n",
        "the host's variable, the spec's, and the one the spec removed"
    );

    let cleared = ServiceSpec::new("clear", "/bin/sh")
        .args(["-c", "env | sort"])
        .env_clear()
        .env("ONLY", "1")
        .restart(RestartPolicy::never());
    h.sup().start(cleared)?;
    h.sup().wait_for("clear", Status::Exited, SECS_5)?;
    let out = std::fs::read_to_string(h.sup().log_path("clear", Stream::Stdout)?)?;
    assert!(
        out.contains("ONLY=1"),
        "env_clear keeps the spec's variables: {out}"
    );
    assert!(
        !out.contains("SHEEPDOG_HOST_ONLY"),
        "env_clear drops the host's variables: {out}"
    );
    h.finish()
}

#[test]
fn restarts_by_the_policy_reuse_the_environment_of_their_start() -> TestResult {
    let h = Harness::new()?;
    std::env::set_var("SHEEPDOG_TEST_ERA", "first");
    let spec = h
        .sh(
            "era",
            "echo \"$SHEEPDOG_TEST_ERA ${SHEEPDOG_RUN%%:*}\"; sleep 0.02; exit 1",
        )
        .env("SHEEPDOG_RUN", "forged")
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    h.sup().start(spec)?;
    let log = h.sup().log_path("era", Stream::Stdout)?;
    let lines = || lines_of(&log);
    wait_until(SECS_5, || (lines().len() >= 2).then_some(())).context("two runs")?;
    std::env::set_var("SHEEPDOG_TEST_ERA", "second");
    let seen = lines().len();
    wait_until(SECS_5, || (lines().len() >= seen + 3).then_some(())).context("three more runs")?;
    let restarted = lines().len();
    h.sup().restart("era")?;
    wait_until(SECS_5, || {
        lines()[restarted..]
            .iter()
            .any(|l| l.starts_with("second"))
            .then_some(())
    })
    .context("an operator's restart reads the host's environment again")?;
    h.sup().stop("era")?;
    let all = lines();
    assert!(
        all[..restarted].iter().all(|l| l.starts_with("first ")),
        "policy restarts kept the environment of the start: {all:?}"
    );
    assert!(
        all.iter()
            .all(|l| !l.ends_with(" forged") && l.len() > "first ".len()),
        "the run's own marker wins over the spec's: {all:?}"
    );
    h.finish()
}
