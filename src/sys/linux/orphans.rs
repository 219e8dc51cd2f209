//! Reaping orphans: the exited children of this process that the crate did not spawn, for a
//! host that is PID 1 of its pid namespace (every orphan of the namespace comes to it) or a
//! child subreaper.
//!
//! How this keeps its hands off children that are not orphans:
//! - every process the crate holds a [`PidFd`](super::PidFd) for (each service's main
//!   process, each probe, the guardian, a tracked escapee) is *held*: its pid is in a table
//!   from before the `clone` that made it (the table's lock is taken across the `clone`) until
//!   the `PidFd` is dropped, after its own reap. A pass never reaps a held pid, so the engine
//!   and the probe workers still collect their children's statuses through their pidfds;
//! - with [`OrphanReaper::new`]'s `spare_group`, a zombie in that process group (the host's
//!   own, where `std::process::Command` leaves the children it spawns) is left for the host's
//!   `Child::wait`. A group outside the pid namespace shows as 0: a host whose own group is
//!   outside spares every child whose group is outside too, since they cannot be told apart.
//!
//! The gate and the table's lock are held through a whole pass, so no pid becomes held
//! between the check and the reap; a zombie's pid cannot be reused before it is reaped. A
//! pass waits for the spawns in flight to reach their `execve` (the gate is fair to it: a
//! waiting pass holds back the spawns that come after it).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};

/// The held pids, with how many `PidFd`s hold each.
static HELD: Mutex<BTreeMap<u32, u32>> = Mutex::new(BTreeMap::new());

/// Shared by the spawns between their `clone` and the marking of their pid held; taken
/// exclusively by a reaper's pass. (std's lock on Linux makes new readers wait behind a
/// waiting writer, so spawns on two threads cannot keep a pass out.)
static SPAWNING: RwLock<()> = RwLock::new(());

/// The spawn gate, shared: held from before a `clone` until its pid is marked held.
pub(super) fn spawning() -> RwLockReadGuard<'static, ()> {
    SPAWNING
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The lock on the held pids; a panic elsewhere while it was held leaves a table still valid.
pub(super) fn held() -> MutexGuard<'static, BTreeMap<u32, u32>> {
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Marks `pid` held (one more holder).
pub(super) fn hold(table: &mut BTreeMap<u32, u32>, pid: u32) {
    *table.entry(pid).or_insert(0) += 1;
}

/// One holder of `pid` let go.
pub(super) fn release(pid: u32) {
    let mut table = held();
    if let Some(n) = table.get_mut(&pid) {
        *n -= 1;
        if *n == 0 {
            table.remove(&pid);
        }
    }
}

/// The write end of the pipe the SIGCHLD handler writes to.
static CHILD_PIPE: AtomicI32 = AtomicI32::new(-1);
/// The handler that was installed for SIGCHLD before ours (0: none), called after ours.
static PREVIOUS: AtomicUsize = AtomicUsize::new(0);
/// Whether the previous handler takes three arguments (`SA_SIGINFO`).
static PREVIOUS_SIGINFO: AtomicUsize = AtomicUsize::new(0);
/// The read end, made with the handler once per process.
static READ_END: OnceLock<Option<OwnedFd>> = OnceLock::new();

extern "C" fn on_sigchld(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let fd = CHILD_PIPE.load(Ordering::Relaxed);
    // SAFETY: write(2) is async-signal-safe; a full pipe drops the byte, which is fine (the
    // reader only needs to wake). errno is saved and restored around everything.
    unsafe {
        let saved = *libc::__errno_location();
        if fd >= 0 {
            let byte = 1u8;
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
        let previous = PREVIOUS.load(Ordering::Relaxed);
        if previous != 0 {
            if PREVIOUS_SIGINFO.load(Ordering::Relaxed) != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(previous);
                f(sig, info, ctx);
            } else {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(previous);
                f(sig);
            }
        }
        *libc::__errno_location() = saved;
    }
}

/// Installs the SIGCHLD handler (once per process) and returns the pipe it writes to, or
/// `None` where the host ignores SIGCHLD: the kernel then reaps every child itself and no
/// zombie is ever left.
fn child_pipe() -> io::Result<Option<BorrowedFd<'static>>> {
    let made = READ_END.get_or_init(|| match install() {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("cannot watch for orphans (SIGCHLD handler): {e}");
            None
        }
    });
    match made {
        Some(fd) => {
            // SAFETY: the fd lives in a static that is never dropped.
            Ok(Some(unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }))
        }
        None if ignores_sigchld() => Ok(None),
        None => Err(io::Error::other("no SIGCHLD handler")),
    }
}

fn ignores_sigchld() -> bool {
    // SAFETY: a null new action only reads the current one into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

fn install() -> io::Result<Option<OwnedFd>> {
    if ignores_sigchld() {
        return Ok(None);
    }
    let (read, write) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    CHILD_PIPE.store(write.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(write); // lives as long as the handler may run: the process
    // SAFETY: the handler only calls async-signal-safe functions (and the host's previous
    // handler, as the kernel would have); both sigaction structs are fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        let mut old: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigchld as *const () as usize;
        action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO | libc::SA_NOCLDSTOP;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
        if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
            PREVIOUS_SIGINFO.store(
                usize::from(old.sa_flags & libc::SA_SIGINFO != 0),
                Ordering::SeqCst,
            );
            PREVIOUS.store(old.sa_sigaction, Ordering::SeqCst);
        }
        if libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(Some(read))
}

/// Whether this process is PID 1 of its pid namespace.
pub(crate) fn is_pid_one() -> bool {
    rustix::process::getpid().as_raw_nonzero().get() == 1
}

/// The process group of this process; 0 when it lies outside this pid namespace (a runner
/// started by `unshare --pid --fork` from a shell keeps the shell's group).
pub(crate) fn own_process_group() -> u32 {
    // SAFETY: getpgrp has no arguments and cannot fail. (Not rustix's: it asserts a group
    // inside the namespace.)
    unsafe { libc::getpgrp() }.max(0) as u32
}

/// The process group of `pid` (0 when it lies outside this pid namespace), if it exists.
fn process_group_of(pid: u32) -> Option<u32> {
    // SAFETY: getpgid only reads the kernel's table; -1 means no such process.
    let pgid = unsafe { libc::getpgid(pid as libc::pid_t) };
    (pgid >= 0).then_some(pgid as u32)
}

/// Reaps orphans when SIGCHLD says a child exited: see the module's doc.
#[derive(Debug)]
pub(crate) struct OrphanReaper {
    wake: Option<BorrowedFd<'static>>,
    spare_group: Option<u32>,
}

impl OrphanReaper {
    /// A reaper of every exited child that is not held, and not in `spare_group` if given;
    /// makes this process a child subreaper unless it is PID 1 (the namespace's reaper).
    ///
    /// # Errors
    ///
    /// If the subreaper flag or the SIGCHLD handler cannot be set.
    pub(crate) fn new(spare_group: Option<u32>) -> io::Result<OrphanReaper> {
        if !is_pid_one() {
            super::become_subreaper()?;
        }
        Ok(OrphanReaper {
            wake: child_pipe()?,
            spare_group,
        })
    }

    /// The fd that is readable when a child may have exited (`None`: the kernel reaps).
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'static>> {
        self.wake
    }

    /// Empties the wake-up pipe, then reaps every exited orphan; returns how many. Bounded
    /// by the number of the host's children: `waitid` with `WNOHANG` never blocks.
    pub(crate) fn reap(&self) -> usize {
        if let Some(fd) = self.wake {
            let mut buf = [0u8; 256];
            while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
        }
        let _gate = SPAWNING
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let table = held();
        let spared = |pid: u32| {
            table.contains_key(&pid)
                || self
                    .spare_group
                    .is_some_and(|g| process_group_of(pid) == Some(g))
        };
        let mut reaped = 0;
        // The kernel names the first exited child; while it is an orphan, reap it and ask
        // again. Once it names one that is spared, look at the others through /proc.
        while let Some(pid) = first_exited() {
            if spared(pid) {
                for pid in super::own_children() {
                    let zombie = super::proc_stat(pid).is_some_and(|s| s.state == b'Z');
                    if zombie && !spared(pid) && reap_pid(pid) {
                        reaped += 1;
                    }
                }
                break;
            }
            if !reap_pid(pid) {
                break;
            }
            reaped += 1;
        }
        reaped
    }
}

/// The pid of an exited child, left unreaped (`WNOWAIT`), if there is one.
fn first_exited() -> Option<u32> {
    // SAFETY: `siginfo_t` is plain old data, valid when zeroed; the kernel writes at most its
    // size; after success the pid field is initialised (zero when nothing exited).
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        let pid = info.si_pid();
        (rc == 0 && pid > 0).then_some(pid as u32)
    }
}

/// Reaps child `pid` if it has exited.
fn reap_pid(pid: u32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    matches!(
        rustix::process::waitid(
            rustix::process::WaitId::Pid(p),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
        ),
        Ok(Some(_))
    )
}
