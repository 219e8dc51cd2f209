//! A service's `env_file` is read whenever a call starts it: its variables come over the
//! host's and under the spec's own; a restart by the policy keeps what the start read, an
//! operator's restart reads the file again. A file that is missing or malformed fails the
//! start with a `Spawn` error naming it (and the line).

use crate::prelude::*;
use sheepdog::{Backoff, ErrorKind, RestartPolicy, Status, Stream};

#[test]
fn variables_come_from_the_file_when_a_call_starts_the_service() -> TestResult {
    let h = Harness::new()?;
    let file = h.dir.path().join("app.env");
    std::fs::write(
        &file,
        "GREETING=hello\nexport WHO='the world'\nOVERRIDE=file\n",
    )
    .unwrap();
    let spec = h
        .sh("greeter", "echo \"$GREETING $WHO $OVERRIDE\"; sleep 0.2")
        .env_file(&file)
        .env("OVERRIDE", "spec")
        .restart(
            RestartPolicy::always().backoff(Backoff::fixed(std::time::Duration::from_millis(300))),
        );
    h.sup().start(spec).unwrap();
    let log = h.sup().log_path("greeter", Stream::Stdout).unwrap();
    assert_eq!(wait_lines(&log, 1, SECS_5)?, ["hello the world spec"]);
    std::fs::write(&file, "GREETING=goodbye\nWHO=all\n").unwrap();
    let lines = wait_lines(&log, 2, SECS_5)?;
    assert_eq!(
        lines[1], "hello the world spec",
        "a restart by the policy keeps it"
    );
    h.sup().restart("greeter").unwrap();
    let lines = wait_lines(&log, 3, SECS_5)?;
    assert_eq!(
        lines.last().unwrap(),
        "goodbye all spec",
        "an operator's restart reads it"
    );
    h.finish()
}

#[test]
fn a_missing_or_malformed_file_fails_the_start_naming_it() -> TestResult {
    let h = Harness::new()?;
    let missing = h.dir.path().join("missing.env");
    let err = h
        .sup()
        .start(h.sh("a", "exit 0").env_file(&missing))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn);
    assert!(
        err.to_string()
            .contains(&format!("cannot read env file '{}'", missing.display())),
        "{err}"
    );
    let bad = h.dir.path().join("bad.env");
    std::fs::write(&bad, "OK=1\nnot a variable\n").unwrap();
    let err = h
        .sup()
        .start(h.sh("b", "exit 0").env_file(&bad))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("line 2, column 1: expected KEY=value"),
        "{err}"
    );
    assert_eq!(status(h.sup(), "b"), Status::Errored);
    h.finish()
}
