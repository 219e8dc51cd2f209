//! Spawning a batch of runs on two threads: the supervision thread and one spawner thread
//! that lives as long as the tier.
//!
//! A spawn is vfork-style: the spawning thread waits until its child has exec'd or failed,
//! most of a spawn's time. A batch (a `start_many` of a fleet) is a queue of [`Job`]s: the
//! spawner takes from it as soon as the supervision thread pushes the first, and the
//! supervision thread joins in once it has pushed the last, until the queue is empty; it then
//! waits for the spawner's last job and hands every result back in the batch's order, so its
//! callers see what spawning them one by one would have given. Nothing else of the tier's
//! state crosses: a job carries what its spawn needs and comes back as a [`Done`].
//!
//! The spawner must live as long as the supervision thread: a child's parent-death signal
//! follows the thread that spawned it, so the spawner ends only when the tier is dropped,
//! after every run is over (or with the supervision thread, whose own children then go
//! too).

use super::cgroup::{Cgroups, Limits};
use super::{Plan, RunKey};
use crate::child;
use crate::error::Result;
use crate::spec::ServiceSpec;
use crate::sys::{self, PidFd};
use crossbeam_channel::{Receiver, Sender};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;

/// One spawn, ready to run on either thread.
pub(super) struct Job {
    pub(super) plan: Plan,
    /// The generation its cgroup is named after (a spare's, or the run's own).
    pub(super) cgroup: u64,
    pub(super) limits: Limits,
}

/// A job after its spawn, for the supervision thread to take in.
pub(super) struct Done {
    pub(super) run: RunKey,
    pub(super) token: u64,
    pub(super) spec: Arc<ServiceSpec>,
    pub(super) cgroup: u64,
    pub(super) limits: Limits,
    /// Its cgroup was made ready (always, outside the cgroup tier).
    pub(super) prepared: bool,
    pub(super) outcome: Result<Started>,
}

/// What a spawn that succeeded learnt of its run.
pub(super) struct Started {
    pub(super) leader: PidFd,
    pub(super) pidfd_ino: Option<u64>,
    pub(super) start_ticks: Option<u64>,
    pub(super) cgroup_id: Option<u64>,
    pub(super) cgroup_path: String,
    pub(super) oom_kills_at_start: u64,
}

impl Job {
    /// Makes the run's cgroup (in the cgroup tier) and spawns it there; on any thread.
    pub(super) fn run(self, cgroups: Option<&Cgroups>) -> Done {
        let Job {
            plan,
            cgroup,
            limits,
        } = self;
        let mut prepared = false;
        let outcome = spawn(&plan, cgroup, limits, cgroups, &mut prepared);
        // The write ends of its pipes close here: the run holds its own copies.
        Done {
            run: plan.run,
            token: plan.token,
            spec: plan.spec,
            cgroup,
            limits,
            prepared,
            outcome,
        }
    }
}

fn spawn(
    plan: &Plan,
    cgroup: u64,
    limits: Limits,
    cgroups: Option<&Cgroups>,
    made: &mut bool,
) -> Result<Started> {
    let id = plan.run.id;
    let prepared = cgroups
        .map(|c| c.prepare(id, cgroup, limits))
        .transpose()
        .map_err(|e| super::Tier::spawn_error(&plan.spec, "cgroup", e))?;
    *made = true;
    let into = prepared.as_ref().map(|p| child::Cgroup {
        dir: p.dir_fd.as_fd(),
        procs: &p.procs,
        join: p.join.iter().map(|f| f.as_fd()).collect(),
    });
    let stderr = plan.stderr.as_ref().unwrap_or(&plan.stdout);
    let leader = child::spawn(
        &plan.spec,
        &plan.launch,
        &plan.stdout,
        stderr,
        &plan.env,
        into,
    )?;
    let pid = leader.pid();
    // The pidfs inode names the process for good; only older kernels need its start time
    // (one /proc read more on the restart path).
    let pidfd_ino = leader.inode();
    let start_ticks = match pidfd_ino {
        Some(_) => None,
        None => sys::proc_stat(pid).map(|s| s.start_time),
    };
    let memory_limited = limits.max_memory.is_some();
    let (cgroup_id, cgroup_path, oom_kills_at_start) = match (cgroups, &prepared) {
        (Some(cg), Some(p)) => (
            sys::inode_of(&p.dir_fd).ok(),
            cg.proc_path(id, cgroup),
            cg.oom_kills(id, cgroup, memory_limited),
        ),
        _ => (None, String::new(), 0),
    };
    Ok(Started {
        leader,
        pidfd_ino,
        start_ticks,
        cgroup_id,
        cgroup_path,
        oom_kills_at_start,
    })
}

/// A batch as the spawner sees it: the queue it shares with the supervision thread, where
/// its results go.
#[derive(Clone)]
struct Batch {
    jobs: Receiver<(usize, Job)>,
    done: Sender<(usize, Done)>,
    cgroups: Option<Arc<Cgroups>>,
}

impl Batch {
    /// Takes jobs until the batch is closed and none is left: bounded by the batch's
    /// gathering (the supervision thread preparing its plans) and its spawns.
    fn work(&self) {
        while let Ok((index, job)) = self.jobs.recv() {
            let done = job.run(self.cgroups.as_deref());
            if self.done.send((index, done)).is_err() {
                return;
            }
        }
    }
}

/// The spawner thread, and the channel its batches come through.
pub(super) struct Spawner {
    batches: Option<Sender<Batch>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawner thread.
    pub(super) fn start() -> std::io::Result<Spawner> {
        let (batches, queue) = crossbeam_channel::unbounded::<Batch>();
        let thread = std::thread::Builder::new()
            .name("sheepdog-spawn".into())
            .spawn(move || {
                if let Err(e) = sys::reserve_spawn_slots() {
                    log::warn!("the spawner thread cannot reserve its fds: {e}");
                }
                for batch in queue {
                    batch.work();
                }
            })?;
        Ok(Spawner {
            batches: Some(batches),
            thread: Some(thread),
        })
    }

    /// Opens a batch that the spawner thread starts taking jobs from at once, while this
    /// thread pushes the rest; [`Open::finish`] ends it.
    pub(super) fn open(&self, cgroups: Option<&Arc<Cgroups>>) -> Open {
        let (queue, taken) = crossbeam_channel::unbounded();
        let (done, results) = crossbeam_channel::unbounded();
        let batch = Batch {
            jobs: taken,
            done,
            cgroups: cgroups.cloned(),
        };
        let here = batch.clone();
        // If the spawner is gone, this thread takes every job at the finish.
        if let Some(batches) = &self.batches {
            let _ = batches.send(batch);
        }
        Open {
            queue,
            here,
            results,
            pushed: 0,
        }
    }
}

/// A batch open on the supervision thread: jobs pushed to it may be spawned by the spawner
/// thread right away.
pub(super) struct Open {
    queue: Sender<(usize, Job)>,
    here: Batch,
    results: Receiver<(usize, Done)>,
    pushed: usize,
}

impl Open {
    pub(super) fn push(&mut self, job: Job) {
        // The receiving ends are held by `here` until the finish: the send cannot fail.
        let _ = self.queue.send((self.pushed, job));
        self.pushed += 1;
    }

    /// Closes the batch, spawns on this thread what the spawner has not taken, and returns
    /// every result in the order pushed. Returns when both threads are done: bounded by the
    /// spawns, each of which waits for its child's exec.
    pub(super) fn finish(self) -> Vec<Done> {
        let Open {
            queue,
            here,
            results,
            pushed,
        } = self;
        drop(queue);
        here.work();
        drop(here);
        let mut slots: Vec<Option<Done>> = std::iter::repeat_with(|| None).take(pushed).collect();
        // Ends when the spawner has let go of the batch (after its last job).
        for (index, d) in results.iter() {
            slots[index] = Some(d);
        }
        slots
            .into_iter()
            .map(|d| d.expect("every job taken is run and its result sent"))
            .collect()
    }
}

impl Drop for Spawner {
    /// Ends the spawner thread: only once the tier is done with, since the children it
    /// spawned die with it.
    fn drop(&mut self) {
        drop(self.batches.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the spawner thread panicked");
        }
    }
}
