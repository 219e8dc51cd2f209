//! `Fleet::from_supervisord` on a real-world shaped configuration (Debian's stock sections,
//! a Django site, Celery workers through `[include]`), checked spec by spec, and every
//! warning it must give.

use sheepdog::{Backoff, ErrorKind, Fleet, Format, LogPolicy, RestartPolicy, ServiceSpec, Signal};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import/supervisord")
}

fn supervisord_backoff() -> Backoff {
    Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30))
}

#[test]
fn every_program_becomes_the_spec_it_describes() {
    let conf = fixtures().join("supervisord.conf");
    assert_eq!(Format::detect(&conf).unwrap(), Format::Supervisord);
    let fleet = Fleet::load(&conf, None, None).unwrap();
    let names: Vec<&str> = fleet.services().iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        ["celery_01", "celery_02", "web", "beat"],
        "by priority (5, 10, then the default 999), numprocs expanded"
    );
    let here = fixtures().canonicalize().unwrap();
    let home = std::env::var("HOME").unwrap();
    let web = ServiceSpec::new("web", "/srv/site/venv/bin/gunicorn")
        .args([
            "site.wsgi:application",
            "--bind",
            "127.0.0.1:8000",
            "--workers",
            "4",
            "--pid",
            &format!("{home}/web server.pid"),
        ])
        .current_dir(format!("{}/site", here.display()))
        .env("PYTHONUNBUFFERED", "1")
        .env("DJANGO_SETTINGS_MODULE", "site.settings.production")
        .env("GREETING", "hello, world")
        .restart(
            RestartPolicy::always()
                .success_codes([0])
                .backoff(supervisord_backoff())
                .stable_after(Duration::from_secs(5))
                .max_restarts(3, Duration::from_secs((5 + 30) * 4)),
        )
        .stop_signal(Signal::Quit)
        .stop_timeout(Duration::from_secs(30))
        .log(
            LogPolicy::default()
                .max_bytes(20 << 20)
                .keep(5)
                .merge_stderr(true),
        )
        .user("www-data");
    assert_eq!(fleet.services()[2], web);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for (i, n) in [(0, 1), (1, 2)] {
        let celery = ServiceSpec::new(format!("celery_0{n}"), "/srv/site/venv/bin/celery")
            .args([
                "-A".to_string(),
                "site".into(),
                "worker".into(),
                "--loglevel=INFO".into(),
                "-n".into(),
                format!("worker{n}@{}", host.trim()),
            ])
            .current_dir("/srv/site")
            .restart(
                RestartPolicy::on_failure()
                    .success_codes([0, 2])
                    .backoff(supervisord_backoff())
                    .stable_after(Duration::from_secs(1))
                    .max_restarts(3, Duration::from_secs((1 + 30) * 4)),
            )
            .stop_signal(Signal::Term)
            .stop_timeout(Duration::from_secs(600))
            .log(LogPolicy::default().max_bytes(50 << 20).keep(10))
            .umask(0o022);
        assert_eq!(fleet.services()[i], celery);
    }
    let beat = &fleet.services()[3];
    assert_eq!(
        beat.restart_policy(),
        &RestartPolicy::never()
            .success_codes([0])
            .backoff(supervisord_backoff())
            .stable_after(Duration::from_secs(1))
            .max_restarts(3, Duration::from_secs(124))
    );
    assert!(
        !beat.get_autostart(),
        "autostart=false: defined, not started"
    );
}

#[test]
fn every_option_without_an_equivalent_or_with_another_meaning_is_a_warning() {
    let fleet = Fleet::from_supervisord(fixtures().join("supervisord.conf")).unwrap();
    let warnings = fleet.warnings();
    for needle in [
        "section [unix_http_server] is ignored",
        "section [supervisord] is ignored",
        "section [rpcinterface:supervisor] is ignored",
        "section [supervisorctl] is ignored",
        "section [group:workers] has no equivalent",
        "[program:web] stdout_logfile: no equivalent",
        "[program:web] startsecs: mapped to the restart policy's stable_after",
        "[program:web] startretries: mapped to max_restarts(3) within a sliding 140s window",
        "[program:celery] startretries: mapped to max_restarts(3)",
        "[program:beat] stderr_logfile: no equivalent",
        "priority: kept as the order of the services",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(needle)),
            "no warning with '{needle}' in {warnings:#?}"
        );
    }
    let about = |w: &&String, what: &str| w.contains(what);
    assert!(
        !warnings
            .iter()
            .any(|w| about(&w, "user") || about(&w, "umask") || about(&w, "autostart")),
        "user, umask and autostart map to the spec: no warning"
    );
    assert!(
        !warnings
            .iter()
            .any(|w| about(&w, "stopasgroup") || about(&w, "killasgroup")),
        "true is what sheepdog does: no warning"
    );
    assert!(
        warnings.iter().all(|w| w.starts_with('\'')),
        "each names its file"
    );
}

#[test]
fn a_malformed_file_or_expansion_names_the_program_and_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[program:a]\ncommand=x %(ENV_SHEEPDOG_UNSET_VARIABLE)s\n",
            "[program:a] command: '%(ENV_SHEEPDOG_UNSET_VARIABLE)s': the variable SHEEPDOG_UNSET_VARIABLE is not set",
        ),
        (
            "[program:a]\ncommand=x\nstopsignal=WINCH\n",
            "[program:a] stopsignal: unknown signal 'WINCH'",
        ),
        (
            "[program:a]\ncommand=x\nautorestart=maybe\n",
            "[program:a] autorestart: 'maybe' is not true, false or unexpected",
        ),
        ("[program:a]\nnumprocs=2\n", "[program:a] has no command"),
        (
            "[program:a]\ncommand=x 'open\n",
            "[program:a] command: unbalanced quotes",
        ),
        ("command=x\n", "line 1: an option before any [section]"),
    ];
    for (i, (text, needle)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.conf"));
        std::fs::write(&file, text).unwrap();
        let err = Fleet::from_supervisord(&file).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle}");
    }
    let not_supervisord = dir.path().join("nginx.conf");
    std::fs::write(&not_supervisord, "server { listen 80; }\n").unwrap();
    let err = Fleet::load(&not_supervisord, None, None).unwrap_err();
    assert!(err.to_string().contains("no [program:…] section"), "{err}");
}
