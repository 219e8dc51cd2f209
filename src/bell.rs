//! [`Bell`]: tells a thread that waits in a poller that something it watches happened on
//! another thread (an event emitted, log lines written, a reply sent), at the cost of one
//! atomic load while nobody listens.
//!
//! The listener attaches a waker of its poller once, says when it listens, and calls
//! [`Bell::answer`] before it looks at what it watches: a ring after that wakes it again, and
//! a ring before it is seen by the look.

use crate::sys::Waker;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub(crate) struct Bell {
    waker: OnceLock<Waker>,
    listening: AtomicBool,
    /// Rung and not yet answered: further rings need no system call.
    rung: AtomicBool,
}

impl Bell {
    /// Makes rings wake `waker`'s poller. Only the first call takes effect.
    pub(crate) fn attach(&self, waker: Waker) {
        let _ = self.waker.set(waker);
    }

    /// Whether rings wake the listener. A listener that starts listening looks at what it
    /// watches afterwards, so nothing rung before is missed.
    pub(crate) fn listen(&self, yes: bool) {
        self.listening.store(yes, Ordering::SeqCst);
    }

    /// Wakes the listener, if one listens and has answered the last ring.
    pub(crate) fn ring(&self) {
        if self.listening.load(Ordering::SeqCst)
            && !self.rung.swap(true, Ordering::SeqCst)
            && let Some(waker) = self.waker.get()
        {
            waker.wake();
        }
    }

    /// Takes the ring: the next one wakes the listener again.
    pub(crate) fn answer(&self) {
        self.rung.store(false, Ordering::SeqCst);
    }
}
