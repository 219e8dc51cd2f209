//! Changes to the registry that the API asks for: definitions (`start`, `start_many`),
//! desired states (`stop`, `restart`), deletions. Each batch is checked first, then stored
//! in one transaction (one fsync however many), and only then changed in memory: a failure
//! to store changes nothing, in memory or on disk.

use super::lifecycle;
use super::pending::{Pending, Reply, Want};
use super::service::{Service, State, Then};
use super::triggers;
use super::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::graph;
use crate::info::{ServiceInfo, Status};
use crate::spec::ServiceSpec;
use crate::sys;
use crossbeam_channel::Sender;
use std::collections::{HashSet, VecDeque};
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

/// A definition `start_many` has checked and not yet stored.
struct Definition {
    spec: ServiceSpec,
    /// The service it redefines; `None`: a new one, whose id comes with the commit.
    id: Option<u64>,
    /// Its spec differs from the one in force (always, for a new service).
    changed: bool,
    /// The callers waiting on it: more than one when a batch names it more than once.
    replies: Vec<Sender<Result<ServiceInfo>>>,
}

impl Engine {
    fn find(&self, name: &str) -> Option<&Service> {
        self.services.values().find(|s| s.spec.name() == name)
    }

    /// Starts services. Every definition is checked first; then all of them are stored in one
    /// transaction; only then are they changed in memory and spawned (or restarted into their
    /// new spec). A spec that breaks a rule gets its own error and the others go on; a
    /// failure to store gives every one of them the error and changes nothing.
    pub(super) fn start_many(
        &mut self,
        items: Vec<(ServiceSpec, Sender<Result<ServiceInfo>>)>,
        now: Instant,
    ) {
        let mut defs: Vec<Definition> = Vec::new();
        let mut open_fds = None;
        for (spec, reply) in items {
            if let Err(e) = self.check_definition(&spec, &defs, &mut open_fds) {
                let _ = reply.send(Err(e));
                continue;
            }
            let in_force = |id: u64| self.services[&id].spec.as_ref() != &spec;
            if let Some(d) = defs.iter_mut().find(|d| d.spec.name() == spec.name()) {
                // Named again in the same batch: the later spec wins.
                d.changed = d.id.is_none_or(in_force);
                d.spec = spec;
                d.replies.push(reply);
                continue;
            }
            let id = self.find(spec.name()).map(|s| s.id);
            defs.push(Definition {
                changed: id.is_none_or(in_force),
                spec,
                id,
                replies: vec![reply],
            });
        }
        if defs.is_empty() {
            return;
        }
        let services = &self.services;
        let stored = self.io.store.transaction().and_then(|mut tx| {
            for d in &mut defs {
                match d.id {
                    None => d.id = Some(tx.insert_service(&d.spec, true, Status::Starting)?),
                    Some(id) => {
                        if d.changed {
                            tx.update_spec(id, &d.spec)?;
                        }
                        if !services[&id].desired_up {
                            tx.set_desired(id, true)?;
                        }
                    }
                }
            }
            tx.commit()
        });
        if let Err(e) = stored {
            self.store_failed(&e);
            for reply in defs.into_iter().flat_map(|d| d.replies) {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        // Stored: now in memory.
        let mut accepted = Vec::new();
        for d in defs {
            let id = d.id.expect("given by the commit above");
            let existed = self.services.contains_key(&id);
            if !existed {
                self.services
                    .insert(id, Service::new(id, d.spec, true, State::Stopped));
            } else if d.changed {
                let svc = self.services.get_mut(&id).expect("present");
                svc.spec = Arc::new(d.spec);
                svc.launch = None;
                svc.history = Default::default();
            }
            let svc = self.services.get_mut(&id).expect("present");
            svc.desired_up = true;
            triggers::arm(svc, &mut self.io, None);
            self.io.changes.touch(id);
            accepted.push((id, existed && !d.changed, d.replies));
        }
        for (id, unchanged, replies) in accepted {
            let svc = &self.services[&id];
            let running_as_asked = unchanged
                && matches!(svc.status(), Status::Online | Status::Starting)
                && (svc.is_up() || matches!(svc.state, State::Waiting));
            if running_as_asked {
                for reply in replies {
                    let _ = reply.send(Ok(svc.info()));
                }
                continue;
            }
            let generation = svc.generation;
            self.with_service(id, now, |svc, io| {
                lifecycle::begin_stop(svc, io, Then::Start, false, now)
            });
            for reply in replies {
                self.pending.push(Pending {
                    targets: vec![(id, generation)],
                    want: Want::Up,
                    reply: Reply::Info(reply),
                    stages: VecDeque::new(),
                    then: Then::Start,
                });
            }
        }
    }

    /// Checks a spec for `start_many`, against the services as they will be with the
    /// definitions before it in the same batch. `open_fds` caches the count of open fds for
    /// the batch.
    fn check_definition(
        &self,
        spec: &ServiceSpec,
        planned: &[Definition],
        open_fds: &mut Option<u64>,
    ) -> Result<()> {
        spec.validate()?;
        self.check_dependencies(spec, planned)?;
        if spec.get_max_pids().is_some() && !self.limits_pids {
            return Err(Error::new(
                ErrorKind::InvalidSpec,
                "invalid spec: max_pids needs the pids cgroup controller, which this supervisor does not have (see Supervisor::containment)",
            )
            .with_service(spec.name()));
        }
        if self.find(spec.name()).is_none() {
            let services = 1 + planned
                .iter()
                .filter(|d| d.id.is_none() && d.spec.name() != spec.name())
                .count();
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
        }
        Ok(())
    }

    /// Every dependency exists (or is defined earlier in the same batch), and the graph with
    /// this spec in it has no cycle.
    fn check_dependencies(&self, spec: &ServiceSpec, planned: &[Definition]) -> Result<()> {
        let invalid =
            |msg: String| Error::new(ErrorKind::InvalidSpec, msg).with_service(spec.name());
        for dep in spec.get_after() {
            if self.find(&dep.name).is_none() && !planned.iter().any(|d| d.spec.name() == dep.name)
            {
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
        // The new spec first, so that a cycle is named from the service being started.
        let mut nodes = vec![graph::Node {
            name: spec.name(),
            deps: spec.get_after().iter().map(|d| d.name.as_str()).collect(),
        }];
        let planned = planned.iter().filter(|d| d.spec.name() != spec.name());
        nodes.extend(planned.clone().map(|d| graph::Node {
            name: d.spec.name(),
            deps: d.spec.get_after().iter().map(|d| d.name.as_str()).collect(),
        }));
        nodes.extend(self.graph_nodes().into_iter().filter(|n| {
            n.name != spec.name() && !planned.clone().any(|d| d.spec.name() == n.name)
        }));
        match graph::find_cycle(&nodes) {
            Some(cycle) => Err(invalid(format!(
                "invalid spec: dependency cycle: {}",
                cycle.join(" -> ")
            ))),
            None => Ok(()),
        }
    }

    /// Refuses to delete a service that a service outside `ids` names in `after`.
    pub(super) fn check_no_dependents(&self, ids: &[u64]) -> Result<()> {
        let doomed: HashSet<&str> = ids.iter().map(|id| self.services[id].spec.name()).collect();
        for svc in self.services.values() {
            if doomed.contains(svc.spec.name()) {
                continue;
            }
            if let Some(dep) = svc
                .spec
                .get_after()
                .iter()
                .find(|d| doomed.contains(d.name.as_str()))
            {
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
            self.services
                .get_mut(id)
                .expect("filtered above")
                .desired_up = up;
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
}
