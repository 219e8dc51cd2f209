//! `Sink`: one log file written by the pump, with its rotation, line cap, timestamps and
//! error accounting.
//!
//! The data path is byte-exact: without timestamps and with every line under the cap, the
//! bytes read from the pipe are written unchanged. Rotation renames (`x.log` → `x.log.1` →
//! … → `x.log.k`, the oldest replaced) at a line boundary, so no line is lost, duplicated or,
//! under the cap, split across files. When writing fails (disk full, directory removed,
//! permission lost) the data is dropped and counted, the pump keeps draining, and the first
//! write that works again is preceded by one marker line. Files are opened, renamed and
//! removed through the held log directory ([`LogDir`]), never through a symbolic link.

use super::{LogDir, clock};
use crate::spec::LogPolicy;
use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Appended before the newline inserted where an over-long line is split.
pub(crate) const SPLIT_MARKER: &[u8] = b" [sheepdog: line split]";

/// The path of rotated file `i` (0: the live file).
#[cfg(test)]
pub(crate) fn rotated(base: &std::path::Path, i: u32) -> PathBuf {
    if i == 0 {
        base.to_path_buf()
    } else {
        let mut s = base.as_os_str().to_owned();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    }
}

/// The name of rotated file `i` of the log file `name` (0: the live file).
pub(crate) fn rotated_name(name: &str, i: u32) -> String {
    if i == 0 {
        name.to_string()
    } else {
        format!("{name}.{i}")
    }
}

/// Finds the first `\n` in `hay`, a word at a time.
pub(crate) fn find_newline(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut i = 0;
    while i + 8 <= hay.len() {
        let word = u64::from_le_bytes(hay[i..i + 8].try_into().expect("8 bytes"));
        let x = word ^ NL;
        if (x.wrapping_sub(LO) & !x & HI) != 0 {
            break;
        }
        i += 8;
    }
    hay[i..].iter().position(|&b| b == b'\n').map(|p| p + i)
}

/// Finds the last `\n` in `hay`.
fn rfind_newline(hay: &[u8]) -> Option<usize> {
    hay.iter().rposition(|&b| b == b'\n')
}

pub(crate) struct Sink {
    dir: LogDir,
    /// The live file's name in `dir`.
    name: String,
    file: Option<File>,
    size: u64,
    /// The last byte written ended a line (or nothing was written).
    at_line_start: bool,
    /// Bytes of the current line written so far.
    line_len: usize,
    /// The live file is empty or ends with a newline.
    file_ends_line: bool,
    /// Set while writes fail: the error, and what was dropped since.
    broken: Option<(String, u64)>,
    dropped: Arc<AtomicU64>,
    staging: Vec<u8>,
}

impl Sink {
    pub(crate) fn new(dir: LogDir, name: String, dropped: Arc<AtomicU64>) -> Sink {
        Sink {
            dir,
            name,
            file: None,
            size: 0,
            at_line_start: true,
            line_len: 0,
            file_ends_line: true,
            broken: None,
            dropped,
            staging: Vec::new(),
        }
    }

    /// The live file's path.
    pub(crate) fn base(&self) -> PathBuf {
        self.dir.path_of(&self.name)
    }

    /// Writes what a service wrote; returns an error message the first time writing fails.
    pub(crate) fn write(
        &mut self,
        data: &[u8],
        policy: &LogPolicy,
        now: SystemTime,
    ) -> Option<String> {
        if data.is_empty() {
            return None;
        }
        let mut staging = std::mem::take(&mut self.staging);
        let out = self.frame(data, policy, now, &mut staging);
        let result = self.write_rotating(&out, policy);
        let len = out.len();
        drop(out);
        staging.clear();
        if staging.capacity() > 4 << 20 {
            staging = Vec::new();
        }
        self.staging = staging;
        match result {
            Ok(()) => None,
            Err((written, e)) => {
                let lost = (len - written) as u64;
                self.dropped.fetch_add(lost, Ordering::Relaxed);
                self.file = None;
                match &mut self.broken {
                    Some((_, n)) => {
                        *n += lost;
                        None
                    }
                    None => {
                        let msg = format!("cannot write '{}': {e}", self.base().display());
                        self.broken = Some((msg.clone(), lost));
                        Some(msg)
                    }
                }
            }
        }
    }

    /// Applies the line cap and timestamps. Without either taking effect, the data is passed
    /// through untouched (no copy).
    fn frame<'a>(
        &mut self,
        data: &'a [u8],
        policy: &LogPolicy,
        now: SystemTime,
        staging: &'a mut Vec<u8>,
    ) -> Cow<'a, [u8]> {
        let cap = policy.get_line_max().max(64);
        let stamp = policy.get_timestamps().then(|| {
            let mut s = clock::rfc3339_millis(now).into_bytes();
            s.push(b' ');
            s
        });
        // Fast check: no timestamps and no line over the cap. A line is over the cap only if
        // some window of `cap - line_len` bytes holds no newline, so look backwards from the
        // end of each window for the last newline in it: a few bytes per window for ordinary
        // output, instead of a scan of every byte.
        if stamp.is_none() {
            let mut pos = 0;
            let mut room = cap.saturating_sub(self.line_len);
            let fits = loop {
                if data.len() - pos <= room {
                    break true;
                }
                match rfind_newline(&data[pos..pos + room.saturating_add(1).min(data.len() - pos)])
                {
                    Some(n) => {
                        pos += n + 1;
                        room = cap;
                    }
                    None => break false,
                }
            };
            if fits {
                match rfind_newline(data) {
                    Some(n) => self.line_len = data.len() - n - 1,
                    None => self.line_len += data.len(),
                }
                self.at_line_start = data.last() == Some(&b'\n');
                return Cow::Borrowed(data);
            }
        }
        let mut pos = 0;
        while pos < data.len() {
            if self.at_line_start {
                if let Some(s) = &stamp {
                    staging.extend_from_slice(s);
                }
                self.at_line_start = false;
            }
            let rest = &data[pos..];
            let room = cap - self.line_len.min(cap);
            let end = find_newline(&rest[..rest.len().min(room.saturating_add(1))]);
            match end {
                Some(n) => {
                    staging.extend_from_slice(&rest[..=n]);
                    pos += n + 1;
                    self.line_len = 0;
                    self.at_line_start = true;
                }
                None if rest.len() <= room => {
                    staging.extend_from_slice(rest);
                    self.line_len += rest.len();
                    pos = data.len();
                }
                None => {
                    staging.extend_from_slice(&rest[..room]);
                    staging.extend_from_slice(SPLIT_MARKER);
                    staging.push(b'\n');
                    pos += room;
                    self.line_len = 0;
                    self.at_line_start = true;
                }
            }
        }
        Cow::Borrowed(&staging[..])
    }

    /// Writes `buf`, rotating at line boundaries. On failure returns how much was written.
    fn write_rotating(&mut self, buf: &[u8], policy: &LogPolicy) -> Result<(), (usize, io::Error)> {
        self.ensure_open().map_err(|e| (0, e))?;
        let max = policy.get_max_bytes();
        let cap = policy
            .get_line_max()
            .max(64)
            .saturating_add(SPLIT_MARKER.len() + 1);
        let mut done = 0;
        while done < buf.len() {
            let rest = &buf[done..];
            if max == 0 || self.size + rest.len() as u64 <= max {
                self.write_all(rest).map_err(|(n, e)| (done + n, e))?;
                break;
            }
            let room = max.saturating_sub(self.size) as usize;
            // The last line end that fits, else the first one within a line's length past
            // the limit, else (a partial line longer than the cap) the limit itself.
            let cut = match rfind_newline(&rest[..room.min(rest.len())]) {
                Some(i) => Some(i + 1),
                None if self.file_ends_line && self.size > 0 => {
                    // No line end fits, but the file ends on one: rotate before this line.
                    self.rotate(policy).map_err(|e| (done, e))?;
                    continue;
                }
                None => find_newline(&rest[room..rest.len().min(room.saturating_add(cap))])
                    .map(|j| room + j + 1),
            };
            let cut = match cut {
                Some(c) => c,
                None if rest.len() <= room.saturating_add(cap) => {
                    // The chunk ends inside a line that may still end in time: write it now,
                    // rotate at its end later.
                    self.write_all(rest).map_err(|(n, e)| (done + n, e))?;
                    break;
                }
                None => room.max(1),
            };
            self.write_all(&rest[..cut])
                .map_err(|(n, e)| (done + n, e))?;
            done += cut;
            self.rotate(policy).map_err(|e| (done, e))?;
        }
        Ok(())
    }

    fn write_all(&mut self, mut buf: &[u8]) -> Result<(), (usize, io::Error)> {
        let file = self.file.as_mut().expect("opened before writing");
        let total = buf.len();
        while !buf.is_empty() {
            match file.write(buf) {
                Ok(0) => {
                    return Err((total - buf.len(), io::Error::from(io::ErrorKind::WriteZero)));
                }
                Ok(n) => {
                    self.size += n as u64;
                    self.file_ends_line = buf[n - 1] == b'\n';
                    buf = &buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((total - buf.len(), e)),
            }
        }
        Ok(())
    }

    /// Opens the live file if needed; after a failure, writes the marker line first.
    fn ensure_open(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let mut file = self.dir.open_append(&self.name)?;
            self.size = file.metadata()?.len();
            if self.size > 0 {
                // Continue a partial last line of a previous writer on its own line state.
                let mut last = [0u8; 1];
                file.seek(SeekFrom::End(-1))?;
                file.read_exact(&mut last)?;
                self.file_ends_line = last[0] == b'\n';
                if self.file_ends_line {
                    self.at_line_start = true;
                    self.line_len = 0;
                }
            } else {
                self.file_ends_line = true;
            }
            self.file = Some(file);
        }
        if let Some((error, dropped)) = self.broken.take() {
            let lead = if self.file_ends_line { "" } else { "\n" };
            let marker = format!(
                "{lead}[sheepdog: {dropped} bytes dropped while writing failed: {error}]\n"
            );
            if let Err((_, e)) = self.write_all(marker.as_bytes()) {
                self.broken = Some((error, dropped));
                self.file = None;
                return Err(e);
            }
            self.at_line_start = true;
            self.line_len = 0;
        }
        Ok(())
    }

    fn rotate(&mut self, policy: &LogPolicy) -> io::Result<()> {
        self.file = None;
        let keep = policy.get_keep();
        let name = |i| rotated_name(&self.name, i);
        if keep == 0 {
            self.dir.remove(&self.name)?;
        } else {
            // Shift only the files that exist: .n → .n+1 down to .1 → .2, the one past
            // `keep` removed (a smaller `keep` than before removes the surplus too).
            let mut n = 0;
            while self.dir.stat(&name(n + 1)).is_ok() {
                n += 1;
            }
            for i in (1..=n).rev() {
                if i >= keep {
                    self.dir.remove(&name(i))?;
                } else {
                    self.dir.rename(&name(i), &name(i + 1))?;
                }
            }
            self.dir.rename(&self.name, &name(1))?;
        }
        self.size = 0;
        self.ensure_open()
    }

    /// Closes the file (it is reopened on the next write).
    pub(crate) fn close(&mut self) {
        self.file = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn sink(dir: &Path) -> Sink {
        Sink::new(
            LogDir::open(dir),
            "s.out.log".into(),
            Arc::new(AtomicU64::new(0)),
        )
    }

    fn read_all(base: &Path, keep: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for i in (0..=keep).rev() {
            if let Ok(b) = std::fs::read(rotated(base, i)) {
                out.extend(b);
            }
        }
        out
    }

    #[test]
    fn finds_newlines_anywhere() {
        for len in 0..40 {
            for at in 0..len {
                let mut v = vec![b'x'; len];
                v[at] = b'\n';
                assert_eq!(find_newline(&v), Some(at));
            }
            assert_eq!(find_newline(&vec![b'x'; len]), None);
        }
    }

    #[test]
    fn bytes_pass_through_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        let data = b"a\r\n\n\0\xff\xfe partial";
        assert!(
            s.write(data, &LogPolicy::default(), SystemTime::now())
                .is_none()
        );
        assert_eq!(std::fs::read(s.base()).unwrap(), data);
    }

    #[test]
    fn long_lines_are_split_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        let p = LogPolicy::default().line_max(64);
        s.write(&[b'a'; 100], &p, SystemTime::now());
        s.write(b"bc\n", &p, SystemTime::now());
        let text = std::fs::read(s.base()).unwrap();
        let mut want = vec![b'a'; 64];
        want.extend_from_slice(SPLIT_MARKER);
        want.push(b'\n');
        want.extend_from_slice(&[b'a'; 36]);
        want.extend_from_slice(b"bc\n");
        assert_eq!(text, want);
    }

    #[test]
    fn timestamps_prefix_each_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        let p = LogPolicy::default().timestamps(true);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_780_800_123);
        s.write(b"one\ntw", &p, t);
        s.write(b"o\n", &p, t);
        let text = String::from_utf8(std::fs::read(s.base()).unwrap()).unwrap();
        assert_eq!(
            text,
            "2026-11-27T12:00:00.123Z one\n2026-11-27T12:00:00.123Z two\n"
        );
    }

    #[test]
    fn rotation_keeps_k_files_and_cuts_at_line_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        let p = LogPolicy::default().max_bytes(100).keep(2);
        let mut all = Vec::new();
        for i in 0..100 {
            let line = format!("line {i:04}\n");
            all.extend_from_slice(line.as_bytes());
            s.write(line.as_bytes(), &p, SystemTime::now());
        }
        for i in 0..=2 {
            let f = std::fs::read(rotated(&s.base(), i)).unwrap();
            assert!(f.len() <= 100, "file {i} is {} bytes", f.len());
            assert!(f.ends_with(b"\n"), "file {i} ends mid-line");
        }
        assert!(!rotated(&s.base(), 3).exists());
        assert!(
            all.ends_with(&read_all(&s.base(), 2)),
            "the kept files are the newest bytes in order"
        );
    }

    proptest! {
        /// Whatever the chunking and limits, the files read oldest to newest are the input
        /// (when nothing rotated out of the kept set), every cut at a line end.
        #[test]
        fn rotation_loses_and_duplicates_nothing(
            lines in proptest::collection::vec(0usize..150, 1..200),
            chunk in 1usize..500,
            max in 0u64..2000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut s = sink(dir.path());
            let p = LogPolicy::default().max_bytes(max).keep(10_000).line_max(200);
            let mut data = Vec::new();
            for (i, len) in lines.iter().enumerate() {
                data.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, *len));
                data.push(b'\n');
            }
            for part in data.chunks(chunk) {
                prop_assert!(s.write(part, &p, SystemTime::now()).is_none());
            }
            let mut files = 0;
            while rotated(&s.base(), files + 1).exists() { files += 1; }
            prop_assert_eq!(read_all(&s.base(), files), data);
            for i in 1..=files {
                let f = std::fs::read(rotated(&s.base(), i)).unwrap();
                prop_assert!(f.ends_with(b"\n"));
                prop_assert!(max == 0 || f.len() as u64 <= max + 201);
            }
        }
    }
}
