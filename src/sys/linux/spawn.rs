//! Spawning a child: `clone3` (or `clone`) with `CLONE_VM | CLONE_VFORK | CLONE_PIDFD`, as
//! `posix_spawn` does, straight into its cgroup, with the child's side made clean before exec.
//!
//! The child starts on the spawning thread's CPU ([`pin_to_this_cpu`]), which the clone
//! frees, and takes back the thread's CPU mask first thing.

use super::pidfd::PidFd;
use crate::rlimit::Resource;
use libc::{c_char, c_int, c_void};
use rustix::process::WaitIdOptions;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
    /// What the child sets about itself before exec: umask, limits, priority, identity.
    pub(crate) setup: &'a ChildSetup,
}

/// What a child sets about itself between clone and exec, each with one raw system call.
/// The default sets nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChildSetup {
    pub(crate) umask: Option<u32>,
    /// (resource, soft, hard). At most [`MAX_LIMITS`].
    pub(crate) limits: Vec<(Resource, u64, u64)>,
    pub(crate) nice: Option<i32>,
    pub(crate) oom_score_adj: Option<i32>,
    /// The ids to take, last (the steps before may need the host's privileges).
    pub(crate) ids: Option<super::user::Ids>,
}

impl ChildSetup {
    /// Sets nothing: the child keeps what the host has.
    pub(crate) const NONE: ChildSetup = ChildSetup {
        umask: None,
        limits: Vec::new(),
        nice: None,
        oom_score_adj: None,
        ids: None,
    };
}

/// Held while a child that takes other ids runs in this process's memory (see [`spawn`]).
static ID_SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The most resource limits one child sets.
pub(crate) const MAX_LIMITS: usize = 8;

/// A step of a child's setup that failed, and the error number it failed with: what
/// [`spawn`] returns (inside an `io::Error` of the same errno's kind) when the child could
/// not get as far as exec.
#[derive(Debug)]
pub(crate) struct StepFailed {
    pub(crate) step: ChildStep,
    pub(crate) errno: i32,
}

/// See [`StepFailed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChildStep {
    ProcessGroup,
    Stdio,
    Cgroup,
    KeepFds,
    Limit(Resource),
    Nice,
    OomScoreAdj,
    Groups,
    Gid,
    Uid,
    Chdir,
    ParentDeathSignal,
    /// Taking an fd table of its own (`close_range` with `CLOSE_RANGE_UNSHARE`).
    Unshare,
    /// Taking back the spawning thread's CPU mask.
    Affinity,
}

impl std::fmt::Display for ChildStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildStep::ProcessGroup => f.write_str("setpgid"),
            ChildStep::Stdio => f.write_str("dup2"),
            ChildStep::Cgroup => f.write_str("joining its cgroup"),
            ChildStep::KeepFds => f.write_str("passing fds"),
            ChildStep::Limit(r) => write!(f, "setrlimit {r}"),
            ChildStep::Nice => f.write_str("setpriority"),
            ChildStep::OomScoreAdj => f.write_str("writing oom_score_adj"),
            ChildStep::Groups => f.write_str("setgroups"),
            ChildStep::Gid => f.write_str("setresgid"),
            ChildStep::Uid => f.write_str("setresuid"),
            ChildStep::Chdir => f.write_str("chdir"),
            ChildStep::ParentDeathSignal => f.write_str("prctl"),
            ChildStep::Unshare => f.write_str("close_range"),
            ChildStep::Affinity => f.write_str("sched_setaffinity"),
        }
    }
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in the new process: {}",
            self.step,
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for StepFailed {}

/// The step a failed spawn stopped at, if it stopped before exec.
pub(crate) fn failed_step(e: &io::Error) -> Option<&StepFailed> {
    e.get_ref()?.downcast_ref::<StepFailed>()
}

fn rlimit_resource(r: Resource) -> c_int {
    (match r {
        Resource::OpenFiles => libc::RLIMIT_NOFILE,
        Resource::CoreSize => libc::RLIMIT_CORE,
        Resource::Processes => libc::RLIMIT_NPROC,
        Resource::AddressSpace => libc::RLIMIT_AS,
        Resource::Stack => libc::RLIMIT_STACK,
        Resource::LockedMemory => libc::RLIMIT_MEMLOCK,
        Resource::CpuTime => libc::RLIMIT_CPU,
        Resource::FileSize => libc::RLIMIT_FSIZE,
    }) as c_int
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
    /// Not null: the spawning thread was pinned to its CPU for the clone, and the child takes
    /// back this mask (the thread's own) before anything else.
    affinity: *const libc::cpu_set_t,
    /// Above 0: the child shares the parent's fd table (`CLONE_FILES`) and first takes a
    /// table of its own holding only the fds below this (the spawning thread's slots).
    unshare_below: c_int,
    /// The flags of that `close_range`: `CLOSE_RANGE_UNSHARE` ([`unshare_flags`]).
    unshare_flags: libc::c_uint,
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
    /// -1: leave it.
    umask: c_int,
    /// (resource, soft, hard), `limits_len` of them.
    limits: [(c_int, u64, u64); MAX_LIMITS],
    limits_len: c_int,
    set_nice: c_int,
    nice: c_int,
    /// The value to write to /proc/self/oom_score_adj, `oom_len` bytes; 0: leave it.
    oom: [u8; 8],
    oom_len: c_int,
    switch_ids: c_int,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: *const libc::gid_t,
    groups_len: usize,
    /// The step that failed and its errno; 0 while all goes well. For a limit, which one
    /// (its index in `limits`).
    failed_step: c_int,
    failed_index: c_int,
    errno: c_int,
}

const STEP_SETPGID: c_int = 1;
const STEP_DUP2: c_int = 2;
const STEP_CHDIR: c_int = 3;
const STEP_PDEATHSIG: c_int = 4;
const STEP_EXEC: c_int = 5;
const STEP_CGROUP: c_int = 6;
const STEP_KEEP: c_int = 7;
const STEP_RLIMIT: c_int = 8;
const STEP_NICE: c_int = 9;
const STEP_OOM: c_int = 10;
const STEP_SETGROUPS: c_int = 11;
const STEP_SETGID: c_int = 12;
const STEP_SETUID: c_int = 13;
const STEP_UNSHARE: c_int = 14;
const STEP_AFFINITY: c_int = 15;

/// Where a child adjusts its OOM score.
const OOM_SCORE_ADJ: &CStr = c"/proc/self/oom_score_adj";

thread_local! {
    /// The spawning thread's child stack, between spawns.
    static CHILD_STACKS: std::cell::Cell<Option<Vec<u8>>> = const { std::cell::Cell::new(None) };
    /// The spawning thread's fd slots, between spawns.
    static SLOTS: std::cell::Cell<Option<Slots>> = const { std::cell::Cell::new(None) };
}

/// The kernel cannot give a child a table of only some of the fds (`CLOSE_RANGE_UNSHARE`,
/// Linux 5.9): children copy the whole table at `clone` again.
static NO_UNSHARE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The flags a child's `close_range` takes a table of its own with. A test asks, on its
/// thread, for flags the kernel refuses, as a kernel before 5.9 refuses the call.
fn unshare_flags() -> libc::c_uint {
    #[cfg(test)]
    if tests::REFUSE_UNSHARE.with(|r| r.get()) {
        // A flag no kernel knows: EINVAL.
        return libc::CLOSE_RANGE_UNSHARE | 1 << 30;
    }
    libc::CLOSE_RANGE_UNSHARE
}

/// Two low-numbered fds of one spawning thread (each on `/dev/null` between spawns,
/// close-on-exec) that hold, during a spawn, its child's stdout and stderr. The child shares
/// the host's fd table and takes a copy of only the fds up to the highest it needs;
/// otherwise `clone` copies every fd of the host (the read ends of every service's pipes,
/// its pidfds) and `execve` closes them all again, a cost that grows with the fleet on every
/// spawn.
struct Slots {
    fds: [OwnedFd; 2],
}

/// Below this open-file limit the fd table cannot grow large enough for slots to pay for
/// the fds they hold.
const SLOTS_FROM_LIMIT: u64 = 1024;

impl Slots {
    const STDOUT: usize = 0;
    const STDERR: usize = 1;

    /// Two of the lowest free fds (at or above 3), each on /dev/null.
    fn new(devnull: BorrowedFd<'_>) -> io::Result<Slots> {
        let slot = || rustix::io::fcntl_dupfd_cloexec(devnull, 3).map_err(io::Error::from);
        Ok(Slots {
            fds: [slot()?, slot()?],
        })
    }

    fn raw(&self, slot: usize) -> c_int {
        self.fds[slot].as_raw_fd()
    }

    /// Points `slot` at what `fd` is (close-on-exec).
    fn put(&mut self, slot: usize, fd: BorrowedFd<'_>) -> io::Result<()> {
        rustix::io::dup3(fd, &mut self.fds[slot], rustix::io::DupFlags::CLOEXEC)
            .map_err(io::Error::from)
    }

    /// Lets go of what the slots held in a spawn: an output pipe held open by a slot would
    /// never see its end of file.
    fn clear(&mut self, devnull: BorrowedFd<'_>) {
        for slot in &mut self.fds {
            let _ = rustix::io::dup3(devnull, slot, rustix::io::DupFlags::CLOEXEC);
        }
    }
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

/// Spawns a child as the leader of a new process group (or session) and returns it, held by
/// its pidfd.
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
///   from a long-lived thread: the supervision thread, the spawner, a probe worker), and exits if the
///   host died before that.
///
/// The pidfd comes from `CLONE_PIDFD`, atomically with the child: no pid is ever looked up.
pub(crate) fn spawn(req: &SpawnRequest<'_>) -> io::Result<PidFd> {
    use std::sync::atomic::Ordering;
    // Services keep no fd beyond their stdio: their children take a small table.
    if !req.keep.is_empty() || NO_UNSHARE.load(Ordering::Relaxed) {
        return spawn_once(req, None);
    }
    let devnull = devnull()?;
    let Some(mut slots) = SLOTS.with(|s| s.take()) else {
        return spawn_once(req, None);
    };
    let spawned = spawn_once(req, Some(&mut slots));
    slots.clear(devnull);
    SLOTS.with(|s| s.set(Some(slots)));
    match spawned {
        Err(e) if failed_step(&e).is_some_and(|f| f.step == ChildStep::Unshare) => {
            NO_UNSHARE.store(true, Ordering::Relaxed);
            spawn_once(req, None)
        }
        spawned => spawned,
    }
}

/// Takes this thread's fd slots for its spawns now, while the host's fd table is small (a
/// child copies every fd below its slots), unless the open-file limit is too low for them
/// to pay. For a long-lived spawning thread, before its first spawn; a thread without slots
/// spawns children that copy the whole table.
pub(crate) fn reserve_spawn_slots() -> io::Result<()> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if limit.is_some_and(|l| l < SLOTS_FROM_LIMIT) {
        return Ok(());
    }
    if SLOTS.with(|s| {
        let slots = s.take();
        let had = slots.is_some();
        s.set(slots);
        had
    }) {
        return Ok(());
    }
    let slots = Slots::new(devnull()?)?;
    SLOTS.with(|s| s.set(Some(slots)));
    Ok(())
}

/// [`spawn`], with the child on a table of only the fds in `slots` if given.
fn spawn_once(req: &SpawnRequest<'_>, slots: Option<&mut Slots>) -> io::Result<PidFd> {
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

    let setup = req.setup;
    if setup.limits.len() > MAX_LIMITS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more resource limits than one child sets",
        ));
    }
    let mut limits = [(0, 0, 0); MAX_LIMITS];
    for (slot, &(r, soft, hard)) in limits.iter_mut().zip(&setup.limits) {
        *slot = (rlimit_resource(r), soft, hard);
    }
    let mut oom = [0u8; 8];
    let oom_len = match setup.oom_score_adj {
        Some(adj) => {
            let text = adj.to_string();
            oom[..text.len()].copy_from_slice(text.as_bytes());
            text.len()
        }
        None => 0,
    };
    let no_groups: [libc::gid_t; 0] = [];
    let (uid, gid, groups) = match &setup.ids {
        Some(ids) => (ids.uid, ids.gid, &ids.groups[..]),
        None => (0, 0, &no_groups[..]),
    };
    let (mut stdout, mut stderr) = (req.stdout.as_raw_fd(), req.stderr.as_raw_fd());
    let mut unshare_below = 0;
    if let Some(slots) = slots {
        slots.put(Slots::STDOUT, req.stdout)?;
        slots.put(Slots::STDERR, req.stderr)?;
        (stdout, stderr) = (slots.raw(Slots::STDOUT), slots.raw(Slots::STDERR));
        // /dev/null is opened before any slot; the cgroups to join (v1 limits, rare) are
        // wherever they are, and copied with all below them.
        unshare_below = [stdout, stderr, devnull.as_raw_fd()]
            .into_iter()
            .chain(join)
            .max()
            .unwrap_or(2)
            + 1;
    }
    let files = if unshare_below > 0 {
        libc::CLONE_FILES
    } else {
        0
    };
    let mut args = ChildArgs {
        affinity: std::ptr::null(),
        unshare_below,
        unshare_flags: unshare_flags(),
        path: path.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: env_ptrs.as_ptr(),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        cgroup_procs: cgroup_procs
            .as_ref()
            .map_or(std::ptr::null(), |c| c.as_ptr()),
        join,
        stdin: devnull.as_raw_fd(),
        stdout,
        stderr,
        parent: rustix::process::getpid().as_raw_nonzero().get(),
        detached: c_int::from(req.kind == ChildKind::Detached),
        keep,
        keep_len: req.keep.len() as c_int,
        umask: setup.umask.map_or(-1, |m| (m & 0o777) as c_int),
        limits,
        limits_len: setup.limits.len() as c_int,
        set_nice: c_int::from(setup.nice.is_some()),
        nice: setup.nice.unwrap_or(0),
        oom,
        oom_len: oom_len as c_int,
        switch_ids: c_int::from(setup.ids.is_some()),
        uid,
        gid,
        groups: groups.as_ptr(),
        groups_len: groups.len(),
        failed_step: 0,
        failed_index: 0,
        errno: 0,
    };
    // A child that takes other ids makes the memory it shares with this process
    // non-dumpable (the kernel resets the dumpability of the `mm` of a task whose
    // credentials change, and until exec that is ours): the host's /proc files would then
    // be root's, and it could no longer dump core or be traced. What it was is restored
    // once the child has exec'd. One such spawn at a time in the process (two supervisors
    // may run in one host), so that none reads what another's child set.
    let switching = setup
        .ids
        .as_ref()
        .map(|_| ID_SWITCH.lock().unwrap_or_else(|e| e.into_inner()));
    let dumpable = switching
        .as_ref()
        .map(|_| rustix::process::dumpable_behavior());
    // Kept across a thread's spawns: no 64 KiB to zero per spawn.
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
    // Held across the clone until the pid is marked held: an orphan reaper never sees this
    // child exited and not yet held (orphans.rs). Shared: other threads' spawns go on.
    let gate = super::orphans::spawning();
    // The thread's own mask, while it is pinned for the clone (and read by the child).
    let mut own_mask = empty_cpu_set();
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // Pinned for the clone alone: not while it waits for the locks above.
        let pinned = pin_to_this_cpu(&mut own_mask);
        if pinned {
            args.affinity = &own_mask;
        }
        let top = stack.as_mut_ptr().add(CHILD_STACK);
        let top = top.sub(top as usize % 16);
        let arg: *mut c_void = (&mut args as *mut ChildArgs).cast();
        // Straight into the service's cgroup with clone3 where we can: joining it later
        // (writing cgroup.procs) waits for an RCU grace period, milliseconds per spawn.
        let mut pid = -1;
        let mut clone_error = io::Error::from_raw_os_error(libc::ENOSYS);
        if let Some((dir, _)) = req.cgroup {
            let mut cl = CloneArgs {
                flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | files) as u64
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
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | files | libc::SIGCHLD,
                arg,
                &mut pidfd as *mut c_int,
                std::ptr::null_mut::<c_void>(),
                std::ptr::null_mut::<libc::pid_t>(),
            );
            clone_error = io::Error::last_os_error();
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pinned && libc::sched_setaffinity(0, CPU_SET_SIZE, &own_mask) != 0 {
            log::error!(
                "cannot give the spawning thread its CPU mask back: {}",
                io::Error::last_os_error()
            );
        }
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    // SAFETY: CLONE_PIDFD stored a new fd (O_CLOEXEC) that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    if let Some(Ok(was)) = dumpable
        && rustix::process::dumpable_behavior().ok() != Some(was)
    {
        let _ = rustix::process::set_dumpable_behavior(was);
    }
    drop(switching);
    // The child has exec'd or exited; `args` is ours again.
    let (failed_step, failed_index, errno) = unsafe {
        // SAFETY: the child no longer runs in this memory; volatile reads because the compiler
        // cannot see the child's writes.
        (
            std::ptr::read_volatile(&args.failed_step),
            std::ptr::read_volatile(&args.failed_index),
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
        let step = match failed_step {
            STEP_SETPGID => ChildStep::ProcessGroup,
            STEP_DUP2 => ChildStep::Stdio,
            STEP_CHDIR => ChildStep::Chdir,
            STEP_PDEATHSIG => ChildStep::ParentDeathSignal,
            STEP_CGROUP => ChildStep::Cgroup,
            STEP_KEEP => ChildStep::KeepFds,
            STEP_RLIMIT => match setup.limits.get(failed_index as usize) {
                Some(&(r, _, _)) => ChildStep::Limit(r),
                None => return Err(err),
            },
            STEP_NICE => ChildStep::Nice,
            STEP_OOM => ChildStep::OomScoreAdj,
            STEP_SETGROUPS => ChildStep::Groups,
            STEP_SETGID => ChildStep::Gid,
            STEP_SETUID => ChildStep::Uid,
            STEP_UNSHARE => ChildStep::Unshare,
            STEP_AFFINITY => ChildStep::Affinity,
            _ => return Err(err),
        };
        return Err(io::Error::new(err.kind(), StepFailed { step, errno }));
    }
    CHILD_STACKS.with(|s| s.set(Some(stack)));
    super::orphans::hold(&mut super::orphans::held(), pid as u32);
    drop(gate);
    Ok(PidFd::from_held(pidfd, pid as u32))
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

const CPU_SET_SIZE: usize = std::mem::size_of::<libc::cpu_set_t>();

fn empty_cpu_set() -> libc::cpu_set_t {
    // SAFETY: `cpu_set_t` is a plain bit array, valid when zeroed (no CPU).
    unsafe { std::mem::zeroed() }
}

/// Pins the calling thread to the CPU it runs on, for a clone, and saves its mask in `own`
/// to take back after. `false` (nothing changed) if the CPU or the mask cannot be had.
///
/// The kernel places a new task on the CPU it finds idlest, by recent load. On a busy
/// machine that is often one where the task then waits out another's time slice, about
/// 4 ms, while the spawning thread's own CPU is free as soon as the vfork-style clone
/// suspends it: under a busy loop on each of two cores, the crash loop's restart gap went
/// from 3.0 ms to 0.72 ms (median), cbase's being 0.59 ms.
fn pin_to_this_cpu(own: &mut libc::cpu_set_t) -> bool {
    // SAFETY: plain syscalls on this thread, with a `cpu_set_t` of the size given.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 || libc::sched_getaffinity(0, CPU_SET_SIZE, own) != 0 {
            return false;
        }
        let mut one = empty_cpu_set();
        libc::CPU_SET(cpu as usize, &mut one);
        libc::sched_setaffinity(0, CPU_SET_SIZE, &one) == 0
    }
}

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
        let fail = |a: &mut ChildArgs, step: c_int| -> ! {
            a.errno = *libc::__errno_location();
            a.failed_step = step;
            libc::_exit(127)
        };
        // The spawning thread's mask, before anything else: the pin was for the start only.
        if !a.affinity.is_null()
            && libc::syscall(libc::SYS_sched_setaffinity, 0, CPU_SET_SIZE, a.affinity) != 0
        {
            fail(a, STEP_AFFINITY);
        }
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
        // Before any change to an fd: until then the table is the host's own. The copy
        // holds only the fds below `unshare_below` (the kernel copies no more when the range
        // closed reaches the last fd).
        if a.unshare_below > 0
            && libc::syscall(
                libc::SYS_close_range,
                a.unshare_below as u32,
                u32::MAX,
                a.unshare_flags,
            ) != 0
        {
            fail(a, STEP_UNSHARE);
        }
        // Every call below is a plain system call, made through `syscall` where the libc
        // wrapper does more: glibc's setuid family signals every thread of the process to
        // change theirs too, and until exec the threads it would find are the host's.
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
        // What needs the host's privileges (raising a hard limit, a lower nice value or OOM
        // score) comes before the ids change; the fds are in place before a limit on open
        // files could get in their way.
        if a.umask >= 0 {
            libc::syscall(libc::SYS_umask, a.umask as libc::c_uint);
        }
        for i in 0..a.limits_len as usize {
            let (resource, soft, hard) = a.limits[i];
            let limit = libc::rlimit64 {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::syscall(
                libc::SYS_prlimit64,
                0,
                resource,
                &limit as *const libc::rlimit64,
                std::ptr::null_mut::<libc::rlimit64>(),
            ) != 0
            {
                a.failed_index = i as c_int;
                fail(a, STEP_RLIMIT);
            }
        }
        if a.set_nice != 0
            && libc::syscall(libc::SYS_setpriority, libc::PRIO_PROCESS, 0, a.nice) != 0
        {
            fail(a, STEP_NICE);
        }
        if a.oom_len > 0 {
            // This child was made with CLONE_VFORK, so the kernel changes its score only,
            // not that of the host whose memory it shares.
            let fd = libc::open(OOM_SCORE_ADJ.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                fail(a, STEP_OOM);
            }
            let len = a.oom_len as usize;
            if libc::write(fd, a.oom.as_ptr().cast(), len) != len as isize {
                fail(a, STEP_OOM);
            }
            libc::close(fd);
        }
        if a.switch_ids != 0 {
            if libc::syscall(libc::SYS_setgroups, a.groups_len, a.groups) != 0 {
                fail(a, STEP_SETGROUPS);
            }
            if libc::syscall(libc::SYS_setresgid, a.gid, a.gid, a.gid) != 0 {
                fail(a, STEP_SETGID);
            }
            if libc::syscall(libc::SYS_setresuid, a.uid, a.uid, a.uid) != 0 {
                fail(a, STEP_SETUID);
            }
        }
        // As the service's user: a directory it may not enter is its error, not ours.
        if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
            fail(a, STEP_CHDIR);
        }
        if a.detached != 0 {
            libc::execve(a.path, a.argv, a.envp);
            fail(a, STEP_EXEC)
        }
        // After the ids change, which clears the parent-death signal.
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

/// Why an `execve` failed, in the terms a user can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExecFailure {
    /// `ENOENT` for a program that exists: its interpreter (`#!`) is missing.
    NoInterpreter,
    /// `ENOEXEC`: not an executable format.
    NotExecutable,
    PermissionDenied,
    /// `E2BIG`: the argument list or environment is too long.
    TooBig,
    TooManyFiles,
    ProcessLimit,
    OutOfMemory,
    Other,
}

/// Classifies an error [`spawn`] returned.
pub(crate) fn exec_failure(e: &io::Error) -> ExecFailure {
    match e.raw_os_error() {
        Some(libc::ENOENT) => ExecFailure::NoInterpreter,
        Some(libc::ENOEXEC) => ExecFailure::NotExecutable,
        Some(libc::EACCES) => ExecFailure::PermissionDenied,
        Some(libc::E2BIG) => ExecFailure::TooBig,
        Some(libc::EMFILE) | Some(libc::ENFILE) => ExecFailure::TooManyFiles,
        Some(libc::EAGAIN) => ExecFailure::ProcessLimit,
        Some(libc::ENOMEM) => ExecFailure::OutOfMemory,
        _ => ExecFailure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::user::{Ids, can_switch_ids};
    use super::*;
    use std::time::Duration;

    thread_local! {
        /// This thread's children ask `close_range` for flags the kernel refuses.
        pub(super) static REFUSE_UNSHARE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Runs the test `test` alone in a process of its own (through `wrapper`, a command
    /// that runs its arguments, if any) with the variable `inner` set, and checks it passed:
    /// true in the outer run, which then has nothing left to do; false in the inner one.
    fn in_own_process(test: &str, inner: &str, wrapper: &[&str]) -> bool {
        if std::env::var_os(inner).is_some() {
            return false;
        }
        let exe = std::env::current_exe().unwrap();
        let mut command = match wrapper {
            [] => std::process::Command::new(&exe),
            [program, args @ ..] => {
                let mut c = std::process::Command::new(program);
                c.args(args).arg(&exe);
                c
            }
        };
        let out = command
            .args(["--exact", test, "--test-threads=1"])
            .env(inner, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        true
    }

    /// Runs `/bin/sh -c script` with `setup`, its output to /dev/null; waits for it.
    fn run(script: &CStr, setup: &ChildSetup) -> io::Result<()> {
        let argv = [c"sh", c"-c", script];
        let null = devnull()?;
        let fd = spawn(&SpawnRequest {
            program: Path::new("/bin/sh"),
            argv: &argv,
            env: &[],
            cwd: None,
            stdout: null,
            stderr: null,
            cgroup: None,
            join: Vec::new(),
            kind: ChildKind::Service,
            keep: &[],
            setup,
        })?;
        assert!(fd.wait_exit(Duration::from_secs(10))?, "the child exits");
        fd.reap()?;
        Ok(())
    }

    fn nobody() -> ChildSetup {
        ChildSetup {
            ids: Some(Ids {
                uid: 65534,
                gid: 65534,
                groups: vec![65534],
            }),
            ..ChildSetup::NONE
        }
    }

    #[test]
    fn a_child_that_takes_other_ids_leaves_the_host_as_dumpable_as_it_was() {
        if !can_switch_ids() {
            eprintln!("skipped: this process may not switch ids");
            return;
        }
        let before = rustix::process::dumpable_behavior().unwrap();
        run(c"exit 0", &nobody()).unwrap();
        assert_eq!(rustix::process::dumpable_behavior().unwrap(), before);
    }

    #[test]
    fn a_step_the_kernel_refuses_comes_back_named_with_its_errno() {
        let too_many = ChildSetup {
            limits: vec![
                (Resource::CoreSize, 0, 0),
                (Resource::OpenFiles, u64::MAX - 1, u64::MAX - 1),
            ],
            ..ChildSetup::NONE
        };
        let err = run(c"exit 0", &too_many).unwrap_err();
        let failed = failed_step(&err).expect("a step failed");
        assert_eq!(
            failed.step,
            ChildStep::Limit(Resource::OpenFiles),
            "the second"
        );
        assert_eq!(failed.errno, libc::EPERM);
        assert_eq!(
            err.to_string(),
            "setrlimit nofile in the new process: Operation not permitted (os error 1)"
        );
    }

    /// A host that may not switch ids, asking a child to: the child says which call failed.
    /// As root, run again without CAP_SETUID and CAP_SETGID.
    #[test]
    fn a_child_that_may_not_switch_ids_says_setgroups_failed() {
        const INNER: &str = "SHEEPDOG_TEST_SPAWN_NO_SETUID";
        if can_switch_ids() {
            if std::env::var_os(INNER).is_some() {
                panic!("setpriv did not drop CAP_SETUID");
            }
            in_own_process(
                "sys::linux::spawn::tests::a_child_that_may_not_switch_ids_says_setgroups_failed",
                INNER,
                &["setpriv", "--bounding-set=-setuid,-setgid"],
            );
            return;
        }
        let err = run(c"exit 0", &nobody()).unwrap_err();
        let failed = failed_step(&err).expect("a step failed");
        assert_eq!(failed.step, ChildStep::Groups);
        assert_eq!(failed.errno, libc::EPERM);
    }

    /// A kernel that cannot give a child a table of only some fds (before 5.9): the child's
    /// `close_range` fails, and the spawn is made again the old way, the child copying the
    /// whole table, with its output where it was asked. The process then spawns the old way
    /// from the start; hence a process of its own.
    #[test]
    fn a_kernel_without_close_range_unshare_falls_back_to_copying_the_table() {
        if in_own_process(
            "sys::linux::spawn::tests::a_kernel_without_close_range_unshare_falls_back_to_copying_the_table",
            "SHEEPDOG_TEST_SPAWN_NO_UNSHARE",
            &[],
        ) {
            return;
        }
        reserve_spawn_slots().unwrap();
        let slotted = SLOTS.with(|s| {
            let slots = s.take();
            let some = slots.is_some();
            s.set(slots);
            some
        });
        assert!(slotted, "this thread spawns through its slots");
        REFUSE_UNSHARE.with(|r| r.set(true));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let out = std::fs::File::create(&path).unwrap();
        let argv = [c"sh", c"-c", c"echo fell back; ls /proc/self/fd"];
        let fd = spawn(&SpawnRequest {
            program: Path::new("/bin/sh"),
            argv: &argv,
            env: &[],
            cwd: None,
            stdout: out.as_fd(),
            stderr: out.as_fd(),
            cgroup: None,
            join: Vec::new(),
            kind: ChildKind::Service,
            keep: &[],
            setup: &ChildSetup::NONE,
        })
        .expect("the spawn is made again without CLOSE_RANGE_UNSHARE");
        assert!(
            fd.wait_exit(Duration::from_secs(10)).unwrap(),
            "the child exits"
        );
        fd.reap().unwrap();
        assert!(
            NO_UNSHARE.load(std::sync::atomic::Ordering::Relaxed),
            "the process spawns the old way from now on"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("fell back"), "{text}");
        // stdin, stdout, stderr and the directory `ls` reads: nothing of this process's.
        let fds: Vec<&str> = lines.collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "{text}");
    }
}
