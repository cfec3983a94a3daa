//! The Redis job store: the record of every job, the server instances that watch it, and the results
//! shared by jobs of the same model and input.
//!
//! Every state change that must not race another is one Lua script, so Redis applies it atomically: a job
//! never moves back from a final state, and a watcher registered by a resume is either seen by the worker
//! that finishes the job or sees the finished record itself.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{JobId, JobRecord, JobStatus, Json, Keys, RecordError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use crate::backend::{Cancel, Finish, JobStore, Report, Start};

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

// KEYS[1] job, ARGV[1] now, ARGV[2] '1' to mark it running and count the attempt ('0' reads only).
// Returns nil (missing) or {status before, attempts, submitted_ms, cancel}.
static START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
local submitted = redis.call('HGET', KEYS[1], 'submitted_ms') or '0'
local cancel = redis.call('HGET', KEYS[1], 'cancel') or '0'
if (status == 'queued' or status == 'running') and ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_ms', ARGV[1])
  return {status, redis.call('HINCRBY', KEYS[1], 'attempts', 1), submitted, cancel}
end
return {status, tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0'), submitted, cancel}
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
redis.call('HDEL', KEYS[1], 'progress', 'phase')
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

// KEYS[1] job, KEYS[2] watchers, ARGV[1] now, ARGV[2] watcher ('' for none), ARGV[3] (optional)
// identity. Returns {-1} missing (or not the identity's), {0, status} already final,
// {1, model, input, submitted_ms, watcher...} cancelled while queued, {2} cancel requested of a
// running job.
static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[3] and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[3] then return {-1} end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1} end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_ms', ARGV[1])
  redis.call('HDEL', KEYS[1], 'progress', 'phase')
  local reply = {1, redis.call('HGET', KEYS[1], 'model') or '', redis.call('HGET', KEYS[1], 'input') or '',
    redis.call('HGET', KEYS[1], 'submitted_ms')}
  local counts = redis.call('HGETALL', KEYS[2])
  for i = 1, #counts, 2 do
    if tonumber(counts[i + 1]) > 0 then table.insert(reply, counts[i]) end
  end
  return reply
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  if ARGV[2] ~= '' then
    redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  end
  return {2}
end
return {0, status}
",
    )
});

// KEYS[1] job, KEYS[2] watchers, ARGV[1] progress ('' for none), ARGV[2] phase ('' for none).
// Returns {stop, watcher...}.
static REPORT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then return {1} end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'progress', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'phase', ARGV[2]) end
local reply = {0}
if redis.call('HGET', KEYS[1], 'cancel') == '1' then reply[1] = 1 end
local counts = redis.call('HGETALL', KEYS[2])
for i = 1, #counts, 2 do
  if tonumber(counts[i + 1]) > 0 then table.insert(reply, counts[i]) end
end
return reply
",
    )
});

// KEYS[1] the job whose TTL the cached result takes, KEYS[2] the result. ARGV[1] the output.
static STORE_RESULT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl) end
",
    )
});

/// Handle to the Redis job store; cheap to clone.
///
/// Every operation of the process goes over one multiplexed connection, so operations issued at once
/// travel in one write and are answered in one read: under load that halves the CPU Redis spends per
/// job, against a pool of connections used one operation at a time (BENCHMARKS.md, "Throughput").
#[derive(Clone)]
pub struct RedisStore {
    link: Arc<Link>,
    keys: Keys,
}

/// The shared connection, and what it takes to replace it.
struct Link {
    client: redis::Client,
    /// The connection in use and its generation, so that of many operations that time out on the same
    /// connection only the first replaces it.
    current: RwLock<(u64, ConnectionManager)>,
}

impl Link {
    fn manager(client: &redis::Client) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OPERATION_TIMEOUT))
            // Answers are timed by `RedisStore::run`, which also replaces a connection that stops
            // answering; the crate's own 500 ms default would fail large results under load.
            .set_response_timeout(None)
            // One attempt per reconnect: the callers back off and retry as their own work requires.
            .set_number_of_retries(0);
        Ok(ConnectionManager::new_lazy_with_config(
            client.clone(),
            config,
        )?)
    }

    fn current(&self) -> (u64, ConnectionManager) {
        self.current
            .read()
            .expect("connection lock never poisoned")
            .clone()
    }

    /// Drops the connection of `generation` for a new one. The crate reconnects by itself when the
    /// connection breaks, but not when it stays open and silent (a peer gone without a reset).
    fn replace(&self, generation: u64) {
        let mut current = self
            .current
            .write()
            .expect("connection lock never poisoned");
        if current.0 != generation {
            return;
        }
        match Self::manager(&self.client) {
            Ok(manager) => *current = (generation + 1, manager),
            Err(e) => tracing::warn!(error = %e, "could not replace the redis connection"),
        }
    }
}

impl RedisStore {
    /// A store on the Redis at `url`, with keys under `keys`. Connects lazily, so it must be created
    /// within a Tokio runtime.
    pub fn new(url: &str, keys: Keys) -> Result<Self, StoreError> {
        // Without TCP_NODELAY, small pipelined commands meet delayed ACKs and wait 40 ms.
        let info = redis::IntoConnectionInfo::into_connection_info(url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let manager = Link::manager(&client)?;
        Ok(Self {
            link: Arc::new(Link {
                client,
                current: RwLock::new((0, manager)),
            }),
            keys,
        })
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) async fn run<T, F>(
        &self,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let (generation, conn) = self.link.current();
        match tokio::time::timeout(OPERATION_TIMEOUT, f(conn)).await {
            Ok(result) => result,
            Err(_) => {
                self.link.replace(generation);
                Err(StoreError::Unavailable(
                    "redis did not answer in time".into(),
                ))
            }
        }
    }
}

#[async_trait]
impl JobStore for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    async fn create(
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

    async fn delete(&self, id: &JobId) -> Result<(), StoreError> {
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

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
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

    async fn resume(
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

    async fn unwatch(
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

    async fn watchers(&self, id: &JobId) -> Result<Vec<String>, StoreError> {
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

    async fn start(&self, id: &JobId, now_ms: u64, count: bool) -> Result<Start, StoreError> {
        let job = self.keys.job(id);
        self.run(|mut conn| async move {
            let reply: Option<(String, u32, String, String)> = START
                .key(&job)
                .arg(now_ms)
                .arg(if count { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await?;
            let Some((status, attempts, submitted, cancel)) = reply else {
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
                cancel_requested: cancel == "1",
            })
        })
        .await
    }

    async fn finish(&self, id: &JobId, record: &JobRecord) -> Result<Finish, StoreError> {
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

    async fn cancel(
        &self,
        id: &JobId,
        watcher: Option<&str>,
        identity: Option<&str>,
        now_ms: u64,
    ) -> Result<Cancel, StoreError> {
        let job = self.keys.job(id);
        let watchers = self.keys.watchers(id);
        self.run(|mut conn| async move {
            let mut invocation = CANCEL.key(&job);
            invocation
                .key(&watchers)
                .arg(now_ms)
                .arg(watcher.unwrap_or(""));
            if let Some(identity) = identity {
                invocation.arg(identity);
            }
            let reply: Vec<redis::Value> = invocation.invoke_async(&mut conn).await?;
            let mut reply = reply.into_iter();
            let outcome: i64 = match reply.next() {
                Some(v) => redis::from_redis_value(v)?,
                None => return Err(RecordError::Inconsistent("empty reply from cancel").into()),
            };
            Ok(match outcome {
                -1 => Cancel::Missing,
                0 => {
                    let status: String = match reply.next() {
                        Some(v) => redis::from_redis_value(v)?,
                        None => return Err(RecordError::Missing("status").into()),
                    };
                    Cancel::Final(status.parse()?)
                }
                1 => {
                    let mut field = |name: &'static str| -> Result<String, StoreError> {
                        match reply.next() {
                            Some(v) => Ok(redis::from_redis_value(v)?),
                            None => Err(RecordError::Missing(name).into()),
                        }
                    };
                    let (model, input, submitted) =
                        (field("model")?, field("input")?, field("submitted_ms")?);
                    let fields = HashMap::from([
                        ("model".to_owned(), model),
                        ("input".to_owned(), input),
                        ("submitted_ms".to_owned(), submitted),
                        (
                            "status".to_owned(),
                            JobStatus::Cancelled.as_str().to_owned(),
                        ),
                    ]);
                    let mut record = JobRecord::from_fields(fields)?;
                    record.finished_ms = Some(now_ms);
                    Cancel::Cancelled {
                        record: Box::new(record),
                        watchers: reply
                            .map(redis::from_redis_value)
                            .collect::<Result<_, _>>()?,
                    }
                }
                _ => Cancel::Requested,
            })
        })
        .await
    }

    async fn report(
        &self,
        id: &JobId,
        progress: Option<(f64, Option<&str>)>,
    ) -> Result<Report, StoreError> {
        let job = self.keys.job(id);
        let watchers = self.keys.watchers(id);
        let fraction = progress.map(|(f, _)| f.to_string()).unwrap_or_default();
        let phase = progress.and_then(|(_, p)| p).unwrap_or_default();
        self.run(|mut conn| async move {
            let reply: Vec<redis::Value> = REPORT
                .key(&job)
                .key(&watchers)
                .arg(fraction)
                .arg(phase)
                .invoke_async(&mut conn)
                .await?;
            let mut reply = reply.into_iter();
            let stop: i64 = match reply.next() {
                Some(v) => redis::from_redis_value(v)?,
                None => return Err(RecordError::Inconsistent("empty reply from report").into()),
            };
            Ok(Report {
                stop: stop != 0,
                watchers: reply
                    .map(redis::from_redis_value)
                    .collect::<Result<_, _>>()?,
            })
        })
        .await
    }

    async fn cached_result(&self, model: &str, input: &Json) -> Result<Option<Json>, StoreError> {
        let key = self.keys.result(model, input.raw());
        let text: Option<String> =
            self.run(|mut conn| async move {
                Ok(redis::cmd("GET").arg(&key).query_async(&mut conn).await?)
            })
            .await?;
        // A damaged entry is no result: the job is computed instead.
        Ok(text.and_then(|text| herald_protocol::model::json(&text).ok()))
    }

    async fn cache_result(
        &self,
        id: &JobId,
        model: &str,
        input: &Json,
        output: &Json,
    ) -> Result<(), StoreError> {
        let job = self.keys.job(id);
        let key = self.keys.result(model, input.raw());
        self.run(|mut conn| async move {
            STORE_RESULT
                .key(&job)
                .key(&key)
                .arg(output.get())
                .invoke_async::<()>(&mut conn)
                .await?;
            Ok(())
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
