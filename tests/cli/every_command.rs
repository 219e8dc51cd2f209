//! Every subcommand against a running host, its `--json` parsed back, and what it prints
//! for a person.

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
restart = { policy = "on-failure", backoff = { kind = "fixed", delay = "200ms" } }
"#;

/// The names in a JSON array of services or stats, sorted.
fn names(list: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .expect("an array")
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The entry named `name` in a JSON array.
fn named<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .expect("an array")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// Polls `check` with the command's output until it holds.
fn eventually(
    host: &Host,
    args: &[&str],
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let found = crate::common::wait_until(Duration::from_secs(10), || {
        let out = host.cli().arg("--json").args(args).output().unwrap();
        last = json(&out);
        check(&last).then(|| last.clone())
    });
    found.unwrap_or_else(|| panic!("sheepdog {args:?} never satisfied the check: {last}"))
}

#[test]
fn reads_answer_in_json_and_in_words() {
    let host = Host::start(FLEET);
    let ls = eventually(&host, &["ls"], |v| {
        named(&v["services"], "crasher")["restarts"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    assert_eq!(ls["running"], true);
    assert_eq!(names(&ls["services"]), ["crasher", "web"]);
    let web = named(&ls["services"], "web");
    assert_eq!(web["status"], "online");
    assert!(web["pid"].as_u64().is_some());
    assert_eq!(names(&ls["stats"]), ["crasher", "web"]);
    assert!(named(&ls["stats"], "web")["rss_bytes"].as_u64().unwrap() > 0);

    let out = host.cli().arg("ls").assert().success().get_output().clone();
    let text = String::from_utf8(out.stdout).unwrap();
    let header = text.lines().next().unwrap();
    for column in [
        "id",
        "name",
        "status",
        "pid",
        "uptime",
        "restarts",
        "cpu",
        "memory",
        "last exit",
    ] {
        assert!(header.contains(column), "{column} in {header}");
    }
    assert!(text.contains("web") && text.contains("online"), "{text}");
    assert!(text.contains("exit code 3"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal: {text}"
    );

    let web = json(
        &host
            .cli()
            .args(["--json", "describe", "web"])
            .output()
            .unwrap(),
    );
    assert_eq!(web["name"], "web");
    assert_eq!(web["spec"]["program"], "/bin/sh");
    let id = web["id"].as_u64().unwrap().to_string();
    let text = host.cli().args(["describe", &id]).output().unwrap().stdout;
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("command") && text.contains("sleep 60"),
        "{text}"
    );

    let runs = json(
        &host
            .cli()
            .args(["--json", "history", "crasher", "-n", "2"])
            .output()
            .unwrap(),
    );
    let runs = runs.as_array().unwrap();
    assert!(!runs.is_empty() && runs.len() <= 2);
    let ended = runs
        .iter()
        .find(|r| !r["ended_at_ms"].is_null())
        .expect("an ended run");
    assert_eq!(ended["code"], 3);
    assert_eq!(ended["cause"], "crashed");
    assert!(ended["last_stdout"].as_str().unwrap().contains("crash"));

    let why = json(
        &host
            .cli()
            .args(["--json", "explain", "crasher"])
            .output()
            .unwrap(),
    );
    assert_eq!(why["service"], "crasher");
    assert!(why["text"].as_str().unwrap().len() > 10, "{why}");

    let stats = json(
        &host
            .cli()
            .args(["--json", "stats", "web"])
            .output()
            .unwrap(),
    );
    assert_eq!(names(&stats), ["web"]);
    assert!(stats[0]["processes"].as_u64().unwrap() >= 1);

    // `logs --json` prints JSON lines.
    let lines = crate::common::wait_until(Duration::from_secs(10), || {
        let out = host
            .cli()
            .args(["--json", "logs", "web", "-n", "5"])
            .output()
            .unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
            .collect();
        (lines.len() >= 2).then_some(lines)
    })
    .expect("web's two lines are in its logs");
    assert!(
        lines
            .iter()
            .any(|l| l["stream"] == "stdout" && l["text"] == "hello out"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["stream"] == "stderr" && l["text"] == "hello err"),
        "{lines:?}"
    );
    let text =
        String::from_utf8(host.cli().args(["logs", "web"]).output().unwrap().stdout).unwrap();
    assert!(
        text.contains("web out | hello out") && text.contains("web err | hello err"),
        "{text}"
    );

    let hosts = json(&host.cli().args(["--json", "hosts"]).output().unwrap());
    let me = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["pid"] == host.pid())
        .expect("the host is registered");
    assert_eq!(me["stale"], false);
    assert_eq!(
        me["state_dir"].as_str().unwrap(),
        host.state().canonicalize().unwrap().to_str().unwrap()
    );
    host.finish();
}

#[test]
fn changes_answer_in_json_and_events_follow() {
    let host = Host::start(FLEET);
    let mut events = host
        .cli_process()
        .args(["--json", "events", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    // The crasher's restarts make events: the first one says the subscription is on.
    rx.recv_timeout(Duration::from_secs(10)).expect("an event");

    let stop = json(&host.cli().args(["--json", "stop", "web"]).output().unwrap());
    assert_eq!(stop["count"], 1);
    let started = json(
        &host
            .cli()
            .args(["--json", "start", "web"])
            .output()
            .unwrap(),
    );
    assert_eq!(names(&started), ["web"]);
    assert_eq!(started[0]["status"], "online");
    let restarted = json(
        &host
            .cli()
            .args(["--json", "restart", "all"])
            .output()
            .unwrap(),
    );
    assert_eq!(restarted["count"], 2);

    // The events of that stop and start came down the stream.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|e: &serde_json::Value| e["kind"] == "stopped" && e["service"] == "web")
        || !seen
            .iter()
            .any(|e| e["kind"] == "started" && e["service"] == "web")
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("events so far: {seen:?}"));
        seen.push(serde_json::from_str(&line).expect("one JSON event a line"));
    }

    let extra = format!(
        "[[service]]\nname = \"extra\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"exec sleep 60\"]\nenv = {{ {} = \"{}\" }}\n",
        crate::common::TOKEN_VAR,
        host.token
    );
    // Every service the file names carries the token, so that none can leak unseen.
    let tagged = FLEET.replace(
        "[[service]]\n",
        &format!(
            "[[service]]\nenv = {{ {} = \"{}\" }}\n",
            crate::common::TOKEN_VAR,
            host.token
        ),
    );
    let fleet = host.dir.path().join("more.toml");
    std::fs::write(&fleet, format!("{tagged}\n{extra}")).unwrap();
    let applied = json(
        &host
            .cli()
            .arg("--json")
            .arg("apply")
            .arg(&fleet)
            .output()
            .unwrap(),
    );
    assert_eq!(applied["started"], serde_json::json!(["extra"]));
    assert_eq!(applied["failed"], serde_json::json!([]));
    let pruned = host.dir.path().join("only-extra.toml");
    std::fs::write(&pruned, &extra).unwrap();
    let applied = json(
        &host
            .cli()
            .args(["--json", "apply", "--prune"])
            .arg(&pruned)
            .output()
            .unwrap(),
    );
    assert_eq!(applied["unchanged"], serde_json::json!(["extra"]));
    let mut deleted: Vec<String> = serde_json::from_value(applied["deleted"].clone()).unwrap();
    deleted.sort();
    assert_eq!(deleted, ["crasher", "web"]);
    let gone = json(
        &host
            .cli()
            .args(["--json", "delete", "extra"])
            .output()
            .unwrap(),
    );
    assert_eq!(gone["count"], 1);
    let ls = json(&host.cli().args(["--json", "ls"]).output().unwrap());
    assert_eq!(ls["services"], serde_json::json!([]));

    // In words too.
    let out = host.cli().args(["stop", "all"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "stopped 0 services\n");
    let _ = events.kill();
    let _ = events.wait();
    host.finish();
}

#[test]
fn errors_carry_their_kind_and_exit_codes_say_what_failed() {
    let host = Host::start(FLEET);
    let out = host
        .cli()
        .args(["--json", "describe", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = json(&out);
    assert_eq!(err["error"]["kind"], "not_found");
    assert_eq!(err["error"]["service"], "nope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("service 'nope'"), "{stderr}");

    let out = host.cli().args(["stop"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let out = host.cli().args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown command");

    let bad = host.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[service]]\nname = \"x\"\nprogram = \"true\"\ncolour = 1\n",
    )
    .unwrap();
    let out = host.cli().arg("apply").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 4"),
        "the file's error names the line"
    );

    let out = host
        .cli()
        .args(["--json", "logs", "web", "-f", "--since", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["kind"], "invalid_spec");
    let out = host
        .cli()
        .args(["logs", "web", "-f", "--since", "10m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "web's log has no timestamps");
    assert!(String::from_utf8_lossy(&out.stderr).contains("timestamps"));
    host.finish();
}
