//! Services stop in parallel: twenty services that each wait out their stop timeout stop in
//! about one timeout, not twenty. In every containment tier (the process-group tier looks
//! for escaped processes once per stop batch, not once per service).

use crate::prelude::*;
use sheepdog::Status;
use std::time::{Duration, Instant};

fn twenty_services_stop_in_about_one_timeout(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    for i in 0..20 {
        let spec = h
            .sh(
                &format!("deaf{i}"),
                "trap '' TERM; while :; do sleep 1; done",
            )
            .stop_timeout(Duration::from_millis(500));
        h.sup().start(spec)?;
    }
    let t = Instant::now();
    assert_eq!(h.sup().stop("all")?, 20, "the stop acts on every service");
    // Serial stops would take 20 x 500 ms; parallel ones about one timeout. The bound is
    // loose on purpose (shared machines); the benchmark measures the real figure.
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "{tier}: stopping 20 took {:?}",
        t.elapsed()
    );
    for info in h.sup().list()? {
        assert_eq!(
            info.status(),
            Status::Stopped,
            "{tier}: {} after the stop",
            info.name()
        );
    }
    h.finish()
}

per_tier!(twenty_services_stop_in_about_one_timeout);
