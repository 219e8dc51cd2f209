//! Linux: pidfd for exit notification and signalling, epoll for waiting, `clone3` for
//! spawning, prctl for PDEATHSIG, procfs for what processes are, inotify for the state
//! directory and watched trees, a realtime timerfd for schedules, Unix sockets for the
//! control socket, NSS for users and groups. One file per kernel facility.

mod fs;
mod hook;
mod inotify;
mod notify;
mod orphans;
mod pidfd;
mod poll;
mod process;
mod procfs;
mod signal;
mod socket;
mod spawn;
mod timerfd;
mod user;

pub(crate) use fs::*;
pub(crate) use hook::*;
pub(crate) use inotify::*;
pub(crate) use notify::*;
pub(crate) use orphans::{OrphanReaper, is_pid_one, own_process_group};
pub(crate) use pidfd::*;
pub(crate) use poll::*;
pub(crate) use process::*;
pub(crate) use procfs::*;
pub(crate) use signal::*;
pub(crate) use socket::*;
pub(crate) use spawn::*;
pub(crate) use timerfd::*;
pub(crate) use user::*;
