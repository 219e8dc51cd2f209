//! The pump thread: one epoll over every run's output pipes, writing each stream to its log
//! through a [`Sink`], draining a run that ended within [`DRAIN_DEADLINE`], and reporting
//! back (a run drained with its last lines, a deleted service's logs removed, a readiness
//! line seen).

use super::dir::{LogDir, remove_logs};
use super::sink::{self, Sink};
use super::{DRAIN_DEADLINE, Message, Report, Reports, RunOutput, RunTail};
use crate::events::Event;
use crate::spec::LogPolicy;
use crate::sys::{Poller, WAKER_TOKEN};
use crossbeam_channel::Receiver;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// One read buffer for all pipes.
pub(super) const READ_BUF: usize = 256 * 1024;
/// Reads per pipe per wake-up, so one fast writer cannot starve the others.
const READS_PER_WAKE: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Out,
    Err,
}

pub(super) struct Pipe {
    /// The read end, non-blocking.
    file: File,
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
    /// Watchdog patterns not matched yet.
    alarms: Option<Watch>,
    /// The watchdog's clock of the last output.
    last_output: Option<Arc<super::LastOutput>>,
    /// The end of each stream, for the run's record.
    tail: Option<Tail>,
    /// Set by `Unhurried`: the supervision thread does not wait for the drain, so its report
    /// goes without a wake-up, to be read at the thread's next turn.
    unhurried: bool,
}

/// The last `bytes` (at least) of each stream of a run, trimmed to `lines` lines at the end.
struct Tail {
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

/// Patterns looked for in a run's lines, with the partial line of each stream.
struct Watch {
    patterns: Vec<regex_lite::Regex>,
    partial: [Vec<u8>; 2],
}

/// The longest matched line a report carries.
const MATCHED_LINE_MAX: usize = 512;

impl Watch {
    /// A watch of the patterns that compile (the spec's validation refused the others), if
    /// any.
    fn new<'a>(patterns: impl IntoIterator<Item = &'a String>) -> Option<Watch> {
        let patterns: Vec<regex_lite::Regex> = patterns
            .into_iter()
            .filter_map(|p| regex_lite::Regex::new(p).ok())
            .collect();
        (!patterns.is_empty()).then(|| Watch {
            patterns,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Feeds output; returns the first complete line (or over-long one) that matched, with
    /// the index of the pattern it matched.
    fn feed(&mut self, which: Which, data: &[u8], line_max: usize) -> Option<(usize, String)> {
        let partial = &mut self.partial[which as usize];
        let patterns = &self.patterns;
        let matched = |line: &[u8]| {
            let text = String::from_utf8_lossy(line);
            let i = patterns.iter().position(|p| p.is_match(&text))?;
            let mut end = text.len().min(MATCHED_LINE_MAX);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            Some((i, text[..end].trim_end_matches('\r').to_string()))
        };
        let mut rest = data;
        while let Some(nl) = sink::find_newline(rest) {
            partial.extend_from_slice(&rest[..nl]);
            if let Some(hit) = matched(partial) {
                return Some(hit);
            }
            partial.clear();
            rest = &rest[nl + 1..];
        }
        partial.extend_from_slice(rest);
        if partial.len() > line_max {
            let hit = matched(partial);
            partial.clear();
            return hit;
        }
        None
    }
}

pub(super) struct ServiceLogs {
    name: Arc<str>,
    policy: LogPolicy,
    out: Sink,
    err: Sink,
    runs: Vec<RunPipes>,
}

pub(super) struct PumpThread {
    pub(super) poller: Poller,
    pub(super) rx: Receiver<Message>,
    pub(super) log_dir: LogDir,
    pub(super) reports: Reports,
    /// Boxed: a table sized for thousands of services then holds pointers, not the
    /// services' state (a few hundred bytes each) times the table's spare capacity.
    pub(super) services: HashMap<u64, Box<ServiceLogs>>,
    /// Services with a run being drained (a deadline set): the only ones the loop looks at
    /// for deadlines, so a wake costs nothing per idle service.
    pub(super) draining: std::collections::HashSet<u64>,
    pub(super) pipes: HashMap<u64, Pipe>,
    pub(super) next_token: u64,
    pub(super) buf: Vec<u8>,
    pub(super) shutting_down: bool,
}

impl PumpThread {
    pub(super) fn run(mut self) {
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
                self.reports.activity.bump();
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
            Message::Attach(output) => {
                let RunOutput {
                    id,
                    generation,
                    name,
                    policy,
                    stdout,
                    stderr,
                    dropped,
                    watch,
                    keep_tail,
                    last_output,
                    alarms,
                } = *output;
                // Whatever an earlier run left in its pipes comes first.
                let mut wrote = false;
                if let Some(s) = self.services.get(&id) {
                    let older: Vec<u64> = s.runs.iter().flat_map(|r| r.tokens.clone()).collect();
                    for token in older {
                        wrote |= self.read_pipe(token);
                    }
                }
                let log_dir = &self.log_dir;
                let svc = self.services.entry(id).or_insert_with(|| {
                    Box::new(ServiceLogs {
                        name: name.clone(),
                        policy: policy.clone(),
                        out: Sink::new(
                            log_dir.clone(),
                            super::log_name(&name, false),
                            dropped.clone(),
                        ),
                        err: Sink::new(
                            log_dir.clone(),
                            super::log_name(&name, true),
                            dropped.clone(),
                        ),
                        // Room for the one run a service has most of the time (a push would
                        // make room for four).
                        runs: Vec::with_capacity(1),
                    })
                });
                svc.policy = policy;
                let mut tokens = Vec::new();
                for (fd, which) in [(Some(stdout), Which::Out), (stderr, Which::Err)] {
                    let Some(fd) = fd else { continue };
                    let token = self.next_token;
                    self.next_token += 1;
                    if let Err(e) =
                        crate::sys::tune_read_end(&fd).and_then(|()| self.poller.add(&fd, token))
                    {
                        log::error!("service '{name}': cannot watch its output: {e}");
                        continue;
                    }
                    tokens.push(token);
                    self.pipes.insert(
                        token,
                        Pipe {
                            file: File::from(fd),
                            id,
                            generation,
                            which,
                        },
                    );
                }
                let svc = self.services.get_mut(&id).expect("inserted above");
                let watch = Watch::new(&watch);
                let alarms = Watch::new(&alarms);
                let tail = keep_tail.then(|| Tail {
                    lines: svc.policy.get_tail_lines(),
                    bytes: svc.policy.get_tail_bytes(),
                    streams: [Vec::new(), Vec::new()],
                });
                svc.runs.push(RunPipes {
                    generation,
                    tokens,
                    deadline: None,
                    watch,
                    alarms,
                    last_output,
                    tail,
                    unhurried: false,
                });
                wrote
            }
            Message::Detach { id, generation } => {
                let Some(svc) = self.services.get_mut(&id) else {
                    self.report_drained(id, generation, None, true);
                    return false;
                };
                match svc.runs.iter_mut().find(|r| r.generation == generation) {
                    Some(run) => {
                        run.deadline = Some(Instant::now() + DRAIN_DEADLINE);
                        self.draining.insert(id);
                    }
                    None => self.report_drained(id, generation, None, true),
                }
                false
            }
            Message::Unhurried { id, generation } => {
                if let Some(run) = self
                    .services
                    .get_mut(&id)
                    .and_then(|s| s.runs.iter_mut().find(|r| r.generation == generation))
                {
                    run.unhurried = true;
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
                                self.poller.remove(&pipe.file);
                            }
                        }
                    }
                    remove_logs(&self.log_dir, &svc.name);
                }
                self.report(Report::Forgotten { id });
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
            let Some(pipe) = self.pipes.get_mut(&token) else {
                return wrote;
            };
            match pipe.file.read(&mut self.buf[..]) {
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
                        self.reports.hub.emit(Event::LogError {
                            name: svc.name.to_string(),
                            error,
                        });
                    }
                    wrote = true;
                    let generation = pipe.generation;
                    let line_max = svc.policy.get_line_max();
                    let (mut ready, mut alarm) = (false, None);
                    if let Some(run) = svc.runs.iter_mut().find(|r| r.generation == generation) {
                        if let Some(tail) = &mut run.tail {
                            tail.push(which, &self.buf[..n]);
                        }
                        if let Some(w) = &mut run.watch
                            && w.feed(which, &self.buf[..n], line_max).is_some()
                        {
                            run.watch = None;
                            ready = true;
                        }
                        if let Some(last) = &run.last_output {
                            last.set(Instant::now());
                        }
                        if let Some(w) = &mut run.alarms {
                            alarm = w.feed(which, &self.buf[..n], line_max);
                            if alarm.is_some() {
                                run.alarms = None;
                            }
                        }
                    }
                    if ready {
                        self.report(Report::ReadyLine { id, generation });
                    }
                    if let Some((pattern, line)) = alarm {
                        self.report(Report::OutputMatched {
                            id,
                            generation,
                            pattern,
                            line,
                        });
                    }
                    if n < self.buf.len() {
                        return wrote;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return wrote,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
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
        self.poller.remove(&pipe.file);
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
                self.report_drained(id, generation, run.tail, !run.unhurried);
            } else {
                // EOF before the exit was reported: keep a marker so `Detach` answers at once.
                svc.runs.push(RunPipes {
                    generation,
                    tokens: Vec::new(),
                    deadline: None,
                    watch: None,
                    alarms: None,
                    last_output: None,
                    tail: run.tail,
                    unhurried: false,
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
                        done.push((*id, run.generation, run.tail, !run.unhurried));
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
        for (id, generation, tail, wake) in done {
            self.report_drained(id, generation, tail, wake);
        }
    }

    /// Reports a drained run; `wake`: the supervision thread is woken for it (else it reads
    /// the report at its next turn).
    fn report_drained(&self, id: u64, generation: u64, tail: Option<Tail>, wake: bool) {
        let tail = tail.map(Tail::finish);
        let report = Report::Drained {
            id,
            generation,
            tail,
        };
        if self.reports.tx.send(report).is_ok() && wake {
            self.reports.waker.wake();
        }
    }

    fn report(&self, report: Report) {
        if self.reports.tx.send(report).is_ok() {
            self.reports.waker.wake();
        }
    }
}
