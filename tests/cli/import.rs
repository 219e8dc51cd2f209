//! `sheepdog apply` on a file of another process manager: the format from a flag when the
//! name does not tell, a PM2 profile, and the importer's warnings on stderr.

use crate::host::{Host, json};

#[test]
fn apply_imports_a_pm2_file_named_by_flag_with_its_profile_and_prints_the_warnings() {
    let host = Host::start("");
    let file = host.dir.path().join("apps.txt");
    std::fs::write(
        &file,
        format!(
            r#"{{"apps": [{{
                "name": "job", "script": "/bin/sh", "interpreter": "none",
                "args": ["-c", "echo mode=$MODE; exec sleep 60"],
                "env": {{"MODE": "dev", "{var}": "{token}"}},
                "env_ci": {{"MODE": "ci"}},
                "out_file": "/var/log/job.log"
            }}]}}"#,
            var = crate::common::TOKEN_VAR,
            token = host.token
        ),
    )
    .unwrap();
    let refused = host.cli().arg("apply").arg(&file).output().unwrap();
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a .txt is read as TOML: an error"
    );
    let out = host
        .cli()
        .args(["--json", "apply", "--format", "pm2", "--profile", "ci"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(json(&out)["started"], serde_json::json!(["job"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: ") && stderr.contains("app 'job' 'out_file': no equivalent"),
        "{stderr}"
    );
    let described = json(
        &host
            .cli()
            .args(["--json", "describe", "job"])
            .output()
            .unwrap(),
    );
    assert!(
        described.to_string().contains(r#""MODE":"ci""#),
        "the profile's env won: {described}"
    );
    let bad = host
        .cli()
        .args(["apply", "--format", "xml"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown format is a usage error"
    );
    host.finish();
}
