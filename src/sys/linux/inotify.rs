//! [`Inotify`]: one inotify instance for every directory the supervision thread watches for
//! changes (`ServiceSpec::watch`), polled in its epoll: one fd whatever the number of
//! watched services and directories.

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::ffi::OsString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

/// What happened in a watched directory, as far as a restart on change cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FsEvent {
    /// The watch it came from.
    pub(crate) wd: i32,
    /// The entry of the directory it concerns; `None` for the directory itself.
    pub(crate) name: Option<OsString>,
    /// The entry is a directory that appeared (created, or moved in): watch it too.
    pub(crate) new_dir: bool,
    /// The watch is gone (its directory was deleted or moved away, or unwatched).
    pub(crate) gone: bool,
    /// The kernel's queue overflowed: events were lost, anything may have changed.
    pub(crate) overflow: bool,
}

/// One inotify instance, non-blocking, close-on-exec.
pub(crate) struct Inotify {
    fd: OwnedFd,
    buf: Box<[MaybeUninit<u8>]>,
}

impl Inotify {
    pub(crate) fn new() -> io::Result<Inotify> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        Ok(Inotify {
            fd,
            buf: vec![MaybeUninit::uninit(); 64 << 10].into_boxed_slice(),
        })
    }

    /// Watches the directory at `path` (not through a symbolic link at its end) for entries
    /// created, deleted, written, or moved in or out. Watching a directory twice gives the
    /// same watch descriptor.
    pub(crate) fn watch_dir(&self, path: &Path) -> io::Result<i32> {
        let flags = WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MODIFY
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR
            | WatchFlags::DONT_FOLLOW
            | WatchFlags::EXCL_UNLINK;
        Ok(inotify::add_watch(&self.fd, path, flags)?)
    }

    /// Stops a watch (already gone with its directory: nothing to do).
    pub(crate) fn unwatch(&self, wd: i32) {
        let _ = inotify::remove_watch(&self.fd, wd);
    }

    /// Reads the pending events, at most `max`, into `out`. What is left stays readable (the
    /// fd is level-triggered in the epoll) for the next call.
    pub(crate) fn read(&mut self, out: &mut Vec<FsEvent>, max: usize) -> io::Result<()> {
        let mut reader = inotify::Reader::new(&self.fd, &mut self.buf);
        while out.len() < max {
            let event = match reader.next() {
                Ok(e) => e,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let flags = event.events();
            let name = event
                .file_name()
                .map(|n| OsString::from_vec(n.to_bytes().to_vec()))
                .filter(|n| !n.is_empty());
            out.push(FsEvent {
                wd: event.wd(),
                new_dir: flags.contains(ReadFlags::ISDIR)
                    && flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO),
                gone: flags.contains(ReadFlags::IGNORED),
                overflow: flags.contains(ReadFlags::QUEUE_OVERFLOW),
                name,
            });
            if reader.is_buffer_empty() && out.len() >= max {
                break;
            }
        }
        Ok(())
    }
}

impl AsFd for Inotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_in_a_watched_directory_is_an_event_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut ino = Inotify::new().unwrap();
        let wd = ino.watch_dir(dir.path()).unwrap();
        assert_eq!(
            ino.watch_dir(dir.path()).unwrap(),
            wd,
            "one watch per directory"
        );
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut events = Vec::new();
        ino.read(&mut events, 64).unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.wd == wd && e.name.as_deref() == Some("a.txt".as_ref()) && !e.new_dir)
        );
        assert!(
            events
                .iter()
                .any(|e| e.name.as_deref() == Some("sub".as_ref()) && e.new_dir)
        );
        ino.unwatch(wd);
        events.clear();
        ino.read(&mut events, 64).unwrap();
        assert!(events.iter().any(|e| e.gone), "{events:?}");
    }
}
