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
    // Serial stops take at least 20 x 500 ms of wall time, however loaded the machine;
    // parallel ones about one timeout. The benchmark measures the real figure.
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "{tier}: stopping 20 took {:?}",
        t.elapsed()
    );
    // And the runs ended together, not one timeout apart: serial stops would spread their
    // ends over 19 timeouts (9.5 s), parallel ones end in the same few turns.
    let mut ends = Vec::new();
    for info in h.sup().list()? {
        assert_eq!(
            info.status(),
            Status::Stopped,
            "{tier}: {} after the stop",
            info.name()
        );
        let exit = info
            .last_exit()
            .with_context(|| format!("{tier}: {} has a last exit", info.name()))?;
        ends.push(exit.at());
    }
    let (first, last) = (ends.iter().min(), ends.iter().max());
    let spread = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(*first).unwrap_or_default(),
        _ => return Err(Failure::new(format!("{tier}: no run ended"))),
    };
    assert!(
        spread < Duration::from_millis(2500),
        "{tier}: the 20 runs ended {spread:?} apart"
    );
    h.finish()
}

per_tier!(twenty_services_stop_in_about_one_timeout);
