//! This process: its uid, its limits, its randomness, and becoming a child subreaper.

use std::io;

/// Makes this process a child subreaper: descendants orphaned by their parent's exit are
/// re-parented to it instead of to init.
pub(crate) fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(io::Error::from)
}

/// Fills `buf` with random bytes from the kernel's generator (`getrandom(2)`), for secrets.
/// Blocks only before the generator is first seeded, early in boot.
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The real uid of this process.
pub(crate) fn real_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Raises the soft limit on open files to the hard limit, and returns the new soft limit.
pub(crate) fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
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

/// The effective uid of this process: the owner a state directory must have.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether a process with this pid exists (signal 0: nothing is sent). A pid the kernel has
/// handed out to a fork that is not through yet does not exist here, as in /proc.
pub(crate) fn pid_exists(pid: u32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}
