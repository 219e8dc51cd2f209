//! `stats` sums each service's processes, threads, memory and CPU from one pass over /proc,
//! as /proc shows them: over its process group, and, in the cgroup tier, over every member
//! of the run's cgroup (one that left the group still counts). In every tier.

use crate::prelude::*;
use sheepdog::Containment;

/// Resident bytes of `pid` from /proc/<pid>/statm.
fn resident_bytes(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn stats_sum_every_process_of_a_service_as_proc_shows_them(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let info = h
        .sup()
        .start(h.sh("trio", "sleep 600 & sleep 600 & exec sleep 600"))?;
    let pgid = info.pid().context("a started service has a pid")?;
    // Three sleeps (the shell has exec'd), whose memory no longer changes.
    let members = wait_until(SECS_5, || {
        let m = group_members(pgid);
        let sleeping = m
            .iter()
            .all(|&p| process_name(p).is_some_and(|n| n == "sleep"));
        (m.len() == 3 && sleeping).then_some(m)
    })
    .context("three sleeps in the group")?;
    // A sleep that has just exec'd may still fault pages in: compare with /proc while the
    // group's memory holds still across the call.
    let rss_now = || -> u64 { members.iter().map(|&p| resident_bytes(p)).sum() };
    let (stats, rss) = wait_until(SECS_5, || {
        let before = rss_now();
        let stats = h.sup().stats("trio").ok()?.remove(0);
        (rss_now() == before).then_some((stats, before))
    })
    .context("the group's memory settles")?;
    assert_eq!(stats.name(), "trio", "{tier}: the service measured");
    assert_eq!(stats.processes(), 3, "{tier}: processes");
    assert_eq!(stats.threads(), 3, "{tier}: threads");
    assert_eq!(
        stats.rss_bytes(),
        rss,
        "{tier}: resident memory, the sum over /proc"
    );
    let idle = h.sup().stats("trio")?[0].cpu_percent();
    assert!(idle < 5.0, "{tier}: sleepers use no CPU: {idle}");

    // Under cgroup containment a member that left the group still counts.
    h.sup()
        .start(h.sh("escaper", "setsid sleep 600 & exec sleep 600"))?;
    let want = if tier.is(Containment::Cgroup) { 2 } else { 1 };
    let counted = wait_until(SECS_5, || {
        (h.sup().stats("escaper").ok()?[0].processes() == want).then_some(())
    });
    assert!(
        counted.is_some(),
        "{tier}: {want} processes counted, not {}",
        h.sup().stats("escaper")?[0].processes()
    );
    assert_eq!(
        h.sup().stats("all")?.len(),
        2,
        "{tier}: stats of every service"
    );
    h.finish()
}

per_tier!(stats_sum_every_process_of_a_service_as_proc_shows_them);

/// A busy loop shows as a busy CPU, measured over the interval between two calls.
#[test]
fn a_busy_service_shows_as_using_a_core() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(h.sh("busy", "while :; do :; done"))?;
    let busy = wait_until(SECS_10, || {
        let cpu = h.sup().stats("busy").ok()?[0].cpu_percent();
        (cpu > 40.0).then_some(cpu)
    });
    assert!(busy.is_some(), "a spinning shell uses a core");
    h.finish()
}
