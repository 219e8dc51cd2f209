//! The containment tier asked for is the one in force, and says what it enforces; `Auto`
//! picks the strongest this machine gives.

use crate::prelude::*;
use sheepdog::{Containment, Supervisor};

fn the_tier_asked_for_is_in_force(tier: &Tier) -> TestResult {
    let h = tier.harness()?;
    assert_eq!(
        h.sup().containment(),
        tier.containment(),
        "the tier asked for is the one reported"
    );
    if !tier.is(Containment::Cgroup) {
        assert!(
            !h.sup().enforces_max_pids() && !h.sup().enforces_max_memory(),
            "{tier}: no kernel limits without a cgroup"
        );
    }
    if tier.is(Containment::Subreaper) {
        // Explicit wins over the builder's subreaper fallback.
        let explicit = Harness::with(
            Supervisor::builder()
                .containment(Containment::ProcessGroup)
                .subreaper(true),
        )?;
        assert_eq!(
            explicit.sup().containment(),
            Containment::ProcessGroup,
            "an explicit process-group tier wins over subreaper(true)"
        );
        explicit.finish()?;
    }
    h.finish()
}

per_tier!(the_tier_asked_for_is_in_force);

#[test]
fn auto_picks_a_cgroup_where_there_is_one_and_else_the_process_group() -> TestResult {
    let h = Harness::new()?;
    let want = match no_cgroups() {
        None => Containment::Cgroup,
        Some(_) => Containment::ProcessGroup,
    };
    assert_eq!(h.sup().containment(), want, "what Auto picks here");
    h.finish()
}
