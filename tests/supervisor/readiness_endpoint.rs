//! `/readyz` over a fleet with a scheduled job: a job waiting for its next tick is in its
//! steady state, so a fleet with a nightly job is ready all day (every service is required
//! by default); a service that is starting is not, and is named.

use crate::prelude::*;
use sheepdog::{Endpoints, Schedule, Status, Supervisor};
use std::io::{Read, Write};

/// One GET on the endpoints: the status code and the body.
fn get(address: std::net::SocketAddr, path: &str) -> TestResult<(u16, String)> {
    let mut http = std::net::TcpStream::connect(address)?;
    http.set_read_timeout(Some(SECS_5))?;
    write!(http, "GET {path} HTTP/1.1\r\n\r\n")?;
    let mut answer = String::new();
    http.read_to_string(&mut answer)?;
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("a status line: {answer:?}"))?;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

#[test]
fn a_job_waiting_for_its_tick_counts_as_ready() -> TestResult {
    let h = Harness::with(Supervisor::builder().endpoints(Endpoints::new("127.0.0.1:0")))?;
    let address = h
        .sup()
        .endpoints_address()
        .context("the endpoints' address")?;
    // Once a year, at midnight on the first of January: it waits all through the test.
    let job = h
        .sh("nightly", "echo ran")
        .schedule(Schedule::run("0 0 1 1 *").time_zone("UTC"));
    h.sup().start(job)?;
    h.sup().wait_for("nightly", Status::Scheduled, SECS_5)?;
    let slow = h
        .sh("slow", "read line; exec sleep 600")
        .ready(sheepdog::Ready::LogLine("never printed".into()));
    h.sup().start(slow)?;
    let (code, body) = get(address, "/readyz")?;
    assert_eq!(code, 503, "slow is starting: {body}");
    assert!(body.contains("slow"), "the one not ready is named: {body}");
    assert!(
        !body.contains("nightly"),
        "the waiting job is ready: {body}"
    );
    h.sup().delete("slow")?;
    let (code, body) = get(address, "/readyz")?;
    assert_eq!(code, 200, "only the waiting job is left: {body}");
    h.finish()
}
