//! `follow` reads a service's log as it is written, across rotations and restarts, every
//! line once and in order; a cursor taken mid-stream hands over to a new follower
//! (`follow_from`) that goes on exactly where the first stopped.

use crate::log_rotation::rotated_count;
use crate::prelude::*;
use sheepdog::{Backoff, LogPolicy, RestartPolicy, Stream};
use std::time::Duration;

#[test]
fn follow_goes_across_rotations_and_restarts_and_resumes_from_a_cursor() -> TestResult {
    let h = Harness::new()?;
    let count = h.dir.path().join("runs");
    // Each run writes 2000 numbered lines, then exits 1 and is restarted (three runs).
    let script = format!(
        "r=$(cat {c} 2>/dev/null || echo 0); r=$((r+1)); echo $r > {c}; \
         [ $r -gt 3 ] && exec sleep 600; \
         awk -v r=$r 'BEGIN {{ for (i = 1; i <= 2000; i++) printf \"run %d line %04d\\n\", r, i }}'; exit 1",
        c = count.display()
    );
    let spec = h
        .sh("follow", &script)
        .restart(RestartPolicy::always().backoff(Backoff::fixed(Duration::from_millis(20))))
        .log(LogPolicy::default().max_bytes(8 * 1024).keep(1000));
    h.sup().start(spec)?;
    let mut follower = h.sup().follow_from_start("follow", Stream::Stdout)?;
    let mut got = Vec::new();
    let mut cursor = None;
    while got.len() < 6000 {
        let Some(line) = follower.recv_timeout(SECS_10) else {
            let info = h.sup().describe("follow")?;
            let base = h.sup().log_path("follow", Stream::Stdout)?;
            let files = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ls -li {}* ; tail -c 100 {}",
                    base.display(),
                    base.display()
                ))
                .output()?;
            return Err(Failure::new(format!(
                "the follower is stuck after {} lines (last {:?}), cursor {}, status {:?} \
                 generation {} restarts {}\n{}",
                got.len(),
                got.last(),
                follower.cursor(),
                info.status(),
                info.generation(),
                info.restarts(),
                String::from_utf8_lossy(&files.stdout)
            )));
        };
        got.push(line);
        if got.len() == 3000 {
            // Hand over mid-stream: a new follower from the cursor continues exactly.
            let at = follower.cursor();
            cursor = Some(at);
            follower = h.sup().follow_from("follow", Stream::Stdout, at)?;
        }
    }
    let want: Vec<String> = (1..=3)
        .flat_map(|r| (1..=2000).map(move |i| format!("run {r} line {i:04}")))
        .collect();
    let first_difference = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        (got.len(), first_difference),
        (want.len(), None),
        "every line of the three runs, once and in order; the first difference (got, \
         wanted): {:?}",
        first_difference.map(|i| (&got[i], &want[i]))
    );
    let cursor = cursor.context("a cursor was taken")?;
    assert!(
        cursor.to_string().contains(':'),
        "a cursor shows as <inode>:<offset>: {cursor}"
    );
    let base = h.sup().log_path("follow", Stream::Stdout)?;
    assert!(
        rotated_count(&base) > 10,
        "the follower crossed rotations: {}",
        rotated_count(&base)
    );
    assert!(
        follower.recv_timeout(Duration::from_millis(50)).is_none(),
        "nothing repeated"
    );
    h.finish()
}
