//! Readiness, liveness and dependencies, with real children (shell and Python listeners).

use crate::common::*;
use sheepdog::{Backoff, Condition, ErrorKind, Event, Health, Ready, RestartPolicy, Status};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Python TCP listener on `port` that, after `serve_s` seconds, closes its socket and hangs.
fn listener(port: u16, delay_s: f64, serve_s: f64) -> String {
    format!(
        "exec python3 -c 'import socket,time; time.sleep({delay_s}); s=socket.socket(); \
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", {port})); s.listen(64); \
         t=time.time()\nwhile time.time()-t < {serve_s}:\n  s.settimeout(0.05)\n  try: s.accept()[0].close()\n  except OSError: pass\n\
         s.close(); time.sleep(600)'"
    )
}

#[test]
fn log_line_readiness_keeps_the_service_starting_until_the_line() {
    let h = Harness::new();
    let events = h.sup().subscribe();
    let spec = h
        .sh(
            "logready",
            "sleep 0.3; echo 'server listening on 8080'; exec sleep 600",
        )
        .ready(Ready::LogLine("listening on \\d+".into()));
    let info = h.sup().start(spec).unwrap();
    assert_eq!(info.status(), Status::Starting);
    h.sup()
        .wait_for("logready", Status::Online, SECS_5)
        .unwrap();
    expect_event(&events, SECS_5, "ready", |e| {
        matches!(e, Event::Ready { .. })
    });
    h.finish();
}

#[test]
fn not_ready_in_time_is_a_failed_start_that_counts_as_a_crash() {
    let h = Harness::new();
    let spec = h
        .sh("silent", "exec sleep 600")
        .ready(Ready::LogLine("never printed".into()))
        .ready_timeout(Duration::from_millis(300))
        .restart(
            RestartPolicy::on_failure()
                .max_restarts(1, Duration::from_secs(60))
                .backoff(Backoff::none()),
        );
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("silent", Status::Errored, SECS_10)
        .unwrap();
    let info = h.sup().describe("silent").unwrap();
    assert_eq!(
        info.restarts(),
        1,
        "the first timeout restarted it, the second was over the limit"
    );
    let exit = info.last_exit().unwrap();
    assert_eq!(exit.reason(), Some("not ready within 300ms"));
    assert_eq!(exit.signal(), Some(15));
    h.finish();
}

#[test]
fn tcp_readiness_passes_when_the_port_opens_and_times_out_when_it_never_does() {
    let h = Harness::new();
    let port = free_port();
    let spec = h
        .sh("tcp", &listener(port, 0.3, 600.0))
        .ready(Ready::Tcp(port));
    assert_eq!(h.sup().start(spec).unwrap().status(), Status::Starting);
    h.sup().wait_for("tcp", Status::Online, SECS_10).unwrap();

    let closed = free_port();
    let spec = h
        .sh("tcp-never", "exec sleep 600")
        .ready(Ready::Tcp(closed))
        .ready_timeout(Duration::from_millis(400))
        .restart(RestartPolicy::never());
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("tcp-never", Status::Exited, SECS_10)
        .unwrap();
    assert_eq!(
        h.sup()
            .describe("tcp-never")
            .unwrap()
            .last_exit()
            .unwrap()
            .reason(),
        Some("not ready within 400ms")
    );
    h.finish();
}

#[test]
fn command_readiness_waits_for_the_command_to_succeed() {
    let h = Harness::new();
    let flag = h.dir.path().join("flag");
    let spec = h.sh("cmd", "exec sleep 600").ready(Ready::Command(vec![
        "test".into(),
        "-f".into(),
        flag.display().to_string(),
    ]));
    h.sup().start(spec).unwrap();
    std::thread::sleep(Duration::from_millis(200)); // part of the scenario: not ready yet
    assert_eq!(status(h.sup(), "cmd"), Status::Starting);
    std::fs::write(&flag, "").unwrap();
    h.sup().wait_for("cmd", Status::Online, SECS_5).unwrap();
    h.finish();
}

fn notifier(script_body: &str) -> String {
    format!(
        "exec python3 -c 'import os,socket,time\na=os.environ[\"NOTIFY_SOCKET\"]\na=\"\\0\"+a[1:] if a[0]==\"@\" else a\n\
         s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n{script_body}'"
    )
}

#[test]
fn notify_readiness_understands_ready_and_status() {
    let h = Harness::new();
    let body = "time.sleep(0.2)\ns.sendto(b\"STATUS=warming up\\nREADY=1\", a)\ntime.sleep(600)";
    h.sup()
        .start(h.sh("notify", &notifier(body)).ready(Ready::Notify))
        .unwrap();
    h.sup().wait_for("notify", Status::Online, SECS_10).unwrap();
    assert_eq!(
        h.sup().describe("notify").unwrap().status_text(),
        Some("warming up")
    );

    let silent = h
        .sh("notify-never", "exec sleep 600")
        .ready(Ready::Notify)
        .ready_timeout(Duration::from_millis(300))
        .restart(RestartPolicy::never());
    h.sup().start(silent).unwrap();
    h.sup()
        .wait_for("notify-never", Status::Exited, SECS_5)
        .unwrap();
    h.finish();
}

#[test]
fn a_service_that_signals_ready_then_dies_is_restarted() {
    let h = Harness::new();
    let events = h.sup().subscribe();
    let spec = h
        .sh("flash", "echo ready; sleep 0.1; exit 1")
        .ready(Ready::LogLine("^ready$".into()))
        .restart(RestartPolicy::on_failure().backoff(Backoff::fixed(Duration::from_millis(50))));
    h.sup().start(spec).unwrap();
    expect_event(&events, SECS_5, "ready", |e| {
        matches!(e, Event::Ready { .. })
    });
    expect_event(&events, SECS_5, "the exit", |e| {
        matches!(e, Event::Exited { .. })
    });
    expect_event(&events, SECS_5, "ready again", |e| {
        matches!(e, Event::Ready { .. })
    });
    assert!(h.sup().describe("flash").unwrap().restarts() >= 1);
    h.sup().stop("flash").unwrap();
    h.finish();
}

#[test]
fn a_service_that_stops_answering_is_restarted_after_the_failures() {
    let h = Harness::new();
    let port = free_port();
    let events = h.sup().subscribe();
    let spec = h
        .sh("hung", &listener(port, 0.0, 1.0))
        .ready(Ready::Tcp(port))
        .health(
            Health::tcp(port)
                .interval(Duration::from_millis(100))
                .timeout(Duration::from_millis(200))
                .failures(3),
        )
        .stop_timeout(Duration::from_millis(500))
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(100))));
    h.sup().start(spec).unwrap();
    let Event::Unhealthy { reason, .. } = expect_event(&events, SECS_10, "unhealthy", |e| {
        matches!(e, Event::Unhealthy { .. })
    }) else {
        unreachable!()
    };
    assert!(reason.contains("tcp 127.0.0.1"), "{reason}");
    expect_event(&events, SECS_10, "the restart", |e| {
        matches!(e, Event::Started { .. })
    });
    let info = h.sup().describe("hung").unwrap();
    assert_eq!(info.restarts(), 1);
    assert!(
        info.last_exit()
            .unwrap()
            .reason()
            .unwrap()
            .starts_with("unhealthy: tcp"),
        "{:?}",
        info.last_exit()
    );
    h.sup().stop("hung").unwrap();
    h.finish();
}

#[test]
fn a_chain_of_three_starts_in_order_and_stops_in_reverse() {
    let h = Harness::new();
    let events = h.sup().subscribe();
    let ready = |name: &str| {
        h.sh(name, "sleep 0.2; echo up; exec sleep 600")
            .ready(Ready::LogLine("up".into()))
    };
    h.sup().start(ready("db")).unwrap();
    h.sup()
        .start(ready("api").after("db", Condition::Ready))
        .unwrap();
    h.sup()
        .start(ready("web").after("api", Condition::Ready))
        .unwrap();
    assert_eq!(status(h.sup(), "web"), Status::Starting);
    h.sup().wait_for("all", Status::Online, SECS_10).unwrap();
    let plan = h.sup().plan_stop("all").unwrap();
    assert_eq!(
        plan,
        vec![
            vec!["web".to_string()],
            vec!["api".into()],
            vec!["db".into()]
        ]
    );
    assert_eq!(
        h.sup().plan_start("all").unwrap(),
        vec![
            vec!["db".to_string()],
            vec!["api".into()],
            vec!["web".into()]
        ]
    );
    h.sup().stop("all").unwrap();
    let mut order = Vec::new();
    while let Some(e) = events.try_recv() {
        match e {
            Event::Started { name, .. } => order.push(format!("start {name}")),
            Event::Ready { name } => order.push(format!("ready {name}")),
            Event::Stopped { name } => order.push(format!("stop {name}")),
            _ => {}
        }
    }
    assert_eq!(
        order,
        [
            "start db",
            "ready db",
            "start api",
            "ready api",
            "start web",
            "ready web",
            "stop web",
            "stop api",
            "stop db"
        ]
    );
    h.finish();
}

#[test]
fn a_one_shot_setup_task_gates_its_dependent() {
    let h = Harness::new();
    let marker = h.dir.path().join("prepared");
    let setup = h
        .sh("setup", &format!("sleep 0.3; touch {}", marker.display()))
        .restart(RestartPolicy::never());
    h.sup().start(setup).unwrap();
    let app = h
        .sh(
            "app",
            &format!("test -f {} && exec sleep 600; exit 9", marker.display()),
        )
        .after("setup", Condition::Exited0)
        .restart(RestartPolicy::never());
    assert_eq!(h.sup().start(app).unwrap().status(), Status::Starting);
    h.sup().wait_for("app", Status::Online, SECS_5).unwrap();
    assert_eq!(status(h.sup(), "setup"), Status::Exited);

    // A failed setup never lets its dependent start.
    h.sup()
        .start(h.sh("bad-setup", "exit 1").restart(RestartPolicy::never()))
        .unwrap();
    h.sup()
        .start(
            h.sh("gated", "exec sleep 600")
                .after("bad-setup", Condition::Exited0),
        )
        .unwrap();
    h.sup()
        .wait_for("bad-setup", Status::Exited, SECS_5)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200)); // part of the scenario: nothing may start
    assert_eq!(status(h.sup(), "gated"), Status::Starting);
    assert_eq!(h.sup().describe("gated").unwrap().pid(), None);
    h.finish();
}

#[test]
fn cycles_and_unknown_dependencies_are_invalid() {
    let h = Harness::new();
    h.sup().start(h.sh("a", "exec sleep 600")).unwrap();
    h.sup()
        .start(h.sh("b", "exec sleep 600").after("a", Condition::Started))
        .unwrap();
    let err = h
        .sup()
        .start(h.sh("a", "exec sleep 600").after("b", Condition::Started))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    assert!(
        err.to_string().contains("dependency cycle: a -> b -> a"),
        "{err}"
    );
    let err = h
        .sup()
        .start(h.sh("c", "true").after("nope", Condition::Ready))
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown dependency 'nope'"),
        "{err}"
    );
    let err = h
        .sup()
        .start(h.sh("d", "true").after("d", Condition::Ready))
        .unwrap_err();
    assert!(
        err.to_string().contains("dependency cycle: d -> d"),
        "{err}"
    );
    h.finish();
}

#[test]
fn restart_with_restarts_dependents_that_ask_for_it_only() {
    let h = Harness::new();
    h.sup().start(h.sh("base", "exec sleep 600")).unwrap();
    let tied = h
        .sup()
        .start(
            h.sh("tied", "exec sleep 600")
                .after("base", Condition::Started)
                .restart_with("base"),
        )
        .unwrap();
    let free = h
        .sup()
        .start(
            h.sh("free", "exec sleep 600")
                .after("base", Condition::Started),
        )
        .unwrap();
    assert_eq!(h.sup().restart("base").unwrap(), 2, "base and tied");
    assert_ne!(h.sup().describe("tied").unwrap().pid(), tied.pid());
    assert_eq!(h.sup().describe("free").unwrap().pid(), free.pid());
    h.finish();
}

#[test]
fn a_hanging_probe_does_not_delay_an_unrelated_restart() {
    let h = Harness::new();
    // Enough hanging probes to occupy every probe worker for seconds.
    for i in 0..6 {
        let spec = h.sh(&format!("slowprobe{i}"), "exec sleep 600").health(
            Health::command(["sleep", "5"])
                .interval(Duration::from_millis(50))
                .timeout(Duration::from_secs(5)),
        );
        h.sup().start(spec).unwrap();
    }
    let events = h.sup().subscribe();
    h.sup()
        .start(
            h.sh("crasher", "exit 1")
                .restart(RestartPolicy::always().backoff(Backoff::none())),
        )
        .unwrap();
    let t = Instant::now();
    let mut restarts = 0;
    while restarts < 20 {
        expect_event(
            &events,
            SECS_5,
            "a restart",
            |e| matches!(e, Event::Started { name, .. } if name == "crasher"),
        );
        restarts += 1;
    }
    // Twenty restarts while every probe hangs for 5 s: supervision did not wait on them.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    h.sup().stop("crasher").unwrap();
    h.finish();
}
