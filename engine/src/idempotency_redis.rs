//! Idempotency keys in Redis: one Lua script reads the key and either answers with the job it names
//! or writes the key and the new job's record, so Redis applies the whole decision atomically.
//!
//! The key's value is `<job id> <fingerprint>`, expiring with the record. The script reaches the
//! named job's hash through the key layout's prefixes: Herald runs on one Redis (or one Sentinel
//! primary), never Redis Cluster, where every key a script touches must be declared.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{JobId, JobRecord, RecordError};
use redis::Script;

use crate::backend::StoreError;
use crate::idempotency::{IdempotencyStore, Key, Keyed};
use crate::store::RedisStore;

// KEYS[1] the idempotency key, KEYS[2] the new job, KEYS[3] its watchers. ARGV[1] the new ID,
// ARGV[2] the fingerprint, ARGV[3] TTL (ms), ARGV[4] watcher of the new job ('' for none), ARGV[5] the
// prefix of job keys, then the record's field/value pairs.
// Returns {0} created, {1, id, field, value...} existing, {2} conflict.
static CREATE_KEYED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held then
  local id, print = string.match(held, '^(%S+) (%S+)$')
  if id then
    local job = ARGV[5] .. id
    local status = redis.call('HGET', job, 'status')
    if status then
      if print ~= ARGV[2] then return {2} end
      local reply = {1, id}
      local fields = redis.call('HGETALL', job)
      for i = 1, #fields do table.insert(reply, fields[i]) end
      return reply
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return {0}
",
    )
});

// KEYS[1] the idempotency key, KEYS[2] the job, KEYS[3] its watchers, ARGV[1] the job's ID.
static DELETE_KEYED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then redis.call('DEL', KEYS[1]) end
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
    ) -> Result<Keyed, StoreError> {
        let keys = self.keys();
        let mut invocation = CREATE_KEYED.key(keys.idempotency(key.scope, key.key));
        invocation
            .key(keys.job(id))
            .key(keys.watchers(id))
            .arg(id.as_hyphenated().to_string())
            .arg(key.fingerprint)
            .arg(ttl.as_millis() as u64)
            .arg(watcher.unwrap_or(""))
            .arg(keys.job_prefix());
        for (field, value) in record.to_fields() {
            invocation.arg(field).arg(value);
        }
        let replica_acks = self.replica_acks();
        let reply: Vec<redis::Value> = self
            .run(|mut conn| async move {
                if replica_acks == 0 {
                    return Ok(invocation.invoke_async(&mut conn).await?);
                }
                // As a new record without a key: the job counts as created once the replicas hold it.
                let mut pipe = redis::pipe();
                pipe.invoke_script(&invocation);
                crate::store::wait_for_replicas(&mut pipe, replica_acks);
                let answered: Result<(Vec<redis::Value>, u32), _> =
                    pipe.query_async(&mut conn).await;
                let (reply, acked) = match answered {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        invocation.load_async(&mut conn).await?;
                        pipe.query_async(&mut conn).await?
                    }
                    answered => answered?,
                };
                crate::store::replicas_acknowledged(acked, replica_acks)?;
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
                let values: Vec<String> = reply
                    .map(redis::from_redis_value)
                    .collect::<Result<_, _>>()?;
                let fields: HashMap<String, String> = values
                    .chunks_exact(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect();
                Ok(Keyed::Existing {
                    id: existing,
                    record: Box::new(JobRecord::from_fields(fields)?),
                })
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
            .arg(id.as_hyphenated().to_string());
        self.run(|mut conn| async move {
            invocation.invoke_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }
}
