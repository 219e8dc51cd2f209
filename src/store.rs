//! `Store`: the durable registry in SQLite. All SQL of the crate lives here.
//!
//! One connection, owned by the supervision thread. WAL with `synchronous=FULL`: a change is
//! on disk when the call returns, so an acknowledged change survives a SIGKILL of the host
//! (and, if the device honours fsync, a power loss). The WAL is copied into the database
//! by a second connection on a thread of its own ([`Checkpointer`]), not by the commit
//! that fills it.
//!
//! A change is acknowledged only while the state file (and the lock file) that the store
//! holds are still the files at their paths: one deleted, replaced, truncated or overwritten
//! under the running supervisor would take every later change with it, unseen. Once that is
//! found, every change fails with a `Store` error that says so.

use crate::error::{Error, ErrorKind, Result};
use crate::history::{Cause, Usage};
use crate::info::{Exit, Status};
use crate::spec::ServiceSpec;
use crate::sys;
use rusqlite::{Connection, OpenFlags, params};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `PRAGMA application_id`: "SHDG". A database without it is not ours.
const APPLICATION_ID: i32 = 0x5348_4447;

/// Schema migrations; `user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE service (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    spec        TEXT NOT NULL,
    desired_up  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    restarts    INTEGER NOT NULL DEFAULT 0,
    exit_code   INTEGER,
    exit_signal INTEGER,
    exit_at_ms  INTEGER,
    exit_uptime_ms INTEGER,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE run (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id  INTEGER NOT NULL REFERENCES service(id) ON DELETE CASCADE,
    generation  INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    boot_id     TEXT NOT NULL,
    start_ticks INTEGER,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    exit_code   INTEGER,
    exit_signal INTEGER
);
CREATE INDEX run_by_service ON run(service_id, id);
CREATE INDEX run_open ON run(id) WHERE ended_at_ms IS NULL;
"#,
    r#"
ALTER TABLE service ADD COLUMN exit_reason TEXT;
ALTER TABLE run ADD COLUMN reason TEXT;
"#,
    r#"
ALTER TABLE run ADD COLUMN ready_at_ms INTEGER;
ALTER TABLE run ADD COLUMN cause TEXT;
ALTER TABLE run ADD COLUMN errno INTEGER;
ALTER TABLE run ADD COLUMN decision TEXT;
ALTER TABLE run ADD COLUMN delay_ms INTEGER;
ALTER TABLE run ADD COLUMN max_rss INTEGER;
ALTER TABLE run ADD COLUMN user_us INTEGER;
ALTER TABLE run ADD COLUMN system_us INTEGER;
ALTER TABLE run ADD COLUMN stdout_tail BLOB;
ALTER TABLE run ADD COLUMN stderr_tail BLOB;
ALTER TABLE run ADD COLUMN pidfd_ino INTEGER;
"#,
    r#"
CREATE TABLE session (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    boot_id       TEXT NOT NULL,
    started_ticks INTEGER NOT NULL,
    key           BLOB NOT NULL,
    cgroup        INTEGER NOT NULL
);
"#,
    // Instances: a row per instance, named `<spec name>.<instance>` (NULL: a service
    // without instances). The uid a run has, when it is not the host's.
    r#"
ALTER TABLE service ADD COLUMN instance INTEGER;
ALTER TABLE run ADD COLUMN uid INTEGER;
"#,
    // The last tick of each schedule a host handled (or when it was armed): the next host
    // counts the ticks missed while none ran.
    r#"
CREATE TABLE tick (
    service_id  INTEGER PRIMARY KEY REFERENCES service(id) ON DELETE CASCADE,
    at_ms       INTEGER NOT NULL
);
"#,
];

/// Sessions kept: a dead host's leftovers are verified with its session's key, and the next
/// `open` reclaims them, so only the newest few can still matter.
const SESSIONS_KEPT: i64 = 8;
/// How the state file is opened: read-write, never through a symbolic link, and used by one
/// thread only.
/// SQLite's page cache of the engine's connection, in KiB (SQLite's default is 2000 KiB,
/// which a fleet of a thousand services fills: its rows and their indexes are about 1 MiB).
const PAGE_CACHE_KIB: i64 = 256;

const OPEN_FLAGS: OpenFlags = OpenFlags::SQLITE_OPEN_READ_WRITE
    .union(OpenFlags::SQLITE_OPEN_NOFOLLOW)
    .union(OpenFlags::SQLITE_OPEN_NO_MUTEX);

/// The most queued writes whose room is kept from one loop turn to the next.
const QUEUE_KEPT: usize = 256;

/// The WAL's size, in pages, past which a commit asks the checkpointer for a checkpoint:
/// SQLite's own default for its automatic checkpoints.
const CHECKPOINT_PAGES: i32 = 1000;
/// The WAL's size past which a commit checkpoints itself: commits that come faster than the
/// checkpointer's `fsync`s let it never catch up, and the WAL would grow without end.
const CHECKPOINT_PAGES_MAX: i32 = 4 * CHECKPOINT_PAGES;

/// Ended runs kept per service by default; older ones are pruned.
pub(crate) const RUNS_KEPT: usize = 100;
/// A service's oldest ended runs are pruned with one of its run ends in this many: one
/// statement less per restart of a crash loop, for a few rows more in the file.
const PRUNE_EVERY: u32 = 16;

/// A run as it starts.
pub(crate) struct NewRun<'a> {
    pub(crate) service_id: u64,
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    pub(crate) boot_id: &'a str,
    pub(crate) start_ticks: Option<u64>,
    pub(crate) pidfd_ino: Option<u64>,
    pub(crate) started_at: SystemTime,
    /// Ready at once (`Ready::Immediately`).
    pub(crate) ready: bool,
    /// The uid it runs as, when it is not the host's.
    pub(crate) uid: Option<u32>,
}

/// How a run ended and what followed.
pub(crate) struct RunEnding<'a> {
    pub(crate) exit: &'a Exit,
    pub(crate) cause: Cause,
    pub(crate) errno: Option<i32>,
    pub(crate) decision: Option<&'a str>,
    pub(crate) delay: Option<Duration>,
    pub(crate) usage: Option<Usage>,
    /// The last lines of its stdout and stderr.
    pub(crate) stdout: &'a [u8],
    pub(crate) stderr: &'a [u8],
}

/// A service as stored.
#[derive(Debug)]
pub(crate) struct StoredService {
    pub(crate) id: u64,
    /// Its index among its spec's instances, if the spec has instances.
    pub(crate) instance: Option<u32>,
    pub(crate) spec: ServiceSpec,
    pub(crate) desired_up: bool,
    pub(crate) status: Status,
    pub(crate) restarts: u64,
    pub(crate) last_exit: Option<Exit>,
}

/// A supervisor session as stored: the key its run markers are sealed with.
pub(crate) struct StoredSession {
    pub(crate) id: i64,
    pub(crate) boot_id: String,
    pub(crate) started_ticks: u64,
    pub(crate) key: Vec<u8>,
    pub(crate) cgroup: bool,
}

/// A run that had not ended when the previous host stopped writing.
#[derive(Debug)]
pub(crate) struct OpenRun {
    pub(crate) service_id: u64,
    pub(crate) pid: u32,
    /// The uid it ran as, when it was not the host's.
    pub(crate) uid: Option<u32>,
    pub(crate) boot_id: String,
    pub(crate) start_ticks: Option<u64>,
    pub(crate) pidfd_ino: Option<u64>,
}
/// The registry. Definitions (a service added, changed, deleted, its desired state) are
/// changed only through a [`Transaction`], committed with `synchronous=FULL`: on disk before
/// the call returns, all of it or none. Run records and statuses are queued in memory as the
/// supervision loop makes them and written by [`flush`](Store::flush) at the end of each turn,
/// in one transaction with `synchronous=NORMAL`, which in WAL mode survives a crash of the
/// host (only a power loss may roll back the newest of them) and keeps fsync and SQL off the
/// restart path.
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
    /// The connection's `synchronous` setting is FULL (else NORMAL).
    full_sync: bool,
    /// Run records and statuses of the current loop turn, in the order they were made.
    queued: Vec<Queued>,
    /// The id the next run record gets: ids are handed out here, so that a run has its id
    /// when it starts, before its record is written.
    next_run_id: i64,
    /// Ended runs kept per service.
    runs_kept: i64,
    /// Ends recorded per service since this store opened: every `PRUNE_EVERY`th prunes.
    ends: HashMap<u64, u32>,
    /// The files that must still be the ones at their paths for a change to be stored.
    /// After `conn`, so that they are closed after it: closing any fd of the database file
    /// would drop SQLite's locks on it.
    anchors: Vec<Anchor>,
    /// Why changes can no longer be stored, once an anchor was found moved.
    lost: Option<Error>,
    /// Copies the WAL into the database off this thread (a file-backed store).
    checkpointer: Option<Checkpointer>,
}

/// Checkpoints the WAL on a thread of its own, with a connection of its own. A checkpoint
/// copies the WAL's pages into the database and syncs both, some milliseconds; run by the
/// committing connection (SQLite's automatic checkpoint), it held up the supervision thread
/// every few hundred restarts of a crash loop. A commit that leaves the WAL over
/// [`CHECKPOINT_PAGES`] wakes the thread, which checkpoints what no reader needs
/// (`PASSIVE`): commits go on meanwhile.
struct Checkpointer {
    thread: Option<std::thread::JoinHandle<()>>,
    /// Checkpoints the thread ran.
    done: Arc<AtomicU64>,
}

impl Checkpointer {
    /// Starts the thread, and makes `conn`'s commits wake it instead of checkpointing.
    /// `None` (SQLite's automatic checkpoints stay) if its connection or thread cannot be
    /// had.
    fn start(conn: &mut Connection, path: &Path) -> Option<Checkpointer> {
        let stay = |e: &dyn std::fmt::Display| {
            log::warn!(
                "state file '{}': checkpoints stay on the supervision thread: {e}",
                path.display()
            );
        };
        let own = Connection::open_with_flags(path, OPEN_FLAGS)
            .and_then(|c| c.pragma_update(None, "synchronous", "FULL").map(|()| c));
        let own = match own {
            Ok(own) => own,
            Err(e) => {
                stay(&e);
                return None;
            }
        };
        let (wake, woken) = crossbeam_channel::bounded::<()>(1);
        let shown = path.display().to_string();
        let done = Arc::new(AtomicU64::new(0));
        let counted = done.clone();
        let thread = std::thread::Builder::new()
            .name("sheepdog-store".to_string())
            .spawn(move || {
                // Until the store drops its hook, and with it the sender.
                while woken.recv().is_ok() {
                    match own.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        Ok(()) => drop(counted.fetch_add(1, Ordering::Relaxed)),
                        Err(e) => log::warn!("state file '{shown}': cannot checkpoint: {e}"),
                    }
                }
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                stay(&e);
                return None;
            }
        };
        // Replaces SQLite's automatic checkpoint, itself a hook. An error here would fail
        // a commit that happened: none is returned.
        let hooked = conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
            if pages >= CHECKPOINT_PAGES_MAX {
                // Commits came faster than the thread's checkpoints caught up, and the WAL
                // is only rewound once one has: this commit checkpoints, as SQLite would.
                // Busy if the thread is checkpointing now; the next commit tries again.
                let _ = wal.checkpoint();
            } else if pages >= CHECKPOINT_PAGES {
                let _ = wake.try_send(());
            }
            Ok(())
        }));
        if let Err(e) = hooked {
            stay(&e);
        }
        // Without the hook the sender is gone already, and the thread ends at once.
        Some(Checkpointer {
            thread: Some(thread),
            done,
        })
    }

    /// Ends the thread: `conn` drops its hook (the sender), the thread its connection. The
    /// store's own connection is then the last, and its close checkpoints the rest.
    fn stop(&mut self, conn: &mut Connection) {
        let _ = conn.wal_hook(
            None::<fn(&mut rusqlite::hooks::Wal, std::ffi::c_int) -> rusqlite::Result<()>>,
        );
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        log::debug!(
            "{} checkpoints run off the supervision thread",
            self.done.load(Ordering::Relaxed)
        );
    }
}

/// A file held open to tell whether it is still the one at its path.
struct Anchor {
    /// "state file" or "lock file".
    what: &'static str,
    path: PathBuf,
    file: File,
    /// It is the registry: it must also still start with SQLite's header.
    registry: bool,
}

impl Anchor {
    /// What became of the file, if it is no longer the one at its path.
    fn problem(&self) -> Option<&'static str> {
        let Ok(held) = sys::fstat(&self.file) else {
            return Some("cannot be checked");
        };
        match sys::lstat(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && held.nlink == 0 => {
                return Some("was deleted");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some("was moved away"),
            Err(_) => return Some("cannot be found"),
            Ok(now) if !now.same_file(&held) => return Some("was replaced by another file"),
            Ok(_) => {}
        }
        if self.registry {
            let mut head = [0u8; 16];
            let read = sys::read_at(&self.file, &mut head, 0).unwrap_or(0);
            if held.size < 100 || read != head.len() || &head != b"SQLite format 3\0" {
                return Some("was truncated or overwritten");
            }
        }
        None
    }
}

/// Checks the anchors, and remembers for good when one moved: `Err` with why changes cannot
/// be stored.
fn check_anchors(anchors: &[Anchor], lost: &mut Option<Error>) -> Result<()> {
    if let Some(e) = lost {
        return Err(e.clone());
    }
    for a in anchors {
        if let Some(what) = a.problem() {
            let e = Error::new(
                ErrorKind::Store,
                format!(
                    "{} '{}' {what} while the supervisor ran: changes can no longer be stored (shut the supervisor down and open the state directory again)",
                    a.what,
                    a.path.display()
                ),
            );
            *lost = Some(e.clone());
            return Err(e);
        }
    }
    Ok(())
}

/// A write of the current loop turn, applied by [`Store::flush`].
enum Queued {
    Run {
        id: i64,
        service_id: u64,
        generation: u64,
        pid: u32,
        boot_id: String,
        start_ticks: Option<u64>,
        pidfd_ino: Option<u64>,
        started_at: SystemTime,
        ready: bool,
        uid: Option<u32>,
    },
    /// A start that failed before there was a process: a run with pid 0.
    FailedRun {
        id: i64,
        service_id: u64,
        generation: u64,
        boot_id: String,
        at: SystemTime,
    },
    End {
        service_id: u64,
        run_id: i64,
        /// Prune the service's oldest ended runs too.
        prune: bool,
        exit: Exit,
        cause: Cause,
        errno: Option<i32>,
        decision: Option<String>,
        delay: Option<Duration>,
        usage: Option<Usage>,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    Ready {
        run_id: i64,
        at: SystemTime,
    },
    State {
        id: u64,
        status: Status,
        restarts: u64,
        last_exit: Option<Exit>,
    },
    CloseOpenRuns {
        at: SystemTime,
    },
    Tick {
        service_id: u64,
        at: SystemTime,
    },
}

/// A change to the registry: stored by [`commit`](Transaction::commit), durably
/// (`synchronous=FULL`, one fsync however many writes it holds), or not at all.
///
/// Like rusqlite's `Transaction`, which it wraps: dropped without a commit (an early return,
/// an error in the middle of a batch), it rolls back; and it borrows the store mutably, so
/// the borrow checker rules out a nested transaction, or any other use of the store, while
/// it is open.
pub(crate) struct Transaction<'s> {
    tx: rusqlite::Transaction<'s>,
    path: &'s Path,
    anchors: &'s [Anchor],
    lost: &'s mut Option<Error>,
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_ms(v: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(v.max(0) as u64)
}

/// Whether the file starts with SQLite's header string (a symbolic link is not followed).
fn has_sqlite_header(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    sys::open_nofollow(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"SQLite format 3\0")
}

/// `path` for a `file:` URI: every byte but unreserved ones and `/` percent-encoded.
fn uri_escape(path: &Path) -> String {
    let mut out = String::new();
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn store_error(path: &Path, what: &str, e: rusqlite::Error) -> Error {
    // The causes an operator can fix get their own words.
    let why = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ReadOnly) => ": the file or its directory is read-only",
        Some(rusqlite::ErrorCode::DiskFull) => ": the disk is full",
        Some(rusqlite::ErrorCode::CannotOpen) => ": it cannot be opened (permissions?)",
        Some(rusqlite::ErrorCode::PermissionDenied) => ": permission denied",
        _ => "",
    };
    Error::new(
        ErrorKind::Store,
        format!("state file '{}': {what}{why}", path.display()),
    )
    .with_source(e)
}

impl Store {
    /// Opens the state database at `path`, creating it if it does not exist.
    ///
    /// A file that exists but is empty, not a SQLite database, not ours, corrupt, or from a
    /// newer version is refused with a `Store` error and left untouched.
    pub(crate) fn open(path: &Path) -> Result<Store> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() == 0 => {
                return Err(Error::new(
                    ErrorKind::Store,
                    format!(
                        "state file '{}' is empty; refusing to treat it as a new state (remove it to start afresh)",
                        path.display()
                    ),
                ));
            }
            Ok(meta) if meta.is_file() && !has_sqlite_header(path) => {
                // Checked before SQLite opens it: with a stale -wal beside it, SQLite would
                // read the old pages from the log over a foreign file, and later write them.
                return Err(Error::new(
                    ErrorKind::Store,
                    format!("state file '{}' is not a SQLite database", path.display()),
                ));
            }
            Ok(meta) if !meta.is_file() => {
                return Err(Error::new(
                    ErrorKind::Store,
                    format!("state file '{}' is not a regular file", path.display()),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Store::create(path)?,
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Store,
                    format!("cannot read state file '{}'", path.display()),
                )
                .with_source(e));
            }
        }
        let conn = Connection::open_with_flags(path, OPEN_FLAGS)
            .map_err(|e| store_error(path, "cannot open", e))?;
        let mut store = Store::with_connection(conn, path.to_path_buf())?;
        store.checkpointer = Checkpointer::start(&mut store.conn, path);
        let file = sys::open_nofollow(path).map_err(|e| {
            Error::new(
                ErrorKind::Store,
                format!("cannot open state file '{}'", path.display()),
            )
            .with_source(e)
        })?;
        store.anchors.push(Anchor {
            what: "state file",
            path: path.to_path_buf(),
            file,
            registry: true,
        });
        Ok(store)
    }

    /// Opens the state database at `path` to read it only, for a reader while no host runs:
    /// nothing is written, no lock is taken, and a host that opens the directory meanwhile
    /// goes on undisturbed. SQLite's `-wal` and `-shm` are used as they are when both exist;
    /// without a `-wal` (a host shut down cleanly) the file is read as it is, creating
    /// nothing (a `-shm` made by another user, root, would keep the owner's host out). With
    /// a `-wal` but no `-shm`, `may_create` (the reader is the directory's owner) lets SQLite
    /// make one; otherwise the file is read without the `-wal`, as of the last checkpoint.
    ///
    /// # Errors
    ///
    /// `Store` if the file is missing, not ours, or of another schema version.
    pub(crate) fn open_read_only(path: &Path, may_create: bool) -> Result<Store> {
        let companion = |ext: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(ext);
            sys::lstat(Path::new(&p)).is_ok()
        };
        let (wal, shm) = (companion("-wal"), companion("-shm"));
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            .union(OpenFlags::SQLITE_OPEN_NOFOLLOW)
            .union(OpenFlags::SQLITE_OPEN_NO_MUTEX);
        let conn = if wal && (shm || may_create) {
            Connection::open_with_flags(path, flags)
        } else {
            Connection::open_with_flags(
                format!("file:{}?immutable=1", uri_escape(path)),
                flags.union(OpenFlags::SQLITE_OPEN_URI),
            )
        }
        .map_err(|e| store_error(path, "cannot open to read", e))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
            full_sync: false,
            queued: Vec::new(),
            next_run_id: 0,
            runs_kept: RUNS_KEPT as i64,
            ends: HashMap::new(),
            anchors: Vec::new(),
            lost: None,
            checkpointer: None,
        };
        let read = |sql: &str| -> Result<i64> {
            store
                .conn
                .query_row(sql, [], |r| r.get(0))
                .map_err(|e| store.err("cannot read", e))
        };
        if read("PRAGMA application_id")? != i64::from(APPLICATION_ID) {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "state file '{}' is not a sheepdog state file",
                    path.display()
                ),
            ));
        }
        let version = read("PRAGMA user_version")?;
        if version != MIGRATIONS.len() as i64 {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "state file '{}' has schema version {version}, not this sheepdog's {} (a host of this version must open it first)",
                    path.display(),
                    MIGRATIONS.len()
                ),
            ));
        }
        Ok(store)
    }

    /// Holds `file`, found at `path`, to check before each change that it is still there.
    pub(crate) fn anchor(&mut self, what: &'static str, path: PathBuf, file: File) {
        self.anchors.push(Anchor {
            what,
            path,
            file,
            registry: false,
        });
    }

    /// `Err` if changes can no longer be stored: the state file or the lock file is no
    /// longer the one at its path (the state directory was deleted or replaced, the file
    /// truncated or overwritten). Once found, it stays so.
    pub(crate) fn check(&mut self) -> Result<()> {
        check_anchors(&self.anchors, &mut self.lost)
    }

    /// Why changes can no longer be stored, if they cannot.
    pub(crate) fn lost(&self) -> Option<&Error> {
        self.lost.as_ref()
    }

    /// Creates a new database beside `path` and renames it into place, so a crash never
    /// leaves an empty or half-made file under the real name. The file is private (0600,
    /// whatever the umask) before SQLite writes anything into it; SQLite gives its journal,
    /// -wal and -shm the mode of the database file.
    fn create(path: &Path) -> Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let tmp = path.with_extension("db.new");
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Store,
                    format!("cannot create state file '{}'", tmp.display()),
                )
                .with_source(e)
            })?;
        {
            let conn = Connection::open_with_flags(&tmp, OPEN_FLAGS)
                .map_err(|e| store_error(&tmp, "cannot create", e))?;
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(|e| store_error(&tmp, "cannot initialise", e))?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(|e| store_error(&tmp, "cannot initialise", e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::new(
                ErrorKind::Store,
                format!("cannot create state file '{}'", path.display()),
            )
            .with_source(e)
        })?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()
            .map_err(|e| store_error(Path::new(":memory:"), "cannot open", e))?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        Store::with_connection(conn, PathBuf::from(":memory:"))
    }

    fn with_connection(conn: Connection, path: PathBuf) -> Result<Store> {
        let mut store = Store {
            conn,
            path,
            full_sync: true,
            queued: Vec::new(),
            next_run_id: 1,
            runs_kept: RUNS_KEPT as i64,
            ends: HashMap::new(),
            anchors: Vec::new(),
            lost: None,
            checkpointer: None,
        };
        store.check_and_migrate()?;
        // The largest id ever handed out (AUTOINCREMENT keeps it), so ids are never reused.
        let last: i64 = store
            .conn
            .query_row(
                "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'run'), 0),
                            COALESCE((SELECT MAX(id) FROM run), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(|e| store.err("cannot read runs", e))?;
        store.next_run_id = last + 1;
        Ok(store)
    }

    /// Begins a change to the registry. The run records and statuses queued so far are
    /// written first (their own commit), so the order on disk is the order of events.
    ///
    /// # Errors
    ///
    /// `Store`, also when the state file or the lock file is no longer the one at its path.
    pub(crate) fn transaction(&mut self) -> Result<Transaction<'_>> {
        self.check()?;
        self.flush();
        self.set_full_sync(true);
        let Store {
            conn,
            path,
            anchors,
            lost,
            ..
        } = self;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| store_error(path, "cannot begin a transaction", e))?;
        Ok(Transaction {
            tx,
            path,
            anchors,
            lost,
        })
    }

    fn set_full_sync(&mut self, full: bool) {
        if self.full_sync == full {
            return;
        }
        let mode = if full { "FULL" } else { "NORMAL" };
        match self.conn.pragma_update(None, "synchronous", mode) {
            Ok(()) => self.full_sync = full,
            Err(e) => log::warn!(
                "state file '{}': cannot set synchronous={mode}: {e}",
                self.path.display()
            ),
        }
    }

    /// Writes the run records and statuses queued in this loop turn, in one transaction
    /// (`synchronous=NORMAL`: no fsync). A write that fails is logged and the others are
    /// kept; a failure of the whole transaction (a full disk) loses them, never a definition.
    pub(crate) fn flush(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        self.set_full_sync(false);
        let queued = std::mem::take(&mut self.queued);
        let path = &self.path;
        let runs_kept = self.runs_kept;
        let failed = |what: &str, e: rusqlite::Error| {
            log::error!("state file '{}': {what}: {e}", path.display());
        };
        // BEGIN and COMMIT are cached statements like the writes: a crash loop flushes once
        // per restart, and parsing them anew each time is work on the restart path.
        let conn = &self.conn;
        let run = |sql: &str| conn.prepare_cached(sql)?.execute([]).map(drop);
        if let Err(e) = run("BEGIN") {
            return failed("cannot begin a transaction for run records", e);
        }
        for write in &queued {
            if let Err(e) = apply(conn, write, runs_kept) {
                failed(write.what(), e);
                if conn.is_autocommit() {
                    // SQLite rolled the whole transaction back (a full disk, an I/O error).
                    return;
                }
            }
        }
        if let Err(e) = run("COMMIT") {
            failed("cannot store run records", e);
            if !conn.is_autocommit() {
                // As a dropped rusqlite transaction would: nothing half-written is kept open.
                if let Err(e) = run("ROLLBACK") {
                    failed("cannot roll back run records", e);
                }
            }
        }
        // The allocation is kept for the next turn, unless a big one (a fleet's start) made it
        // large.
        if queued.capacity() <= QUEUE_KEPT {
            self.queued = queued;
            self.queued.clear();
        }
    }

    fn err(&self, what: &str, e: rusqlite::Error) -> Error {
        store_error(&self.path, what, e)
    }

    fn check_and_migrate(&self) -> Result<()> {
        let c = &self.conn;
        c.busy_timeout(Duration::from_secs(5))
            .map_err(|e| self.err("cannot configure", e))?;
        let app: i32 = c
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::NotADatabase) => Error::new(
                    ErrorKind::Store,
                    format!(
                        "state file '{}' is not a SQLite database",
                        self.path.display()
                    ),
                )
                .with_source(e),
                _ => self.err("cannot read", e),
            })?;
        if app != APPLICATION_ID {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "state file '{}' is not a sheepdog state file (application id {app:#x})",
                    self.path.display()
                ),
            ));
        }
        let version: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err("cannot read", e))?;
        if version > MIGRATIONS.len() as i64 {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "state file '{}' has schema version {version}, newer than this sheepdog's {}",
                    self.path.display(),
                    MIGRATIONS.len()
                ),
            ));
        }
        let check: String = c
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| self.err("cannot check integrity", e))?;
        if check != "ok" {
            return Err(Error::new(
                ErrorKind::Store,
                format!("state file '{}' is corrupt: {check}", self.path.display()),
            ));
        }
        if self.path != Path::new(":memory:") {
            let mode: String = c
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(|e| self.err("cannot enable WAL", e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                log::warn!(
                    "state file '{}': journal mode is {mode}, not wal",
                    self.path.display()
                );
            }
        }
        c.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err("cannot configure", e))?;
        // A negative size is in KiB. The pages the engine reads again are a few per turn; the
        // rest are in the OS's page cache anyway.
        c.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
            .map_err(|e| self.err("cannot configure", e))?;
        c.pragma_update(None, "foreign_keys", true)
            .map_err(|e| self.err("cannot configure", e))?;
        // The plan of a cached statement stays as prepared: without this, binding a new
        // value to a parameter the planner looked at (the bundled SQLite has STAT4) expires
        // the statement, and its next step parses it again.
        c.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(|e| self.err("cannot configure", e))?;
        let tx = c
            .unchecked_transaction()
            .map_err(|e| self.err("cannot migrate", e))?;
        for sql in &MIGRATIONS[version as usize..] {
            tx.execute_batch(sql)
                .map_err(|e| self.err("cannot migrate", e))?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(|e| self.err("cannot migrate", e))?;
        tx.commit().map_err(|e| self.err("cannot migrate", e))?;
        Ok(())
    }

    pub(crate) fn load_services(&self) -> Result<Vec<StoredService>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, spec, desired_up, status, restarts, exit_code, exit_signal, exit_at_ms, exit_uptime_ms,
                 exit_reason, instance FROM service ORDER BY id",
            )
            .map_err(|e| self.err("cannot read services", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i32>>(6)?,
                    r.get::<_, Option<i32>>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, Option<i64>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                    r.get::<_, Option<i64>>(11)?,
                ))
            })
            .map_err(|e| self.err("cannot read services", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                name,
                spec,
                desired_up,
                status,
                restarts,
                code,
                signal,
                at,
                uptime,
                reason,
                instance,
            ) = row.map_err(|e| self.err("cannot read services", e))?;
            let spec: ServiceSpec = serde_json::from_str(&spec).map_err(|e| {
                Error::new(
                    ErrorKind::Store,
                    format!(
                        "state file '{}': the stored spec is unreadable",
                        self.path.display()
                    ),
                )
                .with_service(&name)
                .with_source(e)
            })?;
            let status = Status::from_str(&status).ok_or_else(|| {
                Error::new(
                    ErrorKind::Store,
                    format!(
                        "state file '{}': unknown stored status '{status}'",
                        self.path.display()
                    ),
                )
                .with_service(&name)
            })?;
            let last_exit = at.map(|at| Exit {
                code,
                signal,
                at: from_ms(at),
                uptime: Duration::from_millis(uptime.unwrap_or(0).max(0) as u64),
                reason: reason.clone(),
            });
            let instance = match instance.map(u32::try_from) {
                None => None,
                Some(Ok(k)) if spec.get_instances().is_some() => Some(k),
                Some(_) => {
                    return Err(Error::new(
                        ErrorKind::Store,
                        format!(
                            "state file '{}': the stored instance does not fit the stored spec",
                            self.path.display()
                        ),
                    )
                    .with_service(&name));
                }
            };
            out.push(StoredService {
                id: id as u64,
                instance,
                spec,
                desired_up,
                status,
                restarts: restarts.max(0) as u64,
                last_exit,
            });
        }
        Ok(out)
    }

    /// How many ended runs to keep per service.
    pub(crate) fn set_runs_kept(&mut self, n: usize) {
        self.runs_kept = n.min(i64::MAX as usize) as i64;
    }

    /// Queues the record of a run's start, with the identity that tells its process apart
    /// from any later process with the same pid; returns the run's id.
    pub(crate) fn insert_run(&mut self, run: &NewRun<'_>) -> i64 {
        let id = self.next_run_id;
        self.next_run_id += 1;
        self.queued.push(Queued::Run {
            id,
            service_id: run.service_id,
            generation: run.generation,
            pid: run.pid,
            boot_id: run.boot_id.to_string(),
            start_ticks: run.start_ticks,
            pidfd_ino: run.pidfd_ino,
            started_at: run.started_at,
            ready: run.ready,
            uid: run.uid,
        });
        id
    }

    /// Queues the record of a start that failed before there was a process: a run with pid 0
    /// that ended when it began.
    pub(crate) fn insert_failed_run(
        &mut self,
        service_id: u64,
        generation: u64,
        boot_id: &str,
        ending: &RunEnding<'_>,
    ) {
        let id = self.next_run_id;
        self.next_run_id += 1;
        self.queued.push(Queued::FailedRun {
            id,
            service_id,
            generation,
            boot_id: boot_id.to_string(),
            at: ending.exit.at,
        });
        self.end_run(service_id, id, ending);
    }

    /// Queues the record of a run's end. With the first end of a service after `open` and
    /// every [`PRUNE_EVERY`]th after it, the service's oldest ended runs are pruned (through
    /// the `(service_id, id)` index: at most that many rows each time, so pruning never
    /// stalls the supervision thread); the file may hold up to `PRUNE_EVERY - 1` more ended
    /// runs than are kept, which [`runs`](Store::runs) never shows.
    pub(crate) fn end_run(&mut self, service_id: u64, run_id: i64, end: &RunEnding<'_>) {
        let ends = self.ends.entry(service_id).or_insert(0);
        let prune = ends.is_multiple_of(PRUNE_EVERY);
        *ends = ends.wrapping_add(1);
        self.queued.push(Queued::End {
            service_id,
            run_id,
            prune,
            exit: end.exit.clone(),
            cause: end.cause,
            errno: end.errno,
            decision: end.decision.map(str::to_string),
            delay: end.delay,
            usage: end.usage,
            stdout: end.stdout.to_vec(),
            stderr: end.stderr.to_vec(),
        });
    }

    /// Queues when a run became ready.
    pub(crate) fn set_ready(&mut self, run_id: i64, at: SystemTime) {
        self.queued.push(Queued::Ready { run_id, at });
    }

    /// Queues a service's status, restart count and last exit.
    pub(crate) fn set_state(
        &mut self,
        id: u64,
        status: Status,
        restarts: u64,
        last_exit: Option<&Exit>,
    ) {
        self.queued.push(Queued::State {
            id,
            status,
            restarts,
            last_exit: last_exit.cloned(),
        });
    }

    /// Queues marking every open run as ended now, without an exit status (the host died).
    pub(crate) fn close_open_runs(&mut self) {
        self.queued.push(Queued::CloseOpenRuns {
            at: SystemTime::now(),
        });
    }

    /// The newest `limit` runs of a service, newest first.
    pub(crate) fn runs(
        &mut self,
        service_id: u64,
        limit: usize,
    ) -> Result<Vec<crate::history::Run>> {
        self.flush();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, generation, pid, started_at_ms, ended_at_ms, exit_code, exit_signal,
                        reason, ready_at_ms, cause, errno, decision, delay_ms, max_rss, user_us,
                        system_us, stdout_tail, stderr_tail
                 FROM run WHERE service_id = ?1 AND (ended_at_ms IS NULL OR id >
                     COALESCE((SELECT id FROM run WHERE service_id = ?1 AND ended_at_ms IS NOT NULL
                               ORDER BY id DESC LIMIT 1 OFFSET ?3), -1))
                 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.err("cannot read runs", e))?;
        let text =
            |v: Option<Vec<u8>>| String::from_utf8_lossy(&v.unwrap_or_default()).into_owned();
        let rows = stmt
            .query_map(
                params![service_id as i64, limit as i64, self.runs_kept],
                |r| {
                    let micros = |i: usize| -> rusqlite::Result<Option<Duration>> {
                        Ok(r.get::<_, Option<i64>>(i)?
                            .map(|v| Duration::from_micros(v.max(0) as u64)))
                    };
                    let usage = match (micros(14)?, micros(15)?) {
                        (Some(user), Some(system)) => Some(Usage {
                            peak_memory: r.get::<_, Option<i64>>(13)?.map(|b| b.max(0) as u64),
                            user,
                            system,
                        }),
                        _ => None,
                    };
                    Ok(crate::history::Run {
                        id: r.get(0)?,
                        generation: r.get::<_, i64>(1)? as u64,
                        pid: r.get(2)?,
                        started_at: from_ms(r.get(3)?),
                        ended_at: r.get::<_, Option<i64>>(4)?.map(from_ms),
                        code: r.get(5)?,
                        signal: r.get(6)?,
                        reason: r.get(7)?,
                        ready_at: r.get::<_, Option<i64>>(8)?.map(from_ms),
                        cause: r
                            .get::<_, Option<String>>(9)?
                            .and_then(|c| c.parse::<Cause>().ok()),
                        errno: r.get(10)?,
                        decision: r.get(11)?,
                        restart_delay: r
                            .get::<_, Option<i64>>(12)?
                            .map(|v| Duration::from_millis(v.max(0) as u64)),
                        usage,
                        last_stdout: text(r.get(16)?),
                        last_stderr: text(r.get(17)?),
                    })
                },
            )
            .map_err(|e| self.err("cannot read runs", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err("cannot read runs", e))
    }

    /// Runs with no recorded end: candidates for leftovers of a host that died.
    pub(crate) fn open_runs(&mut self) -> Result<Vec<OpenRun>> {
        self.flush();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT service_id, pid, boot_id, start_ticks, pidfd_ino, uid FROM run
                 WHERE ended_at_ms IS NULL AND pid != 0",
            )
            .map_err(|e| self.err("cannot read runs", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(OpenRun {
                    service_id: r.get::<_, i64>(0)? as u64,
                    pid: r.get(1)?,
                    boot_id: r.get(2)?,
                    start_ticks: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                    pidfd_ino: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                    uid: r.get::<_, Option<i64>>(5)?.map(|u| u as u32),
                })
            })
            .map_err(|e| self.err("cannot read runs", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err("cannot read runs", e))
    }

    /// Records a new session and returns its id; keeps the newest [`SESSIONS_KEPT`]. Committed
    /// at once (before any run can carry a marker of it), with `synchronous=NORMAL`: it must
    /// outlive a crash of the host, and a power loss ends every process it could vouch for.
    pub(crate) fn insert_session(
        &mut self,
        boot_id: &str,
        started_ticks: u64,
        key: &[u8],
        cgroup: bool,
    ) -> Result<i64> {
        self.check()?;
        self.flush();
        self.set_full_sync(false);
        let path = &self.path;
        let write = |tx: &rusqlite::Transaction<'_>| {
            tx.execute(
                "INSERT INTO session (boot_id, started_ticks, key, cgroup) VALUES (?1, ?2, ?3, ?4)",
                params![boot_id, started_ticks as i64, key, cgroup],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "DELETE FROM session WHERE id <= ?1",
                params![id - SESSIONS_KEPT],
            )?;
            Ok(id)
        };
        let tx = self
            .conn
            .transaction()
            .map_err(|e| store_error(path, "cannot record the session", e))?;
        let id = write(&tx).map_err(|e| store_error(path, "cannot record the session", e))?;
        tx.commit()
            .map_err(|e| store_error(path, "cannot record the session", e))?;
        Ok(id)
    }

    /// Queues the last tick a schedule handled (or when it was armed).
    pub(crate) fn set_tick(&mut self, service_id: u64, at: SystemTime) {
        self.queued.push(Queued::Tick { service_id, at });
    }

    /// The last tick of every schedule, by service id.
    pub(crate) fn load_ticks(&self) -> Result<std::collections::HashMap<u64, SystemTime>> {
        let mut stmt = self
            .conn
            .prepare("SELECT service_id, at_ms FROM tick")
            .map_err(|e| self.err("cannot read the schedules' ticks", e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, from_ms(r.get(1)?))))
            .map_err(|e| self.err("cannot read the schedules' ticks", e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err("cannot read the schedules' ticks", e))
    }

    /// The stored sessions, newest first.
    pub(crate) fn sessions(&self) -> Result<Vec<StoredSession>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, boot_id, started_ticks, key, cgroup FROM session ORDER BY id DESC")
            .map_err(|e| self.err("cannot read sessions", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredSession {
                    id: r.get(0)?,
                    boot_id: r.get(1)?,
                    started_ticks: r.get::<_, i64>(2)? as u64,
                    key: r.get(3)?,
                    cgroup: r.get(4)?,
                })
            })
            .map_err(|e| self.err("cannot read sessions", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err("cannot read sessions", e))
    }

    /// The number of runs recorded for a service (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn run_count(&mut self, service_id: u64) -> u64 {
        self.flush();
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM run WHERE service_id = ?1",
                params![service_id as i64],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0) as u64
    }
}

impl Transaction<'_> {
    fn err(&self, what: &str, e: rusqlite::Error) -> Error {
        store_error(self.path, what, e)
    }

    /// Adds a service (instance `instance` of `spec`, if the spec has instances) and returns
    /// its id; ids are never reused, even after a delete.
    pub(crate) fn insert_service(
        &mut self,
        spec: &ServiceSpec,
        instance: Option<u32>,
        desired_up: bool,
        status: Status,
    ) -> Result<u64> {
        let json = serde_json::to_string(spec).expect("a ServiceSpec always serializes");
        let name = spec.instance_name(instance);
        self.tx
            .execute(
                "INSERT INTO service (name, spec, desired_up, status, created_at_ms, instance) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![name, json, desired_up, status.as_str(), ms(SystemTime::now()), instance],
            )
            .map_err(|e| self.err("cannot save the service", e).with_service(name))?;
        Ok(self.tx.last_insert_rowid() as u64)
    }

    pub(crate) fn update_spec(&mut self, id: u64, spec: &ServiceSpec) -> Result<()> {
        let json = serde_json::to_string(spec).expect("a ServiceSpec always serializes");
        self.tx
            .execute(
                "UPDATE service SET spec = ?2 WHERE id = ?1",
                params![id as i64, json],
            )
            .map_err(|e| {
                self.err("cannot save the spec", e)
                    .with_service(spec.name())
            })?;
        Ok(())
    }

    pub(crate) fn set_desired(&mut self, id: u64, up: bool) -> Result<()> {
        // Cached: a stop of 1000 services runs it 1000 times in one transaction.
        self.tx
            .prepare_cached("UPDATE service SET desired_up = ?2 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute(params![id as i64, up]))
            .map_err(|e| self.err("cannot save the desired state", e))?;
        Ok(())
    }

    /// Removes a service and its run records.
    pub(crate) fn delete_service(&mut self, id: u64) -> Result<()> {
        self.tx
            .execute("DELETE FROM service WHERE id = ?1", params![id as i64])
            .map_err(|e| self.err("cannot delete the service", e))?;
        Ok(())
    }

    /// Stores the change: on disk when this returns. On failure nothing of it is stored:
    /// also when, just before, the state file or the lock file is found no longer to be the
    /// one at its path (the change would be acknowledged, then lost with the file).
    pub(crate) fn commit(self) -> Result<()> {
        check_anchors(self.anchors, self.lost)?;
        let path = self.path;
        self.tx
            .commit()
            .map_err(|e| store_error(path, "cannot commit", e))
    }
}

impl Queued {
    /// What a failure to write this loses, for the log.
    fn what(&self) -> &'static str {
        match self {
            Queued::Run { .. } => "cannot record the run",
            Queued::FailedRun { .. } => "cannot record the failed start",
            Queued::End { .. } => "cannot record the exit",
            Queued::Ready { .. } => "cannot record the run's readiness",
            Queued::State { .. } => "cannot save the status",
            Queued::CloseOpenRuns { .. } => "cannot close runs",
            Queued::Tick { .. } => "cannot record the schedule's last tick",
        }
    }
}

/// Writes one queued record inside the turn's transaction.
fn apply(tx: &Connection, write: &Queued, runs_kept: i64) -> rusqlite::Result<()> {
    match write {
        Queued::Run {
            id,
            service_id,
            generation,
            pid,
            boot_id,
            start_ticks,
            pidfd_ino,
            started_at,
            ready,
            uid,
        } => {
            let started = ms(*started_at);
            tx.prepare_cached(
                "INSERT INTO run (id, service_id, generation, pid, boot_id, start_ticks,
                                  started_at_ms, ready_at_ms, pidfd_ino, uid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                id,
                *service_id as i64,
                *generation as i64,
                pid,
                boot_id,
                start_ticks.map(|t| t as i64),
                started,
                ready.then_some(started),
                pidfd_ino.map(|i| i as i64),
                uid.map(i64::from),
            ])?;
        }
        Queued::FailedRun {
            id,
            service_id,
            generation,
            boot_id,
            at,
        } => {
            tx.prepare_cached(
                "INSERT INTO run (id, service_id, generation, pid, boot_id, started_at_ms,
                                  ended_at_ms)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, ?5)",
            )?
            .execute(params![
                id,
                *service_id as i64,
                *generation as i64,
                boot_id,
                ms(*at)
            ])?;
        }
        Queued::End {
            service_id,
            run_id,
            prune,
            exit,
            cause,
            errno,
            decision,
            delay,
            usage,
            stdout,
            stderr,
        } => {
            let micros = |d: Duration| d.as_micros().min(i64::MAX as u128) as i64;
            fn tail(t: &[u8]) -> Option<&[u8]> {
                (!t.is_empty()).then_some(t)
            }
            tx.prepare_cached(
                "UPDATE run SET ended_at_ms = ?2, exit_code = ?3, exit_signal = ?4, reason = ?5,
                    cause = ?6, errno = ?7, decision = ?8, delay_ms = ?9, max_rss = ?10,
                    user_us = ?11, system_us = ?12, stdout_tail = ?13, stderr_tail = ?14
                 WHERE id = ?1",
            )?
            .execute(params![
                run_id,
                ms(exit.at),
                exit.code,
                exit.signal,
                exit.reason.as_deref(),
                cause.to_string(),
                errno,
                decision.as_deref(),
                delay.map(|d| d.as_millis().min(i64::MAX as u128) as i64),
                usage
                    .and_then(|u| u.peak_memory)
                    .map(|b| b.min(i64::MAX as u64) as i64),
                usage.map(|u| micros(u.user)),
                usage.map(|u| micros(u.system)),
                tail(stdout),
                tail(stderr),
            ])?;
            if *prune {
                tx.prepare_cached(
                    "DELETE FROM run WHERE service_id = ?1 AND ended_at_ms IS NOT NULL AND id <=
                     (SELECT id FROM run WHERE service_id = ?1 AND ended_at_ms IS NOT NULL
                      ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                )?
                .execute(params![*service_id as i64, runs_kept])?;
            }
        }
        Queued::Ready { run_id, at } => {
            tx.prepare_cached("UPDATE run SET ready_at_ms = ?2 WHERE id = ?1")?
                .execute(params![run_id, ms(*at)])?;
        }
        Queued::State {
            id,
            status,
            restarts,
            last_exit,
        } => {
            let last_exit = last_exit.as_ref();
            tx.prepare_cached(
                "UPDATE service SET status = ?2, restarts = ?3, exit_code = ?4, exit_signal = ?5,
                 exit_at_ms = ?6, exit_uptime_ms = ?7, exit_reason = ?8 WHERE id = ?1",
            )?
            .execute(params![
                *id as i64,
                status.as_str(),
                *restarts as i64,
                last_exit.and_then(|e| e.code),
                last_exit.and_then(|e| e.signal),
                last_exit.map(|e| ms(e.at)),
                last_exit.map(|e| e.uptime.as_millis() as i64),
                last_exit.and_then(|e| e.reason.as_deref()),
            ])?;
        }
        Queued::Tick { service_id, at } => {
            // A service deleted in the same turn has no row left to refer to.
            tx.prepare_cached(
                "INSERT OR REPLACE INTO tick (service_id, at_ms)
                 SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM service WHERE id = ?1)",
            )?
            .execute(params![*service_id as i64, ms(*at)])?;
        }
        Queued::CloseOpenRuns { at } => {
            tx.execute(
                "UPDATE run SET ended_at_ms = ?1, cause = 'host died' WHERE ended_at_ms IS NULL",
                params![ms(*at)],
            )?;
        }
    }
    Ok(())
}

impl Drop for Store {
    fn drop(&mut self) {
        self.flush();
        if let Some(mut checkpointer) = self.checkpointer.take() {
            checkpointer.stop(&mut self.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds a service in a transaction of its own.
    fn add(s: &mut Store, spec: &ServiceSpec, up: bool, status: Status) -> Result<u64> {
        let mut tx = s.transaction()?;
        let id = tx.insert_service(spec, None, up, status)?;
        tx.commit()?;
        Ok(id)
    }

    #[test]
    fn services_round_trip_and_ids_are_never_reused() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (a, b);
        {
            let mut s = Store::open(&path)?;
            a = add(&mut s, &ServiceSpec::new("a", "true"), true, Status::Online)?;
            b = add(
                &mut s,
                &ServiceSpec::new("b", "true").arg("x"),
                false,
                Status::Stopped,
            )?;
            let exit = Exit {
                code: Some(3),
                signal: None,
                at: from_ms(1_700_000_000_000),
                uptime: Duration::from_millis(1500),
                reason: Some("unhealthy: test".into()),
            };
            s.set_state(a, Status::Backoff, 7, Some(&exit));
            let mut tx = s.transaction()?;
            tx.delete_service(b)?;
            tx.commit()?;
        }
        let mut s = Store::open(&path)?;
        let all = s.load_services()?;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, a);
        assert_eq!(all[0].status, Status::Backoff);
        assert_eq!(all[0].restarts, 7);
        assert_eq!(all[0].last_exit.as_ref().unwrap().code(), Some(3));
        assert_eq!(
            all[0].last_exit.as_ref().unwrap().reason(),
            Some("unhealthy: test")
        );
        assert_eq!(
            all[0].last_exit.as_ref().unwrap().uptime(),
            Duration::from_millis(1500)
        );
        let c = add(
            &mut s,
            &ServiceSpec::new("c", "true"),
            true,
            Status::Starting,
        )?;
        assert!(c > b, "id {c} reused (b was {b})");
        Ok(())
    }

    #[test]
    fn sessions_survive_a_reopen_and_only_the_newest_are_kept() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let mut s = Store::open(&path)?;
            for i in 0..SESSIONS_KEPT + 3 {
                s.insert_session("boot", 100 + i as u64, &[i as u8; 16], i % 2 == 0)?;
            }
        }
        let s = Store::open(&path)?;
        let kept = s.sessions()?;
        assert_eq!(kept.len(), SESSIONS_KEPT as usize);
        let newest = &kept[0];
        assert_eq!(newest.started_ticks, 100 + SESSIONS_KEPT as u64 + 2);
        assert_eq!(newest.key, vec![(SESSIONS_KEPT + 2) as u8; 16]);
        assert_eq!(newest.boot_id, "boot");
        assert!(newest.cgroup);
        Ok(())
    }

    #[test]
    fn a_transaction_dropped_without_commit_stores_nothing() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let mut s = Store::open(&path)?;
            let a = add(&mut s, &ServiceSpec::new("a", "true"), true, Status::Online)?;
            let mut tx = s.transaction()?;
            tx.insert_service(&ServiceSpec::new("b", "true"), None, true, Status::Online)?;
            tx.set_desired(a, false)?;
            // A failure in the middle of a batch: the name is taken.
            let err = tx
                .insert_service(&ServiceSpec::new("a", "true"), None, true, Status::Online)
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Store);
            drop(tx);
            // The store is usable again at once, and holds only what was committed.
            let names: Vec<String> = s
                .load_services()?
                .iter()
                .map(|s| s.spec.name().to_string())
                .collect();
            assert_eq!(names, ["a"]);
        }
        let s = Store::open(&path)?;
        let all = s.load_services()?;
        assert_eq!(all.len(), 1, "after a reopen too");
        assert!(all[0].desired_up);
        Ok(())
    }

    #[test]
    fn run_records_are_written_at_flush_with_the_ids_handed_out_at_start() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (id, first, second);
        {
            let mut s = Store::open(&path)?;
            id = add(&mut s, &ServiceSpec::new("a", "true"), true, Status::Online)?;
            first = s.insert_run(&new_run(id, 1));
            second = s.insert_run(&new_run(id, 2));
            assert_eq!(second, first + 1);
            let exit = crashed();
            s.end_run(
                id,
                first,
                &RunEnding {
                    stdout: b"out",
                    stderr: b"err",
                    ..ending(&exit)
                },
            );
            s.flush();
        }
        let mut s = Store::open(&path)?;
        let runs = s.runs(id, 10)?;
        assert_eq!(
            runs.iter().map(|r| r.id).collect::<Vec<_>>(),
            [second, first]
        );
        assert_eq!(runs[1].last_stdout, "out");
        assert_eq!(runs[1].code, Some(1));
        assert!(runs[0].ended_at.is_none());
        // Ids go on from the largest ever handed out.
        assert_eq!(s.insert_run(&new_run(id, 3)), second + 1);
        Ok(())
    }

    #[test]
    fn every_flush_commits_and_leaves_no_transaction_open() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut s = Store::open(&path)?;
        let id = add(&mut s, &ServiceSpec::new("a", "true"), true, Status::Online)?;
        let exit = crashed();
        // A crash loop's turns: each ends the last run and starts the next, with the same
        // cached BEGIN and COMMIT every time.
        let mut last = None;
        for g in 1..=3 {
            if let Some(run) = last {
                s.end_run(id, run, &ending(&exit));
            }
            last = Some(s.insert_run(&new_run(id, g)));
            s.set_state(id, Status::Online, g, Some(&exit));
            s.flush();
            assert!(s.conn.is_autocommit(), "turn {g} left its transaction open");
            // Another connection sees the turn's writes while this one stays open.
            let mut reader = Store::open_read_only(&path, false)?;
            let runs = reader.runs(id, 10)?;
            assert_eq!(runs.len() as u64, g);
            assert!(runs[0].ended_at.is_none());
            assert!(runs[1..].iter().all(|r| r.ended_at.is_some()));
        }
        Ok(())
    }

    #[test]
    fn the_wal_is_checkpointed_off_the_committing_thread_and_reused() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let wal = dir.path().join("s.db-wal");
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut s = Store::open(&path)?;
        let page: i64 = s
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let page = page as u64;
        let frames = || size(&wal) / (page + 24);
        let id = add(&mut s, &ServiceSpec::new("a", "true"), true, Status::Online)?;
        let exit = crashed();
        // A crash loop's turns, each a commit of a few pages, until the WAL is past the
        // threshold.
        let tail = vec![b'x'; 3000];
        let mut g = 0;
        let mut turn = |s: &mut Store| {
            g += 1;
            let run = s.insert_run(&new_run(id, g));
            s.end_run(
                id,
                run,
                &RunEnding {
                    stdout: &tail,
                    ..ending(&exit)
                },
            );
            s.flush();
        };
        let db_before = size(&path);
        while frames() <= CHECKPOINT_PAGES as u64 {
            turn(&mut s);
        }
        // Copied into the database by the checkpointer's thread.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let by_thread = |s: &Store| {
            s.checkpointer
                .as_ref()
                .unwrap()
                .done
                .load(Ordering::Relaxed)
        };
        while by_thread(&s) == 0 || size(&path) == db_before {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Once it is done (a checkpoint of ours then finds it not busy and nothing left),
        // the next commits write the WAL again from its start (about five frames a turn,
        // the WAL holds over a thousand): the thread holds no read that would prevent it.
        loop {
            let (busy, log, done): (i64, i64, i64) = s
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            if busy == 0 && log == done {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the checkpoint did not end within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let wal_size = size(&wal);
        for _ in 0..100 {
            turn(&mut s);
        }
        assert_eq!(size(&wal), wal_size, "the WAL grew instead of being reused");
        // Commits without a pause, faster than the checkpoints' syncs: past
        // CHECKPOINT_PAGES_MAX a commit checkpoints itself, and the WAL stays bounded.
        for _ in 0..2000 {
            turn(&mut s);
        }
        assert!(
            frames() < 2 * CHECKPOINT_PAGES_MAX as u64,
            "the WAL grew to {} frames",
            frames()
        );
        // The checkpointer's connection closes first: the store's own close then checkpoints
        // the rest and removes the WAL.
        drop(s);
        assert!(!wal.exists(), "the WAL is left after the store closed");
        let mut s = Store::open(&path)?;
        assert_eq!(
            s.runs(id, 1000)?.len(),
            RUNS_KEPT,
            "every run kept is there"
        );
        Ok(())
    }

    #[test]
    fn runs_are_pruned_to_the_last_hundred() -> Result<()> {
        let mut s = Store::open_in_memory()?;
        let id = add(&mut s, &ServiceSpec::new("a", "true"), true, Status::Online)?;
        let other = add(&mut s, &ServiceSpec::new("b", "true"), true, Status::Online)?;
        // An open run of another service is never pruned, whatever its age.
        s.insert_run(&new_run(other, 0));
        let add_run = |s: &mut Store, g: u64| {
            let run = s.insert_run(&new_run(id, g));
            let exit = crashed();
            s.end_run(id, run, &ending(&exit));
        };
        for g in 0..300 {
            add_run(&mut s, g);
        }
        // Pruned with the first end and every PRUNE_EVERYth after it: at most that many
        // more in the file, never in what is read.
        let stored = s.run_count(id);
        assert!(
            (RUNS_KEPT as u64..RUNS_KEPT as u64 + u64::from(PRUNE_EVERY)).contains(&stored),
            "{stored} runs stored"
        );
        let runs = s.runs(id, 1000)?;
        assert_eq!(runs.len(), RUNS_KEPT, "the last ones are read");
        assert_eq!(runs.first().map(|r| r.generation()), Some(299));
        assert_eq!(runs.last().map(|r| r.generation()), Some(200));
        s.set_runs_kept(0);
        add_run(&mut s, 300);
        assert!(s.runs(id, 1000)?.is_empty(), "none kept, none read");
        while s.run_count(id) > 0 {
            add_run(&mut s, 301);
            assert!(s.runs(id, 1000)?.is_empty(), "none kept, none read");
        }
        assert_eq!(s.run_count(other), 1);
        assert_eq!(s.open_runs()?.len(), 1);
        Ok(())
    }

    fn new_run(service_id: u64, generation: u64) -> NewRun<'static> {
        NewRun {
            service_id,
            generation,
            pid: 100 + generation as u32,
            boot_id: "boot",
            start_ticks: Some(1),
            pidfd_ino: Some(7),
            started_at: SystemTime::now(),
            ready: true,
            uid: None,
        }
    }

    /// An exit with code 1, now.
    fn crashed() -> Exit {
        Exit {
            code: Some(1),
            signal: None,
            at: SystemTime::now(),
            uptime: Duration::ZERO,
            reason: None,
        }
    }

    fn ending(exit: &Exit) -> RunEnding<'_> {
        RunEnding {
            exit,
            cause: Cause::Crashed,
            errno: None,
            decision: Some("restart in 0s"),
            delay: Some(Duration::ZERO),
            usage: None,
            stdout: b"",
            stderr: b"",
        }
    }

    #[test]
    fn refuses_empty_foreign_garbage_and_newer_files_without_touching_them() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let err = Store::open(&empty).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Store);
        assert!(err.to_string().contains("is empty"), "{err}");
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x5au8; 8192]).unwrap();
        let err = Store::open(&garbage).err().unwrap();
        assert!(err.to_string().contains("not a SQLite database"), "{err}");
        assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x5au8; 8192]);

        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let before = std::fs::read(&foreign).unwrap();
        let err = Store::open(&foreign).err().unwrap();
        assert!(
            err.to_string().contains("not a sheepdog state file"),
            "{err}"
        );
        assert_eq!(std::fs::read(&foreign).unwrap(), before);

        let newer = dir.path().join("newer.db");
        drop(Store::open(&newer).unwrap());
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(&newer).err().unwrap();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
