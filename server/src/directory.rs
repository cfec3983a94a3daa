//! Which models this server takes jobs for, and how many workers serve each: in embedded mode the
//! models the server runs itself; in distributed mode the factorial (always) and the models workers
//! announce in Redis ([`herald_engine::announce`]), read every few seconds rather than on every submit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use herald_engine::RedisStore;
use herald_models::{Model, Models};
use herald_protocol::FACTORIAL;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the announcements are read.
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// A submit for a model not in the last reading reads again if the last reading is older than this,
/// so a worker that has just started is found at once, while a flood of submits for a model nobody
/// serves costs Redis a few reads a second at most.
const REREAD_AFTER: Duration = Duration::from_millis(250);

/// Shortest gap between two warnings that a model has no worker, per model.
const WARN_IDLE_EVERY: Duration = Duration::from_secs(60);

/// How long a model stays known after its last worker went: jobs submitted while its workers restart
/// are queued (durably) rather than refused.
pub const GRACE: Duration = Duration::from_secs(60);

/// A model this server takes jobs for.
#[derive(Clone)]
pub struct Served {
    /// The model's own validation, where this server has the model (the factorial always; every model
    /// in embedded mode). Others' inputs are only checked for size: their workers check the rest.
    pub model: Option<Arc<dyn Model>>,
    /// Workers announcing it now (distributed mode only; `None` in embedded mode).
    pub workers: Option<u32>,
}

/// What was read of the announcements.
#[derive(Default)]
struct Reading {
    at: Option<Instant>,
    workers: BTreeMap<String, u32>,
    last_seen: HashMap<String, Instant>,
}

/// The models this server takes jobs for.
pub struct Directory {
    /// The models whose code this process has.
    local: Models,
    /// Where workers announce theirs; `None` in embedded mode.
    announcements: Option<RedisStore>,
    reading: RwLock<Reading>,
    /// How long a model stays known after its last worker went.
    grace: Duration,
    /// When each model was last said to have no worker.
    warned: std::sync::Mutex<HashMap<String, Instant>>,
}

impl Directory {
    /// Embedded mode: exactly the models this process runs.
    pub fn embedded(models: Models) -> Self {
        Self {
            local: models,
            announcements: None,
            reading: RwLock::default(),
            grace: GRACE,
            warned: Default::default(),
        }
    }

    /// Distributed mode: the factorial, whose validation this process has, and what workers announce in
    /// `store`; a model stays known for [`GRACE`] after its last worker went.
    pub fn distributed(factorial: Arc<dyn Model>, store: RedisStore) -> Self {
        Self::distributed_with_grace(factorial, store, GRACE)
    }

    /// [`Directory::distributed`] with another grace period (tests).
    pub fn distributed_with_grace(
        factorial: Arc<dyn Model>,
        store: RedisStore,
        grace: Duration,
    ) -> Self {
        Self {
            local: Models::default().with(factorial),
            announcements: Some(store),
            reading: RwLock::default(),
            grace,
            warned: Default::default(),
        }
    }

    /// The model called `name`, or the names of the models served. A model with no worker now is
    /// served all the same (its jobs wait in its queue), and said so in the log.
    pub async fn lookup(&self, name: &str) -> Result<Served, Vec<String>> {
        if let Some(served) = self.find(name) {
            if served.workers == Some(0) {
                self.warn_idle(name);
            }
            return Ok(served);
        }
        let stale = self
            .reading
            .read()
            .expect("directory lock never poisoned")
            .at
            .is_none_or(|at| at.elapsed() >= REREAD_AFTER);
        if stale && self.announcements.is_some() {
            self.refresh().await;
            if let Some(served) = self.find(name) {
                return Ok(served);
            }
        }
        Err(self.names())
    }

    fn find(&self, name: &str) -> Option<Served> {
        let local = self.local.get(name).cloned();
        if self.announcements.is_none() {
            return local.map(|model| Served {
                model: Some(model),
                workers: None,
            });
        }
        let reading = self.reading.read().expect("directory lock never poisoned");
        let workers = reading.workers.get(name).copied().unwrap_or(0);
        let recent = reading
            .last_seen
            .get(name)
            .is_some_and(|seen| seen.elapsed() < self.grace);
        // The factorial is always taken: its jobs wait, durably queued, for a worker to come.
        (workers > 0 || recent || name == FACTORIAL).then_some(Served {
            model: local,
            workers: Some(workers),
        })
    }

    /// The models served with no worker now (distributed mode), in name order.
    pub fn idle(&self) -> Vec<String> {
        self.served()
            .into_iter()
            .filter(|(_, workers)| *workers == Some(0))
            .map(|(name, _)| name)
            .collect()
    }

    /// Warns that no worker serves `model` (at most every [`WARN_IDLE_EVERY`] per model).
    fn warn_idle(&self, model: &str) {
        let mut warned = self.warned.lock().expect("directory lock never poisoned");
        if warned
            .get(model)
            .is_some_and(|at| at.elapsed() < WARN_IDLE_EVERY)
        {
            return;
        }
        warned.insert(model.to_owned(), Instant::now());
        warn!(
            model,
            "no worker serves the model {model}: its jobs are accepted and wait, durably queued, \
             until a herald-worker serving it starts (with the same --amqp-url, --redis-url, --queue \
             and --redis-prefix)"
        );
    }

    /// Workers announcing `model` in the last reading (distributed mode; `None` in embedded mode).
    pub fn workers(&self, model: &str) -> Option<u32> {
        self.announcements.as_ref()?;
        let reading = self.reading.read().expect("directory lock never poisoned");
        Some(reading.workers.get(model).copied().unwrap_or(0))
    }

    /// The models served, each with its workers (`None` in embedded mode), in name order.
    pub fn served(&self) -> Vec<(String, Option<u32>)> {
        if self.announcements.is_none() {
            return self.local.names().into_iter().map(|n| (n, None)).collect();
        }
        let reading = self.reading.read().expect("directory lock never poisoned");
        let mut served: BTreeMap<String, Option<u32>> = reading
            .last_seen
            .iter()
            .filter(|(_, seen)| seen.elapsed() < self.grace)
            .map(|(name, _)| (name.clone(), Some(0)))
            .collect();
        served.insert(FACTORIAL.to_owned(), Some(0));
        for (name, workers) in &reading.workers {
            served.insert(name.clone(), Some(*workers));
        }
        served.into_iter().collect()
    }

    fn names(&self) -> Vec<String> {
        self.served().into_iter().map(|(name, _)| name).collect()
    }

    /// Reads the announcements again.
    pub async fn refresh(&self) {
        let Some(store) = &self.announcements else {
            return;
        };
        match store.served_models().await {
            Ok(workers) => {
                let now = Instant::now();
                let mut reading = self.reading.write().expect("directory lock never poisoned");
                for name in workers.keys() {
                    if !reading.workers.contains_key(name) {
                        info!(model = %name, "a worker serves the model {name}");
                    }
                    reading.last_seen.insert(name.clone(), now);
                }

                reading
                    .last_seen
                    .retain(|_, seen| seen.elapsed() < self.grace);
                reading.workers = workers;
                reading.at = Some(now);
            }
            Err(e) => warn!(error = %e, "could not read which models workers serve"),
        }
    }

    /// Reads the announcements every few seconds until `shutdown`.
    pub async fn keep_refreshing(self: Arc<Self>, shutdown: CancellationToken) {
        if self.announcements.is_none() {
            return;
        }
        let mut every = tokio::time::interval(REFRESH_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => self.refresh().await,
            }
        }
    }
}
