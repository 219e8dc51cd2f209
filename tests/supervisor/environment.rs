//! A service's environment is the host's, with the spec's changes (or only the spec's, with
//! `env_clear`), read when a call starts the service. That a restart by the policy reuses what
//! the start read and an operator's restart reads it again is pinned with an env file
//! (`env_file.rs`): both come from the one launch the start resolves, and the host's own
//! environment cannot be changed soundly while the test binary runs threads. The run's own
//! `SHEEPDOG_RUN` marker wins over one in the spec: it is how containment finds the service's
//! processes.

use crate::prelude::*;
use sheepdog::{Backoff, RestartPolicy, ServiceSpec, Status, Stream};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// `env -0` output as a map.
fn parse_env0(bytes: &[u8]) -> BTreeMap<OsString, OsString> {
    bytes
        .split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| {
            let eq = entry.iter().position(|&b| b == b'=')?;
            Some((
                OsString::from_vec(entry[..eq].to_vec()),
                OsString::from_vec(entry[eq + 1..].to_vec()),
            ))
        })
        .collect()
}

#[test]
fn the_environment_is_the_hosts_with_the_specs_changes() -> TestResult {
    let h = Harness::new()?;
    let host: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    // A variable of the host's for the spec to remove; PATH stays, `env` needs none.
    let removed = host
        .keys()
        .find(|k| *k != "PATH" && *k != TOKEN_VAR)
        .cloned()
        .context("the test process has an environment variable besides PATH")?;
    let spec = ServiceSpec::new("env", "/usr/bin/env")
        .arg("-0")
        .env(TOKEN_VAR, &h.token)
        .env("SPEC_VAR", "from-spec")
        .env_remove(&removed)
        .restart(RestartPolicy::never());
    h.sup().start(spec)?;
    h.sup().wait_for("env", Status::Exited, SECS_5)?;
    let seen = parse_env0(&std::fs::read(h.sup().log_path("env", Stream::Stdout)?)?);
    assert_eq!(
        seen.get(&OsString::from("SPEC_VAR")),
        Some(&OsString::from("from-spec")),
        "the spec's variable"
    );
    assert!(
        !seen.contains_key(&removed),
        "the variable the spec removed, {removed:?}, is gone"
    );
    for (name, value) in &host {
        if *name == removed || *name == TOKEN_VAR || *name == "SHEEPDOG_RUN" {
            continue;
        }
        assert_eq!(
            seen.get(name),
            Some(value),
            "the host's variable {name:?} reaches the service as it is"
        );
    }

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
fn the_runs_own_marker_wins_over_the_specs_in_every_run() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("era", "echo \"${SHEEPDOG_RUN%%:*}\"; sleep 0.02; exit 1")
        .env("SHEEPDOG_RUN", "forged")
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    h.sup().start(spec)?;
    let log = h.sup().log_path("era", Stream::Stdout)?;
    let lines = || lines_of(&log);
    wait_until(SECS_5, || (lines().len() >= 3).then_some(())).context("three runs")?;
    let restarted = lines().len();
    h.sup().restart("era")?;
    wait_until(SECS_5, || (lines().len() > restarted).then_some(()))
        .context("a run after an operator's restart")?;
    h.sup().stop("era")?;
    let all = lines();
    assert!(
        all.iter().all(|l| !l.is_empty() && l != "forged"),
        "the run's own marker wins over the spec's, in runs by the policy and by the operator: {all:?}"
    );
    h.finish()
}
