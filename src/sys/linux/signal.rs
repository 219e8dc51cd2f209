//! Signal numbers, and the handlers a foreground host can install for termination signals.

use crate::signal::Signal;
use libc::c_int;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// The number of `signal` on this platform.
pub(crate) fn raw_signal(signal: Signal) -> i32 {
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

/// The write end of the pipe the termination-signal handler writes to; -1 until installed.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_termination_signal(sig: c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe drops the byte, which is fine
        // (the reader only needs to wake). errno is saved and restored around it.
        unsafe {
            let saved = *libc::__errno_location();
            libc::write(fd, (&byte as *const u8).cast(), 1);
            *libc::__errno_location() = saved;
        }
    }
}

/// Installs handlers for `signals` that write the signal number into a pipe, and returns its
/// read end (non-blocking). Process-wide: only for hosts that ask for it.
pub(crate) fn install_termination_handlers(signals: &[i32]) -> io::Result<OwnedFd> {
    let (read, write) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    let old = SIGNAL_PIPE.swap(write.as_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    std::mem::forget(write); // lives as long as the handlers may run: the process
    if old >= 0 {
        // SAFETY: the previous write end was leaked above by an earlier call; nothing else
        // owns it.
        drop(unsafe { OwnedFd::from_raw_fd(old) });
    }
    for &sig in signals {
        // SAFETY: the handler only calls async-signal-safe functions; the sigaction struct is
        // fully initialised (zeroed mask, SA_RESTART).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_termination_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(read)
}

/// Waits up to `timeout` for a byte on the signal pipe; returns the signal numbers read.
pub(crate) fn wait_termination(pipe: &OwnedFd, timeout: Option<Duration>) -> io::Result<Vec<i32>> {
    use rustix::event::{PollFd, PollFlags, poll};
    let ts = timeout.map(|d| rustix::event::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    let mut fds = [PollFd::new(pipe, PollFlags::IN)];
    match poll(&mut fds, ts.as_ref()) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    let mut buf = [0u8; 64];
    let mut out = Vec::new();
    loop {
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend(buf[..n].iter().map(|b| i32::from(*b))),
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

pub(crate) fn signal_number(signal: Signal) -> i32 {
    raw_signal(signal)
}

pub(crate) fn signal_from_number(sig: i32) -> Option<Signal> {
    [
        Signal::Term,
        Signal::Int,
        Signal::Quit,
        Signal::Hup,
        Signal::Kill,
        Signal::Usr1,
        Signal::Usr2,
    ]
    .into_iter()
    .find(|s| raw_signal(*s) == sig)
}
