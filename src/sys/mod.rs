//! What the supervisor needs from the operating system, picked once per platform.
//!
//! Each platform module provides:
//!
//! - `spawn(&mut Command) -> io::Result<(Child, OwnedFd)>`: start a child in its own process
//!   group with stdin, signal dispositions and the fd table made clean, dying with the host
//!   (PDEATHSIG) where the platform can, and return it with a pollable exit handle (a pidfd);
//! - `reap(&OwnedFd) -> io::Result<Option<RawExit>>`: collect the exit of that child only,
//!   never `waitpid(-1)`, which would take the host's own children;
//! - `signal_group(&OwnedFd, pgid, Signal) -> io::Result<()>` and `group_alive(&OwnedFd, pgid)`;
//! - `Poller`: one readiness wait over exit handles and a waker, with a deadline;
//! - process identity helpers (`process_start_time`, `boot_id`, `live_group_members`);
//! - the guardian's entry point (`hook`): an ELF constructor that runs before `main` and,
//!   in a guardian, hands over to `crate::guardian::main` (the one call out of `sys`), and
//!   the proof that it is in the main executable (`hook_in_main_executable`).
//! - the state directory's file operations, relative to a directory held open and never
//!   through a symbolic link (`open_file_at`, `stat_at`, `rename_at`, `unlink_at`, …), and
//!   `DirWatch`, which notices the directory or a file in it deleted, moved or replaced;
//! - the control socket (`socket.rs`): a listening Unix socket made in a held directory
//!   (`listen_at`), the credentials of a connected peer (`peer_credentials`), a
//!   connection through a directory opened only to reach into it (`open_dir_path`,
//!   `connect_at`), and the pid namespace that gives a registered pid its meaning
//!   (`pid_namespace`).
//!
//! This is the only module with `unsafe` code; each block says why it is sound.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
#[cfg(target_os = "linux")]
mod socket;
#[cfg(target_os = "linux")]
pub(crate) use socket::*;
#[cfg(target_os = "linux")]
mod hook;
#[cfg(target_os = "linux")]
pub(crate) use hook::*;

#[cfg(all(unix, not(target_os = "linux")))]
compile_error!(
    "sheepdog supports Linux only for now: its exit detection uses pidfd and epoll; \
     a kqueue-based fallback for other Unix systems is planned"
);
