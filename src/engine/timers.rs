//! Deadlines: one heap for every service's timers. A timer names the run (generation) it was
//! set for, and is ignored once the service has moved on.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKind {
    /// The backoff is over: restart.
    Restart,
    /// The stop timeout passed: SIGKILL.
    StopDeadline,
    /// Look again whether what is left of an ended run is gone.
    GroupCheck,
    /// What was killed did not go away: stop waiting for it.
    GiveUp,
    /// A sweep's stop timeout passed: SIGKILL.
    SweepDeadline,
    /// What a sweep killed did not go away: stop waiting for it.
    SweepGiveUp,
    /// `Ready::After` elapsed.
    ReadyAfter,
    /// Not ready in time: a failed start.
    ReadyTimeout,
    /// Time for the next readiness probe.
    ReadyProbe,
    /// Time for the next liveness check.
    HealthProbe,
    /// Time to measure the services with a memory limit (no service: id 0).
    MemorySample,
    /// Take the lock of the state directory's path again (no service: id 0).
    Relock,
    /// A rolling reload's step may be overdue (no service: id 0).
    Roll,
    /// A watched change may have settled: restart, or wait on (any generation).
    WatchSettle,
    /// Time to look whether the run's output went silent (its watchdog).
    Silence,
    /// A turn for deferred work (no service: id 0): the drains of runs restarted at once,
    /// which the pump reports without a wake-up, and the directories held while exits came.
    Deferred,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub(super) at: Instant,
    pub(super) id: u64,
    pub(super) generation: u64,
    pub(super) kind: TimerKind,
}

/// Every timer, nearest first.
#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    pub(super) fn push(&mut self, at: Instant, id: u64, generation: u64, kind: TimerKind) {
        self.heap.push(Reverse(Timer {
            at,
            id,
            generation,
            kind,
        }));
    }

    /// When the nearest timer is due.
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(t)| t.at)
    }

    /// The nearest timer, if it is due at `now`.
    pub(super) fn peek_due(&self, now: Instant) -> Option<Timer> {
        self.heap
            .peek()
            .map(|Reverse(t)| *t)
            .filter(|t| t.at <= now)
    }

    pub(super) fn pop(&mut self) -> Option<Timer> {
        self.heap.pop().map(|Reverse(t)| t)
    }
}
