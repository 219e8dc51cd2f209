//! The threads a supervisor runs do not grow with the number of services: the supervision
//! thread, the spawner and the log pump serve them all, one start at a time or a batch.

use crate::prelude::*;
use std::process::Command;

/// The variable that marks the run of the test in a process of its own.
const ALONE: &str = "SHEEPDOG_TEST_THREAD_COUNT";

/// In a subprocess, so that the count is this supervisor's alone.
#[test]
fn threads_stay_constant_in_the_number_of_services() -> TestResult {
    let test = test_name!("threads_stay_constant_in_the_number_of_services");
    if !running_alone(ALONE, test) {
        // `env` execs its arguments: the test binary, alone, with the variable set.
        return run_alone(Command::new("env"), test, ALONE);
    }
    let h = Harness::new()?;
    let with_none = thread_count();
    for i in 0..50 {
        h.sup()
            .start(h.sh(&format!("s{i}"), "echo hi; exec sleep 600"))?;
    }
    let with_fifty = thread_count();
    assert_eq!(with_fifty, with_none, "threads grew with services");
    // A batch is spread over the threads already there.
    let batch: Vec<_> = (0..50)
        .map(|i| h.sh(&format!("b{i}"), "echo hi; exec sleep 600"))
        .collect();
    for result in h.sup().start_many(batch)? {
        result?;
    }
    let with_a_hundred = thread_count();
    assert_eq!(with_a_hundred, with_none, "threads grew with a batch");
    println!(
        "threads: {with_none} with the supervisor open, {with_fifty} with 50 services, \
         {with_a_hundred} with 50 more started as a batch"
    );
    h.finish()
}
