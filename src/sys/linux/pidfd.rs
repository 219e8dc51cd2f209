//! [`PidFd`]: a process held by a pidfd. Signals through it never reach a process that
//! reused the pid, and reaping through it (`waitid(P_PIDFD)`) takes that child only, never
//! the host's own: this is the only code that reaps.

use super::signal::raw_signal;
use crate::signal::Signal;
use rustix::process::{Pid, PidfdFlags, WaitIdOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawExit {
    Code(i32),
    Signal(i32),
    /// Someone else reaped the child and the kernel could not tell us how it ended.
    Unknown,
}

/// CPU time the kernel counted for a reaped child (`waitid`'s rusage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rusage {
    pub(crate) user: Duration,
    pub(crate) system: Duration,
}

/// A child collected by [`PidFd::reap`]: how it ended, and what it used when the kernel
/// could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reaped {
    pub(crate) exit: RawExit,
    pub(crate) usage: Option<Rusage>,
}

/// A process and the pidfd that names it for as long as we hold it.
#[derive(Debug)]
pub(crate) struct PidFd {
    fd: OwnedFd,
    pid: u32,
}

impl PidFd {
    /// Wraps a pidfd the kernel handed us for process `pid` (`CLONE_PIDFD`, `SCM_PIDFD`).
    pub(super) fn from_child(fd: OwnedFd, pid: u32) -> PidFd {
        super::orphans::hold(&mut super::orphans::held(), pid);
        PidFd { fd, pid }
    }

    /// As [`from_child`](PidFd::from_child), for a pid the caller already marked held (under
    /// the spawn gate it took before the `clone`).
    pub(super) fn from_held(fd: OwnedFd, pid: u32) -> PidFd {
        PidFd { fd, pid }
    }

    /// Opens a pidfd for a running process we did not just spawn (a leftover of a previous
    /// host, an escaped descendant, an orphan re-parented to a subreaper host). The pid may
    /// name another process by now: callers check what it is through the pidfd afterwards.
    pub(crate) fn open(pid: u32) -> io::Result<PidFd> {
        let raw = Pid::from_raw(pid as i32)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = rustix::process::pidfd_open(raw, PidfdFlags::empty())?;
        Ok(PidFd::from_child(fd, pid))
    }

    /// The process's pid (for a group leader, also its process group's id).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The inode of the pidfd on pidfs (Linux 6.9+), unique to its process for the life of
    /// the boot: with the boot id it names a process even after its pid is reused. `None` on
    /// older kernels, where every pidfd shares one anonymous inode.
    pub(crate) fn inode(&self) -> Option<u64> {
        const PIDFS_MAGIC: i64 = 0x5049_4446;
        let fs = rustix::fs::fstatfs(&self.fd).ok()?;
        if fs.f_type as i64 != PIDFS_MAGIC {
            return None;
        }
        rustix::fs::fstat(&self.fd).ok().map(|st| st.st_ino)
    }

    /// The id of the cgroup v2 the process is (or, once exited, was) in (`PIDFD_GET_INFO`,
    /// Linux 6.13+; after the process was reaped, 6.15+). The same number as the inode of
    /// the cgroup's directory ([`inode_of`](super::inode_of)).
    pub(crate) fn cgroup_id(&self) -> Option<u64> {
        // SAFETY: `pidfd_info` is plain old data, valid when zeroed; the ioctl writes at most
        // `size_of::<pidfd_info>()` bytes into it and reads the mask we set.
        unsafe {
            let mut info: libc::pidfd_info = std::mem::zeroed();
            // Asking for the exit too: for a reaped process the kernel answers only then (with
            // the cgroup it was in when it exited).
            info.mask = (libc::PIDFD_INFO_CGROUPID | libc::PIDFD_INFO_EXIT) as u64;
            if libc::ioctl(self.fd.as_raw_fd(), libc::PIDFD_GET_INFO, &mut info) != 0
                || info.mask & libc::PIDFD_INFO_CGROUPID as u64 == 0
            {
                return None;
            }
            Some(info.cgroupid)
        }
    }

    /// Whether the process has not been reaped yet (a zombie counts).
    pub(crate) fn is_alive(&self) -> bool {
        send_signal(&self.fd, 0, 0).is_ok()
    }

    /// Sends `signal` to this one process.
    pub(crate) fn signal(&self, signal: Signal) -> io::Result<()> {
        send_signal(&self.fd, raw_signal(signal), 0)
    }

    /// Sends `signal` to the process group this process leads (whose id is its pid).
    ///
    /// Goes through the pidfd (`PIDFD_SIGNAL_PROCESS_GROUP`, Linux 6.9+), so a reused pid can
    /// never be hit; the pidfd keeps the group's pid allocated while we hold it. Older
    /// kernels fall back to `killpg`, which is safe while the leader is unreaped or any
    /// member is alive.
    pub(crate) fn signal_group(&self, signal: Signal) -> io::Result<()> {
        self.signal_group_raw(raw_signal(signal))
    }

    fn signal_group_raw(&self, sig: i32) -> io::Result<()> {
        match send_signal(&self.fd, sig, libc::PIDFD_SIGNAL_PROCESS_GROUP) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // SAFETY: kill(2) with a negative pid signals that group; no memory is involved.
                let rc = unsafe { libc::kill(-(self.pid as i32), sig) };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }
            other => other,
        }
    }

    /// Whether any process (a zombie included) is still in the group it leads; one syscall.
    pub(crate) fn group_has_members(&self) -> bool {
        !matches!(self.signal_group_raw(0), Err(e) if e.raw_os_error() == Some(libc::ESRCH))
    }

    /// Reaps the child if it has exited; `Ok(None)` if it is still running. The usage comes
    /// from the same `waitid` (its rusage argument, which the libc wrapper hides).
    ///
    /// If the host auto-reaps children (`SIGCHLD` ignored) or another thread reaped this one
    /// with `waitpid(-1)`, `waitid` fails with ECHILD; the exit status then comes from the
    /// pidfd itself (`PIDFD_GET_INFO`, Linux 6.15+), or is `Unknown` on older kernels, and
    /// there is no usage.
    pub(crate) fn reap(&self) -> io::Result<Option<Reaped>> {
        // SAFETY: `siginfo_t` and `rusage` are plain old data, valid when zeroed; the kernel
        // writes at most their sizes into them; the pidfd is ours and open.
        let (rc, info, usage) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let mut usage: libc::rusage = std::mem::zeroed();
            let rc = libc::syscall(
                libc::SYS_waitid,
                libc::P_PIDFD,
                self.fd.as_raw_fd(),
                &mut info as *mut libc::siginfo_t,
                libc::WEXITED | libc::WNOHANG,
                &mut usage as *mut libc::rusage,
            );
            (rc, info, usage)
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ECHILD) => Ok(Some(Reaped {
                    exit: self.exit_from_info(),
                    usage: None,
                })),
                Some(libc::EINTR) => self.reap(),
                _ => Err(e),
            };
        }
        // SAFETY: after a successful waitid the pid and status fields are initialised (zero
        // pid when WNOHANG found nothing to report).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let exit = match info.si_code {
            libc::CLD_EXITED => RawExit::Code(status),
            libc::CLD_KILLED | libc::CLD_DUMPED => RawExit::Signal(status),
            _ => RawExit::Unknown,
        };
        let usage = Rusage {
            user: timeval(usage.ru_utime),
            system: timeval(usage.ru_stime),
        };
        Ok(Some(Reaped {
            exit,
            usage: Some(usage),
        }))
    }

    fn exit_from_info(&self) -> RawExit {
        // SAFETY: `pidfd_info` is plain old data, valid when zeroed; the ioctl writes at most
        // `size_of::<pidfd_info>()` bytes into it and reads the mask we set.
        unsafe {
            let mut info: libc::pidfd_info = std::mem::zeroed();
            info.mask = libc::PIDFD_INFO_EXIT as u64;
            if libc::ioctl(self.fd.as_raw_fd(), libc::PIDFD_GET_INFO, &mut info) != 0
                || info.mask & libc::PIDFD_INFO_EXIT as u64 == 0
            {
                return RawExit::Unknown;
            }
            let status = info.exit_code;
            if libc::WIFEXITED(status) {
                RawExit::Code(libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                RawExit::Signal(libc::WTERMSIG(status))
            } else {
                RawExit::Unknown
            }
        }
    }

    /// Waits up to `timeout` for the process to exit (without reaping it); returns whether it
    /// did.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> io::Result<bool> {
        use rustix::event::{PollFd, PollFlags, poll};
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ts = rustix::event::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

fn send_signal(pidfd: &OwnedFd, sig: i32, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: a plain syscall on an fd we own; the siginfo pointer is null, which the kernel
    // accepts and fills in itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `signal` to one process by pid: only for members of a service's cgroup that left its
/// process group, read from `cgroup.procs` just before (a cgroup holds a pid for as long as
/// its process is in it, reaped or not).
pub(crate) fn signal_pid(pid: u32, signal: Signal) -> io::Result<()> {
    let pid =
        Pid::from_raw(pid as i32).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let sig = rustix::process::Signal::from_named_raw(raw_signal(signal)).expect("a named signal");
    rustix::process::kill_process(pid, sig).map_err(io::Error::from)
}

impl Drop for PidFd {
    /// Lets go of the pid: an orphan reaper may reap it from now on (see `orphans.rs`).
    fn drop(&mut self) {
        super::orphans::release(self.pid);
    }
}

/// Sends `signal` to a process group by number. Only for leftovers of a previous host whose
/// leader is gone, after checking their identity.
pub(crate) fn signal_pgid(pgid: u32, signal: Signal) -> io::Result<()> {
    let pid =
        Pid::from_raw(pgid as i32).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let sig = rustix::process::Signal::from_named_raw(raw_signal(signal)).expect("a named signal");
    rustix::process::kill_process_group(pid, sig).map_err(io::Error::from)
}

/// Reaps the exited children of this process that are in process group `pgid` (a subreaper
/// host inherits the orphans of a group it killed); never any other child.
pub(crate) fn reap_group(pgid: u32) {
    let Some(pgid) = Pid::from_raw(pgid as i32) else {
        return;
    };
    while let Ok(Some(_)) = rustix::process::waitid(
        rustix::process::WaitId::Pgid(Some(pgid)),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {}
}

/// Whether an error from a signal means the process (or group) is already gone.
pub(crate) fn is_gone(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ESRCH)
}
