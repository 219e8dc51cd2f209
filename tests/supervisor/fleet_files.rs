//! Fleet files: the demo fleet loads and runs; a Procfile runs with its `.env`; bytes that
//! are not UTF-8, in a Procfile or its `.env`, are a parse error naming the line.

use crate::prelude::*;
use sheepdog::{ErrorKind, Fleet, Prune, Status, Stream};

/// `fleet` with every service tagged with `token`.
pub fn tagged(fleet: &Fleet, token: &str) -> Fleet {
    Fleet::new(
        fleet
            .services()
            .iter()
            .map(|s| s.clone().env(TOKEN_VAR, token)),
    )
}

#[test]
fn the_demo_fleet_loads_and_runs() -> TestResult {
    let h = Harness::new()?;
    let demo = Fleet::from_toml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.toml"))?;
    let names: Vec<&str> = demo.services().iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        ["setup", "ticker", "flaky", "chatty"],
        "the demo's services"
    );
    let applied = h.sup().apply(&tagged(&demo, &h.token), Prune::Yes)?;
    assert_eq!(applied.started.len(), 4, "all four started: {applied:?}");
    assert!(applied.failed.is_empty(), "none failed: {applied:?}");
    h.sup().wait_for("setup", Status::Exited, SECS_5)?;
    h.sup().wait_for("chatty", Status::Online, SECS_10)?;
    assert_eq!(status(h.sup(), "ticker"), Status::Online, "the ticker runs");
    h.finish()
}

#[test]
fn a_procfile_with_a_dotenv_runs() -> TestResult {
    let h = Harness::new()?;
    let procfile = h.dir.path().join("Procfile");
    std::fs::write(
        &procfile,
        "# the app\nweb: echo \"$GREETING from web\"; exec sleep 600\nworker: exec sleep 600\n",
    )?;
    std::fs::write(h.dir.path().join(".env"), "GREETING=\"hello there\"\n")?;
    let fleet = Fleet::from_procfile(&procfile)?;
    h.sup().apply(&tagged(&fleet, &h.token), Prune::Yes)?;
    let log = h.sup().log_path("web", Stream::Stdout)?;
    assert_eq!(
        wait_lines(&log, 1, SECS_5)?,
        ["hello there from web"],
        "the .env's variable reaches the service"
    );
    h.finish()
}

#[test]
fn a_procfile_or_dotenv_that_is_not_utf8_is_a_parse_error_naming_the_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let procfile = dir.path().join("Procfile");
    std::fs::write(&procfile, b"web: exec sleep 600\nworker: echo caf\xe9\n")?;
    let err = Fleet::from_procfile(&procfile)
        .err()
        .context("a Procfile that is not UTF-8 is refused")?;
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("'{}': line 2, column 17", procfile.display())),
        "the error names the file, line and column: {err}"
    );
    std::fs::write(&procfile, b"web: exec sleep 600\n")?;
    std::fs::write(dir.path().join(".env"), b"A=1\nB=\xff\n")?;
    let err = Fleet::from_procfile(&procfile)
        .err()
        .context("a .env that is not UTF-8 is refused")?;
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
    assert!(
        err.to_string().contains(".env': line 2, column 3"),
        "the error names the file, line and column: {err}"
    );
    Ok(())
}
