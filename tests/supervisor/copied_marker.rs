//! A process that merely carries a copy of a run's `SHEEPDOG_RUN` marker is never signalled:
//! not by a stop, not by the cleanup after a host's death (by its guardian, or by the next
//! `open`), in any containment tier. The innocents here are a process of uid 65534 in a
//! session of its own, started with the whole marker copied from a running service's
//! environment, and a process of the host's uid with a marker whose tag was made up. Real
//! escapees (a `setsid` daemon of the service) are still ended. Needs root (to start a
//! process as another uid); skipped otherwise.

use crate::prelude::*;
use std::process::{Child, Command};
use std::time::Duration;

const DAEMONIZE: &str = "(setsid sleep 600 &); exec sleep 600";
const INNOCENT_VAR: &str = "SHEEPDOG_TEST_INNOCENT";

/// The `SHEEPDOG_RUN` in the environment of `pid`. Read while the process is in the middle
/// of an exec, its environment reads empty: it is read again until it is through.
fn marker_of(pid: u32) -> TestResult<String> {
    wait_until(SECS_5, || env_of(pid, "SHEEPDOG_RUN")).with_context(|| {
        format!(
            "every run carries a marker, yet {} has none",
            describe_processes(&[pid])
        )
    })
}

/// The two innocents: uid 65534 with the copied marker, and the host's uid with the same
/// marker but a made-up tag; both `sleep 600` in sessions of their own. Killed on drop.
struct Innocents {
    children: Vec<Child>,
    token: String,
}

impl Innocents {
    fn start(marker: &str) -> TestResult<Innocents> {
        let token = new_token();
        let (head, _tag) = marker
            .rsplit_once(':')
            .context("a marker ends with its tag")?;
        let forged = format!("{head}:0123456789abcdef");
        let other_uid = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["setsid", "sleep", "600"])
            .env_clear()
            .env("SHEEPDOG_RUN", marker)
            .env(INNOCENT_VAR, &token)
            .spawn()
            .context("start the innocent of uid 65534 (setpriv)")?;
        let mut innocents = Innocents {
            children: vec![other_uid],
            token,
        };
        let same_uid = Command::new("setsid")
            .args(["sleep", "600"])
            .env_clear()
            .env("SHEEPDOG_RUN", forged)
            .env(INNOCENT_VAR, &innocents.token)
            .spawn()
            .context("start the innocent with a made-up tag")?;
        innocents.children.push(same_uid);
        // Until `setpriv` has changed its uid and both have become `sleep`, the first is a
        // process of the host's uid holding a verbatim copy of a run's marker: one the
        // supervisor may rightly take for the run's (see the README's threat model).
        wait_until(SECS_5, || innocents.settled().then_some(()))
            .context("the innocents started, as uid 65534 and the host's uid")?;
        Ok(innocents)
    }

    /// Both run `sleep`, the first as uid 65534.
    fn settled(&self) -> bool {
        let sleeping = |pid: u32| process_name(pid).is_some_and(|n| n == "sleep");
        let real_uid = |pid: u32| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            uids.split_whitespace().next()?.parse::<u32>().ok()
        };
        let pids = self.pids();
        self.alive() == 2 && pids.iter().all(|&p| sleeping(p)) && real_uid(pids[0]) == Some(65534)
    }

    fn alive(&self) -> usize {
        let needle = format!("{INNOCENT_VAR}={}", self.token);
        self.children
            .iter()
            .filter(|c| is_alive(c.id()) && env_has(c.id(), &needle))
            .count()
    }

    /// Each innocent, and what became of it.
    fn report(&mut self) -> String {
        let token = format!("{INNOCENT_VAR}={}", self.token);
        let what = [
            "uid 65534 with the copied marker",
            "the host's uid with a made-up tag",
        ];
        self.children
            .iter_mut()
            .zip(what)
            .map(|(c, what)| {
                let pid = c.id();
                let state = match c.try_wait() {
                    Ok(Some(status)) => format!("ended: {status}"),
                    Ok(None) if env_has(pid, &token) => "alive".to_string(),
                    Ok(None) => format!("alive, not the innocent: {}", describe_processes(&[pid])),
                    Err(e) => format!("unknown: {e}"),
                };
                format!("{what} (pid {pid}): {state}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Innocents {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a daemonizing service, starts the innocents with its marker, stops it, and checks
/// the daemon is gone and the innocents are not.
fn a_stop_spares_processes_that_only_carry_a_copied_marker(tier: &Tier) -> TestResult {
    if !is_root() {
        return skip(tier.test(), "starting a process of uid 65534 needs root");
    }
    let h = tier.harness()?;
    let spec = h
        .sh("d", DAEMONIZE)
        .stop_timeout(Duration::from_millis(300));
    let pid = h.start_pid(spec)?;
    h.wait_for_tagged(2, "the service and its daemon run")?;
    let mut innocents = Innocents::start(&marker_of(pid)?)?;
    h.sup().stop("d")?;
    let left = h.tagged();
    assert!(
        left.is_empty(),
        "{tier}: the daemon outlived the stop: {}",
        describe_processes(&left)
    );
    let alive = innocents.alive();
    assert_eq!(
        alive,
        2,
        "{tier}: a stop killed a process that only carried a copied or made-up marker: {}",
        innocents.report()
    );
    drop(innocents);
    h.finish()
}

per_tier!(a_stop_spares_processes_that_only_carry_a_copied_marker);

/// The helper host: a daemonizing service under the tier `TIER`, with a guardian if
/// `GUARDIAN` is 1, in the state directory `STATE`; says its main process's pid.
fn helper_host() -> ! {
    let sup = helper_builder()
        .guardian(helper_arg("GUARDIAN") == "1")
        .open()
        .expect("the helper host opens its supervisor");
    let spec = tagged_sh(&helper_arg("TOKEN"), "d", DAEMONIZE);
    let pid = sup.start(spec).expect("the helper host starts its service");
    println!("pid {}", pid.pid().expect("a started service has a pid"));
    serve_until_killed()
}

/// A helper host runs a daemonizing service; the innocents start with its marker; the host
/// is killed. The cleanup (the guardian's, or else the next `open`'s) ends the daemon and
/// spares the innocents.
fn the_cleanup_after_a_host_died_spares_the_innocents(tier: &Tier, guardian: bool) -> TestResult {
    if is_helper_host() {
        helper_host();
    }
    if !is_root() {
        return skip(tier.test(), "starting a process of uid 65534 needs root");
    }
    let what = if guardian {
        format!("{tier}, with a guardian")
    } else {
        format!("{tier}, without a guardian")
    };
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let token = new_token();
    let guardian_arg = if guardian { "1" } else { "0" };
    let mut host =
        HostProcess::in_tier(tier, &state, &token, &[("GUARDIAN", guardian_arg.as_ref())])?;
    let pid = host
        .said("pid ")?
        .parse::<u32>()
        .context("the helper host says its service's pid")?;
    wait_for_tagged(&token, 2, "the service and its daemon run")?;
    let mut innocents = Innocents::start(&marker_of(pid)?)?;
    host.kill()?;
    let sup = tier.builder().state_dir(&state).resurrect(false).open()?;
    let gone = wait_until(SECS_5, || tagged_processes(&token).is_empty().then_some(()));
    assert!(
        gone.is_some(),
        "{what}: the dead host's daemon is left: {}",
        describe_processes(&tagged_processes(&token))
    );
    let alive = innocents.alive();
    assert_eq!(
        alive,
        2,
        "{what}: the cleanup after the host's death killed an innocent: {}",
        innocents.report()
    );
    let reclaimed: Vec<u32> = sup.reclaimed().into_iter().flat_map(|(_, p)| p).collect();
    for pid in innocents.pids() {
        assert!(
            !reclaimed.contains(&pid),
            "{what}: innocent {pid} reported reclaimed"
        );
    }
    sup.shutdown()?;
    Ok(())
}

fn the_guardian_spares_processes_that_only_carry_a_copied_marker(tier: &Tier) -> TestResult {
    the_cleanup_after_a_host_died_spares_the_innocents(tier, true)
}

per_tier!(the_guardian_spares_processes_that_only_carry_a_copied_marker);

fn the_next_open_spares_processes_that_only_carry_a_copied_marker(tier: &Tier) -> TestResult {
    the_cleanup_after_a_host_died_spares_the_innocents(tier, false)
}

per_tier!(the_next_open_spares_processes_that_only_carry_a_copied_marker);
