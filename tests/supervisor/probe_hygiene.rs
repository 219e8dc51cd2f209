//! Probe commands (ready and health `Command` checks) are spawned as cleanly as services and
//! never outlive their check, in every tier. Before, a probe was a plain
//! `std::process::Command` killed alone on timeout: with a short timeout and a check that
//! runs `sleep` in a shell, orphaned `sleep`s piled up and survived `stop` and `shutdown`,
//! and the check inherited every fd the host held without close-on-exec.

use crate::prelude::*;
use sheepdog::{Containment, Health, Ready, RestartPolicy, Status};
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

/// A check whose shell leaves a child behind in its group, tagged with `token`.
fn sleepy_check(token: &str) -> Vec<String> {
    [
        "env",
        &format!("{TOKEN_VAR}={token}"),
        "sh",
        "-c",
        "sleep 5 & sleep 5",
    ]
    .map(String::from)
    .to_vec()
}

fn timed_out_probes_leave_nothing(tier: &Tier) -> TestResult {
    let mut h = tier.harness()?;
    let probe_token = new_token();
    // A timeout that leaves the probe time to start its shell and sleeps on a loaded
    // machine: one killed before its shell ran would show nothing to look at.
    let health = Health::command(sleepy_check(&probe_token))
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_secs(1))
        .failures(u32::MAX);
    let spec = h.sh("checked", "exec sleep 600").health(health);
    h.sup().start(spec)?;

    // Probe after probe times out; at no moment do two probes' processes live at once,
    // and each is a shell and its two sleeps at most.
    let mut seen = HashSet::new();
    let mut overlap = None;
    wait_until(Duration::from_secs(30), || {
        let live = tagged_processes(&probe_token);
        let groups: HashSet<u32> = live.iter().filter_map(|&p| pgid_of(p)).collect();
        if groups.len() > 1 || live.len() > 3 {
            overlap = Some((live, groups.clone()));
            return Some(());
        }
        seen.extend(groups);
        (seen.len() >= 5).then_some(())
    })
    .with_context(|| format!("{tier}: only {} probes ran", seen.len()))?;
    assert_eq!(
        overlap, None,
        "{tier}: processes of timed-out probes live on (processes, groups)"
    );
    assert_eq!(
        status(h.sup(), "checked"),
        Status::Online,
        "{tier}: failed probes (with no failure limit) leave the service online"
    );

    // A stop ends the probe that runs.
    h.sup().stop("checked")?;
    let gone = wait_until(Duration::from_secs(1), || {
        tagged_processes(&probe_token).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "{tier}: a probe outlived its run's stop: {:?}",
        tagged_processes(&probe_token)
    );

    // Shutdown returns only once the probe that runs is gone.
    h.sup()
        .start(h.sh("checked", "exec sleep 600").health(
            Health::command(sleepy_check(&probe_token)).timeout(Duration::from_secs(30)),
        ))?;
    wait_until(SECS_10, || {
        (!tagged_processes(&probe_token).is_empty()).then_some(())
    })
    .context("a probe runs")?;
    h.take().shutdown()?;
    let left = tagged_processes(&probe_token);
    assert!(
        left.is_empty(),
        "{tier}: a probe outlived shutdown: {left:?}"
    );
    if tier.is(Containment::Subreaper) {
        // The probes' orphans came to this host; none is left unreaped.
        let children = own_children();
        assert!(
            children.is_empty(),
            "{tier}: orphans of the probes are left unreaped: {}",
            describe_processes(&children)
        );
    }
    h.finish()
}

per_tier!(timed_out_probes_leave_nothing);

/// A ready probe of a run that is not ready in time ends with the run.
fn a_ready_probe_ends_with_a_run_that_was_not_ready_in_time(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let probe_token = new_token();
    let spec = h
        .sh("late", "exec sleep 600")
        .ready(Ready::Command(sleepy_check(&probe_token)))
        .ready_timeout(Duration::from_millis(1500))
        .restart(RestartPolicy::never());
    h.sup().start(spec)?;
    wait_until(SECS_5, || {
        (!tagged_processes(&probe_token).is_empty()).then_some(())
    })
    .context("the ready probe runs")?;
    h.sup().wait_for("late", Status::Exited, SECS_10)?;
    let gone = wait_until(Duration::from_secs(1), || {
        tagged_processes(&probe_token).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "{tier}: the ready probe outlived its run: {:?}",
        tagged_processes(&probe_token)
    );
    h.finish()
}

per_tier!(a_ready_probe_ends_with_a_run_that_was_not_ready_in_time);

/// The variable that marks the run of the test in a host that ignores SIGTERM and holds
/// fds without close-on-exec.
const UNCLEAN_HOST: &str = "SHEEPDOG_TEST_UNCLEAN_HOST";

/// In a process of its own, which holds fds without close-on-exec (one low, 251 and 900)
/// and ignores SIGTERM (set by `sh -c trap`, kept across exec): a probe sees only fds 0-2,
/// no ignored signal, and leads its own process group (under cgroup containment, in a probe
/// cgroup of its own).
fn a_probe_sees_only_stdio_and_default_signals_in_a_group_of_its_own(tier: &Tier) -> TestResult {
    if !running_alone(UNCLEAN_HOST, tier.test()) {
        let mut sh = Command::new("/bin/sh");
        sh.args(["-c", "trap '' TERM; exec \"$@\"", "sh"]);
        return run_alone(sh, tier.test(), UNCLEAN_HOST);
    }
    assert!(ignores_signal(15), "SIGTERM is ignored in this host");
    let null = std::fs::File::open("/dev/null")?;
    let mut held = Vec::new();
    for at in [3, 251, 900] {
        let fd = rustix::io::fcntl_dupfd_cloexec(&null, at)?;
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty())?;
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        assert!(raw >= at, "fd {raw} is at or above {at}");
        held.push(raw); // left open, without close-on-exec, for this process's life
    }
    let h = tier.harness()?;
    let out = h.dir.path().join("probe");
    // `exec >` moves the shell's own stdout, so that no fd is saved aside for the listing.
    let script = format!(
        "exec > {o}.fds; ls /proc/$$/fd; exec > {o}.sig; grep SigIgn /proc/$$/status; \
         exec > {o}.pgid; ps -o pgid= -p $$; exec > {o}.pid; echo $$; \
         exec > {o}.cg; cat /proc/$$/cgroup",
        o = out.display()
    );
    let spec = h.sh("probed", "exec sleep 600").ready(Ready::Command(vec![
        "sh".into(),
        "-c".into(),
        script,
    ]));
    h.sup().start(spec)?;
    h.sup().wait_for("probed", Status::Online, SECS_10)?;
    let read = |ext: &str| std::fs::read_to_string(out.with_extension(ext)).unwrap_or_default();
    let fds: Vec<String> = read("fds").lines().map(str::to_string).collect();
    assert_eq!(
        fds,
        ["0", "1", "2"],
        "{tier}: the probe's fds (the host holds {held:?})"
    );
    assert_eq!(
        read("sig").trim(),
        "SigIgn:\t0000000000000000",
        "{tier}: the probe ignores no signal"
    );
    assert_eq!(
        read("pgid").trim(),
        read("pid").trim(),
        "{tier}: the probe leads its own group"
    );
    if tier.is(Containment::Cgroup) {
        assert!(
            read("cg").contains(".probe"),
            "{tier}: the probe runs in a probe cgroup: {}",
            read("cg")
        );
    }
    h.finish()
}

per_tier!(a_probe_sees_only_stdio_and_default_signals_in_a_group_of_its_own);
