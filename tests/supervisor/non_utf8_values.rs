//! A spec takes what `std::process::Command` takes: `OsStr` arguments, environment keys and
//! values, and a `PathBuf` working directory, UTF-8 or not. The bytes reach the child
//! exactly, are stored exactly (hex in the registry's JSON), and come back exactly after a
//! reopen: `describe` shows them and the resurrected run gets them.

use crate::prelude::*;
use sheepdog::{ServiceSpec, Status};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

fn bytes(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

/// The NUL-separated fields of a /proc file.
fn fields(path: String) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split(|b| *b == 0)
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn bytes_that_are_not_utf8_reach_the_child_and_survive_a_reopen() -> TestResult {
    let mut h = Harness::new()?;
    // Latin-1 `é`, and a byte no encoding would make of text.
    let dir: PathBuf = h.dir.path().join(bytes(b"caf\xe9"));
    std::fs::create_dir(&dir).unwrap();
    let arg = bytes(b"--name=\xe9t\xe9\xff");
    let key = bytes(b"K\xe9Y");
    let value = bytes(b"v\x80lue");
    let spec = ServiceSpec::new("latin1", "/bin/sh")
        .args([OsString::from("-c"), OsString::from("sleep 600; exit 0")])
        .arg(&arg)
        .env(&key, &value)
        .env(TOKEN_VAR, &h.token)
        .current_dir(dir.clone());
    let check = |pid: u32| {
        // Read while the child is still in its exec, the command line is empty: read again.
        let argv = wait_until(SECS_5, || {
            let argv = fields(format!("/proc/{pid}/cmdline"));
            (argv.len() > 3).then_some(argv)
        })
        .expect("the child's command line, once its exec is through");
        assert_eq!(argv[3], arg.as_bytes(), "the argument, exactly");
        let mut kv = key.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(value.as_bytes());
        assert!(
            fields(format!("/proc/{pid}/environ")).contains(&kv),
            "the variable, exactly"
        );
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        assert_eq!(cwd, dir, "the working directory, exactly");
    };
    let pid = h.sup().start(spec.clone()).unwrap().pid().unwrap();
    check(pid);
    let stored = h.sup().describe("latin1").unwrap();
    assert_eq!(stored.spec(), &spec);
    h.reopen().unwrap();
    h.sup()
        .wait_for("latin1", Status::Online, SECS_10)
        .expect("resurrected");
    let info = h.sup().describe("latin1").unwrap();
    assert_eq!(info.spec(), &spec, "read back from the registry unchanged");
    assert_eq!(info.spec().get_args()[2], arg);
    check(info.pid().unwrap());
    h.finish()
}

#[test]
fn the_registry_stores_other_bytes_as_hex_and_utf8_as_text() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("hex", "exit 0")
        .arg(bytes(b"\xff"))
        .restart(sheepdog::RestartPolicy::never());
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("hex", Status::Exited, SECS_5)
        .expect("it ran");
    // What the registry holds, as any SQLite reader sees it.
    let db = h.state_dir().join("sheepdog.db");
    let text = String::from_utf8_lossy(&std::fs::read(db).unwrap()).into_owned();
    let wal = std::fs::read(h.state_dir().join("sheepdog.db-wal")).unwrap_or_default();
    let text = text + &String::from_utf8_lossy(&wal);
    assert!(text.contains(r#"{"hex":"ff"}"#), "the argument as hex");
    assert!(
        text.contains(r#""args":["-c","exit 0",{"hex":"ff"}]"#),
        "UTF-8 as text"
    );
    h.finish()
}
