//! Containment: what holds every process a service starts, so that a stop, a delete or the
//! next `open` after a host's death can end all of them.
//!
//! With a writable cgroup v2 hierarchy, each service gets its own cgroup
//! (`<host's cgroup>/sheepdog-<state dir hash>/svc-<id>`): the child joins it before exec, a
//! stop ends with `cgroup.kill`, and the service counts as stopped only when the cgroup is
//! empty, so a `setsid` double-fork daemon cannot escape. Without one, the process group is
//! the container, and such a daemon escapes it (the README says so).

use std::io;
use std::path::{Path, PathBuf};

/// How a supervisor contains its services' processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Containment {
    /// The strongest available: a cgroup per service where a writable cgroup v2 hierarchy
    /// exists, else the process group. The default.
    Auto,
    /// A cgroup v2 per service; `open` fails if none can be made.
    Cgroup,
    /// The process group only: descendants that call `setsid` or `setpgid` escape it.
    ProcessGroup,
}

/// The supervisor's cgroup, holding one cgroup per service.
#[derive(Debug)]
pub(crate) struct Cgroups {
    root: PathBuf,
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// The host's own cgroup v2 path, from /proc/self/cgroup (`0::/path`).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// A stable name for a state directory (FNV-1a of its canonical path), so the next `open` on
/// the same directory finds the cgroups a dead host left.
fn state_key(state_dir: &Path) -> String {
    let path = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Cgroups {
    /// Makes (or finds) the supervisor's cgroup, if a writable cgroup v2 hierarchy exists.
    pub(crate) fn detect(state_dir: &Path) -> io::Result<Cgroups> {
        let unavailable = |why: &str| io::Error::new(io::ErrorKind::Unsupported, why.to_string());
        let mount =
            cgroup2_mount().ok_or_else(|| unavailable("no cgroup v2 hierarchy is mounted"))?;
        let own = own_cgroup().ok_or_else(|| unavailable("this process has no cgroup v2 path"))?;
        let root = mount
            .join(own.trim_start_matches('/'))
            .join(format!("sheepdog-{}", state_key(state_dir)));
        std::fs::create_dir_all(&root)?;
        // Writable means we can make and remove a child.
        let probe = root.join("probe");
        let _ = std::fs::remove_dir(&probe);
        std::fs::create_dir(&probe)?;
        std::fs::remove_dir(&probe)?;
        Ok(Cgroups { root })
    }

    /// Removes the (empty) service cgroups and the supervisor's own, at shutdown.
    pub(crate) fn remove_all(&self) {
        if let Ok(dir) = std::fs::read_dir(&self.root) {
            for e in dir.flatten() {
                if e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("svc-"))
                {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.root);
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("svc-{id}"))
    }

    /// Makes the service's cgroup and returns its `cgroup.procs`, for the child to join.
    pub(crate) fn prepare(&self, id: u64) -> io::Result<PathBuf> {
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        Ok(dir.join("cgroup.procs"))
    }

    /// Whether any process is in the service's cgroup (a zombie counts until reaped).
    pub(crate) fn populated(&self, id: u64) -> bool {
        std::fs::read_to_string(self.dir(id).join("cgroup.events"))
            .map(|t| t.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// The pids in the service's cgroup.
    pub(crate) fn pids(&self, id: u64) -> Vec<u32> {
        std::fs::read_to_string(self.dir(id).join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process in the service's cgroup, atomically (Linux 5.14+).
    pub(crate) fn kill(&self, id: u64) -> io::Result<()> {
        std::fs::write(self.dir(id).join("cgroup.kill"), b"1")
    }

    /// Removes the service's cgroup (it must be empty).
    pub(crate) fn remove(&self, id: u64) {
        match std::fs::remove_dir(self.dir(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                log::warn!("cannot remove cgroup '{}': {e}", self.dir(id).display())
            }
            _ => {}
        }
    }

    /// Service ids whose cgroups hold processes: what a dead host left running.
    pub(crate) fn populated_services(&self) -> Vec<u64> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("svc-")?.parse().ok())
            .filter(|id| self.populated(*id))
            .collect()
    }
}
