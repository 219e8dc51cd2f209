//! Linux: pidfd for exit notification and signalling, epoll for waiting, prctl for PDEATHSIG.

use crate::spec::Signal;
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use rustix::event::epoll;
use rustix::process::{Pid, PidfdFlags, WaitIdOptions};

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawExit {
    Code(i32),
    Signal(i32),
    /// Someone else reaped the child and the kernel could not tell us how it ended.
    Unknown,
}

fn raw_signal(signal: Signal) -> i32 {
    match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Int => libc::SIGINT,
        Signal::Quit => libc::SIGQUIT,
        Signal::Hup => libc::SIGHUP,
        Signal::Kill => libc::SIGKILL,
        Signal::Usr1 => libc::SIGUSR1,
        Signal::Usr2 => libc::SIGUSR2,
    }
}

/// Spawns `command` as the leader of a new process group, with a clean child side:
/// - every signal disposition reset to the default (std resets only the mask and SIGPIPE, so a
///   host that ignores SIGTERM would otherwise make every service ignore it);
/// - every fd above 2 marked close-on-exec (the host may hold fds without O_CLOEXEC, or have
///   inherited some; closing them outright would break std's exec-error pipe);
/// - `PR_SET_PDEATHSIG(SIGKILL)`, so the child dies with the spawning thread. Call this only
///   from the long-lived supervision thread.
///
/// Returns the child and a pidfd for it, opened before anyone could reap it.
pub(crate) fn spawn(command: &mut Command) -> io::Result<(Child, OwnedFd)> {
    let parent = rustix::process::getpid();
    command.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (sigaction via `signal`, raw syscalls, `_exit`); it allocates
    // nothing and touches no lock.
    unsafe {
        command.pre_exec(move || {
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            // Ignore failure: kernels before 5.11 lack CLOSE_RANGE_CLOEXEC; the child then
            // keeps what the host leaked, as with std alone.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The host may have died between fork and prctl: then nobody will send the signal.
            if libc::getppid() != parent.as_raw_nonzero().get() {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = Pid::from_raw(child.id() as i32).expect("a spawned child has a positive pid");
    // The child is ours and not yet reaped, so its pid cannot have been reused.
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(io::Error::from)?;
    Ok((child, pidfd))
}

/// Opens a pidfd for a process we did not spawn (a leftover of a previous host).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        Pid::from_raw(pid as i32).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(io::Error::from)
}

/// Reaps the child behind `pidfd` if it has exited; `Ok(None)` if it is still running.
///
/// If the host auto-reaps children (`SIGCHLD` ignored) or another thread reaped this one with
/// `waitpid(-1)`, `waitid` fails with ECHILD; the exit status then comes from the pidfd itself
/// (`PIDFD_GET_INFO`, Linux 6.15+), or is `Unknown` on older kernels.
pub(crate) fn reap(pidfd: &OwnedFd) -> io::Result<Option<RawExit>> {
    match rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        Ok(Some(status)) => {
            if let Some(code) = status.exit_status() {
                Ok(Some(RawExit::Code(code)))
            } else if let Some(sig) = status.terminating_signal() {
                Ok(Some(RawExit::Signal(sig)))
            } else {
                // NOHANG with nothing to report fills a zeroed siginfo.
                Ok(None)
            }
        }
        Ok(None) => Ok(None),
        Err(rustix::io::Errno::CHILD) => Ok(Some(exit_from_pidfd_info(pidfd))),
        Err(e) => Err(e.into()),
    }
}

fn exit_from_pidfd_info(pidfd: &OwnedFd) -> RawExit {
    // SAFETY: `pidfd_info` is plain old data, valid when zeroed; the ioctl writes at most
    // `size_of::<pidfd_info>()` bytes into it and reads the mask we set.
    unsafe {
        let mut info: libc::pidfd_info = std::mem::zeroed();
        info.mask = libc::PIDFD_INFO_EXIT as u64;
        if libc::ioctl(pidfd.as_raw_fd(), libc::PIDFD_GET_INFO, &mut info) != 0
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

fn pidfd_send_signal_raw(pidfd: &OwnedFd, sig: i32, flags: libc::c_uint) -> io::Result<()> {
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

/// Sends `signal` to the process group led by the process behind `pidfd` (whose pid is `pgid`).
///
/// Goes through the pidfd (`PIDFD_SIGNAL_PROCESS_GROUP`, Linux 6.9+), so a reused pid can never
/// be hit; the pidfd keeps the group's pid allocated while we hold it. Older kernels fall back
/// to `killpg`, which is safe while the leader is unreaped or any member is alive.
pub(crate) fn signal_group(pidfd: &OwnedFd, pgid: u32, signal: Signal) -> io::Result<()> {
    signal_group_raw(pidfd, pgid, raw_signal(signal))
}

fn signal_group_raw(pidfd: &OwnedFd, pgid: u32, sig: i32) -> io::Result<()> {
    match pidfd_send_signal_raw(pidfd, sig, libc::PIDFD_SIGNAL_PROCESS_GROUP) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // SAFETY: kill(2) with a negative pid signals that group; no memory is involved.
            let rc = unsafe { libc::kill(-(pgid as i32), sig) };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        other => other,
    }
}

/// Whether any process (a zombie included) is still in the group; cheap, one syscall.
pub(crate) fn group_has_members(pidfd: &OwnedFd, pgid: u32) -> bool {
    !matches!(signal_group_raw(pidfd, pgid, 0), Err(e) if e.raw_os_error() == Some(libc::ESRCH))
}

/// Sends `signal` to a process group by number. Only for leftovers of a previous host whose
/// leader is gone, after checking their identity.
pub(crate) fn kill_pgid(pgid: u32, signal: Signal) -> io::Result<()> {
    let pid =
        Pid::from_raw(pgid as i32).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let sig = rustix::process::Signal::from_named_raw(raw_signal(signal)).expect("a named signal");
    rustix::process::kill_process_group(pid, sig).map_err(io::Error::from)
}

/// One line of `/proc/<pid>/stat`, the fields we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) pid: u32,
    pub(crate) state: u8,
    pub(crate) ppid: u32,
    pub(crate) pgrp: u32,
    /// Clock ticks since boot at which the process started.
    pub(crate) start_time: u64,
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // `comm` is in parentheses and may itself hold spaces and ')'; the last ')' ends it.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); starttime is field 22.
    Some(ProcStat {
        pid,
        state: *rest.first()?.as_bytes().first()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        start_time: rest.get(19)?.parse().ok()?,
    })
}

/// Reads `/proc/<pid>/stat`, or `None` if there is no such process.
pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Every live (not zombie) process on the machine, from one pass over `/proc`.
pub(crate) fn all_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(stat) = proc_stat(pid) {
            if stat.state != b'Z' && stat.state != b'X' {
                out.push(stat);
            }
        }
    }
    out
}

/// The process groups in `wanted` that still have a live (not zombie) member.
pub(crate) fn live_groups(wanted: &HashSet<u32>) -> HashSet<u32> {
    all_processes()
        .into_iter()
        .filter(|p| wanted.contains(&p.pgrp))
        .map(|p| p.pgrp)
        .collect()
}

/// This boot's id, so identities stored by a previous boot are never matched.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Raises the soft limit on open files to the hard limit, and returns the new soft limit.
pub(crate) fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (limit.current, limit.maximum) {
        if cur < max {
            limit.current = Some(max);
            if setrlimit(Resource::Nofile, limit).is_ok() {
                return max;
            }
        }
        return cur;
    }
    limit.current.unwrap_or(u64::MAX)
}

/// One wait over many fds and a waker, with a timeout: the supervision thread's only block.
pub(crate) struct Poller {
    epoll: OwnedFd,
    waker: OwnedFd,
    events: Vec<epoll::Event>,
}

/// The token reported when the waker fired.
pub(crate) const WAKER_TOKEN: u64 = u64::MAX;

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
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
            epoll,
            waker,
            events: Vec::with_capacity(256),
        })
    }

    /// A handle other threads use to wake the wait.
    pub(crate) fn waker(&self) -> io::Result<Waker> {
        Ok(Waker(self.waker.try_clone()?))
    }

    pub(crate) fn add(&self, fd: &OwnedFd, token: u64) -> io::Result<()> {
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )?;
        Ok(())
    }

    pub(crate) fn remove(&self, fd: &OwnedFd) {
        // An fd that is about to be closed leaves the set anyway; ignore ENOENT.
        let _ = epoll::delete(&self.epoll, fd);
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
            &self.epoll,
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
    pub(crate) fn wake(&self) {
        // EAGAIN means the counter is already non-zero: the poller will wake anyway.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line =
            "4242 (a) b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            (s.pid, s.state, s.ppid, s.pgrp, s.start_time),
            (4242, b'S', 1, 4242, 987654)
        );
    }

    #[test]
    fn own_stat_is_readable() {
        let me = std::process::id();
        let s = proc_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.start_time > 0);
    }
}
