//! Ending what a dead host left running: at the next `open` of its state directory, and in
//! its guardian the moment it dies. Only processes provably of its runs are signalled:
//!
//! - everything in the supervisor's run cgroups (nothing else can be there);
//! - a run's process group, when the process holding the group's pid is the run's leader by
//!   its recorded identity (pidfs inode, or start time), or, when no process holds that pid
//!   any more, the group's members of the host's uid (the kernel keeps a pid allocated while
//!   a group of that id has members, so such a group is the run's);
//! - anywhere else, a process whose `SHEEPDOG_RUN` marker verifies under a stored session
//!   key, with the marker's uid and a start no earlier than the session (see
//!   [`marker`](super::marker)); not for sessions whose runs were in cgroups, where membership
//!   decides.

use super::cgroup::Cgroups;
use super::marker::{self, Session};
use crate::error::Result;
use crate::signal::Signal;
use crate::store::Store;
use crate::sys;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

/// The stored sessions of this boot, as markers are verified with them.
pub(crate) fn sessions_of_this_boot(store: &Store, boot_id: &str) -> Result<Vec<Session>> {
    Ok(store
        .sessions()?
        .into_iter()
        .filter(|s| s.boot_id == boot_id)
        .filter_map(|s| {
            Some(Session {
                id: s.id,
                key: s.key.try_into().ok()?,
                boot_id: s.boot_id,
                started_ticks: s.started_ticks,
                cgroup: s.cgroup,
            })
        })
        .collect())
}

/// Kills what a dead host left (see the module docs), waits up to `patience` for it to be
/// gone, marks its open runs ended (`host died`), and returns the pids per service id. The
/// caller commits the store's run records ([`Store::flush`]).
pub(crate) fn reclaim(
    store: &mut Store,
    cgroups: Option<&Cgroups>,
    state_key: &str,
    patience: Duration,
) -> Result<Vec<(u64, Vec<u32>)>> {
    let boot_id = sys::boot_id();
    let me = std::process::id();
    let uid = sys::real_uid();
    let mut reclaimed: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    // Whatever is in a run cgroup belongs to a dead host: nothing of ours runs yet.
    if let Some(cg) = cgroups {
        for (id, pids) in cg.reclaim(patience) {
            reclaimed.entry(id).or_default().extend(pids);
        }
    }
    let open = store.open_runs()?;
    let mut groups = HashSet::new();
    // Processes killed one by one, waited for one by one.
    let mut marked = Vec::new();
    let mut all = None;
    for run in &open {
        if run.boot_id != boot_id || run.pid == me {
            continue;
        }
        // The kernel keeps a pid allocated while a process group of that id has members,
        // so: a process now holding the pid is either the run's leader (then its group is
        // the run's) or a newer process (then no member of the run's group is left, and a
        // group of that id is the newer one's). Without any, leftover members are ours.
        if let Ok(fd) = sys::PidFd::open(run.pid) {
            let stat = sys::proc_stat(run.pid);
            // On pidfs the inode names the very process; else the start time does.
            let same = match (run.pidfd_ino, fd.inode()) {
                (Some(stored), Some(now)) => stored == now,
                _ => stat
                    .as_ref()
                    .is_some_and(|s| Some(s.start_time) == run.start_ticks),
            };
            if !same {
                continue;
            }
            let leads = stat.is_some_and(|s| s.state != b'Z' && s.pgrp == run.pid);
            if leads {
                log::warn!(
                    "service id {}: killing process group {} left by a previous host",
                    run.service_id,
                    run.pid
                );
                let members: Vec<u32> = all
                    .get_or_insert_with(sys::all_processes)
                    .iter()
                    .filter(|p| p.pgrp == run.pid)
                    .map(|p| p.pid)
                    .collect();
                reclaimed.entry(run.service_id).or_default().extend(members);
                let _ = fd.signal_group(Signal::Kill);
                groups.insert(run.pid);
                continue;
            }
        }
        // The leader is gone (or a zombie): members of its group may live on. Only those
        // with the run's uid (the host's, unless it ran as another user) are signalled: a
        // process of another user never joins a group of ours by accident. When they are
        // all of them, the group is killed at once (a member forking meanwhile cannot slip
        // through).
        let uid = run.uid.unwrap_or(uid);
        let procs = all.get_or_insert_with(sys::all_processes);
        let in_group: Vec<u32> = procs
            .iter()
            .filter(|p| p.pgrp == run.pid && p.pid != run.pid)
            .map(|p| p.pid)
            .collect();
        let members: Vec<u32> = in_group
            .iter()
            .copied()
            .filter(|&pid| sys::process_real_uid(pid) == Some(uid))
            .collect();
        if !members.is_empty() {
            log::warn!(
                "service id {}: killing the remaining members of process group {} left by a previous host",
                run.service_id,
                run.pid
            );
            if members.len() == in_group.len() {
                let _ = sys::signal_pgid(run.pid, Signal::Kill);
                groups.insert(run.pid);
            } else {
                for &pid in &members {
                    if let Ok(fd) = sys::PidFd::open(pid)
                        && sys::proc_stat(pid).is_some_and(|s| s.pgrp == run.pid)
                    {
                        let _ = fd.signal(Signal::Kill);
                    }
                }
                marked.extend(&members);
            }
            reclaimed.entry(run.service_id).or_default().extend(members);
        }
    }
    // A process that left its group (a `setsid` daemon) is found by its sealed marker, in
    // the tiers without cgroups. Nothing of ours runs yet, so every claim is a leftover.
    let sessions: Vec<Session> = sessions_of_this_boot(store, &boot_id)?
        .into_iter()
        .filter(|s| !s.cgroup)
        .collect();
    if !sessions.is_empty() {
        let procs = all.get_or_insert_with(sys::all_processes);
        for p in procs.iter().filter(|p| p.pid != me) {
            let Some(claimed) = marker::claim(p, state_key, &sessions) else {
                continue;
            };
            let Some(fd) = pin(p.pid, &claimed.marker) else {
                continue;
            };
            let id = claimed.owner.id;
            log::warn!(
                "service id {id}: killing process {} left by a previous host",
                p.pid
            );
            let _ = fd.signal(Signal::Kill);
            reclaimed.entry(id).or_default().insert(p.pid);
            marked.push(p.pid);
        }
    }
    let deadline = Instant::now() + patience;
    while marked
        .iter()
        .any(|&pid| sys::proc_stat(pid).is_some_and(|s| s.state != b'Z'))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    while !groups.is_empty() && Instant::now() < deadline {
        groups = sys::live_groups(&groups);
        if !groups.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    if !groups.is_empty() {
        log::error!("process groups {groups:?} left by a previous host survived SIGKILL");
    }
    store.close_open_runs();
    Ok(reclaimed
        .into_iter()
        .map(|(id, pids)| (id, pids.into_iter().collect()))
        .collect())
}

/// A pidfd for `pid` if it still carries `marker`: pinned by the pidfd, a pid that now names
/// another process shows another environment.
pub(crate) fn pin(pid: u32, marker: &str) -> Option<sys::PidFd> {
    match pin_or_later(pid, marker) {
        Pinned::Held(fd) => Some(fd),
        Pinned::No | Pinned::Later => None,
    }
}

/// What [`pin_or_later`] found.
pub(crate) enum Pinned {
    Held(sys::PidFd),
    /// Gone, or another process's now.
    No,
    /// Its environment reads empty and it started less than a second ago: in the middle of
    /// an exec (a `setsid CMD` daemon execs twice), to be pinned at a later look. Whoever
    /// must not miss it waits for that.
    Later,
}

/// [`pin`], telling a process in the middle of an exec, whose marker cannot be read yet,
/// from one that is gone or not the one that carried `marker`.
pub(crate) fn pin_or_later(pid: u32, marker: &str) -> Pinned {
    let Ok(fd) = sys::PidFd::open(pid) else {
        return Pinned::No;
    };
    match sys::environ_lookup(pid, marker::RUN_VAR) {
        Some(sys::EnvLookup::Found(value)) if value == marker => Pinned::Held(fd),
        // Young only, as for `marker::examine`: one that emptied its environment for good is
        // not waited for.
        Some(sys::EnvLookup::Empty)
            if sys::proc_stat(pid).is_some_and(|s| marker::is_young(&s)) =>
        {
            Pinned::Later
        }
        _ => Pinned::No,
    }
}
