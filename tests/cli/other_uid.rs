//! Another user (uid 65534) gets nothing from a host's control socket: the socket's mode
//! keeps it out, and where that mode was loosened, the host's check of the peer's
//! credentials (SO_PEERCRED) refuses it in words. The host goes on serving its own user.

use crate::host::{Host, json};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const FLEET: &str = r#"
[[service]]
name = "nap"
program = "/bin/sh"
args = ["-c", "exec sleep 60"]
"#;

fn as_nobody(host: &Host, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_sheepdog"))
        .arg("--state")
        .arg(host.state())
        .args(args)
        .env("SHEEPDOG_RUNTIME_DIR", host.dir.path().join("nobody-run"))
        .output()
        .expect("setpriv runs")
}

#[test]
fn another_uid_is_refused() {
    if rustix::process::geteuid().as_raw() != 0 {
        println!("skipped: playing uid 65534 needs root");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    // The state directory's group may pass through it (group-readable logs), and that
    // group is nobody's: uid 65534 reaches the socket, and only its mode stops it.
    let host = Host::start_with(FLEET, |c| {
        c.env("SHEEPDOG_TEST_GROUP_LOGS", "1");
    });
    std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = Command::new("chgrp")
        .arg("65534")
        .arg(host.state())
        .status()
        .unwrap();
    assert!(status.success());
    let socket = host.state().join("control.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let out = as_nobody(&host, &["stop", "nap"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");

    // Loosened by hand: the kernel lets the connection through, the host does not.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&host, &["--json", "stop", "nap"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = json(&out);
    assert_eq!(err["error"]["kind"], "refused");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("uid 65534 may not use the control socket"),
        "{message}"
    );

    let nap = json(
        &host
            .cli()
            .args(["--json", "describe", "nap"])
            .output()
            .unwrap(),
    );
    assert_eq!(nap["status"], "online", "nothing changed");
    host.finish();
}
