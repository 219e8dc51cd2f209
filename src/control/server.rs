//! The control socket's thread: one epoll loop over the listening socket and every client,
//! whatever their number.
//!
//! Nothing a client does can block it, so nothing a client does can delay supervision or
//! another client: sockets are non-blocking; a call that waits on the supervision thread
//! (`stop`, `restart`, `delete`, `start`, `apply`, `history`, `explain`) is sent as a request
//! and its reply picked up when the thread rings the `replied` bell at the end of its turn;
//! log lines and events are pulled only while the client's output stays under
//! [`LOW_WATER`], and the log pump and the event hub ring their bells when there is more.
//! Each client gets a bounded share of each turn (one request, [`READ_PER_TURN`] bytes
//! read), lines are bounded ([`MAX_LINE`]), and the time-outs of [`protocol`] end idle,
//! silent and stuck connections.

use super::offline::{log_file, tail};
use super::protocol::{
    self, ErrorReply, Following, HELLO_TIMEOUT, IDLE_TIMEOUT, LogLine, MAX_CLIENTS, MAX_LINE,
    Reply, Request, Response, SOCKET_NAME, Subscribed, WRITE_TIMEOUT,
};
use super::registry::Registration;
use crate::engine::{Request as Call, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::events::Events;
use crate::fleet::Convergence;
use crate::info::ServiceInfo;
use crate::logs::reader::{LogCursor, LogFollower};
use crate::logs::{LogDir, LogFile};
use crate::supervisor::Stream;
use crate::sys::{self, FileStat, Poller, WAKER_TOKEN, Waker};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

/// The listening socket's poll token; clients' count up from 1.
const LISTENER: u64 = WAKER_TOKEN - 1;
/// A stream is fed only while less than this waits to be sent to its client.
const LOW_WATER: usize = 64 * 1024;
/// Bytes read from one client per turn, so that a flood from one cannot starve the others.
const READ_PER_TURN: usize = 256 * 1024;
/// Connections accepted per turn.
const ACCEPT_PER_TURN: usize = 64;
/// Requests taken from one client's input per turn.
const REQUESTS_PER_TURN: usize = 8;

/// What the control thread needs of its supervisor.
pub(crate) struct Context {
    /// The state directory, held open: the socket is made in it.
    pub(crate) dir: OwnedFd,
    /// Its path, every symbolic link resolved, for `hello` and the registration.
    pub(crate) state_dir: PathBuf,
    pub(crate) requests: Sender<Call>,
    pub(crate) engine: Waker,
    pub(crate) shared: Arc<Shared>,
    pub(crate) logs: LogDir,
    pub(crate) cgroup_root: Option<PathBuf>,
}

/// The supervisor's handle on its control thread.
pub(crate) struct Control {
    stop: Arc<AtomicBool>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
    socket: PathBuf,
}

impl Control {
    /// Makes the socket (replacing one a dead host left), registers the host, and starts
    /// the thread.
    pub(crate) fn start(ctx: Context) -> io::Result<Control> {
        let socket = ctx.state_dir.join(SOCKET_NAME);
        let stop = Arc::new(AtomicBool::new(false));
        // The poller is the thread's own (it is not `Send`): the thread makes it, with the
        // socket, and hands back a waker or what failed.
        let (made_tx, made_rx) = crossbeam_channel::bounded(1);
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sheepdog-control".into())
            .spawn(move || match Server::new(ctx, thread_stop) {
                Ok((server, waker)) => {
                    let _ = made_tx.send(Ok(waker));
                    server.run();
                }
                Err(e) => {
                    let _ = made_tx.send(Err(e));
                }
            })?;
        let made = made_rx.recv().unwrap_or_else(|_| {
            Err(io::Error::other(
                "the control thread ended before it started",
            ))
        });
        match made {
            Ok(waker) => Ok(Control {
                stop,
                waker,
                thread: Some(thread),
                socket,
            }),
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }

    /// The socket's path.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Ends every stream (`end`) and call (`shut_down`), closes every connection, removes
    /// the socket and the registration, and joins the thread.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the control thread does not panic");
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A reply the supervision thread will send: polled each turn until it is there.
type Pending = Box<dyn FnMut() -> Option<Response> + Send>;

fn pending<T: Send + 'static>(
    rx: Receiver<Result<T>>,
    reply: impl Fn(T) -> Reply + Send + 'static,
) -> Pending {
    Box::new(move || match rx.try_recv() {
        Ok(Ok(value)) => Some(Response::Ok(reply(value))),
        Ok(Err(e)) => Some(failure(&e)),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Disconnected) => Some(failure(&Error::shut_down())),
    })
}

fn failure(e: &Error) -> Response {
    Response::Error(ErrorReply::from_error(e))
}

fn protocol_error(message: impl Into<String>) -> Response {
    Response::Error(ErrorReply::new(ErrorKind::Protocol, message))
}

/// What a connection is doing.
enum Job {
    /// Waiting for its next request.
    Idle,
    /// Waiting for the supervision thread's reply.
    Call(Pending),
    /// An apply, in steps.
    Apply(Box<Applying>),
    /// Following logs.
    Follow(Follow),
    /// Receiving events.
    Subscribe(Events),
}

/// An apply: the `start_many` of what the fleet adds or changes, then, with `prune`, one
/// `delete` at a time of what it does not list.
struct Applying {
    convergence: Convergence,
    fleet: crate::Fleet,
    prune: bool,
    /// The `define`s, sent before the `start_many`.
    defines: Vec<Receiver<Result<ServiceInfo>>>,
    defined: Vec<Option<Result<ServiceInfo>>>,
    starts: Vec<Receiver<Result<ServiceInfo>>>,
    results: Vec<Option<Result<ServiceInfo>>>,
    /// The starts are over (and the deletes planned).
    started: bool,
    deletes: std::vec::IntoIter<String>,
    deleting: Option<(String, Receiver<Result<usize>>)>,
}

struct Follow {
    service: String,
    streams: Vec<(Stream, LogFollower)>,
    /// With `since_ms`: the RFC 3339 stamp a line must reach to be sent, per stream (cleared
    /// once one did: lines are in time order).
    since: Vec<Option<String>>,
}

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    /// How much of `input` holds no newline (so is not searched again).
    scanned: usize,
    output: Vec<u8>,
    sent: usize,
    readable: bool,
    writable: bool,
    greeted: bool,
    job: Job,
    /// Close once the output is sent.
    closing: bool,
    /// The peer will send nothing more.
    peer_done: bool,
    accepted: Instant,
    /// The last request received or call answered.
    active: Instant,
    /// The last time output went out, or began to wait.
    progress: Instant,
}

impl Conn {
    fn unsent(&self) -> usize {
        self.output.len() - self.sent
    }

    fn push(&mut self, response: &Response) {
        if self.unsent() == 0 {
            self.progress = Instant::now();
        }
        serde_json::to_writer(&mut self.output, response)
            .expect("protocol messages always serialize");
        self.output.push(b'\n');
    }

    /// Reads what the peer sent, up to the line limit and this turn's share.
    fn read(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        let mut got = 0;
        while self.readable && !self.peer_done && got < READ_PER_TURN {
            if self.input.len() > MAX_LINE {
                return; // the request in progress is already too long: refused below
            }
            match self.stream.read(&mut buf) {
                Ok(0) => self.peer_done = true,
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.peer_done = true;
                    self.closing = true;
                }
            }
        }
    }

    /// Sends what it can of the output.
    fn write(&mut self) {
        while self.writable && self.unsent() > 0 {
            match self.stream.write(&self.output[self.sent..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.sent += n;
                    self.progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The peer is gone: nothing more can reach it.
                    self.output.clear();
                    self.sent = 0;
                    self.closing = true;
                    self.peer_done = true;
                }
            }
        }
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        } else if self.sent > 1 << 20 {
            self.output.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// The next complete line of input, if any.
    fn line(&mut self) -> Option<Vec<u8>> {
        let found = self.input[self.scanned..].iter().position(|&b| b == b'\n');
        match found {
            Some(pos) => {
                let end = self.scanned + pos;
                let line = self.input[..end].to_vec();
                self.input.drain(..=end);
                self.scanned = 0;
                Some(line)
            }
            None => {
                self.scanned = self.input.len();
                None
            }
        }
    }

    /// When this connection must be closed if nothing happens: the first of its time-outs.
    fn deadline(&self) -> Option<Instant> {
        if self.unsent() > 0 {
            return Some(self.progress + WRITE_TIMEOUT);
        }
        if !self.greeted {
            return Some(self.accepted + HELLO_TIMEOUT);
        }
        matches!(self.job, Job::Idle).then_some(self.active + IDLE_TIMEOUT)
    }
}

struct Server {
    ctx: Context,
    poller: Poller,
    listener: UnixListener,
    /// The socket file made, removed at the end only if it is still this one.
    made: FileStat,
    stop: Arc<AtomicBool>,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    cpu: crate::stats::CpuHistory,
    hello: protocol::Hello,
    _registration: Option<Registration>,
}

impl Server {
    /// Makes the socket (replacing one a dead host left) and the poller, attaches the bells
    /// and registers the host; returns the server and a waker for its poller.
    fn new(ctx: Context, stop: Arc<AtomicBool>) -> io::Result<(Server, Waker)> {
        let (listener, made) = sys::listen_at(&ctx.dir, SOCKET_NAME, 0o600)?;
        let poller = Poller::new(64)?;
        poller.add(&listener, LISTENER)?;
        ctx.shared.replied.attach(poller.waker()?);
        ctx.shared.hub.bell.attach(poller.waker()?);
        ctx.shared.activity.bell.attach(poller.waker()?);
        let waker = poller.waker()?;
        let socket = ctx.state_dir.join(SOCKET_NAME);
        let registration = Registration::new(&ctx.state_dir, &socket)
            .inspect_err(|e| {
                log::warn!("control socket '{}': not registered: {e}", socket.display())
            })
            .ok();
        let hello = protocol::Hello {
            protocol: protocol::VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            state_dir: ctx.state_dir.display().to_string(),
        };
        let server = Server {
            ctx,
            poller,
            listener,
            made,
            stop,
            conns: HashMap::new(),
            next_token: 1,
            cpu: Default::default(),
            hello,
            _registration: registration,
        };
        Ok((server, waker))
    }

    fn run(mut self) {
        let mut ready = Vec::new();
        let mut again = false;
        loop {
            let timeout = if again {
                Some(std::time::Duration::ZERO)
            } else {
                self.conns
                    .values()
                    .filter_map(Conn::deadline)
                    .min()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            };
            ready.clear();
            if let Err(e) = self.poller.wait(timeout, &mut ready) {
                log::error!("control socket wait failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            self.ctx.shared.replied.answer();
            self.ctx.shared.hub.bell.answer();
            self.ctx.shared.activity.bell.answer();
            for &token in &ready {
                match token {
                    LISTENER => self.accept(),
                    WAKER_TOKEN => {}
                    token => {
                        if let Some(conn) = self.conns.get_mut(&token) {
                            // Edge-triggered: try both ways until they would block.
                            conn.readable = true;
                            conn.writable = true;
                        }
                    }
                }
            }
            again = self.serve();
            self.listen_for_jobs();
        }
        self.close_all();
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_PER_TURN {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of fds, mostly: the connection waits in the backlog; the next
                    // turn that has room takes it.
                    log::warn!("control socket: cannot accept a connection: {e}");
                    return;
                }
            };
            let me = sys::effective_uid();
            let refusal = match sys::peer_credentials(&stream) {
                Ok(peer) if peer.uid == me || peer.uid == 0 => None,
                Ok(peer) => Some(format!(
                    "uid {} may not use the control socket of a host of uid {me}",
                    peer.uid
                )),
                Err(e) => Some(format!("cannot read the peer's credentials: {e}")),
            };
            let refusal = refusal.or_else(|| {
                (self.conns.len() >= MAX_CLIENTS).then(|| {
                    format!(
                        "too many clients: this host serves {MAX_CLIENTS} at once; try again later"
                    )
                })
            });
            if let Some(message) = refusal {
                refuse(stream, &message);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            if let Err(e) = self.poller.add_stream(&stream, token) {
                log::warn!("control socket: cannot watch a connection: {e}");
                continue;
            }
            let now = Instant::now();
            self.conns.insert(
                token,
                Conn {
                    stream,
                    input: Vec::new(),
                    scanned: 0,
                    output: Vec::new(),
                    sent: 0,
                    readable: true,
                    writable: true,
                    greeted: false,
                    job: Job::Idle,
                    closing: false,
                    peer_done: false,
                    accepted: now,
                    active: now,
                    progress: now,
                },
            );
        }
    }

    /// One turn over every connection; returns whether one has more to do at once.
    fn serve(&mut self) -> bool {
        let now = Instant::now();
        let mut again = false;
        let mut gone = Vec::new();
        let tokens: Vec<u64> = self.conns.keys().copied().collect();
        for token in tokens {
            let mut conn = self.conns.remove(&token).expect("listed above");
            if !conn.closing {
                conn.read();
                again |= self.take_requests(&mut conn);
                self.advance(&mut conn);
            }
            conn.write();
            if conn.deadline().is_some_and(|at| now >= at) {
                conn.closing = true;
                conn.output.clear();
                conn.sent = 0;
            }
            let streaming = matches!(conn.job, Job::Follow(_) | Job::Subscribe(_));
            let finished = conn.closing && conn.unsent() == 0;
            // A peer that shut its side down still gets the answers to what it sent; a
            // stream ends with it.
            let abandoned = conn.peer_done
                && conn.unsent() == 0
                && (streaming || (matches!(conn.job, Job::Idle) && !has_line(&conn.input)));
            if finished || abandoned {
                gone.push(conn);
            } else {
                again |= conn.writable && conn.unsent() > 0;
                self.conns.insert(token, conn);
            }
        }
        for conn in gone {
            self.poller.remove(&conn.stream);
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        again
    }

    /// Takes requests from the input while the connection is free to answer them.
    fn take_requests(&mut self, conn: &mut Conn) -> bool {
        for _ in 0..REQUESTS_PER_TURN {
            if !matches!(conn.job, Job::Idle) || conn.unsent() >= LOW_WATER || conn.closing {
                return false;
            }
            let Some(line) = conn.line() else {
                if conn.input.len() > MAX_LINE {
                    conn.push(&protocol_error(format!(
                        "request line longer than {MAX_LINE} bytes; closing the connection"
                    )));
                    conn.closing = true;
                    conn.input = Vec::new();
                }
                return false;
            };
            conn.active = Instant::now();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let request = match serde_json::from_slice::<Request>(&line) {
                Ok(r) => r,
                Err(e) => {
                    conn.push(&protocol_error(format!("not a request: {e}")));
                    if !conn.greeted {
                        conn.closing = true;
                    }
                    continue;
                }
            };
            match (conn.greeted, request) {
                (false, Request::Hello { version }) if version == protocol::VERSION => {
                    conn.greeted = true;
                    conn.push(&Response::Ok(Reply::Hello(self.hello.clone())));
                }
                (false, Request::Hello { version }) => {
                    conn.push(&protocol_error(format!(
                        "protocol version {version} is not spoken here (this host speaks {})",
                        protocol::VERSION
                    )));
                    conn.closing = true;
                }
                (false, _) => {
                    conn.push(&protocol_error("say hello first"));
                    conn.closing = true;
                }
                (true, Request::Hello { .. }) => {
                    conn.push(&Response::Ok(Reply::Hello(self.hello.clone())));
                }
                (true, request) => match self.begin(request) {
                    Ok((Some(response), job)) => {
                        conn.push(&response);
                        conn.job = job;
                    }
                    Ok((None, job)) => conn.job = job,
                    Err(e) => conn.push(&failure(&e)),
                },
            }
        }
        has_line(&conn.input)
    }

    /// Answers a request at once, or begins the job that will.
    fn begin(&mut self, request: Request) -> Result<(Option<Response>, Job)> {
        let ok = |reply| Ok((Some(Response::Ok(reply)), Job::Idle));
        let table = &self.ctx.shared.table;
        match request {
            Request::Hello { .. } => unreachable!("hello is answered by the caller"),
            Request::List => ok(Reply::List(
                table
                    .lock()
                    .services
                    .values()
                    .map(protocol::Service::from_info)
                    .collect(),
            )),
            Request::Describe { target } => ok(Reply::Describe(Box::new(
                protocol::Service::from_info(&describe(&self.ctx.shared, &target)?),
            ))),
            Request::Stats { target } => {
                let targets = crate::supervisor::stats_targets(
                    &table.lock(),
                    &target,
                    self.ctx.cgroup_root.as_deref(),
                )?;
                let stats = crate::stats::measure(targets, &mut self.cpu);
                ok(Reply::Stats(
                    stats.iter().map(protocol::Stats::from_stats).collect(),
                ))
            }
            Request::Tail {
                target,
                streams,
                lines,
            } => {
                let name = describe(&self.ctx.shared, &target)?.name().to_string();
                ok(Reply::Tail(tail(&self.ctx.logs, &name, streams, lines)?))
            }
            Request::Follow {
                target,
                streams,
                lines,
                cursor,
                since_ms,
            } => self.follow(&target, streams, lines, cursor, since_ms),
            Request::Subscribe => {
                self.ctx.shared.hub.bell.listen(true);
                Ok((
                    Some(Response::Ok(Reply::Subscribe(Subscribed {}))),
                    Job::Subscribe(self.ctx.shared.hub.subscribe()),
                ))
            }
            Request::Start { target, spec } => self.start(target, spec),
            Request::Stop { target } => {
                let rx = self.call(|reply| Call::Stop { target, reply });
                Ok((None, Job::Call(pending(rx, Reply::Stop))))
            }
            Request::Restart { target } => {
                let rx = self.call(|reply| Call::Restart { target, reply });
                Ok((None, Job::Call(pending(rx, Reply::Restart))))
            }
            Request::Delete { target } => {
                let rx = self.call(|reply| Call::Delete { target, reply });
                Ok((None, Job::Call(pending(rx, Reply::Delete))))
            }
            Request::History { target, limit } => {
                let rx = self.call(|reply| Call::History {
                    target,
                    limit,
                    reply,
                });
                Ok((
                    None,
                    Job::Call(pending(rx, |runs: Vec<crate::Run>| {
                        Reply::History(runs.iter().map(protocol::Run::from_run).collect())
                    })),
                ))
            }
            Request::Explain { target } => {
                let name = describe(&self.ctx.shared, &target)?.name().to_string();
                let rx = self.call(|reply| Call::Explain { target, reply });
                Ok((
                    None,
                    Job::Call(pending(rx, move |e: crate::Explanation| {
                        Reply::Explain(protocol::Explanation {
                            service: name.clone(),
                            status: e.status(),
                            text: e.to_string(),
                        })
                    })),
                ))
            }
            Request::Apply { fleet, prune } => {
                // The same checks as a fleet file's (names, duplicates, dependencies, cycles).
                let text = serde_json::to_string(&fleet).expect("a fleet always serializes");
                let fleet = crate::Fleet::from_json_str(&text)?;
                let list: Vec<ServiceInfo> = table.lock().services.values().cloned().collect();
                let (convergence, steps) = Convergence::new(&list, &fleet);
                let defined = steps.define.iter().map(|_| None).collect();
                let defines = (steps.define.into_iter())
                    .map(|spec| {
                        let spec = Box::new(spec);
                        self.call(|reply| Call::Define { spec, reply })
                    })
                    .collect();
                let starts = self.start_many(steps.start);
                let results = starts.iter().map(|_| None).collect();
                Ok((
                    None,
                    Job::Apply(Box::new(Applying {
                        convergence,
                        fleet,
                        prune,
                        defines,
                        defined,
                        starts,
                        results,
                        started: false,
                        deletes: Vec::new().into_iter(),
                        deleting: None,
                    })),
                ))
            }
        }
    }

    fn log_file(&self, name: &str, stream: Stream) -> LogFile {
        log_file(&self.ctx.logs, name, stream)
    }

    /// Sends a request to the supervision thread; its reply comes on the returned channel.
    fn call<T>(&self, make: impl FnOnce(Sender<Result<T>>) -> Call) -> Receiver<Result<T>> {
        self.ctx.shared.replied.listen(true);
        let (tx, rx) = crossbeam_channel::bounded(1);
        // A failed send drops `tx`: the reply reads as `ShutDown`.
        let _ = self.ctx.requests.send(make(tx));
        self.ctx.engine.wake();
        rx
    }

    fn start_many(&self, specs: Vec<crate::ServiceSpec>) -> Vec<Receiver<Result<ServiceInfo>>> {
        self.ctx.shared.replied.listen(true);
        let mut items = Vec::new();
        let mut replies = Vec::new();
        for spec in specs {
            let (tx, rx) = crossbeam_channel::bounded(1);
            items.push((spec, tx));
            replies.push(rx);
        }
        if !items.is_empty() {
            let _ = self.ctx.requests.send(Call::StartMany { items });
            self.ctx.engine.wake();
        }
        replies
    }

    fn start(
        &mut self,
        target: Option<String>,
        spec: Option<Box<crate::ServiceSpec>>,
    ) -> Result<(Option<Response>, Job)> {
        let specs: Vec<crate::ServiceSpec> = match (target, spec) {
            (None, Some(spec)) => vec![*spec],
            (Some(target), None) => {
                // The stored specs, dependencies first.
                let table = self.ctx.shared.table.lock();
                let waves = crate::supervisor::plan(&table, &target, false)?;
                // By spec name: one spec starts all the instances of a spec.
                let by_name: HashMap<&str, &ServiceInfo> = table
                    .services
                    .values()
                    .map(|s| (s.definition(), s))
                    .collect();
                waves
                    .iter()
                    .flatten()
                    .filter_map(|n| by_name.get(n.as_str()))
                    .map(|s| s.spec().clone())
                    .collect()
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "start takes a target or a spec, not both or neither",
                ));
            }
        };
        let replies = self.start_many(specs);
        let mut results: Vec<Option<Result<ServiceInfo>>> = replies.iter().map(|_| None).collect();
        let poll: Pending = Box::new(move || {
            if !collect(&replies, &mut results) {
                return None;
            }
            let mut started = Vec::new();
            for result in results.drain(..).flatten() {
                match result {
                    Ok(info) => started.push(protocol::Service::from_info(&info)),
                    Err(e) => return Some(failure(&e)),
                }
            }
            Some(Response::Ok(Reply::Start(started)))
        });
        Ok((None, Job::Call(poll)))
    }

    fn follow(
        &mut self,
        target: &str,
        streams: protocol::Streams,
        lines: usize,
        cursor: Option<String>,
        since_ms: Option<u64>,
    ) -> Result<(Option<Response>, Job)> {
        let info = describe(&self.ctx.shared, target)?;
        let name = info.name().to_string();
        let streams = streams.each();
        let cursor = match cursor {
            Some(_) if streams.len() > 1 => {
                return Err(Error::new(
                    ErrorKind::InvalidSpec,
                    "a cursor belongs to one stream: follow stdout or stderr with it",
                )
                .with_service(&name));
            }
            Some(text) => Some(text.parse::<LogCursor>()?),
            None => None,
        };
        if since_ms.is_some() && !info.spec().log_policy().get_timestamps() {
            return Err(Error::new(
                ErrorKind::InvalidSpec,
                "its log lines carry no timestamps (log.timestamps): follow it from a cursor or a number of lines instead",
            )
            .with_service(&name));
        }
        let since = since_ms.map(|ms| {
            crate::logs::rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
        });
        self.ctx.shared.activity.bell.listen(true);
        let activity = &self.ctx.shared.activity;
        let mut followers = Vec::new();
        for stream in &streams {
            let log = self.log_file(&name, *stream);
            let follower = if let Some(cursor) = cursor {
                LogFollower::at_cursor(log, activity.clone(), cursor)
            } else if since.is_some() {
                LogFollower::at_start(log, activity.clone())
            } else if lines > 0 {
                let at_end = LogFollower::at_end(self.log_file(&name, *stream), activity.clone());
                match lines_before(&log, at_end.cursor(), lines) {
                    Some(cursor) => LogFollower::at_cursor(log, activity.clone(), cursor),
                    None => at_end,
                }
            } else {
                LogFollower::at_end(log, activity.clone())
            };
            followers.push((*stream, follower));
        }
        Ok((
            Some(Response::Ok(Reply::Follow(Following {
                service: name.clone(),
            }))),
            Job::Follow(Follow {
                service: name,
                since: streams.iter().map(|_| since.clone()).collect(),
                streams: followers,
            }),
        ))
    }

    /// Moves the connection's job on: picks up replies, feeds streams.
    fn advance(&mut self, conn: &mut Conn) {
        let mut job = std::mem::replace(&mut conn.job, Job::Idle);
        let answer = match &mut job {
            Job::Idle => None,
            Job::Call(poll) => poll(),
            Job::Apply(applying) => self.apply_step(applying),
            Job::Subscribe(events) => {
                while conn.unsent() < LOW_WATER {
                    let Some(event) = events.try_recv() else {
                        break;
                    };
                    conn.push(&Response::Event(protocol::Event::from_event(event)));
                }
                None
            }
            Job::Follow(follow) => {
                for (i, (stream, follower)) in follow.streams.iter_mut().enumerate() {
                    while conn.unsent() < LOW_WATER {
                        let Some(text) = follower.recv_timeout(std::time::Duration::ZERO) else {
                            break;
                        };
                        if let Some(since) = &follow.since[i] {
                            let stamp = text
                                .as_bytes()
                                .get(..since.len())
                                .unwrap_or(text.as_bytes());
                            if stamp < since.as_bytes() {
                                continue;
                            }
                            follow.since[i] = None;
                        }
                        conn.push(&Response::Log(LogLine {
                            service: follow.service.clone(),
                            stream: *stream,
                            text,
                            cursor: Some(follower.cursor().to_string()),
                        }));
                    }
                }
                None
            }
        };
        match answer {
            Some(response) => {
                conn.active = Instant::now();
                conn.push(&response);
            }
            None => conn.job = job,
        }
    }

    /// One step of an apply: `Some` with the answer once it is over.
    fn apply_step(&mut self, a: &mut Applying) -> Option<Response> {
        if !a.started {
            if !(collect(&a.defines, &mut a.defined) && collect(&a.starts, &mut a.results)) {
                return None;
            }
            a.started = true;
            let defined = a.defined.drain(..).flatten().collect();
            if let Err(e) = a.convergence.defined(defined) {
                return Some(failure(&e));
            }
            let results = a.results.drain(..).flatten().collect();
            if let Err(e) = a.convergence.started(results) {
                return Some(failure(&e));
            }
            if a.prune {
                let table = self.ctx.shared.table.lock();
                let waves = match crate::supervisor::plan(&table, "all", true) {
                    Ok(w) => w,
                    Err(e) => return Some(failure(&e)),
                };
                a.deletes = a.convergence.unlisted(&a.fleet, waves).into_iter();
            }
        }
        loop {
            if let Some((name, rx)) = &a.deleting {
                let result = match rx.try_recv() {
                    Ok(result) => result,
                    Err(TryRecvError::Empty) => return None,
                    Err(TryRecvError::Disconnected) => Err(Error::shut_down()),
                };
                let name = name.clone();
                a.deleting = None;
                if let Err(e) = a.convergence.deleted(name, result) {
                    return Some(failure(&e));
                }
            }
            match a.deletes.next() {
                Some(name) => {
                    let target = name.clone();
                    let rx = self.call(|reply| Call::Delete { target, reply });
                    a.deleting = Some((name, rx));
                }
                None => {
                    let applied = std::mem::take(&mut a.convergence).finish();
                    return Some(Response::Ok(Reply::Apply(protocol::Applied::from_applied(
                        applied,
                    ))));
                }
            }
        }
    }

    /// Listens to the bells only while some connection needs them.
    fn listen_for_jobs(&self) {
        let (mut calls, mut events, mut logs) = (false, false, false);
        for conn in self.conns.values() {
            match conn.job {
                Job::Call(_) | Job::Apply(_) => calls = true,
                Job::Subscribe(_) => events = true,
                Job::Follow(_) => logs = true,
                Job::Idle => {}
            }
        }
        self.ctx.shared.replied.listen(calls);
        self.ctx.shared.hub.bell.listen(events);
        self.ctx.shared.activity.bell.listen(logs);
    }

    /// At shutdown: ends streams and calls in words, sends what can be sent at once, and
    /// closes everything; the socket file goes if it is still the one made.
    fn close_all(&mut self) {
        for (_, mut conn) in self.conns.drain() {
            let message = match conn.job {
                Job::Follow(_) | Job::Subscribe(_) => Some(Response::End(protocol::End {
                    reason: "the host is shutting down".into(),
                })),
                Job::Call(_) | Job::Apply(_) => Some(failure(&Error::shut_down())),
                Job::Idle => None,
            };
            if let Some(message) = message {
                conn.push(&message);
            }
            conn.writable = true;
            conn.write();
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        self.ctx.shared.replied.listen(false);
        self.ctx.shared.hub.bell.listen(false);
        self.ctx.shared.activity.bell.listen(false);
        if sys::stat_at(&self.ctx.dir, SOCKET_NAME).is_ok_and(|st| st.same_file(&self.made)) {
            let _ = sys::unlink_at(&self.ctx.dir, SOCKET_NAME);
        }
    }
}

/// Whether every reply has come (collected into `results`).
fn collect<T>(replies: &[Receiver<Result<T>>], results: &mut [Option<Result<T>>]) -> bool {
    for (rx, slot) in replies.iter().zip(results.iter_mut()) {
        if slot.is_none() {
            *slot = match rx.try_recv() {
                Ok(result) => Some(result),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Err(Error::shut_down())),
            };
        }
    }
    results.iter().all(Option::is_some)
}

fn has_line(input: &[u8]) -> bool {
    input.contains(&b'\n')
}

fn describe(shared: &Shared, target: &str) -> Result<ServiceInfo> {
    if target == "all" {
        return Err(Error::new(
            ErrorKind::InvalidSpec,
            "this request takes one service; use list for all",
        ));
    }
    let table = shared.table.lock();
    let ids = table.resolve(target)?;
    Ok(table.services[&ids[0]].clone())
}

/// Says why a connection is refused, in one line, and closes it.
fn refuse(mut stream: UnixStream, message: &str) {
    let mut line = serde_json::to_vec(&Response::Error(ErrorReply::new(
        ErrorKind::Refused,
        message,
    )))
    .expect("protocol messages always serialize");
    line.push(b'\n');
    // A fresh socket's buffer takes one short line at once.
    let _ = stream.set_nonblocking(true);
    let _ = stream.write(&line);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// A cursor `n` lines before `end` in the live file `end` points into, or `None` if the live
/// file is no longer that one. With fewer lines than `n`, its start.
fn lines_before(log: &LogFile, end: LogCursor, n: usize) -> Option<LogCursor> {
    use std::os::unix::fs::MetadataExt;
    let text = end.to_string();
    let (ino, offset) = text.split_once(':')?;
    let (ino, offset): (u64, u64) = (ino.parse().ok()?, offset.parse().ok()?);
    let file = log.open(0).ok()?;
    if file.metadata().ok()?.ino() != ino {
        return None;
    }
    let mut pos = offset;
    let mut found = 0;
    let mut first = true;
    let mut block = vec![0u8; 64 * 1024];
    while pos > 0 {
        let start = pos.saturating_sub(block.len() as u64);
        let len = (pos - start) as usize;
        let read = sys::read_at(&file, &mut block[..len], start).ok()?;
        if read != len {
            return None;
        }
        for i in (0..len).rev() {
            if block[i] != b'\n' {
                continue;
            }
            if first && start + i as u64 + 1 == offset {
                first = false; // the newline that ends the last line
                continue;
            }
            first = false;
            found += 1;
            if found == n {
                return format!("{ino}:{}", start + i as u64 + 1).parse().ok();
            }
        }
        first = false;
        pos = start;
    }
    format!("{ino}:0").parse().ok()
}
