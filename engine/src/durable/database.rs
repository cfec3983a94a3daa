//! The SQLite file of the durable embedded mode, and the one thread that writes it.
//!
//! Every write goes through one writer thread: it takes all the writes waiting on its channel,
//! applies them in one transaction, commits, and only then answers each waiter. Under load one commit
//! (and, with `synchronous=FULL`, one fsync) covers hundreds of writes, which is how a job can be
//! durable before it is accepted and the mode still take thousands of jobs per second. SQLite is never
//! called on an async runtime thread: opening and loading run on a blocking thread, writes on this one.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use rusqlite::{params, Connection, ErrorCode, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use super::lock::DirLock;
use super::OpenError;

/// The database's file name in the data directory (SQLite adds `-wal` and `-shm` beside it).
pub const DATABASE_FILE: &str = "herald.sqlite3";

/// The layout this version writes (`PRAGMA user_version`); a file of a newer layout is refused
/// rather than misread. 2: idempotency keys and pending webhook deliveries (columns of `jobs`; a file
/// of layout 1 gains them at open). 3: outputs stored once by digest ([`super::outputs`]; tables of
/// their own, which an older file gains at open: its records still hold their outputs, and are read
/// as they are).
const SCHEMA_VERSION: i64 = 3;

/// Writes one transaction takes at most: bounds how long a commit keeps its first waiter waiting.
const MAX_BATCH: usize = 4096;

/// Pages given back to the file system per sweep (with 4 KiB pages, 256 MiB).
const VACUUM_PAGES: u32 = 65_536;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    key_scope TEXT,
    key_name TEXT,
    key_fingerprint TEXT,
    delivery_due_ms INTEGER,
    delivery_attempts INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_ms);
CREATE TABLE IF NOT EXISTS results (
    digest TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    output TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_ms);
";

/// What layout 1 (before idempotency keys and webhooks) lacks: a key and a pending delivery live and
/// die with their job's row, so they need no expiry or table of their own.
const FROM_LAYOUT_1: &str = "
ALTER TABLE jobs ADD COLUMN key_scope TEXT;
ALTER TABLE jobs ADD COLUMN key_name TEXT;
ALTER TABLE jobs ADD COLUMN key_fingerprint TEXT;
ALTER TABLE jobs ADD COLUMN delivery_due_ms INTEGER;
ALTER TABLE jobs ADD COLUMN delivery_attempts INTEGER;
";

/// The idempotency key a job was created with.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyColumns {
    /// Whose key (the identity), `None` without authentication.
    pub scope: Option<String>,
    /// The key.
    pub name: String,
    /// The fingerprint of the submit's model and input.
    pub fingerprint: String,
}

/// A job's pending webhook delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryColumns {
    /// When it is due (Unix ms).
    pub due_ms: i64,
    /// Attempts begun.
    pub attempts: i64,
}

/// A job row as read at start-up.
pub struct JobRow {
    /// The job's ID, as stored.
    pub id: String,
    /// The record, as JSON.
    pub record: String,
    /// When it expires (Unix ms).
    pub expires_ms: i64,
    /// The key it holds, if it was submitted with one.
    pub key: Option<KeyColumns>,
    /// Its webhook delivery, while one is pending.
    pub delivery: Option<DeliveryColumns>,
}

/// What the file held at start-up (expired rows left out).
pub struct Loaded {
    /// Job records.
    pub jobs: Vec<JobRow>,
    /// Shared results of layout 1: the job whose expiry each takes, and the output.
    pub results: Vec<(String, String)>,
    /// Stored outputs, and what refers to them.
    pub outputs: super::outputs::Loaded,
}

/// One write.
pub enum Write {
    /// A new job's record, expiring at `expires_ms`, and the key it holds.
    Insert {
        id: String,
        record: String,
        expires_ms: i64,
        key: Option<KeyColumns>,
    },
    /// A job's record as it now stands (its expiry unchanged); with `delivery_due_ms`, its final
    /// state also made its webhook delivery pending, due then (unless one is pending already).
    Update {
        id: String,
        record: String,
        delivery_due_ms: Option<i64>,
    },
    /// One more attempt of job `id`'s delivery begun.
    DeliveryAttempt { id: String },
    /// Job `id`'s delivery due again at `due_ms`; its row kept at least until `keep_until_ms`.
    DeliveryDue {
        id: String,
        due_ms: i64,
        keep_until_ms: i64,
    },
    /// Job `id`'s delivery over.
    DeliveryDone { id: String },
    /// A job removed.
    Delete { id: String },
    /// Removes what expired by `now_ms` (and outputs nothing refers to any more) and gives the
    /// freed pages back to the file system.
    Sweep { now_ms: i64 },
    /// A write of the stored outputs.
    Outputs(super::outputs::Write),
    /// Nothing: answers once the writer has committed what came before.
    Ping,
}

type Reply = oneshot::Sender<Result<u64, String>>;

/// The way to the writer thread; the thread ends (and the directory's lock is released) once every
/// handle is dropped.
#[derive(Clone)]
pub struct Writer {
    writes: mpsc::UnboundedSender<(Write, Option<Reply>)>,
}

impl Writer {
    /// Queues `write`; the answer comes once it is committed (rows removed, for a sweep).
    pub fn send(&self, write: Write) -> oneshot::Receiver<Result<u64, String>> {
        let (reply, answer) = oneshot::channel();
        // Should the writer be gone, `reply` is dropped with the write, and the answer says so.
        let _ = self.writes.send((write, Some(reply)));
        answer
    }

    /// Queues `write` without waiting for it.
    pub fn send_unanswered(&self, write: Write) {
        let _ = self.writes.send((write, None));
    }
}

/// Opens (creating if needed) the data directory `dir` and its database, takes its lock, and reads
/// what it holds. Blocking: call it off the runtime threads.
pub fn open(dir: &Path, full_sync: bool, now_ms: i64) -> Result<(Writer, Loaded), OpenError> {
    std::fs::create_dir_all(dir).map_err(|e| OpenError::directory(dir, e))?;
    let lock = DirLock::acquire(dir)?;
    let path = dir.join(DATABASE_FILE);
    let damaged = |e: rusqlite::Error| OpenError::from_sqlite(&path, e);
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(damaged)?;
    // Set before the first table exists, so that deleted rows' pages can be given back (a sweep runs
    // `incremental_vacuum`); on an existing file it changes nothing.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(damaged)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(damaged)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Database {
            path,
            error: format!("the file system refused write-ahead logging (journal_mode {mode})"),
        });
    }
    // FULL: each commit reaches the disk before its writers are answered, so a power cut loses
    // nothing accepted. NORMAL: a crash of the process loses nothing, a power cut may lose the last
    // commits.
    conn.pragma_update(
        None,
        "synchronous",
        if full_sync { "FULL" } else { "NORMAL" },
    )
    .map_err(damaged)?;
    // Keeps the write-ahead log from staying at its largest size after a burst.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(damaged)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(damaged)?;
    if version > SCHEMA_VERSION {
        return Err(OpenError::Database {
            path,
            error: format!(
                "it was written by a newer Herald (layout {version}; this one knows {SCHEMA_VERSION})"
            ),
        });
    }
    if version == 1 {
        conn.execute_batch(FROM_LAYOUT_1).map_err(damaged)?;
    }
    conn.execute_batch(SCHEMA).map_err(damaged)?;
    conn.execute_batch(super::outputs::SCHEMA)
        .map_err(damaged)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(damaged)?;
    let loaded = load(&conn, now_ms).map_err(damaged)?;
    let (writes, receiver) = mpsc::unbounded_channel();
    let thread: std::io::Result<JoinHandle<()>> = std::thread::Builder::new()
        .name("herald-sqlite".into())
        .spawn(move || run(conn, receiver, lock));
    thread.map_err(|e| OpenError::directory(dir, e))?;
    Ok((Writer { writes }, loaded))
}

/// Reads every row that has not expired. A damaged page fails the whole start (better than a server
/// that silently forgot jobs); a row that is readable but not a record is skipped by the caller.
fn load(conn: &Connection, now_ms: i64) -> rusqlite::Result<Loaded> {
    let mut jobs = Vec::new();
    let mut statement = conn.prepare(
        "SELECT id, record, expires_ms, key_scope, key_name, key_fingerprint, delivery_due_ms, \
         delivery_attempts FROM jobs WHERE expires_ms > ?1",
    )?;
    let rows = statement.query_map([now_ms], |row| {
        let key_name: Option<String> = row.get(4)?;
        let key_fingerprint: Option<String> = row.get(5)?;
        let delivery_due_ms: Option<i64> = row.get(6)?;
        Ok(JobRow {
            id: row.get(0)?,
            record: row.get(1)?,
            expires_ms: row.get(2)?,
            key: key_name
                .zip(key_fingerprint)
                .map(|(name, fingerprint)| {
                    Ok::<_, rusqlite::Error>(KeyColumns {
                        scope: row.get(3)?,
                        name,
                        fingerprint,
                    })
                })
                .transpose()?,
            delivery: delivery_due_ms
                .map(|due_ms| {
                    Ok::<_, rusqlite::Error>(DeliveryColumns {
                        due_ms,
                        attempts: row.get::<_, Option<i64>>(7)?.unwrap_or(0),
                    })
                })
                .transpose()?,
        })
    })?;
    for row in rows {
        jobs.push(row?);
    }
    let mut statement = conn.prepare("SELECT job, output FROM results WHERE expires_ms > ?1")?;
    let results = statement
        .query_map([now_ms], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let outputs = super::outputs::load(conn, now_ms)?;
    Ok(Loaded {
        jobs,
        results,
        outputs,
    })
}

/// The writer thread: batches, one transaction each, answers after the commit.
fn run(
    mut conn: Connection,
    mut writes: mpsc::UnboundedReceiver<(Write, Option<Reply>)>,
    _lock: DirLock,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = writes.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match writes.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let swept = batch.iter().any(|(w, _)| matches!(w, Write::Sweep { .. }));
        match apply(&mut conn, &batch) {
            Ok(answers) => {
                for ((_, reply), answer) in batch.drain(..).zip(answers) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(answer));
                    }
                }
                if swept {
                    // The log back to nothing once its pages are in the file (which the sweep just
                    // shrank), so the directory's size follows what it holds.
                    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
                        tracing::warn!(error = %e, "could not checkpoint the database");
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "the database refused a write");
                let reason = format!("the database refused the write: {e}");
                for (_, reply) in batch.drain(..) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(reason.clone()));
                    }
                }
            }
        }
    }
}

/// One transaction for `batch`: every write or none. The answer of each write: rows changed.
fn apply(conn: &mut Connection, batch: &[(Write, Option<Reply>)]) -> rusqlite::Result<Vec<u64>> {
    let tx = conn.transaction()?;
    let mut answers = Vec::with_capacity(batch.len());
    for (write, _) in batch {
        let changed = match write {
            Write::Insert {
                id,
                record,
                expires_ms,
                key,
            } => tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO jobs (id, record, expires_ms, key_scope, key_name, \
                     key_fingerprint) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    id,
                    record,
                    expires_ms,
                    key.as_ref().and_then(|k| k.scope.as_deref()),
                    key.as_ref().map(|k| &k.name),
                    key.as_ref().map(|k| &k.fingerprint),
                ])?,
            Write::Update {
                id,
                record,
                delivery_due_ms: None,
            } => tx
                .prepare_cached("UPDATE jobs SET record = ?2 WHERE id = ?1")?
                .execute(params![id, record])?,
            Write::Update {
                id,
                record,
                delivery_due_ms: Some(due_ms),
            } => tx
                .prepare_cached(
                    "UPDATE jobs SET record = ?2, delivery_due_ms = COALESCE(delivery_due_ms, ?3), \
                     delivery_attempts = COALESCE(delivery_attempts, 0) WHERE id = ?1",
                )?
                .execute(params![id, record, due_ms])?,
            Write::DeliveryAttempt { id } => tx
                .prepare_cached(
                    "UPDATE jobs SET delivery_attempts = delivery_attempts + 1 \
                     WHERE id = ?1 AND delivery_due_ms IS NOT NULL",
                )?
                .execute([id])?,
            Write::DeliveryDue {
                id,
                due_ms,
                keep_until_ms,
            } => tx
                .prepare_cached(
                    "UPDATE jobs SET delivery_due_ms = ?2, expires_ms = MAX(expires_ms, ?3) \
                     WHERE id = ?1 AND delivery_due_ms IS NOT NULL",
                )?
                .execute(params![id, due_ms, keep_until_ms])?,
            Write::DeliveryDone { id } => tx
                .prepare_cached(
                    "UPDATE jobs SET delivery_due_ms = NULL, delivery_attempts = NULL WHERE id = ?1",
                )?
                .execute([id])?,
            Write::Delete { id } => tx
                .prepare_cached("DELETE FROM jobs WHERE id = ?1")?
                .execute([id])?,
            Write::Sweep { now_ms } => {
                let jobs = tx
                    .prepare_cached("DELETE FROM jobs WHERE expires_ms <= ?1")?
                    .execute([now_ms])?;
                let results = tx
                    .prepare_cached("DELETE FROM results WHERE expires_ms <= ?1")?
                    .execute([now_ms])?
                    + super::outputs::sweep(&tx, *now_ms)?;
                // The pragma frees one page per step: stepped to its end.
                let mut vacuum =
                    tx.prepare(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
                let mut steps = vacuum.query([])?;
                while steps.next()?.is_some() {}
                jobs + results
            }
            Write::Outputs(write) => super::outputs::apply(&tx, write)?,
            Write::Ping => 0,
        };
        answers.push(changed as u64);
    }
    tx.commit()?;
    Ok(answers)
}

impl OpenError {
    fn from_sqlite(path: &Path, error: rusqlite::Error) -> Self {
        let path: PathBuf = path.to_path_buf();
        let code = error.sqlite_error_code();
        match code {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Self::Damaged {
                path,
                error: error.to_string(),
            },
            Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
                Self::Directory {
                    dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                    error: error.to_string(),
                }
            }
            _ => Self::Database {
                path,
                error: error.to_string(),
            },
        }
    }
}
