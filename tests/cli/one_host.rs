//! Without `--state`, the command talks to the only running host; with none or several it
//! says so.

use crate::host::{Host, json, sheepdog_command};

const FLEET: &str = r#"
[[service]]
name = "nap"
program = "/bin/sh"
args = ["-c", "exec sleep 60"]
"#;

#[test]
fn the_only_running_host_is_found_without_state() {
    let empty = tempfile::tempdir().unwrap();
    let out = sheepdog_command(&empty.path().join("run"))
        .arg("ls")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "no host: exit code 3");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no host is running"));

    let host = Host::start(FLEET);
    let ls = json(
        &sheepdog_command(&host.runtime())
            .args(["--json", "ls"])
            .output()
            .unwrap(),
    );
    assert_eq!(ls["services"][0]["name"], "nap");

    // A second host registered in the same directory: the command asks which.
    let runtime = host.runtime();
    let other = Host::start_with(FLEET, |c| {
        c.env("SHEEPDOG_RUNTIME_DIR", &runtime);
    });
    let out = sheepdog_command(&host.runtime())
        .arg("ls")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 hosts are running"), "{stderr}");
    assert!(stderr.contains("--state"), "{stderr}");
    other.finish();
    // Its registration went with it: one host again.
    let ls = json(
        &sheepdog_command(&host.runtime())
            .args(["--json", "ls"])
            .output()
            .unwrap(),
    );
    assert_eq!(ls["running"], true);
    host.finish();
}

#[test]
fn a_dead_hosts_registration_is_stale_and_pruned() {
    let mut host = Host::start(FLEET);
    let dead = host.pid();
    host.kill();
    let hosts = json(
        &sheepdog_command(&host.runtime())
            .args(["--json", "hosts"])
            .output()
            .unwrap(),
    );
    let entry = &hosts.as_array().unwrap()[0];
    assert_eq!(entry["pid"], dead);
    assert_eq!(entry["stale"], true);
    let text = sheepdog_command(&host.runtime())
        .arg("hosts")
        .output()
        .unwrap()
        .stdout;
    assert!(String::from_utf8_lossy(&text).contains("stale"));
    // A stale registration is no running host.
    let out = sheepdog_command(&host.runtime())
        .arg("stop")
        .arg("all")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));

    host.launch(|_| {});
    let hosts = json(
        &sheepdog_command(&host.runtime())
            .args(["--json", "hosts"])
            .output()
            .unwrap(),
    );
    let hosts = hosts.as_array().unwrap();
    assert_eq!(
        hosts.len(),
        1,
        "the dead host's entry was pruned: {hosts:?}"
    );
    assert_eq!(hosts[0]["pid"], host.pid());
    assert_eq!(hosts[0]["stale"], false);
    host.finish();
}
