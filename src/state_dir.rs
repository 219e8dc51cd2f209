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
//!
//! While the supervisor runs, the path stays its own: its services' cgroups and markers are
//! named after it, so a second supervisor on the same path would take them for a dead
//! host's leftovers. If the directory (or its lock file) is deleted or replaced, the
//! supervisor notices at once (inotify) and takes the lock again at the path, re-creating
//! the directory if it is gone, so that a second `open` still gets `StateDirLocked`. The
//! registry is not re-created: the store refuses every later change.

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
    path: PathBuf,
    /// `path` with every symbolic link resolved: SQLite, which refuses to follow one, opens
    /// the registry by this path.
    real: PathBuf,
    modes: Modes,
    /// The directory, held open (and watched through it).
    dir: OwnedFd,
    logs: LogDir,
    lock: File,
    /// Locks taken again at the path after the directory or its lock file went away, with
    /// the directories they are in.
    relocked: Vec<(OwnedFd, File)>,
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
            .map_err(|e| match e {
                e if sys::is_link_refused(&e) => refuse(format!(
                    "log directory '{}' is not a directory (a symbolic link?); refusing to use it",
                    logs_path.display()
                )),
                _ => io_error(
                    format!("cannot create log directory '{}'", logs_path.display()),
                    e,
                ),
            })?;
        check_dir(&logs, "log directory", &logs_path, modes.logs)?;
        tighten_logs(&logs, &logs_path, modes.log_file)?;

        let lock = open_lock(&dir, path)?;

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
                    ));
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
            path: path.to_path_buf(),
            real,
            modes,
            dir,
            logs: LogDir::new(logs, logs_path, modes.log_file),
            lock,
            relocked: Vec::new(),
        })
    }

    /// The log directory.
    pub(crate) fn logs(&self) -> &LogDir {
        &self.logs
    }

    /// Another fd of the directory held, for the control socket made in it.
    pub(crate) fn try_clone_dir(&self) -> io::Result<OwnedFd> {
        self.dir.try_clone()
    }

    /// The registry's path, without a symbolic link.
    pub(crate) fn db_path(&self) -> PathBuf {
        self.real.join(DB_FILE)
    }

    /// The lock file (to lock, and to hold while the supervisor runs).
    pub(crate) fn lock_file(&self) -> &File {
        &self.lock
    }

    /// The lock file's path.
    pub(crate) fn lock_path(&self) -> PathBuf {
        self.path.join(LOCK_FILE)
    }

    /// A watch on the directory (the newest, after a `relock`): it fires when the directory,
    /// the registry or the lock file is deleted, moved or replaced.
    pub(crate) fn watch(&self) -> io::Result<sys::DirWatch> {
        let dir = self.relocked.last().map_or(&self.dir, |(dir, _)| dir);
        sys::DirWatch::new(dir)
    }

    /// Whether the directory held (the newest, after a `relock`) is no longer the one at the
    /// path: deleted, moved away or replaced.
    pub(crate) fn dir_gone(&self) -> bool {
        let dir = self.relocked.last().map_or(&self.dir, |(dir, _)| dir);
        !sys::fstat(dir)
            .ok()
            .zip(sys::lstat(&self.path).ok())
            .is_some_and(|(held, now)| held.nlink > 0 && held.same_file(&now))
    }

    /// Makes sure this supervisor holds the lock of the state directory's path: if the lock
    /// file there is no longer the one held (the directory or the file was deleted or
    /// replaced), opens the directory at the path (creating it, private, if it is gone) and
    /// takes its lock. Returns whether it took a new lock.
    ///
    /// # Errors
    ///
    /// `StateDirLocked` if another supervisor took the path meanwhile; `Store` or `Io` if the
    /// directory at the path cannot be used.
    pub(crate) fn relock(&mut self) -> Result<bool> {
        let held = self.relocked.last().map_or(&self.lock, |(_, lock)| lock);
        let still = sys::fstat(held)
            .ok()
            .zip(sys::lstat(&self.lock_path()).ok())
            .is_some_and(|(held, now)| held.nlink > 0 && held.same_file(&now));
        if still {
            return Ok(false);
        }
        let dir = open_state_dir(&self.path, self.modes.dir)?;
        check_dir(&dir, "state directory", &self.path, self.modes.dir)?;
        let lock = open_lock(&dir, &self.path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::new(
                    ErrorKind::StateDirLocked,
                    format!(
                        "state directory '{}' was taken by another supervisor",
                        self.path.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_error(
                    format!("cannot lock state directory '{}'", self.path.display()),
                    e,
                ));
            }
        }
        self.relocked.push((dir, lock));
        Ok(true)
    }
}

/// Gives the log files of ours in `logs` (rotated ones included) exactly `mode`. Links and
/// other users' files are left as they are: they are never opened.
fn tighten_logs(logs: &OwnedFd, shown: &Path, mode: u32) -> Result<()> {
    let names = sys::list_dir(logs).map_err(|e| {
        io_error(
            format!("cannot read log directory '{}'", shown.display()),
            e,
        )
    })?;
    for name in names.iter().filter_map(|n| n.to_str()) {
        let Ok(st) = sys::stat_at(logs, name) else {
            continue;
        };
        if st.is_file() && st.uid == sys::effective_uid() && st.permissions() != mode {
            sys::chmod_at(logs, name, mode).map_err(|e| {
                io_error(
                    format!("cannot make log '{}' private", shown.join(name).display()),
                    e,
                )
            })?;
        }
    }
    Ok(())
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
                    ));
                }
                _ => false,
            }
        }
        Err(e) => {
            return Err(io_error(
                format!("cannot read state directory '{shown}'"),
                e,
            ));
        }
    };
    // Not following a link we did not see: one swapped in since is refused.
    sys::open_dir(path, link).map_err(|e| match e {
        e if sys::is_link_refused(&e) => refuse(format!(
            "state directory '{shown}' is not a directory (a symbolic link?); refusing to use it"
        )),
        _ => io_error(format!("cannot open state directory '{shown}'"), e),
    })
}

/// Opens (creating it if missing) the lock file of the state directory `dir`, found at
/// `path`: a private regular file of ours.
fn open_lock(dir: &OwnedFd, path: &Path) -> Result<File> {
    let lock_path = path.join(LOCK_FILE);
    let lock = sys::open_file_at(
        dir,
        LOCK_FILE,
        sys::Access::ReadWrite {
            create: Some(0o600),
        },
    )
    .map_err(|e| match e {
        e if sys::is_link_refused(&e) => refuse(format!(
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
    Ok(lock)
}
