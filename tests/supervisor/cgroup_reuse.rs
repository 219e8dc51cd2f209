//! Cgroup tier: a restart reuses the cgroup of the run before it when nothing in it was
//! killed, and never a cgroup that was killed (on this kernel a child cloned into a cgroup
//! that was ever killed with `cgroup.kill` is killed at birth).

use crate::prelude::*;
use sheepdog::{Backoff, RestartPolicy, Status};

fn restarts_reuse_a_clean_cgroup_and_never_one_that_was_killed(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    // Runs 1-3 crash, run 4 leaves a daemon and crashes (its cgroup is killed), run 5
    // exits 0. Each run notes the cgroup it started in.
    let count = h.dir.path().join("n");
    let places = h.dir.path().join("cgroups");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; \
         grep '^0::' /proc/self/cgroup >> {p}; \
         [ $n -le 3 ] && exit 1; [ $n -eq 4 ] && {{ (setsid sleep 600 &); exit 1; }}; exit 0",
        c = count.display(),
        p = places.display()
    );
    let spec = h
        .sh("reuse", &script)
        .restart(RestartPolicy::on_failure().backoff(Backoff::none()));
    h.sup().start(spec)?;
    h.sup().wait_for("reuse", Status::Exited, SECS_10)?;
    let places = lines_of(&places);
    assert_eq!(places.len(), 5, "five runs noted their cgroup: {places:?}");
    assert!(
        places[..4].iter().all(|p| *p == places[0]),
        "runs after clean exits start in the same cgroup: {places:?}"
    );
    assert_ne!(places[4], places[3], "a killed cgroup is never reused");
    let runs = h.sup().history("reuse", 10)?;
    let codes: Vec<Option<i32>> = runs.iter().rev().map(|r| r.code()).collect();
    assert_eq!(
        codes,
        [Some(1), Some(1), Some(1), Some(1), Some(0)],
        "the runs' exit codes, oldest first: {runs:?}"
    );
    assert!(
        runs[1]
            .reason()
            .is_some_and(|r| r.contains("left processes running")),
        "the fourth run records that it left processes running: {:?}",
        runs[1]
    );
    let left = h.tagged();
    assert!(left.is_empty(), "the daemon outlived its run: {left:?}");
    h.finish()
}

in_tiers!(restarts_reuse_a_clean_cgroup_and_never_one_that_was_killed: cgroup);
