//! The control socket's OS calls: a Unix stream socket made in a directory held open, the
//! credentials of a connected peer, and a connection through a directory held open.
//!
//! The socket is named through `/proc/self/fd/<dir>/<name>`: the very directory opened (no
//! symbolic link or rename on the way can redirect it), and a path short enough for
//! `sun_path` (108 bytes) however deep the directory is.

use super::FileStat;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};

fn in_dir(dir: &impl AsFd, name: &str) -> String {
    format!("/proc/self/fd/{}/{name}", dir.as_fd().as_raw_fd())
}

/// Makes a listening, non-blocking Unix stream socket `name` in `dir`, with permission bits
/// exactly `mode`, and returns it with the socket file's identity (to remove it later only if
/// it is still this one). An older socket file of that name is removed first; anything else
/// there (a symbolic link, a regular file) is refused with `AlreadyExists`.
///
/// Between the bind and the chmod the file has the mode the umask leaves; callers make it
/// in a directory that only its owner may enter.
pub(crate) fn listen_at(
    dir: &impl AsFd,
    name: &str,
    mode: u32,
) -> io::Result<(UnixListener, FileStat)> {
    match super::stat_at(dir, name) {
        Ok(st) if is_socket(&st) => super::unlink_at(dir, name)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something other than a socket has its name",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(in_dir(dir, name))?;
    listener.set_nonblocking(true)?;
    super::chmod_at(dir, name, mode)?;
    let st = super::stat_at(dir, name)?;
    Ok((listener, st))
}

/// Whether `st` describes a socket file.
pub(crate) fn is_socket(st: &FileStat) -> bool {
    st.mode & libc::S_IFMT == libc::S_IFSOCK
}

/// The peer of a connected Unix socket, as the kernel recorded it at `connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
}

/// `SO_PEERCRED` of a connected Unix socket. The pid is 0 for a peer in a pid namespace
/// this one cannot see (rustix's typed call cannot be used: its pid type may not be 0).
pub(crate) fn peer_credentials(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` outlive the call, and `len` is `cred`'s size: the kernel writes
    // at most that many bytes into it.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid.max(0) as u32,
        uid: cred.uid,
    })
}

/// Connects to the socket `name` in `dir`.
pub(crate) fn connect_at(dir: &impl AsFd, name: &str) -> io::Result<UnixStream> {
    UnixStream::connect(in_dir(dir, name))
}

/// The inode of this process's pid namespace (0 if it cannot be read): pids mean the same
/// process only between processes that share it.
pub(crate) fn pid_namespace() -> u64 {
    rustix::fs::stat("/proc/self/ns/pid").map_or(0, |st| st.st_ino)
}

/// Opens the directory at `path` only to name things in it (`O_PATH`): reaching a socket in
/// it needs the right to pass through it, not to list it.
pub(crate) fn open_dir_path(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}
