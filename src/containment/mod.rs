//! Containment: what holds every process a run starts, so that a stop, a delete, the
//! guardian after a host's death, or the next `open` can end all of them, and nothing else.
//!
//! The tier in force ([`Containment`]) is one [`Tier`]: the supervision thread asks it to
//! spawn a run, to signal or kill all of it, whether anything of it is left, and to let it go,
//! without branching on the tier itself. Runs are named by [`RunKey`] (service id and
//! generation); the tier keeps each run's processes (its main process's pidfd, its cgroup,
//! the descendants it tracks one by one) until the run is over.
//!
//! - *Cgroup* ([`cgroup`]): a cgroup per run; membership decides what is the run's.
//! - *Subreaper*: the process group, plus the orphans re-parented to the host, claimed by
//!   their sealed marker ([`marker`], [`marked`]).
//! - *Process group*: the group, plus the processes whose sealed marker names the run, found
//!   in /proc at a stop ([`marked`]).
//!
//! [`reclaim`] ends what a dead host left, at `open` and in the guardian.

pub(crate) mod cgroup;
mod marked;
pub(crate) mod marker;
pub(crate) mod reclaim;
mod spawner;

pub(crate) use cgroup::{Cgroups, Limits, ProbeCgroups, state_key};

use crate::child::Launch;
use crate::error::{Error, ErrorKind, Result};
use crate::signal::Signal;
use crate::spec::ServiceSpec;
use crate::store::Store;
use crate::sys::{self, Credentials, PidFd, Reaped, Registry};
use marked::{Escapees, Scan};
use marker::Session;
use spawner::{Done, Job, Spawner};
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// How a supervisor contains its services' processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Containment {
    /// The strongest available: a cgroup per service where a writable cgroup v2 hierarchy
    /// exists; else the process group plus a subreaper if the builder opted in
    /// ([`Builder::subreaper`](crate::Builder::subreaper)); else the process group. The
    /// default.
    Auto,
    /// A cgroup v2 per service; `open` fails if none can be made.
    Cgroup,
    /// The process group, with the host made a child subreaper
    /// (`PR_SET_CHILD_SUBREAPER`): a descendant that leaves the group (`setsid`, a double
    /// fork) and is orphaned is re-parented to the host instead of init. The supervisor
    /// finds it among the host's children, knows its service from the `SHEEPDOG_RUN`
    /// variable every run's environment carries, and ends it with its service. An orphan
    /// that cleared its environment cannot be attributed; one in a session of its own is
    /// logged as such. This changes the host: orphans of anything the host runs come to it,
    /// and those the supervisor does not claim stay zombies until the host reaps them.
    Subreaper,
    /// The process group only: descendants that call `setsid` or `setpgid` escape it while
    /// the host lives, until the service's next stop (a stop, the guardian after the host's
    /// death, and the next `open` find them by their sealed `SHEEPDOG_RUN` marker).
    ProcessGroup,
}

/// After a SIGKILL, how long to wait for what was killed to be gone before giving up on it.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);

/// A run: the service's id and the run's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RunKey {
    pub(crate) id: u64,
    pub(crate) generation: u64,
}

/// What it takes to spawn a run.
pub(crate) struct Plan {
    pub(crate) run: RunKey,
    pub(crate) spec: Arc<ServiceSpec>,
    pub(crate) launch: Arc<Launch>,
    /// The write ends of its output pipes: stderr's is `None` when stderr is merged into
    /// stdout. Closed once the run is spawned.
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: Option<OwnedFd>,
    /// The run's own variables (`SHEEPDOG_RUN`, `NOTIFY_SOCKET`, …).
    pub(crate) env: Vec<(String, String)>,
    /// The poll token its exit is reported as.
    pub(crate) token: u64,
}

/// A run just spawned.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    /// What tells its main process apart from a later one with the same pid: the pidfd's
    /// pidfs inode (Linux 6.9+), else its start time.
    pub(crate) pidfd_ino: Option<u64>,
    pub(crate) start_ticks: Option<u64>,
    /// The generation in the name of its cgroup, in the cgroup tier.
    pub(crate) cgroup: Option<u64>,
}

/// What a main process that exited by itself left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leftovers {
    /// Nothing.
    None,
    /// Members of its process group, killed: they go with the group.
    Killed,
    /// Processes outside its group (in its cgroup, or escaped), killed: the run is over only
    /// once they are gone.
    Lingering,
}

/// What the tier measured of a run that is over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ended {
    /// The kernel's OOM killer ended a process of it.
    pub(crate) oom_killed: bool,
    /// The peak memory of its memory cgroup, where it had one.
    pub(crate) peak_memory: Option<u64>,
}

/// What the supervision thread asks of the processes of its runs: implemented by [`Tier`]
/// for real, and by a fake in the engine's unit tests.
pub(crate) trait Processes {
    /// Spawns `plan`'s run in the tier's container, its exit watched under `plan.token`.
    fn spawn(&mut self, plan: Plan) -> Result<Spawned>;
    /// Opens a batch of about `n` spawns: each [`push`](Processes::push)ed plan may be
    /// spawned at once (the real tier's spawner thread starts on the first while the next
    /// are prepared), and [`finish_batch`](Processes::finish_batch) returns the results.
    fn begin_batch(&mut self, n: usize);
    /// Adds `plan` to the open batch, to be spawned as [`spawn`](Processes::spawn) would.
    fn push(&mut self, plan: Plan);
    /// Spawns what the batch has left (the real tier on two threads at once) and returns
    /// every result, in the order pushed; the batch is closed.
    fn finish_batch(&mut self) -> Vec<Result<Spawned>>;
    /// Sends `signal` to the run's process group only: the first pass of a stop of many
    /// services, so that all of them are ending while each stop is recorded. Returns whether
    /// it was sent.
    fn signal_group(&mut self, run: RunKey, signal: Signal) -> bool;
    /// Begins a stop: `signal` to everything of the run (its group, unless
    /// `group_signalled`, members of its container that left the group, descendants found
    /// outside it).
    fn stop(&mut self, run: RunKey, signal: Signal, group_signalled: bool);
    /// SIGKILL to everything of the run.
    fn kill(&mut self, run: RunKey);
    /// Collects the run's main process, if it has exited (`None`: it still runs).
    fn reap(&mut self, run: RunKey) -> Option<Reaped>;
    /// The main process exited by itself: kills what it left running, and says what that
    /// was.
    fn kill_leftovers(&mut self, run: RunKey) -> Leftovers;
    /// Whether nothing of the run is left. During a stop, also looks for processes forked
    /// since the stop began, and sends them `signal`.
    fn is_empty(&mut self, run: RunKey, signal: Signal) -> bool;
    /// The run is over: what was measured of it; its container is kept for the service's
    /// next run (`reuse`, when one follows at once) or removed.
    fn end(&mut self, run: RunKey, reuse: bool) -> Ended;
    /// Whether the process that sent a notify datagram (`sender`, the kernel's
    /// credentials) is a process of `run`.
    fn speaks_for(&mut self, run: RunKey, sender: &Credentials) -> bool;
    /// The resident memory of each of `runs` (its whole group and container), in bytes.
    fn memory(&mut self, runs: &[RunKey]) -> Vec<u64>;
    /// A stop of a service without a live run (`run`: its current generation): finds what
    /// its earlier runs left outside their containers and sends it `signal`. Returns whether
    /// there was any (the stop then waits for [`sweep_done`](Processes::sweep_done)).
    fn sweep(&mut self, run: RunKey, signal: Signal) -> bool;
    /// Whether a sweep's processes are all gone (also looks for ones started since).
    fn sweep_done(&mut self, run: RunKey, signal: Signal) -> bool;
    /// A tracked process's fd fired: once it has ended, the run it belonged to. `None`: not
    /// a token of the tier's, or nothing ended.
    fn on_ready(&mut self, token: u64) -> Option<RunKey>;
    /// The service is deleted: its containers go.
    fn forget(&mut self, id: u64);
    /// Directories of runs that are over, to remove off the supervision thread.
    fn take_dirs(&mut self) -> Vec<PathBuf>;
    /// The end of a loop turn: what it read of /proc is stale now.
    fn end_turn(&mut self);
    /// At `open`, before anything runs: kills what a dead previous host left (see
    /// [`reclaim`]), marks its runs ended, and returns the pids per service id.
    fn reclaim(&mut self, store: &mut Store) -> Result<Vec<(u64, Vec<u32>)>>;
    /// The session's row in the store: markers name it.
    fn session_stored(&mut self, id: i64);
    /// At shutdown, once every run is over: reaps what escaped and is still dying, and
    /// removes the supervisor's (empty) cgroups.
    fn finish(&mut self);
}

/// The state of one run's processes.
struct RunProcs {
    leader: PidFd,
    /// The main process has been reaped.
    reaped: bool,
    /// The generation in the name of its cgroup (cgroup tier).
    cgroup: Option<u64>,
    /// Its cgroup's id, and path as `/proc/<pid>/cgroup` shows it: who speaks for it.
    cgroup_id: Option<u64>,
    cgroup_path: String,
    /// `cgroup.kill` was written to its cgroup, which is then never reused: a child cloned
    /// into a killed cgroup dies at birth.
    killed: bool,
    /// It has limits: its cgroups are its own, never reused.
    limited: bool,
    /// It sets `max_memory` (a v1 memory cgroup exists only then).
    memory_limited: bool,
    /// Kills in its memory cgroup by the OOM killer when it started.
    oom_kills_at_start: u64,
    /// Process-group tier: when its stop read /proc.
    scanned: Option<Scan>,
    /// Cgroup tier, while the run lingers: its `cgroup.events`, watched in the poller under
    /// the token, so that its emptying is seen at once rather than at the next check.
    events: Option<(std::fs::File, u64)>,
}

/// A batch of spawns being gathered: shared with the spawner thread as it grows, or kept
/// for this thread alone (no spawner, or one spawn).
enum OpenBatch {
    Shared(spawner::Open),
    Here(Vec<Job>),
}

/// The containment in force, for real.
pub(crate) struct Tier {
    cgroups: Option<Arc<Cgroups>>,
    /// Takes half of a batch of spawns (`None` if its thread could not start).
    spawner: Option<Spawner>,
    /// The batch of spawns open, if any.
    batch: Option<OpenBatch>,
    subreaper: bool,
    registry: Rc<Registry>,
    runs: HashMap<RunKey, RunProcs>,
    /// An empty, never-killed cgroup of each service's finished run, for its next run to
    /// start in: no `mkdir` on the restart path, and no `rmdir` after it.
    spares: HashMap<u64, u64>,
    escapees: Escapees,
    /// Sweeps in progress (process-group tier), by service: when they read /proc.
    sweeps: HashMap<u64, Scan>,
    /// Directories of runs that are over, to remove off the supervision thread.
    dirs: Vec<PathBuf>,
    /// Names this supervisor in its runs' markers and cgroups.
    run_key: String,
    /// The runs whose `cgroup.events` is watched, by token.
    watched: HashMap<u64, RunKey>,
    next_token: u64,
}

/// The first token of the cgroup watches (below the escapees' tokens).
const FIRST_WATCH_TOKEN: u64 = 1 << 61;

impl Tier {
    /// Whether anything is in the run's cgroup (cgroup tier; `false` without one). The
    /// first time it is, its `cgroup.events` is watched from then on, until the run ends.
    fn cgroup_populated(&mut self, run: RunKey) -> bool {
        let (Some(cg), Some(r)) = (&self.cgroups, self.runs.get_mut(&run)) else {
            return false;
        };
        let Some(generation) = r.cgroup else {
            return false;
        };
        if let Some((events, _)) = &r.events {
            return cgroup::events_populated(events);
        }
        // Opened before it is read, so that a change after the read raises the event.
        let Ok(events) = cg.events(run.id, generation) else {
            return cg.populated(run.id, generation);
        };
        let populated = cgroup::events_populated(&events);
        if populated {
            let token = self.next_token;
            if self.registry.add_priority(&events, token).is_ok() {
                self.next_token += 1;
                self.watched.insert(token, run);
                r.events = Some((events, token));
            }
        }
        populated
    }

    /// The tier `cgroups` and `subreaper` make, its fds watched through `registry`, its runs'
    /// markers sealed for `session`.
    pub(crate) fn new(
        cgroups: Option<Cgroups>,
        subreaper: bool,
        registry: Rc<Registry>,
        run_key: String,
        session: Session,
    ) -> Tier {
        let escapees_registry = registry.clone();
        // The tier is made on the thread that spawns with it.
        if let Err(e) = sys::reserve_spawn_slots() {
            log::warn!("the supervision thread cannot reserve its fds: {e}");
        }
        let spawner = Spawner::start()
            .map_err(|e| log::warn!("cannot start the spawner thread: {e}; spawning on one"))
            .ok();
        Tier {
            run_key: run_key.clone(),
            cgroups: cgroups.map(Arc::new),
            spawner,
            batch: None,
            subreaper,
            registry,
            runs: HashMap::new(),
            spares: HashMap::new(),
            escapees: Escapees::new(escapees_registry, run_key, session),
            sweeps: HashMap::new(),
            dirs: Vec::new(),
            watched: HashMap::new(),
            next_token: FIRST_WATCH_TOKEN,
        }
    }

    /// Whether `max_pids` can be enforced.
    pub(crate) fn limits_pids(&self) -> bool {
        self.cgroups.as_deref().is_some_and(Cgroups::limits_pids)
    }

    /// Where command probes run, in the cgroup tier.
    pub(crate) fn probe_cgroups(&self) -> std::io::Result<Option<ProbeCgroups>> {
        self.cgroups
            .as_deref()
            .map(Cgroups::probe_cgroups)
            .transpose()
    }

    /// Only the process group holds the runs: no cgroup, no subreaper.
    fn groups_only(&self) -> bool {
        self.cgroups.is_none() && !self.subreaper
    }

    /// Claims the orphans a subreaper host was handed (a no-op in the other tiers). Returns
    /// whether every orphan was decided (see [`marker::Examined::Undecided`]).
    fn claim(&mut self) -> bool {
        if !self.subreaper {
            return true;
        }
        let leaders: HashSet<u32> = self
            .runs
            .values()
            .filter(|r| !r.reaped)
            .map(|r| r.leader.pid())
            .collect();
        let live: HashSet<RunKey> = self
            .runs
            .iter()
            .filter(|(_, r)| !r.reaped)
            .map(|(k, _)| *k)
            .collect();
        self.escapees.claim(&leaders, |run| live.contains(&run))
    }

    /// A spawn, made ready on the supervision thread: which cgroup its run starts in.
    fn job(&mut self, plan: Plan) -> Job {
        let RunKey { id, generation } = plan.run;
        let limits = Limits {
            max_pids: plan.spec.get_max_pids(),
            max_memory: plan.spec.get_max_memory(),
        };
        // A spare cgroup is only for a run without limits: limits and the per-run memory
        // figures live in cgroups of the run's own.
        let spare = self.spares.remove(&id);
        let cgroup = match spare.filter(|_| limits.is_none()) {
            Some(spare) => spare,
            None => {
                if let (Some(spare), Some(cg)) = (spare, &self.cgroups) {
                    self.dirs.extend(cg.run_dirs(id, spare));
                }
                generation
            }
        };
        Job {
            plan,
            cgroup,
            limits,
        }
    }

    /// Takes in a spawn's result on the supervision thread: its run watched and kept.
    fn take_in(&mut self, done: Done) -> Result<Spawned> {
        let Done {
            run,
            token,
            spec,
            cgroup,
            limits,
            prepared,
            outcome,
        } = done;
        let started = match outcome {
            Ok(started) => started,
            Err(e) => {
                // Nothing ran in the run's cgroup: the next attempt may use it.
                if let Some(cg) = self.cgroups.as_ref().filter(|_| prepared) {
                    if limits.is_none() {
                        self.spares.insert(run.id, cgroup);
                    } else {
                        self.dirs.extend(cg.run_dirs(run.id, cgroup));
                    }
                }
                return Err(e);
            }
        };
        let leader = started.leader;
        let pid = leader.pid();
        if let Err(e) = self.registry.add(&leader, token) {
            // Without the exit notification we could not supervise it: end it.
            log::error!(
                "service '{}': cannot watch the new process: {e}",
                spec.name()
            );
            let _ = leader.signal_group(Signal::Kill);
        }
        if self.subreaper {
            self.escapees.remember_group(pid);
        }
        self.runs.insert(
            run,
            RunProcs {
                leader,
                reaped: false,
                cgroup: self.cgroups.as_ref().map(|_| cgroup),
                cgroup_id: started.cgroup_id,
                cgroup_path: started.cgroup_path,
                killed: false,
                limited: !limits.is_none(),
                memory_limited: limits.max_memory.is_some(),
                oom_kills_at_start: started.oom_kills_at_start,
                scanned: None,
                events: None,
            },
        );
        Ok(Spawned {
            pid,
            pidfd_ino: started.pidfd_ino,
            start_ticks: started.start_ticks,
            cgroup: self.cgroups.as_ref().map(|_| cgroup),
        })
    }

    fn spawn_error(spec: &ServiceSpec, what: &str, e: std::io::Error) -> Error {
        Error::new(
            ErrorKind::Spawn,
            format!("cannot start: cannot create its {what}"),
        )
        .with_service(spec.name())
        .with_source(e)
    }
}

impl Processes for Tier {
    fn spawn(&mut self, plan: Plan) -> Result<Spawned> {
        let job = self.job(plan);
        let done = job.run(self.cgroups.as_deref());
        self.take_in(done)
    }

    fn begin_batch(&mut self, n: usize) {
        self.batch = Some(match &self.spawner {
            Some(spawner) if n > 1 => OpenBatch::Shared(spawner.open(self.cgroups.as_ref())),
            _ => OpenBatch::Here(Vec::with_capacity(n)),
        });
    }

    fn push(&mut self, plan: Plan) {
        let job = self.job(plan);
        match self
            .batch
            .get_or_insert_with(|| OpenBatch::Here(Vec::new()))
        {
            OpenBatch::Shared(open) => open.push(job),
            OpenBatch::Here(jobs) => jobs.push(job),
        }
    }

    fn finish_batch(&mut self) -> Vec<Result<Spawned>> {
        let done = match self.batch.take() {
            Some(OpenBatch::Shared(open)) => open.finish(),
            Some(OpenBatch::Here(jobs)) => {
                let cgroups = self.cgroups.as_deref();
                jobs.into_iter().map(|job| job.run(cgroups)).collect()
            }
            None => Vec::new(),
        };
        done.into_iter().map(|d| self.take_in(d)).collect()
    }

    fn signal_group(&mut self, run: RunKey, signal: Signal) -> bool {
        self.runs
            .get(&run)
            .filter(|r| !r.reaped)
            .is_some_and(|r| r.leader.signal_group(signal).is_ok())
    }

    fn stop(&mut self, run: RunKey, signal: Signal, group_signalled: bool) {
        let Some(r) = self.runs.get(&run) else {
            return;
        };
        if !r.reaped
            && !group_signalled
            && let Err(e) = r.leader.signal_group(signal)
            && !sys::is_gone(&e)
        {
            log::warn!("service id {}: cannot send the stop signal: {e}", run.id);
        }
        if let (Some(cg), Some(generation)) = (&self.cgroups, r.cgroup) {
            // Members of the run's cgroup that left its process group get it too.
            let pgid = r.leader.pid();
            for pid in cg.pids(run.id, generation) {
                if pid != pgid && sys::proc_stat(pid).is_some_and(|s| s.pgrp != pgid) {
                    let _ = sys::signal_pid(pid, signal);
                }
            }
        }
        if self.subreaper {
            self.claim();
        } else if self.cgroups.is_none() {
            let leader = r.leader.pid();
            let scanned = self.escapees.find(run, leader);
            if let Some(r) = self.runs.get_mut(&run) {
                r.scanned = Some(scanned);
            }
        }
        self.escapees.signal(run, signal);
    }

    fn kill(&mut self, run: RunKey) {
        // A sweep has no run of its own: only what it tracks.
        if let Some(r) = self.runs.get_mut(&run) {
            let _ = r.leader.signal_group(Signal::Kill);
            if let (Some(cg), Some(generation)) = (&self.cgroups, r.cgroup) {
                r.killed = true;
                let _ = cg.kill(run.id, generation);
            }
        }
        self.escapees.signal(run, Signal::Kill);
    }

    fn reap(&mut self, run: RunKey) -> Option<Reaped> {
        let r = self.runs.get_mut(&run).filter(|r| !r.reaped)?;
        let reaped = match r.leader.reap() {
            Ok(Some(reaped)) => reaped,
            Ok(None) => return None, // spurious readiness
            Err(e) => {
                log::error!("service id {}: cannot collect the exit status: {e}", run.id);
                Reaped {
                    exit: sys::RawExit::Unknown,
                    usage: None,
                }
            }
        };
        r.reaped = true;
        self.registry.remove(&r.leader);
        Some(reaped)
    }

    fn kill_leftovers(&mut self, run: RunKey) -> Leftovers {
        let in_cgroup = match (&self.cgroups, self.runs.get(&run).and_then(|r| r.cgroup)) {
            (Some(cg), Some(generation)) => cg.populated(run.id, generation),
            _ => false,
        };
        // An orphan not decided yet (in the middle of an exec) may be this run's: the run
        // lingers, and the checks that follow claim it.
        let escaped = self.subreaper && {
            let decided = self.claim();
            self.escapees.signal(run, Signal::Kill) > 0 || !decided
        };
        let Some(r) = self.runs.get_mut(&run) else {
            return Leftovers::None;
        };
        let in_group = r.leader.group_has_members();
        if in_group || in_cgroup || escaped {
            log::warn!(
                "service id {}: its main process exited; killing what it left running",
                run.id
            );
            let _ = r.leader.signal_group(Signal::Kill);
        }
        if in_cgroup && let (Some(cg), Some(generation)) = (&self.cgroups, r.cgroup) {
            r.killed = true;
            let _ = cg.kill(run.id, generation);
        }
        // Escaped descendants too: the next run waits until they are gone.
        match (in_cgroup || escaped, in_group) {
            (true, _) => Leftovers::Lingering,
            (false, true) => Leftovers::Killed,
            (false, false) => Leftovers::None,
        }
    }

    fn is_empty(&mut self, run: RunKey, signal: Signal) -> bool {
        if self.escapees.any(run) {
            return false;
        }
        let cgroup_empty = !self.cgroup_populated(run);
        let Some(r) = self.runs.get(&run) else {
            return true;
        };
        let pgid = r.leader.pid();
        let group_empty =
            !r.leader.group_has_members() || sys::live_groups(&HashSet::from([pgid])).is_empty();
        if !(group_empty && cgroup_empty) {
            return false;
        }
        // The orphans are claimed after the group is seen empty, not before: a member that
        // left a child behind as it exited handed it to this host before it left the group.
        // One in the middle of an exec may be this run's: not empty yet.
        if !self.claim() || self.escapees.any(run) {
            return false;
        }
        let Some(r) = self.runs.get(&run) else {
            return true;
        };
        match r.scanned {
            Some(before) if self.groups_only() => !self.escapees.find_late(run, before, signal),
            _ => true,
        }
    }

    fn end(&mut self, run: RunKey, reuse: bool) -> Ended {
        let Some(r) = self.runs.remove(&run) else {
            return Ended::default();
        };
        if let Some((events, token)) = &r.events {
            self.registry.remove(events);
            self.watched.remove(token);
        }
        if r.reaped {
            // Already out of the poller.
        } else {
            self.registry.remove(&r.leader);
        }
        let (Some(cg), Some(generation)) = (&self.cgroups, r.cgroup) else {
            return Ended::default();
        };
        let ended = Ended {
            oom_killed: cg.oom_kills(run.id, generation, r.memory_limited) > r.oom_kills_at_start,
            peak_memory: cg.peak_memory(run.id, generation, r.memory_limited),
        };
        // The run's cgroup is empty now. When a restart follows, the next run starts in it
        // (unless it was killed, or has limits): no `mkdir` on the restart path, no `rmdir`
        // after. Otherwise it is removed off the supervision thread, as a stop-all of 1000
        // would leave 1000 for the shutdown to remove one by one.
        if reuse && !r.killed && !r.limited {
            self.spares.insert(run.id, generation);
        } else {
            self.dirs.extend(cg.run_dirs(run.id, generation));
        }
        ended
    }

    fn speaks_for(&mut self, run: RunKey, sender: &Credentials) -> bool {
        let Some(r) = self.runs.get(&run) else {
            return false;
        };
        // Pinned: a pid read in /proc names the sender only while the pidfd's process lives.
        let opened;
        let pidfd = match &sender.pidfd {
            Some(fd) => fd,
            None => match PidFd::open(sender.pid) {
                Ok(fd) => {
                    opened = fd;
                    &opened
                }
                Err(_) => return false,
            },
        };
        if let Some(id) = r.cgroup_id {
            if let Some(cgroup) = pidfd.cgroup_id() {
                return cgroup == id;
            }
            return sys::cgroup_of(sender.pid).is_some_and(|p| p == r.cgroup_path)
                && pidfd.is_alive();
        }
        let Some(stat) = sys::proc_stat(sender.pid) else {
            return false;
        };
        let ours = stat.pgrp == r.leader.pid() || self.escapees.is_marked_for(&stat, run);
        ours && pidfd.is_alive()
    }

    fn memory(&mut self, runs: &[RunKey]) -> Vec<u64> {
        let page = sys::page_size();
        let groups: HashSet<u32> = runs
            .iter()
            .filter_map(|k| self.runs.get(k))
            .map(|r| r.leader.pid())
            .collect();
        let mut rss: HashMap<u32, u64> = HashMap::new();
        let mut by_pid = HashMap::new();
        for p in sys::all_processes() {
            if groups.contains(&p.pgrp) {
                *rss.entry(p.pgrp).or_default() +=
                    sys::resident_pages(p.pid).unwrap_or(p.rss_pages) * page;
            }
            by_pid.insert(p.pid, p);
        }
        runs.iter()
            .map(|k| {
                let Some(r) = self.runs.get(k) else {
                    return 0;
                };
                let pgid = r.leader.pid();
                let mut used = rss.get(&pgid).copied().unwrap_or(0);
                if let (Some(cg), Some(generation)) = (&self.cgroups, r.cgroup) {
                    // Members that left the process group count too.
                    for pid in cg.pids(k.id, generation) {
                        if let Some(p) = by_pid.get(&pid).filter(|p| p.pgrp != pgid) {
                            used += sys::resident_pages(p.pid).unwrap_or(p.rss_pages) * page;
                        }
                    }
                }
                used
            })
            .collect()
    }

    fn sweep(&mut self, run: RunKey, signal: Signal) -> bool {
        // Other tiers need none: a cgroup, or the subreaper, ends them with their run.
        // Generation 0: nothing of it ran in this session (a dead host's leftovers were
        // reclaimed at `open`).
        if !self.groups_only() || run.generation == 0 {
            return false;
        }
        match self.escapees.sweep(run, signal) {
            Some(scanned) => {
                self.sweeps.insert(run.id, scanned);
                true
            }
            None => false,
        }
    }

    fn sweep_done(&mut self, run: RunKey, signal: Signal) -> bool {
        if self.escapees.any(run) {
            return false;
        }
        let Some(&scanned) = self.sweeps.get(&run.id) else {
            return true;
        };
        if self.escapees.find_late(run, scanned, signal) {
            return false;
        }
        self.sweeps.remove(&run.id);
        true
    }

    fn on_ready(&mut self, token: u64) -> Option<RunKey> {
        if token >= marked::FIRST_TOKEN {
            return self.escapees.on_ready(token);
        }
        // A lingering run's cgroup changed: the engine looks at it again (and that read
        // clears the event).
        self.watched.get(&token).copied()
    }

    fn forget(&mut self, id: u64) {
        self.spares.remove(&id);
        self.sweeps.remove(&id);
        if let Some(cg) = &self.cgroups {
            cg.remove_service(Some(id));
        }
    }

    fn take_dirs(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.dirs)
    }

    fn end_turn(&mut self) {
        self.escapees.end_turn();
    }

    fn reclaim(&mut self, store: &mut Store) -> Result<Vec<(u64, Vec<u32>)>> {
        reclaim::reclaim(store, self.cgroups.as_deref(), &self.run_key, KILL_GRACE)
    }

    fn session_stored(&mut self, id: i64) {
        self.escapees.session_stored(id);
    }

    fn finish(&mut self) {
        self.claim();
        self.escapees.reap_all(KILL_GRACE);
        self.cgroups = None;
    }
}
