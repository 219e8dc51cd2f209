//! Log capture: one pump thread for all services.
//!
//! Each run's stdout and stderr are pipes whose read ends the pump holds in one epoll. The
//! pump is the only writer of the log files (`logs/<name>.out.log`, `.err.log`), with plain
//! `read`/`write` through a [`sink::Sink`] per stream. It never stops draining: when writing
//! fails, data is dropped and counted, so a child never blocks on a full disk. The
//! supervision thread talks to it through [`Pump`] and hears back through its own request
//! queue (`Drained`, `LogsForgotten`), so a slow disk never stalls supervision.

mod clock;
pub(crate) use clock::rfc3339_millis;
pub(crate) mod reader;
pub(crate) mod sink;

use crate::engine::Request;
use crate::events::Event;
use crate::spec::LogPolicy;
use crate::sys::{self, Poller, Waker, WAKER_TOKEN};
use crossbeam_channel::{Receiver, Sender};
use reader::Activity;
use sink::Sink;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How long the pump keeps reading a run's pipes after its main process exited. A grandchild
/// that keeps a pipe open longer loses its write end's reader (it gets EPIPE), and the run
/// counts as drained.
pub(crate) const DRAIN_DEADLINE: Duration = Duration::from_millis(500);
/// One read buffer for all pipes.
const READ_BUF: usize = 256 * 1024;
/// Reads per pipe per wake-up, so one fast writer cannot starve the others.
const READS_PER_WAKE: usize = 8;

/// The name of a stream's log file in the log directory.
pub(crate) fn log_name(name: &str, stderr: bool) -> String {
    format!("{name}.{}.log", if stderr { "err" } else { "out" })
}

/// The log directory, held open: every log file is opened relative to it, never through a
/// symbolic link, so a link planted in it cannot redirect a write or a read; renames and
/// removals go through it too.
#[derive(Clone, Debug)]
pub(crate) struct LogDir {
    fd: Arc<OwnedFd>,
    path: Arc<std::path::Path>,
    /// The permission bits of log files: 0o600, or 0o640 when the group may read logs.
    mode: u32,
}

impl LogDir {
    pub(crate) fn new(fd: OwnedFd, path: PathBuf, mode: u32) -> LogDir {
        LogDir {
            fd: Arc::new(fd),
            path: path.into(),
            mode,
        }
    }

    /// Opens `path` as a log directory of private files (for tests of the log modules).
    #[cfg(test)]
    pub(crate) fn open(path: &std::path::Path) -> LogDir {
        LogDir::new(
            sys::open_dir(path, false).expect("a directory"),
            path.to_path_buf(),
            0o600,
        )
    }

    /// The path of `name` in it, for messages and for callers who want a path.
    pub(crate) fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` for reading.
    pub(crate) fn open_read(&self, name: &str) -> std::io::Result<std::fs::File> {
        sys::open_file_at(&*self.fd, name, sys::Access::Read)
    }

    /// `stat` of `name`, not following a symbolic link.
    pub(crate) fn stat(&self, name: &str) -> std::io::Result<sys::FileStat> {
        sys::stat_at(&*self.fd, name)
    }

    /// Opens `name` for appending (and reading), creating it private if missing. Refused, with
    /// an error that says why: a symbolic link (never followed), anything but a regular file,
    /// a file of another user, and a file with other hard links (a link to a file elsewhere).
    /// An existing file gets the directory's file mode.
    pub(crate) fn open_append(&self, name: &str) -> std::io::Result<std::fs::File> {
        use std::io::{Error, ErrorKind};
        let file = sys::open_file_at(&*self.fd, name, sys::Access::Append { create: self.mode })
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => Error::new(
                    ErrorKind::InvalidInput,
                    "it is a symbolic link, which is never followed",
                ),
                _ => e,
            })?;
        let st = sys::fstat(&file)?;
        let refuse = |why: String| Err(Error::new(ErrorKind::InvalidInput, why));
        if !st.is_file() {
            return refuse("it is not a regular file".into());
        }
        if st.uid != sys::effective_uid() {
            return refuse(format!("it is owned by uid {}", st.uid));
        }
        if st.nlink != 1 {
            return refuse(format!("it has {} hard links", st.nlink));
        }
        if st.permissions() != self.mode {
            sys::chmod_fd(&file, self.mode)?;
        }
        Ok(file)
    }

    /// Renames `from` to `to`.
    pub(crate) fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        sys::rename_at(&*self.fd, from, to)
    }

    /// Removes `name`.
    pub(crate) fn remove(&self, name: &str) -> std::io::Result<()> {
        sys::unlink_at(&*self.fd, name)
    }

    /// The names of the files in it.
    fn names(&self) -> std::io::Result<Vec<std::ffi::OsString>> {
        sys::list_dir(&*self.fd)
    }
}

/// A log file and its rotated files (`name`, `name.1`, …), for readers.
#[derive(Clone, Debug)]
pub(crate) struct LogFile {
    pub(crate) dir: LogDir,
    pub(crate) name: String,
}

impl LogFile {
    /// Opens rotated file `i` (0: the live file) for reading.
    pub(crate) fn open(&self, i: u32) -> std::io::Result<std::fs::File> {
        self.dir.open_read(&sink::rotated_name(&self.name, i))
    }

    /// The inode of rotated file `i`.
    pub(crate) fn ino(&self, i: u32) -> std::io::Result<u64> {
        Ok(self.dir.stat(&sink::rotated_name(&self.name, i))?.ino)
    }
}

enum Message {
    Attach {
        id: u64,
        generation: u64,
        name: Arc<str>,
        policy: LogPolicy,
        stdout: OwnedFd,
        stderr: Option<OwnedFd>,
        dropped: Arc<AtomicU64>,
        watch: Option<String>,
        run_id: Option<i64>,
    },
    Detach {
        id: u64,
        generation: u64,
    },
    Forget {
        id: u64,
        name: Arc<str>,
    },
    RemoveDirs(Vec<PathBuf>),
    Shutdown,
}

/// The supervision thread's handle on the pump thread.
pub(crate) struct Pump {
    tx: Sender<Message>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
    /// Messages sent since the last `wake`: one wake-up per loop turn of the supervision
    /// thread, however many runs it attached or detached in it.
    unwoken: std::cell::Cell<bool>,
}

/// Where the pump reports back.
pub(crate) struct Reports {
    pub(crate) requests: Sender<Request>,
    pub(crate) engine: Waker,
    pub(crate) events: Arc<crate::engine::Shared>,
}

impl Pump {
    pub(crate) fn start(
        log_dir: LogDir,
        reports: Reports,
        activity: Arc<Activity>,
    ) -> std::io::Result<Pump> {
        let poller = Poller::new(256)?;
        let waker = poller.waker()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("sheepdog-logs".into())
            .spawn(move || {
                PumpThread {
                    poller,
                    rx,
                    log_dir,
                    reports,
                    activity,
                    services: HashMap::new(),
                    draining: Default::default(),
                    pipes: HashMap::new(),
                    next_token: 1,
                    buf: vec![0u8; READ_BUF],
                    shutting_down: false,
                }
                .run()
            })?;
        Ok(Pump {
            tx,
            waker,
            thread: Some(thread),
            unwoken: std::cell::Cell::new(false),
        })
    }

    fn send(&self, m: Message) {
        // The pump lives as long as this handle; a send can fail only after it panicked.
        if self.tx.send(m).is_ok() {
            self.unwoken.set(true);
        }
    }

    /// Wakes the pump for the messages sent since the last call. The supervision thread
    /// calls it at the end of each loop turn.
    pub(crate) fn wake(&self) {
        if self.unwoken.replace(false) {
            self.waker.wake();
        }
    }

    /// Hands over the read ends of a new run's pipes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attach(
        &self,
        id: u64,
        generation: u64,
        name: Arc<str>,
        policy: LogPolicy,
        stdout: OwnedFd,
        stderr: Option<OwnedFd>,
        dropped: Arc<AtomicU64>,
        watch: Option<String>,
        run_id: Option<i64>,
    ) {
        self.send(Message::Attach {
            id,
            generation,
            name,
            policy,
            stdout,
            stderr,
            dropped,
            watch,
            run_id,
        });
    }

    /// The run's main process exited: read its pipes to EOF (within [`DRAIN_DEADLINE`]), then
    /// report `Request::Drained` with the last lines of each stream.
    pub(crate) fn detach(&self, id: u64, generation: u64) {
        self.send(Message::Detach { id, generation });
    }

    /// The service is deleted: drop its pipes, remove its files, report
    /// `Request::LogsForgotten`.
    pub(crate) fn forget(&self, id: u64, name: Arc<str>) {
        self.send(Message::Forget { id, name });
    }

    /// Removes empty directories (the cgroups of runs that are over), off the supervision
    /// thread. In order with everything else sent here, and done before `shutdown` returns.
    pub(crate) fn remove_dirs(&self, dirs: Vec<PathBuf>) {
        if !dirs.is_empty() {
            self.send(Message::RemoveDirs(dirs));
        }
    }

    /// Drains what is left (within the deadline) and joins the thread.
    pub(crate) fn shutdown(&mut self) {
        self.send(Message::Shutdown);
        self.wake();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the log pump does not panic");
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Out,
    Err,
}

struct Pipe {
    fd: OwnedFd,
    id: u64,
    generation: u64,
    which: Which,
}

struct RunPipes {
    generation: u64,
    tokens: Vec<u64>,
    /// Set by `Detach`: close the pipes by then and report.
    deadline: Option<Instant>,
    /// A `Ready::LogLine` pattern still to be matched, with the partial line of each stream.
    watch: Option<Watch>,
    /// The end of each stream, for the run's record.
    tail: Option<Tail>,
}

/// The last output of a run, for its record in the run history.
#[derive(Debug)]
pub(crate) struct RunTail {
    pub(crate) run_id: i64,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

/// The last `bytes` (at least) of each stream of a run, trimmed to `lines` lines at the end.
struct Tail {
    run_id: i64,
    lines: usize,
    bytes: usize,
    streams: [Vec<u8>; 2],
}

impl Tail {
    fn push(&mut self, which: Which, data: &[u8]) {
        let (cap, buf) = (self.bytes, &mut self.streams[which as usize]);
        if cap == 0 {
            return;
        }
        if data.len() >= cap {
            buf.clear();
            buf.extend_from_slice(&data[data.len() - cap..]);
        } else {
            buf.extend_from_slice(data);
            if buf.len() > 2 * cap {
                buf.drain(..buf.len() - cap);
            }
        }
    }

    fn finish(self) -> RunTail {
        let [out, err] = self.streams;
        RunTail {
            run_id: self.run_id,
            stdout: last_lines(&out, self.lines, self.bytes).to_vec(),
            stderr: last_lines(&err, self.lines, self.bytes).to_vec(),
        }
    }
}

/// The last `lines` lines of `buf` within its last `bytes` bytes (a final line without a
/// newline counts as a line).
pub(crate) fn last_lines(buf: &[u8], lines: usize, bytes: usize) -> &[u8] {
    if lines == 0 {
        return &[];
    }
    let buf = &buf[buf.len().saturating_sub(bytes)..];
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return &buf[i + 1..];
            }
        }
    }
    buf
}

struct Watch {
    pattern: regex_lite::Regex,
    partial: [Vec<u8>; 2],
}

impl Watch {
    /// Feeds output; returns whether a complete line (or an over-long one) matched.
    fn feed(&mut self, which: Which, data: &[u8], line_max: usize) -> bool {
        let partial = &mut self.partial[which as usize];
        let mut rest = data;
        while let Some(nl) = sink::find_newline(rest) {
            partial.extend_from_slice(&rest[..nl]);
            if self.pattern.is_match(&String::from_utf8_lossy(partial)) {
                return true;
            }
            partial.clear();
            rest = &rest[nl + 1..];
        }
        partial.extend_from_slice(rest);
        if partial.len() > line_max {
            let hit = self.pattern.is_match(&String::from_utf8_lossy(partial));
            partial.clear();
            return hit;
        }
        false
    }
}

struct ServiceLogs {
    name: Arc<str>,
    policy: LogPolicy,
    out: Sink,
    err: Sink,
    runs: Vec<RunPipes>,
}

struct PumpThread {
    poller: Poller,
    rx: Receiver<Message>,
    log_dir: LogDir,
    reports: Reports,
    activity: Arc<Activity>,
    services: HashMap<u64, ServiceLogs>,
    /// Services with a run being drained (a deadline set): the only ones the loop looks at
    /// for deadlines, so a wake costs nothing per idle service.
    draining: std::collections::HashSet<u64>,
    pipes: HashMap<u64, Pipe>,
    next_token: u64,
    buf: Vec<u8>,
    shutting_down: bool,
}

impl PumpThread {
    fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let services = &self.services;
            let next_deadline = self
                .draining
                .iter()
                .filter_map(|id| services.get(id))
                .flat_map(|s| s.runs.iter().filter_map(|r| r.deadline))
                .min();
            let timeout = next_deadline.map(|d| d.saturating_duration_since(Instant::now()));
            ready.clear();
            if let Err(e) = self.poller.wait(timeout, &mut ready) {
                log::error!("log pump wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut wrote = false;
            for &token in &ready {
                if token != WAKER_TOKEN {
                    wrote |= self.read_pipe(token);
                }
            }
            while let Ok(m) = self.rx.try_recv() {
                wrote |= self.handle(m);
            }
            self.expire_drains();
            if wrote {
                self.activity.bump();
            }
            if self.shutting_down && self.pipes.is_empty() {
                break;
            }
        }
        for s in self.services.values_mut() {
            s.out.close();
            s.err.close();
        }
    }

    fn handle(&mut self, m: Message) -> bool {
        match m {
            Message::Attach {
                id,
                generation,
                name,
                policy,
                stdout,
                stderr,
                dropped,
                watch,
                run_id,
            } => {
                // Whatever an earlier run left in its pipes comes first.
                let mut wrote = false;
                if let Some(s) = self.services.get(&id) {
                    let older: Vec<u64> = s.runs.iter().flat_map(|r| r.tokens.clone()).collect();
                    for token in older {
                        wrote |= self.read_pipe(token);
                    }
                }
                let log_dir = &self.log_dir;
                let svc = self.services.entry(id).or_insert_with(|| ServiceLogs {
                    name: name.clone(),
                    policy: policy.clone(),
                    out: Sink::new(log_dir.clone(), log_name(&name, false), dropped.clone()),
                    err: Sink::new(log_dir.clone(), log_name(&name, true), dropped.clone()),
                    runs: Vec::new(),
                });
                svc.policy = policy;
                let mut tokens = Vec::new();
                for (fd, which) in [(Some(stdout), Which::Out), (stderr, Which::Err)] {
                    let Some(fd) = fd else { continue };
                    let token = self.next_token;
                    self.next_token += 1;
                    if let Err(e) =
                        sys::tune_read_end(&fd).and_then(|()| self.poller.add(&fd, token))
                    {
                        log::error!("service '{name}': cannot watch its output: {e}");
                        continue;
                    }
                    tokens.push(token);
                    self.pipes.insert(
                        token,
                        Pipe {
                            fd,
                            id,
                            generation,
                            which,
                        },
                    );
                }
                let svc = self.services.get_mut(&id).expect("inserted above");
                let watch = watch
                    .and_then(|p| regex_lite::Regex::new(&p).ok())
                    .map(|pattern| Watch {
                        pattern,
                        partial: [Vec::new(), Vec::new()],
                    });
                let tail = run_id.map(|run_id| Tail {
                    run_id,
                    lines: svc.policy.get_tail_lines(),
                    bytes: svc.policy.get_tail_bytes(),
                    streams: [Vec::new(), Vec::new()],
                });
                svc.runs.push(RunPipes {
                    generation,
                    tokens,
                    deadline: None,
                    watch,
                    tail,
                });
                wrote
            }
            Message::Detach { id, generation } => {
                let Some(svc) = self.services.get_mut(&id) else {
                    self.report_drained(id, generation, None);
                    return false;
                };
                match svc.runs.iter_mut().find(|r| r.generation == generation) {
                    Some(run) => {
                        run.deadline = Some(Instant::now() + DRAIN_DEADLINE);
                        self.draining.insert(id);
                    }
                    None => self.report_drained(id, generation, None),
                }
                false
            }
            Message::Forget { id, name } => {
                // Also when this pump never saw it run: its logs may be from before `open`.
                remove_logs(&self.log_dir, &name);
                if let Some(svc) = self.services.remove(&id) {
                    for run in &svc.runs {
                        for token in &run.tokens {
                            if let Some(pipe) = self.pipes.remove(token) {
                                self.poller.remove(&pipe.fd);
                            }
                        }
                    }
                    remove_logs(&self.log_dir, &svc.name);
                }
                self.report(Request::LogsForgotten { id });
                false
            }
            Message::RemoveDirs(dirs) => {
                for dir in dirs {
                    match std::fs::remove_dir(&dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            log::warn!("cannot remove '{}': {e}", dir.display())
                        }
                        _ => {}
                    }
                }
                false
            }
            Message::Shutdown => {
                self.shutting_down = true;
                let deadline = Instant::now() + DRAIN_DEADLINE;
                for (id, svc) in &mut self.services {
                    for run in &mut svc.runs {
                        run.deadline = Some(run.deadline.map_or(deadline, |d| d.min(deadline)));
                    }
                    self.draining.insert(*id);
                }
                false
            }
        }
    }

    /// Reads what a pipe holds (a bounded amount), writes it, and closes the pipe at EOF.
    /// Returns whether anything was written.
    fn read_pipe(&mut self, token: u64) -> bool {
        let mut wrote = false;
        for _ in 0..READS_PER_WAKE {
            let Some(pipe) = self.pipes.get(&token) else {
                return wrote;
            };
            match rustix::io::read(&pipe.fd, &mut self.buf[..]) {
                Ok(0) => {
                    self.close_pipe(token);
                    return wrote;
                }
                Ok(n) => {
                    let (id, which) = (pipe.id, pipe.which);
                    let Some(svc) = self.services.get_mut(&id) else {
                        return wrote;
                    };
                    let sink = match which {
                        Which::Out => &mut svc.out,
                        Which::Err => &mut svc.err,
                    };
                    if let Some(error) = sink.write(&self.buf[..n], &svc.policy, SystemTime::now())
                    {
                        log::warn!("service '{}': {error}", svc.name);
                        self.reports.events.hub.emit(Event::LogError {
                            name: svc.name.to_string(),
                            error,
                        });
                    }
                    wrote = true;
                    let generation = pipe.generation;
                    let line_max = svc.policy.get_line_max();
                    if let Some(run) = svc.runs.iter_mut().find(|r| r.generation == generation) {
                        if let Some(tail) = &mut run.tail {
                            tail.push(which, &self.buf[..n]);
                        }
                        if let Some(w) = &mut run.watch {
                            if w.feed(which, &self.buf[..n], line_max) {
                                run.watch = None;
                                self.report(Request::ReadyLine { id, generation });
                            }
                        }
                    }
                    if n < self.buf.len() {
                        return wrote;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return wrote,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    log::warn!("reading a service's output failed: {e}");
                    self.close_pipe(token);
                    return wrote;
                }
            }
        }
        wrote
    }

    fn close_pipe(&mut self, token: u64) {
        let Some(pipe) = self.pipes.remove(&token) else {
            return;
        };
        self.poller.remove(&pipe.fd);
        let (id, generation) = (pipe.id, pipe.generation);
        drop(pipe);
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        let Some(pos) = svc.runs.iter().position(|r| r.generation == generation) else {
            return;
        };
        let run = &mut svc.runs[pos];
        run.tokens.retain(|t| *t != token);
        if run.tokens.is_empty() {
            let detached = run.deadline.is_some();
            let run = svc.runs.remove(pos);
            if detached {
                self.report_drained(id, generation, run.tail);
            } else {
                // EOF before the exit was reported: keep a marker so `Detach` answers at once.
                svc.runs.push(RunPipes {
                    generation,
                    tokens: Vec::new(),
                    deadline: None,
                    watch: None,
                    tail: run.tail,
                });
            }
        }
    }

    /// Closes the pipes of runs whose drain deadline passed (after a last read).
    fn expire_drains(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut done = Vec::new();
        let services = &mut self.services;
        self.draining.retain(|id| {
            services
                .get(id)
                .is_some_and(|s| s.runs.iter().any(|r| r.deadline.is_some()))
        });
        for id in &self.draining {
            let Some(svc) = self.services.get_mut(id) else {
                continue;
            };
            let mut i = 0;
            while i < svc.runs.len() {
                let run = &svc.runs[i];
                match run.deadline {
                    Some(_) if run.tokens.is_empty() => {
                        let run = svc.runs.remove(i);
                        done.push((*id, run.generation, run.tail));
                        continue;
                    }
                    Some(d) if d <= now => expired.extend(run.tokens.iter().copied()),
                    _ => {}
                }
                i += 1;
            }
        }
        for token in expired {
            self.read_pipe(token);
            if self.pipes.contains_key(&token) {
                self.close_pipe(token);
            }
        }
        for (id, generation, tail) in done {
            self.report_drained(id, generation, tail);
        }
    }

    fn report_drained(&self, id: u64, generation: u64, tail: Option<Tail>) {
        let tail = tail.map(Tail::finish);
        self.report(Request::Drained {
            id,
            generation,
            tail,
        });
    }

    fn report(&self, request: Request) {
        if self.reports.requests.send(request).is_ok() {
            self.reports.engine.wake();
        }
    }
}

/// Removes a service's log files: the live ones and every rotated one.
pub(crate) fn remove_logs(log_dir: &LogDir, name: &str) {
    let Ok(files) = log_dir.names() else {
        return;
    };
    let prefixes = [log_name(name, false), log_name(name, true)];
    for file in files {
        let Some(file) = file.to_str() else { continue };
        let ours = prefixes.iter().any(|p| {
            file == p
                || file
                    .strip_prefix(p.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        if ours {
            if let Err(e) = log_dir.remove(file) {
                log::warn!(
                    "service '{name}': cannot remove log '{}': {e}",
                    log_dir.path_of(file).display()
                );
            }
        }
    }
}

/// The pipes of one run: read ends for the pump, write ends for the child.
pub(crate) struct RunPipesForSpawn {
    pub(crate) out_read: OwnedFd,
    pub(crate) out_write: OwnedFd,
    pub(crate) err: Option<(OwnedFd, OwnedFd)>,
}

/// Makes a run's pipes: one for stdout and, unless merged, one for stderr.
pub(crate) fn make_pipes(merge_stderr: bool) -> std::io::Result<RunPipesForSpawn> {
    let (out_read, out_write) = sys::pipe()?;
    let err = if merge_stderr {
        None
    } else {
        Some(sys::pipe()?)
    };
    Ok(RunPipesForSpawn {
        out_read,
        out_write,
        err,
    })
}
