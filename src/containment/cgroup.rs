//! The cgroup tier: a cgroup per run, so that a stop, a delete or the guardian after a host's
//! death can end every process a run started.
//!
//! With a writable cgroup v2 hierarchy, each service gets its own cgroup
//! (`<host's cgroup>/sheepdog-<state dir hash>/svc-<id>`): the child joins it before exec, a
//! stop ends with `cgroup.kill`, and the service counts as stopped only when the cgroup is
//! empty, so a `setsid` double-fork daemon cannot escape. Without one, the process group is
//! the container, and such a daemon escapes it (the README says so).
//!
//! Limits (`max_pids`, `max_memory`) use the `pids` and `memory` controllers: in the v2
//! cgroup when the hierarchy offers them there, else in a parallel per-run cgroup of the v1
//! hierarchy that holds the controller (hybrid hosts mount v2 beside v1 controllers), which
//! the child also joins before exec.

use crate::sys::{self, Access};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The limits a run's cgroups enforce.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Limits {
    pub(crate) max_pids: Option<u64>,
    pub(crate) max_memory: Option<u64>,
}

impl Limits {
    pub(crate) fn is_none(&self) -> bool {
        self.max_pids.is_none() && self.max_memory.is_none()
    }
}

/// A run's cgroups, made: the v2 directory to start in (its path, and open for
/// `CLONE_INTO_CGROUP`), and the `cgroup.procs` of each v1 cgroup the child joins before exec.
pub(crate) struct Prepared {
    /// Its `cgroup.procs`.
    pub(crate) procs: PathBuf,
    pub(crate) dir_fd: OwnedFd,
    pub(crate) join: Vec<OwnedFd>,
}

/// Where a controller is available.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Controller {
    /// In the v2 hierarchy, enabled for the run cgroups.
    V2,
    /// In a v1 hierarchy: the supervisor's directory there.
    V1(PathBuf),
    Missing,
}

/// The supervisor's cgroup, holding one cgroup per run of a service: `svc-<id>.<generation>`.
///
/// A fresh cgroup per run, removed once the run is over: on this kernel (6.18) a child cloned
/// with `CLONE_INTO_CGROUP` into a cgroup that was ever killed with `cgroup.kill` is killed at
/// birth, so a killed cgroup is never reused.
#[derive(Debug)]
pub(crate) struct Cgroups {
    root: PathBuf,
    /// `root`, open: a run's files are opened relative to it, which spares the kernel the
    /// walk down the whole cgroupfs path on every open (the restart and stop paths open a
    /// few per run).
    root_fd: Arc<OwnedFd>,
    /// `root` as `/proc/<pid>/cgroup` shows it (relative to the cgroup namespace's root).
    proc_root: String,
    pids: Controller,
    memory: Controller,
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

/// The mount point and mount root of the v1 hierarchy holding `controller`.
fn cgroup1_mount(controller: &str) -> Option<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?.to_string();
        let mount = fields.next()?;
        let mut right = right.split_whitespace();
        if right.next()? != "cgroup" {
            return None;
        }
        let options = right.nth(1)?;
        options
            .split(',')
            .any(|o| o == controller)
            .then(|| (PathBuf::from(mount), root))
    })
}

/// The host's path in the v1 hierarchy holding `controller` (`N:a,b:/path`).
fn own_cgroup1(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let _ = parts.next()?;
        let list = parts.next()?;
        let path = parts.next()?;
        list.split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

/// Makes a directory and checks that a child can be made and removed in it.
fn writable_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join("probe");
    let _ = std::fs::remove_dir(&probe);
    std::fs::create_dir(&probe)?;
    std::fs::remove_dir(&probe)
}

/// Finds `controller` for the supervisor's run cgroups: enabled in v2 below `root`, else a
/// writable directory `sheepdog-<key>` in its v1 hierarchy.
fn find_controller(root: &Path, controller: &str, key: &str) -> Controller {
    let offered = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if offered.split_whitespace().any(|c| c == controller)
        && std::fs::write(
            root.join("cgroup.subtree_control"),
            format!("+{controller}"),
        )
        .is_ok()
    {
        return Controller::V2;
    }
    let Some((mount, mount_root)) = cgroup1_mount(controller) else {
        return Controller::Missing;
    };
    let Some(own) = own_cgroup1(controller) else {
        return Controller::Missing;
    };
    let own = own.strip_prefix(&mount_root).unwrap_or(&own);
    let dir = mount
        .join(own.trim_start_matches('/'))
        .join(format!("sheepdog-{key}"));
    match writable_dir(&dir) {
        Ok(()) => Controller::V1(dir),
        Err(e) => {
            log::info!(
                "the {controller} controller is not usable at '{}': {e}",
                dir.display()
            );
            Controller::Missing
        }
    }
}

/// The host's own cgroup v2 path, from /proc/self/cgroup (`0::/path`).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// A stable name for a state directory (FNV-1a of its canonical path), so the next `open` on
/// the same directory finds the cgroups a dead host left.
pub(crate) fn state_key(state_dir: &Path) -> String {
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
        let key = state_key(state_dir);
        let root = mount
            .join(own.trim_start_matches('/'))
            .join(format!("sheepdog-{key}"));
        // Writable means we can make and remove a child.
        writable_dir(&root)?;
        let root_fd = Arc::new(sys::open_path(&root)?);
        let pids = find_controller(&root, "pids", &key);
        let memory = find_controller(&root, "memory", &key);
        Ok(Cgroups {
            root,
            root_fd,
            proc_root: format!("{}/sheepdog-{key}", own.trim_end_matches('/')),
            pids,
            memory,
        })
    }

    /// The supervisor's cgroup; a run's is `svc-<id>.<generation>` in it.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `max_pids` can be enforced.
    pub(crate) fn limits_pids(&self) -> bool {
        self.pids != Controller::Missing
    }

    /// Whether the kernel enforces `max_memory`.
    pub(crate) fn limits_memory(&self) -> bool {
        self.memory != Controller::Missing
    }

    /// Where the limits live, in words, for the log.
    pub(crate) fn describe(&self) -> String {
        let where_ = |c: &Controller| match c {
            Controller::V2 => "cgroup v2".to_string(),
            Controller::V1(dir) => format!("cgroup v1 at '{}'", dir.display()),
            Controller::Missing => "unavailable".to_string(),
        };
        format!(
            "cgroup v2 at '{}'; pids controller: {}; memory controller: {}",
            self.root.display(),
            where_(&self.pids),
            where_(&self.memory)
        )
    }

    fn run_name(id: u64, generation: u64) -> String {
        format!("svc-{id}.{generation}")
    }

    /// The run's v2 cgroup as `/proc/<pid>/cgroup` names it for its members.
    pub(crate) fn proc_path(&self, id: u64, generation: u64) -> String {
        format!("{}/{}", self.proc_root, Cgroups::run_name(id, generation))
    }

    /// The `cgroup.procs` of the v2 cgroup `svc-<id>.<generation>` under `root`.
    pub(crate) fn procs_file(root: &Path, id: u64, generation: u64) -> PathBuf {
        root.join(Cgroups::run_name(id, generation))
            .join("cgroup.procs")
    }

    fn dir(&self, id: u64, generation: u64) -> PathBuf {
        self.root.join(Cgroups::run_name(id, generation))
    }

    /// Opens `file` of the run's v2 cgroup.
    fn open_in(
        &self,
        id: u64,
        generation: u64,
        file: &str,
        access: Access,
    ) -> io::Result<std::fs::File> {
        let rel = format!("{}/{file}", Cgroups::run_name(id, generation));
        sys::open_file_at(&*self.root_fd, &rel, access)
    }

    /// The v1 directories of a run, one per controller held in v1.
    fn v1_dirs(&self, id: u64, generation: u64) -> impl Iterator<Item = PathBuf> + '_ {
        [&self.pids, &self.memory]
            .into_iter()
            .filter_map(move |c| match c {
                Controller::V1(root) => Some(root.join(Cgroups::run_name(id, generation))),
                _ => None,
            })
    }

    /// Makes the run's cgroups with its limits: the v2 directory for the child to start in,
    /// and the v1 `cgroup.procs` files it must join.
    pub(crate) fn prepare(&self, id: u64, generation: u64, limits: Limits) -> io::Result<Prepared> {
        let name = Cgroups::run_name(id, generation);
        let dir = self.root.join(&name);
        sys::make_dir_at(&*self.root_fd, &name, 0o755)?;
        let dir_fd = sys::open_dir_in(&*self.root_fd, &name)?;
        let mut join = Vec::new();
        let settings = [
            (&self.pids, limits.max_pids, "pids.max", "pids.max"),
            (
                &self.memory,
                limits.max_memory,
                "memory.max",
                "memory.limit_in_bytes",
            ),
        ];
        for (controller, limit, v2_file, v1_file) in settings {
            let Some(limit) = limit else { continue };
            match controller {
                Controller::V2 => std::fs::write(dir.join(v2_file), limit.to_string())?,
                Controller::V1(root) => {
                    let v1 = root.join(&name);
                    make_dir(&v1)?;
                    std::fs::write(v1.join(v1_file), limit.to_string())?;
                    let procs = std::fs::OpenOptions::new()
                        .write(true)
                        .open(v1.join("cgroup.procs"))?;
                    join.push(OwnedFd::from(procs));
                }
                Controller::Missing => {}
            }
        }
        Ok(Prepared {
            procs: dir.join("cgroup.procs"),
            dir_fd,
            join,
        })
    }

    /// The peak memory charged to the run's memory cgroup, if it has one.
    /// `limited`: the run's service sets `max_memory` (a v1 memory cgroup exists only then).
    pub(crate) fn peak_memory(&self, id: u64, generation: u64, limited: bool) -> Option<u64> {
        let file = match &self.memory {
            Controller::V2 => self.dir(id, generation).join("memory.peak"),
            Controller::V1(_) if !limited => return None,
            Controller::V1(root) => root
                .join(Cgroups::run_name(id, generation))
                .join("memory.max_usage_in_bytes"),
            Controller::Missing => return None,
        };
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// How many processes of the run the kernel's OOM killer ended (its memory cgroup's
    /// `oom_kill` count; 0 without a memory controller).
    pub(crate) fn oom_kills(&self, id: u64, generation: u64, limited: bool) -> u64 {
        let (file, key) = match &self.memory {
            Controller::V2 => (self.dir(id, generation).join("memory.events"), "oom_kill "),
            Controller::V1(_) if !limited => return 0,
            Controller::V1(root) => (
                root.join(Cgroups::run_name(id, generation))
                    .join("memory.oom_control"),
                "oom_kill ",
            ),
            Controller::Missing => return 0,
        };
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Whether any process is in the run's cgroup (a zombie counts until reaped).
    pub(crate) fn populated(&self, id: u64, generation: u64) -> bool {
        self.open_in(id, generation, "cgroup.events", Access::Read)
            .is_ok_and(is_populated)
    }

    /// The run's `cgroup.events`, held open: the kernel marks it with a priority event when
    /// it changes (Linux 4.5+), and [`events_populated`] reads it again.
    pub(crate) fn events(&self, id: u64, generation: u64) -> io::Result<std::fs::File> {
        self.open_in(id, generation, "cgroup.events", Access::Read)
    }

    /// The pids in the run's cgroup.
    pub(crate) fn pids(&self, id: u64, generation: u64) -> Vec<u32> {
        let Ok(procs) = self.open_in(id, generation, "cgroup.procs", Access::Read) else {
            return Vec::new();
        };
        read_pids(procs)
    }

    /// SIGKILLs every process in the run's cgroup, atomically (Linux 5.14+).
    pub(crate) fn kill(&self, id: u64, generation: u64) -> io::Result<()> {
        let mut kill = self.open_in(id, generation, "cgroup.kill", Access::Write)?;
        std::io::Write::write_all(&mut kill, b"1")
    }

    /// The run's cgroup directories, to remove once the run is over (they are empty then).
    pub(crate) fn run_dirs(&self, id: u64, generation: u64) -> Vec<PathBuf> {
        std::iter::once(self.dir(id, generation))
            .chain(self.v1_dirs(id, generation))
            .collect()
    }

    /// Every run cgroup in v2: (service id, directory).
    fn runs(&self) -> Vec<(u64, PathBuf)> {
        runs_in(&self.root)
    }

    /// Every run cgroup in v1 hierarchies: (service id, directory).
    fn v1_runs(&self) -> Vec<(u64, PathBuf)> {
        [&self.pids, &self.memory]
            .into_iter()
            .filter_map(|c| match c {
                Controller::V1(root) => Some(runs_in(root)),
                _ => None,
            })
            .flatten()
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
                log::warn!(
                    "service id {id}: killing {} processes a previous host left in its cgroup: {pids:?}",
                    pids.len()
                );
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
        // Nothing runs yet, so every v1 run cgroup is a leftover (empty once v2 is).
        for (_, d) in self.v1_runs() {
            let _ = std::fs::remove_dir(d);
        }
        out
    }

    /// Removes every (empty) run cgroup of a service, or of all services, and with `all` the
    /// supervisor's own.
    pub(crate) fn remove_service(&self, id: Option<u64>) {
        for (run_id, dir) in self.runs().into_iter().chain(self.v1_runs()) {
            if id.is_none_or(|i| i == run_id) {
                let _ = std::fs::remove_dir(dir);
            }
        }
        if id.is_none() {
            let _ = std::fs::remove_dir(&self.root);
            for c in [&self.pids, &self.memory] {
                if let Controller::V1(root) = c {
                    let _ = std::fs::remove_dir(root);
                }
            }
        }
    }
}

/// The environment variables that tell a guardian where a supervisor's cgroups are.
const ENV_ROOT: &str = "SHEEPDOG_GUARDIAN_CGROUP";
const ENV_PIDS: &str = "SHEEPDOG_GUARDIAN_PIDS";
const ENV_MEMORY: &str = "SHEEPDOG_GUARDIAN_MEMORY";

impl Controller {
    fn encode(&self) -> std::ffi::OsString {
        use std::os::unix::ffi::OsStrExt;
        match self {
            Controller::V2 => "v2".into(),
            Controller::Missing => "none".into(),
            Controller::V1(dir) => {
                let mut v = b"v1:".to_vec();
                v.extend_from_slice(dir.as_os_str().as_bytes());
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(v)
            }
        }
    }

    fn decode(value: &std::ffi::OsStr) -> Controller {
        use std::os::unix::ffi::OsStrExt;
        match value.as_bytes() {
            b"v2" => Controller::V2,
            v => match v.strip_prefix(b"v1:") {
                Some(dir) => Controller::V1(PathBuf::from(std::ffi::OsStr::from_bytes(dir))),
                None => Controller::Missing,
            },
        }
    }
}

impl Cgroups {
    /// What a guardian needs to find these cgroups again, as environment variables.
    pub(crate) fn to_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            (ENV_ROOT, self.root.clone().into_os_string()),
            (ENV_PIDS, self.pids.encode()),
            (ENV_MEMORY, self.memory.encode()),
        ]
    }

    /// The cgroups [`to_env`](Cgroups::to_env) described, found again without making
    /// anything; `Ok(None)` if there were none.
    pub(crate) fn from_env() -> io::Result<Option<Cgroups>> {
        let Some(root) = std::env::var_os(ENV_ROOT).map(PathBuf::from) else {
            return Ok(None);
        };
        let controller =
            |name| std::env::var_os(name).map_or(Controller::Missing, |v| Controller::decode(&v));
        let root_fd = Arc::new(sys::open_path(&root)?);
        Ok(Some(Cgroups {
            root,
            root_fd,
            proc_root: String::new(),
            pids: controller(ENV_PIDS),
            memory: controller(ENV_MEMORY),
        }))
    }

    /// SIGKILLs every process in the supervisor's cgroup and the run cgroups below it, at
    /// once (`cgroup.kill`, Linux 5.14+).
    pub(crate) fn kill_all(&self) -> io::Result<()> {
        std::fs::write(self.root.join("cgroup.kill"), b"1")
    }

    /// Waits up to `patience` until no process is left in the supervisor's cgroup; returns
    /// whether none is.
    pub(crate) fn wait_empty(&self, patience: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if !populated_in(&self.root) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Whether the supervisor's cgroup directories are all gone (v2 and v1).
    pub(crate) fn removed(&self) -> bool {
        !self.root.exists()
            && [&self.pids, &self.memory]
                .into_iter()
                .all(|c| !matches!(c, Controller::V1(dir) if dir.exists()))
    }
}

/// Where probe commands run under cgroup containment: a cgroup of their own for each run of
/// a service (`svc-<id>.<generation>.probe`, beside the run's), so that a probe is killed
/// whole (`cgroup.kill`) and waited for (`populated 0`), never counts as one of the service's
/// processes, and is found by the next `open` (its name is a run cgroup's) if the host dies
/// while it runs. Shared with the probe workers, which make and remove these cgroups.
#[derive(Clone, Debug)]
pub(crate) struct ProbeCgroups {
    /// The supervisor's cgroup, open (`O_PATH`).
    root: std::sync::Arc<OwnedFd>,
    root_path: PathBuf,
}

/// One probe's cgroup, made.
pub(crate) struct ProbeCgroup {
    name: String,
    /// Open, for `CLONE_INTO_CGROUP`.
    pub(crate) dir: OwnedFd,
    /// Its `cgroup.procs`, for kernels without `CLONE_INTO_CGROUP`.
    pub(crate) procs: PathBuf,
}

impl Cgroups {
    /// A handle for the probe workers.
    pub(crate) fn probe_cgroups(&self) -> io::Result<ProbeCgroups> {
        Ok(ProbeCgroups {
            root: self.root_fd.clone(),
            root_path: self.root.clone(),
        })
    }
}

impl ProbeCgroups {
    /// Makes (or finds) the probe cgroup of run `generation` of service `id`.
    pub(crate) fn make(&self, id: u64, generation: u64) -> io::Result<ProbeCgroup> {
        let name = format!("{}.probe", Cgroups::run_name(id, generation));
        sys::make_dir_at(&*self.root, &name, 0o755)?;
        let dir = sys::open_dir_in(&*self.root, &name)?;
        let procs = self.root_path.join(&name).join("cgroup.procs");
        Ok(ProbeCgroup { name, dir, procs })
    }

    /// Kills whatever is left in a probe's cgroup, waits (up to `patience`) until it is
    /// empty, and removes it. Returns whether it emptied in time.
    pub(crate) fn finish(&self, cgroup: ProbeCgroup, patience: std::time::Duration) -> bool {
        let open = |file: &str, access: Access| {
            sys::open_file_at(&*self.root, &format!("{}/{file}", cgroup.name), access)
        };
        let populated = || open("cgroup.events", Access::Read).is_ok_and(is_populated);
        if populated()
            && let Ok(mut kill) = open("cgroup.kill", Access::Write)
        {
            let _ = std::io::Write::write_all(&mut kill, b"1");
        }
        let deadline = std::time::Instant::now() + patience;
        let mut emptied = !populated();
        while !emptied && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
            emptied = !populated();
        }
        let _ = sys::remove_dir_at(&*self.root, &cgroup.name);
        emptied
    }
}

impl Drop for Cgroups {
    /// Whatever way the supervisor goes (a shutdown, or an `open` that failed after making
    /// its cgroup), its empty cgroups go too; a cgroup that still holds a process stays, for
    /// the next `open` to reclaim.
    fn drop(&mut self) {
        self.remove_service(None);
    }
}

fn make_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

fn populated_in(dir: &Path) -> bool {
    std::fs::File::open(dir.join("cgroup.events")).is_ok_and(is_populated)
}

/// Whether a `cgroup.events` says "populated 1". On the restart and stop paths: one read
/// into a small buffer, no size query. The file is "populated N\nfrozen N\n".
fn is_populated(mut events: std::fs::File) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let Ok(n) = events.read(&mut buf) else {
        return false;
    };
    buf[..n].split(|b| *b == b'\n').any(|l| l == b"populated 1")
}

/// Whether a `cgroup.events` held open says "populated 1", read again from its start: the
/// read also clears the priority event that a change raised on it.
pub(crate) fn events_populated(events: &std::fs::File) -> bool {
    let mut buf = [0u8; 64];
    let Ok(n) = sys::read_at(events, &mut buf, 0) else {
        return false;
    };
    buf[..n].split(|b| *b == b'\n').any(|l| l == b"populated 1")
}

fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::File::open(dir.join("cgroup.procs"))
        .map(read_pids)
        .unwrap_or_default()
}

/// The pids a `cgroup.procs` lists, one per line.
fn read_pids(mut procs: std::fs::File) -> Vec<u32> {
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut procs, &mut text);
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn runs_in(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(dir) = std::fs::read_dir(root) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_cgroups_remove_their_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let cg = match Cgroups::detect(dir.path()) {
            Ok(cg) => cg,
            Err(e) => return eprintln!("skipped: no writable cgroup v2 hierarchy here ({e})"),
        };
        let root = cg.root().to_path_buf();
        let limits = Limits {
            max_pids: cg.limits_pids().then_some(8),
            max_memory: None,
        };
        let run = cg.prepare(1, 1, limits).unwrap();
        assert!(run.procs.parent().unwrap().is_dir());
        let v1: Vec<PathBuf> = cg.v1_dirs(1, 1).filter(|d| d.is_dir()).collect();
        drop(run);
        drop(cg);
        assert!(!root.exists(), "{} is left", root.display());
        for d in v1 {
            let parent = d.parent().unwrap();
            assert!(!parent.exists(), "{} is left", parent.display());
        }
    }
}
