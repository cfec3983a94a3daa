//! Each client's share of the store and of the workers: its jobs queued or running, its jobs kept,
//! and the bytes of the outputs its jobs refer to, counted atomically with the job's creation, end
//! and expiry, and checked against its quotas when it submits.
//!
//! A client is the `client` of its job records (`id:<identity>` or `ip:<address>`). Nothing is a
//! bare counter that a lost decrement would leave wrong forever: each count is a set of job IDs (or
//! output digests) with their expiry, so an entry whose job expired, or whose worker died and never
//! finished it, leaves the count when its expiry passes.
//!
//! In Redis, per client under the store's prefix: `client:<client>:active` and `client:<client>:jobs`
//! (sorted sets of job IDs scored by their record's expiry, ms), `client:<client>:outputs` (sorted
//! set of output digests scored by the expiry of the client's longest-lived record referring to it),
//! `client:<client>:sizes` (digest → stored bytes) and `client:<client>:bytes` (their sum). Each key
//! expires with the client's last entry. The embedded store keeps the same in [`ClientBooks`].

use std::collections::HashMap;
use std::sync::LazyLock;

use herald_protocol::JobId;
use redis::Script;
use tokio::time::Instant;

/// One client's quotas (0: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientLimits {
    /// Jobs queued or running at once (`--max-queued-per-client`).
    pub max_queued: u32,
    /// Jobs kept, finished or not, until their records expire (`--max-jobs-per-client`).
    pub max_jobs: u32,
    /// Bytes of stored outputs its kept jobs refer to, each distinct output counted once, as stored
    /// (compressed) (`--max-stored-bytes-per-client`).
    pub max_stored_bytes: u64,
}

/// The quota a submit would go past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverQuota {
    /// The client has this many jobs queued or running.
    Queued(u64),
    /// The client has this many jobs kept.
    Jobs(u64),
    /// The client's kept jobs refer to this many bytes of stored outputs.
    StoredBytes(u64),
}

/// What creating a job's record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Stored.
    Created,
    /// Not stored: the client is at one of its quotas.
    Refused(OverQuota),
}

/// The name of one of `client`'s keys under `prefix` (`what`: `active`, `jobs`, …).
pub(crate) fn key(prefix: &str, client: &str, what: &str) -> String {
    format!("{prefix}client:{client}:{what}")
}

/// The Lua that drops a client's expired entries, then checks its quotas: sets the local `refused`
/// to `{quota (1 queued, 2 jobs, 3 bytes), what it holds}` if the client is at one, else `nil`.
/// Needs as locals the client's key names `active`, `jobs`, `outputs`, `sizes`, `bytes`, and `now`
/// (ms), `max_queued`, `max_jobs`, `max_bytes` (0: none), as numbers.
pub(crate) const CHECK_LUA: &str = r"
redis.call('ZREMRANGEBYSCORE', active, '-inf', now)
redis.call('ZREMRANGEBYSCORE', jobs, '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', outputs, '-inf', now)
for _, digest in ipairs(gone) do
  local size = redis.call('HGET', sizes, digest)
  if size then
    redis.call('DECRBY', bytes, size)
    redis.call('HDEL', sizes, digest)
  end
end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', outputs, '-inf', now) end
local refused = nil
local queued = redis.call('ZCARD', active)
local kept = redis.call('ZCARD', jobs)
local held = tonumber(redis.call('GET', bytes) or '0')
if max_queued > 0 and queued >= max_queued then refused = {1, queued}
elseif max_jobs > 0 and kept >= max_jobs then refused = {2, kept}
elseif max_bytes > 0 and held >= max_bytes then refused = {3, held} end
";

/// The Lua that counts a new job `id` (a string), expiring `ttl` ms after `now`, among its
/// client's jobs queued or running and its jobs kept. Needs the locals of [`CHECK_LUA`] and `id`,
/// `ttl`.
pub(crate) const ENTER_LUA: &str = r"
redis.call('ZADD', active, now + ttl, id)
redis.call('ZADD', jobs, now + ttl, id)
for _, book in ipairs({active, jobs}) do
  if redis.call('PTTL', book) < ttl then redis.call('PEXPIRE', book, ttl) end
end
";

// Drops the client's expired entries, then checks its quotas, then stores the record.
// KEYS[1] job, KEYS[2] watchers, KEYS[3] active, KEYS[4] jobs, KEYS[5] outputs, KEYS[6] sizes,
// KEYS[7] bytes. ARGV[1] now (ms), ARGV[2] ttl (ms), ARGV[3] id, ARGV[4] watcher ('' for none),
// ARGV[5] max queued, ARGV[6] max jobs, ARGV[7] max stored bytes (0: none), then the record's
// field/value pairs. Returns {0} created, or {quota (1 queued, 2 jobs, 3 bytes), what it holds}.
pub(crate) static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            r"
local active, jobs, outputs, sizes, bytes = KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now, ttl, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local max_queued, max_jobs, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
",
            CHECK_LUA,
            r"
if refused then return refused end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ttl)
if ARGV[4] ~= '' then
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
",
            ENTER_LUA,
            r"
return {0}
",
        ]
        .concat(),
    )
});

// Deletes a job that could not be queued, and its entries in its client's counts.
// KEYS[1] job, KEYS[2] watchers, ARGV[1] prefix, ARGV[2] id.
pub(crate) static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local client = redis.call('HGET', KEYS[1], 'client')
if client then
  local book = ARGV[1] .. 'client:' .. client
  redis.call('ZREM', book .. ':active', ARGV[2])
  redis.call('ZREM', book .. ':jobs', ARGV[2])
end
redis.call('DEL', KEYS[1], KEYS[2])
",
    )
});

/// The Lua that a script ending a job runs once its record is final: the job leaves its client's
/// jobs queued or running and, with an output (`digest`: the output key's last 64 characters), the
/// client is charged the output's stored bytes unless it already refers to it. Needs `job`, `id`,
/// `prefix`, `now` and `output` (the output key, or nil) as locals.
pub(crate) const SETTLE_LUA: &str = r"
local client = redis.call('HGET', job, 'client')
if client then
  local book = prefix .. 'client:' .. client
  redis.call('ZREM', book .. ':active', id)
  local ttl = redis.call('PTTL', job)
  if output and ttl > 0 then
    local digest = string.sub(output, -64)
    if redis.call('ZADD', book .. ':outputs', 'GT', now + ttl, digest) == 1 then
      local size = redis.call('STRLEN', output)
      redis.call('HSET', book .. ':sizes', digest, size)
      redis.call('INCRBY', book .. ':bytes', size)
    end
    for _, what in ipairs({':outputs', ':sizes', ':bytes'}) do
      if redis.call('PTTL', book .. what) < ttl then redis.call('PEXPIRE', book .. what, ttl) end
    end
  end
end
";

/// The embedded store's per-client counts (see the module's description).
#[derive(Default)]
pub struct ClientBooks {
    books: HashMap<String, Book>,
}

#[derive(Default)]
struct Book {
    active: HashMap<JobId, Instant>,
    jobs: HashMap<JobId, Instant>,
    /// Output digest → (stored bytes, expiry).
    outputs: HashMap<String, (u64, Instant)>,
}

impl Book {
    fn sweep(&mut self, now: Instant) {
        self.active.retain(|_, expires| *expires > now);
        self.jobs.retain(|_, expires| *expires > now);
        self.outputs.retain(|_, (_, expires)| *expires > now);
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.outputs.is_empty()
    }
}

impl ClientBooks {
    /// Counts job `id` of `client`, expiring at `expires`, unless that would go past `limits`.
    pub fn admit(
        &mut self,
        client: &str,
        id: JobId,
        expires: Instant,
        limits: &ClientLimits,
    ) -> Result<(), OverQuota> {
        let book = self.books.entry(client.to_owned()).or_default();
        book.sweep(Instant::now());
        let queued = book.active.len() as u64;
        if limits.max_queued > 0 && queued >= u64::from(limits.max_queued) {
            return Err(OverQuota::Queued(queued));
        }
        let jobs = book.jobs.len() as u64;
        if limits.max_jobs > 0 && jobs >= u64::from(limits.max_jobs) {
            return Err(OverQuota::Jobs(jobs));
        }
        let bytes: u64 = book.outputs.values().map(|(size, _)| size).sum();
        if limits.max_stored_bytes > 0 && bytes >= limits.max_stored_bytes {
            return Err(OverQuota::StoredBytes(bytes));
        }
        book.active.insert(id, expires);
        book.jobs.insert(id, expires);
        Ok(())
    }

    /// Job `id` of `client` is final: it no longer counts as queued or running; with an output
    /// (`digest`, its stored `size`), the client refers to it until `expires`.
    pub fn settle(
        &mut self,
        client: &str,
        id: &JobId,
        output: Option<(&str, u64)>,
        expires: Instant,
    ) {
        let Some(book) = self.books.get_mut(client) else {
            return;
        };
        book.active.remove(id);
        if let Some((digest, size)) = output {
            let entry = book
                .outputs
                .entry(digest.to_owned())
                .or_insert((size, expires));
            entry.1 = entry.1.max(expires);
        }
    }

    /// Job `id` of `client` was never queued: it counts nowhere.
    pub fn forget(&mut self, client: &str, id: &JobId) {
        if let Some(book) = self.books.get_mut(client) {
            book.active.remove(id);
            book.jobs.remove(id);
        }
    }

    /// Drops expired entries, and clients with none left.
    pub fn sweep(&mut self) {
        let now = Instant::now();
        self.books.retain(|_, book| {
            book.sweep(now);
            !book.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn each_quota_refuses_and_expiry_frees_it() {
        let mut books = ClientBooks::default();
        let later = Instant::now() + Duration::from_secs(10);
        let limits = ClientLimits {
            max_queued: 2,
            max_jobs: 3,
            max_stored_bytes: 100,
        };
        let ids: Vec<JobId> = (0..4).map(|_| JobId::new_v4()).collect();
        books.admit("ip:a", ids[0], later, &limits).unwrap();
        books.admit("ip:a", ids[1], later, &limits).unwrap();
        assert_eq!(
            books.admit("ip:a", ids[2], later, &limits),
            Err(OverQuota::Queued(2))
        );
        books.admit("ip:b", ids[2], later, &limits).unwrap();
        books.settle("ip:a", &ids[0], Some(("d1", 60)), later);
        books.settle("ip:a", &ids[1], Some(("d1", 60)), later);
        books.admit("ip:a", ids[2], later, &limits).unwrap();
        assert_eq!(
            books.admit("ip:a", ids[3], later, &limits),
            Err(OverQuota::Jobs(3)),
        );
        books.forget("ip:a", &ids[2]);
        books.admit("ip:a", ids[3], later, &limits).unwrap();
        books.settle("ip:a", &ids[3], Some(("d2", 60)), later);
        books.forget("ip:a", &ids[0]);
        assert_eq!(
            books.admit("ip:a", JobId::new_v4(), later, &limits),
            Err(OverQuota::StoredBytes(120)),
            "each distinct output counts once"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        books
            .admit(
                "ip:a",
                JobId::new_v4(),
                later + Duration::from_secs(20),
                &limits,
            )
            .unwrap();
        books.sweep();
        assert!(!books.books.contains_key("ip:b"));
    }
}
