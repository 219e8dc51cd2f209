//! Run markers: the `SHEEPDOG_RUN` variable in every run's environment, which tells a
//! process that left its service's process group (or outlived its host) as one of ours.
//!
//! A marker alone proves nothing: any process can copy one (a process's environment is
//! readable by its uid and by root). So a marker is sealed, and a process counts as a run's
//! only when all of these hold:
//!
//! - the marker's tag is a keyed MAC (SipHash-2-4) of its fields under the secret key of a
//!   supervisor session, made at `open` from the kernel's generator, kept in the state
//!   database and never handed to a child: nobody can make a marker for a run of ours that
//!   does not exist, nor move one to another service or run;
//! - the process's real uid is the uid the marker names (the host's, which every run has):
//!   a copied marker does not make another user's process ours;
//! - the process started (same boot) no earlier than the session that sealed the marker:
//!   nothing older than the supervisor can be its descendant.
//!
//! A process of the same uid that copied a whole marker from a run's environment passes
//! these checks; it could signal the run itself anyway. Where the cgroup tier holds, markers
//! are not used to find processes at all: membership of the run's cgroup decides.

use crate::sys;
use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// The variable in every run's environment: `<state key>:<id>:<generation>:<uid>:<session>:<tag>`.
pub(crate) const RUN_VAR: &str = "SHEEPDOG_RUN";

/// One `open` of a state directory: the secret its runs' markers are sealed with, and what
/// bounds the processes they can have started.
#[derive(Clone)]
pub(crate) struct Session {
    /// Its row in the state database; markers name it.
    pub(crate) id: i64,
    pub(crate) key: [u8; 16],
    pub(crate) boot_id: String,
    /// Clock ticks since boot when it began (the clock of `ProcStat::start_time`).
    pub(crate) started_ticks: u64,
    /// Its runs were contained in cgroups: membership decides, not markers.
    pub(crate) cgroup: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key: it would end up in a log.
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("boot_id", &self.boot_id)
            .field("started_ticks", &self.started_ticks)
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

/// What a verified marker names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) session: i64,
    pub(crate) id: u64,
    pub(crate) generation: u64,
}

impl Session {
    /// A session beginning now, with a fresh key.
    pub(crate) fn begin(cgroup: bool) -> std::io::Result<Session> {
        let mut key = [0u8; 16];
        sys::random_bytes(&mut key)?;
        Ok(Session {
            id: 0,
            key,
            boot_id: sys::boot_id(),
            started_ticks: sys::boot_ticks(),
            cgroup,
        })
    }

    fn tag(&self, state_key: &str, id: u64, generation: u64, uid: u32) -> u64 {
        let mut mac = SipHasher24::new_with_key(&self.key);
        // Fixed-width fields after the one variable-length one (and its length): no two
        // field lists hash the same bytes.
        mac.write_u64(state_key.len() as u64);
        mac.write(state_key.as_bytes());
        mac.write_u64(id);
        mac.write_u64(generation);
        mac.write_u32(uid);
        mac.write_i64(self.id);
        mac.finish()
    }

    /// The marker of run `generation` of service `id`, for a child of uid `uid`.
    pub(crate) fn seal(&self, state_key: &str, id: u64, generation: u64, uid: u32) -> String {
        let tag = self.tag(state_key, id, generation, uid);
        format!("{state_key}:{id}:{generation}:{uid}:{}:{tag:016x}", self.id)
    }
}

/// The fields of a marker of the supervisor `state_key`, unverified.
struct Fields {
    id: u64,
    generation: u64,
    uid: u32,
    session: i64,
    tag: u64,
}

fn parse(marker: &str, state_key: &str) -> Option<Fields> {
    let mut parts = marker
        .strip_prefix(state_key)?
        .strip_prefix(':')?
        .split(':');
    let fields = Fields {
        id: parts.next()?.parse().ok()?,
        generation: parts.next()?.parse().ok()?,
        uid: parts.next()?.parse().ok()?,
        session: parts.next()?.parse().ok()?,
        tag: u64::from_str_radix(parts.next()?, 16).ok()?,
    };
    parts.next().is_none().then_some(fields)
}

/// What `marker` names, if one of `sessions` sealed it (and which one), with the uid it
/// was sealed for.
pub(crate) fn verify<'a>(
    marker: &str,
    state_key: &str,
    sessions: &'a [Session],
) -> Option<(Owner, u32, &'a Session)> {
    let f = parse(marker, state_key)?;
    let session = sessions.iter().find(|s| s.id == f.session)?;
    // Not a timing-safe comparison, and it need not be: nobody learns how a comparison went
    // (a process is either signalled or not, at a stop or an `open` the prober cannot time).
    (session.tag(state_key, f.id, f.generation, f.uid) == f.tag).then_some((
        Owner {
            session: f.session,
            id: f.id,
            generation: f.generation,
        },
        f.uid,
        session,
    ))
}

/// A process found carrying a marker that proves it one of ours.
pub(crate) struct Claimed {
    pub(crate) owner: Owner,
    /// The variable's value, to check again once the process is pinned by a pidfd.
    pub(crate) marker: String,
}

/// Whether the process `stat` describes is provably a descendant of a run of one of
/// `sessions`, all of this boot: a verified marker, the marker's uid as its real uid, and a
/// start no earlier than the session's. Reads its environment and status from /proc.
pub(crate) fn claim(
    stat: &sys::ProcStat,
    state_key: &str,
    sessions: &[Session],
) -> Option<Claimed> {
    let marker = sys::environ_value(stat.pid, RUN_VAR)?;
    claim_marker(stat, marker, state_key, sessions)
}

/// What one read of a process's environment decides.
pub(crate) enum Examined {
    Ours(Claimed),
    /// It carries a marker that does not prove it a run's (forged, copied, another
    /// session's or another uid's).
    NotOurs,
    /// It carries no marker (or is gone).
    Unmarked,
    /// Its environment reads empty and it is young: in the middle of an exec, to be looked
    /// at again.
    Undecided,
}

/// [`claim`], and whether a process it would not claim may still prove ours, from one read
/// of the environment. Asking the two one after the other reads it twice, and a process
/// whose exec ends between the reads (or, like `setsid CMD`, that execs twice) can read
/// empty to the first and full to the second: neither ours nor undecided, though it carries
/// a marker.
pub(crate) fn examine(stat: &sys::ProcStat, state_key: &str, sessions: &[Session]) -> Examined {
    match sys::environ_lookup(stat.pid, RUN_VAR) {
        Some(sys::EnvLookup::Found(marker)) => claim_marker(stat, marker, state_key, sessions)
            .map_or(Examined::NotOurs, Examined::Ours),
        Some(sys::EnvLookup::Empty) if is_young(stat) => Examined::Undecided,
        _ => Examined::Unmarked,
    }
}

fn claim_marker(
    stat: &sys::ProcStat,
    marker: String,
    state_key: &str,
    sessions: &[Session],
) -> Option<Claimed> {
    let (owner, uid, session) = verify(&marker, state_key, sessions)?;
    if stat.start_time < session.started_ticks {
        return None;
    }
    if sys::process_real_uid(stat.pid)? != uid {
        return None;
    }
    Some(Claimed { owner, marker })
}

/// Started less than a second ago: a process whose environment reads empty (until the new
/// image's is set up, which can take milliseconds on a loaded machine) is looked at again
/// while it is young, rather than decided now.
pub(crate) fn is_young(stat: &sys::ProcStat) -> bool {
    sys::boot_ticks().saturating_sub(stat.start_time) < sys::clock_ticks_per_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: i64, key: u8) -> Session {
        Session {
            id,
            key: [key; 16],
            boot_id: "b".into(),
            started_ticks: 0,
            cgroup: false,
        }
    }

    #[test]
    fn a_sealed_marker_verifies_and_names_its_run() {
        let s = session(3, 7);
        let m = s.seal("k", 12, 4, 1000);
        let (owner, uid, found) = verify(&m, "k", std::slice::from_ref(&s)).unwrap();
        assert_eq!(
            owner,
            Owner {
                session: 3,
                id: 12,
                generation: 4
            }
        );
        assert_eq!((uid, found.id), (1000, 3));
    }

    #[test]
    fn a_changed_field_or_another_key_does_not_verify() {
        let s = session(3, 7);
        let m = s.seal("k", 12, 4, 1000);
        let sessions = [s.clone()];
        for forged in [
            m.replacen(":12:", ":13:", 1),
            m.replacen(":4:", ":5:", 1),
            m.replacen(":1000:", ":0:", 1),
            format!("{}0", &m[..m.len() - 1]),
            "k:12:4".to_string(),
            format!("{m}:extra"),
        ] {
            assert!(verify(&forged, "k", &sessions).is_none(), "{forged}");
        }
        assert!(verify(&m, "other", &sessions).is_none());
        assert!(verify(&m, "k", &[session(3, 8)]).is_none(), "another key");
        assert!(
            verify(&m, "k", &[session(4, 7)]).is_none(),
            "another session"
        );
    }

    #[test]
    fn fresh_sessions_have_distinct_keys() {
        let a = Session::begin(false).unwrap();
        let b = Session::begin(false).unwrap();
        assert_ne!(a.key, b.key);
        assert!(!format!("{a:?}").contains("key"));
    }
}
