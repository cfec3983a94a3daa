//! The Redis job store: the record of every job, the server instances that watch it, and the results
//! shared by jobs of the same model and input.
//!
//! Every state change that must not race another is one Lua script, so Redis applies it atomically: a job
//! never moves back from a final state, and a watcher registered by a resume is either seen by the worker
//! that finishes the job or sees the finished record itself.
//!
//! Outputs are stored once each under `output:<digest>` ([`crate::output`]) and records refer to them
//! by an `output_digest` field; each client's counts are kept as [`crate::clients`] describes. Some
//! scripts name keys they derive from a record (its output, its client's counts): the store is for
//! one Redis (or a primary and its replicas), not Redis Cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{JobId, JobRecord, JobStatus, Json, Keys, RecordError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::Script;

use crate::backend::{Admission, Cancel, ClientLimits, Finish, JobStore, OverQuota, Report, Start};
use crate::clients::{self, SETTLE_LUA};
use crate::output;
use crate::replication::{Replicas, Waiter};
use crate::settings::{redact_url, BackendArgs};

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

// KEYS[1] job, KEYS[2] watchers, KEYS[3] pending webhook deliveries, KEYS[4] (only with an output)
// the output. ARGV[1] prefix, ARGV[2] id, ARGV[3] now, ARGV[4] the output's stored form ('' to refer to
// it only), then field/value pairs. Returns {-1} missing, {0} already final, {2} the output is not
// stored (call again with it), {1, watcher...} applied. The output lives as long as its longest-lived
// referrer. The watcher hash is kept (it expires with the job) so that a worker that stored the result
// but died before publishing can publish again after redelivery. A job with a webhook gets its
// delivery, due at once, in the same step (see `crate::deliveries`).
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
local job, prefix, id, now, output = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), KEYS[4]
local status = redis.call('HGET', job, 'status')
if not status then return {{-1}} end
if status ~= 'queued' and status ~= 'running' then return {{0}} end
if output then
  local ttl = redis.call('PTTL', job)
  local left = redis.call('PTTL', output)
  if left == -2 then
    if ARGV[4] == '' then return {{2}} end
    redis.call('SET', output, ARGV[4])
    if ttl > 0 then redis.call('PEXPIRE', output, ttl) end
  elseif left >= 0 and ttl > left then
    redis.call('PEXPIRE', output, ttl)
  end
end
redis.call('HDEL', job, 'progress', 'phase', 'output')
redis.call('HSET', job, unpack(ARGV, 5))
if redis.call('HEXISTS', job, 'webhook') == 1 then redis.call('ZADD', KEYS[3], 'NX', 0, id) end
{SETTLE_LUA}
local reply = {{1}}
local counts = redis.call('HGETALL', KEYS[2])
for i = 1, #counts, 2 do
  if tonumber(counts[i + 1]) > 0 then table.insert(reply, counts[i]) end
end
return reply
",
    ))
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

// KEYS[1] job, KEYS[2] watchers, ARGV[1] prefix, ARGV[2] watcher, ARGV[3] (optional) the identity
// asking. Returns {fields, the stored output if it has one} ({} when missing). Registers the
// watcher only while the job is pending, in the same step as the read, then returns the whole record
// (empty when missing). With an identity, a job owned by anyone else is answered like a missing one and
// registers nothing: the owner check and the registration are one atomic step, so a stranger can neither
// probe an ID nor be told of its completion.
static RESUME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[3] and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[3] then return {} end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'running' then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
local digest = redis.call('HGET', KEYS[1], 'output_digest')
if digest then return {redis.call('HGETALL', KEYS[1]), redis.call('GET', ARGV[1] .. 'output:' .. digest)} end
return {redis.call('HGETALL', KEYS[1])}
",
    )
});

// KEYS[1] job, KEYS[2] watchers, KEYS[3] pending webhook deliveries, ARGV[1] now, ARGV[2] watcher
// ('' for none), ARGV[3] prefix, ARGV[4] the job's ID, ARGV[5] (optional) identity. Returns {-1}
// missing (or not the identity's), {0, status} already final, {1, model, input, submitted_ms,
// watcher...} cancelled while queued (it leaves its client's queued jobs, and its webhook's delivery
// is due at once, as in FINISH), {2} cancel requested of a running job.
static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
if ARGV[5] and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[5] then return {{-1}} end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {{-1}} end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_ms', ARGV[1])
  redis.call('HDEL', KEYS[1], 'progress', 'phase')
  if redis.call('HEXISTS', KEYS[1], 'webhook') == 1 then redis.call('ZADD', KEYS[3], 'NX', 0, ARGV[4]) end
  local job, prefix, id, now, output = KEYS[1], ARGV[3], ARGV[4], tonumber(ARGV[1]), nil
{SETTLE_LUA}
  local reply = {{1, redis.call('HGET', KEYS[1], 'model') or '', redis.call('HGET', KEYS[1], 'input') or '',
    redis.call('HGET', KEYS[1], 'submitted_ms')}}
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
  return {{2}}
end
return {{0, status}}
",
    ))
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

// KEYS[1] the job whose TTL the cached result takes, KEYS[2] the result, KEYS[3] the output. ARGV[1]
// the output's digest, ARGV[2] its stored form ('' to refer to it only). Returns 2 when the output is
// not stored (call again with it), else 1. Both keys live at least as long as the job.
static STORE_RESULT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 1 end
local left = redis.call('PTTL', KEYS[3])
if left == -2 then
  if ARGV[2] == '' then return 2 end
  redis.call('SET', KEYS[3], ARGV[2], 'PX', ttl)
elseif left >= 0 and ttl > left then
  redis.call('PEXPIRE', KEYS[3], ttl)
end
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
end
return 1
",
    )
});

// KEYS[1] a result, ARGV[1] prefix. Returns the stored form of its output, or nil.
static CACHED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local digest = redis.call('GET', KEYS[1])
if not digest then return false end
return redis.call('GET', ARGV[1] .. 'output:' .. digest)
",
    )
});

// KEYS[1] job, ARGV[1] prefix. Returns {fields, the stored output if it has one}.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local digest = redis.call('HGET', KEYS[1], 'output_digest')
if digest then return {redis.call('HGETALL', KEYS[1]), redis.call('GET', ARGV[1] .. 'output:' .. digest)} end
return {redis.call('HGETALL', KEYS[1])}
",
    )
});

/// Why the store could not be opened at start-up, and whether waiting may help.
#[derive(Debug, thiserror::Error)]
#[error("redis ({redis}): {error}")]
pub struct OpenError {
    /// What was tried: the URL without its password, or the Sentinels and master name.
    pub redis: String,
    /// What went wrong.
    pub error: String,
    transient: bool,
}

impl OpenError {
    fn from_redis(redis: &str, error: &redis::RedisError) -> Self {
        // Nothing listening, a dropped connection, a Redis still loading its data or a Sentinel that
        // knows no primary yet may all pass; a refused password or a bad setting does not.
        let transient = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || matches!(error.retry_method(), redis::RetryMethod::WaitAndRetry)
            || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        Self {
            redis: redis.to_owned(),
            error: error.to_string(),
            transient,
        }
    }
}

impl crate::connect::Transient for OpenError {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

/// What a Redis keeps on disk, as its configuration says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// The append-only file (`appendonly yes`), with snapshots on the `save` schedule or not: a
    /// restart loses at most the last second of writes (with the default `appendfsync everysec`).
    AppendOnly {
        /// The snapshot schedule (`""`: none).
        save: String,
    },
    /// Snapshots only: a crash loses what was written since the last one.
    Snapshots {
        /// The snapshot schedule.
        save: String,
    },
    /// Nothing: a restart loses every record.
    Nothing,
    /// Not known: `CONFIG GET` was refused (managed Redis services often disable it), with why.
    Unknown(String),
}

/// Handle to the Redis job store; cheap to clone.
///
/// Every operation of the process goes over one multiplexed connection, so operations issued at once
/// travel in one write and are answered in one read: under load that halves the CPU Redis spends per
/// job, against a pool of connections used one operation at a time (BENCHMARKS.md, "Throughput").
/// With `--redis-replica-acks`, a second connection carries the WAITs ([`crate::replication`]).
#[derive(Clone)]
pub struct RedisStore {
    link: Arc<Link>,
    keys: Keys,
    /// Waits for the replicas that must hold a new or final record before the write counts
    /// (`--redis-replica-acks`, see [`crate::replication`]); `None` when none must.
    waiter: Option<Arc<Waiter>>,
}

/// Longest wait for the replicas named by `--redis-replica-acks` to hold a write; past it the write
/// counts as failed (`unavailable`), and is tried again (by the worker) or refused (by the server).
pub const REPLICA_WAIT: Duration = Duration::from_secs(1);

/// Shortest gap between two questions to Sentinel about the primary, while operations keep failing.
const SENTINEL_ASK_EVERY: Duration = Duration::from_millis(200);

/// Where the store's Redis is.
enum Source {
    /// One Redis at a fixed address.
    Direct,
    /// The primary that Sentinel names for a master name: asked again whenever operations fail, so
    /// the store follows a failover.
    Sentinel(Box<tokio::sync::Mutex<SentinelClient>>),
}

/// The connection in use.
#[derive(Clone)]
struct Current {
    /// Bumped by every replacement, so that of many operations that fail on the same connection only
    /// the first replaces it.
    generation: u64,
    manager: ConnectionManager,
    /// A second connection to the same Redis, for WAIT, which blocks the connection it is sent on
    /// (see [`crate::replication`]); it connects when first used.
    waiting: ConnectionManager,
    /// The Redis it goes to.
    client: redis::Client,
    /// The same, as `host:port`.
    address: String,
}

/// The shared connection, and what it takes to replace it.
struct Link {
    source: Source,
    current: RwLock<Current>,
    /// Set while a question to Sentinel is under way (and a little after), so a burst of failures
    /// asks once.
    asking: AtomicBool,
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

    fn connect_to(client: &redis::Client, generation: u64) -> Result<Current, StoreError> {
        Ok(Current {
            generation,
            manager: Self::manager(client)?,
            waiting: Self::manager(client)?,
            client: client.clone(),
            address: client.get_connection_info().addr().to_string(),
        })
    }

    fn current(&self) -> Current {
        self.current
            .read()
            .expect("connection lock never poisoned")
            .clone()
    }

    /// Drops the connection of `generation` for a new one to `client` (by default, the same Redis).
    /// The crate reconnects by itself when the connection breaks, but not when it stays open and
    /// silent (a peer gone without a reset), nor to another address.
    fn replace(&self, generation: u64, client: Option<&redis::Client>) {
        let mut current = self
            .current
            .write()
            .expect("connection lock never poisoned");
        if current.generation != generation {
            return;
        }
        let client = client.unwrap_or(&current.client).clone();
        match Self::connect_to(&client, generation + 1) {
            Ok(next) => {
                if next.address != current.address {
                    tracing::warn!(
                        from = %current.address,
                        to = %next.address,
                        "redis primary changed; following it"
                    );
                }
                *current = next;
            }
            Err(e) => tracing::warn!(error = %e, "could not replace the redis connection"),
        }
    }

    /// After a failed operation on `generation`: with Sentinel, asks it (in the background, at most
    /// every [`SENTINEL_ASK_EVERY`]) which Redis is the primary now, and moves there if it moved. A
    /// connection to a primary that died fails every operation until then; one to a primary that
    /// came back as a replica answers writes with READONLY.
    fn failed(self: &Arc<Self>, generation: u64) {
        let Source::Sentinel(_) = &self.source else {
            return;
        };
        if self.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = self.clone();
        tokio::spawn(async move {
            let asked = async {
                let Source::Sentinel(sentinel) = &link.source else {
                    unreachable!("checked above");
                };
                sentinel.lock().await.async_get_client().await
            };
            match tokio::time::timeout(OPERATION_TIMEOUT, asked).await {
                Ok(Ok(client)) => {
                    let address = client.get_connection_info().addr().to_string();
                    if address != link.current().address {
                        link.replace(generation, Some(&client));
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "sentinel could not name the redis primary")
                }
                Err(_) => tracing::warn!("sentinel did not name the redis primary in time"),
            }
            tokio::time::sleep(SENTINEL_ASK_EVERY).await;
            link.asking.store(false, Ordering::Release);
        });
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
        let current = Link::connect_to(&client, 0)?;
        Ok(Self {
            link: Arc::new(Link {
                source: Source::Direct,
                current: RwLock::new(current),
                asking: AtomicBool::new(false),
            }),
            keys,
            waiter: None,
        })
    }

    /// The store the backend settings name: the Redis of `--redis-url`, or the primary that the
    /// Sentinels of `--redis-sentinel` name (with `--redis-url`'s user, password and database), with
    /// `--redis-replica-acks`. Asks Sentinel at once, and checks that the Redis answers.
    pub async fn open(backend: &BackendArgs) -> Result<Self, OpenError> {
        let sentinels = backend.sentinels().map_err(|e| OpenError {
            redis: "--redis-sentinel".into(),
            error: e.to_string(),
            transient: false,
        })?;
        let redis = if sentinels.is_empty() {
            redact_url(backend.redis_url())
        } else {
            format!(
                "the primary {:?} of the sentinels {}",
                backend.redis_master_name.as_deref().unwrap_or_default(),
                backend.redis_sentinel.as_deref().unwrap_or_default()
            )
        };
        let failed = |e: redis::RedisError| OpenError::from_redis(&redis, &e);
        let mut store = if sentinels.is_empty() {
            Self::new(backend.redis_url(), backend.keys()).map_err(|e| OpenError {
                redis: redis.clone(),
                error: e.to_string(),
                transient: false,
            })?
        } else {
            let master_name = backend.redis_master_name.clone().unwrap_or_default();
            let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
            let mut builder = SentinelClientBuilder::new(
                sentinels
                    .into_iter()
                    .map(|(host, port)| redis::ConnectionAddr::Tcp(host, port)),
                master_name,
                SentinelServerType::Master,
            )
            .map_err(failed)?
            .set_client_to_redis_tcp_settings(nodelay.clone())
            .set_client_to_sentinel_tcp_settings(nodelay);
            if let Some(url) = &backend.redis_url {
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(failed)?;
                let settings = info.redis_settings();
                builder = builder.set_client_to_redis_db(settings.db());
                if let Some(username) = settings.username() {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = settings.password() {
                    builder = builder.set_client_to_redis_password(password);
                }
            }
            let mut sentinel = builder.build().map_err(failed)?;
            let client = tokio::time::timeout(OPERATION_TIMEOUT, sentinel.async_get_client())
                .await
                .map_err(|_| OpenError {
                    redis: redis.clone(),
                    error: "no sentinel named the primary in time".into(),
                    transient: true,
                })?
                .map_err(failed)?;
            let current = Link::connect_to(&client, 0).map_err(|e| OpenError {
                redis: redis.clone(),
                error: e.to_string(),
                transient: false,
            })?;
            Self {
                link: Arc::new(Link {
                    source: Source::Sentinel(Box::new(tokio::sync::Mutex::new(sentinel))),
                    current: RwLock::new(current),
                    asking: AtomicBool::new(false),
                }),
                keys: backend.keys(),
                waiter: None,
            }
        };
        store = store.with_replica_acks(backend.redis_replica_acks);
        // Asked directly rather than through `run`, so that the error says whether waiting may help.
        let mut conn = store.link.current().manager;
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(OPERATION_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(failed(e)),
            Err(_) => Err(OpenError {
                redis,
                error: "no answer in time".into(),
                transient: true,
            }),
        }
    }

    /// `host:port` of the Redis in use (the primary, with Sentinel).
    pub fn address(&self) -> String {
        self.link.current().address
    }

    /// Sets the replicas each new and final record waits for (0: none). With any, starts the task
    /// that waits for them, so it must be called within a Tokio runtime.
    pub fn with_replica_acks(mut self, replicas: u32) -> Self {
        self.waiter = (replicas > 0).then(|| {
            Arc::new(Waiter::start(
                format!("{}replication-tick", self.keys.prefix()),
                replicas,
            ))
        });
        self
    }

    /// What the Redis in use keeps on disk, from `CONFIG GET appendonly` and `CONFIG GET save`.
    pub async fn persistence(&self) -> Persistence {
        let read = self
            .run(|mut conn| async move {
                let mut pipe = redis::pipe();
                pipe.cmd("CONFIG").arg("GET").arg("appendonly");
                pipe.cmd("CONFIG").arg("GET").arg("save");
                let (appendonly, save): (Vec<String>, Vec<String>) =
                    pipe.query_async(&mut conn).await?;
                Ok((appendonly, save))
            })
            .await;
        match read {
            Ok((appendonly, save)) => {
                let (Some(appendonly), Some(save)) = (appendonly.get(1), save.get(1)) else {
                    return Persistence::Unknown("CONFIG GET answered without a value".into());
                };
                let save = save.trim().to_owned();
                match (appendonly.as_str(), save.is_empty()) {
                    ("yes", _) => Persistence::AppendOnly { save },
                    (_, false) => Persistence::Snapshots { save },
                    (_, true) => Persistence::Nothing,
                }
            }
            Err(e) => Persistence::Unknown(e.to_string()),
        }
    }

    /// Reads what Redis keeps on disk and says it in the log: a WARN when it keeps nothing (or when
    /// that cannot be read), since a Redis restart then loses every job a client holds an ID of.
    pub async fn check_persistence(&self) -> Persistence {
        let persistence = self.persistence().await;
        let redis = self.address();
        match &persistence {
            Persistence::AppendOnly { save } => tracing::info!(
                %redis, save = %save,
                "redis keeps an append-only file (appendonly yes): a restart keeps job records"
            ),
            Persistence::Snapshots { save } => tracing::warn!(
                %redis, save = %save,
                "redis keeps only snapshots (appendonly no): a crash loses the job records written \
                 since the last snapshot, and clients resuming those jobs get not_found; set \
                 appendonly yes (docs/deploy.md)"
            ),
            Persistence::Nothing => tracing::warn!(
                %redis,
                "redis keeps NOTHING on disk (appendonly no, save \"\"): a restart loses every job \
                 record and stored result, and clients resuming those jobs get not_found; set \
                 appendonly yes (docs/deploy.md)"
            ),
            Persistence::Unknown(reason) => tracing::warn!(
                %redis, %reason,
                "cannot tell whether redis keeps job records on disk: CONFIG GET was refused; make \
                 sure it runs with appendonly yes (docs/deploy.md)"
            ),
        }
        persistence
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// One try of [`JobStore::finish`] with the output's `digest` (if it has one) and its stored form
    /// (`blob`, empty to refer to a stored output only); `None` when Redis does not hold the output
    /// and `blob` was empty.
    async fn finish_once(
        &self,
        id: &JobId,
        record: &JobRecord,
        digest: Option<&str>,
        blob: &[u8],
    ) -> Result<Option<Finish>, StoreError> {
        let job = self.keys.job(id);
        let watchers = self.keys.watchers(id);
        let pending = self.keys.webhooks();
        let output = digest.map(|digest| self.keys.output(digest));
        let mut invocation = FINISH.key(&job);
        invocation.key(&watchers).key(&pending);
        if let Some(output) = &output {
            invocation.key(output);
        }
        invocation
            .arg(self.keys.prefix())
            .arg(id.as_hyphenated().to_string())
            .arg(herald_protocol::unix_ms())
            .arg(blob);
        for (field, value) in record.to_fields() {
            if field != "output" {
                invocation.arg(field).arg(value);
            }
        }
        if let Some(digest) = digest {
            invocation.arg("output_digest").arg(digest);
        }
        self.run_writing(|mut conn, replicas| async move {
            let reply: Vec<redis::Value> = invocation.invoke_async(&mut conn).await?;
            // An already final record is waited for too: it may be this worker's own earlier
            // write, whose wait fell short.
            if let Some(replicas) = replicas {
                replicas.hold_writes().await?;
            }
            let mut reply = reply.into_iter();
            let outcome: i64 = match reply.next() {
                Some(v) => redis::from_redis_value(v)?,
                None => return Err(RecordError::Inconsistent("empty reply from finish").into()),
            };
            Ok(Some(match outcome {
                -1 => Finish::Missing,
                0 => Finish::AlreadyFinal,
                2 => return Ok(None),
                _ => Finish::Applied {
                    watchers: reply
                        .map(redis::from_redis_value)
                        .collect::<Result<_, _>>()?,
                },
            }))
        })
        .await
    }

    pub(crate) async fn run<T, F>(
        &self,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        self.run_writing(|conn, _| f(conn)).await
    }

    /// As [`RedisStore::run`], for a write that must be held by `--redis-replica-acks` replicas:
    /// `f` also gets what waits for them (`None` when none are required), on the same Redis as
    /// the connection it is given.
    pub(crate) async fn run_writing<'a, T, F>(
        &'a self,
        f: impl FnOnce(ConnectionManager, Option<Replicas<'a>>) -> F,
    ) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let Current {
            generation,
            manager,
            waiting,
            ..
        } = self.link.current();
        let replicas = self.waiter.as_deref().map(|waiter| Replicas {
            waiter,
            generation,
            manager: waiting,
        });
        match tokio::time::timeout(OPERATION_TIMEOUT, f(manager, replicas)).await {
            Ok(Err(StoreError::Unavailable(reason))) => {
                self.link.failed(generation);
                Err(StoreError::Unavailable(reason))
            }
            Ok(result) => result,
            Err(_) => {
                match self.link.source {
                    Source::Direct => self.link.replace(generation, None),
                    Source::Sentinel(_) => self.link.failed(generation),
                }
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
        limits: &ClientLimits,
    ) -> Result<Admission, StoreError> {
        let job = self.keys.job(id);
        let watchers = self.keys.watchers(id);
        // A record without a client is counted under a name no client has.
        let client = record.client.as_deref().unwrap_or("-");
        let prefix = self.keys.prefix();
        let books = ["active", "jobs", "outputs", "sizes", "bytes"]
            .map(|what| clients::key(prefix, client, what));
        let unlimited = ClientLimits::default();
        let limits = if record.client.is_some() {
            limits
        } else {
            &unlimited
        };
        let mut invocation = clients::ADMIT.key(&job);
        invocation.key(&watchers);
        for key in &books {
            invocation.key(key);
        }
        invocation
            .arg(herald_protocol::unix_ms())
            .arg(ttl.as_millis() as u64)
            .arg(id.as_hyphenated().to_string())
            .arg(watcher.unwrap_or(""))
            .arg(limits.max_queued)
            .arg(limits.max_jobs)
            .arg(limits.max_stored_bytes);
        for (field, value) in record.to_fields() {
            invocation.arg(field).arg(value);
        }
        let prefix = prefix.to_owned();
        self.run_writing(|mut conn, replicas| async move {
            let reply: Vec<u64> = invocation.invoke_async(&mut conn).await?;
            let admission = match reply.as_slice() {
                [0] => Admission::Created,
                [1, held] => Admission::Refused(OverQuota::Queued(*held)),
                [2, held] => Admission::Refused(OverQuota::Jobs(*held)),
                [3, held] => Admission::Refused(OverQuota::StoredBytes(*held)),
                _ => return Err(RecordError::Inconsistent("unexpected reply from create").into()),
            };
            if let (Admission::Created, Some(replicas)) = (admission, replicas) {
                if let Err(e) = replicas.hold_writes().await {
                    // Nobody has the ID yet: take the record back rather than leave it queued
                    // forever.
                    let _: Result<(), _> = clients::FORGET
                        .key(&job)
                        .key(&watchers)
                        .arg(&prefix)
                        .arg(id.as_hyphenated().to_string())
                        .invoke_async(&mut conn)
                        .await;
                    return Err(e);
                }
            }
            Ok(admission)
        })
        .await
    }

    async fn delete(&self, id: &JobId) -> Result<(), StoreError> {
        let job = self.keys.job(id);
        let watchers = self.keys.watchers(id);
        let prefix = self.keys.prefix();
        self.run(|mut conn| async move {
            clients::FORGET
                .key(&job)
                .key(&watchers)
                .arg(prefix)
                .arg(id.as_hyphenated().to_string())
                .invoke_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let job = self.keys.job(id);
        let prefix = self.keys.prefix();
        let reply: Vec<redis::Value> =
            self.run(|mut conn| async move {
                Ok(READ.key(&job).arg(prefix).invoke_async(&mut conn).await?)
            })
            .await?;
        record_with_output(reply).await
    }

    async fn resume(
        &self,
        id: &JobId,
        watcher: &str,
        identity: Option<&str>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let job = self.keys.job(id);
        let watchers = self.keys.watchers(id);
        let prefix = self.keys.prefix();
        let reply: Vec<redis::Value> = self
            .run(|mut conn| async move {
                let mut invocation = RESUME.key(&job);
                invocation.key(&watchers).arg(prefix).arg(watcher);
                if let Some(identity) = identity {
                    invocation.arg(identity);
                }
                Ok(invocation.invoke_async(&mut conn).await?)
            })
            .await?;
        record_with_output(reply).await
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
        let digest = match &record.output {
            Some(output) => Some(output::digest_async(output).await),
            None => None,
        };
        // The output is sent only if Redis does not hold it yet (a result reused from the cache, or
        // another job's equal output, is only referred to).
        let mut blob = Vec::new();
        loop {
            match self
                .finish_once(id, record, digest.as_deref(), &blob)
                .await?
            {
                None => {
                    let output = record.output.as_ref().expect("asked only with an output");
                    blob = output::encode_async(output).await.blob;
                }
                Some(finish) => return Ok(finish),
            }
        }
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
        let prefix = self.keys.prefix();
        let pending = self.keys.webhooks();
        self.run(|mut conn| async move {
            let mut invocation = CANCEL.key(&job);
            invocation
                .key(&watchers)
                .key(&pending)
                .arg(now_ms)
                .arg(watcher.unwrap_or(""))
                .arg(prefix)
                .arg(id.as_hyphenated().to_string());
            if let Some(identity) = identity {
                invocation.arg(identity);
            }
            let reply: Vec<redis::Value> = invocation.invoke_async(&mut conn).await?;
            cancel_from(reply, now_ms)
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
        let prefix = self.keys.prefix();
        let blob: Option<Vec<u8>> = self
            .run(|mut conn| async move {
                Ok(CACHED.key(&key).arg(prefix).invoke_async(&mut conn).await?)
            })
            .await?;
        // A damaged entry is no result: the job is computed instead.
        match blob {
            Some(blob) => Ok(output::decode_async(blob).await.ok()),
            None => Ok(None),
        }
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
        let digest = output::digest_async(output).await;
        let stored = self.keys.output(&digest);
        // The output itself is sent only if Redis does not hold it yet.
        let mut blob = Vec::new();
        loop {
            let (job, key, stored, digest, sent) = (&job, &key, &stored, &digest, &blob);
            let answer: u8 = self
                .run(|mut conn| async move {
                    Ok(STORE_RESULT
                        .key(job)
                        .key(key)
                        .key(stored)
                        .arg(digest)
                        .arg(sent)
                        .invoke_async(&mut conn)
                        .await?)
                })
                .await?;
            if answer != 2 || !blob.is_empty() {
                return Ok(());
            }
            blob = output::encode_async(output).await.blob;
        }
    }
}

/// What a cancel's script answered.
fn cancel_from(reply: Vec<redis::Value>, now_ms: u64) -> Result<Cancel, StoreError> {
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
}

/// A record as the `READ` and `RESUME` scripts answer it: its fields, and its stored output if it
/// refers to one (decoded here). A record whose output is gone reads without it.
pub(crate) async fn record_with_output(
    reply: Vec<redis::Value>,
) -> Result<Option<JobRecord>, StoreError> {
    let mut reply = reply.into_iter();
    let fields: HashMap<String, String> = match reply.next() {
        Some(fields) => redis::from_redis_value(fields)?,
        None => return Ok(None),
    };
    let blob: Option<Vec<u8>> = match reply.next() {
        Some(blob) => redis::from_redis_value(blob)?,
        None => None,
    };
    let Some(mut record) = record_from(fields)? else {
        return Ok(None);
    };
    if let Some(blob) = blob {
        record.output = Some(output::decode_async(blob).await?);
    }
    Ok(Some(record))
}

fn record_from(fields: HashMap<String, String>) -> Result<Option<JobRecord>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(JobRecord::from_fields(fields)?))
}
