//! A host that opens the state directory the moment the previous host died, while that
//! host's guardian cleans up (or is about to), keeps its services: `open` waits for the
//! guardian, kills what the dead host left, resurrects each service once, and the old
//! guardian goes without touching the new runs. In every tier.

use crate::prelude::*;
use sheepdog::Status;
use std::collections::HashSet;

const SERVICES: usize = 5;

/// A helper host: SERVICES services that each leave a `setsid` daemon, under the tier
/// `TIER`, guarded, in the state directory `STATE`.
fn helper_host() -> ! {
    let sup = helper_builder()
        .open()
        .expect("the helper host opens its supervisor");
    let token = helper_arg("TOKEN");
    for i in 0..SERVICES {
        let spec = tagged_sh(
            &token,
            &format!("s{i}"),
            "(setsid sleep 600 &); exec sleep 600",
        );
        sup.start(spec)
            .expect("the helper host starts its services");
    }
    serve_until_killed()
}

fn a_host_that_opens_the_state_directory_at_once_keeps_its_services(tier: &Tier) -> TestResult {
    if is_helper_host() {
        helper_host();
    }
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let token = new_token();
    let mut host = HostProcess::in_tier(tier, &state, &token, &[])?;
    host.ready("")?;
    let before: HashSet<u32> =
        wait_for_tagged(&token, 2 * SERVICES, "every service and its daemon run")?
            .into_iter()
            .collect();
    host.kill()?;
    // At once: the guardian is cleaning up, or about to.
    let sup = tier.builder().state_dir(&state).open()?;
    for info in sup.list()? {
        assert_eq!(
            info.status(),
            Status::Online,
            "{tier}: {} is resurrected",
            info.name()
        );
    }
    let old_guardian_gone = wait_until(SECS_10, || (guardians_of(&state).len() == 1).then_some(()));
    assert!(
        old_guardian_gone.is_some(),
        "{tier}: only the new host's guardian runs: {:?}",
        guardians_of(&state)
    );
    let now: HashSet<u32> =
        wait_for_tagged(&token, 2 * SERVICES, "each service and its daemon run once")?
            .into_iter()
            .collect();
    assert!(
        now.is_disjoint(&before),
        "{tier}: nothing of the dead host is left"
    );
    for info in sup.list()? {
        assert_eq!(
            info.status(),
            Status::Online,
            "{tier}: {} still runs after the old guardian went",
            info.name()
        );
    }
    sup.shutdown()?;
    no_tagged_left(&token, "after shutdown")
}

per_tier!(a_host_that_opens_the_state_directory_at_once_keeps_its_services);
