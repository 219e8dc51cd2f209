//! `NOTIFY_SOCKET` takes datagrams only from processes of the run: another service and a
//! process of another uid (65534) that learn a run's socket name and send `READY=1`,
//! `STATUS=`, `WATCHDOG=1` and `RESTART_RESET=1` change nothing, and every refused datagram
//! is counted. Real clients keep working: the real `systemd-notify`, as root (it speaks on
//! behalf of its parent) and as another uid (it speaks for itself, a short-lived child).
//! Run in the cgroup tier (where available) and the process-group tier.

use crate::common::*;
use sheepdog::{
    Backoff, Containment, Event, Health, Ready, RestartPolicy, ServiceSpec, Status, Supervisor,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SYSTEMD_NOTIFY: &str = "/usr/bin/systemd-notify";
/// A python the other uid can run (the one on PATH may live under root's home).
const PYTHON: &str = "/usr/bin/python3";

fn supervisors(dir: &Path) -> Vec<(Containment, Supervisor)> {
    [Containment::Cgroup, Containment::ProcessGroup]
        .into_iter()
        .filter_map(|c| {
            let sup = Supervisor::builder()
                .state_dir(dir.join(format!("{c:?}")))
                .containment(c)
                .open();
            if sup.is_err() {
                eprintln!("skipped {c:?}: not available here");
            }
            Some((c, sup.ok()?))
        })
        .collect()
}

fn sh(token: &str, name: &str, script: &str) -> ServiceSpec {
    ServiceSpec::new(name, "/bin/sh")
        .args(["-c", script])
        .env(TOKEN_VAR, token)
}

#[test]
fn the_real_systemd_notify_makes_a_service_online() {
    if !Path::new(SYSTEMD_NOTIFY).exists() {
        eprintln!("skipped: {SYSTEMD_NOTIFY} is not installed");
        return;
    }
    let root = rustix::process::geteuid().is_root();
    let dir = tempfile::tempdir().unwrap();
    for (containment, sup) in supervisors(dir.path()) {
        let token = new_token();
        // As the host's uid: root's systemd-notify names its parent (the shell) as sender.
        let spec = sh(
            &token,
            "own-uid",
            &format!("{SYSTEMD_NOTIFY} --ready --status='up and running'; exec sleep 600"),
        )
        .ready(Ready::Notify);
        sup.start(spec).unwrap();
        sup.wait_for("own-uid", Status::Online, SECS_10)
            .unwrap_or_else(|e| panic!("{containment:?}: {e}"));
        let info = sup.describe("own-uid").unwrap();
        assert_eq!(info.status_text(), Some("up and running"));
        assert_eq!(info.notify_rejected(), 0);
        if root {
            // Unprivileged, it names itself: a child that exits once the datagram was read.
            let spec = sh(
                &token,
                "other-uid",
                &format!(
                    "setpriv --reuid=65534 --regid=65534 --clear-groups \
                     {SYSTEMD_NOTIFY} --ready --status=unprivileged; exec sleep 600"
                ),
            )
            .ready(Ready::Notify);
            sup.start(spec).unwrap();
            sup.wait_for("other-uid", Status::Online, SECS_10)
                .unwrap_or_else(|e| panic!("{containment:?}: {e}"));
            let info = sup.describe("other-uid").unwrap();
            assert_eq!(info.status_text(), Some("unprivileged"));
            assert_eq!(info.notify_rejected(), 0);
        }
        sup.shutdown().unwrap();
        assert!(tagged_processes(&token).is_empty());
    }
}

#[test]
fn two_supervisors_in_one_process_both_run_notify_services() {
    let token = new_token();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let sups: Vec<Supervisor> = dirs
        .iter()
        .map(|d| Supervisor::open(d.path()).unwrap())
        .collect();
    for sup in &sups {
        // The same id and generation in both: names that would collide if made of them.
        let spec = sh(
            &token,
            "n",
            "exec python3 -c 'import os,socket,time\n\
             a=os.environ[\"NOTIFY_SOCKET\"]\na=\"\\0\"+a[1:]\n\
             socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"READY=1\", a)\n\
             time.sleep(600)'",
        )
        .ready(Ready::Notify);
        assert_eq!(sup.start(spec).unwrap().id(), 1);
    }
    for sup in &sups {
        sup.wait_for("n", Status::Online, SECS_10).unwrap();
    }
    for sup in sups {
        sup.shutdown().unwrap();
    }
    assert!(tagged_processes(&token).is_empty());
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
    open(os.path.join(d, "sent-%s-%s" % (who, f[len("target-"):])), "w").write(str(n))
"#;

/// The `NOTIFY_SOCKET` of the running process of `name`, if one runs.
fn socket_of(sup: &Supervisor, name: &str) -> Option<String> {
    let pid = sup.describe(name).ok()?.pid()?;
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"NOTIFY_SOCKET="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Keeps `dir/target-<name>` naming the current run's socket of each target, until `dir/stop`.
fn track_targets(sup: &Supervisor, dir: &Path, names: &[&str]) {
    while !dir.join("stop").exists() {
        for name in names {
            if let Some(sock) = socket_of(sup, name) {
                let file = dir.join(format!("target-{name}"));
                if std::fs::read_to_string(&file).ok().as_deref() != Some(&sock) {
                    let tmp = dir.join(format!("tmp-{name}"));
                    std::fs::write(&tmp, &sock).unwrap();
                    std::fs::rename(&tmp, &file).unwrap();
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
        .map(|n| n.trim().parse::<u64>().unwrap())
        .sum()
}

/// A directory the attackers can use, in `base` (a `tempdir`, made reachable: it is private
/// to its owner).
fn attack_dir(base: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = base.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(dir.join("attack.py"), ATTACK).unwrap();
    dir
}

#[test]
fn forged_notifications_from_another_service_or_uid_change_nothing_and_are_counted() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the attack from another uid needs root to start it");
        return;
    }
    if !Path::new(PYTHON).exists() {
        eprintln!("skipped: {PYTHON} is not installed");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    for (containment, sup) in supervisors(base.path()) {
        let token = new_token();
        let dir = attack_dir(base.path(), &format!("{containment:?}-attack"));
        let ready_line = "exec python3 -c 'import os,socket,time\n\
                          a=os.environ[\"NOTIFY_SOCKET\"]\na=\"\\0\"+a[1:]\n\
                          socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"READY=1\", a)\n";
        // Never says READY=1 itself: forged READY=1 and STATUS= must not take.
        let silent = sh(&token, "silent", "exec sleep 600")
            .ready(Ready::Notify)
            .ready_timeout(Duration::from_secs(60));
        // Ready by itself, never pings: forged WATCHDOG=1 must not keep it healthy.
        let unpinged = sh(&token, "unpinged", &format!("{ready_line}time.sleep(600)'"))
            .ready(Ready::Notify)
            .health(
                Health::notify()
                    .interval(Duration::from_millis(300))
                    .failures(2),
            )
            .restart(RestartPolicy::never());
        // Ready, then crashes: forged RESTART_RESET=1 must not keep it from its crash limit.
        let crashy = sh(
            &token,
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
        sup.start(silent).unwrap();
        sup.start(unpinged).unwrap();
        sup.start(crashy).unwrap();
        let targets = ["silent", "unpinged", "crashy"];
        let attacker = ServiceSpec::new("attacker", PYTHON)
            .args([
                dir.join("attack.py").to_str().unwrap(),
                dir.to_str().unwrap(),
                "service",
            ])
            .env(TOKEN_VAR, &token);
        sup.start(attacker).unwrap();
        let mut nobody = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", PYTHON])
            .args([
                dir.join("attack.py").to_str().unwrap(),
                dir.to_str().unwrap(),
                "nobody",
            ])
            .env(TOKEN_VAR, &token)
            .spawn()
            .unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| track_targets(&sup, &dir, &targets));
            let unhealthy = expect_event(
                &events,
                SECS_10,
                "unpinged unhealthy",
                |e| matches!(e, Event::Unhealthy { name, .. } if name == "unpinged"),
            );
            let crash_limit = sup.wait_for("crashy", Status::Errored, SECS_10);
            std::fs::write(dir.join("stop"), "").unwrap();
            assert!(matches!(unhealthy, Event::Unhealthy { .. }));
            crash_limit.unwrap_or_else(|e| panic!("{containment:?}: {e}"));
        });
        nobody.wait().unwrap();
        let done = wait_until(SECS_10, || {
            dir.join("sent-service-silent").exists().then_some(())
        });
        assert!(done.is_some(), "the attacking service reported");
        let silent = sup.describe("silent").unwrap();
        assert_eq!(silent.status(), Status::Starting, "{containment:?}");
        assert_eq!(silent.status_text(), None, "{containment:?}");
        let sent = sent_to(&dir, "silent");
        assert!(
            sent >= 8,
            "{containment:?}: both attackers reached it: {sent}"
        );
        let counted = wait_until(SECS_5, || {
            (sup.describe("silent").unwrap().notify_rejected() == sent).then_some(())
        });
        assert!(
            counted.is_some(),
            "{containment:?}: {} refusals counted, {sent} datagrams sent",
            sup.describe("silent").unwrap().notify_rejected()
        );
        for name in ["unpinged", "crashy"] {
            let info = sup.describe(name).unwrap();
            assert!(info.notify_rejected() > 0, "{containment:?}: {name}");
            assert_eq!(info.status_text(), None, "{containment:?}: {name}");
        }
        sup.shutdown().unwrap();
        assert!(tagged_processes(&token).is_empty());
    }
}
