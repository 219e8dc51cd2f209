//! Probes for readiness and liveness, run off the supervision thread by a fixed pool of
//! worker threads, each bounded by its timeout: a probe that hangs delays only itself.

use crate::engine::Request;
use crate::readiness::Check;
use crate::sys::Waker;
use crossbeam_channel::{Receiver, Sender};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Worker threads: started on the first probe, constant whatever the fleet size.
const WORKERS: usize = 4;

/// What a probe is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    Ready,
    Health,
}

pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) generation: u64,
    pub(crate) purpose: Purpose,
    pub(crate) check: Check,
    pub(crate) timeout: Duration,
}

/// A probe's outcome: `Ok` or why it failed, as a lowercase phrase.
pub(crate) type Outcome = Result<(), String>;

pub(crate) struct Pool {
    tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    pub(crate) fn start(requests: Sender<Request>, waker: Waker) -> std::io::Result<Pool> {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = crossbeam_channel::unbounded();
        let waker = std::sync::Arc::new(waker);
        let mut workers = Vec::new();
        for i in 0..WORKERS {
            let (rx, requests, waker) = (rx.clone(), requests.clone(), waker.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("sheepdog-probe-{i}"))
                    .spawn(move || {
                        for job in rx {
                            let outcome = run(&job.check, job.timeout);
                            let report = Request::Probed {
                                id: job.id,
                                generation: job.generation,
                                purpose: job.purpose,
                                outcome,
                            };
                            if requests.send(report).is_err() {
                                return;
                            }
                            waker.wake();
                        }
                    })?,
            );
        }
        Ok(Pool {
            tx: Some(tx),
            workers,
        })
    }

    pub(crate) fn submit(&self, job: Job) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx = None;
        for w in self.workers.drain(..) {
            // Each job ends within its timeout, so this is bounded.
            w.join().expect("probe workers do not panic");
        }
    }
}

/// Runs one check within `timeout`.
pub(crate) fn run(check: &Check, timeout: Duration) -> Outcome {
    match check {
        Check::Tcp(port) => {
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            TcpStream::connect_timeout(&addr, timeout)
                .map(drop)
                .map_err(|e| format!("tcp 127.0.0.1:{port}: {e}"))
        }
        Check::Http(url) => http_get(url, timeout),
        Check::Command(argv) => command(argv, timeout),
        Check::Notify => Ok(()),
    }
}

/// `(host, port, path)` of a plain `http://` URL on a loopback address.
pub(crate) fn parse_loopback_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, 80),
    };
    let loopback = matches!(host, "localhost" | "[::1]") || host.starts_with("127.");
    if !loopback || path.contains(['\r', '\n', ' ']) {
        return None;
    }
    if host.starts_with("127.") && host.parse::<std::net::Ipv4Addr>().is_err() {
        return None;
    }
    Some((host.to_string(), port, path))
}

fn http_get(url: &str, timeout: Duration) -> Outcome {
    let deadline = crate::duration::deadline(Instant::now(), timeout);
    let (host, port, path) =
        parse_loopback_url(url).ok_or_else(|| format!("http {url}: not a loopback URL"))?;
    let ip: std::net::IpAddr = match host.as_str() {
        "localhost" => [127, 0, 0, 1].into(),
        "[::1]" => std::net::Ipv6Addr::LOCALHOST.into(),
        h => h.parse().map_err(|_| format!("http {url}: bad host"))?,
    };
    let fail = |what: String| format!("http {url}: {what}");
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout)
        .map_err(|e| fail(e.to_string()))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream
        .set_write_timeout(Some(left()))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: sheepdog\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        stream
            .set_read_timeout(Some(left()))
            .map_err(|e| fail(e.to_string()))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail("no HTTP status line".into()))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(fail(format!("status {status}")))
    }
}

fn command(argv: &[String], timeout: Duration) -> Outcome {
    let shown = argv.join(" ");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("command '{shown}': {e}"))?;
    let deadline = crate::duration::deadline(Instant::now(), timeout);
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("command '{shown}': {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "command '{shown}': timed out after {}",
                    crate::duration::format(timeout)
                ));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("command '{shown}': {e}")),
        }
    }
}

use std::os::unix::process::CommandExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_urls_are_accepted() {
        assert_eq!(
            parse_loopback_url("http://127.0.0.1:8080/healthz"),
            Some(("127.0.0.1".into(), 8080, "/healthz".into()))
        );
        assert_eq!(
            parse_loopback_url("http://localhost"),
            Some(("localhost".into(), 80, "/".into()))
        );
        assert!(parse_loopback_url("http://[::1]:9000/x").is_some());
        for bad in [
            "https://127.0.0.1/",
            "http://10.0.0.1/",
            "http://example.com/",
            "http://127.0.0.1:x/",
            "ftp://127.0.0.1",
        ] {
            assert!(parse_loopback_url(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_closed_port_and_a_failing_command_fail_with_a_reason() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(run(&Check::Tcp(port), Duration::from_secs(1)), Ok(()));
        drop(listener);
        assert!(run(&Check::Tcp(port), Duration::from_secs(1))
            .unwrap_err()
            .contains("tcp 127.0.0.1"));
        assert_eq!(
            run(&Check::Command(vec!["true".into()]), Duration::from_secs(5)),
            Ok(())
        );
        let err = run(
            &Check::Command(vec!["sleep".into(), "5".into()]),
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
    }
}
