//! Pending webhook deliveries in Redis: a sorted set of job IDs scored by when each is due, in Redis's
//! own clock (`TIME`), so that instances whose clocks differ agree on what is due. Claiming one moves
//! its score past the lease, which is the lease: an instance that dies leaves it due again then.
//! The attempts are counted in the job's hash (`webhook_attempts`).

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::JobId;
use redis::Script;

use crate::backend::StoreError;
use crate::deliveries::{Attempt, DeliveryStore, KEEP_PAST_RETRY};
use crate::store::{record_with_output, RedisStore};

// KEYS[1] the pending set, ARGV[1] most to claim, ARGV[2] lease (ms). Returns the IDs claimed.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id) end
return due
",
    )
});

// KEYS[1] the job, ARGV[1] the store's prefix. Returns nil when it is gone, else {attempt, {field,
// value...}, the stored output if it has one}.
static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local attempt = redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1)
local digest = redis.call('HGET', KEYS[1], 'output_digest')
if digest then
  return {attempt, redis.call('HGETALL', KEYS[1]), redis.call('GET', ARGV[1] .. 'output:' .. digest)}
end
return {attempt, redis.call('HGETALL', KEYS[1])}
",
    )
});

// KEYS[1] the pending set, KEYS[2] the job, ARGV[1] its ID, ARGV[2] delay (ms), ARGV[3] how long past
// it to keep the job (ms), ARGV[4] the store's prefix. XX: a delivery completed meanwhile (by an
// instance whose lease had run out) is not brought back. The job's stored output is kept as long.
static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
local keep = tonumber(ARGV[2]) + tonumber(ARGV[3])
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 and ttl < keep then
  redis.call('PEXPIRE', KEYS[2], keep)
  local digest = redis.call('HGET', KEYS[2], 'output_digest')
  if digest then
    local output = ARGV[4] .. 'output:' .. digest
    local left = redis.call('PTTL', output)
    if left >= 0 and left < keep then redis.call('PEXPIRE', output, keep) end
  end
end
",
    )
});

#[async_trait]
impl DeliveryStore for RedisStore {
    async fn claim_due(&self, max: usize, lease: Duration) -> Result<Vec<JobId>, StoreError> {
        let pending = self.keys().webhooks();
        let ids: Vec<String> = self
            .run(|mut conn| async move {
                Ok(CLAIM
                    .key(&pending)
                    .arg(max)
                    .arg(lease.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        // A member that is not an ID was not written by Herald: it is left alone, and never sent.
        Ok(ids
            .iter()
            .filter_map(|id| JobId::try_parse(id).ok())
            .collect())
    }

    async fn begin_attempt(&self, id: &JobId) -> Result<Option<Attempt>, StoreError> {
        let job = self.keys().job(id);
        let prefix = self.keys().prefix().to_owned();
        let reply: Option<Vec<redis::Value>> = self
            .run(|mut conn| async move {
                Ok(BEGIN.key(&job).arg(prefix).invoke_async(&mut conn).await?)
            })
            .await?;
        let Some(reply) = reply else {
            return Ok(None);
        };
        let mut reply = reply.into_iter();
        let number: u32 = match reply.next() {
            Some(v) => redis::from_redis_value(v)?,
            None => return Ok(None),
        };
        // The record with its output read back (`webhook_attempts` is not a record's field: it is
        // left out as any field the record does not know).
        let Some(record) = record_with_output(reply.collect()).await? else {
            return Ok(None);
        };
        Ok(Some(Attempt { record, number }))
    }

    async fn complete(&self, id: &JobId) -> Result<(), StoreError> {
        let pending = self.keys().webhooks();
        let member = id.as_hyphenated().to_string();
        self.run(|mut conn| async move {
            redis::cmd("ZREM")
                .arg(&pending)
                .arg(&member)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    async fn retry_after(&self, id: &JobId, delay: Duration) -> Result<(), StoreError> {
        let pending = self.keys().webhooks();
        let job = self.keys().job(id);
        let prefix = self.keys().prefix().to_owned();
        let member = id.as_hyphenated().to_string();
        self.run(|mut conn| async move {
            RETRY
                .key(&pending)
                .key(&job)
                .arg(&member)
                .arg(delay.as_millis() as u64)
                .arg(KEEP_PAST_RETRY.as_millis() as u64)
                .arg(&prefix)
                .invoke_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }
}
