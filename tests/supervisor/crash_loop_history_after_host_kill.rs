//! A crash loop's run history survives a SIGKILL of its host: the record of a run restarted
//! at once is written with the next exit's (or within the `Deferred` timer), so at the kill
//! some ended runs are not on disk yet. After a reopen every run of the dead host is closed:
//! each recorded with its exit (code 1, crashed, with its last line), or marked as ended by
//! the host's death; generations are distinct and rise with the run ids; and the loop goes
//! on from there. In every tier.

use crate::prelude::*;
use sheepdog::{Backoff, Cause, RestartPolicy};
use std::collections::HashSet;

/// A helper host: one service that prints a line and exits 1 at once, restarted with no
/// backoff; says `ready` once it crashed `CRASHES` times.
fn helper_host() -> ! {
    let sup = helper_builder()
        .open()
        .expect("the helper host opens its supervisor");
    let spec = tagged_sh(&helper_arg("TOKEN"), "looper", "echo bye; exit 1")
        .restart(RestartPolicy::always().backoff(Backoff::none()));
    sup.start(spec).expect("the helper host starts the looper");
    let crashed = wait_until(SECS_10, || {
        let info = sup.describe("looper").ok()?;
        (info.restarts() >= 20).then_some(())
    });
    assert!(crashed.is_some(), "the looper crash-loops");
    serve_until_killed()
}

fn a_crash_loops_history_is_whole_after_its_host_is_killed(tier: &Tier) -> TestResult {
    if is_helper_host() {
        helper_host();
    }
    let root = tempfile::tempdir()?;
    let state = root.path().join("state");
    let token = new_token();
    let mut host = HostProcess::in_tier(tier, &state, &token, &[])?;
    host.said("ready")?;
    host.kill()?;
    let gone = wait_until(SECS_10, || {
        tagged_processes(&token).is_empty().then_some(())
    });
    assert!(gone.is_some(), "{tier}: the guardian ends the looper");
    let sup = tier.builder().state_dir(&state).resurrect(false).open()?;
    let runs = sup.history("looper", 1000)?;
    assert!(
        runs.len() >= 20,
        "{tier}: the runs are recorded: {}",
        runs.len()
    );
    let mut generations = HashSet::new();
    let mut died = 0;
    for pair in runs.windows(2) {
        assert!(
            pair[0].id() > pair[1].id() && pair[0].generation() > pair[1].generation(),
            "{tier}: newest first, generations rising with the ids: {pair:?}"
        );
    }
    for run in &runs {
        assert!(
            generations.insert(run.generation()),
            "{tier}: one run per generation: {run:?}"
        );
        assert!(
            run.ended_at().is_some(),
            "{tier}: every run of the dead host is closed: {run:?}"
        );
        match run.cause() {
            Some(Cause::HostDied) => died += 1,
            Some(Cause::Crashed) => {
                assert_eq!(run.code(), Some(1), "{tier}: a crash's exit: {run:?}");
                assert_eq!(run.last_stdout(), "bye\n", "{tier}: its last line: {run:?}");
            }
            other => panic!("{tier}: a run ended as {other:?}: {run:?}"),
        }
    }
    println!(
        "{tier}: {} runs after the kill, {died} ended by the host's death",
        runs.len()
    );
    // Only the newest runs can be the host's death: the one under way, and those whose
    // record was still waiting for its drain (written within `RECORD_WITHIN` when the
    // machine keeps up; a loaded one can hold a few more). Nothing older is lost.
    let newest_died = runs
        .iter()
        .take_while(|r| r.cause() == Some(Cause::HostDied))
        .count();
    assert_eq!(
        newest_died, died,
        "{tier}: the runs ended by the host's death are the newest ones: {runs:?}"
    );
    assert!(
        died < runs.len(),
        "{tier}: the older runs are recorded with their exits: {died} of {}",
        runs.len()
    );
    sup.shutdown()?;
    no_tagged_left(&token, "after shutdown")
}

per_tier!(a_crash_loops_history_is_whole_after_its_host_is_killed);
