//! Where running hosts say they are: one small file per serving supervisor in the user's
//! runtime directory, so that `sheepdog hosts` (and a `sheepdog` without `--state`) finds
//! them.
//!
//! The directory is `$SHEEPDOG_RUNTIME_DIR` if set (for containers and tests), else
//! `/run/sheepdog` for root, `$XDG_RUNTIME_DIR/sheepdog` for another user who has one
//! (systemd makes it, private, at login), else `/tmp/sheepdog-<uid>`. It is the
//! user's alone (0700, owned by them, not a symbolic link); one that is not is refused, and
//! the host runs unregistered. Each file, `<pid>-<key>.json` (0600), names the host's pid and
//! the start time of that process, so a file left by a host that died (its pid gone, or
//! reused by another process) is told apart as stale, and removed by the next host that
//! registers. A pid means something only in its pid namespace: registrations made in
//! another one (a container sharing the directory) are neither listed nor removed.

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// A registered host.
///
/// # Example
///
/// ```
/// # fn main() -> sheepdog::Result<()> {
/// let sup = sheepdog::Supervisor::temporary()?;
/// let hosts = sheepdog::control::hosts()?;
/// let me = hosts.iter().find(|h| h.state_dir() == sup.state_dir().canonicalize().unwrap());
/// assert_eq!(me.map(|h| h.pid()), Some(std::process::id()));
/// assert!(me.is_some_and(|h| !h.is_stale()));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pid: u32,
    /// The process's start time (clock ticks since boot), to tell a reused pid.
    start_ticks: u64,
    /// The inode of its pid namespace, in which `pid` means this process.
    pid_ns: u64,
    state_dir: PathBuf,
    socket: PathBuf,
    version: String,
    started_at_ms: u64,
    #[serde(skip)]
    stale: bool,
}

impl Host {
    /// The host's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The state directory it serves (every symbolic link resolved).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Its control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The sheepdog version it runs.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// When it registered, in milliseconds since the Unix epoch.
    pub fn started_at_ms(&self) -> u64 {
        self.started_at_ms
    }

    /// Whether the host is gone: no process has its pid any more, or another one does. A
    /// stale registration is left by a host that died without `shutdown`.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    fn check_stale(&mut self) {
        self.stale = sys::proc_stat(self.pid).is_none_or(|st| st.start_time != self.start_ticks);
    }
}

/// The hosts registered by this user (root's for root) in this pid namespace, stale ones
/// included (see [`Host::is_stale`]), oldest first.
///
/// # Errors
///
/// `Io` if the registration directory exists but cannot be read; `Store` if it is not this
/// user's alone. No directory: no hosts.
pub fn hosts() -> Result<Vec<Host>> {
    let path = directory();
    let dir = match open_private(&path, false) {
        Ok(Some(dir)) => dir,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut hosts: Vec<Host> = read_all(&dir).into_iter().map(|(_, h)| h).collect();
    hosts.sort_by_key(|h| (h.started_at_ms, h.pid));
    Ok(hosts)
}

/// Every registration in `dir`, with its file name.
fn read_all(dir: &OwnedFd) -> Vec<(String, Host)> {
    let names = sys::list_dir(dir).unwrap_or_default();
    let mut out = Vec::new();
    for name in names.iter().filter_map(|n| n.to_str()) {
        if !name.ends_with(".json") {
            continue;
        }
        let Ok(mut file) = sys::open_file_at(dir, name, sys::Access::Read) else {
            continue;
        };
        let mut text = String::new();
        if io::Read::read_to_string(&mut file, &mut text).is_err() {
            continue;
        }
        if let Ok(mut host) = serde_json::from_str::<Host>(&text) {
            if host.pid_ns != sys::pid_namespace() {
                continue;
            }
            host.check_stale();
            out.push((name.to_string(), host));
        }
    }
    out
}

/// The registration directory of this user.
fn directory() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHEEPDOG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let uid = sys::effective_uid();
    if uid == 0 {
        return PathBuf::from("/run/sheepdog");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(run) if run.is_absolute() && sys::lstat(&run).is_ok_and(|st| st.uid == uid) => {
            run.join("sheepdog")
        }
        _ => PathBuf::from(format!("/tmp/sheepdog-{uid}")),
    }
}

/// Opens (with `create`, making it 0700) the registration directory, checking that it is
/// this user's alone; `None` if it does not exist and `create` is off.
fn open_private(path: &Path, create: bool) -> Result<Option<OwnedFd>> {
    if create {
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            let _ = std::fs::create_dir_all(parent);
        }
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("cannot create host directory '{}'", path.display()),
                )
                .with_source(e));
            }
        }
    }
    let dir = match sys::open_dir(path, false) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "host directory '{}' cannot be opened (a symbolic link?)",
                    path.display()
                ),
            )
            .with_source(e));
        }
    };
    let st = sys::fstat(&dir).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot read host directory '{}'", path.display()),
        )
        .with_source(e)
    })?;
    let me = sys::effective_uid();
    if st.uid != me || st.permissions() & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::Store,
            format!(
                "host directory '{}' is not private to uid {me} (owner {}, mode {:04o}); refusing to use it",
                path.display(),
                st.uid,
                st.permissions()
            ),
        ));
    }
    Ok(Some(dir))
}

/// A host's registration: removed when dropped.
pub(crate) struct Registration {
    dir: OwnedFd,
    name: String,
}

impl Registration {
    /// Registers this process as the host of `state_dir`, and removes the stale
    /// registrations it finds.
    pub(crate) fn new(state_dir: &Path, socket: &Path) -> Result<Registration> {
        let path = directory();
        let dir = open_private(&path, true)?.expect("created above");
        let pid = std::process::id();
        let host = Host {
            pid,
            start_ticks: sys::proc_stat(pid).map_or(0, |st| st.start_time),
            pid_ns: sys::pid_namespace(),
            state_dir: state_dir.to_path_buf(),
            socket: socket.to_path_buf(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: super::protocol::millis(std::time::SystemTime::now()),
            stale: false,
        };
        let key = crate::containment::state_key(state_dir);
        let name = format!("{pid}-{key}.json");
        let io_error = |e: io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("cannot register in '{}'", path.display()),
            )
            .with_source(e)
        };
        let temp = format!(".{name}.new");
        let mut file = sys::open_file_at(
            &dir,
            &temp,
            sys::Access::ReadWrite {
                create: Some(0o600),
            },
        )
        .map_err(io_error)?;
        file.set_len(0).map_err(io_error)?;
        let text = serde_json::to_string(&host).expect("a host always serializes");
        file.write_all(text.as_bytes()).map_err(io_error)?;
        sys::rename_at(&dir, &temp, &name).map_err(io_error)?;
        for (stale, _) in read_all(&dir).iter().filter(|(_, h)| h.stale) {
            let _ = sys::unlink_at(&dir, stale);
        }
        Ok(Registration { dir, name })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = sys::unlink_at(&self.dir, &self.name);
    }
}
