//! Requests that wait on the supervision thread: what each waits for, service by service,
//! and the reply it gets once that has happened. Every wait ends when what it waits for
//! happens *or is superseded* by a later request: a stop overtaken by a start returns once
//! the run it stopped is over, a start overtaken by a stop returns the service stopped, one
//! overtaken by a delete `NotFound`.

use super::service::{Service, State, Then};
use crate::error::{Error, ErrorKind, Result};
use crate::info::ServiceInfo;
use crossbeam_channel::Sender;
use std::collections::{BTreeMap, HashSet, VecDeque};

/// What a pending request waits for, for each of its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Want {
    /// The run of the recorded generation is over: no run left, or a newer one started by a
    /// later request; and no sweep still ending what earlier runs left.
    Down,
    /// Removed, and its logs with it.
    Gone,
    /// A run newer than the recorded generation was attempted, or nothing will start (a
    /// racing stop won, or it waits for its dependencies).
    Up,
}

pub(super) enum Reply {
    Count(Sender<Result<usize>>, usize),
    /// The info of this service.
    Info(Sender<Result<ServiceInfo>>, u64),
    /// Shutdown's waves: nobody waits on this one.
    Nobody,
}

pub(super) struct Pending {
    /// (service id, its generation when the wait began).
    pub(super) targets: Vec<(u64, u64)>,
    pub(super) want: Want,
    pub(super) reply: Reply,
    /// Later waves of a stop or delete in dependency order: begun when the earlier ones are
    /// down.
    pub(super) stages: VecDeque<Vec<u64>>,
    pub(super) then: Then,
}

impl Pending {
    /// Whether what it waits for has happened, for every target of the waves begun so far.
    /// `forgetting`: deleted services whose logs are not removed yet.
    pub(super) fn done(
        &self,
        services: &BTreeMap<u64, Service>,
        forgetting: &HashSet<u64>,
    ) -> bool {
        self.targets.iter().all(|&(id, generation)| {
            let Some(svc) = services.get(&id) else {
                return !forgetting.contains(&id);
            };
            match self.want {
                Want::Down => {
                    let over = svc.run().is_none() || svc.generation > generation;
                    over && !matches!(svc.state, State::Sweeping(_))
                }
                // The service is still there: not yet.
                Want::Gone => false,
                Want::Up => {
                    svc.generation > generation
                        || matches!(svc.state, State::Waiting)
                        || (svc.run().is_none() && !svc.is_stopping())
                }
            }
        })
    }

    /// Sends the reply, as the services are now.
    pub(super) fn reply(self, services: &BTreeMap<u64, Service>) {
        // The error of a start by hand that could not spawn, if that is where it ended.
        let spawn_error = |svc: &Service| match &svc.state {
            State::Errored(Some(e)) => Some(e.clone()),
            _ => None,
        };
        match self.reply {
            Reply::Count(reply, n) => {
                let error = match self.want {
                    Want::Up => self
                        .targets
                        .iter()
                        .find_map(|(id, _)| services.get(id).and_then(spawn_error)),
                    _ => None,
                };
                let _ = reply.send(error.map_or(Ok(n), Err));
            }
            Reply::Info(reply, id) => {
                let result = match services.get(&id) {
                    None => Err(Error::new(
                        ErrorKind::NotFound,
                        "was deleted while starting",
                    )),
                    Some(svc) => spawn_error(svc).map_or_else(|| Ok(svc.info()), Err),
                };
                let _ = reply.send(result);
            }
            Reply::Nobody => {}
        }
    }
}
