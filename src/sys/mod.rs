//! What the supervisor needs from the operating system, picked once per platform.
//!
//! This is the only module that calls the OS directly (rustix, libc) and the only one with
//! `unsafe` code; each block says why it is sound. It imports nothing of the crate but the
//! leaf value type it maps ([`Signal`](crate::signal::Signal)).
//!
//! Each platform module provides:
//!
//! - **spawn** (`spawn`, `SpawnRequest`, `ChildKind`, `pipe`, `reserve_spawn_slots`): start
//!   a child in its own
//!   process group (or session) with stdin, signal dispositions and the fd table made clean,
//!   straight into a cgroup where asked, dying with the spawning thread (PDEATHSIG) where the
//!   platform can, and return it as a `PidFd`; before exec the child sets what a
//!   `ChildSetup` asks (umask, resource limits, nice, OOM score, then its uid, gid and
//!   groups), each with one raw system call, and a step that fails comes back as a
//!   `StepFailed` naming it;
//! - **pidfd** (`PidFd`): signal a process or the group it leads, tell whether it lives, and
//!   reap it, and only it: never `waitpid(-1)`, which would take the host's own children;
//! - **poll** (`Poller`, `Waker`, `DirWatch`): one readiness wait over pidfds, sockets and a
//!   waker, with a deadline; a watch that fires when the state directory goes away;
//! - **procfs** (`ProcStat`, `all_processes`, `environ_value`, …): what the processes of the
//!   machine are, for containment without cgroups and for `stats`;
//! - **process** (`real_uid`, `raise_fd_limit`, `become_subreaper`, `random_bytes`, `pid_exists`, …): this
//!   process;
//! - **signal** (`raw_signal`, termination handlers): signal numbers, and the handlers a
//!   foreground host may install;
//! - **notify** (`NotifySocket`): the `sd_notify` datagram socket, with the kernel's
//!   credentials of each sender;
//! - **fs** (`open_file_at`, `stat_at`, `rename_at`, …): the state directory's files, opened
//!   relative to a directory held open and never through a symbolic link;
//! - **socket** (`listen_at`, `peer_credentials`, `connect_at`, `pid_namespace`): the control
//!   socket, made in a directory held open, the kernel's credentials of a connected peer,
//!   and the pid namespace that gives a registered pid its meaning;
//! - **user** (`passwd_by_name`, `group_list`, `can_switch_ids`, …): the passwd and group
//!   databases, and whether this process may give a child other ids;
//! - **orphans** (`OrphanReaper`, `is_pid_one`, `own_process_group`): reaping the orphans
//!   re-parented to a host that is PID 1 or a subreaper, when SIGCHLD says a child exited,
//!   never a child the crate holds a pidfd for (held from before its `clone`);
//! - **inotify** (`Inotify`, `FsEvent`): one instance for every directory watched for
//!   changes, readable in the epoll;
//! - **timerfd** (`WallTimer`): a timer on the wall clock that fires after a suspend and
//!   says when the clock was set, for schedules;
//! - **hook**: what the guardian's re-execution needs: the proof that an ELF constructor is in
//!   the main executable's `.init_array` (`constructor_in_main_executable`), and what a
//!   process taken over before `main` does (`exit_now`, `inherited_fd`, …).

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(all(unix, not(target_os = "linux")))]
compile_error!(
    "sheepdog supports Linux only for now: its exit detection uses pidfd and epoll; \
     a kqueue-based fallback for other Unix systems is planned"
);
