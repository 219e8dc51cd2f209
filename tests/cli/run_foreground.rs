//! `sheepdog run` where a new user tripped over the runner: `--logs` shows both streams,
//! labelled, and honours `--for`; the table fits long names; a fatal error reads as a
//! sentence, not as `Debug`.

use crate::common::{TOKEN_VAR, new_token, no_tagged_left};
use std::process::Command;

fn run(dir: &std::path::Path, fleet: &str, args: &[&str], token: &str) -> std::process::Output {
    let file = dir.join("fleet.toml");
    std::fs::write(&file, fleet).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sheepdog"))
        .arg("run")
        .arg(&file)
        .arg("--state")
        .arg(dir.join("state"))
        .args(args)
        .env(TOKEN_VAR, token)
        .env("SHEEPDOG_RUNTIME_DIR", dir)
        .output()
        .unwrap()
}

#[test]
fn logs_follows_both_streams_labelled_for_the_time_given() {
    let dir = tempfile::tempdir().unwrap();
    let token = new_token();
    let fleet = r#"
[[service]]
name = "talker"
program = "/bin/sh"
args = ["-c", "echo to-out; echo to-err >&2; exec sleep 600"]
"#;
    let begun = std::time::Instant::now();
    let out = run(
        dir.path(),
        fleet,
        &["--logs", "talker", "--for", "1s"],
        &token,
    );
    let took = begun.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        took < std::time::Duration::from_secs(15),
        "--for ends it: {took:?}"
    );
    assert!(stdout.lines().any(|l| l == "out | to-out"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "err | to-err"), "{stdout}");
    no_tagged_left(&token, "after the runner exited").unwrap();
}

#[test]
fn the_table_fits_long_names() {
    let dir = tempfile::tempdir().unwrap();
    let token = new_token();
    let fleet = r#"
[[service]]
name = "a-rather-long-service-name"
program = "sleep"
args = ["600"]

[[service]]
name = "short"
program = "sleep"
args = ["600"]
"#;
    let out = run(dir.path(), fleet, &["--once"], &token);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 3, "a header and two rows: {stdout}");
    let status_at = lines[0].find("status").expect("a status column");
    for row in &lines[1..] {
        assert_eq!(
            row.get(status_at..status_at + 6),
            Some("online"),
            "the status column lines up whatever the name's length:\n{stdout}"
        );
    }
    no_tagged_left(&token, "after the runner exited").unwrap();
}

#[test]
fn a_fatal_error_reads_as_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        "[[service]]\nname = \"x\"\nprogram = \"true\"\ncolour = 1\n",
        &[],
        &new_token(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("sheepdog: fleet file '"), "{stderr}");
    assert!(stderr.contains("line 4, column 1"), "{stderr}");
    assert!(
        !stderr.contains("Error {") && !stderr.contains("kind:"),
        "not Debug: {stderr}"
    );
}
