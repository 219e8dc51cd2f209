//! `max_memory` ends a service over its limit, and the run records why. Where the tier has a
//! `memory` controller (the cgroup tier), the kernel enforces it: the run is OOM-killed,
//! recorded as `out of memory`, with its peak memory at the limit. Elsewhere the
//! supervisor's own sampling restarts a service whose group stays over the limit for two
//! samples, recorded as `memory limit`. A service under its limit runs on.

use crate::prelude::*;
use sheepdog::{Cause, Containment, RestartPolicy, ServiceSpec, Status};
use std::time::Duration;

fn a_service_over_its_memory_limit_is_ended_and_recorded(tier: &Tier) -> TestResult {
    if tier.is(Containment::Cgroup) {
        return the_kernel_kills_at_the_limit(tier);
    }
    let h = Harness::with(
        tier.builder()
            .memory_sample_interval(Duration::from_millis(100)),
    )?;
    assert!(
        !h.sup().enforces_max_memory(),
        "{tier}: the kernel does not enforce max_memory"
    );
    let hog = h
        .sh(
            "hog",
            "x=$(head -c 60000000 /dev/zero | tr '\\0' a); sleep 600",
        )
        .max_memory(30 << 20)
        .restart(RestartPolicy::never());
    let lean = ServiceSpec::new("lean", "sleep")
        .arg("600")
        .env(TOKEN_VAR, &h.token)
        .max_memory(30 << 20);
    h.sup().start(hog)?;
    h.sup().start(lean)?;
    h.sup().wait_for("hog", Status::Exited, SECS_10)?;
    let exit = h
        .sup()
        .describe("hog")?
        .last_exit()
        .cloned()
        .context("an exited service has a last exit")?;
    assert!(
        exit.reason()
            .is_some_and(|r| r.starts_with("memory limit: ")),
        "{tier}: the exit says it was over its memory limit: {exit}"
    );
    let run = h.sup().history("hog", 1)?.remove(0);
    assert_eq!(
        run.reason(),
        exit.reason(),
        "{tier}: the run records the reason"
    );
    assert_eq!(
        run.cause(),
        Some(Cause::MemoryLimit),
        "{tier}: the run's cause"
    );
    assert_eq!(
        status(h.sup(), "lean"),
        Status::Online,
        "{tier}: a service under its limit runs on"
    );
    h.finish()
}

fn the_kernel_kills_at_the_limit(tier: &Tier) -> TestResult {
    let h = Harness::with(
        tier.builder()
            // The kernel acts first; the supervisor's own sampling stays out of the way.
            .memory_sample_interval(Duration::from_secs(60)),
    )?;
    if !h.sup().enforces_max_memory() {
        return skip(tier.test(), "no memory cgroup controller here");
    }
    let hog = ServiceSpec::new("hog", "python3")
        .args(["-c", "import time; b = b'a' * (200 << 20); time.sleep(600)"])
        .env(TOKEN_VAR, &h.token)
        .max_memory(32 << 20)
        .restart(RestartPolicy::never());
    let lean = ServiceSpec::new("lean", "sleep")
        .arg("600")
        .env(TOKEN_VAR, &h.token)
        .max_memory(32 << 20);
    h.sup().start(hog)?;
    h.sup().start(lean)?;
    h.sup().wait_for("hog", Status::Exited, SECS_10)?;
    let run = h.sup().history("hog", 1)?.remove(0);
    assert_eq!(run.cause(), Some(Cause::OutOfMemory), "{tier}: {run:?}");
    assert_eq!(
        run.signal(),
        Some(9),
        "{tier}: the kernel's SIGKILL: {run:?}"
    );
    let peak = run.usage().and_then(|u| u.peak_memory_bytes());
    assert!(
        peak.is_some_and(|p| p > 16 << 20 && p <= 32 << 20),
        "{tier}: the peak memory recorded is at the limit: {peak:?}"
    );
    assert_eq!(
        status(h.sup(), "lean"),
        Status::Online,
        "{tier}: a service under its limit runs on"
    );
    h.finish()
}

per_tier!(a_service_over_its_memory_limit_is_ended_and_recorded);
