//! Idempotency keys in Redis: one Lua script reads the key and either answers with the job it names
//! or writes the key and the new job's record, so Redis applies the whole decision atomically.
//!
//! The key's value is `<job id> <fingerprint>`, expiring with the record. The script reaches the
//! named job's hash through the key layout's prefixes: Herald runs on one Redis (or one Sentinel
//! primary), never Redis Cluster, where every key a script touches must be declared.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{JobId, JobRecord, RecordError};
use redis::Script;

use crate::backend::{ClientLimits, OverQuota, StoreError};
use crate::clients;
use crate::idempotency::{IdempotencyStore, Key, Keyed};
use crate::store::{record_with_output, RedisStore};

// KEYS[1] the idempotency key, KEYS[2] the new job, KEYS[3] its watchers, KEYS[4..8] its client's
// counts (active, jobs, outputs, sizes, bytes; see `crate::clients`). ARGV[1] the new ID, ARGV[2] the
// fingerprint, ARGV[3] TTL (ms), ARGV[4] watcher of the new job ('' for none), ARGV[5] the prefix of
// job keys, ARGV[6] the store's prefix, ARGV[7] now (ms), ARGV[8..10] the client's quotas (max
// queued, max jobs, max stored bytes; 0: none), then the record's field/value pairs.
// Returns {0} created, {1, id, {field, value...}, the stored output if it has one} existing, {2}
// conflict, {3, quota, what it holds} refused: the client is at a quota (checked only when a job
// would be created: a repeat of a key is answered whatever the client holds).
static CREATE_KEYED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            r"
local held = redis.call('GET', KEYS[1])
if held then
  local id, print = string.match(held, '^(%S+) (%S+)$')
  if id then
    local job = ARGV[5] .. id
    local status = redis.call('HGET', job, 'status')
    if status then
      if print ~= ARGV[2] then return {2} end
      local digest = redis.call('HGET', job, 'output_digest')
      if digest then
        return {1, id, redis.call('HGETALL', job), redis.call('GET', ARGV[6] .. 'output:' .. digest)}
      end
      return {1, id, redis.call('HGETALL', job)}
    end
  end
end
local active, jobs, outputs, sizes, bytes = KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local now, ttl, id = tonumber(ARGV[7]), tonumber(ARGV[3]), ARGV[1]
local max_queued, max_jobs, max_bytes = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
",
            crate::clients::CHECK_LUA,
            r"
if refused then return {3, refused[1], refused[2]} end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], unpack(ARGV, 11))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
",
            crate::clients::ENTER_LUA,
            r"
return {0}
",
        ]
        .concat(),
    )
});

// KEYS[1] the idempotency key, KEYS[2] the job, KEYS[3] its watchers, ARGV[1] the job's ID, ARGV[2]
// the store's prefix. The job leaves its client's counts too, as `crate::clients::FORGET`.
static DELETE_KEYED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then redis.call('DEL', KEYS[1]) end
local client = redis.call('HGET', KEYS[2], 'client')
if client then
  local book = ARGV[2] .. 'client:' .. client
  redis.call('ZREM', book .. ':active', ARGV[1])
  redis.call('ZREM', book .. ':jobs', ARGV[1])
end
redis.call('DEL', KEYS[2], KEYS[3])
",
    )
});

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn create_keyed(
        &self,
        key: Key<'_>,
        id: &JobId,
        record: &JobRecord,
        watcher: Option<&str>,
        ttl: Duration,
        limits: &ClientLimits,
    ) -> Result<Keyed, StoreError> {
        let keys = self.keys();
        // A record without a client is counted under a name no client has, without limits (as
        // `JobStore::create`).
        let client = record.client.as_deref().unwrap_or("-");
        let unlimited = ClientLimits::default();
        let limits = if record.client.is_some() {
            limits
        } else {
            &unlimited
        };
        let mut invocation = CREATE_KEYED.key(keys.idempotency(key.scope, key.key));
        invocation.key(keys.job(id)).key(keys.watchers(id));
        for what in ["active", "jobs", "outputs", "sizes", "bytes"] {
            invocation.key(clients::key(keys.prefix(), client, what));
        }
        invocation
            .arg(id.as_hyphenated().to_string())
            .arg(key.fingerprint)
            .arg(ttl.as_millis() as u64)
            .arg(watcher.unwrap_or(""))
            .arg(keys.job_prefix())
            .arg(keys.prefix())
            .arg(herald_protocol::unix_ms())
            .arg(limits.max_queued)
            .arg(limits.max_jobs)
            .arg(limits.max_stored_bytes);
        for (field, value) in record.to_fields() {
            invocation.arg(field).arg(value);
        }
        let reply: Vec<redis::Value> = self
            .run_writing(|mut conn, replicas| async move {
                let reply = invocation.invoke_async(&mut conn).await?;
                // As a new record without a key: the job counts as created once the replicas
                // hold it.
                if let Some(replicas) = replicas {
                    replicas.hold_writes().await?;
                }
                Ok(reply)
            })
            .await?;
        let mut reply = reply.into_iter();
        let outcome: i64 = match reply.next() {
            Some(v) => redis::from_redis_value(v)?,
            None => return Err(RecordError::Inconsistent("empty reply from a keyed create").into()),
        };
        match outcome {
            0 => Ok(Keyed::Created),
            1 => {
                let existing: String = match reply.next() {
                    Some(v) => redis::from_redis_value(v)?,
                    None => return Err(RecordError::Missing("id").into()),
                };
                let existing = JobId::try_parse(&existing)
                    .map_err(|_| RecordError::Invalid("idempotency key", existing))?;
                // The record (with its output read back, as a resume would) or, should it have
                // expired between the two reads of the script, none.
                let Some(record) = record_with_output(reply.collect()).await? else {
                    return Err(RecordError::Missing("status").into());
                };
                Ok(Keyed::Existing {
                    id: existing,
                    record: Box::new(record),
                })
            }
            3 => {
                let numbers: Vec<u64> = reply
                    .map(redis::from_redis_value)
                    .collect::<Result<_, _>>()?;
                match numbers.as_slice() {
                    [1, held] => Ok(Keyed::Refused(OverQuota::Queued(*held))),
                    [2, held] => Ok(Keyed::Refused(OverQuota::Jobs(*held))),
                    [3, held] => Ok(Keyed::Refused(OverQuota::StoredBytes(*held))),
                    _ => Err(
                        RecordError::Inconsistent("unexpected reply from a keyed create").into(),
                    ),
                }
            }
            _ => Ok(Keyed::Conflict),
        }
    }

    async fn delete_keyed(&self, key: Key<'_>, id: &JobId) -> Result<(), StoreError> {
        let keys = self.keys();
        let mut invocation = DELETE_KEYED.key(keys.idempotency(key.scope, key.key));
        invocation
            .key(keys.job(id))
            .key(keys.watchers(id))
            .arg(id.as_hyphenated().to_string())
            .arg(keys.prefix());
        self.run(|mut conn| async move {
            invocation.invoke_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }
}
