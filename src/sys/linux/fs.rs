//! File operations of the state directory: relative to a directory held open, never through
//! a symbolic link.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

/// The inode number of an open file: for a cgroup v2 directory, the cgroup's id.
pub(crate) fn inode_of(fd: &impl AsFd) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_ino)
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
    /// Write only, never created (a cgroup's `cgroup.kill`).
    Write,
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
        Access::Write => (OFlags::WRONLY, 0),
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

/// Removes the empty directory `name` from `dir`.
pub(crate) fn remove_dir_at(dir: &impl AsFd, name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(
        dir,
        name,
        rustix::fs::AtFlags::REMOVEDIR,
    )?)
}

/// Opens the directory at `path` as a handle for `*_at` calls only (`O_PATH`), following
/// symbolic links: for kernel file systems (cgroupfs) that no other user can write.
pub(crate) fn open_path(path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` in `dir` for reading (and for `CLONE_INTO_CGROUP`), following
/// a symbolic link: for kernel file systems (cgroupfs) that no other user can write.
pub(crate) fn open_dir_in(dir: &impl AsFd, name: &str) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Whether an error from an open means the path was a symbolic link (or one was in the way),
/// which `O_NOFOLLOW` refused.
pub(crate) fn is_link_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
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
