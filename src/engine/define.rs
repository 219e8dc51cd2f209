//! Changes to the registry that the API asks for: definitions (`start`, `start_many`,
//! `define`, `scale`), desired states (`stop`, `restart`, `start_target`), deletions. Each
//! batch is checked first, then stored in one transaction (one fsync however many), and
//! only then changed in memory: a failure to store changes nothing, in memory or on disk.
//!
//! A spec with instances defines one service per instance (`<name>.0`, `<name>.1`, …), each
//! a row of the registry with its own copy of the spec: a rolling reload moves them to a new
//! spec one at a time, and what it did not reach stays on the old one, on disk too.

use super::Engine;
use super::lifecycle;
use super::pending::{Pending, Reply, Want};
use super::roll::{Roll, RollReply};
use super::service::{Service, State, Then};
use super::triggers;
use crate::error::{Error, ErrorKind, Result};
use crate::graph;
use crate::info::{ServiceInfo, Status};
use crate::spec::ServiceSpec;
use crate::sys;
use crossbeam_channel::Sender;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// The fds a running service holds: its pidfd, its pipes' read ends, its two log files, and
/// a notify socket.
const FDS_PER_SERVICE: u64 = 6;
/// The fds held for a moment beyond those: a spawn's pipe write ends and cgroup directory, a
/// probe's, a read of /proc, SQLite's.
const FDS_SPARE: u64 = 8;

/// The fds in use once `n` more services run, with `open` open now (the host's and the
/// supervisor's own, and those of the services running): what fits the limit is allowed.
fn fd_budget(open: u64, n: usize) -> u64 {
    open + n as u64 * FDS_PER_SERVICE + FDS_SPARE
}

/// What a batch of definitions does with the services it defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Store them and make them run (`start`, `start_many`).
    Start,
    /// Store them; start nothing (`define`).
    Define,
}

/// A definition `start_many` has checked and not yet stored.
struct Definition {
    spec: ServiceSpec,
    /// The services it defines now (its instances, or the one service), lowest index first.
    existing: Vec<u64>,
    /// The callers waiting on it: more than one when a batch names it more than once.
    replies: Vec<Sender<Result<ServiceInfo>>>,
}

/// What storing a definition changes, worked out before the transaction.
#[derive(Default)]
struct Change {
    /// New services (their instance index), and their ids once stored.
    add: Vec<Option<u32>>,
    added: Vec<u64>,
    /// Services that stay.
    keep: Vec<Kept>,
    /// Services that go: instances past the new count, or all of them when a spec changes
    /// between instances and none.
    remove: Vec<u64>,
    /// The kept services whose runs change go to the new spec one at a time, each once the
    /// one before is ready.
    roll: bool,
}

struct Kept {
    id: u64,
    /// A run of the new spec is a run of the old one: nothing needs restarting.
    same_run: bool,
    /// The stored spec differs from the new one.
    changed: bool,
}

/// The names in use, for the checks of a batch: each service's name and its spec's.
struct Names<'a> {
    /// A service's name, or its spec's name, to the name of its spec.
    owner: HashMap<&'a str, &'a str>,
    /// A spec's name to its services, lowest index first.
    by_spec: HashMap<&'a str, Vec<(Option<u32>, u64)>>,
}

impl<'a> Names<'a> {
    fn new(services: impl Iterator<Item = &'a Service>) -> Names<'a> {
        let mut names = Names {
            owner: HashMap::new(),
            by_spec: HashMap::new(),
        };
        for s in services {
            names.owner.insert(&s.name, s.spec.name());
            names.owner.insert(s.spec.name(), s.spec.name());
            names
                .by_spec
                .entry(s.spec.name())
                .or_default()
                .push((s.instance, s.id));
        }
        for list in names.by_spec.values_mut() {
            list.sort_unstable();
        }
        names
    }

    fn services_of(&self, spec: &str) -> Vec<u64> {
        self.by_spec
            .get(spec)
            .map(|l| l.iter().map(|(_, id)| *id).collect())
            .unwrap_or_default()
    }
}

/// What storing a stop's desired states came to ([`Engine::stop_desired`]).
pub(super) enum Stored {
    /// Stored (or nothing to store); the services whose groups were signalled meanwhile.
    Done(HashSet<u64>),
    /// Refused before any signal (or with none sent): nothing was done.
    Refused(Error),
    /// The commit failed after the stop signal went to these services' groups.
    Lost(Error, HashSet<u64>),
}

impl Engine {
    /// The services of the spec called `name`, lowest index first.
    pub(super) fn services_of(&self, name: &str) -> Vec<u64> {
        let mut list: Vec<(Option<u32>, u64)> = self
            .services
            .values()
            .filter(|s| s.spec.name() == name)
            .map(|s| (s.instance, s.id))
            .collect();
        list.sort_unstable();
        list.into_iter().map(|(_, id)| id).collect()
    }

    /// Stores definitions and, in [`Mode::Start`], makes them run. Every definition is
    /// checked first; then all of them are stored in one transaction; only then are they
    /// changed in memory and spawned (or restarted into their new spec, or rolled into it
    /// one instance at a time). A spec that breaks a rule gets its own error and the others
    /// go on; a failure to store gives every one of them the error and changes nothing.
    pub(super) fn start_many(
        &mut self,
        items: Vec<(ServiceSpec, Sender<Result<ServiceInfo>>)>,
        mode: Mode,
        now: Instant,
    ) {
        let mut defs: Vec<Definition> = Vec::new();
        {
            let names = Names::new(self.services.values());
            let mut open_fds = None;
            for (spec, reply) in items {
                if let Err(e) = self.check_definition(&spec, &defs, &names, &mut open_fds, mode) {
                    let _ = reply.send(Err(e));
                    continue;
                }
                if let Some(d) = defs.iter_mut().find(|d| d.spec.name() == spec.name()) {
                    // Named again in the same batch: the later spec wins.
                    d.spec = spec;
                    d.replies.push(reply);
                    continue;
                }
                defs.push(Definition {
                    existing: names.services_of(spec.name()),
                    spec,
                    replies: vec![reply],
                });
            }
        }
        let mut changes = Vec::new();
        for d in defs {
            match self.plan_change(&d, mode) {
                Ok(change) => changes.push((d, change)),
                Err(e) => {
                    for reply in d.replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
        if changes.is_empty() {
            return;
        }
        if let Err(e) = self.store_changes(&mut changes, mode) {
            self.store_failed(&e);
            for reply in changes.into_iter().flat_map(|(d, _)| d.replies) {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        // The starts of the batch are spawned together, once every definition is carried
        // out.
        self.batched(now, |engine| {
            for (d, change) in changes {
                engine.carry_out(d, change, mode, now);
            }
        });
    }

    /// What storing `d` changes: which services it adds, keeps (and whether their runs
    /// change), removes, and whether it rolls.
    fn plan_change(&self, d: &Definition, mode: Mode) -> Result<Change> {
        let indexes = d.spec.instance_indexes();
        let mut change = Change::default();
        for &id in &d.existing {
            let svc = &self.services[&id];
            if !indexes.contains(&svc.instance) {
                change.remove.push(id);
                continue;
            }
            change.keep.push(Kept {
                id,
                same_run: svc.spec.same_run(&d.spec),
                changed: *svc.spec != d.spec,
            });
        }
        let have: HashSet<Option<u32>> = d
            .existing
            .iter()
            .map(|id| self.services[id].instance)
            .collect();
        change.add = indexes.into_iter().filter(|i| !have.contains(i)).collect();
        if mode == Mode::Define {
            // Anything but settled may run again with the spec in memory.
            if let Some(k) = change
                .keep
                .iter()
                .find(|k| !k.same_run && !self.services[&k.id].status().is_settled())
            {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "cannot redefine a running service: start it with its new spec, or stop it first",
                )
                .with_service(&*self.services[&k.id].name));
            }
        }
        // Several instances, some of whose runs change: one at a time, as `reload` does.
        change.roll = mode == Mode::Start
            && d.spec.get_instances().is_some()
            && change.keep.len() + change.add.len() >= 2
            && change.keep.iter().any(|k| !k.same_run);
        Ok(change)
    }

    /// Stores every change in one transaction.
    fn store_changes(&mut self, changes: &mut [(Definition, Change)], mode: Mode) -> Result<()> {
        let services = &self.services;
        let mut tx = self.io.store.transaction()?;
        for (d, change) in changes.iter_mut() {
            let up = mode == Mode::Start;
            let status = if up {
                Status::Starting
            } else {
                Status::Stopped
            };
            for &index in &change.add {
                change
                    .added
                    .push(tx.insert_service(&d.spec, index, up, status)?);
            }
            for k in &change.keep {
                let svc = &services[&k.id];
                if change.roll && !k.same_run {
                    // Its new spec is stored when the roll reaches it; until then it keeps
                    // its own, with the new number of instances.
                    let count = d.spec.get_instances().expect("a roll has instances");
                    if svc.spec.get_instances() != Some(count) {
                        tx.update_spec(k.id, &svc.spec.with_instances(count))?;
                    }
                } else if k.changed {
                    tx.update_spec(k.id, &d.spec)?;
                }
                if up && !svc.desired_up {
                    tx.set_desired(k.id, true)?;
                }
            }
            for &id in &change.remove {
                tx.delete_service(id)?;
            }
        }
        tx.commit()
    }

    /// What a stored change does in memory and to the runs.
    fn carry_out(&mut self, d: Definition, change: Change, mode: Mode, now: Instant) {
        let up = mode == Mode::Start;
        let spec = Arc::new(d.spec);
        for (&index, &id) in change.add.iter().zip(&change.added) {
            let mut svc = Service::new(id, index, spec.clone(), up, State::Stopped);
            if up {
                triggers::arm(&mut svc, &mut self.io, None);
            }
            self.services.insert(id, svc);
            self.io.changes.save(id);
        }
        let mut rolled = Vec::new();
        let mut to_start = Vec::new();
        for k in &change.keep {
            let svc = self.services.get_mut(&k.id).expect("kept services exist");
            if change.roll && !k.same_run {
                let count = spec.get_instances().expect("a roll has instances");
                if svc.spec.get_instances() != Some(count) {
                    svc.spec = Arc::new(svc.spec.with_instances(count));
                }
                rolled.push(k.id);
            } else if !k.same_run {
                svc.spec = spec.clone();
                svc.launch = None;
                svc.history = Default::default();
                if up {
                    to_start.push(k.id);
                }
            } else if k.changed {
                // The number of instances, or `autostart`: nothing that runs changes.
                svc.spec = spec.clone();
            }
            if up {
                svc.desired_up = true;
                let running_as_asked = k.same_run
                    && matches!(svc.status(), Status::Online | Status::Starting)
                    && (svc.is_up() || matches!(svc.state, State::Waiting));
                if !running_as_asked && !rolled.contains(&k.id) && !to_start.contains(&k.id) {
                    to_start.push(k.id);
                }
                // Its schedule, watch and watchdog, as its spec (or the roll's) says.
                triggers::arm(svc, &mut self.io, None);
            }
            self.io.changes.touch(k.id);
        }
        if !change.remove.is_empty() {
            for id in &change.remove {
                if let Some(svc) = self.services.get_mut(id) {
                    svc.desired_up = false;
                }
            }
            self.begin_staged(change.remove, Then::Delete, Want::Gone, Reply::Nobody, now);
        }
        let mut first = change.keep.first().map(|k| k.id);
        if let Some(&id) = change.added.first() {
            let index = self.services[&id].instance;
            if first.is_none_or(|f| index < self.services[&f].instance) {
                first = Some(id);
            }
        }
        let first = first.expect("a definition has a service");
        if !up {
            // Answered once the turn has published what it stored.
            for reply in d.replies {
                self.pending.push(Pending {
                    targets: Vec::new(),
                    want: Want::Up,
                    reply: Reply::Info(reply, first),
                    stages: VecDeque::new(),
                    then: Then::Settle,
                });
            }
            return;
        }
        let targets = self.targets(
            &change
                .added
                .iter()
                .chain(&to_start)
                .copied()
                .collect::<Vec<_>>(),
        );
        for &id in change.added.iter().chain(&to_start) {
            self.with_service(id, now, |svc, io| {
                lifecycle::begin_stop(svc, io, Then::Start, false, now)
            });
        }
        if change.roll {
            let roll = Roll::new(
                self.roll_order(&rolled),
                Some(spec),
                RollReply::Info(d.replies, first),
            );
            self.begin_roll(roll, now);
            return;
        }
        // With no target, answered once the turn has published what it stored.
        for reply in d.replies {
            self.pending.push(Pending {
                targets: targets.clone(),
                want: Want::Up,
                reply: Reply::Info(reply, first),
                stages: VecDeque::new(),
                then: Then::Start,
            });
        }
    }

    /// Checks a spec for `start_many`, against the services as they will be with the
    /// definitions before it in the same batch. `open_fds` caches the count of open fds for
    /// the batch.
    fn check_definition(
        &self,
        spec: &ServiceSpec,
        planned: &[Definition],
        names: &Names<'_>,
        open_fds: &mut Option<u64>,
        mode: Mode,
    ) -> Result<()> {
        spec.validate()?;
        self.check_names(spec, planned, names)?;
        self.check_dependencies(spec, planned, names)?;
        if spec.get_max_pids().is_some() && !self.limits_pids {
            return Err(Error::new(
                ErrorKind::InvalidSpec,
                "invalid spec: max_pids needs the pids cgroup controller, which this supervisor does not have (see Supervisor::containment)",
            )
            .with_service(spec.name()));
        }
        if mode == Mode::Define {
            return Ok(());
        }
        let new_here =
            |s: &ServiceSpec, existing: usize| s.instance_indexes().len().saturating_sub(existing);
        let existing = names.by_spec.get(spec.name()).map_or(0, Vec::len);
        let mut services = new_here(spec, existing);
        if services == 0 {
            return Ok(());
        }
        services += planned
            .iter()
            .filter(|d| d.spec.name() != spec.name())
            .map(|d| new_here(&d.spec, d.existing.len()))
            .sum::<usize>();
        let open = *open_fds.get_or_insert_with(|| sys::open_fds().unwrap_or(0));
        let need = fd_budget(open, services);
        if need > self.fd_limit {
            return Err(Error::new(
                ErrorKind::Spawn,
                format!(
                    "cannot start: {services} more services need about {need} file descriptors ({open} open now), and the limit is {} (raise RLIMIT_NOFILE)",
                    self.fd_limit
                ),
            )
            .with_service(spec.name()));
        }
        Ok(())
    }

    /// The names the spec's services would have are not another spec's: `web.1` cannot be
    /// both an instance of `web` and a service of its own.
    fn check_names(
        &self,
        spec: &ServiceSpec,
        planned: &[Definition],
        names: &Names<'_>,
    ) -> Result<()> {
        let mine: Vec<String> = std::iter::once(spec.name().to_string())
            .chain(
                spec.instance_indexes()
                    .into_iter()
                    .map(|i| spec.instance_name(i)),
            )
            .collect();
        let planned_owner = |n: &str| {
            planned.iter().find_map(|d| {
                let theirs = d.spec.name() == n
                    || d.spec
                        .get_instances()
                        .is_some_and(|c| (0..c).any(|i| d.spec.instance_name(Some(i)) == n));
                theirs.then(|| d.spec.name().to_string())
            })
        };
        for name in &mine {
            let owner = names
                .owner
                .get(name.as_str())
                .map(|o| o.to_string())
                .filter(|o| o != spec.name())
                .or_else(|| planned_owner(name).filter(|o| o != spec.name()));
            if let Some(owner) = owner {
                let what = if *name == owner {
                    format!("the name '{name}' is taken by service '{owner}'")
                } else {
                    format!("the name '{name}' is taken by an instance of '{owner}'")
                };
                return Err(
                    Error::new(ErrorKind::InvalidSpec, format!("invalid spec: {what}"))
                        .with_service(spec.name()),
                );
            }
        }
        Ok(())
    }

    /// Every dependency exists (or is defined earlier in the same batch), and the graph with
    /// this spec in it has no cycle.
    fn check_dependencies(
        &self,
        spec: &ServiceSpec,
        planned: &[Definition],
        names: &Names<'_>,
    ) -> Result<()> {
        let invalid =
            |msg: String| Error::new(ErrorKind::InvalidSpec, msg).with_service(spec.name());
        for dep in spec.get_after() {
            let known = names.owner.contains_key(dep.name.as_str())
                || planned.iter().any(|d| d.spec.name() == dep.name);
            if !known {
                return Err(invalid(format!(
                    "invalid spec: unknown dependency '{}'",
                    dep.name
                )));
            }
        }
        // A cycle through this service needs an edge out of it.
        if spec.get_after().is_empty() {
            return Ok(());
        }
        let owner = |n: &'_ str| -> String {
            names
                .owner
                .get(n)
                .map_or_else(|| n.to_string(), |o| o.to_string())
        };
        let deps_of = |s: &ServiceSpec| -> Vec<String> {
            s.get_after().iter().map(|d| owner(&d.name)).collect()
        };
        // The new spec first, so that a cycle is named from the service being started.
        let mut owned: Vec<(String, Vec<String>)> = vec![(spec.name().to_string(), deps_of(spec))];
        let planned = planned.iter().filter(|d| d.spec.name() != spec.name());
        owned.extend(
            planned
                .clone()
                .map(|d| (d.spec.name().to_string(), deps_of(&d.spec))),
        );
        for n in self.graph_nodes() {
            if n.name != spec.name() && !planned.clone().any(|d| d.spec.name() == n.name) {
                owned.push((
                    n.name.to_string(),
                    n.deps.iter().map(|d| d.to_string()).collect(),
                ));
            }
        }
        let nodes: Vec<graph::Node<'_>> = owned
            .iter()
            .map(|(name, deps)| graph::Node {
                name,
                deps: deps.iter().map(String::as_str).collect(),
            })
            .collect();
        match graph::find_cycle(&nodes) {
            Some(cycle) => Err(invalid(format!(
                "invalid spec: dependency cycle: {}",
                cycle.join(" -> ")
            ))),
            None => Ok(()),
        }
    }

    /// Refuses to delete services of which a service outside `ids` names one in `after`,
    /// and refuses to delete some instances of a spec but not all (that is `scale`).
    pub(super) fn check_deletable(&self, ids: &[u64]) -> Result<()> {
        let doomed: HashSet<u64> = ids.iter().copied().collect();
        let mut specs: HashSet<&str> = HashSet::new();
        for id in ids {
            let svc = &self.services[id];
            if specs.insert(svc.spec.name()) {
                let all = self.services_of(svc.spec.name());
                if !all.iter().all(|i| doomed.contains(i)) {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "cannot delete one instance of '{}': delete all of them, or scale it down",
                            svc.spec.name()
                        ),
                    )
                    .with_service(&*svc.name));
                }
            }
        }
        for svc in self.services.values() {
            if doomed.contains(&svc.id) {
                continue;
            }
            let gone = |name: &str| {
                specs.contains(name)
                    || self
                        .services
                        .values()
                        .any(|s| doomed.contains(&s.id) && *s.name == *name)
            };
            if let Some(dep) = svc.spec.get_after().iter().find(|d| gone(&d.name)) {
                return Err(Error::new(
                    ErrorKind::InUse,
                    format!(
                        "cannot delete: '{}' depends on it (delete or change '{}' first)",
                        svc.spec.name(),
                        svc.spec.name()
                    ),
                )
                .with_service(dep.name.as_str()));
            }
        }
        Ok(())
    }

    /// Stores that `ids` are wanted down, sending the stop signal to the groups of `first`
    /// (the stop's first wave, when it has several services) before the commit: the rows
    /// are written in the transaction first, so that whatever refuses them does so before
    /// any signal; then the signals go out; then the commit and its fsync, while the
    /// processes end. Nothing is acknowledged before the commit. A host that dies between
    /// the signals and the commit leaves the services wanted up on disk: its guardian ends
    /// their processes, and the next `open` starts them again.
    pub(super) fn stop_desired(&mut self, ids: &[u64], first: &[u64]) -> Stored {
        let changed: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| self.services.get(id).is_some_and(|s| s.desired_up))
            .collect();
        if changed.is_empty() {
            return Stored::Done(self.signal_groups(first));
        }
        let mut signalled = HashSet::new();
        let stored = {
            let Engine { services, io, .. } = &mut *self;
            let written = io.store.transaction().and_then(|mut tx| {
                for &id in &changed {
                    tx.set_desired(id, false)?;
                }
                Ok(tx)
            });
            match written {
                Err(e) => Err((e, false)),
                Ok(tx) => {
                    if first.len() > 1 {
                        for id in first {
                            if services.get(id).is_some_and(|svc| {
                                lifecycle::signal_group_first(svc, &mut *io.procs)
                            }) {
                                signalled.insert(*id);
                            }
                        }
                    }
                    tx.commit().map_err(|e| (e, true))
                }
            }
        };
        match stored {
            Ok(()) => {
                for id in &changed {
                    let svc = self.services.get_mut(id).expect("filtered above");
                    svc.desired_up = false;
                    self.io.changes.touch(*id);
                }
                Stored::Done(signalled)
            }
            Err((e, signalled_any)) => {
                self.store_failed(&e);
                if signalled_any && !signalled.is_empty() {
                    Stored::Lost(e, signalled)
                } else {
                    Stored::Refused(e)
                }
            }
        }
    }

    /// Sets the desired state of several services: stored in one transaction, then in
    /// memory. On failure neither changes.
    pub(super) fn set_desired_many(&mut self, ids: &[u64], up: bool) -> Result<()> {
        let changed: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| self.services.get(id).is_some_and(|s| s.desired_up != up))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let stored = self.io.store.transaction().and_then(|mut tx| {
            for &id in &changed {
                tx.set_desired(id, up)?;
            }
            tx.commit()
        });
        if let Err(e) = stored {
            self.store_failed(&e);
            return Err(e);
        }
        for id in &changed {
            let svc = self.services.get_mut(id).expect("filtered above");
            svc.desired_up = up;
            self.io.changes.touch(*id);
        }
        Ok(())
    }

    /// Disarms the triggers of services the operator no longer wants up.
    pub(super) fn disarm_triggers(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(svc) = self.services.get_mut(id) {
                triggers::disarm(svc, &mut self.io);
            }
        }
    }

    /// Removes services from the registry, all in one transaction; in memory they stay until
    /// their stop is over. On failure nothing changes.
    pub(super) fn delete_rows(&mut self, ids: &[u64]) -> Result<()> {
        let stored = self.io.store.transaction().and_then(|mut tx| {
            for &id in ids {
                tx.delete_service(id)?;
            }
            tx.commit()
        });
        if let Err(e) = stored {
            self.store_failed(&e);
            return Err(e);
        }
        for id in ids {
            if let Some(svc) = self.services.get_mut(id) {
                // Nothing may start it again while it stops.
                svc.desired_up = false;
            }
        }
        Ok(())
    }

    /// Starts the services of a target that do not run (stopped, exited, errored), with the
    /// specs they have, and leaves those that run (or wait to) alone. Returns how many it
    /// started, once each is spawned (or waits for its dependencies).
    pub(super) fn start_target(
        &mut self,
        ids: Vec<u64>,
        reply: Sender<Result<usize>>,
        now: Instant,
    ) {
        if let Err(e) = self.set_desired_many(&ids, true) {
            let _ = reply.send(Err(e));
            return;
        }
        let idle: Vec<u64> = ids
            .into_iter()
            .filter(|id| {
                let svc = &self.services[id];
                svc.is_stopping()
                    || matches!(
                        svc.state,
                        State::Stopped | State::Exited | State::Errored(_)
                    )
            })
            .collect();
        let targets = self.targets(&idle);
        self.batched(now, |engine| {
            for &id in &idle {
                engine.with_service(id, now, |svc, io| {
                    lifecycle::begin_stop(svc, io, Then::Start, false, now)
                });
            }
        });
        self.pending.push(Pending {
            targets,
            want: Want::Up,
            reply: Reply::Count(reply, idle.len()),
            stages: VecDeque::new(),
            then: Then::Start,
        });
    }

    /// Changes the number of instances of the spec called `name` to `n`: new instances take
    /// the spec of the lowest-numbered one (and start if it is meant to run); the
    /// highest-numbered go. Returns how many instances were added or removed, once the new
    /// ones are spawned or the removed ones gone.
    pub(super) fn scale(&mut self, name: &str, n: u32, reply: Sender<Result<usize>>, now: Instant) {
        let ids = self.services_of(name);
        let Some(&first) = ids.first() else {
            let error = match self.services.values().find(|s| *s.name == *name) {
                Some(s) => Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "scale takes the name of a service, not of one of its instances ('{}')",
                        s.spec.name()
                    ),
                ),
                None => Error::new(ErrorKind::NotFound, "no such service"),
            };
            let _ = reply.send(Err(error.with_service(name)));
            return;
        };
        let base = self.services[&first].spec.clone();
        if base.get_instances().is_none() {
            let _ = reply.send(Err(Error::new(
                ErrorKind::InvalidInput,
                "has no instances to scale: start it with a spec that sets instances",
            )
            .with_service(name)));
            return;
        }
        let new = base.with_instances(n);
        if let Err(e) = new.validate() {
            let _ = reply.send(Err(e));
            return;
        }
        let up = ids.iter().any(|id| self.services[id].desired_up);
        let have: HashSet<Option<u32>> = ids.iter().map(|id| self.services[id].instance).collect();
        let add: Vec<Option<u32>> = (0..n).map(Some).filter(|i| !have.contains(i)).collect();
        let remove: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| self.services[id].instance.is_some_and(|k| k >= n))
            .collect();
        let keep: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !remove.contains(id))
            .collect();
        let status = if up {
            Status::Starting
        } else {
            Status::Stopped
        };
        let services = &self.services;
        let stored = self.io.store.transaction().and_then(|mut tx| {
            let mut added = Vec::new();
            for &index in &add {
                added.push(tx.insert_service(&new, index, up, status)?);
            }
            for id in &keep {
                tx.update_spec(*id, &services[id].spec.with_instances(n))?;
            }
            for id in &remove {
                tx.delete_service(*id)?;
            }
            tx.commit()?;
            Ok(added)
        });
        let added = match stored {
            Ok(added) => added,
            Err(e) => {
                self.store_failed(&e);
                let _ = reply.send(Err(e));
                return;
            }
        };
        for id in &keep {
            let svc = self.services.get_mut(id).expect("kept");
            svc.spec = Arc::new(svc.spec.with_instances(n));
            if svc.desired_up {
                triggers::arm(svc, &mut self.io, None);
            }
            self.io.changes.touch(*id);
        }
        let new = Arc::new(new);
        for (&index, &id) in add.iter().zip(&added) {
            let mut svc = Service::new(id, index, new.clone(), up, State::Stopped);
            if up {
                triggers::arm(&mut svc, &mut self.io, None);
            }
            self.services.insert(id, svc);
            self.io.changes.save(id);
        }
        if !remove.is_empty() {
            let count = remove.len();
            for id in &remove {
                self.services.get_mut(id).expect("present").desired_up = false;
            }
            self.begin_staged(
                remove,
                Then::Delete,
                Want::Gone,
                Reply::Count(reply, count),
                now,
            );
            return;
        }
        let started = if up { added.clone() } else { Vec::new() };
        let targets = self.targets(&started);
        for &id in &started {
            self.with_service(id, now, |svc, io| {
                lifecycle::begin_stop(svc, io, Then::Start, false, now)
            });
        }
        self.pending.push(Pending {
            targets,
            want: Want::Up,
            reply: Reply::Count(reply, added.len()),
            stages: VecDeque::new(),
            then: Then::Start,
        });
    }
}
