//! Fleet files: the demo fleet runs, `apply` converges, and the `fleet` runner stops its
//! fleet on SIGTERM with nothing left.

use crate::common::*;
use sheepdog::{Fleet, Prune, ServiceSpec, Status};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

fn tagged(fleet: &Fleet, token: &str) -> Fleet {
    Fleet::new(
        fleet
            .services()
            .iter()
            .map(|s| s.clone().env(TOKEN_VAR, token)),
    )
}

#[test]
fn the_demo_fleet_loads_and_runs() {
    let h = Harness::new();
    let demo =
        Fleet::from_toml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.toml")).unwrap();
    let names: Vec<&str> = demo.services().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["setup", "ticker", "flaky", "chatty"]);
    let applied = h.sup().apply(&tagged(&demo, &h.token), Prune::Yes).unwrap();
    assert_eq!(applied.started.len(), 4, "{applied:?}");
    assert!(applied.failed.is_empty(), "{applied:?}");
    h.sup().wait_for("setup", Status::Exited, SECS_5).unwrap();
    h.sup().wait_for("chatty", Status::Online, SECS_10).unwrap();
    assert_eq!(status(h.sup(), "ticker"), Status::Online);
    h.finish();
}

#[test]
fn apply_adds_changes_and_prunes() {
    let h = Harness::new();
    h.sup().start(h.sh("old", "exec sleep 600")).unwrap();
    let v1 = Fleet::new([h.sh("a", "exec sleep 600"), h.sh("b", "exec sleep 600")]);
    let applied = h.sup().apply(&v1, Prune::No).unwrap();
    assert_eq!(
        (applied.started.clone(), applied.deleted.clone()),
        (vec!["a".into(), "b".into()], vec![])
    );
    assert!(h.sup().describe("old").is_ok(), "Prune::No keeps it");

    let a_pid = h.sup().describe("a").unwrap().pid();
    let b_pid = h.sup().describe("b").unwrap().pid();
    let v2 = Fleet::new([h.sh("a", "exec sleep 601"), h.sh("b", "exec sleep 600")]);
    let applied = h.sup().apply(&v2, Prune::Yes).unwrap();
    assert_eq!(applied.restarted, ["a"]);
    assert_eq!(applied.unchanged, ["b"]);
    assert_eq!(applied.deleted, ["old"]);
    assert_ne!(h.sup().describe("a").unwrap().pid(), a_pid);
    assert_eq!(h.sup().describe("b").unwrap().pid(), b_pid);
    assert!(h.sup().describe("old").is_err());

    // A service that cannot start is reported, and the others still start.
    let v3 = Fleet::new([
        h.sh("a", "exec sleep 601"),
        ServiceSpec::new("broken", "/no/such/program"),
        h.sh("c", "exec sleep 600"),
    ]);
    let applied = h.sup().apply(&v3, Prune::Yes).unwrap();
    assert_eq!(applied.failed.len(), 1, "{applied:?}");
    assert!(applied.failed[0].1.contains("not found"), "{applied:?}");
    assert_eq!(applied.started, ["c"]);
    assert_eq!(applied.deleted, ["b"]);
    h.finish();
}

fn runner() -> PathBuf {
    // target/<profile>/deps/supervisor-… → target/<profile>/examples/fleet. A plain `cargo test`
    // builds it; `cargo test --test supervisor` alone does not.
    let exe = std::env::current_exe().unwrap();
    let runner = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/fleet");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fleet.rs");
    let built = std::fs::metadata(&runner).and_then(|m| m.modified()).ok();
    let written = std::fs::metadata(source)
        .and_then(|m| m.modified())
        .unwrap();
    assert!(
        built.is_some_and(|b| b >= written),
        "{} is missing or older than its source: run `cargo build --example fleet` (a plain `cargo test` builds it)",
        runner.display()
    );
    runner
}

#[test]
fn the_runner_stops_its_fleet_on_sigterm_and_leaves_nothing() {
    let token = new_token();
    let dir = tempfile::tempdir().unwrap();
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
    std::fs::write(&file, fleet.to_toml_string().unwrap()).unwrap();
    let mut child = std::process::Command::new(runner())
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the fleet example is built by cargo test");
    let stdout = child.stdout.take().unwrap();
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
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let output: Vec<String> = rx.try_iter().collect();
    up.unwrap_or_else(|| panic!("the fleet did not come up: {output:?}"));
    assert!(status.success(), "{status:?}: {output:?}");
    assert!(
        output.iter().any(|l| l.contains("stopping the fleet")),
        "{output:?}"
    );
    assert!(
        output
            .iter()
            .any(|l| l.starts_with("two") && l.contains("stopped")),
        "the table shows the stop: {output:?}"
    );
    let gone = wait_until(SECS_5, || tagged_processes(&token).is_empty().then_some(()));
    assert!(
        gone.is_some(),
        "left behind: {:?}",
        tagged_processes(&token)
    );
}

#[test]
fn a_procfile_with_a_dotenv_runs() {
    let h = Harness::new();
    let procfile = h.dir.path().join("Procfile");
    std::fs::write(
        &procfile,
        "# the app\nweb: echo \"$GREETING from web\"; exec sleep 600\nworker: exec sleep 600\n",
    )
    .unwrap();
    std::fs::write(h.dir.path().join(".env"), "GREETING=\"hello there\"\n").unwrap();
    let fleet = Fleet::from_procfile(&procfile).unwrap();
    h.sup()
        .apply(&tagged(&fleet, &h.token), Prune::Yes)
        .unwrap();
    let log = h.sup().log_path("web", sheepdog::Stream::Stdout).unwrap();
    assert_eq!(wait_lines(&log, 1, SECS_5), ["hello there from web"]);
    h.finish();
}

/// Bytes that are not UTF-8, in a Procfile or its `.env`: a parse error naming the line.
#[test]
fn a_procfile_or_dotenv_that_is_not_utf8_is_a_parse_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let procfile = dir.path().join("Procfile");
    std::fs::write(&procfile, b"web: exec sleep 600\nworker: echo caf\xe9\n").unwrap();
    let err = Fleet::from_procfile(&procfile).unwrap_err();
    assert_eq!(err.kind(), sheepdog::ErrorKind::InvalidSpec, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("'{}': line 2, column 17", procfile.display())),
        "{err}"
    );
    std::fs::write(&procfile, b"web: exec sleep 600\n").unwrap();
    std::fs::write(dir.path().join(".env"), b"A=1\nB=\xff\n").unwrap();
    let err = Fleet::from_procfile(&procfile).unwrap_err();
    assert_eq!(err.kind(), sheepdog::ErrorKind::InvalidSpec, "{err}");
    assert!(err.to_string().contains(".env': line 2, column 3"), "{err}");
}
