//! `max_pids` holds where the tier has a `pids` controller (the cgroup tier): a fork bomb
//! gets `EAGAIN` at the cap, the service stays online, and a stop ends all of it. The other
//! tiers cannot enforce it, say so, and refuse such a service as an invalid spec before
//! anything is saved.

use crate::prelude::*;
use sheepdog::{Containment, ErrorKind, ServiceSpec, Status};
use std::time::Duration;

/// Forks sleepers as fast as it can; a failed fork is retried.
const BOMB: &str = "import os, time\n\
                    while True:\n\
                    \x20   try:\n\
                    \x20       if os.fork() == 0:\n\
                    \x20           time.sleep(600)\n\
                    \x20           os._exit(0)\n\
                    \x20   except OSError:\n\
                    \x20       time.sleep(0.001)\n";

fn a_fork_bomb_is_held_at_max_pids_where_the_tier_can(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    let spec = ServiceSpec::new("bomb", "python3")
        .args(["-c", BOMB])
        .env(TOKEN_VAR, &h.token)
        .max_pids(64)
        .stop_timeout(Duration::from_millis(200));
    if !tier.is(Containment::Cgroup) {
        assert!(!h.sup().enforces_max_pids(), "{tier}: no pids controller");
        let err = h.sup().start(spec).err().context("max_pids is refused")?;
        assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{tier}: {err}");
        assert!(err.to_string().contains("max_pids"), "{tier}: {err}");
        assert!(h.sup().list()?.is_empty(), "{tier}: nothing was saved");
        return h.finish();
    }
    if !h.sup().enforces_max_pids() {
        return skip(tier.test(), "no pids cgroup controller here");
    }
    h.sup().start(spec)?;
    wait_until(SECS_10, || (h.tagged().len() >= 64).then_some(()))
        .context("the bomb reached its cap of 64 processes")?;
    for _ in 0..3 {
        let n = h.tagged().len();
        assert!(n <= 64, "{n} processes: the cap did not hold");
    }
    assert_eq!(
        status(h.sup(), "bomb"),
        Status::Online,
        "the service stays online at its cap"
    );
    h.sup().stop("bomb")?;
    let left = h.tagged();
    assert!(
        left.is_empty(),
        "{} processes survived the stop",
        left.len()
    );
    h.finish()
}

per_tier!(a_fork_bomb_is_held_at_max_pids_where_the_tier_can);
