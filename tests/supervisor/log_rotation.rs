//! Rotation renames the live log at a line end (`name.out.log` -> `.1` -> ...), never
//! copy-then-truncate: across many rotations every record is kept exactly once, in order,
//! no rotated file ends mid-line or runs past the limit by more than a line, and `tail`
//! reads back across the rotated files.

use crate::prelude::*;
use sheepdog::{LogPolicy, RestartPolicy, Status, Stream};
use std::path::{Path, PathBuf};

/// The live file and its rotated files, oldest first, concatenated.
pub fn all_logs(base: &Path) -> TestResult<Vec<u8>> {
    let mut files = vec![base.to_path_buf()];
    for i in 1.. {
        let p = PathBuf::from(format!("{}.{i}", base.display()));
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    files.reverse();
    let mut all = Vec::new();
    for f in files {
        all.extend(std::fs::read(&f).context(format!("read {}", f.display()))?);
    }
    Ok(all)
}

/// How many rotated files `base` has.
pub fn rotated_count(base: &Path) -> usize {
    (1..)
        .take_while(|i| Path::new(&format!("{}.{i}", base.display())).exists())
        .count()
}

#[test]
fn checksummed_records_survive_many_rotations_exactly_once_in_order() -> TestResult {
    let h = Harness::new()?;
    const N: u64 = 100_000;
    // Each record: its number and a checksum of it, at full speed.
    let script = format!(
        "awk 'BEGIN {{ for (i = 1; i <= {N}; i++) printf \"%08d %08d\\n\", i, (i * 7919) % 99991 }}'"
    );
    let spec = h
        .sh("records", &script)
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().max_bytes(32 * 1024).keep(10_000));
    h.sup().start(spec)?;
    h.sup().wait_for("records", Status::Exited, SECS_10)?;
    let base = h.sup().log_path("records", Stream::Stdout)?;
    assert!(
        rotated_count(&base) > 20,
        "many rotations: only {}",
        rotated_count(&base)
    );
    let text = String::from_utf8(all_logs(&base)?)?;
    let mut expect = 1u64;
    for line in text.lines() {
        let (n, sum) = line
            .split_once(' ')
            .context(format!("a record: {line:?}"))?;
        let n: u64 = n.parse()?;
        assert_eq!(n, expect, "record out of order or missing");
        assert_eq!(sum.parse::<u64>()?, (n * 7919) % 99991, "record {n} intact");
        expect += 1;
    }
    assert_eq!(expect, N + 1, "every record once");
    for i in 1..=rotated_count(&base) {
        let f = std::fs::read(format!("{}.{i}", base.display()))?;
        assert!(f.ends_with(b"\n"), "rotated file {i} ends at a line end");
        // A file ends at the first line end past the limit: it may exceed it by one record.
        assert!(
            f.len() <= 32 * 1024 + 18,
            "rotated file {i} is {} bytes, more than a record past the limit",
            f.len()
        );
    }
    h.finish()
}

#[test]
fn tail_reads_back_across_rotated_files() -> TestResult {
    let h = Harness::new()?;
    let spec = h
        .sh("tailer", "seq 1 5000")
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().max_bytes(1000).keep(100));
    h.sup().start(spec)?;
    h.sup().wait_for("tailer", Status::Exited, SECS_5)?;
    let last: Vec<String> = (4001..=5000).map(|i| i.to_string()).collect();
    assert_eq!(
        h.sup().tail("tailer", Stream::Stdout, 1000)?,
        last,
        "the last thousand lines, across rotated files"
    );
    h.finish()
}
