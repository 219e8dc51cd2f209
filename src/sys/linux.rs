//! Linux: pidfd for exit notification and signalling, epoll for waiting, prctl for PDEATHSIG.

use crate::spec::Signal;
use libc::{c_char, c_int, c_void};
use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
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

/// Everything a child needs, prepared by the parent: the child may not allocate.
pub(crate) struct SpawnRequest<'a> {
    /// An absolute path.
    pub(crate) program: &'a Path,
    /// `argv[0]` followed by the arguments.
    pub(crate) argv: &'a [&'a CStr],
    /// The complete environment, `key=value` each.
    pub(crate) env: &'a [&'a CStr],
    pub(crate) cwd: Option<&'a Path>,
    pub(crate) stdout: BorrowedFd<'a>,
    pub(crate) stderr: BorrowedFd<'a>,
    /// The cgroup the child starts in: its directory (for `CLONE_INTO_CGROUP`) and its
    /// `cgroup.procs` (for kernels without it, where the child joins before exec).
    pub(crate) cgroup: Option<(BorrowedFd<'a>, &'a Path)>,
    /// `cgroup.procs` files (opened for writing) of further cgroups the child joins before
    /// exec: the v1 hierarchies of its limits. At most two.
    pub(crate) join: Vec<BorrowedFd<'a>>,
    /// What the child is to the host: a service (its own process group, killed when the
    /// spawning thread ends), or a process that must outlive the host (a session of its own,
    /// no parent-death signal).
    pub(crate) kind: ChildKind,
    /// Fds the child keeps across exec, as 3, 4, … in this order. At most four.
    pub(crate) keep: &'a [BorrowedFd<'a>],
}

/// See [`SpawnRequest::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChildKind {
    /// Leads a new process group; `PR_SET_PDEATHSIG(SIGKILL)`.
    Service,
    /// Leads a new session (so a signal to the host's group or a hang-up of its terminal
    /// does not reach it); no parent-death signal.
    Detached,
}

/// What the child reads (and, on failure, writes) in the memory it shares with the parent.
#[repr(C)]
struct ChildArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    cgroup_procs: *const c_char,
    join: [c_int; 2],
    stdin: c_int,
    stdout: c_int,
    stderr: c_int,
    parent: libc::pid_t,
    detached: c_int,
    keep: [c_int; 4],
    keep_len: c_int,
    /// The step that failed and its errno; 0 while all goes well.
    failed_step: c_int,
    errno: c_int,
}

const STEP_SETPGID: c_int = 1;
const STEP_DUP2: c_int = 2;
const STEP_CHDIR: c_int = 3;
const STEP_PDEATHSIG: c_int = 4;
const STEP_EXEC: c_int = 5;
const STEP_CGROUP: c_int = 6;
const STEP_KEEP: c_int = 7;

thread_local! {
    /// The spawning thread's child stack, between spawns.
    static CHILD_STACKS: std::cell::Cell<Option<Vec<u8>>> = const { std::cell::Cell::new(None) };
}

/// `/dev/null`, opened once (close-on-exec): every child's stdin, and a probe's output.
pub(crate) fn devnull() -> io::Result<BorrowedFd<'static>> {
    static DEVNULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = DEVNULL.get() {
        return Ok(fd.as_fd());
    }
    let fd = OwnedFd::from(std::fs::File::open("/dev/null")?);
    Ok(DEVNULL.get_or_init(|| fd).as_fd())
}

/// The stack the child runs on until it execs. It calls a dozen syscalls and nothing else.
const CHILD_STACK: usize = 64 * 1024;

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in spawn argument"))
}

/// Spawns a child as the leader of a new process group and returns its pid and a pidfd.
///
/// The child shares the parent's memory until it execs (`clone` with `CLONE_VM | CLONE_VFORK`,
/// as `posix_spawn` does), so the cost does not grow with the host's memory, unlike `fork`.
/// Before exec it:
/// - resets every signal disposition to the default and unblocks every signal (std resets
///   only the mask and SIGPIPE, so a host that ignores SIGTERM would otherwise make every
///   service ignore it);
/// - takes /dev/null as stdin and the given files as stdout and stderr;
/// - marks every other fd close-on-exec (the host may hold fds without O_CLOEXEC, or have
///   inherited some);
/// - sets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the spawning thread (call this only
///   from a long-lived thread: the supervision thread, a probe worker), and exits if the
///   host died before that.
///
/// The pidfd comes from `CLONE_PIDFD`, atomically with the child: no pid is ever looked up.
pub(crate) fn spawn(req: &SpawnRequest<'_>) -> io::Result<(u32, OwnedFd)> {
    let path = cstring(req.program.as_os_str())?;
    let argv_ptrs: Vec<*const c_char> = req
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let env_ptrs: Vec<*const c_char> = req
        .env
        .iter()
        .map(|e| e.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let cwd = req.cwd.map(|c| cstring(c.as_os_str())).transpose()?;
    let cgroup_procs = req
        .cgroup
        .map(|(_, procs)| cstring(procs.as_os_str()))
        .transpose()?;
    let devnull = devnull()?;
    if req.join.len() > 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more than two cgroups to join",
        ));
    }
    let mut join = [-1; 2];
    for (slot, fd) in join.iter_mut().zip(&req.join) {
        *slot = fd.as_raw_fd();
    }
    if req.keep.len() > 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more than four fds to keep",
        ));
    }
    let mut keep = [-1; 4];
    for (slot, fd) in keep.iter_mut().zip(req.keep) {
        *slot = fd.as_raw_fd();
    }

    let mut args = ChildArgs {
        path: path.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: env_ptrs.as_ptr(),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        cgroup_procs: cgroup_procs
            .as_ref()
            .map_or(std::ptr::null(), |c| c.as_ptr()),
        join,
        stdin: devnull.as_raw_fd(),
        stdout: req.stdout.as_raw_fd(),
        stderr: req.stderr.as_raw_fd(),
        parent: rustix::process::getpid().as_raw_nonzero().get(),
        detached: c_int::from(req.kind == ChildKind::Detached),
        keep,
        keep_len: req.keep.len() as c_int,
        failed_step: 0,
        errno: 0,
    };
    // Kept across spawns (all on the supervision thread): no 64 KiB to zero per spawn.
    let mut stack = CHILD_STACKS
        .with(|s| s.take())
        .unwrap_or_else(|| vec![0u8; CHILD_STACK]);
    let mut pidfd: c_int = -1;

    // SAFETY: `stack` outlives the child's use of it: with CLONE_VFORK this thread is suspended
    // until the child has exec'd or exited, and only then is `stack` put back for the next
    // spawn and do `args` and the strings they point to go out of scope. `child_main` receives a pointer to `args`, which stays
    // valid for the same reason. The stack grows down, so the child gets its (16-byte
    // aligned) end. Every signal is blocked around the clone, so no host signal handler runs on
    // the child's stack before the child resets the dispositions; the old mask is restored
    // right after.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let top = stack.as_mut_ptr().add(CHILD_STACK);
        let top = top.sub(top as usize % 16);
        let arg: *mut c_void = (&mut args as *mut ChildArgs).cast();
        // Straight into the service's cgroup with clone3 where we can: joining it later
        // (writing cgroup.procs) waits for an RCU grace period, milliseconds per spawn.
        let mut pid = -1;
        let mut clone_error = io::Error::from_raw_os_error(libc::ENOSYS);
        if let Some((dir, _)) = req.cgroup {
            let mut cl = CloneArgs {
                flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64
                    | CLONE_INTO_CGROUP,
                pidfd: &mut pidfd as *mut c_int as u64,
                exit_signal: libc::SIGCHLD as u64,
                stack: stack.as_mut_ptr() as u64,
                stack_size: (top as usize - stack.as_mut_ptr() as usize) as u64,
                cgroup: dir.as_raw_fd() as u64,
                ..CloneArgs::default()
            };
            // The child must not join again once it starts inside.
            let procs = std::mem::replace(&mut args.cgroup_procs, std::ptr::null());
            let rc = clone3_vfork(&mut cl, child_main, arg);
            if rc >= 0 {
                pid = rc as c_int;
            } else {
                args.cgroup_procs = procs;
                clone_error = io::Error::from_raw_os_error(-rc as i32);
            }
        }
        let fall_back = matches!(
            clone_error.raw_os_error(),
            Some(libc::ENOSYS) | Some(libc::E2BIG) | Some(libc::EINVAL)
        );
        if pid < 0 && fall_back {
            pid = libc::clone(
                child_main,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                arg,
                &mut pidfd as *mut c_int,
                std::ptr::null_mut::<c_void>(),
                std::ptr::null_mut::<libc::pid_t>(),
            );
            clone_error = io::Error::last_os_error();
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    // SAFETY: CLONE_PIDFD stored a new fd (O_CLOEXEC) that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // The child has exec'd or exited; `args` is ours again.
    let (failed_step, errno) = unsafe {
        // SAFETY: the child no longer runs in this memory; volatile reads because the compiler
        // cannot see the child's writes.
        (
            std::ptr::read_volatile(&args.failed_step),
            std::ptr::read_volatile(&args.errno),
        )
    };
    if failed_step != 0 {
        // It exited with 127; collect it so no zombie stays behind.
        let _ = rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED,
        );
        let err = io::Error::from_raw_os_error(errno);
        let what = match failed_step {
            STEP_SETPGID => "setpgid",
            STEP_DUP2 => "dup2",
            STEP_CHDIR => "chdir",
            STEP_PDEATHSIG => "prctl",
            STEP_CGROUP => "joining its cgroup",
            STEP_KEEP => "passing fds",
            _ => return Err(err),
        };
        return Err(io::Error::new(
            err.kind(),
            format!("{what} in the new process: {err}"),
        ));
    }
    CHILD_STACKS.with(|s| s.set(Some(stack)));
    Ok((pid as u32, pidfd))
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of clone3(2), version 2 (with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// clone3 with `CLONE_VM | CLONE_VFORK` and a stack of its own: the child starts on that
/// stack and calls `child(arg)`, which must exec or exit (if it returns, the child exits
/// with its value). Returns the child's pid, or a negative errno. The calling thread is
/// suspended until the child execs or exits. glibc has no wrapper for clone3 that runs a
/// function on a new stack, so the syscall is made here, as glibc's own clone does it.
///
/// # Safety
///
/// `args` must describe a valid, 16-byte aligned stack that outlives the child's use of it
/// (guaranteed by CLONE_VFORK when the stack lives until this returns), and `child` must
/// follow the rules of [`child_main`].
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vfork(
    args: &mut CloneArgs,
    child: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the parent side is a plain syscall (rcx and r11 are clobbered by it). The child
    // side runs on the new stack (rsp = stack + stack_size, 16-byte aligned, so the `call`
    // leaves the callee the alignment the ABI wants); r12 and r13 survive the syscall into
    // the child, which calls `child(arg)` and exits with its value, never returning here.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") child as usize,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// See the x86_64 version.
#[cfg(target_arch = "aarch64")]
unsafe fn clone3_vfork(
    args: &mut CloneArgs,
    child: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: as on x86_64; x19 and x20 survive the syscall into the child, whose sp is the
    // new stack's (16-byte aligned) top.
    unsafe {
        std::arch::asm!(
            "svc 0",
            "cbnz x0, 2f",
            "mov x0, x20",
            "blr x19",
            "mov x8, 93",
            "svc 0",
            "udf 0",
            "2:",
            in("x8") libc::SYS_clone3,
            inlateout("x0") args as *mut CloneArgs as i64 => ret,
            in("x1") std::mem::size_of::<CloneArgs>(),
            in("x19") child as usize,
            in("x20") arg,
            clobber_abi("C"),
        );
    }
    ret
}

/// Other architectures: no clone3 here; the caller falls back to clone and cgroup.procs.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn clone3_vfork(
    _: &mut CloneArgs,
    _: extern "C" fn(*mut c_void) -> c_int,
    _: *mut c_void,
) -> i64 {
    -(libc::ENOSYS as i64)
}

/// The child side of [`spawn`], on its own stack in the parent's memory, until exec.
///
/// It may call only raw syscalls: no allocation, no lock, no unwinding (a panic here would
/// abort, being `extern "C"`, and nothing here can panic).
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `spawn` passes a valid, exclusive `ChildArgs` and is suspended until we exec or
    // exit. The syscalls below take pointers into memory `spawn` keeps alive.
    unsafe {
        let a = &mut *(arg as *mut ChildArgs);
        // Default dispositions (a zeroed kernel sigaction is SIG_DFL), then an empty mask.
        let dfl = [0u64; 4];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<c_void>(),
                    8,
                );
            }
        }
        let empty = 0u64;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<c_void>(),
            8,
        );
        let fail = |a: &mut ChildArgs, step: c_int| -> ! {
            a.errno = *libc::__errno_location();
            a.failed_step = step;
            libc::_exit(127)
        };
        if a.detached != 0 {
            if libc::setsid() < 0 {
                fail(a, STEP_SETPGID);
            }
        } else if libc::setpgid(0, 0) != 0 {
            fail(a, STEP_SETPGID);
        }
        if !a.cgroup_procs.is_null() {
            // Join the service's cgroup before anything of the service runs.
            let fd = libc::open(a.cgroup_procs, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(a, STEP_CGROUP);
            }
            libc::close(fd);
        }
        for fd in a.join {
            if fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(a, STEP_CGROUP);
            }
        }
        for (from, to) in [(a.stdin, 0), (a.stdout, 1), (a.stderr, 2)] {
            if from == to {
                if libc::fcntl(to, libc::F_SETFD, 0) != 0 {
                    fail(a, STEP_DUP2);
                }
            } else if libc::dup2(from, to) != to {
                fail(a, STEP_DUP2);
            }
        }
        if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
            fail(a, STEP_CHDIR);
        }
        // Ignore failure: kernels before 5.11 lack CLOSE_RANGE_CLOEXEC; the child then keeps
        // what the host leaked, as with std alone.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        // Fds to keep go to 3, 4, …: first each to a number above those (so none is
        // overwritten before it is moved), then into place, where dup2 clears close-on-exec.
        let n = a.keep_len as usize;
        for i in 0..n {
            let high = libc::fcntl(a.keep[i], libc::F_DUPFD_CLOEXEC, 3 + n as c_int);
            if high < 0 {
                fail(a, STEP_KEEP);
            }
            a.keep[i] = high;
        }
        for i in 0..n {
            if libc::dup2(a.keep[i], 3 + i as c_int) < 0 {
                fail(a, STEP_KEEP);
            }
        }
        if a.detached != 0 {
            libc::execve(a.path, a.argv, a.envp);
            fail(a, STEP_EXEC)
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(a, STEP_PDEATHSIG);
        }
        // The host may have died between clone and prctl: then nobody will send the signal.
        if libc::getppid() != a.parent {
            libc::_exit(1);
        }
        libc::execve(a.path, a.argv, a.envp);
        fail(a, STEP_EXEC)
    }
}

/// The size asked for a child's output pipe.
const PIPE_SIZE: usize = 1 << 20;

/// A pipe for a child's output: both ends close-on-exec (the child's `dup2` onto 1 or 2 clears
/// it there). The reader makes its end ready with [`tune_read_end`], off the spawn path.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((read, write))
}

/// Makes the read end of an output pipe non-blocking, and the pipe larger: a fast writer then
/// runs ahead of the pump instead of waiting on it every 64 KiB. The size is best effort:
/// unprivileged users have a per-user budget for pipe memory.
pub(crate) fn tune_read_end(read: &OwnedFd) -> io::Result<()> {
    rustix::fs::fcntl_setfl(read, rustix::fs::OFlags::NONBLOCK)?;
    let _ = rustix::pipe::fcntl_setpipe_size(read, PIPE_SIZE);
    Ok(())
}

/// Sends `signal` to one process by pid: only for members of a service's cgroup that left its
/// process group, read from `cgroup.procs` just before.
pub(crate) fn kill_pid(pid: u32, signal: Signal) -> io::Result<()> {
    let pid =
        Pid::from_raw(pid as i32).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let sig = rustix::process::Signal::from_named_raw(raw_signal(signal)).expect("a named signal");
    rustix::process::kill_process(pid, sig).map_err(io::Error::from)
}

/// The inode of a pidfd on pidfs (Linux 6.9+), unique to its process for the life of the
/// boot: with the boot id it names a process even after its pid is reused. `None` on older
/// kernels, where every pidfd shares one anonymous inode.
pub(crate) fn pidfd_inode(pidfd: &OwnedFd) -> Option<u64> {
    const PIDFS_MAGIC: i64 = 0x5049_4446;
    let fs = rustix::fs::fstatfs(pidfd).ok()?;
    if fs.f_type as i64 != PIDFS_MAGIC {
        return None;
    }
    rustix::fs::fstat(pidfd).ok().map(|st| st.st_ino)
}

/// Opens a pidfd for a process we did not spawn (a leftover of a previous host).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        Pid::from_raw(pid as i32).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(io::Error::from)
}

pub(crate) use crate::history::Usage;

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

/// Reaps the child behind `pidfd` if it has exited; `Ok(None)` if it is still running. The
/// usage comes from the same `waitid` (its rusage argument, which the libc wrapper hides).
///
/// If the host auto-reaps children (`SIGCHLD` ignored) or another thread reaped this one with
/// `waitpid(-1)`, `waitid` fails with ECHILD; the exit status then comes from the pidfd itself
/// (`PIDFD_GET_INFO`, Linux 6.15+), or is `Unknown` on older kernels, and there is no usage.
pub(crate) fn reap(pidfd: &OwnedFd) -> io::Result<Option<(RawExit, Option<Usage>)>> {
    // SAFETY: `siginfo_t` and `rusage` are plain old data, valid when zeroed; the kernel
    // writes at most their sizes into them; the pidfd is ours and open.
    let (rc, info, usage) = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let mut usage: libc::rusage = std::mem::zeroed();
        let rc = libc::syscall(
            libc::SYS_waitid,
            libc::P_PIDFD,
            pidfd.as_raw_fd(),
            &mut info as *mut libc::siginfo_t,
            libc::WEXITED | libc::WNOHANG,
            &mut usage as *mut libc::rusage,
        );
        (rc, info, usage)
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ECHILD) => Ok(Some((exit_from_pidfd_info(pidfd), None))),
            Some(libc::EINTR) => reap(pidfd),
            _ => Err(e),
        };
    }
    // SAFETY: after a successful waitid the pid and status fields are initialised (zero pid
    // when WNOHANG found nothing to report).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    let raw = match info.si_code {
        libc::CLD_EXITED => RawExit::Code(status),
        libc::CLD_KILLED | libc::CLD_DUMPED => RawExit::Signal(status),
        _ => RawExit::Unknown,
    };
    let usage = Usage {
        peak_memory: None,
        user: timeval(usage.ru_utime),
        system: timeval(usage.ru_stime),
    };
    Ok(Some((raw, Some(usage))))
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
/// Sends `signal` to the one process behind `pidfd`.
pub(crate) fn signal_process(pidfd: &OwnedFd, signal: Signal) -> io::Result<()> {
    pidfd_send_signal_raw(pidfd, raw_signal(signal), 0)
}

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

/// Waits up to `timeout` for the child behind `pidfd` to exit (without reaping it); returns
/// whether it did.
pub(crate) fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
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
    /// CPU time used, user plus system, in clock ticks.
    pub(crate) cpu_ticks: u64,
    pub(crate) threads: u32,
    /// Resident set size in pages.
    pub(crate) rss_pages: u64,
}

/// Clock ticks per second (`_SC_CLK_TCK`), for CPU times read from /proc.
pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// Clock ticks since boot now, on the clock of `ProcStat::start_time` (`CLOCK_BOOTTIME`).
pub(crate) fn boot_ticks() -> u64 {
    let now = rustix::time::clock_gettime_dynamic(rustix::time::DynamicClockId::Boottime)
        .unwrap_or_else(|_| rustix::time::clock_gettime(rustix::time::ClockId::Monotonic));
    let nanos = now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128;
    (nanos * clock_ticks_per_second() as u128 / 1_000_000_000) as u64
}

/// The last pid the kernel handed out in this pid namespace (`ns_last_pid`).
pub(crate) fn last_pid() -> Option<u32> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    let n = std::fs::File::open("/proc/sys/kernel/ns_last_pid")
        .and_then(|mut f| f.read(&mut buf))
        .ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

/// The page size in bytes.
pub(crate) fn page_size() -> u64 {
    rustix::param::page_size() as u64
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
        cpu_ticks: rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?,
        threads: rest.get(17)?.parse().ok()?,
        rss_pages: rest.get(21)?.parse().ok()?,
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

/// Makes this process a child subreaper: descendants orphaned by their parent's exit are
/// re-parented to it instead of to init.
pub(crate) fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(io::Error::from)
}

/// The children of this process, over all its threads (`/proc/self/task/*/children`).
pub(crate) fn own_children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The value of `key` in the environment `pid` started with (`None` if unset or unreadable).
///
/// A process in the middle of an exec shows an empty environment until the new program's is
/// set up, a few microseconds: an empty one is read again, for up to about a millisecond
/// (a `setsid` daemon caught between its `setsid` and its exec would otherwise look like
/// someone else's). Kernel threads, which have none, are not waited for.
pub(crate) fn environ_value(pid: u32, key: &str) -> Option<String> {
    let path = format!("/proc/{pid}/environ");
    let mut env = std::fs::read(&path).ok()?;
    let mut tries = 0;
    while env.is_empty()
        && tries < 20
        && proc_stat(pid).is_some_and(|s| s.ppid != 2 && s.pid != 2 && s.state != b'Z')
    {
        std::thread::sleep(std::time::Duration::from_micros(50));
        env = std::fs::read(&path).ok()?;
        tries += 1;
    }
    env.split(|b| *b == 0).find_map(|kv| {
        let value = kv.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

/// The session id of `pid`.
///
/// Zero is a real answer: inside a container whose session leader lives outside the
/// pid namespace, every process reports session 0. (rustix's `getsid` asserts a nonzero
/// id and panics there, so the call goes through libc.)
pub(crate) fn session_of(pid: u32) -> Option<u32> {
    // SAFETY: getsid takes a plain integer and touches no memory of ours.
    let sid = unsafe { libc::getsid(pid as libc::pid_t) };
    (sid >= 0).then_some(sid as u32)
}

/// The resident pages of `pid`, summed exactly (`/proc/<pid>/statm`).
pub(crate) fn resident_pages(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    statm.split_whitespace().nth(1)?.parse().ok()
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

/// The real uid of `pid`, from the `Uid:` line of `/proc/<pid>/status` (`None` if it is gone).
pub(crate) fn process_real_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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

/// `SO_PASSPIDFD` and `SCM_PIDFD` (Linux 6.5+), which libc does not name yet.
const SO_PASSPIDFD: c_int = 76;
const SCM_PIDFD: c_int = 0x04;

/// Who sent a datagram, as the kernel vouches for it.
pub(crate) struct Credentials {
    /// The sender's pid (a sender with `CAP_SYS_ADMIN` may name another process, as
    /// `systemd-notify` run by root names its parent).
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    /// A pidfd of that process (`SCM_PIDFD`, Linux 6.5+): it stays valid when the sender has
    /// exited, and on Linux 6.16+ even once it was reaped.
    pub(crate) pidfd: Option<OwnedFd>,
}

/// A datagram socket in the abstract namespace (`NOTIFY_SOCKET`) that receives each
/// datagram with its sender's credentials (`SO_PASSCRED`, and `SO_PASSPIDFD` where the
/// kernel has it). Non-blocking and close-on-exec.
pub(crate) struct NotifySocket(OwnedFd);

impl NotifySocket {
    pub(crate) fn bind_abstract(name: &[u8]) -> io::Result<NotifySocket> {
        use rustix::net::{self, sockopt, AddressFamily, SocketFlags, SocketType};
        let fd = net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        sockopt::set_socket_passcred(&fd, true)?;
        let one: c_int = 1;
        // SAFETY: a plain setsockopt with a c_int option value that outlives the call. It
        // fails with ENOPROTOOPT before Linux 6.5; the pid from SO_PASSCRED is used then.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PASSPIDFD,
                (&one as *const c_int).cast(),
                std::mem::size_of::<c_int>() as libc::socklen_t,
            );
        }
        let addr = net::SocketAddrUnix::new_abstract_name(name)?;
        net::bind(&fd, &addr)?;
        Ok(NotifySocket(fd))
    }

    /// Receives one datagram into `buf` (cut at its length) with its sender's credentials;
    /// `Ok(None)` when none is waiting.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
        // Room for a ucred, a pidfd and a few passed fds; u64s for the alignment cmsgs need.
        let mut control = [0u64; 32];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `msghdr` is plain old data, valid when zeroed; it points at `iov` and
        // `control`, which outlive the call, with their true sizes.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: as above; the kernel writes at most the buffers' sizes.
        let n = unsafe {
            libc::recvmsg(
                self.0.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                Some(libc::EINTR) => self.recv(buf),
                _ => Err(e),
            };
        }
        let mut creds: Option<(u32, u32)> = None;
        let mut pidfd = None;
        let mut passed = Vec::new();
        // SAFETY: the CMSG_* walk stays within `msg_controllen`, which the kernel set; each
        // payload is read unaligned, with the size its type says; every fd the kernel
        // installed is taken into an OwnedFd exactly once, so none leaks.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                        if len >= std::mem::size_of::<libc::ucred>() =>
                    {
                        let u = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                        creds = Some((u.pid as u32, u.uid));
                    }
                    (libc::SOL_SOCKET, SCM_PIDFD) if len >= 4 => {
                        let fd = std::ptr::read_unaligned(data.cast::<c_int>());
                        if fd >= 0 {
                            pidfd = Some(OwnedFd::from_raw_fd(fd));
                        }
                    }
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                        for i in 0..len / 4 {
                            let fd = std::ptr::read_unaligned(data.cast::<c_int>().add(i));
                            if fd >= 0 {
                                passed.push(OwnedFd::from_raw_fd(fd));
                            }
                        }
                    }
                    _ => {}
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok(Some(Datagram {
            len: n as usize,
            sender: creds.map(|(pid, uid)| Credentials { pid, uid, pidfd }),
            _passed: passed,
        }))
    }
}

/// One datagram received on a [`NotifySocket`].
pub(crate) struct Datagram {
    pub(crate) len: usize,
    pub(crate) sender: Option<Credentials>,
    /// File descriptors sent with it, closed when it is dropped: `systemd-notify` sends one
    /// with `BARRIER=1` and lives until it is closed, so dropping the datagram only after its
    /// sender was checked keeps the sender there to be checked.
    _passed: Vec<OwnedFd>,
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The id of the cgroup v2 a process is (or, once exited, was) in, from its pidfd
/// (`PIDFD_GET_INFO`, Linux 6.13+; after the process was reaped, 6.15+). The same number as
/// the inode of the cgroup's directory ([`inode_of`]).
pub(crate) fn pidfd_cgroup_id(pidfd: &OwnedFd) -> Option<u64> {
    // SAFETY: `pidfd_info` is plain old data, valid when zeroed; the ioctl writes at most
    // `size_of::<pidfd_info>()` bytes into it and reads the mask we set.
    unsafe {
        let mut info: libc::pidfd_info = std::mem::zeroed();
        // Asking for the exit too: for a reaped process the kernel answers only then (with
        // the cgroup it was in when it exited).
        info.mask = (libc::PIDFD_INFO_CGROUPID | libc::PIDFD_INFO_EXIT) as u64;
        if libc::ioctl(pidfd.as_raw_fd(), libc::PIDFD_GET_INFO, &mut info) != 0
            || info.mask & libc::PIDFD_INFO_CGROUPID as u64 == 0
        {
            return None;
        }
        Some(info.cgroupid)
    }
}

/// Whether the process behind `pidfd` has not been reaped yet (a zombie counts).
pub(crate) fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    pidfd_send_signal_raw(pidfd, 0, 0).is_ok()
}

/// The inode number of an open file: for a cgroup v2 directory, the cgroup's id.
pub(crate) fn inode_of(fd: &impl AsFd) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_ino)
}

/// The cgroup v2 path of `pid` as `/proc/<pid>/cgroup` shows it (`0::<path>`).
pub(crate) fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
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
            epoll,
            waker,
            events: Vec::with_capacity(max_events.max(1)),
        })
    }

    /// A handle other threads use to wake the wait.
    pub(crate) fn waker(&self) -> io::Result<Waker> {
        Ok(Waker(self.waker.try_clone()?))
    }

    pub(crate) fn add(&self, fd: &impl AsFd, token: u64) -> io::Result<()> {
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )?;
        Ok(())
    }

    /// Adds a connected stream, edge-triggered: reported once each time it becomes readable,
    /// writable, or closed by its peer. Its owner reads and writes until `WouldBlock`.
    pub(crate) fn add_stream(&self, fd: &impl AsFd, token: u64) -> io::Result<()> {
        use epoll::EventFlags as F;
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(token),
            F::IN | F::OUT | F::RDHUP | F::ET,
        )?;
        Ok(())
    }

    pub(crate) fn remove(&self, fd: &impl AsFd) {
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

// SAFETY: `epoll::Event` is `!Send` only because its data field may hold a pointer; a
// `Poller` stores nothing but u64 tokens in it, and owns its fds.
unsafe impl Send for Poller {}

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
    use rustix::event::{poll, PollFd, PollFlags};
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

/// What `stat` tells of a file, the fields the state directory's checks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStat {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) uid: u32,
    /// The type and permission bits (`st_mode`).
    pub(crate) mode: u32,
    pub(crate) nlink: u64,
    pub(crate) size: u64,
}

impl FileStat {
    fn from_raw(st: rustix::fs::Stat) -> FileStat {
        FileStat {
            dev: st.st_dev,
            ino: st.st_ino,
            uid: st.st_uid,
            mode: st.st_mode,
            nlink: st.st_nlink,
            size: st.st_size.max(0) as u64,
        }
    }

    /// The permission bits (`0o777` and the set-id and sticky bits).
    pub(crate) fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }

    pub(crate) fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    pub(crate) fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }

    /// The same file as `other` (device and inode).
    pub(crate) fn same_file(&self, other: &FileStat) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// The effective uid of this process: the owner a state directory must have.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `stat` of the file behind `fd`.
pub(crate) fn fstat(fd: &impl AsFd) -> io::Result<FileStat> {
    Ok(FileStat::from_raw(rustix::fs::fstat(fd)?))
}

/// `lstat` of `path`: a symbolic link is described, not followed.
pub(crate) fn lstat(path: &Path) -> io::Result<FileStat> {
    Ok(FileStat::from_raw(rustix::fs::lstat(path)?))
}

/// `stat` of `name` in the directory `dir`, not following a symbolic link.
pub(crate) fn stat_at(dir: &impl AsFd, name: &str) -> io::Result<FileStat> {
    Ok(FileStat::from_raw(rustix::fs::statat(
        dir,
        name,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?))
}

/// Opens a directory: `path` itself if `follow`, else only if it is not a symbolic link.
pub(crate) fn open_dir(path: &Path, follow: bool) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let nofollow = if follow {
        OFlags::empty()
    } else {
        OFlags::NOFOLLOW
    };
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | nofollow,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` in `dir`, never through a symbolic link.
pub(crate) fn open_dir_at(dir: &impl AsFd, name: &str) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

/// Makes the directory `name` in `dir` with `mode` (less the umask); an existing one is
/// left as it is.
pub(crate) fn make_dir_at(dir: &impl AsFd, name: &str, mode: u32) -> io::Result<()> {
    match rustix::fs::mkdirat(dir, name, rustix::fs::Mode::from_raw_mode(mode)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How [`open_file_at`] opens a file.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Access {
    Read,
    /// Read and write; created with the given mode (less the umask) if missing.
    ReadWrite {
        create: Option<u32>,
    },
    /// Read and append; created with the given mode (less the umask) if missing.
    Append {
        create: u32,
    },
}

/// Opens the file `name` in `dir`, close-on-exec and never through a symbolic link (a link
/// gives `ELOOP`).
pub(crate) fn open_file_at(dir: &impl AsFd, name: &str, access: Access) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let (flags, mode) = match access {
        Access::Read => (OFlags::RDONLY, 0),
        Access::ReadWrite { create: None } => (OFlags::RDWR, 0),
        Access::ReadWrite { create: Some(mode) } => (OFlags::RDWR | OFlags::CREATE, mode),
        Access::Append { create } => (OFlags::RDWR | OFlags::APPEND | OFlags::CREATE, create),
    };
    let fd = rustix::fs::openat(
        dir,
        name,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(mode),
    )?;
    Ok(File::from(fd))
}

/// The path the kernel has for the file or directory behind `fd`, every symbolic link
/// resolved.
pub(crate) fn fd_path(fd: &impl AsFd) -> io::Result<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

/// Sets the permission bits of the file behind `fd`.
pub(crate) fn chmod_fd(fd: &impl AsFd, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(
        fd,
        rustix::fs::Mode::from_raw_mode(mode),
    )?)
}

/// Sets the permission bits of `name` in `dir`. Callers check first that it is not a
/// symbolic link, in a directory only they can write.
pub(crate) fn chmod_at(dir: &impl AsFd, name: &str, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::chmodat(
        dir,
        name,
        rustix::fs::Mode::from_raw_mode(mode),
        rustix::fs::AtFlags::empty(),
    )?)
}

/// Renames `from` to `to`, both in `dir`.
pub(crate) fn rename_at(dir: &impl AsFd, from: &str, to: &str) -> io::Result<()> {
    Ok(rustix::fs::renameat(dir, from, dir, to)?)
}

/// Removes the file `name` from `dir`.
pub(crate) fn unlink_at(dir: &impl AsFd, name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(
        dir,
        name,
        rustix::fs::AtFlags::empty(),
    )?)
}

/// The names in `dir` (without `.` and `..`).
pub(crate) fn list_dir(dir: &impl AsFd) -> io::Result<Vec<std::ffi::OsString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            out.push(std::ffi::OsString::from_vec(name));
        }
    }
    Ok(out)
}

/// Reads up to `buf.len()` bytes at `offset` of the file behind `fd`, without moving its
/// offset.
pub(crate) fn read_at(fd: &impl AsFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    Ok(rustix::io::pread(fd, buf, offset)?)
}

/// Opens `path` for reading, not following a symbolic link at its end.
pub(crate) fn open_nofollow(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// How many fds this process has open now (`/proc/self/fd`), `None` if unreadable.
pub(crate) fn open_fds() -> Option<u64> {
    // The directory's own fd, open while it is read, is not counted.
    Some(
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1) as u64,
    )
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

    #[test]
    fn a_new_process_has_a_pid_after_the_last_one_and_a_later_start() {
        let (before, ticks) = (last_pid().unwrap(), boot_ticks());
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .env("SHEEPDOG_TEST_MARK", "here")
            .spawn()
            .unwrap();
        let pid = child.id();
        let after = last_pid().unwrap();
        let stat = proc_stat(pid);
        let mark = environ_value(pid, "SHEEPDOG_TEST_MARK");
        child.kill().unwrap();
        child.wait().unwrap();
        // No wrap of the pid space is expected within this test.
        assert!(before < pid && pid <= after, "{before} < {pid} <= {after}");
        assert!(stat.unwrap().start_time + 1 >= ticks);
        assert_eq!(mark.as_deref(), Some("here"));
    }
}
