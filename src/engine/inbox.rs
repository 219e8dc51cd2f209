//! What reaches the supervision thread: the API's requests, each with the channel its reply
//! goes back on. The log pump and the probe workers report on channels of their own, with
//! their own types ([`crate::logs::Report`], [`crate::probe::Report`]).

use crate::error::{Error, Result};
use crate::history::{Explanation, Run};
use crate::info::ServiceInfo;
use crate::spec::ServiceSpec;
use crossbeam_channel::Sender;

/// A request from the API.
pub(crate) enum Request {
    Start {
        spec: Box<ServiceSpec>,
        reply: Sender<Result<ServiceInfo>>,
    },
    StartMany {
        items: Vec<(ServiceSpec, Sender<Result<ServiceInfo>>)>,
    },
    Define {
        spec: Box<ServiceSpec>,
        reply: Sender<Result<ServiceInfo>>,
    },
    StartTarget {
        target: String,
        reply: Sender<Result<usize>>,
    },
    Scale {
        name: String,
        instances: u32,
        reply: Sender<Result<usize>>,
    },
    Reload {
        target: String,
        reply: Sender<Result<usize>>,
    },
    History {
        target: String,
        limit: usize,
        reply: Sender<Result<Vec<Run>>>,
    },
    Explain {
        target: String,
        reply: Sender<Result<Explanation>>,
    },
    Stop {
        target: String,
        reply: Sender<Result<usize>>,
    },
    Restart {
        target: String,
        reply: Sender<Result<usize>>,
    },
    Delete {
        target: String,
        reply: Sender<Result<usize>>,
    },
    /// Stops every service; with `by`, no stop that begins from now waits past it for its
    /// group to end (SIGKILL at `by` at the latest).
    Shutdown {
        reply: Sender<Result<()>>,
        by: Option<std::time::Instant>,
    },
    /// Answered at the next turn: the supervision thread is alive and turning.
    Ping { reply: Sender<Result<()>> },
}

impl Request {
    /// Answers a request that arrived after the shutdown began: `ShutDown` (a second shutdown
    /// is told it is done).
    pub(super) fn refuse(self) {
        match self {
            Request::Start { reply, .. } | Request::Define { reply, .. } => {
                drop(reply.send(Err(Error::shut_down())))
            }
            Request::History { reply, .. } => drop(reply.send(Err(Error::shut_down()))),
            Request::Explain { reply, .. } => drop(reply.send(Err(Error::shut_down()))),
            Request::StartMany { items } => {
                for (_, reply) in items {
                    let _ = reply.send(Err(Error::shut_down()));
                }
            }
            Request::Stop { reply, .. }
            | Request::Restart { reply, .. }
            | Request::Delete { reply, .. }
            | Request::StartTarget { reply, .. }
            | Request::Scale { reply, .. }
            | Request::Reload { reply, .. } => drop(reply.send(Err(Error::shut_down()))),
            Request::Shutdown { reply, .. } => drop(reply.send(Ok(()))),
            // Refused by a loop that still turns: alive, as a liveness probe during a long
            // graceful stop must hear.
            Request::Ping { reply } => drop(reply.send(Ok(()))),
        }
    }
}
