//! A service starts with the host's CPU mask, and the supervisor's threads keep theirs: a
//! spawn pins its thread to its CPU for the clone only (so that the child starts on the CPU
//! the clone frees, not behind another task's time slice), and both take the mask back.

use crate::prelude::*;
use std::process::Command;

/// The variable that marks the run of the test in a process of its own.
const ALONE: &str = "SHEEPDOG_TEST_CPU_AFFINITY";

/// The `Cpus_allowed_list` line of a `/proc/.../status`.
fn allowed(status_file: &str) -> TestResult<String> {
    let status = std::fs::read_to_string(status_file)?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("a Cpus_allowed_list line")?;
    Ok(list.trim().to_string())
}

/// In a subprocess, so that no other test's spawn has a thread of this process pinned.
#[test]
fn services_and_the_supervisors_threads_keep_the_hosts_cpu_mask() -> TestResult {
    let test = test_name!("services_and_the_supervisors_threads_keep_the_hosts_cpu_mask");
    if !running_alone(ALONE, test) {
        return run_alone(Command::new("env"), test, ALONE);
    }
    let own = allowed("/proc/self/status")?;
    let h = Harness::new()?;
    // One at a time (the supervision thread spawns them) and a batch (the spawner too).
    let mut names = Vec::new();
    for i in 0..4 {
        let name = format!("s{i}");
        h.sup().start(h.sh(&name, "exec sleep 600"))?;
        names.push(name);
    }
    let batch: Vec<_> = (0..8)
        .map(|i| h.sh(&format!("b{i}"), "exec sleep 600"))
        .collect();
    for result in h.sup().start_many(batch)? {
        names.push(result?.name().to_string());
    }
    for name in &names {
        let pid = h
            .sup()
            .describe(name)?
            .pid()
            .context("a running service has a pid")?;
        assert_eq!(
            allowed(&format!("/proc/{pid}/status"))?,
            own,
            "{name} (pid {pid}) runs with the host's CPU mask"
        );
    }
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?.path();
        assert_eq!(
            allowed(&task.join("status").to_string_lossy())?,
            own,
            "thread {} has its mask back",
            task.display()
        );
    }
    h.finish()
}
