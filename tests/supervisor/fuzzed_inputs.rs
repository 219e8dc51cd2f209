//! Every parser and validator of outside input, fuzzed through the public API: spec JSON
//! (arbitrary text, and a valid spec with bytes replaced, inserted or deleted: what parses
//! must round-trip and start or fail typed), `start` with arbitrary names, programs,
//! arguments, environments, policies, log policies, readiness conditions (regular
//! expressions, commands, ports), health checks (loopback URLs), dependencies and numbers up
//! to their types' limits, every call that takes a target, log cursors and `follow_from`.
//! Any input yields a value or a typed error within a deadline; nothing panics, hangs or
//! kills a supervisor thread, and nothing is left running. (Single calls at the edge of
//! `Duration` and `usize` are in `extreme_numbers.rs`.) Programs run by fuzzed specs are
//! harmless (`true`, `false`, `echo`, or nothing found), and fuzzed probes reach no port
//! that anything else listens on. `SHEEPDOG_STRESS=1` runs twenty times the cases.

use crate::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use sheepdog::{
    Backoff, Check, Condition, ErrorKind, Health, LogCursor, LogPolicy, Ready, RestartPolicy,
    ServiceSpec, Signal, Status, Stream, Supervisor,
};
use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

/// A call that takes longer than this hangs.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

fn cases(default: u32) -> u32 {
    match std::env::var_os("SHEEPDOG_STRESS") {
        Some(v) if v != "0" => default * 20,
        _ => default,
    }
}

/// Runs `f` on a thread of its own and returns its value; fails if it panics or does not
/// return within `CALL_DEADLINE`.
fn within<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TestCaseError> {
    crate::prelude::within(what, CALL_DEADLINE, f)
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))
}

/// A directory with nothing in it: the `PATH` of fuzzed specs, so that no fuzzed program
/// name can find a real program.
fn empty_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

/// A loopback port that is ours: fuzzed readiness and health checks that would reach a
/// port something else listens on go here instead, so that the tests probe nothing of the
/// machine's.
fn our_port() -> u16 {
    static LISTENER: OnceLock<TcpListener> = OnceLock::new();
    LISTENER
        .get_or_init(|| TcpListener::bind("127.0.0.1:0").expect("a loopback port"))
        .local_addr()
        .unwrap()
        .port()
}

/// The TCP ports something listens on, when the tests start.
fn listening_ports() -> &'static HashSet<u16> {
    static PORTS: OnceLock<HashSet<u16>> = OnceLock::new();
    PORTS.get_or_init(|| {
        let mut ports = HashSet::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local = fields.get(1).and_then(|a| a.rsplit_once(':'));
                if let (Some((_, port)), Some(&"0A")) = (local, fields.get(3))
                    && let Ok(port) = u16::from_str_radix(port, 16)
                {
                    ports.insert(port);
                }
            }
        }
        ports
    })
}

fn harmless_port(port: u16) -> u16 {
    if listening_ports().contains(&port) {
        our_port()
    } else {
        port
    }
}

/// A program that does no harm whatever its arguments: `true`, `false`, `echo`, a path to
/// nothing, or no valid program at all.
fn harmless_program(program: &str) -> bool {
    matches!(program, "/bin/true" | "/bin/false" | "/bin/echo")
        || program.is_empty()
        || program.contains('\0')
        || (program.contains('/') && !Path::new(program).exists())
}

/// The port an `http://` URL names, if it is one.
fn url_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    match authority.rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => port.parse().ok(),
        _ => Some(80),
    }
}

/// Whether a spec that came out of fuzzing is safe to run: harmless programs for the
/// service and its checks (a bare name finds nothing on the empty `PATH`, `echo` is found
/// on `/bin`), and no check of a port that something else listens on.
fn safe_to_run(spec: &ServiceSpec) -> bool {
    let path = spec
        .get_envs()
        .find(|(k, _)| *k == "PATH")
        .map(|(_, v)| v.to_string_lossy().into_owned());
    // Not UTF-8: read with replacement characters, which no real program's name has.
    let program = spec.program().to_string_lossy();
    let program = program.as_ref();
    let program_ok = harmless_program(program)
        || (program == "echo" && path.as_deref() == Some("/bin:/usr/bin"))
        || (!program.contains('/') && path.as_deref() == empty_dir().to_str());
    let argv_ok = |argv: &[String]| argv.first().is_none_or(|p| harmless_program(p));
    let port_ok = |port: u16| !listening_ports().contains(&port);
    let ready_ok = match spec.get_ready() {
        Ready::Command(argv) => argv_ok(argv),
        Ready::Tcp(port) => port_ok(*port),
        _ => true,
    };
    let health_ok = spec.get_health().is_none_or(|h| match h.check() {
        Check::Command(argv) => argv_ok(argv),
        Check::Tcp(port) => port_ok(*port),
        Check::Http(url) => url_port(url).is_none_or(port_ok),
        _ => true,
    });
    program_ok && ready_ok && health_ok
}

/// Starts `spec` on a fresh supervisor, then stops and deletes it, checking that every call
/// returns in time with a value or a typed error, that the supervision thread survives, and
/// that nothing is left running.
fn start_and_clean_up(spec: ServiceSpec, token: &str) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sup = Arc::new(Supervisor::open(dir.path()).expect("open a supervisor"));
    let shown = format!("{spec:?}");
    let result = check_calls(&sup, spec, token);
    if let Err(e) = &result {
        eprintln!("failed: {e}\nwith {shown}");
        // Leave nothing behind for the next case, even if a call is stuck: shut down on a
        // thread of its own, and kill what still carries the token.
        std::thread::spawn(move || sup.shutdown());
        let _ = wait_until(SECS_5, || tagged_processes(token).is_empty().then_some(()));
        for pid in tagged_processes(token) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
    result
}

fn check_calls(sup: &Arc<Supervisor>, spec: ServiceSpec, token: &str) -> Result<(), TestCaseError> {
    let name = spec.name().to_string();
    let started = {
        let (sup, spec) = (sup.clone(), spec.clone());
        within("start", move || sup.start(spec))?
    };
    match &started {
        Ok(info) => {
            prop_assert_eq!(info.name(), name.as_str());
            prop_assert_eq!(info.spec(), &spec);
        }
        Err(e) => {
            prop_assert!(
                matches!(e.kind(), ErrorKind::InvalidSpec | ErrorKind::Spawn),
                "start failed with {:?}",
                e
            );
            prop_assert_eq!(e.service(), Some(name.as_str()), "{}", e);
            prop_assert!(!e.to_string().is_empty());
        }
    }
    // A spawn error saves the service (errored); an invalid spec saves nothing.
    let saved = match &started {
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::Spawn,
    };
    if saved {
        for op in ["stop", "restart", "stop", "delete"] {
            let (sup, target) = (sup.clone(), name.clone());
            let result = within(op, move || match op {
                "stop" => sup.stop(&target),
                "restart" => sup.restart(&target),
                _ => sup.delete(&target),
            })?;
            match result {
                Ok(n) => prop_assert_eq!(n, 1, "{} acted on {} services", op, n),
                // A program that cannot start fails its restart, with the spawn error.
                Err(e) if op == "restart" && e.kind() == ErrorKind::Spawn => {}
                Err(e) => prop_assert!(false, "{} failed: {:?}", op, e),
            }
        }
    }
    // The thread still answers.
    let probe = {
        let sup = sup.clone();
        within("a probe", move || sup.stop("zz-no-such-service"))?
    };
    prop_assert_eq!(
        probe.map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "the supervision thread no longer answers"
    );
    let shutdown = {
        let sup = sup.clone();
        within("shutdown", move || sup.shutdown())?
    };
    prop_assert!(shutdown.is_ok(), "shutdown: {:?}", shutdown);
    let left = wait_until(SECS_5, || tagged_processes(token).is_empty().then_some(()));
    prop_assert!(
        left.is_some(),
        "left running: {:?}",
        tagged_processes(token)
    );
    Ok(())
}

/// A spec with every field set, as JSON: the seed for mutations. With `deps`, it names
/// dependencies (which a fresh supervisor does not have, so it cannot start).
fn full_spec_json(deps: bool) -> String {
    let spec = ServiceSpec::new("web-1.worker_2", "/bin/true")
        .args(["-m", "http.server", "8080"])
        .env("PATH", empty_dir().to_str().unwrap())
        .env("PORT", "8080")
        .env_remove("DEBUG")
        .current_dir("/tmp")
        .restart(
            RestartPolicy::on_failure()
                .backoff(
                    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30))
                        .factor(1.5)
                        .jitter(0.1),
                )
                .stable_after(Duration::from_secs(10))
                .max_restarts(5, Duration::from_secs(60))
                .success_codes([0, 2]),
        )
        .stop_signal(Signal::Int)
        .stop_timeout(Duration::from_millis(1500))
        .log(
            LogPolicy::default()
                .max_bytes(1000)
                .keep(2)
                .timestamps(true)
                .merge_stderr(true)
                .line_max(128),
        )
        .ready(Ready::LogLine("listening on (port )?[0-9]+$".into()))
        .ready_timeout(Duration::from_secs(5))
        .health(
            Health::http("http://127.0.0.1:9/healthz")
                .interval(Duration::from_secs(2))
                .timeout(Duration::from_millis(300))
                .failures(2)
                .initial_delay(Duration::from_millis(50)),
        );
    let spec = if deps {
        spec.after("db", Condition::Ready)
            .after("migrate", Condition::Exited0)
            .restart_with("db")
    } else {
        spec
    };
    serde_json::to_string(&spec).unwrap()
}

#[derive(Clone, Debug)]
enum Mutation {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that matter to JSON and to the values inside, and any byte at all.
    let byte = prop_oneof![
        prop::sample::select(b"{}[]\":,0123456789.-+eEmsnuh \\/\0tfal".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match *m {
            Mutation::Replace(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = b;
            }
            Mutation::Insert(i, b) => {
                let i = i % (bytes.len() + 1);
                bytes.insert(i, b);
            }
            Mutation::Delete(i) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes.remove(i);
            }
            _ => {}
        }
    }
    bytes
}

/// What parses must serialize and parse back to itself.
fn round_trips(spec: &ServiceSpec) -> Result<(), TestCaseError> {
    let json = serde_json::to_string(spec)
        .map_err(|e| TestCaseError::fail(format!("a parsed spec does not serialize: {e}")))?;
    let back: ServiceSpec = serde_json::from_str(&json)
        .map_err(|e| TestCaseError::fail(format!("{json} does not parse back: {e}")))?;
    prop_assert_eq!(&back, spec, "{}", json);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn spec_json_from_arbitrary_text_parses_or_errs(
        text in prop_oneof![any::<String>(), "[{}\\[\\]\":,a-z0-9._ -]{0,80}"],
    ) {
        if let Ok(spec) = serde_json::from_str::<ServiceSpec>(&text) {
            round_trips(&spec)?;
        }
    }

    #[test]
    fn mutated_spec_json_parses_or_errs_and_what_parses_round_trips(
        deps in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let bytes = mutate(full_spec_json(deps).into_bytes(), &mutations);
        if let Ok(spec) = serde_json::from_slice::<ServiceSpec>(&bytes) {
            round_trips(&spec)?;
        }
    }

    #[test]
    fn log_cursor_text_parses_or_gives_a_typed_error(text in prop_oneof![
        any::<String>(),
        "[0-9+-]{0,22}:[0-9+-]{0,22}",
    ]) {
        match text.parse::<LogCursor>() {
            Ok(cursor) => {
                let shown = cursor.to_string();
                prop_assert_eq!(shown.parse::<LogCursor>().ok(), Some(cursor), "{}", shown);
            }
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::InvalidInput),
        }
    }

    #[test]
    fn log_cursor_text_round_trips(ino in any::<u64>(), offset in any::<u64>()) {
        let text = format!("{ino}:{offset}");
        let cursor: LogCursor = text.parse().unwrap();
        prop_assert_eq!(cursor.to_string(), text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(48),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    /// Mutated JSON that still parses is started (when it can do no harm), stopped and
    /// deleted on a supervisor of its own.
    #[test]
    fn mutated_spec_json_that_parses_starts_or_gives_a_typed_error(
        deps in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = mutate(full_spec_json(deps).into_bytes(), &mutations);
        let Ok(spec) = serde_json::from_slice::<ServiceSpec>(&bytes) else {
            return Ok(());
        };
        prop_assume!(safe_to_run(&spec));
        let token = new_token();
        start_and_clean_up(spec.env(TOKEN_VAR, &token), &token)?;
    }

    #[test]
    fn start_with_arbitrary_specs_returns_ok_or_a_typed_error(spec in arbitrary_spec(false)) {
        prop_assert!(safe_to_run(&spec), "the generator made a spec that is not safe to run");
        let token = new_token();
        start_and_clean_up(spec.env(TOKEN_VAR, &token), &token)?;
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._-]{1,12}",
        2 => any::<String>(),
        1 => ".{0,3}\0.{0,3}",
        1 => "[=\n \t'\"$;|&]{1,4}",
        1 => Just(String::new()),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9][a-zA-Z0-9._-]{0,10}",
        1 => "[a-z]{65,70}",
        1 => "[0-9]{1,22}",
        1 => prop::sample::select(vec!["all", ".x", "a b", "é", "-", "_", "a\nb", ""])
            .prop_map(str::to_string),
        2 => text(),
    ]
}

/// Durations a caller could pass; `extreme` adds the ones at the edge of `Duration`.
fn duration(extreme: bool) -> BoxedStrategy<Duration> {
    let ordinary = prop_oneof![
        Just(Duration::ZERO),
        (0u64..50_000_000).prop_map(Duration::from_nanos),
        (0u64..3_600_000).prop_map(Duration::from_millis),
        (0u64..1 << 32).prop_map(Duration::from_secs),
    ];
    if extreme {
        prop_oneof![
            2 => ordinary,
            1 => Just(Duration::MAX),
            1 => Just(Duration::from_secs(u64::MAX)),
            1 => any::<u64>().prop_map(Duration::from_secs),
        ]
        .boxed()
    } else {
        ordinary.boxed()
    }
}

fn signal() -> impl Strategy<Value = Signal> {
    prop::sample::select(vec![
        Signal::Term,
        Signal::Int,
        Signal::Quit,
        Signal::Hup,
        Signal::Kill,
        Signal::Usr1,
        Signal::Usr2,
    ])
}

fn policy(extreme: bool) -> impl Strategy<Value = RestartPolicy> {
    let backoff = prop_oneof![
        Just(Backoff::none()),
        duration(extreme).prop_map(Backoff::fixed),
        (
            duration(extreme),
            duration(extreme),
            any::<f64>(),
            any::<f64>()
        )
            .prop_map(|(b, m, f, j)| Backoff::exponential(b, m).factor(f).jitter(j)),
    ];
    let mode = prop::sample::select(vec![0u8, 1, 2]);
    let limit = prop::option::of((any::<u32>(), duration(extreme)));
    (
        mode,
        backoff,
        duration(extreme),
        limit,
        prop::collection::vec(any::<i32>(), 0..3),
    )
        .prop_map(|(mode, backoff, stable, limit, codes)| {
            let p = match mode {
                0 => RestartPolicy::always(),
                1 => RestartPolicy::on_failure(),
                _ => RestartPolicy::never(),
            };
            let p = p.backoff(backoff).stable_after(stable).success_codes(codes);
            match limit {
                Some((n, window)) => p.max_restarts(n, window),
                None => p,
            }
        })
}

fn log_policy(extreme: bool) -> impl Strategy<Value = LogPolicy> {
    let line_max = if extreme {
        prop_oneof![0usize..256, any::<usize>()].boxed()
    } else {
        prop_oneof![0usize..256, 0usize..1 << 20].boxed()
    };
    (
        any::<u64>(),
        0u32..20,
        any::<bool>(),
        any::<bool>(),
        line_max,
    )
        .prop_map(|(max, keep, stamps, merge, line_max)| {
            LogPolicy::default()
                .max_bytes(max)
                .keep(keep)
                .timestamps(stamps)
                .merge_stderr(merge)
                .line_max(line_max)
        })
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), any::<u16>(), Just(9)].prop_map(harmless_port)
}

/// An argument vector for a readiness or health command: harmless programs only.
fn argv() -> impl Strategy<Value = Vec<String>> {
    let program = prop_oneof![
        Just("/bin/true".to_string()),
        Just("/bin/false".to_string()),
        text().prop_map(|t| format!("/nonexistent/{t}")),
        Just(String::new()),
        Just("/bin/tr\0ue".to_string()),
    ];
    (program, prop::collection::vec(text(), 0..3), any::<bool>()).prop_map(
        |(program, mut args, empty)| {
            if empty {
                return Vec::new();
            }
            args.insert(0, program);
            args
        },
    )
}

/// Regular expressions, valid and not, including ones that are costly to compile.
fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => text(),
        2 => r"[a-z()\[\]{}*+?|^$.\\0-9,:=-]{0,30}",
        1 => prop::sample::select(vec![
            "(a{1000}){1000}",
            "a{4294967295}",
            "((((((((((((((((((((((((((((((a))))))))))))))))))))))))))))))",
            r"(?i)\p{L}+",
            "[[:alpha:]]+",
            "(a|aa)*b",
            r"\",
            "(?P<n>x)(?P<n>y)",
        ])
        .prop_map(str::to_string),
    ]
}

/// Loopback URLs (to a port nothing else listens on) and other text.
fn url() -> impl Strategy<Value = String> {
    let host = prop::sample::select(vec![
        "127.0.0.1",
        "localhost",
        "[::1]",
        "127.1.2.3",
        "127.0.0.256",
        "example.com",
        "",
        "[::1",
    ]);
    let url =
        (host, prop::option::of(port()), "(/[ -~]{0,12})?").prop_map(
            |(host, port, path)| match port {
                Some(port) => format!("http://{host}:{port}{path}"),
                None => format!("http://{host}{path}"),
            },
        );
    let other = text().prop_filter("names no listening port", |t| {
        url_port(t).is_none_or(|p| !listening_ports().contains(&p))
    });
    prop_oneof![2 => url, 1 => other]
}

fn ready(extreme: bool) -> impl Strategy<Value = Ready> {
    prop_oneof![
        2 => Just(Ready::Immediately),
        1 => duration(extreme).prop_map(Ready::After),
        1 => pattern().prop_map(Ready::LogLine),
        1 => port().prop_map(Ready::Tcp),
        1 => argv().prop_map(Ready::Command),
        1 => Just(Ready::Notify),
    ]
}

fn health(extreme: bool) -> impl Strategy<Value = Health> {
    let check = prop_oneof![
        port().prop_map(Health::tcp),
        argv().prop_map(Health::command),
        url().prop_map(Health::http),
        Just(Health::notify()),
    ];
    (
        check,
        duration(extreme),
        duration(extreme),
        prop_oneof![0u32..4, any::<u32>()],
        duration(extreme),
    )
        .prop_map(|(h, interval, timeout, failures, delay)| {
            h.interval(interval)
                .timeout(timeout)
                .failures(failures)
                .initial_delay(delay)
        })
}

fn condition() -> impl Strategy<Value = Condition> {
    prop::sample::select(vec![
        Condition::Started,
        Condition::Ready,
        Condition::Exited0,
    ])
}

/// A spec with arbitrary fields whose programs can be nothing but harmless: `true` or
/// `echo` (printing the arguments), or a name or path that finds nothing; its readiness and
/// health checks run harmless commands and probe no port that anything else listens on.
fn arbitrary_spec(extreme: bool) -> impl Strategy<Value = ServiceSpec> {
    let program = prop_oneof![
        Just("/bin/true".to_string()),
        Just("/bin/echo".to_string()),
        Just("echo".to_string()),
        text().prop_map(|t| t.replace('/', "_")),
        text().prop_map(|t| format!("/nonexistent/{t}")),
    ];
    let env = prop::collection::vec((text(), text()), 0..4);
    let env_remove = prop::collection::vec(text(), 0..2);
    let checks = (
        prop_oneof![3 => Just(None), 1 => ready(extreme).prop_map(Some)],
        duration(extreme),
        prop_oneof![3 => Just(None), 1 => health(extreme).prop_map(Some)],
        prop::collection::vec((name(), condition()), 0..2),
        prop::collection::vec(name(), 0..2),
    );
    (
        (name(), program, prop::collection::vec(text(), 0..4)),
        (env, env_remove, any::<bool>(), prop::option::of(text())),
        (
            policy(extreme),
            signal(),
            duration(extreme),
            log_policy(extreme),
        ),
        checks,
    )
        .prop_map(
            |(
                (name, program, args),
                (env, env_remove, clear, dir),
                (policy, signal, stop_timeout, log),
                (ready, ready_timeout, health, after, restart_with),
            )| {
                let path = if program == "echo" {
                    "/bin:/usr/bin".to_string()
                } else {
                    empty_dir().display().to_string()
                };
                let mut spec = ServiceSpec::new(name, program).args(args);
                for (k, v) in env {
                    if k != "PATH" {
                        spec = spec.env(k, v);
                    }
                }
                for k in env_remove {
                    if k != "PATH" && k != TOKEN_VAR {
                        spec = spec.env_remove(k);
                    }
                }
                if clear {
                    spec = spec.env_clear();
                }
                if let Some(dir) = dir {
                    spec = spec.current_dir(dir);
                }
                if let Some(ready) = ready {
                    spec = spec.ready(ready).ready_timeout(ready_timeout);
                }
                if let Some(health) = health {
                    spec = spec.health(health);
                }
                for (dep, condition) in after {
                    spec = spec.after(dep, condition);
                }
                for other in restart_with {
                    spec = spec.restart_with(other);
                }
                spec.env("PATH", path)
                    .restart(policy)
                    .stop_signal(signal)
                    .stop_timeout(stop_timeout)
                    .log(log)
            },
        )
}

/// Any target string, for every call that takes one: found by name or id, `"all"`, or
/// `NotFound`; never a panic.
#[test]
fn arbitrary_targets_are_found_or_not_found() -> TestResult {
    let h = Harness::new()?;
    let info = h.sup().start(h.sh("svc", "echo hi; exec sleep 600"))?;
    let id = info.id();
    let resolves = |t: &str| {
        t == "svc"
            || (!t.is_empty()
                && t.bytes().all(|b| b.is_ascii_digit())
                && t.parse::<u64>().ok() == Some(id))
    };
    let config = ProptestConfig {
        cases: cases(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let targets = prop_oneof![
        text(),
        name(),
        "0{0,25}1",
        Just("all".to_string()),
        Just(id.to_string()),
        Just("18446744073709551616".to_string()),
    ];
    proptest!(config, |(target in targets)| {
        let sup = h.sup();
        let found = resolves(&target);
        let kind = |r: sheepdog::Result<()>| r.err().map(|e| e.kind());
        let describe = kind(sup.describe(&target).map(|_| ()));
        let want_describe = if target == "all" {
            Some(ErrorKind::InvalidInput)
        } else if found {
            None
        } else {
            Some(ErrorKind::NotFound)
        };
        prop_assert_eq!(describe, want_describe, "describe");
        if target == "all" || found {
            prop_assert_eq!(
                kind(sup.wait_for(&target, Status::Online, Duration::from_millis(1))),
                None,
                "wait_for of a service that is online"
            );
            return Ok(());
        }
        let not_found = Some(ErrorKind::NotFound);
        prop_assert_eq!(kind(sup.stop(&target).map(|_| ())), not_found, "stop");
        prop_assert_eq!(kind(sup.restart(&target).map(|_| ())), not_found, "restart");
        prop_assert_eq!(kind(sup.delete(&target).map(|_| ())), not_found, "delete");
        prop_assert_eq!(
            kind(sup.wait_for(&target, Status::Online, Duration::from_millis(1))),
            not_found,
            "wait_for"
        );
        prop_assert_eq!(kind(sup.log_path(&target, Stream::Stdout).map(|_| ())), not_found, "log_path");
        prop_assert_eq!(kind(sup.tail(&target, Stream::Stderr, 3).map(|_| ())), not_found, "tail");
        prop_assert_eq!(kind(sup.follow(&target, Stream::Stdout).map(|_| ())), not_found, "follow");
    });
    assert_eq!(
        h.sup().describe("svc")?.pid(),
        info.pid(),
        "the service is untouched"
    );
    h.finish()
}

/// `follow_from` with any cursor, and `tail` with any count, return lines or nothing.
#[test]
fn following_from_an_arbitrary_cursor_never_panics() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh(
        "svc",
        "for i in 1 2 3; do echo line $i; done; exec sleep 600",
    ))?;
    let log = h.sup().log_path("svc", Stream::Stdout)?;
    wait_lines(&log, 3, SECS_5)?;
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&log)?);
    let config = ProptestConfig {
        cases: cases(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let inos = prop_oneof![Just(ino), any::<u64>()];
    proptest!(config, |(ino in inos, offset in prop_oneof![0u64..40, any::<u64>()], n in prop_oneof![0usize..10, any::<usize>()])| {
        let cursor: LogCursor = format!("{ino}:{offset}").parse()?;
        let mut follower = h.sup().follow_from("svc", Stream::Stdout, cursor)?;
        let line = follower.recv_timeout(Duration::from_millis(5));
        if let Some(line) = line {
            prop_assert!(!line.contains('\n'), "a line without its line end");
        }
        let _ = follower.cursor().to_string();
        let lines = h.sup().tail("svc", Stream::Stdout, n)?;
        prop_assert_eq!(lines.len(), n.min(3), "tail gives at most the lines there are");
    });
    h.finish()
}

// ---------------------------------------------------------------------------------------
// Inputs at the edge of `Duration` and `usize`: "forever" and "no limit" as callers write them.

/// The fuzzing of `start` above, with durations and caps up to their types' limits.
#[test]
fn start_with_extreme_numbers_returns_ok_or_a_typed_error() -> TestResult {
    let config = ProptestConfig {
        cases: cases(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(spec in arbitrary_spec(true))| {
        prop_assert!(safe_to_run(&spec), "the generator made a spec that is not safe to run");
        let token = new_token();
        start_and_clean_up(spec.env(TOKEN_VAR, &token), &token)?;
    });
    Ok(())
}
