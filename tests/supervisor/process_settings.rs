//! What a service's process is set to before it runs its program shows in /proc: its umask,
//! its soft and hard resource limits, its nice value and its OOM score adjustment; and a
//! setting the kernel refuses (a limit above what it allows) is a `Spawn` error naming the
//! step, not a crash loop. As root, the settings that need privilege (raising a hard limit,
//! a negative nice value) work too, for a service that runs as another user.

use crate::prelude::*;
use sheepdog::{ErrorKind, Resource, Status, UNLIMITED};

fn status_line(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in the status of {pid}"))
        .trim()
        .to_string()
}

/// The soft and hard limit `/proc/<pid>/limits` shows on the line that starts with `what`.
fn limits(pid: u32, what: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no {what} in the limits of {pid}"));
    let mut fields = line[what.len()..].split_whitespace();
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

/// The nice value, field 19 of /proc/<pid>/stat.
fn nice(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

#[test]
fn umask_limits_nice_and_oom_score_show_in_proc() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("set", "exec sleep 600")
        .umask(0o027)
        .limit(Resource::OpenFiles, 256, 512)
        .limit(Resource::CoreSize, 0, UNLIMITED)
        .limit(Resource::Processes, 4000, 5000)
        .limit(Resource::AddressSpace, 8 << 30, UNLIMITED)
        .nice(7)
        .oom_score_adj(500);
    let pid = h.sup().start(spec).unwrap().pid().unwrap();
    assert_eq!(status_line(pid, "Umask:"), "0027");
    assert_eq!(limits(pid, "Max open files"), ("256".into(), "512".into()));
    assert_eq!(
        limits(pid, "Max core file size"),
        ("0".into(), "unlimited".into())
    );
    assert_eq!(limits(pid, "Max processes"), ("4000".into(), "5000".into()));
    assert_eq!(
        limits(pid, "Max address space"),
        ((8u64 << 30).to_string(), "unlimited".into())
    );
    assert_eq!(nice(pid), 7);
    let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(oom.trim(), "500");
    // The host keeps its own.
    let me = std::process::id();
    assert_ne!(status_line(me, "Umask:"), "0027");
    let host_oom = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    assert_ne!(host_oom.trim(), "500", "the child's score is its own");
    assert_ne!(nice(me), 7);
    h.finish()
}

#[test]
fn privileged_settings_apply_before_the_user_changes() -> TestResult {
    use rustix::thread::{CapabilitySet, capabilities};
    let caps = capabilities(None).unwrap().effective;
    if !caps.contains(CapabilitySet::SETUID | CapabilitySet::SETGID | CapabilitySet::SYS_NICE) {
        return skip(
            "privileged_settings_apply_before_the_user_changes",
            "switching users and a negative nice value need root",
        );
    }
    let h = Harness::new()?;
    let spec = h.sh("nicer", "exec sleep 600").user("nobody").nice(-5);
    let pid = h.sup().start(spec).unwrap().pid().unwrap();
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(text.contains("Uid:\t65534"), "{text}");
    assert_eq!(nice(pid), -5, "set while the child could");
    let (_, hard) = limits(std::process::id(), "Max open files");
    let higher: u64 = hard.parse::<u64>().unwrap_or(1 << 20).min(1 << 19) + 1;
    let raised = h
        .sh("raised", "exec sleep 600")
        .user("nobody")
        .limit(Resource::OpenFiles, higher, higher)
        .oom_score_adj(-100);
    if caps.contains(CapabilitySet::SYS_RESOURCE) {
        let pid = h.sup().start(raised).unwrap().pid().unwrap();
        assert_eq!(
            limits(pid, "Max open files"),
            (higher.to_string(), higher.to_string())
        );
        let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        assert_eq!(oom.trim(), "-100");
    } else {
        // Root without CAP_SYS_RESOURCE (this container): the kernel says no, and so do we.
        eprintln!("no CAP_SYS_RESOURCE: checking that a raised hard limit is refused in words");
        let err = h.sup().start(raised).unwrap_err();
        assert!(
            err.to_string().contains("the kernel refused limit nofile"),
            "{err}"
        );
    }
    h.finish()
}

#[test]
fn a_limit_the_kernel_refuses_is_a_spawn_error_that_names_it() -> TestResult {
    let h = Harness::new()?;
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let spec =
        h.sh("refused", "exec sleep 600")
            .limit(Resource::OpenFiles, nr_open + 1, nr_open + 1);
    let err = h.sup().start(spec).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn);
    let text = err.to_string();
    assert!(
        text.contains("the kernel refused limit nofile")
            && text.contains("setrlimit failed in the new process"),
        "{text}"
    );
    let source = std::error::Error::source(&err).expect("the errno");
    assert!(
        source.to_string().contains("Operation not permitted"),
        "{source}"
    );
    assert_eq!(
        status(h.sup(), "refused"),
        Status::Errored,
        "not a crash loop"
    );
    let runs = h.sup().history("refused", 10).unwrap();
    assert_eq!(runs.len(), 1, "one failed start, recorded");
    assert_eq!(runs[0].cause(), Some(sheepdog::Cause::SpawnFailed));
    h.finish()
}
