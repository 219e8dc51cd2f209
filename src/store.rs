//! `Store`: the durable registry in SQLite. All SQL of the crate lives here.
//!
//! One connection, owned by the supervision thread. WAL with `synchronous=FULL`: a change is
//! on disk when the call returns, so an acknowledged change survives a SIGKILL of the host
//! (and, if the device honours fsync, a power loss).

use crate::error::{Error, ErrorKind, Result};
use crate::history::{Cause, Usage};
use crate::info::{Exit, Status};
use crate::spec::ServiceSpec;
use rusqlite::{params, Connection, OpenFlags};
use std::cell::Cell;
use std::path::{Path, PathBuf};
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
];

/// Sessions kept: a dead host's leftovers are verified with its session's key, and the next
/// `open` reclaims them, so only the newest few can still matter.
const SESSIONS_KEPT: i64 = 8;

/// Ended runs kept per service by default; older ones are pruned.
pub(crate) const RUNS_KEPT: usize = 100;

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
}

/// How a run ended and what followed.
pub(crate) struct RunEnding<'a> {
    pub(crate) exit: &'a Exit,
    pub(crate) cause: Cause,
    pub(crate) errno: Option<i32>,
    pub(crate) decision: Option<&'a str>,
    pub(crate) delay: Option<Duration>,
    pub(crate) usage: Option<Usage>,
}

/// A service as stored.
#[derive(Debug)]
pub(crate) struct StoredService {
    pub(crate) id: u64,
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
    pub(crate) boot_id: String,
    pub(crate) start_ticks: Option<u64>,
    pub(crate) pidfd_ino: Option<u64>,
}

/// The registry. Definitions (a service added, changed, deleted, its desired state) are
/// committed with `synchronous=FULL`: on disk before the call returns. Run records and
/// statuses use `synchronous=NORMAL`, which in WAL mode survives a crash of the host (only a
/// power loss may roll back the newest of them) and keeps fsync off the restart path.
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
    full_sync: Cell<bool>,
    /// Inside `begin` … `commit`: every write joins one transaction, committed durably.
    in_batch: Cell<bool>,
    /// Run records and statuses written since the last `flush`, in one open transaction.
    in_fast_batch: Cell<bool>,
    /// Ended runs kept per service.
    runs_kept: Cell<i64>,
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_ms(v: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(v.max(0) as u64)
}

/// Whether the file starts with SQLite's header string.
fn has_sqlite_header(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"SQLite format 3\0")
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
                .with_source(e))
            }
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| store_error(path, "cannot open", e))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
            full_sync: Cell::new(true),
            in_batch: Cell::new(false),
            in_fast_batch: Cell::new(false),
            runs_kept: Cell::new(RUNS_KEPT as i64),
        };
        store.check_and_migrate()?;
        Ok(store)
    }

    /// Creates a new database beside `path` and renames it into place, so a crash never
    /// leaves an empty or half-made file under the real name.
    fn create(path: &Path) -> Result<()> {
        let tmp = path.with_extension("db.new");
        let _ = std::fs::remove_file(&tmp);
        {
            let conn = Connection::open(&tmp).map_err(|e| store_error(&tmp, "cannot create", e))?;
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
        let store = Store {
            conn,
            path: PathBuf::from(":memory:"),
            full_sync: Cell::new(true),
            in_batch: Cell::new(false),
            in_fast_batch: Cell::new(false),
            runs_kept: Cell::new(RUNS_KEPT as i64),
        };
        store.check_and_migrate()?;
        Ok(store)
    }

    /// Starts a batch: the writes until [`commit`](Store::commit) form one transaction,
    /// committed with `synchronous=FULL` (one fsync for all of them).
    pub(crate) fn begin(&self) -> Result<()> {
        self.flush();
        self.sync_mode(true);
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err("cannot begin a transaction", e))?;
        self.in_batch.set(true);
        Ok(())
    }

    /// Commits the batch; on failure it is rolled back and nothing of it is stored.
    pub(crate) fn commit(&self) -> Result<()> {
        self.in_batch.set(false);
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(self.err("cannot commit", e));
        }
        Ok(())
    }

    fn sync_mode(&self, full: bool) -> &Connection {
        if !self.in_batch.get() && self.full_sync.get() != full {
            let mode = if full { "FULL" } else { "NORMAL" };
            match self.conn.pragma_update(None, "synchronous", mode) {
                Ok(()) => self.full_sync.set(full),
                Err(e) => log::warn!(
                    "state file '{}': cannot set synchronous={mode}: {e}",
                    self.path.display()
                ),
            }
        }
        &self.conn
    }

    /// The connection for a definition change: durable when the call returns. Run records
    /// written before it are committed first, so the order on disk is the order of events.
    fn durable(&self) -> &Connection {
        self.flush();
        self.sync_mode(true)
    }

    /// The connection for run records and statuses: they join one transaction per turn of
    /// the supervision loop, which `flush` commits (`synchronous=NORMAL`), so a stop of a
    /// thousand services is a handful of commits rather than thousands.
    fn fast(&self) -> &Connection {
        if !self.in_batch.get() && !self.in_fast_batch.get() {
            self.sync_mode(false);
            match self.conn.execute_batch("BEGIN") {
                Ok(()) => self.in_fast_batch.set(true),
                Err(e) => log::warn!(
                    "state file '{}': cannot begin a transaction: {e}",
                    self.path.display()
                ),
            }
        }
        &self.conn
    }

    /// Commits the run records and statuses written since the last call. A failure (a full
    /// disk) loses them, never a definition; it is logged.
    pub(crate) fn flush(&self) {
        if !self.in_fast_batch.replace(false) {
            return;
        }
        if self.conn.is_autocommit() {
            return; // SQLite rolled the transaction back after an error already reported
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            log::error!(
                "state file '{}': cannot store run records: {e}",
                self.path.display()
            );
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
        c.pragma_update(None, "foreign_keys", true)
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
                 exit_reason FROM service ORDER BY id",
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
                ))
            })
            .map_err(|e| self.err("cannot read services", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, spec, desired_up, status, restarts, code, signal, at, uptime, reason) =
                row.map_err(|e| self.err("cannot read services", e))?;
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
            out.push(StoredService {
                id: id as u64,
                spec,
                desired_up,
                status,
                restarts: restarts.max(0) as u64,
                last_exit,
            });
        }
        Ok(out)
    }

    /// Adds a service and returns its id; ids are never reused, even after a delete.
    pub(crate) fn insert_service(
        &self,
        spec: &ServiceSpec,
        desired_up: bool,
        status: Status,
    ) -> Result<u64> {
        let json = serde_json::to_string(spec).expect("a ServiceSpec always serializes");
        self.durable()
            .execute(
                "INSERT INTO service (name, spec, desired_up, status, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![spec.name(), json, desired_up, status.as_str(), ms(SystemTime::now())],
            )
            .map_err(|e| self.err("cannot save the service", e).with_service(spec.name()))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    pub(crate) fn update_spec(&self, id: u64, spec: &ServiceSpec) -> Result<()> {
        let json = serde_json::to_string(spec).expect("a ServiceSpec always serializes");
        self.durable()
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

    pub(crate) fn set_desired(&self, id: u64, up: bool) -> Result<()> {
        self.durable()
            .execute(
                "UPDATE service SET desired_up = ?2 WHERE id = ?1",
                params![id as i64, up],
            )
            .map_err(|e| self.err("cannot save the desired state", e))?;
        Ok(())
    }

    /// Writes a service's status, restart count and last exit.
    pub(crate) fn set_state(
        &self,
        id: u64,
        status: Status,
        restarts: u64,
        last_exit: Option<&Exit>,
    ) -> Result<()> {
        self.fast()
            .prepare_cached(
                "UPDATE service SET status = ?2, restarts = ?3, exit_code = ?4, exit_signal = ?5,
                 exit_at_ms = ?6, exit_uptime_ms = ?7, exit_reason = ?8 WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    id as i64,
                    status.as_str(),
                    restarts as i64,
                    last_exit.and_then(|e| e.code),
                    last_exit.and_then(|e| e.signal),
                    last_exit.map(|e| ms(e.at)),
                    last_exit.map(|e| e.uptime.as_millis() as i64),
                    last_exit.and_then(|e| e.reason.as_deref()),
                ])
            })
            .map_err(|e| self.err("cannot save the status", e))?;
        Ok(())
    }

    pub(crate) fn delete_service(&self, id: u64) -> Result<()> {
        self.durable()
            .execute("DELETE FROM service WHERE id = ?1", params![id as i64])
            .map_err(|e| self.err("cannot delete the service", e))?;
        Ok(())
    }

    /// How many ended runs to keep per service.
    pub(crate) fn set_runs_kept(&self, n: usize) {
        self.runs_kept.set(n.min(i64::MAX as usize) as i64);
    }

    /// Records the start of a run with the identity that tells its process apart from any
    /// later process with the same pid.
    pub(crate) fn insert_run(&self, run: &NewRun<'_>) -> Result<i64> {
        let started = ms(run.started_at);
        self.fast()
            .prepare_cached(
                "INSERT INTO run (service_id, generation, pid, boot_id, start_ticks, started_at_ms,
                                  ready_at_ms, pidfd_ino)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    run.service_id as i64,
                    run.generation as i64,
                    run.pid,
                    run.boot_id,
                    run.start_ticks.map(|t| t as i64),
                    started,
                    run.ready.then_some(started),
                    run.pidfd_ino.map(|i| i as i64),
                ])
            })
            .map_err(|e| self.err("cannot record the run", e))?;
        Ok(self.conn.last_insert_rowid())
    }

    fn prune(&self, service_id: u64) -> Result<()> {
        self.fast()
            .prepare_cached(
                "DELETE FROM run WHERE service_id = ?1 AND ended_at_ms IS NOT NULL AND id <=
                 (SELECT id FROM run WHERE service_id = ?1 AND ended_at_ms IS NOT NULL
                  ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )
            .and_then(|mut stmt| stmt.execute(params![service_id as i64, self.runs_kept.get()]))
            .map_err(|e| self.err("cannot prune runs", e))?;
        Ok(())
    }

    /// Records a start that failed before there was a process: a run with pid 0 that ended
    /// when it began.
    pub(crate) fn insert_failed_run(
        &self,
        service_id: u64,
        generation: u64,
        boot_id: &str,
        ending: &RunEnding<'_>,
    ) -> Result<()> {
        let at = ms(ending.exit.at);
        self.fast()
            .execute(
                "INSERT INTO run (service_id, generation, pid, boot_id, started_at_ms, ended_at_ms)
                 VALUES (?1, ?2, 0, ?3, ?4, ?4)",
                params![service_id as i64, generation as i64, boot_id, at],
            )
            .map_err(|e| self.err("cannot record the failed start", e))?;
        let run_id = self.conn.last_insert_rowid();
        self.end_run(service_id, run_id, ending)
    }

    /// Records the end of a run, and prunes the service's oldest ended runs: at most a few
    /// rows each time, through the `(service_id, id)` index, so pruning never stalls the
    /// supervision thread.
    pub(crate) fn end_run(&self, service_id: u64, run_id: i64, end: &RunEnding<'_>) -> Result<()> {
        let exit = end.exit;
        let micros = |d: Duration| d.as_micros().min(i64::MAX as u128) as i64;
        self.fast()
            .prepare_cached(
                "UPDATE run SET ended_at_ms = ?2, exit_code = ?3, exit_signal = ?4, reason = ?5,
                    cause = ?6, errno = ?7, decision = ?8, delay_ms = ?9, max_rss = ?10,
                    user_us = ?11, system_us = ?12
                 WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    run_id,
                    ms(exit.at),
                    exit.code,
                    exit.signal,
                    exit.reason.as_deref(),
                    end.cause.to_string(),
                    end.errno,
                    end.decision,
                    end.delay
                        .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
                    end.usage
                        .and_then(|u| u.peak_memory)
                        .map(|b| b.min(i64::MAX as u64) as i64),
                    end.usage.map(|u| micros(u.user)),
                    end.usage.map(|u| micros(u.system)),
                ])
            })
            .map_err(|e| self.err("cannot record the exit", e))?;
        self.prune(service_id)
    }

    /// Stores the last output of a run, once the log pump has drained it.
    pub(crate) fn set_tail(&self, run_id: i64, stdout: &[u8], stderr: &[u8]) -> Result<()> {
        self.fast()
            .prepare_cached("UPDATE run SET stdout_tail = ?2, stderr_tail = ?3 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute(params![run_id, stdout, stderr]))
            .map_err(|e| self.err("cannot record the run's last output", e))?;
        Ok(())
    }

    /// Records when a run became ready.
    pub(crate) fn set_ready(&self, run_id: i64, at: SystemTime) -> Result<()> {
        self.fast()
            .prepare_cached("UPDATE run SET ready_at_ms = ?2 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute(params![run_id, ms(at)]))
            .map_err(|e| self.err("cannot record the run's readiness", e))?;
        Ok(())
    }

    /// The newest `limit` runs of a service, newest first.
    pub(crate) fn runs(&self, service_id: u64, limit: usize) -> Result<Vec<crate::history::Run>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, generation, pid, started_at_ms, ended_at_ms, exit_code, exit_signal,
                        reason, ready_at_ms, cause, errno, decision, delay_ms, max_rss, user_us,
                        system_us, stdout_tail, stderr_tail
                 FROM run WHERE service_id = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.err("cannot read runs", e))?;
        let text =
            |v: Option<Vec<u8>>| String::from_utf8_lossy(&v.unwrap_or_default()).into_owned();
        let rows = stmt
            .query_map(params![service_id as i64, limit as i64], |r| {
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
            })
            .map_err(|e| self.err("cannot read runs", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err("cannot read runs", e))
    }

    /// Runs with no recorded end: candidates for leftovers of a host that died.
    pub(crate) fn open_runs(&self) -> Result<Vec<OpenRun>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT service_id, pid, boot_id, start_ticks, pidfd_ino FROM run
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
        &self,
        boot_id: &str,
        started_ticks: u64,
        key: &[u8],
        cgroup: bool,
    ) -> Result<i64> {
        let conn = self.fast();
        let id = conn
            .execute(
                "INSERT INTO session (boot_id, started_ticks, key, cgroup) VALUES (?1, ?2, ?3, ?4)",
                params![boot_id, started_ticks as i64, key, cgroup],
            )
            .and_then(|_| {
                let id = conn.last_insert_rowid();
                conn.execute(
                    "DELETE FROM session WHERE id <= ?1",
                    params![id - SESSIONS_KEPT],
                )?;
                Ok(id)
            })
            .map_err(|e| self.err("cannot record the session", e))?;
        self.flush();
        Ok(id)
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

    /// Marks every open run as ended now, without an exit status (the host died).
    pub(crate) fn close_open_runs(&self) -> Result<()> {
        self.fast()
            .execute(
                "UPDATE run SET ended_at_ms = ?1, cause = 'host died' WHERE ended_at_ms IS NULL",
                params![ms(SystemTime::now())],
            )
            .map_err(|e| self.err("cannot close runs", e))?;
        Ok(())
    }

    /// The number of runs recorded for a service (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn run_count(&self, service_id: u64) -> u64 {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM run WHERE service_id = ?1",
                params![service_id as i64],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0) as u64
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_round_trip_and_ids_are_never_reused() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (a, b);
        {
            let s = Store::open(&path)?;
            a = s.insert_service(&ServiceSpec::new("a", "true"), true, Status::Online)?;
            b = s.insert_service(
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
            s.set_state(a, Status::Backoff, 7, Some(&exit))?;
            s.delete_service(b)?;
        }
        let s = Store::open(&path)?;
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
        let c = s.insert_service(&ServiceSpec::new("c", "true"), true, Status::Starting)?;
        assert!(c > b, "id {c} reused (b was {b})");
        Ok(())
    }

    #[test]
    fn sessions_survive_a_reopen_and_only_the_newest_are_kept() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let s = Store::open(&path)?;
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
    fn runs_are_pruned_to_the_last_hundred() -> Result<()> {
        let s = Store::open_in_memory()?;
        let id = s.insert_service(&ServiceSpec::new("a", "true"), true, Status::Online)?;
        let other = s.insert_service(&ServiceSpec::new("b", "true"), true, Status::Online)?;
        // An open run of another service is never pruned, whatever its age.
        s.insert_run(&new_run(other, 0))?;
        let add = |g: u64| -> Result<()> {
            let run = s.insert_run(&new_run(id, g))?;
            let exit = Exit {
                code: Some(1),
                signal: None,
                at: SystemTime::now(),
                uptime: Duration::ZERO,
                reason: None,
            };
            s.end_run(id, run, &ending(&exit))
        };
        for g in 0..300 {
            add(g)?;
        }
        assert_eq!(s.run_count(id), RUNS_KEPT as u64);
        let runs = s.runs(id, 1000)?;
        assert_eq!(runs.first().map(|r| r.generation()), Some(299));
        assert_eq!(runs.last().map(|r| r.generation()), Some(200));
        s.set_runs_kept(0);
        add(300)?;
        assert_eq!(s.run_count(id), 0);
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
