//! Log capture through the pump: every byte a service writes reaches its log file
//! unchanged (binary, `\r`, a final partial line), stdout and stderr each to their own file
//! or, merged, in the order of the writes; nothing is lost when a service writes two million
//! lines and exits; an overlong line is split with a marker; timestamps when asked.

use crate::prelude::*;
use sheepdog::{LogPolicy, RestartPolicy, Status, Stream};
use std::time::Duration;

#[test]
fn output_reaches_its_log_files_byte_for_byte() -> TestResult {
    let h = Harness::new()?;
    h.sup().start(
        h.sh("talker", "printf 'a\\r\\n\\n\\000b'; echo oops >&2")
            .restart(RestartPolicy::never()),
    )?;
    h.sup().wait_for("talker", Status::Exited, SECS_5)?;
    let out = h.sup().log_path("talker", Stream::Stdout)?;
    let err = h.sup().log_path("talker", Stream::Stderr)?;
    assert_eq!(
        out,
        h.state_dir().join("logs").join("talker.out.log"),
        "where stdout goes"
    );
    assert_eq!(
        err,
        h.state_dir().join("logs").join("talker.err.log"),
        "where stderr goes"
    );
    assert_eq!(
        std::fs::read(&out)?,
        b"a\r\n\n\0b",
        "stdout, stored byte for byte"
    );
    assert_eq!(std::fs::read(&err)?, b"oops\n", "stderr, in its own file");
    h.finish()
}

#[test]
fn binary_and_a_final_partial_line_are_stored_exactly() -> TestResult {
    let h = Harness::new()?;
    let bytes: Vec<u8> = (0u8..=255).collect();
    let file = h.dir.path().join("bytes.bin");
    std::fs::write(&file, &bytes)?;
    let spec = h
        .sh(
            "binary",
            &format!("cat {}; printf 'prompt> '", file.display()),
        )
        .restart(RestartPolicy::never());
    h.sup().start(spec)?;
    h.sup().wait_for("binary", Status::Exited, SECS_5)?;
    let mut want = bytes.clone();
    want.extend_from_slice(b"prompt> ");
    assert_eq!(
        std::fs::read(h.sup().log_path("binary", Stream::Stdout)?)?,
        want,
        "every byte value, and the partial line at the end"
    );
    h.finish()
}

#[test]
fn a_two_million_line_burst_then_exit_loses_nothing() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("burst", "seq 1 2000000; exit 0")
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().max_bytes(0));
    h.sup().start(spec)?;
    h.sup()
        .wait_for("burst", Status::Exited, Duration::from_secs(30))?;
    let data = std::fs::read(h.sup().log_path("burst", Stream::Stdout)?)?;
    let lines = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(lines, 2_000_000, "every line is in the log");
    assert!(
        data.ends_with(b"1999999\n2000000\n"),
        "the last lines, in order"
    );
    assert_eq!(
        h.sup().tail("burst", Stream::Stdout, 1)?,
        ["2000000"],
        "tail reads the last line"
    );
    h.finish()
}

#[test]
fn a_100_mb_line_is_split_with_markers_in_bounded_memory() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("longline", "head -c 100000000 /dev/zero | tr '\\0' 'a'")
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().max_bytes(0));
    h.sup().start(spec)?;
    h.sup()
        .wait_for("longline", Status::Exited, Duration::from_secs(60))?;
    let data = std::fs::read(h.sup().log_path("longline", Stream::Stdout)?)?;
    let marker = b" [sheepdog: line split]\n";
    let pieces: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let a_bytes: usize = pieces
        .iter()
        .map(|p| p.iter().filter(|b| **b == b'a').count())
        .sum();
    assert_eq!(a_bytes, 100_000_000, "every byte kept");
    let splits = data.windows(marker.len()).filter(|w| w == marker).count();
    assert_eq!(splits, 100_000_000 / (64 * 1024), "a marker every 64 KiB");
    assert!(
        pieces.iter().all(|p| p.len() <= 64 * 1024 + marker.len()),
        "no piece over the cap"
    );
    h.finish()
}

#[test]
fn merged_stderr_keeps_the_order_of_writes() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("merged", "echo 1; echo 2 >&2; echo 3; echo 4 >&2")
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().merge_stderr(true));
    h.sup().start(spec)?;
    h.sup().wait_for("merged", Status::Exited, SECS_5)?;
    assert_eq!(
        h.sup().tail("merged", Stream::Stdout, 10)?,
        ["1", "2", "3", "4"],
        "stdout and stderr in the order of the writes"
    );
    h.finish()
}

#[test]
fn timestamps_prefix_lines_when_asked() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("stamped", "echo hello")
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().timestamps(true));
    h.sup().start(spec)?;
    h.sup().wait_for("stamped", Status::Exited, SECS_5)?;
    let line = h.sup().tail("stamped", Stream::Stdout, 1)?.remove(0);
    let (stamp, text) = line.split_once(' ').context("a stamp, a space, the line")?;
    assert_eq!(text, "hello", "the line after its stamp");
    assert_eq!(
        stamp.len(),
        "2026-01-01T00:00:00.000Z".len(),
        "an RFC 3339 stamp with milliseconds: {stamp}"
    );
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "in UTC: {stamp}"
    );
    h.finish()
}
