//! Until its `ready` condition holds a service is `Starting`: a log line, a TCP port that
//! opens, a command that succeeds, `READY=1` on its notify socket (with `STATUS=`). Not ready
//! within `ready_timeout` is a failed start, counted as a crash; a service that was ready
//! and dies is restarted, and is ready again.

use crate::prelude::*;
use sheepdog::{Backoff, Event, Ready, RestartPolicy, Status};
use std::time::Duration;

pub fn free_port() -> TestResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A Python TCP listener on `port` that starts after `delay_s` seconds and, after
/// `serve_s` seconds, closes its socket and hangs.
pub fn listener(port: u16, delay_s: f64, serve_s: f64) -> String {
    format!(
        "exec python3 -c 'import socket,time; time.sleep({delay_s}); s=socket.socket(); \
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", {port})); s.listen(64); \
         t=time.time()\nwhile time.time()-t < {serve_s}:\n  s.settimeout(0.05)\n  try: s.accept()[0].close()\n  except OSError: pass\n\
         s.close(); time.sleep(600)'"
    )
}

#[test]
fn log_line_readiness_keeps_the_service_starting_until_the_line() -> TestResult {
    let h = Harness::new()?;
    let events = h.sup().subscribe();
    let spec = h
        .sh(
            "logready",
            "sleep 0.3; echo 'server listening on 8080'; exec sleep 600",
        )
        .ready(Ready::LogLine("listening on \\d+".into()));
    let info = h.sup().start(spec)?;
    assert_eq!(info.status(), Status::Starting, "starting until the line");
    h.sup().wait_for("logready", Status::Online, SECS_5)?;
    expect_event(&events, SECS_5, "ready", |e| {
        matches!(e, Event::Ready { .. })
    })?;
    h.finish()
}

#[test]
fn not_ready_in_time_is_a_failed_start_that_counts_as_a_crash() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("silent", "exec sleep 600")
        .ready(Ready::LogLine("never printed".into()))
        .ready_timeout(Duration::from_millis(300))
        .restart(
            RestartPolicy::on_failure()
                .max_restarts(1, Duration::from_secs(60))
                .backoff(Backoff::none()),
        );
    h.sup().start(spec)?;
    h.sup().wait_for("silent", Status::Errored, SECS_10)?;
    let info = h.sup().describe("silent")?;
    assert_eq!(
        info.restarts(),
        1,
        "the first timeout restarted it, the second was over the limit"
    );
    let exit = info
        .last_exit()
        .context("an errored service has a last exit")?;
    assert_eq!(exit.reason(), Some("not ready within 300ms"), "the reason");
    assert_eq!(exit.signal(), Some(15), "the run was stopped");
    h.finish()
}

#[test]
fn tcp_readiness_passes_when_the_port_opens_and_times_out_when_it_never_does() -> TestResult {
    let h = Harness::new()?;
    let port = free_port()?;
    let spec = h
        .sh("tcp", &listener(port, 0.3, 600.0))
        .ready(Ready::Tcp(port));
    assert_eq!(
        h.sup().start(spec)?.status(),
        Status::Starting,
        "starting until the port opens"
    );
    h.sup().wait_for("tcp", Status::Online, SECS_10)?;

    let closed = free_port()?;
    let spec = h
        .sh("tcp-never", "exec sleep 600")
        .ready(Ready::Tcp(closed))
        .ready_timeout(Duration::from_millis(400))
        .restart(RestartPolicy::never());
    h.sup().start(spec)?;
    h.sup().wait_for("tcp-never", Status::Exited, SECS_10)?;
    let exit = h.sup().describe("tcp-never")?.last_exit().cloned();
    assert_eq!(
        exit.as_ref().and_then(|e| e.reason()),
        Some("not ready within 400ms"),
        "the reason"
    );
    h.finish()
}

#[test]
fn command_readiness_waits_for_the_command_to_succeed() -> TestResult {
    let h = Harness::new()?;
    let flag = h.dir.path().join("flag");
    let spec = h.sh("cmd", "exec sleep 600").ready(Ready::Command(vec![
        "test".into(),
        "-f".into(),
        flag.display().to_string(),
    ]));
    h.sup().start(spec)?;
    std::thread::sleep(Duration::from_millis(200)); // part of the scenario: not ready yet
    assert_eq!(
        status(h.sup(), "cmd"),
        Status::Starting,
        "not ready while the command fails"
    );
    std::fs::write(&flag, "")?;
    h.sup().wait_for("cmd", Status::Online, SECS_5)?;
    h.finish()
}

fn notifier(script_body: &str) -> String {
    format!(
        "exec python3 -c 'import os,socket,time\na=os.environ[\"NOTIFY_SOCKET\"]\na=\"\\0\"+a[1:] if a[0]==\"@\" else a\n\
         s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n{script_body}'"
    )
}

#[test]
fn notify_readiness_understands_ready_and_status() -> TestResult {
    let h = Harness::new()?;
    let body = "time.sleep(0.2)\ns.sendto(b\"STATUS=warming up\\nREADY=1\", a)\ntime.sleep(600)";
    h.sup()
        .start(h.sh("notify", &notifier(body)).ready(Ready::Notify))?;
    h.sup().wait_for("notify", Status::Online, SECS_10)?;
    assert_eq!(
        h.sup().describe("notify")?.status_text(),
        Some("warming up"),
        "STATUS= is shown"
    );

    let silent = h
        .sh("notify-never", "exec sleep 600")
        .ready(Ready::Notify)
        .ready_timeout(Duration::from_millis(300))
        .restart(RestartPolicy::never());
    h.sup().start(silent)?;
    h.sup().wait_for("notify-never", Status::Exited, SECS_5)?;
    h.finish()
}

#[test]
fn a_service_that_signals_ready_then_dies_is_restarted() -> TestResult {
    let h = Harness::new()?;
    let events = h.sup().subscribe();
    let spec = h
        .sh("flash", "echo ready; sleep 0.1; exit 1")
        .ready(Ready::LogLine("^ready$".into()))
        .restart(RestartPolicy::on_failure().backoff(Backoff::fixed(Duration::from_millis(50))));
    h.sup().start(spec)?;
    expect_event(&events, SECS_5, "ready", |e| {
        matches!(e, Event::Ready { .. })
    })?;
    expect_event(&events, SECS_5, "the exit", |e| {
        matches!(e, Event::Exited { .. })
    })?;
    expect_event(&events, SECS_5, "ready again", |e| {
        matches!(e, Event::Ready { .. })
    })?;
    assert!(
        h.sup().describe("flash")?.restarts() >= 1,
        "the crash after ready counts as a restart"
    );
    h.sup().stop("flash")?;
    h.finish()
}
