//! The log directory: every log file is opened, renamed and removed relative to it, never
//! through a symbolic link.

use super::{log_name, sink};
use crate::sys;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

/// The log directory, held open: every log file is opened relative to it, never through a
/// symbolic link, so a link planted in it cannot redirect a write or a read; renames and
/// removals go through it too.
#[derive(Clone, Debug)]
pub(crate) struct LogDir {
    fd: Arc<OwnedFd>,
    path: Arc<std::path::Path>,
    /// The permission bits of log files: 0o600, or 0o640 when the group may read logs.
    mode: u32,
}

impl LogDir {
    pub(crate) fn new(fd: OwnedFd, path: PathBuf, mode: u32) -> LogDir {
        LogDir {
            fd: Arc::new(fd),
            path: path.into(),
            mode,
        }
    }

    /// Opens `path` as a log directory of private files (for tests of the log modules).
    #[cfg(test)]
    pub(crate) fn open(path: &std::path::Path) -> LogDir {
        LogDir::new(
            sys::open_dir(path, false).expect("a directory"),
            path.to_path_buf(),
            0o600,
        )
    }

    /// The path of `name` in it, for messages and for callers who want a path.
    pub(crate) fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` for reading.
    pub(crate) fn open_read(&self, name: &str) -> std::io::Result<std::fs::File> {
        sys::open_file_at(&*self.fd, name, sys::Access::Read)
    }

    /// `stat` of `name`, not following a symbolic link.
    pub(crate) fn stat(&self, name: &str) -> std::io::Result<sys::FileStat> {
        sys::stat_at(&*self.fd, name)
    }

    /// Opens `name` for appending (and reading), creating it private if missing. Refused, with
    /// an error that says why: a symbolic link (never followed), anything but a regular file,
    /// a file of another user, and a file with other hard links (a link to a file elsewhere).
    /// An existing file gets the directory's file mode.
    pub(crate) fn open_append(&self, name: &str) -> std::io::Result<std::fs::File> {
        use std::io::{Error, ErrorKind};
        let file = sys::open_file_at(&*self.fd, name, sys::Access::Append { create: self.mode })
            .map_err(|e| match e {
                e if sys::is_link_refused(&e) => Error::new(
                    ErrorKind::InvalidInput,
                    "it is a symbolic link, which is never followed",
                ),
                _ => e,
            })?;
        let st = sys::fstat(&file)?;
        let refuse = |why: String| Err(Error::new(ErrorKind::InvalidInput, why));
        if !st.is_file() {
            return refuse("it is not a regular file".into());
        }
        if st.uid != sys::effective_uid() {
            return refuse(format!("it is owned by uid {}", st.uid));
        }
        if st.nlink != 1 {
            return refuse(format!("it has {} hard links", st.nlink));
        }
        if st.permissions() != self.mode {
            sys::chmod_fd(&file, self.mode)?;
        }
        Ok(file)
    }

    /// Renames `from` to `to`.
    pub(crate) fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        sys::rename_at(&*self.fd, from, to)
    }

    /// Removes `name`.
    pub(crate) fn remove(&self, name: &str) -> std::io::Result<()> {
        sys::unlink_at(&*self.fd, name)
    }

    /// The names of the files in it.
    fn names(&self) -> std::io::Result<Vec<std::ffi::OsString>> {
        sys::list_dir(&*self.fd)
    }
}

/// A log file and its rotated files (`name`, `name.1`, …), for readers.
#[derive(Clone, Debug)]
pub(crate) struct LogFile {
    pub(crate) dir: LogDir,
    pub(crate) name: String,
}

impl LogFile {
    /// Opens rotated file `i` (0: the live file) for reading.
    pub(crate) fn open(&self, i: u32) -> std::io::Result<std::fs::File> {
        self.dir.open_read(&sink::rotated_name(&self.name, i))
    }

    /// The inode of rotated file `i`.
    pub(crate) fn ino(&self, i: u32) -> std::io::Result<u64> {
        Ok(self.dir.stat(&sink::rotated_name(&self.name, i))?.ino)
    }
}

/// Removes a service's log files: the live ones and every rotated one.
pub(crate) fn remove_logs(log_dir: &LogDir, name: &str) {
    let Ok(files) = log_dir.names() else {
        return;
    };
    let prefixes = [log_name(name, false), log_name(name, true)];
    for file in files {
        let Some(file) = file.to_str() else { continue };
        let ours = prefixes.iter().any(|p| {
            file == p
                || file
                    .strip_prefix(p.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        if ours && let Err(e) = log_dir.remove(file) {
            log::warn!(
                "service '{name}': cannot remove log '{}': {e}",
                log_dir.path_of(file).display()
            );
        }
    }
}
