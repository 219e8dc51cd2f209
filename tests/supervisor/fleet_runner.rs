//! The `fleet` example, the runner of a fleet file, stops its fleet on SIGTERM (a service
//! that ignores SIGTERM too, after its stop timeout), shows the stop in its table, exits
//! with success, and leaves nothing running.

use crate::prelude::*;
use sheepdog::{Fleet, ServiceSpec};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

/// target/<profile>/deps/supervisor-… → target/<profile>/examples/fleet. A plain
/// `cargo test` builds it; `cargo test --test supervisor` alone does not.
fn runner() -> TestResult<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test binary is in target/<profile>/deps")?;
    let runner = profile.join("examples/fleet");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fleet.rs");
    let built = std::fs::metadata(&runner).and_then(|m| m.modified()).ok();
    let written = std::fs::metadata(source)?.modified()?;
    assert!(
        built.is_some_and(|b| b >= written),
        "{} is missing or older than its source: run `cargo build --example fleet` (a plain \
         `cargo test` builds it)",
        runner.display()
    );
    Ok(runner)
}

#[test]
fn the_runner_stops_its_fleet_on_sigterm_and_leaves_nothing() -> TestResult {
    let token = new_token();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("fleet.toml");
    let fleet = Fleet::new([
        ServiceSpec::new("one", "sh")
            .args(["-c", "sleep 600 & exec sleep 600"])
            .env(TOKEN_VAR, &token),
        ServiceSpec::new("two", "sh")
            .args(["-c", "trap '' TERM; while :; do sleep 1; done"])
            .env(TOKEN_VAR, &token)
            .stop_timeout(Duration::from_millis(300)),
    ]);
    std::fs::write(&file, fleet.to_toml_string()?)?;
    let mut child = std::process::Command::new(runner()?)
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("the fleet example runs")?;
    let stdout = child.stdout.take().context("its stdout is piped")?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let up = wait_until(SECS_10, || {
        (tagged_processes(&token).len() >= 3).then_some(())
    });
    send(child.id(), rustix::process::Signal::TERM);
    let status = child.wait()?;
    let output: Vec<String> = rx.try_iter().collect();
    up.context(format!("the fleet came up: {output:?}"))?;
    assert!(
        status.success(),
        "the runner exits with success: {status:?}: {output:?}"
    );
    assert!(
        output.iter().any(|l| l.contains("stopping the fleet")),
        "it says it stops the fleet: {output:?}"
    );
    assert!(
        output
            .iter()
            .any(|l| l.split_whitespace().nth(1) == Some("two") && l.contains("stopped")),
        "the table shows the stop: {output:?}"
    );
    no_tagged_left(&token, "after the runner exited")
}

/// Sends `signal` to `pid`.
fn send(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}
