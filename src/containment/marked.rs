//! Processes of a run tracked one by one, outside the tier's container: a descendant that
//! left its service's process group (claimed by a subreaper host, or found by its sealed
//! `SHEEPDOG_RUN` marker), or, during a stop in the process-group tier, a member of the
//! group that may still leave it. Each is held by a pidfd in the supervision thread's epoll,
//! so its exit is seen at once and it is reaped (if it is the host's child) or let go.

use super::RunKey;
use super::marker::{self, Examined, RUN_VAR, Session};
use super::reclaim::{self, Pinned};
use crate::signal::Signal;
use crate::sys::{self, PidFd, ProcStat, Registry};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The first poll token of a tracked process; the supervision thread's own count from 1.
pub(super) const FIRST_TOKEN: u64 = 1 << 62;
/// At most this many new pids are looked at one by one when a stop looks for late processes;
/// more, and the stop reads /proc instead.
const LATE_PIDS_MAX: u32 = 4096;
/// How many process groups of runs a subreaper host remembers, to tell a dead orphan of ours
/// from the host's own children.
const RUN_GROUPS_KEPT: usize = 4096;

/// The moment of a read of /proc, in the terms processes started later can be told by.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scan {
    /// Clock ticks since boot (a process's start time is in these).
    ticks: u64,
    /// The last pid the kernel had handed out (`None` where it cannot be read).
    last_pid: Option<u32>,
}

impl Scan {
    /// The last pid handed out at the read, if it could be read.
    pub(super) fn last_pid(&self) -> Option<u32> {
        self.last_pid
    }

    pub(super) fn now() -> Scan {
        // The pid first: a process created between the two reads is then looked at again.
        let last_pid = sys::last_pid();
        Scan {
            ticks: sys::boot_ticks(),
            last_pid,
        }
    }
}

struct Escapee {
    pidfd: PidFd,
    run: RunKey,
    /// It was in the run's group when the stop signalled the group, so that signal reached
    /// it; only a SIGKILL is sent to it again.
    got_group_signal: bool,
}

/// A process provably of one of this session's runs.
struct Marked {
    pid: u32,
    pgrp: u32,
    /// Clock ticks since boot.
    start_time: u64,
    /// The variable's value.
    marker: String,
}

/// The tracked processes, and what finds them.
pub(super) struct Escapees {
    registry: Rc<Registry>,
    tracked: HashMap<u64, Escapee>,
    next_token: u64,
    run_key: String,
    session: Session,
    /// Orphans a subreaper host could not attribute, reported once each: pid and start time.
    unclaimed: HashSet<(u32, u64)>,
    /// Subreaper: the process groups of the runs started (the newest few thousand).
    run_groups: HashSet<u32>,
    run_groups_order: VecDeque<u32>,
    /// The processes carrying this session's markers, by service id, and when they were read:
    /// one read of /proc per loop turn serves every stop in it (a stop-all reads it once).
    marked: Option<(Scan, HashMap<u64, Vec<Marked>>)>,
    /// Every process on the machine, read at most once per loop turn.
    procs: Option<Vec<ProcStat>>,
    /// The pids created during stops, read once each.
    new_pids: Option<NewPids>,
    /// The next read of new pids reads again those not there or not decided before
    /// ([`fresh_read`](Escapees::fresh_read)).
    recheck_due: bool,
}

/// Pids `from..=to` as read from /proc: those of this session's runs, by service id, and
/// those that were not there or not decided yet.
struct NewPids {
    from: u32,
    to: u32,
    by_id: HashMap<u64, Vec<(u32, String)>>,
    /// Not there at the last read: maybe a fork that was not through yet.
    absent: Vec<u32>,
    /// There, young, not proved ours yet, but may still prove so: read again, with what
    /// they were and when they were first read so.
    unsure: Vec<(u32, Unsure, Instant)>,
}

impl NewPids {
    /// Whether one of the pids up to `upto` (all, if `None`) may still prove a run's: no
    /// stop whose group was seen empty when `upto` was the last pid is decided yet.
    fn holding(&self, upto: Option<u32>) -> bool {
        self.unsure.iter().any(|&(pid, unsure, _)| {
            unsure != Unsure::Member && upto.is_none_or(|upto| pid <= upto)
        })
    }

    /// Files what a read of `pid` found; `first`: when it was first read unsure, if it was.
    fn record(&mut self, pid: u32, read: Read, first: Option<Instant>) {
        match read {
            Read::Gone => self.absent.push(pid),
            Read::Ours(id, marker) => self.by_id.entry(id).or_default().push((pid, marker)),
            Read::NotOurs => {}
            // Read again a moment later still so: not in the middle of an exec, not ours.
            Read::Unsure(Unsure::Leader)
                if first.is_some_and(|at| at.elapsed() >= LEADER_READ_AGAIN) => {}
            Read::Unsure(unsure) => {
                self.unsure
                    .push((pid, unsure, first.unwrap_or_else(Instant::now)));
            }
        }
    }
}

/// How long after it was first read a young group leader without a marker is read again
/// before it is decided not ours: an exec caught midway is through by then.
const LEADER_READ_AGAIN: Duration = Duration::from_millis(50);

/// What one read of a new pid tells.
enum Read {
    /// No process (yet, or any more).
    Gone,
    /// A process of service `.0`'s runs, with its marker.
    Ours(u64, String),
    NotOurs,
    /// Not proved ours, but young, and caught where a process of ours can read so.
    Unsure(Unsure),
}

/// A young process that may still prove ours: caught in the middle of an exec, its
/// environment empty, or only part of its old one (a `setsid` daemon read as `setsid`
/// without its marker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unsure {
    /// Its environment reads empty: it holds the stops until it is read again otherwise,
    /// or is a second old.
    Exec,
    /// It leads a process group of its own and shows no marker (the mark of an escape,
    /// `setsid` or `setpgid`): it holds the stops until it is read again
    /// [`LEADER_READ_AGAIN`] after its first read.
    Leader,
    /// It is in the group of a stopping run (which is not empty then): read again, it
    /// holds nothing.
    Member,
}

/// Reads `pid`: ours (a verified marker), not ours, or not decided yet. `ties`: the process
/// groups of the stopping runs.
///
/// Not [`marker::examine`]'s rule for a young process without a marker (undecided until a
/// second old, as for a subreaper's orphans): while other processes create short-lived ones,
/// thousands of new pids are young and not ours, and a host that keeps starting daemons
/// would hold every stop for a second. Only a young one that leads a group of its own without
/// any marker holds the stops, and only until it is read again a moment later (and only
/// those stops whose group was seen empty after its pid was handed out: see
/// [`NewPids::holding`]); one in a stopping run's group is read again.
fn read_pid(pid: u32, run_key: &str, sessions: &[Session], ties: &HashSet<u32>) -> Read {
    let Some(stat) = sys::proc_stat(pid) else {
        return Read::Gone;
    };
    match marker::examine(&stat, run_key, sessions) {
        Examined::Ours(claimed) => Read::Ours(claimed.owner.id, claimed.marker),
        Examined::Undecided => Read::Unsure(Unsure::Exec),
        Examined::NotOurs if stat.state != b'Z' && marker::is_young(&stat) => {
            if stat.pgrp == pid && sys::environ_value(pid, RUN_VAR).is_none() {
                Read::Unsure(Unsure::Leader)
            } else if ties.contains(&stat.pgrp) {
                Read::Unsure(Unsure::Member)
            } else {
                Read::NotOurs
            }
        }
        Examined::NotOurs => Read::NotOurs,
    }
}

impl Escapees {
    pub(super) fn new(registry: Rc<Registry>, run_key: String, session: Session) -> Escapees {
        Escapees {
            registry,
            tracked: HashMap::new(),
            next_token: FIRST_TOKEN,
            run_key,
            session,
            unclaimed: HashSet::new(),
            run_groups: HashSet::new(),
            run_groups_order: VecDeque::new(),
            marked: None,
            procs: None,
            new_pids: None,
            recheck_due: true,
        }
    }

    /// The session's row in the store: the markers it seals name it.
    pub(super) fn session_stored(&mut self, id: i64) {
        self.session.id = id;
    }

    /// Forgets what this turn read of /proc.
    pub(super) fn end_turn(&mut self) {
        self.marked = None;
        self.procs = None;
    }

    /// The late checks that follow see /proc as it is from now on: the next read of new pids
    /// reads again every pid that was not there or not decided before, and the list of every
    /// process is read again. Called after the group emptiness checks they answer for, once
    /// for all of them (see `Tier::settle`).
    pub(super) fn fresh_read(&mut self) {
        self.recheck_due = true;
        self.procs = None;
    }

    /// Whether the process (pinned by a pidfd, so a pid read in /proc names it) carries a
    /// verified marker of `run`.
    pub(super) fn is_marked_for(&self, stat: &ProcStat, run: RunKey) -> bool {
        marker::claim(stat, &self.run_key, std::slice::from_ref(&self.session))
            .is_some_and(|c| c.owner.id == run.id && c.owner.generation == run.generation)
    }

    /// Remembers a new run's process group (subreaper: a dead orphan in it is ours to reap).
    pub(super) fn remember_group(&mut self, pgid: u32) {
        self.run_groups.insert(pgid);
        self.run_groups_order.push_back(pgid);
        if self.run_groups_order.len() > RUN_GROUPS_KEPT
            && let Some(old) = self.run_groups_order.pop_front()
        {
            self.run_groups.remove(&old);
        }
    }

    fn track(&mut self, pidfd: PidFd, run: RunKey, got_group_signal: bool) {
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = self.registry.add(&pidfd, token) {
            log::error!("cannot watch escaped process {}: {e}", pidfd.pid());
            return;
        }
        self.tracked.insert(
            token,
            Escapee {
                pidfd,
                run,
                got_group_signal,
            },
        );
    }

    fn is_tracked(&self, pid: u32) -> bool {
        self.tracked.values().any(|e| e.pidfd.pid() == pid)
    }

    /// Whether any process of `run` is still tracked.
    pub(super) fn any(&self, run: RunKey) -> bool {
        self.tracked.values().any(|e| e.run == run)
    }

    /// Sends `signal` to the tracked processes of `run` (one the group's stop signal reached,
    /// only a SIGKILL); returns how many there were.
    pub(super) fn signal(&self, run: RunKey, signal: Signal) -> usize {
        let mut n = 0;
        for e in self.tracked.values() {
            if e.run == run && (!e.got_group_signal || signal == Signal::Kill) {
                let _ = e.pidfd.signal(signal);
                n += 1;
            }
        }
        n
    }

    /// A tracked process's pidfd fired: reaps it if it was the host's child, and says whose
    /// it was once it has ended. `None`: not one of these tokens, or a spurious wake-up.
    pub(super) fn on_ready(&mut self, token: u64) -> Option<RunKey> {
        let e = self.tracked.get(&token)?;
        if let Ok(None) = e.pidfd.reap() {
            return None; // spurious readiness
        }
        let e = self.tracked.remove(&token).expect("present above");
        self.registry.remove(&e.pidfd);
        Some(e.run)
    }

    /// With a subreaper host: claims the orphans re-parented to it, by their sealed marker.
    /// An orphan of a run that is over (`live` says which runs are not) is killed at once;
    /// one without a marker is reported once if it sits in a session of its own (a `setsid`
    /// daemon), the mark of an escape, since the host's own children look the same
    /// otherwise. `leaders`: the pids of the runs' main processes, which are not orphans.
    ///
    /// Returns whether every orphan was decided: `false` while one is in the middle of an
    /// exec ([`Examined::Undecided`]), to be looked at again.
    pub(super) fn claim(&mut self, leaders: &HashSet<u32>, live: impl Fn(RunKey) -> bool) -> bool {
        let host_session = sys::session_of(std::process::id());
        let mut decided = true;
        let children = sys::own_children();
        // Those reaped since (by the host) are forgotten: their pids may come back.
        self.unclaimed.retain(|(pid, _)| children.contains(pid));
        for pid in children {
            if leaders.contains(&pid) || self.is_tracked(pid) {
                continue;
            }
            // Our child until reaped, so its pid cannot be reused meanwhile. A zombie shows
            // no environment; one that was in the process group of a run of ours (a member
            // whose leader died first, re-parented dead) is ours to reap.
            let stat = sys::proc_stat(pid);
            // Left alone already, unless the pid now names another process (the one left
            // alone was reaped by the host and its pid handed out again between two looks).
            let started = stat.as_ref().map_or(0, |s| s.start_time);
            if self.unclaimed.contains(&(pid, started)) {
                continue;
            }
            if stat.as_ref().is_some_and(|s| s.state == b'Z') {
                let pgrp = stat.map_or(0, |s| s.pgrp);
                if self.run_groups.contains(&pgrp) {
                    if let Ok(fd) = PidFd::open(pid) {
                        let _ = fd.reap();
                    }
                    continue;
                }
            }
            let sessions = std::slice::from_ref(&self.session);
            let examined = stat
                .as_ref()
                .map(|s| marker::examine(s, &self.run_key, sessions));
            let claimed = match examined {
                Some(Examined::Ours(claimed)) => Some(claimed),
                Some(Examined::Undecided) => {
                    decided = false;
                    continue;
                }
                // Caught in the middle of an exec, a process can also read part of its old
                // environment (a `setsid` daemon read as `setsid` without its marker): a
                // young one is looked at again until it is a second old.
                Some(Examined::NotOurs) if stat.as_ref().is_some_and(marker::is_young) => {
                    decided = false;
                    continue;
                }
                Some(Examined::NotOurs) | None => None,
            };
            let Some(claimed) = claimed else {
                let name = || {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    comm.trim().to_string()
                };
                if sys::environ_value(pid, RUN_VAR).is_some() {
                    log::warn!(
                        "process {pid} ({}) was re-parented to the host with a {RUN_VAR} that does not prove it a run's (forged, copied or of another uid): it is left alone",
                        name()
                    );
                } else if sys::session_of(pid) != host_session {
                    log::warn!(
                        "process {pid} ({}) was re-parented to the host in a session of its own and carries no {RUN_VAR}: it cannot be attributed to a service and is left alone",
                        name()
                    );
                }
                self.unclaimed.insert((pid, started));
                continue;
            };
            let run = RunKey {
                id: claimed.owner.id,
                generation: claimed.owner.generation,
            };
            let pidfd = match reclaim::pin_or_later(pid, &claimed.marker) {
                Pinned::Held(fd) => fd,
                Pinned::Later => {
                    decided = false;
                    continue;
                }
                Pinned::No => continue,
            };
            if !live(run) {
                let _ = pidfd.signal(Signal::Kill);
            }
            log::info!(
                "service id {}: process {pid} left its process group; it is tracked",
                run.id
            );
            self.track(pidfd, run, false);
        }
        decided
    }

    /// The processes provably of service `id`'s runs in this session, and when /proc was
    /// read for them: once per loop turn for all services.
    fn take_marked(&mut self, id: u64) -> (Scan, Vec<Marked>) {
        let (run_key, session) = (&self.run_key, &self.session);
        let (scanned, by_id) = self.marked.get_or_insert_with(|| {
            let scanned = Scan::now();
            let me = std::process::id();
            let mut by_id: HashMap<u64, Vec<Marked>> = HashMap::new();
            for p in sys::all_processes().iter().filter(|p| p.pid != me) {
                let Some(claimed) = marker::claim(p, run_key, std::slice::from_ref(session)) else {
                    continue;
                };
                by_id.entry(claimed.owner.id).or_default().push(Marked {
                    pid: p.pid,
                    pgrp: p.pgrp,
                    start_time: p.start_time,
                    marker: claimed.marker,
                });
            }
            (scanned, by_id)
        });
        (*scanned, by_id.remove(&id).unwrap_or_default())
    }

    /// Process-group tier, at a stop: tracks every process of the service's runs (members of
    /// the group too, so one that leaves it afterwards stays known) under the stopping run,
    /// so that the stop signals them, waits for them and SIGKILLs them at the deadline.
    /// Returns when /proc was read.
    pub(super) fn find(&mut self, run: RunKey, leader: u32) -> Scan {
        let (scanned, found) = self.take_marked(run.id);
        for m in found {
            if m.pid == leader || self.is_tracked(m.pid) {
                continue;
            }
            let Some(pidfd) = reclaim::pin(m.pid, &m.marker) else {
                continue;
            };
            if m.pgrp != leader {
                log::info!(
                    "service id {}: process {} left its process group; stopping it too",
                    run.id,
                    m.pid
                );
            }
            // A member the group's stop signal reached: one that was in the group and had
            // started a clock tick or more before this read. One forked in between (a
            // handler of the stop signal that forks) gets the signal of its own.
            let got_group_signal = m.pgrp == leader && m.start_time + 1 < scanned.ticks;
            self.track(pidfd, run, got_group_signal);
        }
        scanned
    }

    /// Process-group tier, at a stop of a service without a run: tracks the processes its
    /// earlier runs left (a `setsid` daemon of a main process that exited by itself) under
    /// `run` (its current generation) and sends them `signal`. Returns when /proc was read,
    /// if it found any.
    pub(super) fn sweep(&mut self, run: RunKey, signal: Signal) -> Option<Scan> {
        let (scanned, found) = self.take_marked(run.id);
        let mut any = false;
        for m in found {
            if self.is_tracked(m.pid) {
                continue;
            }
            let Some(pidfd) = reclaim::pin(m.pid, &m.marker) else {
                continue;
            };
            log::info!(
                "service id {}: process {} of an earlier run left its process group; stopping it",
                run.id,
                m.pid
            );
            let _ = pidfd.signal(signal);
            self.track(pidfd, run, false);
            any = true;
        }
        any.then_some(scanned)
    }

    /// Looks for processes of `run`'s service started since `before` (forked by a member
    /// that was still running, then gone), tracks them under `run` and sends them `signal`.
    /// Returns whether it found any, or one that may prove the run's once its exec is through.
    /// `emptied`: when the run's group was seen empty (what started after it cannot be the
    /// run's); `ties`: the process groups of the stopping runs ([`Read::Unsure`]).
    ///
    /// What it reads of pids read before is as fresh as the last
    /// [`fresh_read`](Escapees::fresh_read): the caller calls that after the run's group was
    /// seen empty.
    pub(super) fn find_late(
        &mut self,
        run: RunKey,
        before: Scan,
        emptied: Scan,
        signal: Signal,
        ties: &HashSet<u32>,
    ) -> bool {
        let last_pid = sys::last_pid();
        let mut undecided = false;
        // Pids are handed out in order: what was created since the stop's read has a pid
        // after the last one then. Each new pid is read once, whatever the number of stops
        // that ask (a stop-all of 1000 would otherwise read every pid the rest of the machine
        // created meanwhile once per service). After a wrap, or where the last pid cannot be
        // read, every process started since then (by its start time) is looked at.
        let candidates: Vec<(u32, String)> = match (before.last_pid, last_pid) {
            (Some(a), Some(b)) if a == b => Vec::new(),
            (Some(a), Some(b)) if b > a && b - a <= LATE_PIDS_MAX => {
                let late = self.read_new_pids(a + 1, b, ties);
                // A process in the middle of an exec may be this run's: not over yet.
                undecided = late.holding(emptied.last_pid);
                let mine = late.by_id.get(&run.id).map_or(&[][..], Vec::as_slice);
                mine.iter().filter(|(pid, _)| *pid > a).cloned().collect()
            }
            _ => {
                // A process started in the tick of the read may have been missed by it.
                let since = before.ticks.saturating_sub(1);
                let procs = self.procs.get_or_insert_with(sys::all_processes);
                let sessions = std::slice::from_ref(&self.session);
                let mut mine = Vec::new();
                for p in procs.iter().filter(|p| p.start_time >= since) {
                    match read_pid(p.pid, &self.run_key, sessions, ties) {
                        Read::Ours(id, marker) if id == run.id => mine.push((p.pid, marker)),
                        // Read anew each time here: held while young.
                        Read::Unsure(Unsure::Exec | Unsure::Leader)
                            if p.start_time <= emptied.ticks =>
                        {
                            undecided = true;
                        }
                        _ => {}
                    }
                }
                mine
            }
        };
        let me = std::process::id();
        let mut found = false;
        for (pid, marker) in candidates {
            if pid == me || self.is_tracked(pid) {
                continue;
            }
            let pidfd = match reclaim::pin_or_later(pid, &marker) {
                Pinned::Held(fd) => fd,
                Pinned::Later => {
                    undecided = true;
                    continue;
                }
                Pinned::No => continue,
            };
            log::info!(
                "service id {}: process {pid} was started during its stop; stopping it too",
                run.id
            );
            let _ = pidfd.signal(signal);
            self.track(pidfd, run, false);
            found = true;
        }
        found || undecided
    }

    /// The processes of this session's runs among pids `from..=to`, read from /proc once
    /// each: a pid below the last one handed out is not handed out again before a wrap, so
    /// what a read found stays true (but for processes that died since, which pinning
    /// tells).
    ///
    /// Two kinds of pid are read again, but only at the first read after a
    /// [`fresh_read`](Escapees::fresh_read), once for every stop that asks then (read at
    /// every call, a stop-all of 1000 beside a host creating processes read thousands of
    /// absent pids per service):
    /// - a pid that was not there: it may have been a fork not through yet (a pid is
    ///   handed out before its process shows), by a member of a stopping group, whose child
    ///   may leave the group before the group is seen empty;
    /// - a young process not decided yet ([`Read::Unsure`]).
    ///
    /// Why once after the group checks is enough: a fork in progress keeps its parent alive
    /// (inside the fork call), and the child shows in /proc in the same step that ends the
    /// fork. Every live process of a stopping run is in the run's group, or tracked (found
    /// at the stop's read, or as a late one since), or late and not read yet. So when a
    /// run's group was seen empty, nothing of it tracked, and this read follows (the fresh
    /// read comes after every group check of the loop turn), a parent still in the middle
    /// of a fork can only be a late process of the run: read now (a new pid, or one read
    /// again here) it is found and tracked, and the run is not over. Its child's pid, not
    /// there yet, stays among the absent ones, and the run's next check (at the exit of
    /// what was tracked, or the next group check timer) is answered by a later turn's fresh
    /// read, which reads that pid again.
    fn read_new_pids(&mut self, from: u32, to: u32, ties: &HashSet<u32>) -> &NewPids {
        let keep = self.new_pids.as_ref().is_some_and(|n| {
            // Not after a wrap, and never more than a few stops' worth.
            to >= n.to && to - from.min(n.from) <= 4 * LATE_PIDS_MAX
        });
        if !keep {
            // Read anew below, the whole range.
            self.new_pids = None;
        }
        let recheck = std::mem::take(&mut self.recheck_due);
        let (run_key, session) = (&self.run_key, &self.session);
        let n = self.new_pids.get_or_insert_with(|| NewPids {
            from: to + 1,
            to,
            by_id: HashMap::new(),
            absent: Vec::new(),
            unsure: Vec::new(),
        });
        let sessions = std::slice::from_ref(session);
        if recheck {
            // Those not there before: the common case, a short-lived process that is gone,
            // costs one signal-0 call.
            for pid in std::mem::take(&mut n.absent) {
                if sys::pid_exists(pid) {
                    n.record(pid, read_pid(pid, run_key, sessions, ties), None);
                } else {
                    n.absent.push(pid);
                }
            }
            for (pid, _, first) in std::mem::take(&mut n.unsure) {
                match read_pid(pid, run_key, sessions, ties) {
                    // It ended: a pid is not handed out again before a wrap.
                    Read::Gone => {}
                    read => n.record(pid, read, Some(first)),
                }
            }
        }
        let ranges = [(from, n.from.saturating_sub(1)), (n.to + 1, to)];
        for (lo, hi) in ranges {
            for pid in lo..=hi {
                n.record(pid, read_pid(pid, run_key, sessions, ties), None);
            }
        }
        n.from = n.from.min(from);
        n.to = to;
        n
    }

    /// At shutdown every service is down, but an escapee of a run that was already over may
    /// still be dying: kills what is left and reaps it (within `patience`), so that no zombie
    /// of ours stays with the host.
    pub(super) fn reap_all(&mut self, patience: Duration) {
        for e in self.tracked.values() {
            let _ = e.pidfd.signal(Signal::Kill);
        }
        let deadline = Instant::now() + patience;
        while !self.tracked.is_empty() && Instant::now() < deadline {
            self.tracked
                .retain(|_, e| matches!(e.pidfd.reap(), Ok(None)));
            if !self.tracked.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for e in self.tracked.values() {
            log::error!(
                "escaped process {} survived SIGKILL at shutdown",
                e.pidfd.pid()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    /// A `sleep` started now, its environment `env` only.
    fn young(env: &[(&str, &str)], own_group: bool) -> Child {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").env_clear().envs(env.iter().copied());
        if own_group {
            cmd.process_group(0);
        }
        cmd.spawn().expect("sleep starts")
    }

    fn end(mut child: Child) {
        child.kill().expect("killed");
        child.wait().expect("reaped");
    }

    fn read(child: &Child, session: &Session, ties: &HashSet<u32>) -> Read {
        read_pid(child.id(), "k", std::slice::from_ref(session), ties)
    }

    #[test]
    fn a_young_group_leader_without_a_marker_holds_the_stops_until_read_again() {
        let session = Session::begin(false).unwrap();
        let child = young(&[("PATH", "/usr/bin:/bin")], true);
        let read = read(&child, &session, &HashSet::new());
        end(child);
        assert!(matches!(read, Read::Unsure(Unsure::Leader)));
    }

    #[test]
    fn a_young_process_in_a_stopping_group_is_read_again_without_holding_the_stops() {
        let session = Session::begin(false).unwrap();
        let child = young(&[("PATH", "/usr/bin:/bin")], false);
        let group = sys::proc_stat(child.id()).expect("it runs").pgrp;
        let tied = read(&child, &session, &HashSet::from([group]));
        let untied = read(&child, &session, &HashSet::new());
        end(child);
        assert!(matches!(tied, Read::Unsure(Unsure::Member)), "in the group");
        assert!(
            matches!(untied, Read::NotOurs),
            "unrelated: decided at once"
        );
    }

    #[test]
    fn a_process_with_a_marker_of_ours_is_ours_and_one_with_another_is_not() {
        let session = Session::begin(false).unwrap();
        let marker = session.seal("k", 7, 2, sys::real_uid());
        let ours = young(&[(RUN_VAR, marker.as_str())], true);
        let other = Session::begin(false)
            .unwrap()
            .seal("k", 7, 2, sys::real_uid());
        // A group leader with a marker, another session's: not an exec caught midway.
        let foreign = young(&[(RUN_VAR, other.as_str())], true);
        let (read_ours, read_foreign) = (
            read(&ours, &session, &HashSet::new()),
            read(&foreign, &session, &HashSet::new()),
        );
        end(ours);
        end(foreign);
        assert!(matches!(read_ours, Read::Ours(7, m) if m == marker));
        assert!(matches!(read_foreign, Read::NotOurs));
    }

    #[test]
    fn a_leader_without_a_marker_holds_only_stops_emptied_after_it_and_only_until_read_again() {
        let mut n = NewPids {
            from: 100,
            to: 200,
            by_id: HashMap::new(),
            absent: Vec::new(),
            unsure: Vec::new(),
        };
        n.record(150, Read::Unsure(Unsure::Leader), None);
        n.record(160, Read::Unsure(Unsure::Member), None);
        assert!(
            n.holding(Some(150)),
            "a stop emptied after its pid was handed out"
        );
        assert!(
            !n.holding(Some(149)),
            "nor one emptied before: it cannot be its"
        );
        // Read again a moment later, still a leader without a marker: decided not ours.
        let first = Instant::now() - LEADER_READ_AGAIN;
        n.unsure.clear();
        n.record(150, Read::Unsure(Unsure::Leader), Some(first));
        n.record(160, Read::Unsure(Unsure::Member), Some(first));
        assert_eq!(n.unsure.len(), 1, "only the member stays, read again later");
        assert!(!n.holding(None), "a member holds nothing");
    }

    #[test]
    fn a_pid_not_there_is_read_again_only_after_a_fresh_read() {
        let poller = sys::Poller::new(8).unwrap();
        let mut escapees = Escapees::new(
            poller.registry(),
            "k".into(),
            Session::begin(false).unwrap(),
        );
        let gone = young(&[], false);
        let pid = gone.id();
        end(gone);
        let ties = HashSet::new();
        let absent = |e: &mut Escapees| e.read_new_pids(pid, pid, &ties).absent.clone();
        assert_eq!(absent(&mut escapees), [pid], "the first read");
        // Read again only when a fresh read is due: taken by the first read after it.
        escapees.fresh_read();
        assert!(escapees.recheck_due);
        assert_eq!(absent(&mut escapees), [pid]);
        assert!(
            !escapees.recheck_due,
            "read once for every stop that asks after"
        );
    }
}
