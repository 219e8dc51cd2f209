//! Reading logs while the pump writes them: [`tail`] across rotated files, and
//! [`LogFollower`], which follows new lines across rotations and restarts and can resume from
//! a [`LogCursor`] without losing or repeating a line.

use super::LogFile;
use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How many rotated files a reader looks through at most.
const MAX_ROTATED: u32 = 1000;

/// Wakes followers when the pump has written something.
#[derive(Default)]
pub(crate) struct Activity {
    written: Mutex<u64>,
    changed: Condvar,
    pub(crate) followers: AtomicUsize,
    /// Rung with every bump, for the control socket's followers (which do not wait on
    /// `changed`).
    pub(crate) bell: crate::bell::Bell,
}

impl Activity {
    pub(crate) fn bump(&self) {
        if self.followers.load(Ordering::Relaxed) > 0 {
            *self.written.lock() += 1;
            self.changed.notify_all();
            self.bell.ring();
        }
    }

    fn current(&self) -> u64 {
        *self.written.lock()
    }

    fn wait_past(&self, seen: u64, deadline: Instant) {
        let mut written = self.written.lock();
        while *written == seen {
            if self.changed.wait_until(&mut written, deadline).timed_out() {
                return;
            }
        }
    }
}

/// The last `n` lines of a log, oldest first, reading rotated files when the live one has
/// fewer. A final line without a newline counts. Lines are decoded as lossy UTF-8.
pub(crate) fn tail(base: &LogFile, n: usize) -> io::Result<Vec<String>> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut carry: Vec<u8> = Vec::new(); // the start of the oldest line seen so far
    for i in 0..=MAX_ROTATED {
        let mut file = match base.open(i) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if i == 0 {
                    continue;
                }
                break;
            }
            Err(e) => return Err(e),
        };
        let mut end = file.metadata()?.len();
        // A file that ends with a newline: that newline closes the line carried from the
        // newer file's start.
        let mut first_block = true;
        while end > 0 && lines.len() < n {
            let start = end.saturating_sub(64 * 1024);
            let mut block = vec![0u8; (end - start) as usize];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut block)?;
            if first_block && block.last() == Some(&b'\n') {
                if !carry.is_empty() {
                    lines.push(std::mem::take(&mut carry));
                }
                block.pop();
            }
            first_block = false;
            let mut rest = &block[..];
            while let Some(pos) = rest.iter().rposition(|&b| b == b'\n') {
                let mut line = rest[pos + 1..].to_vec();
                line.extend_from_slice(&carry);
                carry.clear();
                lines.push(line);
                rest = &rest[..pos];
                if lines.len() >= n {
                    break;
                }
            }
            if lines.len() >= n {
                break;
            }
            let mut joined = rest.to_vec();
            joined.extend_from_slice(&carry);
            carry = joined;
            end = start;
        }
        if lines.len() >= n {
            break;
        }
    }
    if lines.len() < n && !carry.is_empty() {
        lines.push(carry);
    }
    lines.truncate(n);
    lines.reverse();
    Ok(lines
        .into_iter()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .collect())
}

/// A position in a service's log: just after the last line a [`LogFollower`] returned.
///
/// Resume with [`Supervisor::follow_from`](crate::Supervisor::follow_from). It names the file
/// by identity (inode), so it stays valid across rotations for as long as that file is
/// kept. Its text form (`Display` / `FromStr`) is `inode:offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogCursor {
    ino: u64,
    offset: u64,
}

impl std::fmt::Display for LogCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ino, self.offset)
    }
}

impl std::str::FromStr for LogCursor {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<LogCursor> {
        let bad = || {
            crate::Error::new(
                crate::ErrorKind::InvalidInput,
                format!("'{s}' is not a log cursor (inode:offset)"),
            )
        };
        let (ino, offset) = s.split_once(':').ok_or_else(bad)?;
        Ok(LogCursor {
            ino: ino.parse().map_err(|_| bad())?,
            offset: offset.parse().map_err(|_| bad())?,
        })
    }
}

/// New lines of a service's log, as they are written.
///
/// Iterating blocks until the next line; it never ends by itself.
/// [`recv_timeout`](LogFollower::recv_timeout) waits a bounded time. The follower keeps
/// going across rotations (it finishes the rotated file first) and across restarts (they
/// append to the same file). [`cursor`](LogFollower::cursor) tells where it is.
///
/// # Example
///
/// ```
/// use sheepdog::{ServiceSpec, Stream, Supervisor};
/// use std::time::Duration;
/// # fn main() -> sheepdog::Result<()> {
/// let sup = Supervisor::temporary()?;
/// sup.start(ServiceSpec::new("greeter", "sh").args(["-c", "echo hello; exec sleep 60"]))?;
/// let mut lines = sup.follow_from_start("greeter", Stream::Stdout)?;
/// assert_eq!(lines.recv_timeout(Duration::from_secs(5)).as_deref(), Some("hello"));
/// # sup.shutdown()?; Ok(()) }
/// ```
pub struct LogFollower {
    base: LogFile,
    file: Option<File>,
    ino: u64,
    /// Offset in `file` up to which bytes have been read into `pending`.
    read_to: u64,
    pending: Vec<u8>,
    activity: Arc<Activity>,
    /// Files that existed when the follower began without a file to read: their lines are
    /// older than it. Once the first file appears, reading starts at the oldest file not
    /// among them, so rotations in between lose nothing.
    older: Vec<u64>,
}

impl LogFollower {
    /// Follows from the current end of the live file.
    pub(crate) fn at_end(base: LogFile, activity: Arc<Activity>) -> LogFollower {
        activity.followers.fetch_add(1, Ordering::Relaxed);
        let mut f = LogFollower {
            base,
            file: None,
            ino: 0,
            read_to: 0,
            pending: Vec::new(),
            activity,
            older: Vec::new(),
        };
        if let Ok(file) = f.base.open(0)
            && let Ok(meta) = file.metadata()
        {
            f.ino = meta.ino();
            f.read_to = meta.len();
            f.file = Some(file);
        }
        if f.file.is_none() {
            f.older = f.files().into_iter().map(|(_, ino)| ino).collect();
        }
        f
    }

    /// Follows from the oldest kept line.
    pub(crate) fn at_start(base: LogFile, activity: Arc<Activity>) -> LogFollower {
        let mut f = LogFollower::at_end(base, activity);
        f.file = None;
        f.older.clear();
        f.open_oldest();
        f
    }

    /// Follows from `cursor`, or from the oldest kept line if its file was rotated away.
    pub(crate) fn at_cursor(
        base: LogFile,
        activity: Arc<Activity>,
        cursor: LogCursor,
    ) -> LogFollower {
        let mut f = LogFollower::at_end(base, activity);
        f.file = None;
        match f.find_ino(cursor.ino) {
            Some(file) => {
                f.file = Some(file);
                f.ino = cursor.ino;
                f.read_to = cursor.offset;
            }
            None => {
                f.older.clear();
                f.open_oldest();
            }
        }
        f
    }

    fn open_oldest(&mut self) {
        // From a consistent picture of the files, checked again after opening: a rotation
        // in progress must not make us start past files it was renaming.
        for _ in 0..100 {
            let files = self.files();
            let Some(&(index, ino)) = files.iter().rev().find(|(_, i)| !self.older.contains(i))
            else {
                return;
            };
            let Ok(file) = self.base.open(index) else {
                continue;
            };
            if file.metadata().is_ok_and(|m| m.ino() == ino) {
                self.ino = ino;
                self.read_to = 0;
                self.file = Some(file);
                return;
            }
        }
    }

    /// `(rotation index, inode)` of every kept file, newest first, as one consistent picture:
    /// the pump may be renaming files meanwhile, so two scans must agree. A rotation in
    /// progress leaves at most one index free, so the scan stops at two free in a row.
    fn files(&self) -> Vec<(u32, u64)> {
        let scan = || {
            let mut out = Vec::new();
            let mut misses = 0;
            for i in 0..=MAX_ROTATED {
                match self.base.ino(i) {
                    Ok(ino) => {
                        misses = 0;
                        out.push((i, ino));
                    }
                    Err(_) if i == 0 => {}
                    Err(_) => {
                        misses += 1;
                        if misses == 2 {
                            break;
                        }
                    }
                }
            }
            out
        };
        let mut last = scan();
        for _ in 0..100 {
            let again = scan();
            if again == last {
                return again;
            }
            last = again;
        }
        last
    }

    /// Opens the file written right after the one with inode `ino` (the oldest kept file if
    /// that one is gone: rotation dropped it, and every kept file is newer), checking that the
    /// rotation did not move on between looking and opening.
    fn open_successor(&self, ino: u64) -> Option<File> {
        for _ in 0..100 {
            let files = self.files();
            let target = match files.iter().position(|(_, i)| *i == ino) {
                Some(0) => return None, // still the newest
                Some(p) => files[p - 1],
                None => *files.last()?,
            };
            let file = self.base.open(target.0).ok()?;
            if file.metadata().ok()?.ino() == target.1 {
                return Some(file);
            }
        }
        None
    }

    /// The kept file with inode `ino`, if it is still kept.
    fn find_ino(&self, ino: u64) -> Option<File> {
        for _ in 0..100 {
            let files = self.files();
            let &(index, _) = files.iter().find(|(_, i)| *i == ino)?;
            let Ok(file) = self.base.open(index) else {
                continue;
            };
            if file.metadata().is_ok_and(|m| m.ino() == ino) {
                return Some(file);
            }
        }
        None
    }

    /// Where the next line starts.
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            ino: self.ino,
            offset: self.read_to - self.pending.len() as u64,
        }
    }

    /// Takes a complete line out of `pending`.
    fn take_line(&mut self) -> Option<String> {
        let pos = self.pending.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&self.pending[..pos]).into_owned();
        self.pending.drain(..=pos);
        Some(line)
    }

    /// Reads what is new; moves to the next file once the current one was rotated and read
    /// to its end. Returns whether anything changed.
    fn advance(&mut self) -> bool {
        if self.file.is_none() {
            // Nothing to read when the follower began: start at the oldest newer file.
            self.open_oldest();
            if self.file.is_none() {
                return false;
            }
        }
        let file = self.file.as_mut().expect("opened above");
        let mut buf = [0u8; 64 * 1024];
        let mut got = false;
        if file.seek(SeekFrom::Start(self.read_to)).is_ok() {
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                self.pending.extend_from_slice(&buf[..n]);
                self.read_to += n as u64;
                got = true;
                if self.pending.len() > 1 << 20 {
                    break;
                }
            }
        }
        if got {
            return true;
        }
        // At the end of our file: if it is no longer the live file, go to its successor.
        let live = self.base.ino(0).ok();
        if live == Some(self.ino) {
            return false;
        }
        match self.open_successor(self.ino) {
            Some(file) => {
                if !self.pending.is_empty() && !self.pending.ends_with(b"\n") {
                    // A line cut by rotation (only past the line cap) ends with its file.
                    self.pending.push(b'\n');
                }
                self.ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
                self.read_to = 0;
                self.file = Some(file);
                true
            }
            None => false,
        }
    }

    /// The next line, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<String> {
        let deadline = crate::duration::deadline(Instant::now(), timeout);
        loop {
            if let Some(line) = self.take_line() {
                return Some(line);
            }
            let seen = self.activity.current();
            if self.advance() {
                continue;
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Bounded waits: a write that raced the check above still wakes us soon.
            self.activity.wait_past(
                seen,
                deadline.min(Instant::now() + Duration::from_millis(100)),
            );
        }
    }
}

impl Iterator for LogFollower {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            if let Some(line) = self.recv_timeout(Duration::from_secs(3600)) {
                return Some(line);
            }
        }
    }
}

impl Drop for LogFollower {
    fn drop(&mut self) {
        self.activity.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::logs::LogDir;
    use crate::logs::sink::rotated;

    fn log_file(dir: &std::path::Path) -> LogFile {
        LogFile {
            dir: LogDir::open(dir),
            name: "x.out.log".into(),
        }
    }

    #[test]
    fn tail_reads_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("x.out.log");
        let log = log_file(dir.path());
        std::fs::write(rotated(&base, 2), "1\n2\n").unwrap();
        std::fs::write(rotated(&base, 1), "3\n4\n").unwrap();
        std::fs::write(&base, "5\n6 partial").unwrap();
        assert_eq!(tail(&log, 3).unwrap(), ["4", "5", "6 partial"]);
        assert_eq!(
            tail(&log, 10).unwrap(),
            ["1", "2", "3", "4", "5", "6 partial"]
        );
        assert_eq!(tail(&log, 0).unwrap(), Vec::<String>::new());
        std::fs::write(&base, "").unwrap();
        assert_eq!(tail(&log, 1).unwrap(), ["4"]);
    }

    #[test]
    fn tail_of_a_long_file_reads_blocks_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("x.out.log");
        let log = log_file(dir.path());
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&base, text).unwrap();
        let t = tail(&log, 20_000).unwrap();
        assert_eq!(t.len(), 20_000);
        assert_eq!(t[0], "line 30000");
        assert_eq!(t[19_999], "line 49999");
    }

    /// One rotation as the pump does it, keeping `keep` rotated files: each file moves one
    /// index up, the oldest past `keep` is dropped, and a new live file holds `lines`.
    fn rotate(base: &std::path::Path, keep: u32, lines: &str) {
        let _ = std::fs::remove_file(rotated(base, keep));
        for i in (1..keep).rev() {
            let _ = std::fs::rename(rotated(base, i), rotated(base, i + 1));
        }
        std::fs::rename(base, rotated(base, 1)).unwrap();
        std::fs::write(base, lines).unwrap();
    }

    #[test]
    fn a_follower_left_behind_by_rotation_resumes_at_the_oldest_kept_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("x.out.log");
        std::fs::write(&base, "a1\na2\n").unwrap();
        let mut f = LogFollower::at_start(log_file(dir.path()), Arc::default());
        assert_eq!(f.recv_timeout(Duration::ZERO).as_deref(), Some("a1"));
        // While the follower waits, its file is rotated out of the two kept ones.
        for lines in ["b1\n", "c1\n", "d1\nd2\n", "e1\n"] {
            rotate(&base, 2, lines);
        }
        assert!(!rotated(&base, 3).exists());
        let rest: Vec<String> = std::iter::from_fn(|| f.recv_timeout(Duration::ZERO)).collect();
        // It finishes the file it holds, then reads every line still on disk, in order: b's
        // file was dropped while it lagged, c's and d's were not.
        assert_eq!(rest, ["a2", "c1", "d1", "d2", "e1"]);
    }

    #[test]
    fn cursor_text_round_trips() {
        let c = LogCursor { ino: 42, offset: 7 };
        assert_eq!(c.to_string().parse::<LogCursor>().unwrap(), c);
        assert!("x".parse::<LogCursor>().is_err());
    }
}
