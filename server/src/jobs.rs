//! Taking a job in (check its model and input, store its record, then queue it, so that a client
//! holding its ID can always learn its fate) and cancelling one. Shared by the WebSocket and the HTTP
//! API, and by both modes.

use std::sync::Arc;
use std::time::Duration;

use herald_engine::backend::{
    Admission, Cancel, ClientLimits, JobQueue, Notifier, OverQuota, PublishError,
};
use herald_engine::idempotency::{Key, Keyed, Keys};
use herald_engine::Store;
use herald_models::InputError;
use herald_protocol::model::factorial_input;
use herald_protocol::{
    unix_ms, Completion, ErrorCode, ErrorMessage, JobId, JobMessage, JobRecord, Json, SubmitInput,
    FACTORIAL,
};
use tracing::{error, info, warn};

use crate::directory::Directory;

/// What a client hears about an ID with no record it may see. The server cannot tell which case it
/// is (never submitted, expired, lost with an embedded server's memory, or another identity's), so
/// it says no more than that.
pub const NOT_FOUND: &str = "no such job: the ID is unknown or expired";

/// How long a client should wait before submitting again when the queue is full.
pub const BUSY_RETRY_AFTER_MS: u64 = 1000;

/// How long a client at its limit of jobs queued or running should wait: about as long as a job
/// ahead of it takes to make room.
pub const QUEUED_RETRY_AFTER_MS: u64 = 1000;

/// How long a client at its limit of jobs kept, or of stored bytes, should wait: those are freed only
/// as its records expire, so trying again soon is pointless.
pub const KEPT_RETRY_AFTER_MS: u64 = 60_000;

/// What a client learns when RabbitMQ or Redis cannot be reached.
pub fn unavailable() -> ErrorMessage {
    ErrorMessage::new(
        ErrorCode::Unavailable,
        "the job service is temporarily unavailable; try again shortly",
    )
}

/// Why a submit was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// RabbitMQ or Redis cannot be reached.
    Unavailable,
    /// The job queue is at its cap.
    Busy,
    /// The client is at one of its quotas (the limit it is at, for the message).
    Quota(OverQuota, ClientLimits),
    /// The submit's idempotency key belongs to a live job of another model or input.
    Conflict,
}

/// What a submit that was taken did.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    /// A new job, stored and queued.
    Created,
    /// The submit repeated an earlier one's idempotency key: nothing new; this is that job.
    Existing {
        /// Its ID.
        id: JobId,
        /// Its record as it stood.
        record: Box<JobRecord>,
    },
}

impl Refusal {
    /// The protocol's error for this refusal.
    pub fn to_error(self) -> ErrorMessage {
        match self {
            Self::Unavailable => unavailable(),
            Self::Busy => ErrorMessage {
                retry_after_ms: Some(BUSY_RETRY_AFTER_MS),
                ..ErrorMessage::new(ErrorCode::Busy, "the job queue is full; try again shortly")
            },
            Self::Quota(over, limits) => {
                let (message, retry_after_ms) = match over {
                    OverQuota::Queued(_) => (
                        format!(
                            "you have {} jobs queued or running, the most one client may have at \
                             once (--max-queued-per-client); submit again when one has finished",
                            limits.max_queued
                        ),
                        QUEUED_RETRY_AFTER_MS,
                    ),
                    OverQuota::Jobs(_) => (
                        format!(
                            "you have {} jobs kept, the most one client may have \
                             (--max-jobs-per-client); older ones are freed as they expire",
                            limits.max_jobs
                        ),
                        KEPT_RETRY_AFTER_MS,
                    ),
                    OverQuota::StoredBytes(held) => (
                        format!(
                            "your jobs' results take {held} bytes of storage, past the {} one \
                             client may have (--max-stored-bytes-per-client); they are freed as \
                             their jobs expire",
                            limits.max_stored_bytes
                        ),
                        KEPT_RETRY_AFTER_MS,
                    ),
                };
                ErrorMessage {
                    retry_after_ms: Some(retry_after_ms),
                    ..ErrorMessage::new(ErrorCode::Busy, message)
                }
            }
            Self::Conflict => ErrorMessage::new(
                ErrorCode::Conflict,
                "this idempotency key was used for a job of another model or input; use a new key \
                 for a new job",
            ),
        }
    }
}

/// A job ready to be taken: its model is served and its input passed the checks this server can make.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The model.
    pub model: String,
    /// The input, as validated.
    pub input: Json,
    /// Workers serving the model now, where known.
    pub workers: Option<u32>,
    /// The submit's idempotency key, if any.
    pub key: Option<String>,
    /// Where to POST the job once it ends (checked), if anywhere.
    pub webhook: Option<String>,
}

impl Prepared {
    /// `n`, for a factorial job.
    pub fn n(&self) -> Option<u64> {
        (self.model == FACTORIAL)
            .then(|| herald_protocol::model::factorial_n(self.input.raw()))
            .flatten()
    }
}

/// The server's job intake.
#[derive(Clone)]
pub struct Jobs {
    /// The job store.
    pub store: Store,
    /// Where jobs are queued.
    pub queue: Arc<dyn JobQueue>,
    /// How this instance tells others (and itself) of a job it ended (a cancel of a queued job).
    pub notifier: Arc<dyn Notifier>,
    /// This instance's routing key on the reply exchange.
    pub instance: String,
    /// How long records live.
    pub ttl: Duration,
    /// The models jobs may name.
    pub directory: Arc<Directory>,
    /// Largest input, in bytes of JSON text.
    pub max_input_bytes: usize,
    /// Each client's quotas.
    pub client_limits: ClientLimits,
    /// Idempotency keys.
    pub keys: Keys,
}

impl Jobs {
    /// Checks a submit's model and input: the model must be served, the input within
    /// `--max-input-bytes` and, where this server has the model's code, valid for it.
    pub async fn prepare(
        &self,
        model: Option<&str>,
        input: SubmitInput,
    ) -> Result<Prepared, ErrorMessage> {
        let name = model.unwrap_or(FACTORIAL);
        let served = self.directory.lookup(name).await.map_err(|served| {
            ErrorMessage::new(
                ErrorCode::UnknownModel,
                format!(
                    "no worker serves the model {name:?}; served: {}",
                    served.join(", ")
                ),
            )
        })?;
        let input = match input {
            SubmitInput::N(n) => factorial_input(n),
            SubmitInput::Json(input) => input,
        };
        if input.get().len() > self.max_input_bytes {
            return Err(ErrorMessage::new(
                ErrorCode::TooLarge,
                format!(
                    "the input is {} bytes; the limit is {} (--max-input-bytes)",
                    input.get().len(),
                    self.max_input_bytes
                ),
            ));
        }
        let input = match &served.model {
            Some(model) => model.validate(&input).map_err(|refused| match refused {
                InputError::Invalid(message) => ErrorMessage::bad_request(message),
                InputError::TooLarge(message) => ErrorMessage::new(ErrorCode::TooLarge, message),
            })?,
            None => input,
        };
        Ok(Prepared {
            model: name.to_owned(),
            input,
            workers: served.workers,
            key: None,
            webhook: None,
        })
    }

    /// Stores the record of job `id` (status `queued`, belonging to `owner`, submitted by `client`, a
    /// [`crate::auth::ClientKey`] as text), registering this instance
    /// as a watcher if `watched`, then publishes the job to its model's queue and waits for the
    /// broker's confirm.
    ///
    /// A client at one of its quotas is refused before anything is stored (see
    /// [`herald_engine::JobStore::create`]); a repeat of an idempotency key is answered whatever its
    /// client holds.
    ///
    /// With an idempotency key, the record is stored only if no live job of `owner` (of anyone,
    /// without authentication) holds the key, in the same atomic step: a repeat gets the job that
    /// holds it ([`Taken::Existing`], nothing stored or queued), another model or input under it gets
    /// [`Refusal::Conflict`].
    ///
    /// If the publish fails, the record (and its key) is deleted again: the client never got the ID,
    /// and nothing is left half-stored. (Should the broker have taken the message after all, its
    /// worker finds no record and drops it.)
    pub async fn submit(
        &self,
        id: JobId,
        job: &Prepared,
        watched: bool,
        owner: Option<&str>,
        client: &str,
    ) -> Result<Taken, Refusal> {
        let record = JobRecord::queued(&job.model, job.input.clone(), unix_ms())
            .owned_by(owner)
            .from_client(Some(client))
            .with_webhook(job.webhook.as_deref());
        let watcher = watched.then_some(self.instance.as_str());
        let fingerprint = job
            .key
            .as_ref()
            .map(|_| herald_protocol::idempotency::fingerprint(&job.model, job.input.raw()));
        let key = job
            .key
            .as_deref()
            .zip(fingerprint.as_deref())
            .map(|(key, fingerprint)| Key {
                scope: owner,
                key,
                fingerprint,
            });
        let limits = &self.client_limits;
        let created = match key {
            None => self
                .store
                .create(&id, &record, watcher, self.ttl, limits)
                .await
                .map(|admission| match admission {
                    Admission::Created => Keyed::Created,
                    Admission::Refused(over) => Keyed::Refused(over),
                }),
            Some(key) => {
                self.keys
                    .create_keyed(key, &id, &record, watcher, self.ttl, limits)
                    .await
            }
        };
        match created {
            Ok(Keyed::Created) => {}
            Ok(Keyed::Existing { id, record }) => return Ok(Taken::Existing { id, record }),
            Ok(Keyed::Conflict) => return Err(Refusal::Conflict),
            Ok(Keyed::Refused(over)) => {
                info!(%client, ?over, "submit refused: the client is at a quota");
                return Err(Refusal::Quota(over, self.client_limits));
            }
            Err(e) => {
                warn!(%id, error = %e, "could not store a new job");
                return Err(Refusal::Unavailable);
            }
        }
        let message = JobMessage {
            id,
            model: job.model.clone(),
            input: job.input.clone(),
            client: Some(client.to_owned()),
        };
        let refusal = match self.queue.publish(&message).await {
            Ok(()) => return Ok(Taken::Created),
            Err(PublishError::Full) => Refusal::Busy,
            Err(e) => {
                warn!(%id, error = %e, "could not publish a job");
                Refusal::Unavailable
            }
        };
        let deleted = match key {
            None => self.store.delete(&id).await,
            Some(key) => self.keys.delete_keyed(key, &id).await,
        };
        if let Err(e) = deleted {
            error!(%id, error = %e, "could not delete the record of an unpublished job");
        }
        Err(refusal)
    }
}

impl Jobs {
    /// Cancels job `id` for `identity` (see [`herald_engine::JobStore::cancel`]). With `watched`, this
    /// instance counts once more among the watchers of a running job, for the socket that asked.
    ///
    /// A queued job is final at once, and its completion goes to every instance that waits. If that
    /// fails, nothing is lost: the worker that takes the job finds it final and publishes it again.
    pub async fn cancel(
        &self,
        id: JobId,
        watched: bool,
        identity: Option<&str>,
    ) -> Result<Cancel, Refusal> {
        let watcher = watched.then_some(self.instance.as_str());
        let outcome = self
            .store
            .cancel(&id, watcher, identity, unix_ms())
            .await
            .map_err(|e| {
                warn!(%id, error = %e, "could not cancel a job");
                Refusal::Unavailable
            })?;
        match &outcome {
            Cancel::Cancelled { record, watchers } => {
                info!(%id, "queued job cancelled");
                let completion = Completion::new(id, (**record).clone());
                if let Err(e) = self.notifier.completion(watchers, &completion).await {
                    warn!(%id, error = %e, "cancellation not sent; the job's worker will send it");
                }
            }
            Cancel::Requested => info!(%id, "running job asked to stop"),
            Cancel::Missing | Cancel::Final(_) => {}
        }
        Ok(outcome)
    }
}
