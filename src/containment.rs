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

/// The supervisor's cgroup, holding one cgroup per run of a service: `svc-<id>.<generation>`.
///
/// A fresh cgroup per run, removed once the run is over: on this kernel (6.18) a child cloned
/// with `CLONE_INTO_CGROUP` into a cgroup that was ever killed with `cgroup.kill` is killed at
/// birth, so a killed cgroup is never reused.
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

    fn dir(&self, id: u64, generation: u64) -> PathBuf {
        self.root.join(format!("svc-{id}.{generation}"))
    }

    /// Makes the run's cgroup and returns its directory, for the child to start in.
    pub(crate) fn prepare(&self, id: u64, generation: u64) -> io::Result<PathBuf> {
        let dir = self.dir(id, generation);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        Ok(dir)
    }

    /// Whether any process is in the run's cgroup (a zombie counts until reaped).
    pub(crate) fn populated(&self, id: u64, generation: u64) -> bool {
        populated_in(&self.dir(id, generation))
    }

    /// The pids in the run's cgroup.
    pub(crate) fn pids(&self, id: u64, generation: u64) -> Vec<u32> {
        pids_in(&self.dir(id, generation))
    }

    /// SIGKILLs every process in the run's cgroup, atomically (Linux 5.14+).
    pub(crate) fn kill(&self, id: u64, generation: u64) -> io::Result<()> {
        std::fs::write(self.dir(id, generation).join("cgroup.kill"), b"1")
    }

    /// Removes the run's cgroup once the run is over (it is empty then).
    pub(crate) fn remove_run(&self, id: u64, generation: u64) {
        let dir = self.dir(id, generation);
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                log::warn!("cannot remove cgroup '{}': {e}", dir.display())
            }
            _ => {}
        }
    }

    /// Every run cgroup: (service id, directory).
    fn runs(&self) -> Vec<(u64, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let id = name
                    .to_str()?
                    .strip_prefix("svc-")?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()?;
                Some((id, e.path()))
            })
            .collect()
    }

    /// Kills what a dead host left in run cgroups, waits (boundedly) for it to be gone,
    /// removes those cgroups, and returns the pids per service id.
    pub(crate) fn reclaim(&self, patience: std::time::Duration) -> Vec<(u64, Vec<u32>)> {
        let mut out = Vec::new();
        let mut dirs = Vec::new();
        for (id, dir) in self.runs() {
            if populated_in(&dir) {
                let pids = pids_in(&dir);
                log::warn!("service id {id}: killing {} processes a previous host left in its cgroup: {pids:?}", pids.len());
                let _ = std::fs::write(dir.join("cgroup.kill"), b"1");
                out.push((id, pids));
            }
            dirs.push(dir);
        }
        let deadline = std::time::Instant::now() + patience;
        while dirs.iter().any(|d| populated_in(d)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
        out
    }

    /// Removes every (empty) run cgroup of a service, or of all services, and with `all` the
    /// supervisor's own.
    pub(crate) fn remove_service(&self, id: Option<u64>) {
        for (run_id, dir) in self.runs() {
            if id.is_none_or(|i| i == run_id) {
                let _ = std::fs::remove_dir(dir);
            }
        }
        if id.is_none() {
            let _ = std::fs::remove_dir(&self.root);
        }
    }
}

fn populated_in(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}
