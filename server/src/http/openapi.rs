//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`: assembled from the
//! `#[utoipa::path]` annotations on the handlers and the `ToSchema` types of the protocol crate, by the
//! same router that serves the routes (see [`super::router`]), so a route cannot be served undescribed.
//!
//! What only the running server knows is filled in when it starts: the factorial's largest `n`
//! (`--max-n`), and whether requests need a bearer token (authentication on).

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use herald_protocol::api::{FACTORIAL_N_SCHEMA, WEBHOOK_SCHEMA};
use herald_protocol::frame::MAX_WEBHOOK_BYTES;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{KnownFormat, SchemaFormat, SchemaType};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, ObjectBuilder, OpenApi as Document, RefOr, Schema, Type};
use utoipa::{OpenApi, PartialSchema};

/// The security scheme of the bearer token (`Authorization: Bearer <token>`).
pub const BEARER: &str = "bearer";

/// The security scheme of the token as a `token` query parameter (`/ws` only: browsers cannot set
/// headers on a WebSocket).
pub const QUERY_TOKEN: &str = "token_query";

/// What the annotations do not say: the title, version and tags.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "A job gateway: submit a job of any model served, follow it, cancel it, \
                       download its output. The WebSocket at `/ws` pushes results as they finish \
                       (its messages are described in docs/protocol.md, not here).",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "jobs", description = "The jobs API, for programs: JSON bodies and errors."),
        (name = "classic", description = "The classic polling API: plain-text errors."),
        (name = "websocket", description = "The WebSocket upgrade."),
        (name = "ops", description = "The page, health, readiness, metrics and this document: open to all."),
    )
)]
pub struct ApiDoc;

/// The document as the server serves it, JSON text built once at start-up.
#[derive(Clone)]
pub struct Served(Arc<str>);

/// Completes the document assembled from the routes for a server with these settings: the component
/// of the factorial's `n` (at most `max_n`), that of a submit's `webhook` (a URL if the server sends
/// webhooks, else only `null`), the 403 every route but `/healthz` answers to a foreign `Host` (see
/// [`crate::host`]), and the security schemes with authentication on. With it
/// off, the operations' security requirements are removed: a fuzzer (and a reader) would otherwise
/// expect a 401 that never comes.
pub fn complete(mut document: Document, max_n: u64, auth: bool, webhooks: bool) -> Document {
    let components = document.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert(WEBHOOK_SCHEMA.into(), webhook_schema(webhooks));
    components.schemas.insert(
        FACTORIAL_N_SCHEMA.into(),
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .maximum(Some(max_n))
            .description(Some(
                "The factorial's n: a whole number up to the server's --max-n.",
            ))
            .into(),
    );
    for (path, item) in document.paths.paths.iter_mut() {
        if path == "/healthz" {
            continue;
        }
        for operation in operations(item) {
            operation
                .responses
                .responses
                .entry("403".into())
                .or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(
                            "The request addresses the server by a host name it does not answer \
                             to (see --allowed-hosts).",
                        )
                        .content("text/plain", Content::new(Some(String::schema())))
                        .into()
                });
        }
    }
    add_links(&mut document);
    let components = document.components.get_or_insert_with(Default::default);
    if auth {
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A static token (--auth-tokens) or an HS256 JWT (--jwt-secret).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            QUERY_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The bearer token, for `/ws` only (a browser cannot set its headers; it may also \
                 offer the subprotocol `bearer.<token>` next to `herald`).",
            ))),
        );
    } else {
        for item in document.paths.paths.values_mut() {
            for operation in operations(item) {
                operation.security = None;
            }
        }
    }
    document
}

/// The operations that take a request ID, and how each takes it: a client (and schemathesis's stateful
/// phase) can follow a submit's answer to them. Both APIs see the same jobs.
const TAKE_AN_ID: [(&str, &str); 6] = [
    ("jobs_show", "path.id"),
    ("jobs_cancel", "path.id"),
    ("jobs_output", "path.id"),
    ("classic_result", "query.id"),
    ("classic_cancel", "path.id"),
    ("classic_output", "path.id"),
];

/// Links from the answers of `POST /jobs` (`id` in the JSON body) to every operation that takes a
/// request ID. (`GET /factorial` answers its ID as the whole text body: a link could say
/// `$response.body`, but link tools, schemathesis among them, read JSON bodies only.)
fn add_links(document: &mut Document) {
    let Some(Some(submit)) = document
        .paths
        .paths
        .get_mut("/jobs")
        .map(|item| &mut item.post)
    else {
        return;
    };
    for status in ["200", "202"] {
        let Some(RefOr::T(response)) = submit.responses.responses.get_mut(status) else {
            continue;
        };
        for (target, parameter) in TAKE_AN_ID {
            response.links.insert(
                target.into(),
                RefOr::T(
                    LinkBuilder::new()
                        .operation_id(target)
                        .parameter(parameter, "$response.body#/id")
                        .build(),
                ),
            );
        }
    }
}

/// The operations of one path, whatever their methods.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.head,
        &mut item.post,
        &mut item.put,
        &mut item.patch,
        &mut item.delete,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// A submit's `webhook`: with `--webhook-secret`, an http(s) URL (or `null`); without, `null` only,
/// since such a server refuses any URL (400).
fn webhook_schema(webhooks: bool) -> RefOr<Schema> {
    if webhooks {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .format(Some(SchemaFormat::Custom("uri".into())))
            .pattern(Some("^[hH][tT][tT][pP][sS]?://"))
            .max_length(Some(MAX_WEBHOOK_BYTES))
            .description(Some(
                "A URL the server POSTs the job's final state to, signed (docs/protocol.md): http \
                 or https, no credentials, and no private address unless --webhook-allow-private.",
            ))
            .into()
    } else {
        ObjectBuilder::new()
            .schema_type(Type::Null)
            .description(Some(
                "This server sends no webhooks (it has no --webhook-secret): a URL is refused (400).",
            ))
            .into()
    }
}

impl Served {
    /// `document` as served.
    pub fn new(document: &Document) -> Self {
        Self(
            document
                .to_json()
                .expect("the OpenAPI document serializes")
                .into(),
        )
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "ops",
    responses(
        (status = 200, description = "The OpenAPI 3.1 description of this server's HTTP API.",
            body = Object, content_type = "application/json"),
    )
)]
pub async fn serve(Extension(Served(json)): Extension<Served>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}
