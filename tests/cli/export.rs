//! `sheepdog export kubernetes|systemd FLEET` (over `Fleet::to_kubernetes` and
//! `Fleet::to_systemd`): the output parsed back, field by field.

use serde_json::Value;
use sheepdog::Fleet;
use std::collections::BTreeMap;
use std::path::Path;

const FLEET: &str = r#"
[[service]]
name = "db"
program = "postgres"
args = ["-D", "/srv/pg"]
env = { PGPORT = "5432" }
ready = { tcp = 5432 }
stop_timeout = "20s"

[[service]]
name = "web"
program = "python3"
args = ["-m", "http.server", "8080"]
env = { MODE = "production" }
after = [{ name = "db", condition = "ready" }]
stop_timeout = "5s"
health = { check = { http = "http://127.0.0.1:8080/health" }, interval = "15s", timeout = "2s", failures = 4 }
"#;

fn export(dir: &Path, args: &[&str]) -> String {
    let file = dir.join("shop.toml");
    std::fs::write(&file, FLEET).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sheepdog"))
        .arg("export")
        .arg(args[0])
        .arg(&file)
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn kubernetes_runs_the_runner_with_probes_and_the_fleets_grace() {
    let dir = tempfile::tempdir().unwrap();
    let doc: Value = serde_json::from_str(&export(
        dir.path(),
        &["kubernetes", "--image", "registry.example/shop:1"],
    ))
    .expect("the manifest is JSON");
    assert_eq!(doc["kind"], "List");
    let items = doc["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let (config, deployment) = (&items[0], &items[1]);
    assert_eq!(config["kind"], "ConfigMap");
    assert_eq!(config["metadata"]["name"], "shop");
    let carried = Fleet::from_json_str(config["data"]["fleet.json"].as_str().unwrap())
        .expect("the ConfigMap holds a fleet file");
    assert_eq!(
        carried,
        Fleet::from_toml_str(FLEET).unwrap(),
        "the whole fleet, unchanged"
    );

    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["apiVersion"], "apps/v1");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(
        spec["selector"]["matchLabels"],
        spec["template"]["metadata"]["labels"]
    );
    let pod = &spec["template"]["spec"];
    // The grace: web's wave (5 s) then db's (20 s), plus the margin.
    assert_eq!(pod["terminationGracePeriodSeconds"], 25 + 5);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"], "registry.example/shop:1");
    assert_eq!(
        strings(&c["command"]),
        [
            "sheepdog",
            "run",
            "/etc/sheepdog/fleet.json",
            "--endpoints",
            "0.0.0.0:9090",
            "--grace",
            "25s"
        ]
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], 9090);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 9090);
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/sheepdog");
    assert_eq!(
        c["volumeMounts"][0]["name"], pod["volumes"][0]["name"],
        "the fleet's volume is mounted"
    );
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "shop");
}

#[test]
fn kubernetes_per_service_maps_commands_env_and_probes() {
    let dir = tempfile::tempdir().unwrap();
    let doc: Value = serde_json::from_str(&export(
        dir.path(),
        &[
            "kubernetes",
            "--image",
            "shop:1",
            "--per-service",
            "--name",
            "shop-split",
        ],
    ))
    .unwrap();
    let items = doc["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "no ConfigMap: nothing runs the fleet file");
    let pod = &items[0]["spec"]["template"]["spec"];
    assert_eq!(items[0]["metadata"]["name"], "shop-split");
    let containers: BTreeMap<&str, &Value> = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c))
        .collect();
    let db = containers["db"];
    assert_eq!(strings(&db["command"]), ["postgres", "-D", "/srv/pg"]);
    assert_eq!(db["env"][0]["name"], "PGPORT");
    assert_eq!(db["env"][0]["value"], "5432");
    assert_eq!(db["readinessProbe"]["tcpSocket"]["port"], 5432);
    let web = containers["web"];
    assert_eq!(
        strings(&web["command"]),
        ["python3", "-m", "http.server", "8080"]
    );
    assert_eq!(web["env"][0]["value"], "production");
    let live = &web["livenessProbe"];
    assert_eq!(live["httpGet"]["path"], "/health");
    assert_eq!(live["httpGet"]["port"], 8080);
    assert_eq!(live["periodSeconds"], 15);
    assert_eq!(live["timeoutSeconds"], 2);
    assert_eq!(live["failureThreshold"], 4);
    assert!(
        web.get("readinessProbe").is_none(),
        "ready at once: no probe"
    );
}

#[test]
fn systemd_runs_the_runner_at_boot_with_mixed_kill_and_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let unit = export(dir.path(), &["systemd", "--user", "shop"]);
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current = String::new();
    for line in unit.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        sections
            .entry(current.clone())
            .or_default()
            .insert(key.to_string(), value.to_string());
    }
    let service = &sections["Service"];
    let file = std::fs::canonicalize(dir.path().join("shop.toml")).unwrap();
    assert_eq!(
        service["ExecStart"],
        format!(
            "/usr/local/bin/sheepdog run {} --state /var/lib/sheepdog/shop --grace 25s",
            file.display()
        )
    );
    assert_eq!(service["KillMode"], "mixed");
    assert_eq!(service["KillSignal"], "SIGTERM");
    assert_eq!(service["TimeoutStopSec"], "30");
    assert_eq!(service["Restart"], "on-failure");
    assert_eq!(service["User"], "shop");
    assert_eq!(service["StateDirectory"], "sheepdog/shop");
    assert_eq!(sections["Install"]["WantedBy"], "multi-user.target");
    assert!(sections["Unit"]["Description"].contains("shop"));
}
