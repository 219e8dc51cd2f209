//! [`Endpoints`]: an opt-in HTTP listener for an orchestrator's probes and a metrics
//! scraper: `/livez`, `/readyz` and `/metrics` (Prometheus text format).
//!
//! One thread serves every connection from one epoll (std's `TcpListener`, no HTTP crate: the
//! three answers are a few lines of HTTP/1.0). It reads the published snapshot and never
//! waits on the supervision thread except for `/livez`, whose very point is to ask it, for at
//! most [`LIVENESS_BOUND`]. A request is at most [`MAX_REQUEST`] bytes; a client has
//! [`READ_TIMEOUT`] to send it and [`WRITE_TIMEOUT`] to take the answer; beyond
//! [`MAX_CONNECTIONS`] connections a new one is closed at once. Every connection is closed
//! after one answer.

use crate::engine::Request;
use crate::error::{Error, ErrorKind, Result};
use crate::info::{ServiceInfo, Status};
use crate::logs::LogDir;
use crate::snapshot::Shared;
use crate::sys::{self, Poller, WAKER_TOKEN, Waker};
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long `/livez` waits for the supervision thread to answer.
pub const LIVENESS_BOUND: Duration = Duration::from_millis(500);
/// The longest request accepted (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client has to send its request, from its connection.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// The HTTP endpoints an orchestrator probes, served by the supervisor when asked for with
/// [`Builder::endpoints`](crate::Builder::endpoints):
///
/// - `GET /livez`: `200 ok` if the supervision thread answers within [`LIVENESS_BOUND`]
///   (a loop that is stuck fails it), else `503` saying so;
/// - `GET /readyz`: `200 ready` if every service required for readiness is ready (online,
///   a scheduled job waiting for its tick, or a one-shot that exited with success), else
///   `503` with one line per service that is
///   not (`web: starting`); by default every service is required;
/// - `GET /metrics`: per service its status, readiness, restarts, last exit code or signal,
///   uptime, CPU, memory, processes, log bytes and dropped log bytes; the supervisor's
///   service count, orphans reaped, threads and resident memory (Prometheus text format).
///
/// # Example
///
/// ```
/// use sheepdog::{Endpoints, ServiceSpec, Supervisor};
/// use std::io::{Read, Write};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sup = Supervisor::builder().endpoints(Endpoints::new("127.0.0.1:0")).open()?;
/// let address = sup.endpoints_address().expect("asked for");
/// let mut http = std::net::TcpStream::connect(address)?;
/// http.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")?;
/// let mut answer = String::new();
/// http.read_to_string(&mut answer)?;
/// assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    address: String,
    ready: Option<Vec<String>>,
}

impl Endpoints {
    /// Endpoints on `address` (`"127.0.0.1:9090"`; port 0 picks a free one, see
    /// [`Supervisor::endpoints_address`](crate::Supervisor::endpoints_address)). Bind to
    /// loopback unless the probes come from elsewhere (a Kubernetes kubelet probes the pod's
    /// address: `"0.0.0.0:9090"`).
    pub fn new(address: impl Into<String>) -> Endpoints {
        Endpoints {
            address: address.into(),
            ready: None,
        }
    }

    /// The services `/readyz` requires; by default, every service. A name the supervisor
    /// does not know is not ready.
    pub fn readiness<S: Into<String>>(
        mut self,
        services: impl IntoIterator<Item = S>,
    ) -> Endpoints {
        self.ready = Some(services.into_iter().map(Into::into).collect());
        self
    }

    /// The address to listen on.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// What the listener's thread reads and asks.
pub(crate) struct Context {
    pub(crate) requests: Sender<Request>,
    pub(crate) engine: Waker,
    pub(crate) shared: Arc<Shared>,
    pub(crate) cgroup_root: Option<PathBuf>,
    pub(crate) logs: LogDir,
}

/// Asks the supervision thread to answer within `bound`.
pub(crate) fn ping(requests: &Sender<Request>, engine: &Waker, bound: Duration) -> Result<()> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    requests
        .send(Request::Ping { reply })
        .map_err(|_| Error::shut_down())?;
    engine.wake();
    match answer.recv_timeout(bound) {
        Ok(result) => result,
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "the supervision thread did not answer within {}ms",
                bound.as_millis()
            ),
        )),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(Error::shut_down()),
    }
}

/// The running listener: its thread, and how to stop it.
pub(crate) struct Listener {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    wake: Waker,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Binds `endpoints`' address and starts the thread.
    pub(crate) fn start(endpoints: &Endpoints, ctx: Context) -> Result<Listener> {
        let io_error =
            |what: String, e: std::io::Error| Error::new(ErrorKind::Io, what).with_source(e);
        let listener = TcpListener::bind(&endpoints.address).map_err(|e| {
            io_error(
                format!(
                    "cannot listen on '{}' for the HTTP endpoints",
                    endpoints.address
                ),
                e,
            )
        })?;
        let address = listener
            .local_addr()
            .map_err(|e| io_error("cannot read the HTTP endpoints' address".into(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_error("cannot set up the HTTP endpoints".into(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ready = endpoints.ready.clone();
        // The poller lives on the thread that waits in it; its waker comes back.
        let (made_tx, made_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("sheepdog-http".into())
            .spawn(move || {
                let poller = Poller::new(MAX_CONNECTIONS)
                    .and_then(|p| p.add(&listener, LISTENER).map(|()| p))
                    .and_then(|p| p.waker().map(|w| (p, w)));
                let poller = match poller {
                    Ok((poller, waker)) => {
                        let _ = made_tx.send(Ok(waker));
                        poller
                    }
                    Err(e) => return drop(made_tx.send(Err(e))),
                };
                Server {
                    listener,
                    poller,
                    connections: HashMap::new(),
                    next_token: LISTENER + 1,
                    stop: flag,
                    ready,
                    cpu: crate::stats::CpuHistory::default(),
                    ctx,
                }
                .run()
            })
            .map_err(|e| io_error("cannot start the HTTP endpoints' thread".into(), e))?;
        let wake = made_rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the thread ended")))
            .map_err(|e| io_error("cannot set up the HTTP endpoints".into(), e))?;
        Ok(Listener {
            address,
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops the thread and closes the socket; idempotent.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .expect("the HTTP endpoints' thread does not panic");
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

const LISTENER: u64 = 0;

struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    deadline: Instant,
}

struct Server {
    listener: TcpListener,
    poller: Poller,
    connections: HashMap<u64, Connection>,
    next_token: u64,
    stop: Arc<AtomicBool>,
    ready: Option<Vec<String>>,
    cpu: crate::stats::CpuHistory,
    ctx: Context,
}

impl Server {
    fn run(mut self) {
        let mut ready = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let timeout = self
                .connections
                .values()
                .map(|c| c.deadline.saturating_duration_since(now))
                .min();
            ready.clear();
            if let Err(e) = self.poller.wait(timeout, &mut ready) {
                log::warn!("HTTP endpoints: wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            for &token in &ready {
                match token {
                    WAKER_TOKEN => {}
                    LISTENER => self.accept(),
                    token => self.read(token),
                }
            }
            let now = Instant::now();
            let late: Vec<u64> = self
                .connections
                .iter()
                .filter(|(_, c)| c.deadline <= now)
                .map(|(t, _)| *t)
                .collect();
            for token in late {
                // Too slow to send its request: told so, if it still listens.
                self.answer(token, 408, "request timeout\n");
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.connections.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue; // dropped: closed at once
                    }
                    let token = self.next_token;
                    self.next_token += 1;
                    if self.poller.add_stream(&stream, token).is_err() {
                        continue;
                    }
                    self.connections.insert(
                        token,
                        Connection {
                            stream,
                            request: Vec::new(),
                            deadline: Instant::now() + READ_TIMEOUT,
                        },
                    );
                    // Edge-triggered: what arrived with the connection is read now.
                    self.read(token);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return, // WouldBlock, or out of fds: the next readiness retries
            }
        }
    }

    /// Reads what `token`'s client sent, until it would block; answers once the request
    /// is whole.
    fn read(&mut self, token: u64) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 2048];
        let whole = loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => break false,
                Ok(n) => {
                    conn.request.extend_from_slice(&buf[..n]);
                    if conn.request.len() > MAX_REQUEST {
                        return self.answer(token, 431, "request too large\n");
                    }
                    if conn.request.windows(4).any(|w| w == b"\r\n\r\n")
                        || conn.request.windows(2).any(|w| w == b"\n\n")
                    {
                        break true;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => break false,
            }
        };
        if !whole {
            return self.close(token);
        }
        let request = String::from_utf8_lossy(&conn.request).into_owned();
        let (status, body) = self.respond(&request);
        self.answer(token, status, &body);
    }

    fn close(&mut self, token: u64) {
        if let Some(conn) = self.connections.remove(&token) {
            self.poller.remove(&conn.stream);
        }
    }

    /// Writes the answer (blocking, for at most [`WRITE_TIMEOUT`]) and closes.
    fn answer(&mut self, token: u64, status: u16, body: &str) {
        let Some(mut conn) = self.connections.remove(&token) else {
            return;
        };
        self.poller.remove(&conn.stream);
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let content_type = if body.starts_with("# HELP") {
            "text/plain; version=0.0.4; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        let head = format!(
            "HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let head_only = conn.request.starts_with(b"HEAD ");
        let _ = conn.stream.set_nonblocking(false);
        let _ = conn.stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = conn.stream.write_all(head.as_bytes());
        if !head_only {
            let _ = conn.stream.write_all(body.as_bytes());
        }
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    }

    /// The status and body for one request.
    fn respond(&mut self, request: &str) -> (u16, String) {
        let mut words = request.lines().next().unwrap_or("").split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if method != "GET" && method != "HEAD" {
            return (405, "only GET and HEAD\n".into());
        }
        let path = target.split('?').next().unwrap_or("");
        match path {
            "/livez" => match ping(&self.ctx.requests, &self.ctx.engine, LIVENESS_BOUND) {
                Ok(()) => (200, "ok\n".into()),
                Err(e) => (503, format!("{e}\n")),
            },
            "/readyz" => {
                let not_ready = self.not_ready();
                if not_ready.is_empty() {
                    (200, "ready\n".into())
                } else {
                    (503, not_ready.join("\n") + "\n")
                }
            }
            "/metrics" => (200, self.metrics()),
            _ => (
                404,
                "not found: /livez, /readyz and /metrics are served\n".into(),
            ),
        }
    }

    /// One line per service required for readiness that is not ready.
    fn not_ready(&self) -> Vec<String> {
        let table = self.ctx.shared.table.lock();
        if table.shut_down {
            return vec!["the supervisor is shut down".into()];
        }
        let by_name: HashMap<&str, &ServiceInfo> =
            table.services.values().map(|s| (s.name(), s)).collect();
        let required: Vec<&str> = match &self.ready {
            Some(names) => names.iter().map(String::as_str).collect(),
            None => table.services.values().map(|s| s.name()).collect(),
        };
        required
            .into_iter()
            .filter_map(|name| match by_name.get(name) {
                None => Some(format!("{name}: not defined")),
                Some(info) if is_ready(info) => None,
                Some(info) => Some(format!("{name}: {}", info.status())),
            })
            .collect()
    }

    fn metrics(&mut self) -> String {
        let (services, targets) = {
            let table = self.ctx.shared.table.lock();
            let services: Vec<ServiceInfo> = table.services.values().cloned().collect();
            let targets =
                crate::supervisor::stats_targets(&table, "all", self.ctx.cgroup_root.as_deref())
                    .unwrap_or_default();
            (services, targets)
        };
        let stats = crate::stats::measure(targets, &mut self.cpu);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(
                out,
                "# HELP sheepdog_{name} {help}\n# TYPE sheepdog_{name} {kind}"
            );
            for (labels, value) in rows {
                let _ = writeln!(out, "sheepdog_{name}{labels} {value}");
            }
        };
        let label = |s: &ServiceInfo| format!("{{service=\"{}\"}}", escape(s.name()));
        let per = |f: &dyn Fn(&ServiceInfo) -> Option<String>| -> Vec<(String, String)> {
            services
                .iter()
                .filter_map(|s| Some((label(s), f(s)?)))
                .collect()
        };
        family(
            "service_status",
            "gauge",
            "The service's status (1 for the status it is in).",
            services
                .iter()
                .map(|s| {
                    (
                        format!(
                            "{{service=\"{}\",status=\"{}\"}}",
                            escape(s.name()),
                            s.status()
                        ),
                        "1".to_string(),
                    )
                })
                .collect(),
        );
        family(
            "service_up",
            "gauge",
            "Whether the service is online.",
            per(&|s| Some(u8::from(s.status() == Status::Online).to_string())),
        );
        family(
            "service_ready",
            "gauge",
            "Whether the service counts as ready for /readyz.",
            per(&|s| Some(u8::from(is_ready(s)).to_string())),
        );
        family(
            "service_restarts_total",
            "counter",
            "Automatic restarts since the service was started.",
            per(&|s| Some(s.restarts().to_string())),
        );
        family(
            "service_last_exit_code",
            "gauge",
            "The exit code of the last run that exited.",
            per(&|s| s.last_exit()?.code().map(|c| c.to_string())),
        );
        family(
            "service_last_exit_signal",
            "gauge",
            "The signal that ended the last run, if one did.",
            per(&|s| s.last_exit()?.signal().map(|c| c.to_string())),
        );
        family(
            "service_uptime_seconds",
            "gauge",
            "Seconds since the current run started.",
            per(&|s| {
                s.pid()?;
                Some(format!(
                    "{:.3}",
                    s.started_at()?.elapsed().ok()?.as_secs_f64()
                ))
            }),
        );
        let stat_of = |s: &ServiceInfo| stats.iter().find(|x| x.name() == s.name());
        family(
            "service_cpu_percent",
            "gauge",
            "CPU used by the service's processes since the last sample, in percent of one core.",
            per(&|s| Some(format!("{:.2}", stat_of(s)?.cpu_percent()))),
        );
        family(
            "service_memory_bytes",
            "gauge",
            "Resident memory of the service's processes.",
            per(&|s| Some(stat_of(s)?.rss_bytes().to_string())),
        );
        family(
            "service_processes",
            "gauge",
            "Processes of the service.",
            per(&|s| Some(stat_of(s)?.processes().to_string())),
        );
        let logs = &self.ctx.logs;
        let mut log_rows = Vec::new();
        for s in &services {
            for (stream, stderr) in [("stdout", false), ("stderr", true)] {
                if let Ok(stat) = logs.stat(&crate::logs::log_name(s.name(), stderr)) {
                    log_rows.push((
                        format!("{{service=\"{}\",stream=\"{stream}\"}}", escape(s.name())),
                        stat.size.to_string(),
                    ));
                }
            }
        }
        family(
            "service_log_bytes",
            "gauge",
            "Bytes in the service's current log file.",
            log_rows,
        );
        family(
            "service_log_dropped_bytes_total",
            "counter",
            "Output bytes dropped because the log could not be written.",
            per(&|s| Some(s.log_dropped_bytes().to_string())),
        );
        family(
            "services",
            "gauge",
            "Services defined.",
            vec![(String::new(), services.len().to_string())],
        );
        family(
            "orphans_reaped_total",
            "counter",
            "Orphans re-parented to the host and reaped by the supervisor.",
            vec![(
                String::new(),
                self.ctx
                    .shared
                    .orphans_reaped
                    .load(Ordering::Relaxed)
                    .to_string(),
            )],
        );
        if let Some(me) = sys::proc_stat(std::process::id()) {
            family(
                "host_threads",
                "gauge",
                "Threads of the host process.",
                vec![(String::new(), me.threads.to_string())],
            );
            family(
                "host_memory_bytes",
                "gauge",
                "Resident memory of the host process.",
                vec![(String::new(), (me.rss_pages * sys::page_size()).to_string())],
            );
        }
        out
    }
}

/// Ready for `/readyz`: online, a one-shot that exited with success, or a scheduled job
/// waiting for its next tick (its steady state: a fleet with a nightly job is ready all day).
fn is_ready(info: &ServiceInfo) -> bool {
    match info.status() {
        Status::Online | Status::Scheduled => true,
        Status::Exited => info.last_exit().is_some_and(|e| e.success()),
        _ => false,
    }
}

/// A label value in the text format: backslash, double quote and line feed escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener whose supervision thread never answers (its requests are never read), as
    /// when the loop is stuck; the requests it was sent come back for the test to inspect.
    fn stuck() -> (
        Listener,
        crossbeam_channel::Receiver<Request>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (requests, inbox) = crossbeam_channel::unbounded();
        let poller = Poller::new(1).unwrap();
        let ctx = Context {
            requests,
            engine: poller.waker().unwrap(),
            shared: Arc::new(Shared::default()),
            cgroup_root: None,
            logs: LogDir::open(dir.path()),
        };
        let listener = Listener::start(&Endpoints::new("127.0.0.1:0"), ctx).unwrap();
        (listener, inbox, dir)
    }

    fn get(address: SocketAddr, request: &[u8]) -> String {
        let mut http = TcpStream::connect(address).unwrap();
        http.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        http.write_all(request).unwrap();
        let mut answer = String::new();
        let _ = http.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn livez_fails_when_the_supervision_thread_does_not_answer() {
        let (mut listener, inbox, _dir) = stuck();
        let begun = Instant::now();
        let answer = get(listener.address(), b"GET /livez HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.0 503 "), "{answer}");
        assert!(
            answer.ends_with("the supervision thread did not answer within 500ms\n"),
            "{answer}"
        );
        assert!(begun.elapsed() >= LIVENESS_BOUND, "it waited for the bound");
        assert!(
            matches!(inbox.try_recv(), Ok(Request::Ping { .. })),
            "it asked the supervision thread"
        );
        listener.stop();
    }

    #[test]
    fn requests_are_bounded_and_checked() {
        let (mut listener, _inbox, _dir) = stuck();
        let address = listener.address();
        let big = format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(MAX_REQUEST));
        let answer = get(address, big.as_bytes());
        assert!(answer.starts_with("HTTP/1.0 431 "), "{answer}");
        assert!(get(address, b"POST /livez HTTP/1.1\r\n\r\n").starts_with("HTTP/1.0 405 "));
        assert!(get(address, b"GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.0 404 "));
        // /readyz reads the snapshot alone: answered though the loop is stuck.
        let ready = get(address, b"GET /readyz HTTP/1.1\r\n\r\n");
        assert!(
            ready.starts_with("HTTP/1.0 200 "),
            "no service required: {ready}"
        );
        // A silent client is told off after READ_TIMEOUT, and holds up no one meanwhile.
        let mut silent = TcpStream::connect(address).unwrap();
        let begun = Instant::now();
        assert!(get(address, b"GET /metrics HTTP/1.1\r\n\r\n").contains("sheepdog_services 0"));
        assert!(
            begun.elapsed() < READ_TIMEOUT,
            "not held up by the silent client"
        );
        silent.set_read_timeout(Some(READ_TIMEOUT * 3)).unwrap();
        let mut answer = String::new();
        let _ = silent.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.0 408 "), "{answer}");
        listener.stop();
    }
}
