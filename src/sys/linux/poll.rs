//! [`Poller`]: the supervision thread's one wait (epoll over pidfds, sockets and a waker,
//! with a deadline), and [`DirWatch`], an inotify watch on the state directory.

use rustix::event::epoll;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

/// One wait over many fds and a waker, with a timeout: the supervision thread's only block.
pub(crate) struct Poller {
    registry: Rc<Registry>,
    waker: OwnedFd,
    events: Vec<epoll::Event>,
}

/// Adds fds to a [`Poller`]'s set and removes them, under a token each: the poller's own,
/// or another handle on the same set ([`Poller::registry`]) for a part of the supervision
/// thread that watches fds of its own.
pub(crate) struct Registry {
    epoll: OwnedFd,
}

impl Registry {
    /// Watches `fd` for reading (level-triggered); its readiness is reported as `token`.
    pub(crate) fn add(&self, fd: &impl AsFd, token: u64) -> io::Result<()> {
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )?;
        Ok(())
    }

    /// Watches `fd` for priority events (`EPOLLPRI`, level-triggered): how a cgroup's
    /// `cgroup.events` says it changed, until it is read again.
    pub(crate) fn add_priority(&self, fd: &impl AsFd, token: u64) -> io::Result<()> {
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::PRI,
        )?;
        Ok(())
    }

    /// Stops watching `fd`.
    pub(crate) fn remove(&self, fd: &impl AsFd) {
        // An fd that is about to be closed leaves the set anyway; ignore ENOENT.
        let _ = epoll::delete(&self.epoll, fd);
    }
}

/// The token reported when the waker fired.
pub(crate) const WAKER_TOKEN: u64 = u64::MAX;

impl Poller {
    /// A poller that reports at most `max_events` ready fds per [`wait`](Poller::wait). Every
    /// fd is level-triggered, and epoll moves the fds it reported to the back of its ready
    /// list, so the ones left out are reported by the next waits, in turn.
    pub(crate) fn new(max_events: usize) -> io::Result<Poller> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let waker = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        epoll::add(
            &epoll,
            &waker,
            epoll::EventData::new_u64(WAKER_TOKEN),
            epoll::EventFlags::IN,
        )?;
        Ok(Poller {
            registry: Rc::new(Registry { epoll }),
            waker,
            events: Vec::with_capacity(max_events.max(1)),
        })
    }

    /// Another handle on this poller's set of fds, for the parts of the supervision thread
    /// that watch fds of their own.
    pub(crate) fn registry(&self) -> Rc<Registry> {
        self.registry.clone()
    }

    /// A handle other threads use to wake the wait.
    pub(crate) fn waker(&self) -> io::Result<Waker> {
        Ok(Waker(self.waker.try_clone()?))
    }

    /// Watches `fd` for reading; see [`Registry::add`].
    pub(crate) fn add(&self, fd: &impl AsFd, token: u64) -> io::Result<()> {
        self.registry.add(fd, token)
    }

    /// Adds a connected stream, edge-triggered: reported once each time it becomes readable,
    /// writable, or closed by its peer. Its owner reads and writes until `WouldBlock`.
    pub(crate) fn add_stream(&self, fd: &impl AsFd, token: u64) -> io::Result<()> {
        use epoll::EventFlags as F;
        epoll::add(
            &self.registry.epoll,
            fd,
            epoll::EventData::new_u64(token),
            F::IN | F::OUT | F::RDHUP | F::ET,
        )?;
        Ok(())
    }

    /// Stops watching `fd`.
    pub(crate) fn remove(&self, fd: &impl AsFd) {
        self.registry.remove(fd)
    }

    /// Waits until an fd is ready, the waker fires, or `timeout` passes (`None`: no timeout),
    /// and appends the ready tokens to `ready`.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<u64>,
    ) -> io::Result<()> {
        let ts = timeout.map(|d| {
            let d = d.min(Duration::from_secs(24 * 3600));
            rustix::event::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()),
            }
        });
        self.events.clear();
        match epoll::wait(
            &self.registry.epoll,
            rustix::buffer::spare_capacity(&mut self.events),
            ts.as_ref(),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        for ev in &self.events {
            let token = ev.data.u64();
            if token == WAKER_TOKEN {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&self.waker, &mut buf);
            }
            ready.push(token);
        }
        Ok(())
    }
}

/// Wakes a [`Poller`] from another thread.
pub(crate) struct Waker(OwnedFd);

impl Waker {
    /// Another handle on the same poller.
    pub(crate) fn try_clone(&self) -> io::Result<Waker> {
        Ok(Waker(self.0.try_clone()?))
    }

    pub(crate) fn wake(&self) {
        // EAGAIN means the counter is already non-zero: the poller will wake anyway.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }
}

/// Notices a directory, or files in it, being deleted, renamed or replaced (inotify): the
/// state directory, under a running supervisor. Its fd is pollable; [`DirWatch::drain`]
/// empties it.
pub(crate) struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    /// Watches the directory behind `dir` (found through `/proc/self/fd`, so the very
    /// directory opened, whatever is at its path now).
    pub(crate) fn new(dir: &impl AsFd) -> io::Result<DirWatch> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let path = format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd());
        inotify::add_watch(
            &fd,
            path,
            WatchFlags::DELETE_SELF
                | WatchFlags::MOVE_SELF
                | WatchFlags::DELETE
                | WatchFlags::MOVED_FROM
                | WatchFlags::MOVED_TO
                | WatchFlags::ONLYDIR,
        )?;
        Ok(DirWatch { fd })
    }

    /// Reads every pending event; returns whether there was any.
    pub(crate) fn drain(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        while let Ok(n) = rustix::io::read(&self.fd, &mut buf) {
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }
}

impl AsFd for DirWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
