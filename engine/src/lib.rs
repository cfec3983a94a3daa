//! Herald's engine: the job lifecycle over the job store, the job queue and the notices that reach
//! server instances, with their two sets of backends: Redis and RabbitMQ for distributed deployments,
//! in-process ones for the server's embedded mode.
//!
//! `herald-server` and `herald-worker` are thin over this crate: the server takes jobs in and pushes
//! results out, the worker consumes jobs and runs [`jobs::JobContext::handle`] on each, and embedded
//! mode runs that same code on an in-process queue.

pub mod amqp;
pub mod announce;
pub mod backend;
pub mod cache;
pub mod clients;
pub mod connect;
pub mod deliveries;
pub mod deliveries_memory;
pub mod deliveries_redis;
pub mod durable;
pub mod fair;
pub mod idempotency;
pub mod idempotency_memory;
pub mod idempotency_redis;
pub mod jobs;
pub mod memory;
pub mod metrics;
pub mod output;
pub mod outputs;
mod replication;
pub mod settings;
pub mod startup;
pub mod store;
#[cfg(test)]
mod store_cases;
pub mod telemetry;
pub mod topology;

pub use backend::{JobQueue, JobStore, Notifier, PublishError, Store};
pub use jobs::{JobContext, JobLimits, Processed, Settle};
pub use settings::{BackendArgs, Secret, SettingsError};
pub use startup::StartupError;
pub use store::{OpenError, Persistence, RedisStore, StoreError};
