//! Probe commands (ready and health `Command` checks) are spawned as cleanly as services and
//! never outlive their check. Before, a probe was a plain `std::process::Command` killed
//! alone on timeout: with a 300 ms timeout and a check that runs `sleep` in a shell, orphaned
//! `sleep`s piled up and survived `stop` and `shutdown`, and the check inherited every fd the
//! host held without close-on-exec.

use crate::common::*;
use sheepdog::{Containment, Health, Ready, RestartPolicy, Status, Supervisor};
use std::collections::HashSet;
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

fn timed_out_probes_leave_nothing(containment: Containment) {
    let dir = tempfile::tempdir().unwrap();
    let sup = match Supervisor::builder()
        .state_dir(dir.path().join("state"))
        .containment(containment)
        .open()
    {
        Ok(sup) => sup,
        Err(e) => return eprintln!("skipped: no {containment:?} containment here ({e})"),
    };
    let h = Harness {
        sup: Some(sup),
        dir,
        token: new_token(),
    };
    let probe_token = new_token();
    let health = Health::command(sleepy_check(&probe_token))
        .interval(Duration::from_millis(100))
        .timeout(Duration::from_millis(300))
        .failures(u32::MAX);
    let spec = h.sh("checked", "exec sleep 600").health(health);
    h.sup().start(spec).unwrap();

    // Probe after probe times out; at no moment do two probes' processes live at once,
    // and each is a shell and its two sleeps at most.
    let mut seen = HashSet::new();
    let enough = wait_until(Duration::from_secs(20), || {
        let live = tagged_processes(&probe_token);
        let groups: HashSet<u32> = live.iter().filter_map(|&p| pgid_of(p)).collect();
        assert!(
            groups.len() <= 1 && live.len() <= 3,
            "processes of timed-out probes live on: {live:?} in groups {groups:?}"
        );
        seen.extend(groups);
        (seen.len() >= 8).then_some(())
    });
    assert!(enough.is_some(), "only {} probes ran", seen.len());
    assert_eq!(status(h.sup(), "checked"), Status::Online);

    // A stop ends the probe that runs.
    h.sup().stop("checked").unwrap();
    let gone = wait_until(Duration::from_secs(1), || {
        tagged_processes(&probe_token).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "a probe outlived its run's stop: {:?}",
        tagged_processes(&probe_token)
    );

    // Shutdown returns only once the probe that runs is gone.
    h.sup()
        .start(
            h.sh("checked", "exec sleep 600").health(
                Health::command(sleepy_check(&probe_token)).timeout(Duration::from_secs(30)),
            ),
        )
        .unwrap();
    wait_until(SECS_10, || {
        (!tagged_processes(&probe_token).is_empty()).then_some(())
    })
    .expect("a probe runs");
    let mut h = h;
    h.sup.take().unwrap().shutdown().unwrap();
    let left = tagged_processes(&probe_token);
    assert!(left.is_empty(), "a probe outlived shutdown: {left:?}");
    h.finish();
}

#[test]
fn timed_out_probes_leave_nothing_in_their_cgroup() {
    timed_out_probes_leave_nothing(Containment::Cgroup);
}

#[test]
fn timed_out_probes_leave_nothing_in_their_process_group() {
    timed_out_probes_leave_nothing(Containment::ProcessGroup);
}

/// In a process of its own: a subreaper host stays one for good, and the killed probes'
/// orphans come to it.
#[test]
fn timed_out_probes_leave_nothing_behind_a_subreaper_host() {
    if std::env::var_os("SHEEPDOG_PROBE_SUBREAPER").is_some() {
        timed_out_probes_leave_nothing(Containment::Subreaper);
        let children =
            std::fs::read_to_string(format!("/proc/self/task/{}/children", std::process::id()))
                .unwrap_or_default();
        assert!(
            children.trim().is_empty(),
            "orphans of the probes are left unreaped: {children}"
        );
        return;
    }
    run_alone(
        std::process::Command::new("env"),
        "probe_hygiene::timed_out_probes_leave_nothing_behind_a_subreaper_host",
        "SHEEPDOG_PROBE_SUBREAPER",
    );
}

/// A ready probe of a run that is not ready in time ends with the run.
#[test]
fn a_ready_probe_ends_with_a_run_that_was_not_ready_in_time() {
    let h = Harness::new();
    let probe_token = new_token();
    let spec = h
        .sh("late", "exec sleep 600")
        .ready(Ready::Command(sleepy_check(&probe_token)))
        .ready_timeout(Duration::from_millis(1500))
        .restart(RestartPolicy::never());
    h.sup().start(spec).unwrap();
    wait_until(SECS_5, || {
        (!tagged_processes(&probe_token).is_empty()).then_some(())
    })
    .expect("the ready probe runs");
    h.sup().wait_for("late", Status::Exited, SECS_10).unwrap();
    let gone = wait_until(Duration::from_secs(1), || {
        tagged_processes(&probe_token).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "the ready probe outlived its run: {:?}",
        tagged_processes(&probe_token)
    );
    h.finish();
}

/// In a process of its own, which holds fds without close-on-exec (one low, 251 and 900)
/// and ignores SIGTERM (set by `sh -c trap`, kept across exec): a probe sees only fds 0-2,
/// no ignored signal, and leads its own process group (under cgroup containment, in a probe
/// cgroup of its own).
#[test]
fn a_probe_sees_only_stdio_and_default_signals_in_a_group_of_its_own() {
    if std::env::var_os("SHEEPDOG_PROBE_FDS").is_none() {
        let mut sh = std::process::Command::new("/bin/sh");
        sh.args(["-c", "trap '' TERM; exec \"$@\"", "sh"]);
        return run_alone(
            sh,
            "probe_hygiene::a_probe_sees_only_stdio_and_default_signals_in_a_group_of_its_own",
            "SHEEPDOG_PROBE_FDS",
        );
    }
    assert!(ignores_signal(15), "SIGTERM is ignored in this host");
    let null = std::fs::File::open("/dev/null").unwrap();
    let held: Vec<i32> = [3, 251, 900]
        .into_iter()
        .map(|at| {
            let fd = rustix::io::fcntl_dupfd_cloexec(&null, at).unwrap();
            rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).unwrap();
            let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
            assert!(raw >= at);
            raw // left open, without close-on-exec, for this process's life
        })
        .collect();
    let h = Harness::new();
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
    h.sup().start(spec).unwrap();
    h.sup().wait_for("probed", Status::Online, SECS_10).unwrap();
    let read = |ext: &str| std::fs::read_to_string(out.with_extension(ext)).unwrap();
    let fds: Vec<u32> = read("fds").lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(
        fds,
        [0, 1, 2],
        "the probe saw fds {fds:?} (the host holds {held:?})"
    );
    assert_eq!(read("sig").trim(), "SigIgn:\t0000000000000000");
    assert_eq!(
        read("pgid").trim(),
        read("pid").trim(),
        "it leads its own group"
    );
    if h.sup().containment() == Containment::Cgroup {
        assert!(read("cg").contains(".probe"), "{}", read("cg"));
    }
    h.finish();
}
