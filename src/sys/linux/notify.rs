//! The datagram socket a run's `sd_notify` messages come through, with the kernel's
//! credentials of each sender.

use libc::c_int;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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
    pub(crate) pidfd: Option<super::PidFd>,
}

/// A datagram socket in the abstract namespace (`NOTIFY_SOCKET`) that receives each
/// datagram with its sender's credentials (`SO_PASSCRED`, and `SO_PASSPIDFD` where the
/// kernel has it). Non-blocking and close-on-exec.
pub(crate) struct NotifySocket(OwnedFd);

impl NotifySocket {
    pub(crate) fn bind_abstract(name: &[u8]) -> io::Result<NotifySocket> {
        use rustix::net::{self, AddressFamily, SocketFlags, SocketType, sockopt};
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
            sender: creds.map(|(pid, uid)| Credentials {
                pid,
                uid,
                pidfd: pidfd.map(|fd| super::PidFd::from_child(fd, pid)),
            }),
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
