//! Which models are served: each worker announces, in Redis, the models it runs and until when the
//! announcement holds; it renews it while it runs and withdraws it when it stops. Servers read the
//! announcements to refuse jobs for models nobody serves without asking the broker on every submit,
//! and to say how many workers serve a model.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_protocol::model::check_model_name;
use herald_protocol::unix_ms;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::{RedisStore, StoreError};

/// How often a worker renews its announcement.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// How long an announcement holds without renewal: a worker that died is forgotten after this.
pub const ANNOUNCEMENT_TTL: Duration = Duration::from_secs(15);

/// One worker's announcement, the value of its field in the announcements hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The models it serves.
    pub models: Vec<String>,
    /// Until when this holds (unix ms).
    pub until_ms: u64,
}

// KEYS[1] the announcements hash, ARGV[1] now (unix ms). Deletes the expired announcements and returns
// the others as {worker, announcement, ...}.
static READ: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local ok, decoded = pcall(cjson.decode, all[i + 1])
  if ok and type(decoded) == 'table' and tonumber(decoded['until_ms']) and tonumber(decoded['until_ms']) > tonumber(ARGV[1]) then
    table.insert(live, all[i])
    table.insert(live, all[i + 1])
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
",
    )
});

impl RedisStore {
    /// Announces that `worker` serves `models` for the next [`ANNOUNCEMENT_TTL`].
    pub async fn announce(&self, worker: &str, models: &[String]) -> Result<(), StoreError> {
        let key = self.keys().workers();
        let announcement = Announcement {
            models: models.to_vec(),
            until_ms: unix_ms() + ANNOUNCEMENT_TTL.as_millis() as u64,
        };
        let value = serde_json::to_string(&announcement).expect("an announcement serialises");
        // The hash expires when no worker renews any announcement in it.
        let ttl_ms = 2 * ANNOUNCEMENT_TTL.as_millis() as u64;
        self.run(|mut conn| async move {
            redis::pipe()
                .hset(&key, worker, value)
                .ignore()
                .pexpire(&key, ttl_ms as i64)
                .ignore()
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Withdraws `worker`'s announcement (it is stopping).
    pub async fn withdraw(&self, worker: &str) -> Result<(), StoreError> {
        let key = self.keys().workers();
        self.run(|mut conn| async move {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(worker)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// The models announced now, each with the number of workers that serve it. Expired
    /// announcements are deleted on the way, and malformed ones ignored.
    pub async fn served_models(&self) -> Result<BTreeMap<String, u32>, StoreError> {
        let key = self.keys().workers();
        let live: Vec<String> = self
            .run(|mut conn| async move {
                Ok(READ
                    .key(&key)
                    .arg(unix_ms())
                    .invoke_async(&mut conn)
                    .await?)
            })
            .await?;
        let mut served = BTreeMap::new();
        for pair in live.chunks(2) {
            let [worker, value] = pair else { continue };
            match serde_json::from_str::<Announcement>(value) {
                Ok(announcement) => {
                    for model in announcement.models {
                        if check_model_name(&model).is_ok() {
                            *served.entry(model).or_insert(0) += 1;
                        }
                    }
                }
                Err(e) => debug!(%worker, error = %e, "ignoring a malformed announcement"),
            }
        }
        Ok(served)
    }

    /// Announces `models` for `worker` every [`ANNOUNCE_EVERY`] until `shutdown`, then withdraws it.
    pub async fn keep_announcing(
        self,
        worker: String,
        models: Vec<String>,
        shutdown: CancellationToken,
    ) {
        let mut every = tokio::time::interval(ANNOUNCE_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {
                    if let Err(e) = self.announce(&worker, &models).await {
                        warn!(error = %e, "could not announce the models this worker serves");
                    }
                }
            }
        }
        if let Err(e) = self.withdraw(&worker).await {
            debug!(error = %e, "could not withdraw this worker's announcement");
        }
    }
}
