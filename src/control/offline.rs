//! [`StateReader`]: what a state directory says while no host serves it.

use super::protocol::{Exit, Explanation, LogLine, Run, Service, Streams};
use crate::error::{Error, ErrorKind, Result};
use crate::logs::reader::{Activity, LogFollower};
use crate::logs::{LogDir, LogFile};
use crate::state_dir::DB_FILE;
use crate::store::{Store, StoredService};
use crate::supervisor::Stream;
use crate::sys;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads a state directory without a host: its registry (read-only, without the lock, so a
/// host that opens it meanwhile is not disturbed) and its logs. What it shows is the state
/// the last host recorded; a service recorded `online` may have ended with that host.
///
/// # Example
///
/// ```
/// use sheepdog::control::StateReader;
/// use sheepdog::{ServiceSpec, Supervisor};
/// # fn main() -> sheepdog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let sup = Supervisor::open(dir.path())?;
/// sup.start(ServiceSpec::new("nap", "sleep").arg("60"))?;
/// sup.shutdown()?;
/// drop(sup);
/// let reader = StateReader::open(dir.path())?;
/// let nap = reader.describe("nap")?;
/// assert_eq!(nap.desired_up, Some(true));
/// assert!(reader.explain("nap")?.text.contains("starts it again"));
/// # Ok(()) }
/// ```
pub struct StateReader {
    path: PathBuf,
    store: parking_lot::Mutex<Store>,
    logs: LogDir,
}

impl StateReader {
    /// Opens the state directory at `path` to read.
    ///
    /// # Errors
    ///
    /// `Refused` if it belongs to another user (and this one is not root); `Store` if it has
    /// no registry, or one that is not ours or of another version; `Io` if it cannot be
    /// opened.
    pub fn open(path: impl AsRef<Path>) -> Result<StateReader> {
        let path = path.as_ref();
        let shown = path.display();
        let dir = sys::open_dir(path, true).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::PermissionDenied {
                ErrorKind::Refused
            } else {
                ErrorKind::Io
            };
            Error::new(kind, format!("cannot open state directory '{shown}'")).with_source(e)
        })?;
        let st = sys::fstat(&dir).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot read state directory '{shown}'"),
            )
            .with_source(e)
        })?;
        let me = sys::effective_uid();
        if st.uid != me && me != 0 {
            return Err(Error::new(
                ErrorKind::Refused,
                format!(
                    "state directory '{shown}' belongs to uid {}, not to uid {me}",
                    st.uid
                ),
            ));
        }
        let real = sys::fd_path(&dir).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot read state directory '{shown}'"),
            )
            .with_source(e)
        })?;
        match sys::stat_at(&dir, DB_FILE) {
            Ok(db) if db.is_file() => {}
            _ => {
                return Err(Error::new(
                    ErrorKind::Store,
                    format!("'{shown}' holds no state file ({DB_FILE}): not a state directory"),
                ));
            }
        }
        let store = Store::open_read_only(&real.join(DB_FILE), st.uid == me)?;
        let logs_fd = sys::open_dir_at(&dir, "logs").map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot open the logs of '{shown}'")).with_source(e)
        })?;
        Ok(StateReader {
            path: path.to_path_buf(),
            store: parking_lot::Mutex::new(store),
            logs: LogDir::new(logs_fd, real.join("logs"), 0o600),
        })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.path
    }

    /// Every service, by id, as last recorded.
    ///
    /// # Errors
    ///
    /// `Store` if the registry cannot be read.
    pub fn list(&self) -> Result<Vec<Service>> {
        Ok(self
            .store
            .lock()
            .load_services()?
            .iter()
            .map(service)
            .collect())
    }

    fn find(&self, target: &str) -> Result<StoredService> {
        let services = self.store.lock().load_services()?;
        let by_id = (!target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()))
            .then(|| target.parse::<u64>().ok())
            .flatten();
        services
            .into_iter()
            .find(|s| Some(s.id) == by_id || (by_id.is_none() && s.spec.name() == target))
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "not found").with_service(target))
    }

    /// One service, by name or id, as last recorded.
    ///
    /// # Errors
    ///
    /// `NotFound`; `Store` if the registry cannot be read.
    pub fn describe(&self, target: &str) -> Result<Service> {
        Ok(service(&self.find(target)?))
    }

    /// A service's newest `limit` runs, newest first.
    ///
    /// # Errors
    ///
    /// `NotFound`; `Store` if the registry cannot be read.
    pub fn history(&self, target: &str, limit: usize) -> Result<Vec<Run>> {
        let found = self.find(target)?;
        let runs = self.store.lock().runs(found.id, limit)?;
        Ok(runs.iter().map(Run::from_run).collect())
    }

    /// Why the service is as it is, with no host running.
    ///
    /// # Errors
    ///
    /// `NotFound`; `Store` if the registry cannot be read.
    pub fn explain(&self, target: &str) -> Result<Explanation> {
        let s = self.find(target)?;
        let last = s
            .last_exit
            .as_ref()
            .map_or(String::new(), |e| format!("; its last run ended with {e}"));
        let next = if s.desired_up {
            "the next host to open the state directory starts it again"
        } else {
            "it stays stopped when a host opens the state directory"
        };
        Ok(Explanation {
            service: s.spec.name().to_string(),
            status: s.status,
            text: format!(
                "no host is running: {} was last recorded {}{last}; {next}",
                s.spec.name(),
                s.status
            ),
        })
    }

    /// The last `n` lines of each of the service's streams, stdout's first.
    ///
    /// # Errors
    ///
    /// `NotFound`; `Io` if a log cannot be read.
    pub fn tail(&self, target: &str, streams: Streams, n: usize) -> Result<Vec<LogLine>> {
        let name = self.find(target)?.spec.name().to_string();
        tail(&self.logs, &name, streams, n)
    }

    /// Follows one of the service's streams from its end. With no host to say when it
    /// writes, the follower looks at the file every 100 ms; it goes on across rotations
    /// and restarts if a host starts meanwhile.
    ///
    /// # Errors
    ///
    /// `NotFound`.
    pub fn follow(&self, target: &str, stream: Stream) -> Result<LogFollower> {
        let name = self.find(target)?.spec.name().to_string();
        Ok(LogFollower::at_end(
            log_file(&self.logs, &name, stream),
            Arc::new(Activity::default()),
        ))
    }
}

/// The log file of a service's stream.
pub(super) fn log_file(logs: &LogDir, name: &str, stream: Stream) -> LogFile {
    LogFile {
        dir: logs.clone(),
        name: crate::logs::log_name(name, stream == Stream::Stderr),
    }
}

/// The last `n` lines of each of the streams of service `name`, stdout's first.
pub(super) fn tail(logs: &LogDir, name: &str, streams: Streams, n: usize) -> Result<Vec<LogLine>> {
    let mut out = Vec::new();
    for stream in streams.each() {
        let log = log_file(logs, name, stream);
        let lines = crate::logs::reader::tail(&log, n).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot read log '{}'", log.dir.path_of(&log.name).display()),
            )
            .with_service(name)
            .with_source(e)
        })?;
        out.extend(lines.into_iter().map(|text| LogLine {
            service: name.to_string(),
            stream,
            text,
            cursor: None,
        }));
    }
    Ok(out)
}

fn service(s: &StoredService) -> Service {
    Service {
        id: s.id,
        name: s.spec.name().to_string(),
        status: s.status,
        pid: None,
        restarts: s.restarts,
        started_at_ms: None,
        last_exit: s.last_exit.as_ref().map(Exit::from_exit),
        next_start_in_ms: None,
        generation: 0,
        log_dropped_bytes: 0,
        status_text: None,
        notify_rejected: 0,
        next_scheduled_ms: None,
        desired_up: Some(s.desired_up),
        spec: s.spec.clone(),
    }
}
