//! [`WallTimer`]: a timer on the wall clock (`CLOCK_REALTIME`, absolute), polled in the
//! supervision thread's epoll, for schedules: unlike the loop's own deadlines (on the
//! monotonic clock, which stops while the machine sleeps), it fires at the wall-clock time
//! after a suspend, and it tells when the clock was set.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a read of the timer found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fired {
    /// Its time came.
    Expired,
    /// The wall clock was set (by hand, NTP stepping it, a resume): the timer is cancelled,
    /// and every time computed from the old clock should be computed again.
    ClockSet,
    /// Nothing (a spurious wake).
    Nothing,
}

/// A `timerfd` on `CLOCK_REALTIME`, non-blocking, close-on-exec.
pub(crate) struct WallTimer {
    fd: OwnedFd,
}

impl WallTimer {
    pub(crate) fn new() -> io::Result<WallTimer> {
        use rustix::time::{TimerfdClockId, TimerfdFlags};
        let fd = rustix::time::timerfd_create(
            TimerfdClockId::Realtime,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        Ok(WallTimer { fd })
    }

    /// Fires once at `at` (at once if it passed), or never (`None`). A change of the wall
    /// clock cancels it (`Fired::ClockSet`).
    pub(crate) fn set(&self, at: Option<SystemTime>) -> io::Result<()> {
        use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec};
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = match at {
            None => zero,
            Some(at) => {
                // 0 would disarm it: a time at or before the epoch fires one nanosecond in.
                let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
                Timespec {
                    tv_sec: d.as_secs() as i64,
                    tv_nsec: i64::from(d.subsec_nanos().max(u32::from(d.as_secs() == 0))),
                }
            }
        };
        rustix::time::timerfd_settime(
            &self.fd,
            TimerfdTimerFlags::ABSTIME | TimerfdTimerFlags::CANCEL_ON_SET,
            &Itimerspec {
                it_interval: zero,
                it_value: value,
            },
        )?;
        Ok(())
    }

    /// Reads what happened; the fd is not readable again until the timer is set again.
    pub(crate) fn read(&self) -> Fired {
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(8) => Fired::Expired,
            Err(rustix::io::Errno::CANCELED) => Fired::ClockSet,
            _ => Fired::Nothing,
        }
    }
}

impl AsFd for WallTimer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_in_the_past_fires_at_once_and_an_unset_timer_never() {
        let t = WallTimer::new().unwrap();
        assert_eq!(t.read(), Fired::Nothing, "never set");
        t.set(Some(SystemTime::now() - std::time::Duration::from_secs(1)))
            .unwrap();
        assert_eq!(t.read(), Fired::Expired);
        t.set(Some(
            SystemTime::now() + std::time::Duration::from_secs(3600),
        ))
        .unwrap();
        t.set(None).unwrap();
        assert_eq!(t.read(), Fired::Nothing, "disarmed");
    }
}
