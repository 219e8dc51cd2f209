//! `Fleet::from_pm2` on real-world shaped ecosystem files (an `ecosystem.config.js` that
//! `node` evaluates, a YAML `process.yml`), checked spec by spec, with profiles and every
//! warning it must give.

use sheepdog::{Backoff, Fleet, Format, RestartPolicy, Schedule, ServiceSpec, Signal, Watch};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import/pm2")
}

fn has_node() -> bool {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn an_ecosystem_config_js_with_a_profile_becomes_the_specs_it_describes() {
    if !has_node() {
        eprintln!("skipped: node is not on the PATH");
        return;
    }
    let file = fixtures().join("ecosystem.config.js");
    assert_eq!(Format::detect(&file).unwrap(), Format::Pm2);
    let fleet = Fleet::load(&file, None, Some("production")).unwrap();
    let names: Vec<&str> = fleet.services().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["api-0", "api-1", "front"]);
    let dir = fixtures().canonicalize().unwrap();
    for i in 0..2 {
        let api = ServiceSpec::new(format!("api-{i}"), "node")
            .args([
                "--max-old-space-size=512",
                "./dist/server.js",
                "--port",
                "3000",
            ])
            .current_dir(dir.join("api").display().to_string())
            .env("NODE_ENV", "production")
            .env("PORT", "3000")
            .env("DB_POOL", "20")
            .env("NODE_APP_INSTANCE", i.to_string())
            .restart(
                RestartPolicy::always()
                    .stable_after(Duration::from_secs(5))
                    .max_restarts(10, Duration::from_secs(3600))
                    .backoff(Backoff::exponential(
                        Duration::from_millis(100),
                        Duration::from_secs(15),
                    )),
            )
            .stop_signal(Signal::Int)
            .stop_timeout(Duration::from_secs(5))
            .max_memory(300 << 20)
            .schedule(Schedule::restart("0 4 * * *"))
            .watch(
                Watch::new(["dist", "config"])
                    .ignore("node_modules")
                    .ignore("*.log")
                    .debounce(Duration::from_secs(1)),
            );
        assert_eq!(fleet.services()[i], api);
    }
    let front = ServiceSpec::new("front", "npm")
        .args(["run", "start", "--", "--hostname", "0.0.0.0"])
        .restart(RestartPolicy::never().backoff(Backoff::fixed(Duration::from_secs(4))))
        .stop_signal(Signal::Int)
        .stop_timeout(Duration::from_millis(1600));
    assert_eq!(fleet.services()[2], front);

    let warnings = fleet.warnings();
    for needle in [
        "'deploy' has no equivalent",
        "app 'api' 'exec_mode': no cluster mode",
        "app 'api' 'max_restarts': PM2 counts unstable restarts in a row",
        "app 'api' 'max_memory_restart': mapped to max_memory",
        "app 'api' 'out_file': no equivalent",
        "app 'api' 'error_file': no equivalent",
        "app 'api' 'merge_logs': no equivalent",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(needle)),
            "no warning with '{needle}' in {warnings:#?}"
        );
    }
    assert!(
        !warnings.iter().any(|w| w.contains("env_production")),
        "a profile is not an unknown option"
    );
}

#[test]
fn a_yaml_process_file_without_and_with_its_profile() {
    let file = fixtures().join("process.yml");
    let worker = |queue: &str| {
        ServiceSpec::new("worker", "/usr/bin/python3")
            .args(["-u", "worker.py", "--queue", "default"])
            .env("QUEUE_URL", queue)
            .restart(RestartPolicy::always())
            .stop_signal(Signal::Int)
            .stop_timeout(Duration::from_millis(1600))
            .max_memory(1 << 30)
    };
    let plain = Fleet::from_pm2(&file, None).unwrap();
    assert_eq!(plain.services(), [worker("redis://localhost:6379/0")]);
    let staging = Fleet::from_pm2(&file, Some("staging")).unwrap();
    assert_eq!(staging.services(), [worker("redis://staging:6379/0")]);
    for needle in [
        "'log_date_format': no equivalent format",
        "'wait_ready': no equivalent",
    ] {
        assert!(
            plain.warnings().iter().any(|w| w.contains(needle)),
            "{needle}: {:#?}",
            plain.warnings()
        );
    }
    let unknown = Fleet::from_pm2(&file, Some("prod")).unwrap();
    assert!(
        unknown
            .warnings()
            .iter()
            .any(|w| w.contains("no app has 'env_prod'"))
    );
    let err = Fleet::load(
        fixtures().join("../supervisord/supervisord.conf"),
        None,
        Some("x"),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("a profile applies to PM2 files only"),
        "{err}"
    );
}

#[test]
fn uid_and_gid_become_the_user_and_group_to_run_as() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecosystem.json");
    std::fs::write(
        &file,
        r#"{"apps": [{"name": "api", "script": "/srv/api/server", "uid": "www-data", "gid": 33}]}"#,
    )
    .unwrap();
    let fleet = Fleet::from_pm2(&file, None).unwrap();
    let api = &fleet.services()[0];
    assert_eq!(api.get_user(), Some("www-data"));
    assert_eq!(api.get_group(), Some("33"), "a number is kept as an id");
    assert!(
        !fleet
            .warnings()
            .iter()
            .any(|w| w.contains("uid") || w.contains("gid")),
        "{:?}",
        fleet.warnings()
    );
}
