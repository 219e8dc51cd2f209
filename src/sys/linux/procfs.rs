//! What `/proc` tells about processes: their stat, environment, session, memory, cgroup;
//! the boot's id and clock; the last pid handed out.

use std::collections::HashSet;

/// One line of `/proc/<pid>/stat`, the fields we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) pid: u32,
    pub(crate) state: u8,
    pub(crate) ppid: u32,
    pub(crate) pgrp: u32,
    /// Clock ticks since boot at which the process started.
    pub(crate) start_time: u64,
    /// CPU time used, user plus system, in clock ticks.
    pub(crate) cpu_ticks: u64,
    pub(crate) threads: u32,
    /// Resident set size in pages.
    pub(crate) rss_pages: u64,
}

/// Clock ticks per second (`_SC_CLK_TCK`), for CPU times read from /proc.
pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

/// Clock ticks since boot now, on the clock of `ProcStat::start_time` (`CLOCK_BOOTTIME`).
pub(crate) fn boot_ticks() -> u64 {
    let now = rustix::time::clock_gettime_dynamic(rustix::time::DynamicClockId::Boottime)
        .unwrap_or_else(|_| rustix::time::clock_gettime(rustix::time::ClockId::Monotonic));
    let nanos = now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128;
    (nanos * clock_ticks_per_second() as u128 / 1_000_000_000) as u64
}

/// The last pid the kernel handed out in this pid namespace (`ns_last_pid`).
pub(crate) fn last_pid() -> Option<u32> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    let n = std::fs::File::open("/proc/sys/kernel/ns_last_pid")
        .and_then(|mut f| f.read(&mut buf))
        .ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

/// The page size in bytes.
pub(crate) fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // `comm` is in parentheses and may itself hold spaces and ')'; the last ')' ends it.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); starttime is field 22.
    Some(ProcStat {
        pid,
        state: *rest.first()?.as_bytes().first()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        start_time: rest.get(19)?.parse().ok()?,
        cpu_ticks: rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?,
        threads: rest.get(17)?.parse().ok()?,
        rss_pages: rest.get(21)?.parse().ok()?,
    })
}

/// Reads `/proc/<pid>/stat`, or `None` if there is no such process.
///
/// A scan of /proc reads one per process: into a buffer on the stack, with no size query
/// (`statx`) and no second read to find the end, as `read_to_string` would make.
pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    use std::io::Read;
    let path = format!("/proc/{pid}/stat");
    let mut file = std::fs::File::open(&path).ok()?;
    // The line is at most 52 numbers and a 16-byte name: one read takes it whole.
    let mut buf = [0u8; 2048];
    let n = file.read(&mut buf).ok()?;
    if n == buf.len() {
        let text = std::fs::read_to_string(&path).ok()?;
        return parse_stat(&text);
    }
    parse_stat(std::str::from_utf8(&buf[..n]).ok()?)
}

/// Every live (not zombie) process on the machine, from one pass over `/proc`.
pub(crate) fn all_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(stat) = proc_stat(pid)
            && stat.state != b'Z'
            && stat.state != b'X'
        {
            out.push(stat);
        }
    }
    out
}

/// The process groups in `wanted` that still have a live (not zombie) member.
pub(crate) fn live_groups(wanted: &HashSet<u32>) -> HashSet<u32> {
    all_processes()
        .into_iter()
        .filter(|p| wanted.contains(&p.pgrp))
        .map(|p| p.pgrp)
        .collect()
}

/// The children of this process, over all its threads (`/proc/self/task/*/children`).
pub(crate) fn own_children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The value of `key` in the environment `pid` started with (`None` if unset or unreadable).
///
/// A process in the middle of an exec shows an empty environment until the new program's is
/// set up, a few microseconds: an empty one is read again, for up to about a millisecond
/// (a `setsid` daemon caught between its `setsid` and its exec would otherwise look like
/// someone else's). Kernel threads, which have none, are not waited for.
pub(crate) fn environ_value(pid: u32, key: &str) -> Option<String> {
    match environ_lookup(pid, key)? {
        EnvLookup::Found(value) => Some(value),
        EnvLookup::Missing | EnvLookup::Empty => None,
    }
}

/// What one read of a process's environment says of `key` (`None`: the process is gone).
pub(crate) enum EnvLookup {
    Found(String),
    /// The environment was there, without `key`.
    Missing,
    /// It read empty even after the retries of [`environ_value`]: a live process of user
    /// space in the middle of an exec, or one that emptied its environment.
    Empty,
}

/// [`environ_value`], telling an environment without `key` from one that read empty, from
/// the same read: a caller that looked again to tell them apart could see the process
/// before its exec and after it.
pub(crate) fn environ_lookup(pid: u32, key: &str) -> Option<EnvLookup> {
    let path = format!("/proc/{pid}/environ");
    let mut env = std::fs::read(&path).ok()?;
    let mut tries = 0;
    while env.is_empty() && tries < 20 && proc_stat(pid).is_some_and(|s| is_user_process(&s)) {
        std::thread::sleep(std::time::Duration::from_micros(50));
        env = std::fs::read(&path).ok()?;
        tries += 1;
    }
    if env.is_empty() {
        let live = proc_stat(pid).is_some_and(|s| is_user_process(&s));
        return Some(if live {
            EnvLookup::Empty
        } else {
            EnvLookup::Missing
        });
    }
    Some(
        env.split(|b| *b == 0)
            .find_map(|kv| {
                let value = kv.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
                Some(String::from_utf8_lossy(value).into_owned())
            })
            .map_or(EnvLookup::Missing, EnvLookup::Found),
    )
}

/// A live process of user space: not a kernel thread (nor kthreadd), not a zombie.
fn is_user_process(stat: &ProcStat) -> bool {
    stat.ppid != 2 && stat.pid != 2 && stat.state != b'Z'
}

/// The session id of `pid`.
///
/// Zero is a real answer: inside a container whose session leader lives outside the
/// pid namespace, every process reports session 0. (rustix's `getsid` asserts a nonzero
/// id and panics there, so the call goes through libc.)
pub(crate) fn session_of(pid: u32) -> Option<u32> {
    // SAFETY: getsid takes a plain integer and touches no memory of ours.
    let sid = unsafe { libc::getsid(pid as libc::pid_t) };
    (sid >= 0).then_some(sid as u32)
}

/// The resident pages of `pid`, summed exactly (`/proc/<pid>/statm`).
pub(crate) fn resident_pages(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// The real uid of `pid`, from the `Uid:` line of `/proc/<pid>/status` (`None` if it is gone).
pub(crate) fn process_real_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// This boot's id, so identities stored by a previous boot are never matched.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The cgroup v2 path of `pid` as `/proc/<pid>/cgroup` shows it (`0::<path>`).
pub(crate) fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// How many fds this process has open now (`/proc/self/fd`), `None` if unreadable.
pub(crate) fn open_fds() -> Option<u64> {
    // The directory's own fd, open while it is read, is not counted.
    Some(
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1) as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line =
            "4242 (a) b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            (s.pid, s.state, s.ppid, s.pgrp, s.start_time),
            (4242, b'S', 1, 4242, 987654)
        );
    }

    #[test]
    fn own_stat_is_readable() {
        let me = std::process::id();
        let s = proc_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.start_time > 0);
    }

    #[test]
    fn a_new_process_has_a_pid_after_the_last_one_and_a_later_start() {
        let (before, ticks) = (last_pid().unwrap(), boot_ticks());
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .env("SHEEPDOG_TEST_MARK", "here")
            .spawn()
            .unwrap();
        let pid = child.id();
        let after = last_pid().unwrap();
        let stat = proc_stat(pid);
        let mark = environ_value(pid, "SHEEPDOG_TEST_MARK");
        child.kill().unwrap();
        child.wait().unwrap();
        // No wrap of the pid space is expected within this test.
        assert!(before < pid && pid <= after, "{before} < {pid} <= {after}");
        assert!(stat.unwrap().start_time + 1 >= ticks);
        assert_eq!(mark.as_deref(), Some("here"));
    }

    #[test]
    fn one_read_tells_a_missing_variable_from_an_empty_environment() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .env("SHEEPDOG_TEST_MARK", "here")
            .spawn()
            .unwrap();
        let mut empty = std::process::Command::new("/bin/sleep")
            .arg("5")
            .env_clear()
            .spawn()
            .unwrap();
        let (pid, empty_pid) = (child.id(), empty.id());
        let found = environ_lookup(pid, "SHEEPDOG_TEST_MARK");
        let missing = environ_lookup(pid, "SHEEPDOG_TEST_ABSENT");
        let emptied = environ_lookup(empty_pid, "SHEEPDOG_TEST_MARK");
        for c in [&mut child, &mut empty] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let gone = environ_lookup(pid, "SHEEPDOG_TEST_MARK");
        assert!(matches!(found, Some(EnvLookup::Found(v)) if v == "here"));
        assert!(matches!(missing, Some(EnvLookup::Missing)));
        assert!(
            matches!(emptied, Some(EnvLookup::Empty)),
            "a live process with no environment reads as empty, not as missing the variable"
        );
        assert!(
            gone.is_none(),
            "a reaped process has no environment to read"
        );
    }
}
