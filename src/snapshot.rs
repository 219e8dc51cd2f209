//! What the supervision thread publishes for the API to read without asking it: a snapshot
//! of every service, updated at the end of each loop turn, and the event hub.

use crate::error::{Error, ErrorKind, Result};
use crate::events::Hub;
use crate::info::ServiceInfo;
use crate::logs::reader::Activity;
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Shared by the handle and the supervision thread.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) table: Mutex<Table>,
    /// Notified whenever the table changes.
    pub(crate) changed: Condvar,
    pub(crate) hub: Arc<Hub>,
    /// Wakes log followers when the pump has written something.
    pub(crate) activity: Arc<Activity>,
    /// What `open` found left running by a dead previous host and killed: (service, pids).
    pub(crate) reclaimed: Mutex<Vec<(String, Vec<u32>)>>,
    /// Rung at the end of each loop turn, when the turn's replies are sent: the control
    /// socket's thread waits on it for the replies to its calls.
    pub(crate) replied: crate::bell::Bell,
    /// Orphans reaped (see [`crate::Orphans`]).
    pub(crate) orphans_reaped: std::sync::atomic::AtomicU64,
}

/// The services as last published.
#[derive(Default)]
pub(crate) struct Table {
    pub(crate) services: BTreeMap<u64, ServiceInfo>,
    /// The supervision thread has ended.
    pub(crate) shut_down: bool,
}

impl Table {
    /// Resolves a target (a name, a numeric id, or `all`) to ids.
    pub(crate) fn resolve(&self, target: &str) -> Result<Vec<u64>> {
        resolve(
            target,
            self.services
                .iter()
                .map(|(id, s)| (*id, s.name(), s.definition())),
        )
    }

    /// Resolves a target that must be one service.
    pub(crate) fn resolve_one(&self, target: &str, what: &str) -> Result<u64> {
        resolve_one(
            target,
            what,
            self.services
                .iter()
                .map(|(id, s)| (*id, s.name(), s.definition())),
        )
    }
}

/// Resolves a target among `services` (id, name, the name of its spec): `all` is every one;
/// a number is an id; anything else a name, or the name of a spec with instances (all of
/// them).
pub(crate) fn resolve<'a>(
    target: &str,
    services: impl Iterator<Item = (u64, &'a str, &'a str)>,
) -> Result<Vec<u64>> {
    if target == "all" {
        return Ok(services.map(|(id, _, _)| id).collect());
    }
    let by_id = (!target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()))
        .then(|| target.parse::<u64>().ok())
        .flatten();
    let ids: Vec<u64> = services
        .filter(|&(id, name, definition)| match by_id {
            Some(want) => id == want,
            None => name == target || definition == target,
        })
        .map(|(id, _, _)| id)
        .collect();
    if ids.is_empty() {
        return Err(Error::new(ErrorKind::NotFound, "no such service").with_service(target));
    }
    Ok(ids)
}

/// Resolves a target that must be one service: not `all`, and not the name of a spec with
/// several instances.
pub(crate) fn resolve_one<'a>(
    target: &str,
    what: &str,
    services: impl Iterator<Item = (u64, &'a str, &'a str)>,
) -> Result<u64> {
    one_service(target, what)?;
    let services: Vec<_> = services.collect();
    let ids = resolve(target, services.iter().copied())?;
    match ids[..] {
        [id] => Ok(id),
        _ => {
            let names: Vec<&str> = services
                .iter()
                .filter(|(id, _, _)| ids.contains(id))
                .map(|(_, name, _)| *name)
                .collect();
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{what} takes one service, and '{target}' has {} instances: name one ({})",
                    names.len(),
                    names.join(", ")
                ),
            )
            .with_service(target))
        }
    }
}

/// Refuses `all` where one service is meant.
pub(crate) fn one_service(target: &str, what: &str) -> Result<()> {
    if target == "all" {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{what} takes one service, not all"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_by_name_id_or_all() {
        let services = || {
            [
                (3, "web", "web"),
                (7, "12", "12"),
                (8, "api.0", "api"),
                (9, "api.1", "api"),
            ]
            .into_iter()
        };
        assert_eq!(resolve("web", services()).unwrap(), [3]);
        assert_eq!(resolve("7", services()).unwrap(), [7]);
        assert_eq!(resolve("all", services()).unwrap(), [3, 7, 8, 9]);
        assert_eq!(
            resolve("api", services()).unwrap(),
            [8, 9],
            "every instance"
        );
        assert_eq!(resolve("api.1", services()).unwrap(), [9], "one instance");
        assert_eq!(resolve_one("api.0", "describe", services()).unwrap(), 8);
        let err = resolve_one("api", "describe", services()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.to_string()
                .contains("has 2 instances: name one (api.0, api.1)"),
            "{err}"
        );
        // A name made of digits is found by id only: "12" is no id here.
        assert_eq!(
            resolve("12", services()).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            resolve("db", services()).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            one_service("all", "describe").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
