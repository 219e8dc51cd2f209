//! The state directory: private to its owner, checked before use, and held open.
//!
//! Whoever can write in the state directory (or in `logs/`) can plant a symbolic link there
//! that turns a write of the supervisor's, often root's, into a write anywhere; whoever can
//! read it reads the environment of every service (secrets included) from the registry and
//! everything the services print. So, as ssh's StrictModes does, `open` refuses a state or
//! log directory that another user owns or that its group or others may write, and a state
//! directory reached through a symbolic link that another user owns. What is only too
//! readable (as earlier versions left it under a umask of 022) is tightened: the directory
//! 0700, `logs/` 0700, every file 0600, whatever the umask. With group-readable logs the
//! directory is 0710 (the group passes through it, without listing it), `logs/` 0750 and
//! log files 0640.
//!
//! Every file is then opened relative to the directory's fd without following a symbolic
//! link (SQLite opens its files by path, in this directory that nobody else can write).

use crate::error::{Error, ErrorKind, Result};
use crate::logs::LogDir;
use crate::sys::{self, FileStat};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The registry, in the state directory.
pub(crate) const DB_FILE: &str = "sheepdog.db";
/// SQLite's files beside it.
const DB_COMPANIONS: [&str; 2] = ["sheepdog.db-wal", "sheepdog.db-shm"];
const LOCK_FILE: &str = "lock";
const LOGS_DIR: &str = "logs";

/// The permission bits of the state directory, `logs/` and log files.
#[derive(Clone, Copy, Debug)]
struct Modes {
    dir: u32,
    logs: u32,
    log_file: u32,
}

impl Modes {
    fn new(group_readable_logs: bool) -> Modes {
        if group_readable_logs {
            Modes {
                dir: 0o710,
                logs: 0o750,
                log_file: 0o640,
            }
        } else {
            Modes {
                dir: 0o700,
                logs: 0o700,
                log_file: 0o600,
            }
        }
    }
}

/// An opened, checked state directory and its lock file (not yet locked: see
/// `Supervisor::open`).
pub(crate) struct StateDir {
    /// Its path with every symbolic link resolved: SQLite, which refuses to follow one, opens
    /// the registry by this path.
    real: PathBuf,
    logs: LogDir,
    lock: File,
}

fn refuse(message: String) -> Error {
    Error::new(ErrorKind::Store, message)
}

fn io_error(what: String, e: io::Error) -> Error {
    Error::new(ErrorKind::Io, what).with_source(e)
}

/// Checks that a directory is ours and that nobody else may write it, then gives it exactly
/// `mode`.
fn check_dir(fd: &OwnedFd, what: &str, shown: &Path, mode: u32) -> Result<()> {
    let st = sys::fstat(fd)
        .map_err(|e| io_error(format!("cannot read {what} '{}'", shown.display()), e))?;
    check_owner(&st, what, shown)?;
    let writable = st.permissions() & 0o022;
    if writable != 0 {
        let who = match writable {
            0o020 => "its group",
            0o002 => "others",
            _ => "its group and others",
        };
        return Err(refuse(format!(
            "{what} '{}' can be written by {who} (mode {:04o}); refusing to use it (if what is in it can be trusted, make it private: chmod {:o})",
            shown.display(),
            st.permissions(),
            mode
        )));
    }
    if st.permissions() != mode {
        log::info!(
            "{what} '{}': mode {:04o} made {mode:04o}",
            shown.display(),
            st.permissions()
        );
        sys::chmod_fd(fd, mode).map_err(|e| {
            io_error(
                format!("cannot make {what} '{}' private", shown.display()),
                e,
            )
        })?;
    }
    Ok(())
}

fn check_owner(st: &FileStat, what: &str, shown: &Path) -> Result<()> {
    let me = sys::effective_uid();
    if st.uid != me {
        return Err(refuse(format!(
            "{what} '{}' is owned by uid {}, not by this process's uid {me}; refusing to use it",
            shown.display(),
            st.uid
        )));
    }
    Ok(())
}

impl StateDir {
    /// Creates (0700) or checks the state directory at `path` and its `logs/`, makes what is
    /// in them private, and opens the lock file.
    ///
    /// # Errors
    ///
    /// `Store` for a directory or file that is not safe to use (naming it and why), `Io` if
    /// one cannot be created or read.
    pub(crate) fn open(path: &Path, group_readable_logs: bool) -> Result<StateDir> {
        let modes = Modes::new(group_readable_logs);
        let dir = open_state_dir(path, modes.dir)?;
        check_dir(&dir, "state directory", path, modes.dir)?;

        let logs_path = path.join(LOGS_DIR);
        let logs = sys::make_dir_at(&dir, LOGS_DIR, modes.logs)
            .and_then(|()| sys::open_dir_at(&dir, LOGS_DIR))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => refuse(format!(
                    "log directory '{}' is not a directory (a symbolic link?); refusing to use it",
                    logs_path.display()
                )),
                _ => io_error(
                    format!("cannot create log directory '{}'", logs_path.display()),
                    e,
                ),
            })?;
        check_dir(&logs, "log directory", &logs_path, modes.logs)?;

        let lock_path = path.join(LOCK_FILE);
        let lock = sys::open_file_at(
            &dir,
            LOCK_FILE,
            sys::Access::ReadWrite {
                create: Some(0o600),
            },
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse(format!(
                "lock file '{}' is a symbolic link; refusing to follow it",
                lock_path.display()
            )),
            _ => io_error(
                format!("cannot open lock file '{}'", lock_path.display()),
                e,
            ),
        })?;
        let st = sys::fstat(&lock).map_err(|e| {
            io_error(
                format!("cannot read lock file '{}'", lock_path.display()),
                e,
            )
        })?;
        check_file(&st, "lock file", &lock_path)?;
        if st.permissions() != 0o600 {
            sys::chmod_fd(&lock, 0o600).map_err(|e| {
                io_error(
                    format!("cannot make lock file '{}' private", lock_path.display()),
                    e,
                )
            })?;
        }

        // SQLite opens these by path; it creates its -wal and -shm with the mode of the
        // database file, which `Store` creates 0600.
        for name in std::iter::once(DB_FILE).chain(DB_COMPANIONS) {
            let shown = path.join(name);
            let st = match sys::stat_at(&dir, name) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io_error(
                        format!("cannot read state file '{}'", shown.display()),
                        e,
                    ))
                }
            };
            if st.is_symlink() {
                return Err(refuse(format!(
                    "state file '{}' is a symbolic link; refusing to follow it",
                    shown.display()
                )));
            }
            check_owner(&st, "state file", &shown)?;
            if st.is_file() && st.permissions() != 0o600 {
                sys::chmod_at(&dir, name, 0o600).map_err(|e| {
                    io_error(
                        format!("cannot make state file '{}' private", shown.display()),
                        e,
                    )
                })?;
            }
        }
        let real = sys::fd_path(&dir).map_err(|e| {
            io_error(
                format!("cannot read state directory '{}'", path.display()),
                e,
            )
        })?;
        Ok(StateDir {
            real,
            logs: LogDir::new(logs, logs_path, modes.log_file),
            lock,
        })
    }

    /// The log directory.
    pub(crate) fn logs(&self) -> &LogDir {
        &self.logs
    }

    /// The registry's path, without a symbolic link.
    pub(crate) fn db_path(&self) -> PathBuf {
        self.real.join(DB_FILE)
    }

    /// The lock file (to lock, and to hold while the supervisor runs).
    pub(crate) fn lock_file(&self) -> &File {
        &self.lock
    }
}

/// A regular file of ours.
fn check_file(st: &FileStat, what: &str, shown: &Path) -> Result<()> {
    if !st.is_file() {
        return Err(refuse(format!(
            "{what} '{}' is not a regular file; refusing to use it",
            shown.display()
        )));
    }
    check_owner(st, what, shown)
}

/// Opens the state directory at `path`, creating it (and its parents) if missing. A symbolic
/// link is followed only if this user or root owns it.
fn open_state_dir(path: &Path, mode: u32) -> Result<OwnedFd> {
    let shown = path.display();
    let link = match sys::lstat(path) {
        Ok(st) if st.is_symlink() => {
            if st.uid != sys::effective_uid() && st.uid != 0 {
                return Err(refuse(format!(
                    "state directory '{shown}' is a symbolic link owned by uid {}; refusing to follow it",
                    st.uid
                )));
            }
            true
        }
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| io_error(format!("cannot create state directory '{shown}'"), e))?;
            }
            match std::fs::DirBuilder::new().mode(mode).create(path) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io_error(
                        format!("cannot create state directory '{shown}'"),
                        e,
                    ))
                }
                _ => false,
            }
        }
        Err(e) => {
            return Err(io_error(
                format!("cannot read state directory '{shown}'"),
                e,
            ))
        }
    };
    // Not following a link we did not see: one swapped in since is refused.
    sys::open_dir(path, link).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => refuse(format!(
            "state directory '{shown}' is not a directory (a symbolic link?); refusing to use it"
        )),
        _ => io_error(format!("cannot open state directory '{shown}'"), e),
    })
}
