//! The `sd_notify` socket of a run (`NOTIFY_SOCKET`), and who may speak on it.
//!
//! The socket is abstract, so no file permission guards it, and `/proc/net/unix` lists its
//! name to everyone: a random name only keeps two supervisors (or runs) from colliding. What
//! guards it is the sender's credentials, which the kernel attaches to each datagram
//! (`SCM_CREDENTIALS`, and a pidfd with `SCM_PIDFD`). As systemd's `NotifyAccess=all`, a
//! datagram counts only if it comes from a process of the run:
//!
//! - under cgroup containment, a process in the run's cgroup (by the pidfd's cgroup id, which
//!   the kernel keeps even after the sender exited; else by `/proc/<pid>/cgroup`);
//! - otherwise, a member of the run's process group, or a process that left it and is
//!   provably the run's by its sealed marker.
//!
//! The containment tier answers that ([`Processes::speaks_for`]); this module makes the
//! socket and reads what a datagram says.
//!
//! [`Processes::speaks_for`]: crate::containment::Processes::speaks_for
//!
//! `systemd-notify` sends on behalf of its parent when it may (as root), so the credentials
//! name the service's shell; unprivileged, it sends its own and then waits, with
//! `BARRIER=1`, until the datagram was read: either way the process named is alive when the
//! datagram is checked. A sender with `CAP_SYS_ADMIN` can name any process; the check does
//! not hold against one.

use crate::sys;

/// A fresh socket for a run, and the name to put in its `NOTIFY_SOCKET` (after an `@`).
pub(crate) fn bind() -> std::io::Result<(sys::NotifySocket, String)> {
    let mut nonce = [0u8; 16];
    sys::random_bytes(&mut nonce)?;
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("sheepdog/{hex}");
    Ok((sys::NotifySocket::bind_abstract(name.as_bytes())?, name))
}

/// What one datagram says (the assignments sheepdog acts on).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) ready: bool,
    pub(crate) watchdog: bool,
    pub(crate) restart_reset: bool,
    pub(crate) status: Option<String>,
}

/// Parses a datagram: newline-separated `KEY=value` assignments.
pub(crate) fn parse(datagram: &[u8]) -> Message {
    let mut m = Message::default();
    for line in String::from_utf8_lossy(datagram).lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => m.ready = true,
            Some(("WATCHDOG", "1")) => m.watchdog = true,
            Some(("STATUS", text)) => m.status = Some(text.to_string()),
            Some(("RESTART_RESET", "1")) => m.restart_reset = true,
            _ => {}
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_assignments_it_acts_on() {
        let m = parse(b"STATUS=warming up\nREADY=1\nMAINPID=4\nWATCHDOG=1\nRESTART_RESET=1");
        assert_eq!(
            m,
            Message {
                ready: true,
                watchdog: true,
                restart_reset: true,
                status: Some("warming up".into()),
            }
        );
        assert_eq!(parse(b"READY=0\nBARRIER=1"), Message::default());
    }

    #[test]
    fn names_are_unguessable_and_distinct() {
        let (_a, a) = bind().unwrap();
        let (_b, b) = bind().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), "sheepdog/".len() + 32);
    }
}
