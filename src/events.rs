//! Typed [`Event`]s and [`Events`] subscriptions.
//!
//! Each subscription has a bounded queue. The supervision thread never blocks on a
//! subscriber: when a queue is full the event is dropped for that subscriber and counted,
//! and the subscriber next receives [`Event::Lagged`] with the count.

use crate::info::Exit;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many events a subscription holds before it starts to lag.
const QUEUE: usize = 4096;

/// Something that happened to a service.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A run started.
    Started {
        /// The service.
        name: String,
        /// The pid of the new process (the leader of its group).
        pid: u32,
    },
    /// A run ended, for whatever reason.
    Exited {
        /// The service.
        name: String,
        /// The pid of the process that ended.
        pid: u32,
        /// How it ended.
        exit: Exit,
    },
    /// The restart policy decided to restart the service after `delay` (zero: at once).
    Restarting {
        /// The service.
        name: String,
        /// What ended the run: its exit, and why if a check ended it.
        reason: String,
        /// The delay before the restart.
        delay: Duration,
    },
    /// The service will restart after `delay`.
    Backoff {
        /// The service.
        name: String,
        /// The delay before the restart.
        delay: Duration,
    },
    /// The operator's stop completed: nothing of the service runs.
    Stopped {
        /// The service.
        name: String,
    },
    /// The service gave up: crash-loop limit, or a failed start.
    Errored {
        /// The service.
        name: String,
        /// Why, as a lowercase phrase.
        reason: String,
    },
    /// The service became ready (its [`Ready`](crate::Ready) condition was met).
    Ready {
        /// The service.
        name: String,
    },
    /// The service failed its liveness check `failures` times in a row and is being restarted.
    Unhealthy {
        /// The service.
        name: String,
        /// The last failure, as a lowercase phrase.
        reason: String,
    },
    /// A rolling reload stopped at this service: its new run did not become ready (or
    /// restarting it would have left no instance ready). The services after it were left
    /// as they were.
    ReloadFailed {
        /// The service.
        name: String,
        /// Why, and what was left as it was, as a lowercase phrase.
        reason: String,
    },
    /// The service was deleted.
    Deleted {
        /// The service.
        name: String,
    },
    /// A service's output could not be written to its log (disk full, directory removed,
    /// permission lost). The output is dropped and counted
    /// ([`ServiceInfo::log_dropped_bytes`](crate::ServiceInfo::log_dropped_bytes)) until
    /// writing works again; then a marker line records the gap.
    LogError {
        /// The service.
        name: String,
        /// What failed, as a lowercase phrase.
        error: String,
    },
    /// `open` found processes of this service that a previous host left running when it
    /// died, and killed them before starting anything. Reported once per `open`: every
    /// subscription, whenever it is made, receives these events first.
    Reclaimed {
        /// The service (`#<id>` if its definition is gone).
        name: String,
        /// The processes killed.
        pids: Vec<u32>,
    },
    /// The state directory, its registry or its lock file was deleted, replaced, truncated
    /// or overwritten under the running supervisor. Changes can no longer be stored: every
    /// later `start`, `stop`, `restart` or `delete` fails with a `Store` error that says so.
    /// The services run on, supervised, until [`shutdown`](crate::Supervisor::shutdown); the
    /// supervisor keeps the lock of the directory's path (re-creating the directory if it
    /// was removed), so that no second supervisor opens it meanwhile.
    StateDirLost {
        /// What happened, as a lowercase phrase.
        error: String,
    },
    /// This subscription fell behind and `missed` events were dropped for it.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

impl Event {
    /// The service the event is about; `None` for [`Event::Lagged`] and
    /// [`Event::StateDirLost`].
    pub fn name(&self) -> Option<&str> {
        match self {
            Event::Started { name, .. }
            | Event::Exited { name, .. }
            | Event::Backoff { name, .. }
            | Event::Restarting { name, .. }
            | Event::Stopped { name }
            | Event::Errored { name, .. }
            | Event::Deleted { name }
            | Event::Ready { name }
            | Event::Unhealthy { name, .. }
            | Event::ReloadFailed { name, .. }
            | Event::LogError { name, .. }
            | Event::Reclaimed { name, .. } => Some(name),
            Event::Lagged { .. } | Event::StateDirLost { .. } => None,
        }
    }
}

struct Subscriber {
    tx: Sender<Event>,
    missed: Arc<AtomicU64>,
}

/// The sending side, shared by the supervision thread and `subscribe`.
#[derive(Default)]
pub(crate) struct Hub {
    subscribers: Mutex<Vec<Subscriber>>,
    /// What `open` reported, for every subscription to begin with.
    preamble: Mutex<Vec<Event>>,
    /// Set by `close`: a later subscription ends at once.
    closed: std::sync::atomic::AtomicBool,
    /// Rung after each delivery and at `close`, for the control socket's subscribers.
    pub(crate) bell: crate::bell::Bell,
}

impl Hub {
    /// Sets the events every subscription begins with (at most the queue's size are kept).
    pub(crate) fn set_preamble(&self, mut events: Vec<Event>) {
        events.truncate(QUEUE / 2);
        *self.preamble.lock() = events;
    }

    pub(crate) fn subscribe(&self) -> Events {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let missed = Arc::new(AtomicU64::new(0));
        let mut subscribers = self.subscribers.lock();
        if self.closed.load(Ordering::Relaxed) {
            // Nothing will ever be sent: dropping the sender ends the subscription.
            return Events { rx, missed };
        }
        for event in self.preamble.lock().iter() {
            let _ = tx.try_send(event.clone());
        }
        subscribers.push(Subscriber {
            tx,
            missed: missed.clone(),
        });
        Events { rx, missed }
    }

    /// Delivers to every subscriber without blocking; drops subscribers that went away.
    pub(crate) fn emit(&self, event: Event) {
        let mut subs = self.subscribers.lock();
        subs.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                s.missed.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        drop(subs);
        self.bell.ring();
    }

    /// Ends every subscription: iterators return `None` once drained.
    pub(crate) fn close(&self) {
        let mut subscribers = self.subscribers.lock();
        self.closed.store(true, Ordering::Relaxed);
        subscribers.clear();
        drop(subscribers);
        self.bell.ring();
    }
}

/// A subscription to a supervisor's events, from [`Supervisor::subscribe`](crate::Supervisor::subscribe).
///
/// Iterating blocks until the next event and ends when the supervisor shuts down.
///
/// # Example
///
/// ```
/// use sheepdog::{Event, RestartPolicy, ServiceSpec, Supervisor};
/// use std::time::Duration;
/// # fn main() -> sheepdog::Result<()> {
/// let sup = Supervisor::temporary()?;
/// let events = sup.subscribe();
/// sup.start(ServiceSpec::new("once", "true").restart(RestartPolicy::never()))?;
/// let first = events.recv_timeout(Duration::from_secs(5));
/// assert!(matches!(first, Some(Event::Started { .. })));
/// # sup.shutdown()?; Ok(()) }
/// ```
pub struct Events {
    rx: Receiver<Event>,
    missed: Arc<AtomicU64>,
}

impl Events {
    fn lagged(&self) -> Option<Event> {
        match self.missed.swap(0, Ordering::Relaxed) {
            0 => None,
            missed => Some(Event::Lagged { missed }),
        }
    }

    /// The next event if one is queued, without blocking.
    pub fn try_recv(&self) -> Option<Event> {
        match self.rx.try_recv() {
            Ok(event) => Some(event),
            Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => self.lagged(),
        }
    }

    /// The next event, waiting at most `timeout`; `None` if none came or the supervisor shut
    /// down.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        if let Some(event) = self.try_recv() {
            return Some(event);
        }
        self.rx.recv_timeout(timeout).ok().or_else(|| self.lagged())
    }
}

impl Iterator for Events {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if let Some(event) = self.try_recv() {
            return Some(event);
        }
        self.rx.recv().ok().or_else(|| self.lagged())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_subscriber_lags_instead_of_blocking() {
        let hub = Hub::default();
        let events = hub.subscribe();
        for i in 0..QUEUE + 10 {
            hub.emit(Event::Deleted {
                name: format!("s{i}"),
            });
        }
        for _ in 0..QUEUE {
            assert!(matches!(events.try_recv(), Some(Event::Deleted { .. })));
        }
        assert_eq!(events.try_recv(), Some(Event::Lagged { missed: 10 }));
        assert_eq!(events.try_recv(), None);
    }

    #[test]
    fn close_ends_iteration() {
        let hub = Hub::default();
        let events = hub.subscribe();
        hub.emit(Event::Stopped { name: "a".into() });
        hub.close();
        assert_eq!(
            events.collect::<Vec<_>>(),
            vec![Event::Stopped { name: "a".into() }]
        );
        assert_eq!(
            hub.subscribe().count(),
            0,
            "a subscription after close ends at once"
        );
    }
}
