//! The Redis job store: the record of every job and the set of server instances that watch it.
//!
//! Every state change that must not race another is one Lua script, so Redis applies it atomically: a job
//! never moves back from a final state, and a watcher registered by a resume is either seen by the worker
//! that finishes the job or sees the finished record itself.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use herald_protocol::{JobId, JobRecord, Keys, RecordError};
use redis::Script;

/// Longest wait for any one Redis operation: a Redis that does not answer is treated as unreachable
/// rather than hanging a socket or a job.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached or did not answer in time.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// A stored record (or a script's answer) is not what Herald writes.
    #[error(transparent)]
    Corrupt(#[from] RecordError),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<redis::ParsingError> for StoreError {
    fn from(_: redis::ParsingError) -> Self {
        Self::Corrupt(RecordError::Inconsistent("unexpected reply from redis"))
    }
}

impl From<deadpool_redis::PoolError> for StoreError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// What a worker found when it went to start a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No record: it expired or was never written. Nobody can be waiting for it.
    Missing,
    /// Already in a final state (a redelivery after the result was stored): do not compute again.
    Final,
    /// Marked running; compute it.
    Run {
        /// Starts so far, this one included.
        attempts: u32,
        /// When the server accepted it.
        submitted_ms: u64,
    },
}

/// What happened when a final state was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// No record any more (expired while running).
    Missing,
    /// Another writer finished it first; its completion was published by that writer.
    AlreadyFinal,
    /// Stored; these server instances wait for the completion.
    Applied { watchers: Vec<String> },
}

// KEYS[1] job, ARGV[1] now. Returns nil (missing) or {status before, attempts, submitted_ms}.
static START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
local submitted = redis.call('HGET', KEYS[1], 'submitted_ms') or '0'
if status == 'queued' or status == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_ms', ARGV[1])
  return {status, redis.call('HINCRBY', KEYS[1], 'attempts', 1), submitted}
end
return {status, 0, submitted}
",
    )
});

// KEYS[1] job, KEYS[2] watchers, ARGV field/value pairs. Returns {-1} missing, {0} already final,
// {1, watcher...} applied. The watcher hash is kept (it expires with the job) so that a worker that stored
// the result but died before publishing can publish again after redelivery.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1} end
if status ~= 'queued' and status ~= 'running' then return {0} end
redis.call('HSET', KEYS[1], unpack(ARGV))
local reply = {1}
local counts = redis.call('HGETALL', KEYS[2])
for i = 1, #counts, 2 do
  if tonumber(counts[i + 1]) > 0 then table.insert(reply, counts[i]) end
end
return reply
",
    )
});

// KEYS[1] watchers, ARGV[1] watcher, ARGV[2] registrations to release.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -tonumber(ARGV[2])) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
",
    )
});

// KEYS[1] job, KEYS[2] watchers, ARGV[1] watcher, ARGV[2] (optional) the identity asking. Registers the
// watcher only while the job is pending, in the same step as the read, then returns the whole record
// (empty when missing). With an identity, a job owned by anyone else is answered like a missing one and
// registers nothing: the owner check and the registration are one atomic step, so a stranger can neither
// probe an ID nor be told of its completion.
static RESUME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[2] and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return {} end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'running' then
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return redis.call('HGETALL', KEYS[1])
",
    )
});

/// Handle to the Redis job store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
}

impl Store {
    /// A store on the Redis at `url`, with keys under `keys`. Connects lazily.
    pub fn new(url: &str, keys: Keys, max_connections: usize) -> Result<Self, StoreError> {
        // Without TCP_NODELAY, small pipelined commands meet delayed ACKs and wait 40 ms.
        let info = redis::IntoConnectionInfo::into_connection_info(url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let pool = Pool::builder(Manager::new(info)?)
            .max_size(max_connections)
            .wait_timeout(Some(OPERATION_TIMEOUT))
            .create_timeout(Some(OPERATION_TIMEOUT))
            .recycle_timeout(Some(OPERATION_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self { pool, keys })
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) async fn run<T, F>(
        &self,
        f: impl FnOnce(deadpool_redis::Connection) -> F,
    ) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        tokio::time::timeout(OPERATION_TIMEOUT, async {
            let conn = self.pool.get().await?;
            f(conn).await
        })
        .await
        .map_err(|_| StoreError::Unavailable("redis did not answer in time".into()))?
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Writes a new job's record (with its [`owner`](JobRecord::owner), if any), expiring after `ttl`,
    /// and registers `watcher` (a server instance with a socket waiting for it), in one transaction.
    ///
    /// Watchers are counted per instance (one registration per waiting socket) rather than kept in a set:
    /// a socket that leaves and one that arrives on the same instance then update the count in either
    /// order with the same result, where a set's remove could overtake the add and lose the watcher.
    pub async fn create(
        &self,
        id: &JobId,
        record: &JobRecord,
        watcher: Option<&str>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let job = self.keys.job(id);
        let watchers = self.keys.watchers(id);
        let ttl_ms = ttl.as_millis() as i64;
        self.run(|mut conn| async move {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .hset_multiple(&job, &record.to_fields())
                .ignore()
                .pexpire(&job, ttl_ms)
                .ignore();
            if let Some(watcher) = watcher {
                pipe.hincr(&watchers, watcher, 1)
                    .ignore()
                    .pexpire(&watchers, ttl_ms)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Deletes a job's record and watcher set (a submit that could not be queued leaves nothing behind).
    pub async fn delete(&self, id: &JobId) -> Result<(), StoreError> {
        let job = self.keys.job(id);
        let watchers = self.keys.watchers(id);
        self.run(|mut conn| async move {
            redis::cmd("DEL")
                .arg(&job)
                .arg(&watchers)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Reads a job's record; `None` when there is none.
    pub async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let job = self.keys.job(id);
        self.run(|mut conn| async move {
            let fields: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&job)
                .query_async(&mut conn)
                .await?;
            record_from(fields)
        })
        .await
    }

    /// Registers `watcher` for a pending job (one more registration) and reads its record, atomically;
    /// `None` when there is none. A final or missing job registers nothing.
    ///
    /// With `identity`, only a job whose record names it as owner is seen: any other job (including one
    /// stored without an owner) is `None` and registers nothing, exactly like a missing one.
    pub async fn resume(
        &self,
        id: &JobId,
        watcher: &str,
        identity: Option<&str>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let job = self.keys.job(id);
        let watchers = self.keys.watchers(id);
        self.run(|mut conn| async move {
            let mut invocation = RESUME.key(&job);
            invocation.key(&watchers).arg(watcher);
            if let Some(identity) = identity {
                invocation.arg(identity);
            }
            let fields: HashMap<String, String> = invocation.invoke_async(&mut conn).await?;
            record_from(fields)
        })
        .await
    }

    /// Releases `registrations` of `watcher` for a job (its sockets that waited went away).
    pub async fn unwatch(
        &self,
        id: &JobId,
        watcher: &str,
        registrations: u32,
    ) -> Result<(), StoreError> {
        let watchers = self.keys.watchers(id);
        self.run(|mut conn| async move {
            RELEASE
                .key(&watchers)
                .arg(watcher)
                .arg(registrations)
                .invoke_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// The server instances waiting for a job.
    pub async fn watchers(&self, id: &JobId) -> Result<Vec<String>, StoreError> {
        let watchers = self.keys.watchers(id);
        self.run(|mut conn| async move {
            let counts: HashMap<String, i64> = redis::cmd("HGETALL")
                .arg(&watchers)
                .query_async(&mut conn)
                .await?;
            Ok(counts
                .into_iter()
                .filter(|(_, count)| *count > 0)
                .map(|(watcher, _)| watcher)
                .collect())
        })
        .await
    }

    /// Marks a pending job running (counting the attempt), or says why not.
    pub async fn start(&self, id: &JobId, now_ms: u64) -> Result<Start, StoreError> {
        let job = self.keys.job(id);
        self.run(|mut conn| async move {
            let reply: Option<(String, u32, String)> =
                START.key(&job).arg(now_ms).invoke_async(&mut conn).await?;
            let Some((status, attempts, submitted)) = reply else {
                return Ok(Start::Missing);
            };
            let status: herald_protocol::JobStatus = status.parse()?;
            if status.is_final() {
                return Ok(Start::Final);
            }
            let submitted_ms = submitted
                .parse()
                .map_err(|_| RecordError::Invalid("submitted_ms", submitted))?;
            Ok(Start::Run {
                attempts,
                submitted_ms,
            })
        })
        .await
    }

    /// Stores a final record unless the job is already final, and returns who waits for it.
    pub async fn finish(&self, id: &JobId, record: &JobRecord) -> Result<Finish, StoreError> {
        debug_assert!(record.status.is_final());
        let job = self.keys.job(id);
        let watchers = self.keys.watchers(id);
        self.run(|mut conn| async move {
            let mut invocation = FINISH.key(&job);
            invocation.key(&watchers);
            for (field, value) in record.to_fields() {
                invocation.arg(field).arg(value);
            }
            let reply: Vec<redis::Value> = invocation.invoke_async(&mut conn).await?;
            let mut reply = reply.into_iter();
            let outcome: i64 = match reply.next() {
                Some(v) => redis::from_redis_value(v)?,
                None => return Err(RecordError::Inconsistent("empty reply from finish").into()),
            };
            Ok(match outcome {
                -1 => Finish::Missing,
                0 => Finish::AlreadyFinal,
                _ => Finish::Applied {
                    watchers: reply
                        .map(redis::from_redis_value)
                        .collect::<Result<_, _>>()?,
                },
            })
        })
        .await
    }
}

fn record_from(fields: HashMap<String, String>) -> Result<Option<JobRecord>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(JobRecord::from_fields(fields)?))
}
