//! Integration tests of Herald: real servers and workers against the real RabbitMQ and Redis.

mod helpers;

mod auth;
mod browser;
mod budget;
mod compose;
mod deploy;
mod docs;
mod durability;
mod durable;
mod errors;
mod fairness;
mod faults;
mod floods;
mod flow;
mod gates;
mod hostile;
mod http_api;
mod idempotency;
mod instances;
mod live;
mod load;
mod loadgen;
mod models;
mod openapi;
mod overload;
mod quotas;
mod shutdown;
mod soak;
mod startup;
mod toolchain;
mod webhooks;
mod websocat;
