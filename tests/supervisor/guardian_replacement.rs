//! A guardian that dies while its host lives is replaced at once; `shutdown` stands the
//! guardian down and reaps it, and keeps the state.

use crate::prelude::*;

#[test]
fn a_guardian_that_dies_is_replaced_and_shutdown_stands_it_down() -> TestResult {
    let h = Harness::new()?;
    assert!(h.sup().guarded(), "a guardian stands by after open");
    let comm = |pid: u32| process_name(pid).unwrap_or_default();
    // Found by its environment as soon as it is exec'd; it names itself a moment later.
    let first = wait_until(SECS_5, || {
        let g = guardians_of(&h.state_dir());
        (g.len() == 1 && comm(g[0]) == "sheepdog-guard").then(|| g[0])
    });
    let first = first.with_context(|| {
        let g = guardians_of(&h.state_dir());
        let names: Vec<String> = g.iter().map(|p| comm(*p)).collect();
        format!("one guardian runs, named sheepdog-guard: {g:?} {names:?}")
    })?;
    kill_all(&[first]);
    let second = wait_until(SECS_5, || {
        let g = guardians_of(&h.state_dir());
        (g.len() == 1 && g[0] != first).then(|| g[0])
    })
    .context("a new guardian replaced the dead one")?;
    assert!(h.sup().guarded(), "guarded again");
    h.sup().start(h.sh("nap", "exec sleep 600"))?;
    let state = h.state_dir();
    h.sup().shutdown()?;
    assert!(!h.sup().guarded(), "not guarded after shutdown");
    assert!(
        guardians_of(&state).is_empty(),
        "guardian {second} stood down"
    );
    // Reaped too: no zombie of it is left with the host.
    assert!(
        std::fs::read_to_string(format!("/proc/{second}/stat")).is_err(),
        "guardian {second} was reaped"
    );
    assert!(
        state.join("sheepdog.db").exists(),
        "a shutdown keeps the state"
    );
    h.finish()
}
