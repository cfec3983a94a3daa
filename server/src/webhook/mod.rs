//! Webhooks: a submit may name a URL that the server POSTs the job to once it ends, signed as the
//! Standard Webhooks specification says, retried with backoff, and only to addresses that are not
//! this network's own (unless `--webhook-allow-private`).
//!
//! The job store keeps the pending deliveries (see [`herald_engine::deliveries`]); every server
//! instance with `--webhook-secret` runs a [`dispatch::Dispatcher`] that claims and sends them.

pub mod address;
pub mod dispatch;
pub mod sign;

use herald_protocol::ErrorMessage;

use crate::Settings;

/// Checks the webhook of a submit against this server's settings: webhooks must be on
/// (`--webhook-secret`), and the URL valid for [`address::check_url`]. Returns the URL to store.
pub fn check_submit(
    webhook: Option<&str>,
    settings: &Settings,
) -> Result<Option<String>, ErrorMessage> {
    let Some(url) = webhook else {
        return Ok(None);
    };
    if settings.webhook_secret.is_none() {
        return Err(ErrorMessage::bad_request(
            "this server sends no webhooks (it has no --webhook-secret); submit without \"webhook\"",
        ));
    }
    address::check_url(url, settings.webhook_allow_private)
        .map(|url| Some(url.to_string()))
        .map_err(|reason| ErrorMessage::bad_request(format!("\"webhook\": {reason}")))
}
