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
    fn now() -> Scan {
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
}

/// Pids `from..=to` as read from /proc: those of this session's runs, by service id, and
/// those that were not there or not decided yet.
struct NewPids {
    from: u32,
    to: u32,
    by_id: HashMap<u64, Vec<(u32, String)>>,
    absent: Vec<u32>,
    /// One of them was in the middle of an exec at the last read, not decided yet.
    pending: bool,
    /// Young leaders of a group of their own without a marker, and when each was first
    /// read so: read again until [`LEADER_READ_AGAIN`] has passed.
    leaders: HashMap<u32, Instant>,
}

/// How long a young group leader without a marker is read again before it is decided not
/// ours: a `setsid` daemon caught in the middle of its exec reads so (part of its old
/// environment, without the marker), and its exec is through by then. Short, so that the
/// `setsid` processes others keep starting hold a stop only briefly.
const LEADER_READ_AGAIN: Duration = Duration::from_millis(50);

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
            let foreign = matches!(examined, Some(Examined::NotOurs));
            let claimed = match examined {
                Some(Examined::Ours(claimed)) => Some(claimed),
                Some(Examined::Undecided) => {
                    decided = false;
                    continue;
                }
                // Caught in the middle of an exec, a process can also read part of its old
                // environment (a `setsid` daemon read as `setsid` without its marker): a
                // young one is looked at again until it is a second old.
                Some(Examined::NotOurs | Examined::Unmarked)
                    if stat.as_ref().is_some_and(marker::is_young) =>
                {
                    decided = false;
                    continue;
                }
                Some(Examined::NotOurs | Examined::Unmarked) | None => None,
            };
            let Some(claimed) = claimed else {
                let name = || {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    comm.trim().to_string()
                };
                if foreign {
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
    pub(super) fn find_late(&mut self, run: RunKey, before: Scan, signal: Signal) -> bool {
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
                let late = self.read_new_pids(a + 1, b);
                // A process in the middle of an exec may be this run's: not over yet.
                undecided = late.pending;
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
                    match marker::examine(p, &self.run_key, sessions) {
                        Examined::Ours(c) if c.owner.id == run.id => mine.push((p.pid, c.marker)),
                        Examined::Undecided => undecided = true,
                        Examined::Ours(_) | Examined::NotOurs | Examined::Unmarked => {}
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
    /// tells). A pid that was not there is looked at again by every later call: it may have
    /// been a fork that was not through yet (a pid is handed out before its process shows),
    /// one whose parent was still in a stopping group.
    fn read_new_pids(&mut self, from: u32, to: u32) -> &NewPids {
        let keep = self.new_pids.as_ref().is_some_and(|n| {
            // Not after a wrap, and never more than a few stops' worth.
            to >= n.to && to - from.min(n.from) <= 4 * LATE_PIDS_MAX
        });
        if !keep {
            self.new_pids = None;
        }
        let (run_key, session) = (&self.run_key, &self.session);
        let n = self.new_pids.get_or_insert_with(|| NewPids {
            from: to + 1,
            to,
            by_id: HashMap::new(),
            absent: Vec::new(),
            pending: false,
            leaders: HashMap::new(),
        });
        let sessions = std::slice::from_ref(session);
        let mut pending = false;
        let leaders = &mut n.leaders;
        let mut read = |pid: u32, by_id: &mut HashMap<u64, Vec<(u32, String)>>| -> bool {
            let Some(stat) = sys::proc_stat(pid) else {
                return false;
            };
            match marker::examine(&stat, run_key, sessions) {
                Examined::Ours(claimed) => by_id
                    .entry(claimed.owner.id)
                    .or_default()
                    .push((pid, claimed.marker)),
                Examined::Undecided => {
                    pending = true;
                    return false;
                }
                // A `setsid` daemon in the middle of its exec can read part of its old
                // environment, without the marker: read again a moment later.
                Examined::Unmarked
                    if stat.state != b'Z' && stat.pgrp == pid && marker::is_young(&stat) =>
                {
                    let first = *leaders.entry(pid).or_insert_with(Instant::now);
                    if first.elapsed() < LEADER_READ_AGAIN {
                        pending = true;
                        return false;
                    }
                }
                Examined::NotOurs | Examined::Unmarked => {}
            }
            true
        };
        // Those not there before: the common case, a short-lived process that is gone, costs
        // one signal-0 call.
        let mut absent = std::mem::take(&mut n.absent);
        absent.retain(|&pid| !(sys::pid_exists(pid) && read(pid, &mut n.by_id)));
        let ranges = [(from, n.from.saturating_sub(1)), (n.to + 1, to)];
        for (lo, hi) in ranges {
            for pid in lo..=hi {
                if !read(pid, &mut n.by_id) {
                    absent.push(pid);
                }
            }
        }
        // Decided, or gone: a pid is not handed out again before a wrap.
        n.leaders.retain(|pid, _| absent.contains(pid));
        n.absent = absent;
        n.pending = pending;
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
    use std::process::Command;

    #[test]
    fn a_young_group_leader_without_a_marker_keeps_a_stop_undecided_only_until_read_again() {
        let poller = sys::Poller::new(8).unwrap();
        let mut escapees = Escapees::new(
            poller.registry(),
            "k".into(),
            Session::begin(false).unwrap(),
        );
        // What a `setsid` daemon caught in the middle of its exec reads as: a group of its
        // own, part of an environment, no marker.
        let mut leader = Command::new("sleep")
            .arg("30")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .process_group(0)
            .spawn()
            .expect("sleep starts");
        let pid = leader.id();
        let first = escapees.read_new_pids(pid, pid);
        let (held, absent) = (first.pending, first.absent.clone());
        let deadline = Instant::now() + Duration::from_secs(5);
        let decided = loop {
            let n = escapees.read_new_pids(pid, pid);
            if !n.pending || Instant::now() >= deadline {
                break !n.pending && n.absent.is_empty();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        leader.kill().expect("killed");
        leader.wait().expect("reaped");
        assert!(held, "undecided at its first read");
        assert_eq!(absent, [pid], "kept to be read again");
        assert!(
            decided,
            "decided not ours once read again {LEADER_READ_AGAIN:?} later"
        );
    }
}
