//! Log capture: one pump thread for all services.
//!
//! Each run's stdout and stderr are pipes whose read ends the pump holds in one epoll. The
//! pump is the only writer of the log files (`logs/<name>.out.log`, `.err.log`), with plain
//! `read`/`write` through a [`sink::Sink`] per stream. It never stops draining: when writing
//! fails, data is dropped and counted, so a child never blocks on a full disk. The
//! supervision thread talks to it through [`Pump`] and hears back through a channel of
//! [`Report`]s, so a slow disk never stalls supervision.

mod clock;
mod dir;
mod pump;
pub(crate) use clock::rfc3339_millis;
pub(crate) mod reader;
pub(crate) mod sink;

pub(crate) use dir::{LogDir, LogFile};

use crate::events::Hub;
use crate::spec::LogPolicy;
use crate::sys::{self, Poller, Waker};
use crossbeam_channel::Sender;
use reader::Activity;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the pump keeps reading a run's pipes after its main process exited. A grandchild
/// that keeps a pipe open longer loses its write end's reader (it gets EPIPE), and the run
/// counts as drained.
pub(crate) const DRAIN_DEADLINE: Duration = Duration::from_millis(500);

/// The name of a stream's log file in the log directory.
pub(crate) fn log_name(name: &str, stderr: bool) -> String {
    format!("{name}.{}.log", if stderr { "err" } else { "out" })
}

/// A new run's output, handed to the pump.
pub(crate) struct RunOutput {
    pub(crate) id: u64,
    pub(crate) generation: u64,
    pub(crate) name: Arc<str>,
    pub(crate) policy: LogPolicy,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: Option<OwnedFd>,
    /// Bytes dropped because the log could not be written, counted for the service.
    pub(crate) dropped: Arc<AtomicU64>,
    /// A `Ready::LogLine` pattern to look for.
    pub(crate) watch: Option<String>,
    /// Keep the last lines of its output for its record.
    pub(crate) keep_tail: bool,
    /// Its watchdog's clock: set at each read of its output.
    pub(crate) last_output: Option<Arc<LastOutput>>,
    /// Its watchdog's patterns: the first line that matches one is reported.
    pub(crate) alarms: Vec<String>,
}

/// When a run last wrote (stdout or stderr): the log pump sets it at each read, the
/// supervision thread reads it for a watchdog's silence check, without a report per read.
#[derive(Debug)]
pub(crate) struct LastOutput(parking_lot::Mutex<std::time::Instant>);

impl LastOutput {
    pub(crate) fn new(at: std::time::Instant) -> LastOutput {
        LastOutput(parking_lot::Mutex::new(at))
    }

    pub(crate) fn set(&self, at: std::time::Instant) {
        *self.0.lock() = at;
    }

    pub(crate) fn get(&self) -> std::time::Instant {
        *self.0.lock()
    }
}

enum Message {
    Attach(Box<RunOutput>),
    Detach {
        id: u64,
        generation: u64,
    },
    /// The supervision thread does not wait for this run's drain.
    Unhurried {
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

/// What the pump tells the supervision thread.
#[derive(Debug)]
pub(crate) enum Report {
    /// A run's pipes are read to their end (or their deadline passed), with its last output.
    Drained {
        id: u64,
        generation: u64,
        tail: Option<RunTail>,
    },
    /// A deleted service's logs are closed and removed.
    Forgotten { id: u64 },
    /// A line matched the run's `Ready::LogLine` pattern.
    ReadyLine { id: u64, generation: u64 },
    /// A line matched one of the run's watchdog patterns (its index), reported once per run.
    OutputMatched {
        id: u64,
        generation: u64,
        pattern: usize,
        line: String,
    },
}

/// The last output of a run, for its record in the run history.
#[derive(Debug)]
pub(crate) struct RunTail {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

/// Where the pump reports back: the supervision thread's channel and waker, and the event
/// hub for log errors (which need no supervision).
pub(crate) struct Reports {
    pub(crate) tx: Sender<Report>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) activity: Arc<Activity>,
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

impl Pump {
    pub(crate) fn start(log_dir: LogDir, reports: Reports) -> std::io::Result<Pump> {
        let (tx, rx) = crossbeam_channel::unbounded();
        // The pump's poller lives on its thread; its waker comes back here.
        let (made_tx, made_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("sheepdog-logs".into())
            .spawn(move || {
                let poller = match Poller::new(256).and_then(|p| Ok((p.waker()?, p))) {
                    Ok((waker, poller)) => {
                        let _ = made_tx.send(Ok(waker));
                        poller
                    }
                    Err(e) => return drop(made_tx.send(Err(e))),
                };
                pump::PumpThread {
                    poller,
                    rx,
                    log_dir,
                    reports,
                    services: HashMap::new(),
                    draining: Default::default(),
                    pipes: HashMap::new(),
                    next_token: 1,
                    buf: vec![0u8; pump::READ_BUF],
                    shutting_down: false,
                }
                .run()
            })?;
        let waker = made_rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the log pump thread ended")))?;
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
    pub(crate) fn attach(&self, output: RunOutput) {
        self.send(Message::Attach(Box::new(output)));
    }

    /// The run's main process exited: read its pipes to EOF (within [`DRAIN_DEADLINE`]), then
    /// report [`Report::Drained`] with the last lines of each stream.
    pub(crate) fn detach(&self, id: u64, generation: u64) {
        self.send(Message::Detach { id, generation });
    }

    /// The supervision thread does not wait for this detached run's drain (it restarted
    /// the service at once): its [`Report::Drained`] goes without waking the thread.
    pub(crate) fn unhurried(&self, id: u64, generation: u64) {
        self.send(Message::Unhurried { id, generation });
    }

    /// The service is deleted: drop its pipes, remove its files, report
    /// [`Report::Forgotten`].
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
