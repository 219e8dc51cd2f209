//! Users and groups: the passwd and group databases (through NSS: `getpwnam_r`,
//! `getgrnam_r`, `getgrouplist`), and whether this process may take another identity.
//!
//! NSS may consult a network source (LDAP, sssd), so these calls are made when an operator
//! starts a service, never on the restart path and never in a child.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::unix::ffi::OsStringExt;

/// A passwd entry: what a service run as this user takes from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Passwd {
    pub(crate) name: CString,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: OsString,
    pub(crate) shell: OsString,
}

/// The ids a process runs with: uid, primary gid, supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ids {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
}

/// The buffer size NSS asks for, with a floor and a ceiling: entries with thousands of
/// members need more, and `ERANGE` doubles it up to the ceiling.
fn buffer_size(name: libc::c_int) -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(name) };
    usize::try_from(n).unwrap_or(1024).clamp(1024, 1 << 16)
}
const BUFFER_MAX: usize = 1 << 22;

/// Calls a `get*_r` function with a growing buffer. `call` gets the buffer and returns the
/// function's result code (0, or an errno) and whether an entry was found.
fn with_buffer<T>(
    start: usize,
    mut call: impl FnMut(&mut Vec<libc::c_char>) -> (libc::c_int, Option<T>),
) -> io::Result<Option<T>> {
    let mut buf = vec![0 as libc::c_char; start];
    loop {
        match call(&mut buf) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if buf.len() < BUFFER_MAX => {
                let len = buf.len() * 2;
                buf.resize(len, 0);
            }
            // "Not found" comes back as 0 with no entry, or on some NSS modules as one of
            // these.
            (libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM, _) => return Ok(None),
            (errno, _) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

fn passwd_from(pw: &libc::passwd) -> Passwd {
    // SAFETY: a passwd filled by getpw*_r points into the buffer it was given, which the
    // caller still holds; each field is a NUL-terminated string (or null).
    let text = |p: *const libc::c_char| -> Vec<u8> {
        if p.is_null() {
            Vec::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_bytes().to_vec()
        }
    };
    Passwd {
        name: CString::new(text(pw.pw_name)).expect("a C string has no inner NUL"),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: OsString::from_vec(text(pw.pw_dir)),
        shell: OsString::from_vec(text(pw.pw_shell)),
    }
}

/// The passwd entry of the user called `name`, if there is one.
pub(crate) fn passwd_by_name(name: &str) -> io::Result<Option<Passwd>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    with_buffer(buffer_size(libc::_SC_GETPW_R_SIZE_MAX), |buf| {
        // SAFETY: all-zero is a valid passwd (null pointers, zero ids).
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and the buffer's length is given.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        (rc, (!found.is_null()).then(|| passwd_from(&pw)))
    })
}

/// The passwd entry of `uid`, if there is one.
pub(crate) fn passwd_by_uid(uid: u32) -> io::Result<Option<Passwd>> {
    with_buffer(buffer_size(libc::_SC_GETPW_R_SIZE_MAX), |buf| {
        // SAFETY: as in `passwd_by_name`.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: as in `passwd_by_name`.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
        (rc, (!found.is_null()).then(|| passwd_from(&pw)))
    })
}

/// The gid of the group called `name`, if there is one.
pub(crate) fn group_by_name(name: &str) -> io::Result<Option<u32>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    with_buffer(buffer_size(libc::_SC_GETGR_R_SIZE_MAX), |buf| {
        // SAFETY: all-zero is a valid group (null pointers, zero id).
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and the buffer's length is given.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        (rc, (!found.is_null()).then_some(gr.gr_gid))
    })
}

/// The groups `user` belongs to, with `gid` among them (what `initgroups` sets).
pub(crate) fn group_list(user: &CStr, gid: u32) -> io::Result<Vec<u32>> {
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many and
        // sets `n` to the number it needs.
        let rc = unsafe { libc::getgrouplist(user.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return Ok(groups);
        }
        if n <= asked {
            // -1 without a larger count: glibc's way of saying the lookup failed.
            n = asked * 2;
        }
        if n > 1 << 16 {
            return Err(io::Error::other("more than 65536 groups"));
        }
    }
}

/// The ids this process runs with (effective uid and gid, supplementary groups).
pub(crate) fn current_ids() -> Ids {
    Ids {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        groups: rustix::process::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default(),
    }
}

/// Whether this process may switch a child to other ids: it has `CAP_SETUID` and
/// `CAP_SETGID` in its effective set (root has them unless they were dropped).
pub(crate) fn can_switch_ids() -> bool {
    use rustix::thread::{CapabilitySet, capabilities};
    capabilities(None).is_ok_and(|c| {
        c.effective
            .contains(CapabilitySet::SETUID | CapabilitySet::SETGID)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_nobody_are_found_by_name_and_id() {
        let root = passwd_by_name("root")
            .unwrap()
            .expect("every host has root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(passwd_by_uid(0).unwrap().unwrap().name.as_bytes(), b"root");
        assert!(passwd_by_name("no-such-user-here").unwrap().is_none());
        assert!(passwd_by_name("nul\0inside").unwrap().is_none());
        assert!(group_by_name("no-such-group-here").unwrap().is_none());
        assert_eq!(group_by_name("root").unwrap(), Some(0));
        let groups = group_list(&root.name, 0).unwrap();
        assert!(groups.contains(&0), "{groups:?}");
        let me = current_ids();
        assert_eq!(me.uid, rustix::process::geteuid().as_raw());
    }
}
