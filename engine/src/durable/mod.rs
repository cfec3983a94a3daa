//! The durable job store of embedded mode: the in-memory store's records, written through to an
//! SQLite file in the data directory, so that a restart (graceful or `kill -9`) keeps every job and
//! result until its TTL.
//!
//! Reads are answered from memory, by the same [`MemoryStore`] as the in-memory mode, so both embedded
//! modes share one implementation of every rule (TTL, watchers, cancels, a job never moving back from
//! a final state). Each change of a record is then written to the file and waited for before the
//! caller is answered: `create` returns, and the server sends `accepted`, only once the record is
//! committed. Watchers and progress are not written: they describe sockets and a computation of this
//! process, and mean nothing after a restart.
//!
//! A job's idempotency key and its pending webhook delivery are columns of its row: written in the
//! same transaction as the record that creates the job or makes it final, and gone with it.
//!
//! At start-up the records are read back, and every job that is not final is handed to the caller to
//! queue again (see [`DurableStore::open`]); keys and pending deliveries are restored with them.
//!
//! Outputs are written once each, by digest, as the memory store keeps them: a record refers to its
//! output, and a hundred jobs with one result write it once (see `outputs.rs`). Each client's counts
//! are not written: they are counted again from the records at start-up.

mod database;
mod deliveries;
mod keys;
mod lock;
mod outputs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::record::result_digest;
use herald_protocol::{unix_ms, JobId, JobMessage, JobRecord, Json};
use tokio::sync::Mutex;

use crate::backend::{
    Admission, Cancel, ClientLimits, Finish, JobStore, Report, Start, StoreError,
};
use crate::idempotency::Key;
use crate::idempotency_memory::KeyTable;
use crate::memory::MemoryStore;
use database::{KeyColumns, Write, Writer};

pub use database::DATABASE_FILE;
pub use lock::LOCK_FILE;

/// Why the data directory cannot be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory cannot be created, or written.
    #[error("cannot use the data directory {dir} (--data-dir): {error}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What the operating system (or SQLite) said.
        error: String,
    },
    /// Another process holds the directory's lock.
    #[error(
        "the data directory {dir} (--data-dir) is in use by {holder} (another Herald server?)"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// Who holds it, as far as its lock file tells.
        holder: String,
    },
    /// The database file is not a readable SQLite database.
    #[error("the database {path} is damaged or not Herald's: {error}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        error: String,
    },
    /// The database cannot be used for another reason.
    #[error("cannot use the database {path}: {error}")]
    Database {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: String,
    },
}

impl OpenError {
    fn directory(dir: &Path, error: impl std::fmt::Display) -> Self {
        Self::Directory {
            dir: dir.to_path_buf(),
            error: error.to_string(),
        }
    }

    /// What the person starting the server should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Directory { .. } => {
                "Give a directory this user can create and write with --data-dir (HERALD_DATA_DIR), \
                 or run with --in-memory to keep nothing across restarts"
            }
            Self::Locked { .. } => {
                "Stop the other server, or give this one a data directory of its own with --data-dir; \
                 two servers that should share jobs need RabbitMQ and Redis (--amqp-url, --redis-url)"
            }
            Self::Damaged { .. } | Self::Database { .. } => {
                "Move the file (with its -wal and -shm files) away to start with an empty store \
                 (its jobs are then lost), or put back a copy from a backup"
            }
        }
    }
}

/// The durable job store; see the module's documentation.
pub struct DurableStore {
    memory: MemoryStore,
    /// Held from a change in memory until its write is queued, so that the writes of one record reach
    /// the file in the order its changes happened.
    order: Mutex<()>,
    /// The idempotency keys of live jobs (see `keys.rs`).
    keys: Mutex<KeyTable>,
    writer: Writer,
    path: PathBuf,
}

/// What a store opened on a data directory found there.
pub struct Opened {
    /// The store, with every record and result that had not expired.
    pub store: DurableStore,
    /// The jobs that were accepted and are not final, oldest first: to be queued again. A job that
    /// was running when the server stopped has its attempt counted already; it is started again like
    /// a message RabbitMQ delivers again.
    pub unfinished: Vec<JobMessage>,
    /// Records that could not be read (skipped, and logged).
    pub unreadable: usize,
}

impl DurableStore {
    /// Opens the store in `dir` (created if missing), taking its lock. `full_sync`: see
    /// `synchronous` in `database.rs`. Runs on a blocking thread.
    pub async fn open(dir: &Path, full_sync: bool) -> Result<Opened, OpenError> {
        let dir = dir.to_path_buf();
        let now_ms = unix_ms() as i64;
        let (writer, loaded, dir) = tokio::task::spawn_blocking(move || {
            database::open(&dir, full_sync, now_ms).map(|(w, l)| (w, l, dir))
        })
        .await
        .map_err(|e| OpenError::Database {
            path: PathBuf::new(),
            error: e.to_string(),
        })??;
        let memory = MemoryStore::new();
        let mut keys = KeyTable::default();
        let mut unfinished = Vec::new();
        let mut unreadable = 0;
        let mut stored = loaded.outputs;
        for row in loaded.jobs {
            let parsed = row
                .id
                .parse::<JobId>()
                .ok()
                .zip(serde_json::from_str::<JobRecord>(&row.record).ok())
                .filter(|(_, record)| record.validate(false).is_ok());
            let Some((id, record)) = parsed else {
                tracing::warn!(id = %row.id.chars().take(40).collect::<String>(), "skipping an unreadable job record");
                unreadable += 1;
                continue;
            };
            let ttl = Duration::from_millis(row.expires_ms.saturating_sub(now_ms).max(1) as u64);
            if !record.status.is_final() {
                unfinished.push((
                    record.submitted_ms,
                    JobMessage {
                        id,
                        model: record.model.clone(),
                        input: record.input.clone(),
                        client: record.client.clone(),
                    },
                ));
            }
            let output = match stored.jobs.remove(&row.id) {
                Some(digest) => match stored.outputs.get(&digest) {
                    Some(blob) => Some((digest, blob.clone())),
                    None => {
                        tracing::warn!(%id, "a job's stored output is missing from the database");
                        None
                    }
                },
                None => None,
            };
            // Counted in its client's books as before the restart.
            memory.restore(
                &id,
                record,
                ttl,
                output.as_ref().map(|(d, blob)| (d.as_str(), blob.clone())),
            );
            if let Some(key) = &row.key {
                let key = Key {
                    scope: key.scope.as_deref(),
                    key: &key.name,
                    fingerprint: &key.fingerprint,
                };
                keys.restore(key, &id, tokio::time::Instant::now() + ttl);
            }
            if let Some(delivery) = &row.delivery {
                // Due when it was, or at once: a delivery claimed when the server stopped is tried
                // again, as a lease of a dead instance runs out.
                let wait = delivery.due_ms.saturating_sub(now_ms).max(0) as u64;
                memory.tables().deliveries.restore(
                    id,
                    u32::try_from(delivery.attempts).unwrap_or(u32::MAX),
                    tokio::time::Instant::now() + Duration::from_millis(wait),
                );
            }
        }
        for (job, output) in loaded.results {
            let Some(id) = job.parse::<JobId>().ok() else {
                continue;
            };
            let (Ok(Some(record)), Ok(output)) =
                (memory.get(&id).await, herald_protocol::model::json(&output))
            else {
                continue;
            };
            memory
                .cache_result(&id, &record.model, &record.input, &output)
                .await
                .ok();
        }
        for (result, job, digest) in stored.shared {
            if let Ok(id) = job.parse::<JobId>() {
                memory.restore_result(&result, &id, &digest);
            }
        }
        unfinished.sort_by_key(|(submitted, _)| *submitted);
        Ok(Opened {
            store: Self {
                memory,
                order: Mutex::new(()),
                keys: Mutex::new(keys),
                writer,
                path: dir.join(DATABASE_FILE),
            },
            unfinished: unfinished.into_iter().map(|(_, job)| job).collect(),
            unreadable,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes expired records and results, from memory and from the file (whose freed pages go
    /// back to the file system). Returns the rows removed from the file.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        self.memory.sweep();
        answered(self.writer.send(Write::Sweep {
            now_ms: unix_ms() as i64,
        }))
        .await
    }

    /// Registers the gauges of the stored outputs in `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.memory.register(registry);
    }

    /// Records held in memory (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }

    /// Writes job `id`'s record as memory now holds it (under `order`), with its webhook delivery
    /// when the change that is `ending` it made one pending; the answer comes with the commit.
    async fn write_back(
        &self,
        id: &JobId,
        ending: bool,
    ) -> Result<Option<tokio::sync::oneshot::Receiver<Result<u64, String>>>, StoreError> {
        let Some((record, output)) = self.memory.stored(id) else {
            return Ok(None);
        };
        if let Some((digest, blob)) = output {
            // Before the record, in the same transaction or an earlier one: a record never refers
            // to an output the file does not hold.
            self.writer
                .send_unanswered(Write::Outputs(outputs::Write::Output {
                    digest: digest.clone(),
                    blob,
                }));
            self.writer
                .send_unanswered(Write::Outputs(outputs::Write::Refer {
                    job: id.to_string(),
                    digest,
                }));
        }
        let delivery = ending && self.memory.tables().deliveries.contains(id);
        Ok(Some(self.writer.send(Write::Update {
            id: id.to_string(),
            record: encode(&record)?,
            delivery_due_ms: delivery.then(|| unix_ms() as i64),
        })))
    }

    /// Creates job `id` (holding `key`, if given) in memory and in the file, and answers once the
    /// row is committed.
    async fn insert(
        &self,
        id: &JobId,
        record: &JobRecord,
        watcher: Option<&str>,
        ttl: Duration,
        key: Option<KeyColumns>,
        limits: &ClientLimits,
    ) -> Result<Admission, StoreError> {
        let answer = {
            let _order = self.order.lock().await;
            let admission = self.memory.create(id, record, watcher, ttl, limits).await?;
            if let Admission::Refused(_) = admission {
                return Ok(admission);
            }
            self.writer.send(Write::Insert {
                id: id.to_string(),
                record: encode(record)?,
                expires_ms: (unix_ms() + ttl.as_millis() as u64) as i64,
                key,
            })
        };
        if let Err(e) = answered(answer).await {
            // Not durable, so not accepted: the caller answers `unavailable`, and nothing is left
            // that a restart would run.
            self.memory.delete(id).await?;
            return Err(e);
        }
        Ok(Admission::Created)
    }
}

/// A record as its row holds it.
fn encode(record: &JobRecord) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Waits for a write's commit.
async fn answered(
    answer: tokio::sync::oneshot::Receiver<Result<u64, String>>,
) -> Result<u64, StoreError> {
    match answer.await {
        Ok(Ok(changed)) => Ok(changed),
        Ok(Err(reason)) => Err(StoreError::Unavailable(reason)),
        Err(_) => Err(StoreError::Unavailable(
            "the database's writer has stopped".into(),
        )),
    }
}

#[async_trait]
impl JobStore for DurableStore {
    async fn ping(&self) -> Result<(), StoreError> {
        answered(self.writer.send(Write::Ping)).await.map(drop)
    }

    async fn create(
        &self,
        id: &JobId,
        record: &JobRecord,
        watcher: Option<&str>,
        ttl: Duration,
        limits: &ClientLimits,
    ) -> Result<Admission, StoreError> {
        self.insert(id, record, watcher, ttl, None, limits).await
    }

    async fn delete(&self, id: &JobId) -> Result<(), StoreError> {
        let answer = {
            let _order = self.order.lock().await;
            self.memory.delete(id).await?;
            self.writer.send(Write::Delete { id: id.to_string() })
        };
        answered(answer).await.map(drop)
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        self.memory.get(id).await
    }

    async fn resume(
        &self,
        id: &JobId,
        watcher: &str,
        identity: Option<&str>,
    ) -> Result<Option<JobRecord>, StoreError> {
        self.memory.resume(id, watcher, identity).await
    }

    async fn unwatch(
        &self,
        id: &JobId,
        watcher: &str,
        registrations: u32,
    ) -> Result<(), StoreError> {
        self.memory.unwatch(id, watcher, registrations).await
    }

    async fn watchers(&self, id: &JobId) -> Result<Vec<String>, StoreError> {
        self.memory.watchers(id).await
    }

    async fn start(&self, id: &JobId, now_ms: u64, count: bool) -> Result<Start, StoreError> {
        if !count {
            return self.memory.start(id, now_ms, false).await;
        }
        let (start, answer) = {
            let _order = self.order.lock().await;
            let start = self.memory.start(id, now_ms, true).await?;
            let answer = match start {
                Start::Run { .. } => self.write_back(id, false).await?,
                Start::Missing | Start::Final => None,
            };
            (start, answer)
        };
        // Committed before the computation starts: a job that brings the server down has its attempt
        // counted, so a restart does not run it for ever.
        if let Some(answer) = answer {
            answered(answer).await?;
        }
        Ok(start)
    }

    async fn finish(&self, id: &JobId, record: &JobRecord) -> Result<Finish, StoreError> {
        let (finish, answer) = {
            let _order = self.order.lock().await;
            let finish = self.memory.finish(id, record).await?;
            let answer = match finish {
                Finish::Applied { .. } => self.write_back(id, true).await?,
                Finish::Missing | Finish::AlreadyFinal => None,
            };
            (finish, answer)
        };
        if let Some(answer) = answer {
            answered(answer).await?;
        }
        Ok(finish)
    }

    async fn cancel(
        &self,
        id: &JobId,
        watcher: Option<&str>,
        identity: Option<&str>,
        now_ms: u64,
    ) -> Result<Cancel, StoreError> {
        let (cancel, answer) = {
            let _order = self.order.lock().await;
            let cancel = self.memory.cancel(id, watcher, identity, now_ms).await?;
            let answer = match cancel {
                Cancel::Cancelled { .. } => self.write_back(id, true).await?,
                Cancel::Requested => self.write_back(id, false).await?,
                Cancel::Missing | Cancel::Final(_) => None,
            };
            (cancel, answer)
        };
        if let Some(answer) = answer {
            answered(answer).await?;
        }
        Ok(cancel)
    }

    async fn report(
        &self,
        id: &JobId,
        progress: Option<(f64, Option<&str>)>,
    ) -> Result<Report, StoreError> {
        // Progress is not written: after a restart the job starts again from nothing.
        self.memory.report(id, progress).await
    }

    async fn cached_result(&self, model: &str, input: &Json) -> Result<Option<Json>, StoreError> {
        self.memory.cached_result(model, input).await
    }

    async fn cache_result(
        &self,
        id: &JobId,
        model: &str,
        input: &Json,
        output: &Json,
    ) -> Result<(), StoreError> {
        let _order = self.order.lock().await;
        self.memory.cache_result(id, model, input, output).await?;
        // Not waited for: the job's record, which refers to the output too, is; a shared result lost
        // in a crash is computed again.
        if let Some((digest, blob)) = self.memory.shared_output(model, input) {
            self.writer
                .send_unanswered(Write::Outputs(outputs::Write::Output {
                    digest: digest.clone(),
                    blob,
                }));
            self.writer
                .send_unanswered(Write::Outputs(outputs::Write::Shared {
                    digest: result_digest(model, input.raw()),
                    job: id.to_string(),
                    output: digest,
                }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
