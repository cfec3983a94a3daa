//! The dispatcher: claims the deliveries that are due from the job store, POSTs each job to its
//! webhook, and marks it delivered, due again after the next delay of the schedule, or given up.
//!
//! A claim is a lease (see [`herald_engine::deliveries::DeliveryStore::claim_due`]): one instance
//! sends a delivery at a time, and a delivery whose instance died is sent again once the lease runs
//! out. Delivery is therefore at least once: receivers tell repeats by `webhook-id`, the same on every
//! attempt (the job's ID).

use std::sync::Arc;
use std::time::Duration;

use herald_engine::deliveries::{Attempt, Deliveries};
use herald_protocol::api::JobView;
use herald_protocol::{unix_ms, JobId};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use url::Url;

use super::address::{self, Refused, Resolver};
use super::sign::Signer;
use crate::metrics::{ServerMetrics, WebhookLabel};

/// How often the store is asked for due deliveries.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Deliveries one instance sends at once.
const SENDING_AT_ONCE: usize = 32;

/// Bytes of a receiver's answer read (and dropped) at most: its status is what counts.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How the dispatcher sends.
#[derive(Clone)]
pub struct Config {
    /// Signs every message.
    pub signer: Signer,
    /// Delays before the second, third… attempt; after the last one fails, the delivery is given up.
    pub retry_delays: Vec<Duration>,
    /// Longest time for one request, from connecting to the end of the answer.
    pub timeout: Duration,
    /// Largest document sent: past it the job goes without its output.
    pub max_body_bytes: usize,
    /// Whether private addresses may be reached (`--webhook-allow-private`).
    pub allow_private: bool,
}

/// Why a delivery attempt did not succeed.
enum Failure {
    /// The address may not be reached: not retried.
    Refused(String),
    /// No 2xx answer: retried on the schedule.
    Failed(String),
}

/// Sends the deliveries of the job store.
pub struct Dispatcher {
    deliveries: Deliveries,
    client: reqwest::Client,
    config: Config,
    metrics: Arc<ServerMetrics>,
}

impl Dispatcher {
    /// A dispatcher for the deliveries of `deliveries`.
    pub fn new(
        deliveries: Deliveries,
        config: Config,
        metrics: Arc<ServerMetrics>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirect could lead anywhere, an address given as such included: a 3xx is a failure.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would be what the resolver checks, not the receiver.
            .no_proxy()
            .dns_resolver(Arc::new(Resolver {
                allow_private: config.allow_private,
            }))
            .user_agent(concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            deliveries,
            client,
            config,
            metrics,
        })
    }

    /// How long a claim holds a delivery: longer than any one attempt takes.
    fn lease(&self) -> Duration {
        self.config.timeout * 2 + Duration::from_secs(30)
    }

    /// Claims and sends deliveries until `shutdown`. Sends under way when it comes are dropped with
    /// the process; their leases run out and another instance (or this one, restarted) sends them.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let sending = Arc::new(Semaphore::new(SENDING_AT_ONCE));
        let mut store_down = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
            let free = sending.available_permits();
            if free == 0 {
                continue;
            }
            let claimed = match self.deliveries.claim_due(free, self.lease()).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    if !store_down {
                        warn!(error = %e, "cannot read pending webhook deliveries; trying again");
                    }
                    store_down = true;
                    continue;
                }
            };
            store_down = false;
            for id in claimed {
                let Ok(permit) = sending.clone().acquire_owned().await else {
                    return;
                };
                let dispatcher = self.clone();
                tokio::spawn(async move {
                    dispatcher.deliver(id).await;
                    drop(permit);
                });
            }
        }
    }

    /// One attempt of job `id`'s delivery, and what follows from it.
    async fn deliver(&self, id: JobId) {
        let attempt = match self.deliveries.begin_attempt(&id).await {
            Ok(Some(attempt)) => attempt,
            Ok(None) => {
                warn!(%id, "webhook not sent: the job's record expired");
                self.count("expired");
                return self.settle(id, None).await;
            }
            // The lease runs out, and the delivery is claimed again.
            Err(e) => return warn!(%id, error = %e, "cannot start a webhook delivery"),
        };
        let Some(url) = attempt.record.webhook.clone() else {
            return self.settle(id, None).await;
        };
        match self.send(id, &url, &attempt).await {
            Ok(()) => {
                info!(%id, attempt = attempt.number, "webhook delivered");
                self.count("delivered");
                self.settle(id, None).await;
            }
            Err(Failure::Refused(reason)) => {
                warn!(%id, %reason, "webhook refused: not sent");
                self.count("refused");
                self.settle(id, None).await;
            }
            Err(Failure::Failed(reason)) => {
                match self.config.retry_delays.get(attempt.number as usize - 1) {
                    Some(delay) => {
                        info!(%id, attempt = attempt.number, %reason, retry_in = ?delay, "webhook failed; will retry");
                        self.count("failed");
                        self.settle(id, Some(*delay)).await;
                    }
                    None => {
                        warn!(%id, attempts = attempt.number, %reason, "webhook failed on its last attempt; given up");
                        self.count("abandoned");
                        self.settle(id, None).await;
                    }
                }
            }
        }
    }

    /// Marks a delivery over (`None`) or due again after `retry`. If the store cannot be reached,
    /// the lease runs out and the attempt is made again: at least once, never never.
    async fn settle(&self, id: JobId, retry: Option<Duration>) {
        let settled = match retry {
            None => self.deliveries.complete(&id).await,
            Some(delay) => self.deliveries.retry_after(&id, delay).await,
        };
        if let Err(e) = settled {
            warn!(%id, error = %e, "cannot record a webhook delivery; it is sent again later");
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .webhook_deliveries
            .get_or_create(&WebhookLabel { outcome })
            .inc();
    }

    /// POSTs the job's document to `url`, signed.
    async fn send(&self, id: JobId, url: &str, attempt: &Attempt) -> Result<(), Failure> {
        let url = Url::parse(url).map_err(|e| Failure::Refused(format!("not a URL ({e})")))?;
        if !self.config.allow_private {
            // Names are checked by the resolver; an address in the URL never reaches it.
            address::check_host(&url).map_err(|refused| Failure::Refused(refused.0))?;
        }
        let body = document(id, attempt, self.config.max_body_bytes);
        let message_id = id.as_hyphenated().to_string();
        let timestamp = unix_ms() / 1000;
        let signature = self.config.signer.sign(&message_id, timestamp, &body);
        let answer = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| match refusal_in(&e) {
                Some(refused) => Failure::Refused(refused.0.clone()),
                None => Failure::Failed(describe(&e)),
            })?;
        let status = answer.status();
        // Read a little of the answer within the time limit, so the connection can serve again;
        // what it says does not matter.
        let mut answer = answer;
        let mut read = 0;
        while read < MAX_ANSWER_BYTES {
            match answer.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        debug!(%id, %status, "webhook answered");
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Failed(format!("the receiver answered {status}")))
        }
    }
}

/// The body of a delivery: the job as `GET /jobs/<id>` shows it; without its output when that would
/// make it larger than `max_bytes` (the receiver then fetches `/jobs/<id>/output`).
fn document(id: JobId, attempt: &Attempt, max_bytes: usize) -> Vec<u8> {
    let mut view = JobView::new(id, &attempt.record);
    let body = serde_json::to_vec(&view).expect("a job document serialises");
    if body.len() <= max_bytes {
        return body;
    }
    view.output = None;
    serde_json::to_vec(&view).expect("a job document serialises")
}

/// The address refusal behind a send error, if that is what it is.
fn refusal_in(error: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = e.source();
    }
    None
}

/// A send error in a few words, with its causes (reqwest's own says only "error sending request").
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time (--webhook-timeout-secs)".into();
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
