//! `NOTIFY_SOCKET` takes datagrams only from processes of the run: another service and a
//! process of another uid (65534) that learn a run's socket name and send `READY=1`,
//! `STATUS=`, `WATCHDOG=1` and `RESTART_RESET=1` change nothing, and every refused datagram
//! is counted. Real clients keep working: the real `systemd-notify`, as root (it speaks on
//! behalf of its parent) and as another uid (it speaks for itself, a short-lived child).
//! In every tier.

use crate::prelude::*;
use sheepdog::{Backoff, Event, Health, Ready, RestartPolicy, ServiceSpec, Status, Supervisor};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SYSTEMD_NOTIFY: &str = "/usr/bin/systemd-notify";
/// A python the other uid can run (the one on PATH may live under root's home).
const PYTHON: &str = "/usr/bin/python3";

fn the_real_systemd_notify_makes_a_service_online(tier: &Tier) -> TestResult {
    if !Path::new(SYSTEMD_NOTIFY).exists() {
        return skip(tier.test(), format!("{SYSTEMD_NOTIFY} is not installed"));
    }
    let h = tier.harness()?;
    // As the host's uid: root's systemd-notify names its parent (the shell) as sender.
    let spec = h
        .sh(
            "own-uid",
            &format!("{SYSTEMD_NOTIFY} --ready --status='up and running'; exec sleep 600"),
        )
        .ready(Ready::Notify);
    h.sup().start(spec)?;
    h.sup().wait_for("own-uid", Status::Online, SECS_10)?;
    let info = h.sup().describe("own-uid")?;
    assert_eq!(
        info.status_text(),
        Some("up and running"),
        "{tier}: STATUS= is taken"
    );
    assert_eq!(info.notify_rejected(), 0, "{tier}: nothing refused");
    if !is_root() {
        skip(
            tier.test(),
            "the other uid's systemd-notify needs root to start it",
        )?;
        return h.finish();
    }
    // Unprivileged, it names itself: a child that exits once the datagram was read.
    let spec = h
        .sh(
            "other-uid",
            &format!(
                "setpriv --reuid=65534 --regid=65534 --clear-groups \
                 {SYSTEMD_NOTIFY} --ready --status=unprivileged; exec sleep 600"
            ),
        )
        .ready(Ready::Notify);
    h.sup().start(spec)?;
    h.sup().wait_for("other-uid", Status::Online, SECS_10)?;
    let info = h.sup().describe("other-uid")?;
    assert_eq!(
        info.status_text(),
        Some("unprivileged"),
        "{tier}: STATUS= of the unprivileged sender is taken"
    );
    assert_eq!(info.notify_rejected(), 0, "{tier}: nothing refused");
    h.finish()
}

per_tier!(the_real_systemd_notify_makes_a_service_online);

#[test]
fn two_supervisors_in_one_process_both_run_notify_services() -> TestResult {
    let both = [Harness::new()?, Harness::new()?];
    for h in &both {
        // The same id and generation in both: names that would collide if made of them.
        let spec = h
            .sh(
                "n",
                "exec python3 -c 'import os,socket,time\n\
                 a=os.environ[\"NOTIFY_SOCKET\"]\na=\"\\0\"+a[1:]\n\
                 socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"READY=1\", a)\n\
                 time.sleep(600)'",
            )
            .ready(Ready::Notify);
        assert_eq!(h.sup().start(spec)?.id(), 1, "the first service's id");
    }
    for h in &both {
        h.sup().wait_for("n", Status::Online, SECS_10)?;
    }
    for h in both {
        h.finish()?;
    }
    Ok(())
}

/// The attack: every 20 ms, for each file in `dir` named `target-*` (holding a socket name,
/// written by the test), sends one datagram for each of `READY=1`, `STATUS=forged`,
/// `WATCHDOG=1` and `RESTART_RESET=1`, until `dir/stop` exists (at most 30 s). Then writes
/// `<dir>/sent-<who>-<target>`: how many datagrams reached each target's socket.
const ATTACK: &str = r#"
import os, socket, sys, time
d, who = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sent = {}
end = time.time() + 30
while not os.path.exists(os.path.join(d, "stop")) and time.time() < end:
    for f in os.listdir(d):
        if not f.startswith("target-"):
            continue
        try:
            name = open(os.path.join(d, f)).read().strip()
        except OSError:
            continue
        if not name:
            continue
        for m in (b"READY=1", b"STATUS=forged", b"WATCHDOG=1", b"RESTART_RESET=1"):
            try:
                s.sendto(m, "\0" + name[1:])
                sent[f] = sent.get(f, 0) + 1
            except OSError:
                pass
    time.sleep(0.02)
for f, n in sent.items():
    # Written aside, then renamed: a reader never sees the file empty.
    final = os.path.join(d, "sent-%s-%s" % (who, f[len("target-"):]))
    open(final + ".tmp", "w").write(str(n))
    os.rename(final + ".tmp", final)
"#;

/// The `NOTIFY_SOCKET` of the running process of `name`, if one runs.
fn socket_of(sup: &Supervisor, name: &str) -> Option<String> {
    env_of(sup.describe(name).ok()?.pid()?, "NOTIFY_SOCKET")
}

/// Keeps `dir/target-<name>` naming the current run's socket of each target, until `dir/stop`.
fn track_targets(sup: &Supervisor, dir: &Path, names: &[&str]) {
    while !dir.join("stop").exists() {
        for name in names {
            if let Some(sock) = socket_of(sup, name) {
                let file = dir.join(format!("target-{name}"));
                if std::fs::read_to_string(&file).ok().as_deref() != Some(&sock) {
                    let tmp = dir.join(format!("tmp-{name}"));
                    std::fs::write(&tmp, &sock).expect("the attack directory is writable");
                    std::fs::rename(&tmp, &file).expect("the attack directory is writable");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn sent_to(dir: &Path, target: &str) -> u64 {
    ["service", "nobody"]
        .iter()
        .filter_map(|who| std::fs::read_to_string(dir.join(format!("sent-{who}-{target}"))).ok())
        .map(|n| n.trim().parse::<u64>().expect("a count, written whole"))
        .sum()
}

/// A directory the attackers can use, in `base` (a `tempdir`, made reachable: it is private
/// to its owner).
fn attack_dir(base: &Path, name: &str) -> TestResult<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = base.join(name);
    std::fs::create_dir(&dir)?;
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    std::fs::write(dir.join("attack.py"), ATTACK)?;
    Ok(dir)
}

fn forged_notifications_from_another_service_or_uid_change_nothing_and_are_counted(
    tier: &Tier,
) -> TestResult {
    if !is_root() {
        return skip(
            tier.test(),
            "the attack from another uid needs root to start it",
        );
    }
    if !Path::new(PYTHON).exists() {
        return skip(tier.test(), format!("{PYTHON} is not installed"));
    }
    let h = tier.harness()?;
    let sup = h.sup();
    let dir = attack_dir(h.dir.path(), "attack")?;
    let ready_line = "exec python3 -c 'import os,socket,time\n\
                      a=os.environ[\"NOTIFY_SOCKET\"]\na=\"\\0\"+a[1:]\n\
                      socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"READY=1\", a)\n";
    // Never says READY=1 itself: forged READY=1 and STATUS= must not take.
    let silent = h
        .sh("silent", "exec sleep 600")
        .ready(Ready::Notify)
        .ready_timeout(Duration::from_secs(60));
    // Ready by itself, never pings: forged WATCHDOG=1 must not keep it healthy.
    let unpinged = h
        .sh("unpinged", &format!("{ready_line}time.sleep(600)'"))
        .ready(Ready::Notify)
        .health(
            Health::notify()
                .interval(Duration::from_millis(300))
                .failures(2),
        )
        .restart(RestartPolicy::never());
    // Ready, then crashes: forged RESTART_RESET=1 must not keep it from its crash limit.
    let crashy = h
        .sh(
            "crashy",
            &format!("{ready_line}time.sleep(0.3)\nos._exit(1)'"),
        )
        .ready(Ready::Notify)
        .restart(
            RestartPolicy::on_failure()
                .backoff(Backoff::none())
                .max_restarts(3, Duration::from_secs(60)),
        );
    let events = sup.subscribe();
    sup.start(silent)?;
    sup.start(unpinged)?;
    sup.start(crashy)?;
    let targets = ["silent", "unpinged", "crashy"];
    let script = dir.join("attack.py");
    let (script, dir_arg) = (script.to_string_lossy(), dir.to_string_lossy());
    let attacker = ServiceSpec::new("attacker", PYTHON)
        .args([&*script, &*dir_arg, "service"])
        .env(TOKEN_VAR, &h.token);
    sup.start(attacker)?;
    let mut nobody = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", PYTHON])
        .args([&*script, &*dir_arg, "nobody"])
        .env(TOKEN_VAR, &h.token)
        .spawn()
        .context("start the attacker of uid 65534")?;
    let (unhealthy, crash_limit) = std::thread::scope(|scope| {
        scope.spawn(|| track_targets(sup, &dir, &targets));
        let unhealthy = expect_event(
            &events,
            SECS_10,
            "unpinged unhealthy",
            |e| matches!(e, Event::Unhealthy { name, .. } if name == "unpinged"),
        );
        let crash_limit = sup.wait_for("crashy", Status::Errored, SECS_10);
        let _ = std::fs::write(dir.join("stop"), "");
        (unhealthy, crash_limit)
    });
    nobody.wait()?;
    unhealthy.context(format!("{tier}: forged WATCHDOG=1 kept it healthy"))?;
    crash_limit.context(format!(
        "{tier}: forged RESTART_RESET=1 kept it from its limit"
    ))?;
    wait_until(SECS_10, || {
        dir.join("sent-service-silent").exists().then_some(())
    })
    .context("the attacking service reported what it sent")?;
    let silent = sup.describe("silent")?;
    assert_eq!(
        silent.status(),
        Status::Starting,
        "{tier}: forged READY=1 did not make it ready"
    );
    assert_eq!(
        silent.status_text(),
        None,
        "{tier}: forged STATUS= did not take"
    );
    let sent = sent_to(&dir, "silent");
    assert!(
        sent >= 8,
        "{tier}: both attackers reached it: {sent} datagrams"
    );
    let counted = wait_until(SECS_5, || {
        (sup.describe("silent").ok()?.notify_rejected() == sent).then_some(())
    });
    assert!(
        counted.is_some(),
        "{tier}: {} refusals counted, {sent} datagrams sent",
        sup.describe("silent")?.notify_rejected()
    );
    for name in ["unpinged", "crashy"] {
        let info = sup.describe(name)?;
        assert!(
            info.notify_rejected() > 0,
            "{tier}: {name}'s refusals are counted"
        );
        assert_eq!(
            info.status_text(),
            None,
            "{tier}: {name}: forged STATUS= did not take"
        );
    }
    h.finish()
}

per_tier!(forged_notifications_from_another_service_or_uid_change_nothing_and_are_counted);
