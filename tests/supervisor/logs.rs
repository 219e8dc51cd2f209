//! Log capture through the pump: every byte, in order, across rotations, restarts and a full
//! disk; tail and follow.

use crate::common::*;
use sheepdog::{Event, LogPolicy, RestartPolicy, Status, Stream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The live file and its rotated files, oldest first, concatenated.
fn all_logs(base: &Path) -> Vec<u8> {
    let mut files = vec![base.to_path_buf()];
    for i in 1.. {
        let p = PathBuf::from(format!("{}.{i}", base.display()));
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    files.reverse();
    files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect()
}

fn rotated_count(base: &Path) -> usize {
    (1..)
        .take_while(|i| Path::new(&format!("{}.{i}", base.display())).exists())
        .count()
}

#[test]
fn checksummed_records_survive_many_rotations_exactly_once_in_order() {
    let h = Harness::new();
    const N: u64 = 100_000;
    // Each record: its number and a checksum of it, at full speed.
    let script = format!("awk 'BEGIN {{ for (i = 1; i <= {N}; i++) printf \"%08d %08d\\n\", i, (i * 7919) % 99991 }}'");
    let spec = h
        .sh("records", &script)
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().max_bytes(32 * 1024).keep(10_000));
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("records", Status::Exited, SECS_10)
        .unwrap();
    let base = h.sup().log_path("records", Stream::Stdout).unwrap();
    assert!(
        rotated_count(&base) > 20,
        "only {} rotations",
        rotated_count(&base)
    );
    let text = String::from_utf8(all_logs(&base)).unwrap();
    let mut expect = 1u64;
    for line in text.lines() {
        let (n, sum) = line.split_once(' ').expect("a record");
        let n: u64 = n.parse().unwrap();
        assert_eq!(n, expect, "record out of order or missing");
        assert_eq!(
            sum.parse::<u64>().unwrap(),
            (n * 7919) % 99991,
            "record {n} corrupted"
        );
        expect += 1;
    }
    assert_eq!(expect, N + 1, "every record once");
    for i in 1..=rotated_count(&base) {
        let f = std::fs::read(format!("{}.{i}", base.display())).unwrap();
        assert!(f.ends_with(b"\n"), "rotated file {i} ends mid-line");
        // A file ends at the first line end past the limit: it may exceed it by one record.
        assert!(
            f.len() <= 32 * 1024 + 18,
            "rotated file {i} is {} bytes",
            f.len()
        );
    }
    h.finish();
}

#[test]
fn a_two_million_line_burst_then_exit_loses_nothing() {
    let h = Harness::new();
    let spec = h
        .sh("burst", "seq 1 2000000; exit 0")
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().max_bytes(0));
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("burst", Status::Exited, Duration::from_secs(30))
        .unwrap();
    let data = std::fs::read(h.sup().log_path("burst", Stream::Stdout).unwrap()).unwrap();
    let lines = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(lines, 2_000_000);
    assert!(data.ends_with(b"1999999\n2000000\n"));
    assert_eq!(
        h.sup().tail("burst", Stream::Stdout, 1).unwrap(),
        ["2000000"]
    );
    h.finish();
}

#[test]
fn binary_and_a_final_partial_line_are_stored_exactly() {
    let h = Harness::new();
    let bytes: Vec<u8> = (0u8..=255).collect();
    let file = h.dir.path().join("bytes.bin");
    std::fs::write(&file, &bytes).unwrap();
    let spec = h
        .sh(
            "binary",
            &format!("cat {}; printf 'prompt> '", file.display()),
        )
        .restart(RestartPolicy::never());
    h.sup().start(spec).unwrap();
    h.sup().wait_for("binary", Status::Exited, SECS_5).unwrap();
    let mut want = bytes.clone();
    want.extend_from_slice(b"prompt> ");
    assert_eq!(
        std::fs::read(h.sup().log_path("binary", Stream::Stdout).unwrap()).unwrap(),
        want
    );
    h.finish();
}

#[test]
fn a_100_mb_line_is_split_with_markers_in_bounded_memory() {
    let h = Harness::new();
    let spec = h
        .sh("longline", "head -c 100000000 /dev/zero | tr '\\0' 'a'")
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().max_bytes(0));
    h.sup().start(spec).unwrap();
    h.sup()
        .wait_for("longline", Status::Exited, Duration::from_secs(60))
        .unwrap();
    let data = std::fs::read(h.sup().log_path("longline", Stream::Stdout).unwrap()).unwrap();
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
    h.finish();
}

#[test]
fn follow_goes_across_rotations_and_restarts_and_resumes_from_a_cursor() {
    let h = Harness::new();
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
        .restart(
            RestartPolicy::always().backoff(sheepdog::Backoff::fixed(Duration::from_millis(20))),
        )
        .log(LogPolicy::default().max_bytes(8 * 1024).keep(1000));
    h.sup().start(spec).unwrap();
    let mut follower = h.sup().follow_from_start("follow", Stream::Stdout).unwrap();
    let mut got = Vec::new();
    let mut cursor = None;
    while got.len() < 6000 {
        let Some(line) = follower.recv_timeout(SECS_10) else {
            let info = h.sup().describe("follow").unwrap();
            let base = h.sup().log_path("follow", Stream::Stdout).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ls -li {}* ; tail -c 100 {}",
                    base.display(),
                    base.display()
                ))
                .output()
                .unwrap();
            panic!(
                "stuck after {} lines (last {:?}), cursor {}, status {:?} gen {} restarts {}\n{}",
                got.len(),
                got.last(),
                follower.cursor(),
                info.status(),
                info.generation(),
                info.restarts(),
                String::from_utf8_lossy(&out.stdout)
            );
        };
        got.push(line);
        if got.len() == 3000 {
            // Hand over mid-stream: a new follower from the cursor continues exactly.
            cursor = Some(follower.cursor());
            follower = h
                .sup()
                .follow_from("follow", Stream::Stdout, cursor.unwrap())
                .unwrap();
        }
    }
    let want: Vec<String> = (1..=3)
        .flat_map(|r| (1..=2000).map(move |i| format!("run {r} line {i:04}")))
        .collect();
    assert_eq!(got, want);
    assert!(cursor.unwrap().to_string().contains(':'));
    let base = h.sup().log_path("follow", Stream::Stdout).unwrap();
    assert!(rotated_count(&base) > 10, "the follower crossed rotations");
    assert!(
        follower.recv_timeout(Duration::from_millis(50)).is_none(),
        "nothing repeated"
    );
    h.finish();
}

#[test]
fn tail_reads_back_across_rotated_files() {
    let h = Harness::new();
    let spec = h
        .sh("tailer", "seq 1 5000")
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().max_bytes(1000).keep(100));
    h.sup().start(spec).unwrap();
    h.sup().wait_for("tailer", Status::Exited, SECS_5).unwrap();
    let last: Vec<String> = (4001..=5000).map(|i| i.to_string()).collect();
    assert_eq!(h.sup().tail("tailer", Stream::Stdout, 1000).unwrap(), last);
    h.finish();
}

#[test]
fn delete_removes_rotated_logs_and_a_new_service_starts_fresh() {
    let h = Harness::new();
    let policy = LogPolicy::default().max_bytes(100).keep(3);
    h.sup()
        .start(
            h.sh("rot", "seq 1 200")
                .restart(RestartPolicy::never())
                .log(policy.clone()),
        )
        .unwrap();
    h.sup().wait_for("rot", Status::Exited, SECS_5).unwrap();
    let base = h.sup().log_path("rot", Stream::Stdout).unwrap();
    assert_eq!(rotated_count(&base), 3);
    h.sup().delete("rot").unwrap();
    let left: Vec<_> = std::fs::read_dir(base.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    h.sup()
        .start(h.sh("rot", "echo fresh").restart(RestartPolicy::never()))
        .unwrap();
    h.sup().wait_for("rot", Status::Exited, SECS_5).unwrap();
    assert_eq!(std::fs::read_to_string(&base).unwrap(), "fresh\n");
    h.finish();
}

#[test]
fn merged_stderr_keeps_the_order_of_writes() {
    let h = Harness::new();
    let spec = h
        .sh("merged", "echo 1; echo 2 >&2; echo 3; echo 4 >&2")
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().merge_stderr(true));
    h.sup().start(spec).unwrap();
    h.sup().wait_for("merged", Status::Exited, SECS_5).unwrap();
    assert_eq!(
        h.sup().tail("merged", Stream::Stdout, 10).unwrap(),
        ["1", "2", "3", "4"]
    );
    h.finish();
}

#[test]
fn timestamps_prefix_lines_when_asked() {
    let h = Harness::new();
    let spec = h
        .sh("stamped", "echo hello")
        .restart(RestartPolicy::never())
        .log(LogPolicy::default().timestamps(true));
    h.sup().start(spec).unwrap();
    h.sup().wait_for("stamped", Status::Exited, SECS_5).unwrap();
    let line = &h.sup().tail("stamped", Stream::Stdout, 1).unwrap()[0];
    let (stamp, text) = line.split_once(' ').unwrap();
    assert_eq!(text, "hello");
    assert_eq!(stamp.len(), "2026-01-01T00:00:00.000Z".len(), "{stamp}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{stamp}"
    );
    h.finish();
}

/// Root only: the log directory on a 256 KiB tmpfs filled up, then freed. The tmpfs is
/// mounted before the supervisor opens: it holds `logs/` open from then on.
#[test]
fn a_full_disk_drops_and_counts_then_recovers_with_a_marker() {
    let mut h = Harness {
        sup: None,
        dir: tempfile::tempdir().unwrap(),
        token: new_token(),
    };
    let logs = h.state_dir().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=700", "tmpfs"])
        .arg(&logs)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a tmpfs needs root (CAP_SYS_ADMIN)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(logs.clone());
    h.sup = Some(sheepdog::Supervisor::open(h.state_dir()).unwrap());
    let filler = logs.join("filler");
    std::fs::write(&filler, vec![0u8; 200 * 1024]).unwrap();
    let events = h.sup().subscribe();
    let spec = h
        .sh("writer", "i=0; while :; do i=$((i+1)); echo \"line $i of a service that keeps writing\"; sleep 0.001; done")
        .log(LogPolicy::default().max_bytes(0));
    let pid = h.sup().start(spec).unwrap().pid().unwrap();
    let Event::LogError { error, .. } = expect_event(&events, SECS_10, "a log error", |e| {
        matches!(e, Event::LogError { .. })
    }) else {
        unreachable!()
    };
    assert!(error.contains("No space left"), "{error}");
    let dropped = wait_until(SECS_5, || {
        let d = h.sup().describe("writer").unwrap().log_dropped_bytes();
        (d > 1000).then_some(d)
    })
    .expect("dropped bytes are counted");
    let info = h.sup().describe("writer").unwrap();
    assert_eq!(
        (info.status(), info.pid()),
        (Status::Online, Some(pid)),
        "the child keeps running"
    );
    std::fs::remove_file(&filler).unwrap();
    let log = h.sup().log_path("writer", Stream::Stdout).unwrap();
    let marker = wait_until(SECS_10, || {
        let text = String::from_utf8_lossy(&std::fs::read(&log).ok()?).into_owned();
        text.lines()
            .find(|l| l.starts_with("[sheepdog: ") && l.contains("bytes dropped"))
            .map(str::to_string)
    })
    .expect("a marker line once writing works again");
    assert!(marker.contains("No space left"), "{marker}");
    assert!(dropped > 0);
    h.sup().stop("writer").unwrap();
    drop(events);
    h.finish();
}

/// In a subprocess, so that the count is this supervisor's alone.
#[test]
fn threads_stay_constant_in_the_number_of_services() {
    if std::env::var_os("SHEEPDOG_THREAD_COUNT").is_some() {
        let threads = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Threads:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap()
        };
        let h = Harness::new();
        let with_none = threads();
        for i in 0..50 {
            h.sup()
                .start(h.sh(&format!("s{i}"), "echo hi; exec sleep 600"))
                .unwrap();
        }
        let with_fifty = threads();
        assert_eq!(with_fifty, with_none, "threads grew with services");
        println!("threads: {with_none} with the supervisor open, {with_fifty} with 50 services");
        h.finish();
        return;
    }
    // `env` execs its arguments: the test binary, alone, with the variable set.
    run_alone(
        std::process::Command::new("env"),
        "logs::threads_stay_constant_in_the_number_of_services",
        "SHEEPDOG_THREAD_COUNT",
    );
}
