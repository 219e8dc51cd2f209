//! With no host running, the read commands read the state directory (read-only, without its
//! lock) and say so; the changing ones fail with exit code 3; a host that starts meanwhile
//! opens the directory undisturbed, and a follow begun without it sees its lines.

use crate::host::{Host, json};
use std::io::{BufRead, BufReader};
use std::time::Duration;

const FLEET: &str = r#"
[[service]]
name = "web"
program = "/bin/sh"
args = ["-c", "echo hello out; echo hello err >&2; exec sleep 60"]

[[service]]
name = "crasher"
program = "/bin/sh"
args = ["-c", "echo crash; exit 3"]
restart = { policy = "on-failure", backoff = { kind = "fixed", delay = "100ms" }, max_restarts = { count = 2, window = "60s" } }
"#;

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn reads_work_without_a_host_and_changes_say_it_is_not_running() {
    let mut host = Host::start(FLEET);
    crate::common::wait_until(Duration::from_secs(10), || {
        let v = json(
            &host
                .cli()
                .args(["--json", "describe", "crasher"])
                .output()
                .unwrap(),
        );
        (v["status"] == "errored").then_some(())
    })
    .expect("the crasher gave up");
    host.stop();
    let before = files(&host.state());
    assert!(
        !before.contains(&"control.sock".to_string()),
        "the socket went with the host: {before:?}"
    );

    let out = host.cli().arg("ls").output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no host is running"), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("web") && text.contains("errored"), "{text}");

    let ls = json(&host.cli().args(["--json", "ls"]).output().unwrap());
    assert_eq!(ls["running"], false);
    for s in ls["services"].as_array().unwrap() {
        assert_eq!(s["desired_up"], true, "{s}");
        if s["name"] == "crasher" {
            assert_eq!(s["status"], "errored");
        }
    }

    let web = json(
        &host
            .cli()
            .args(["--json", "describe", "web"])
            .output()
            .unwrap(),
    );
    assert_eq!(web["spec"]["program"], "/bin/sh");
    let runs = json(
        &host
            .cli()
            .args(["--json", "history", "crasher"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        runs.as_array().unwrap().len(),
        3,
        "the first run and two restarts"
    );
    let why = json(
        &host
            .cli()
            .args(["--json", "explain", "crasher"])
            .output()
            .unwrap(),
    );
    assert!(
        why["text"].as_str().unwrap().contains("no host is running"),
        "{why}"
    );
    let logs =
        String::from_utf8(host.cli().args(["logs", "web"]).output().unwrap().stdout).unwrap();
    assert!(
        logs.contains("web out | hello out") && logs.contains("web err | hello err"),
        "{logs}"
    );

    for change in [
        vec!["stop", "web"],
        vec!["restart", "all"],
        vec!["start", "web"],
        vec!["delete", "web"],
        vec!["stats"],
    ] {
        let out = host.cli().args(&change).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{change:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no host is running"));
    }
    assert_eq!(
        files(&host.state()),
        before,
        "reading created or removed nothing"
    );

    // A follow begun with no host, and reads in a loop, while a host opens the directory.
    let mut follow = host
        .cli_process()
        .args(["logs", "web", "-f", "-n", "0", "--stream", "out"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let mut cli = host.cli_process();
        cli.args(["--json", "ls"]);
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = cli.output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                reads += 1;
            }
            reads
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    host.launch(|_| {}); // panics unless the host opened the directory and applied its fleet
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the follow begun without a host saw the resurrected run's line");
    assert_eq!(line, "web out | hello out");
    let _ = follow.kill();
    let _ = follow.wait();
    let ls = json(&host.cli().args(["--json", "ls"]).output().unwrap());
    assert_eq!(ls["running"], true);
    host.finish();
}
