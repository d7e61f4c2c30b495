//! The HTTP surface: thin handlers over the use cases.

pub mod auth;
pub mod console;
mod credits;
pub mod error;
mod extract;
mod health;
pub mod metrics;
mod openapi;
pub mod server;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{HeaderName, Request};
use axum::routing::get;
use axum::Router;
use tokio::sync::Notify;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use webhooks::{WebhookObserver, WebhookSeen, MAX_BODY_BYTES};

use crate::signup::{SignupQueue, SignupSettings};
use crate::store::Store;
use crate::webhooks::WebhookSecret;

/// What every handler shares, behind one `Arc`: axum clones the state for each request,
/// and cloning thirteen fields (most of them `Arc`s) then dropping them was 4.6% of the
/// service's CPU samples in a signup bench.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    pub fn new(inner: AppStateInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub store: Store,
    pub webhook_secrets: Arc<[WebhookSecret]>,
    pub signup: SignupSettings,
    /// Groups concurrent webhooks into one statement (PostgreSQL only).
    pub signup_queue: Option<SignupQueue>,
    /// Groups concurrent credit movements into one statement (PostgreSQL only).
    pub credits_queue: Option<crate::credits::CreditsQueue>,
    /// Wakes the outbox worker after a commit that queued a job.
    pub outbox_wake: Arc<Notify>,
    /// Unix seconds for the signature's timestamp check; fixed in tests of the ±5 minute rule.
    pub clock: Clock,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub api_keys: auth::ApiKeys,
    /// The Clerk Backend API, when `CLERK_SECRET_KEY` is set (lazy provisioning).
    pub clerk: Option<crate::outbox::ClerkClient>,
    /// Told what each webhook delivery came to (`clerk-sync dev`).
    pub observer: Option<WebhookObserver>,
    /// The console's keys; `None`: the console is off.
    pub console: Option<console::ConsoleKeys>,
    /// The console's Health page runs this for the `diagnose` report.
    pub diagnose: Option<console::DiagnoseReport>,
    /// What the live schema lacks, if anything: writes and `/readyz` answer 503 meanwhile.
    pub schema: crate::schema_watch::SchemaWatch,
}

impl AppStateInner {
    /// Refuse a write while the schema lacks what the service needs (503 `schema_drift`):
    /// a write whose guarantee rests on a missing unique index could double, and one that
    /// names a missing column fails anyway.
    pub fn writable(&self) -> Result<(), ApiError> {
        match self.schema.drift() {
            Some(drift) if drift.blocks_writes() => Err(ApiError::SchemaDrift(drift.summary())),
            _ => Ok(()),
        }
    }
}

pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| chrono::Utc::now().timestamp())
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's body must arrive within this (408 `request_timeout` otherwise).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// A request must be answered within this (503, for Svix to retry): longer than
/// `BODY_READ_TIMEOUT` plus the default `TRANSACTION_TIMEOUT_MS`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Every error response: `{"error": "<machine code>", "message": "<for a human>"}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    /// The current balance, on `insufficient_credits` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
}

/// Every error answer of the API in the one JSON body. axum's own rejections (a query or
/// path that does not parse, a method the path does not take) come as text or empty, and
/// so does the request timeout's 503: they are rewritten here, their text kept as the
/// message when it is short (it names the parameter, never a value from a database).
async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    use axum::response::IntoResponse;
    // The console answers in HTML.
    let console = request.uri().path().starts_with("/admin");
    let response = next.run(request).await;
    if console {
        return response;
    }
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let (code, fallback) = match status.as_u16() {
        400 | 422 => ("invalid_request", "the request is invalid"),
        404 => ("not_found", "no such path"),
        405 => ("method_not_allowed", "this path does not take this method"),
        408 => ("request_timeout", "the request did not arrive in time"),
        413 => ("payload_too_large", "the body is larger than the limit"),
        415 => (
            "unsupported_media_type",
            "the body must be application/json",
        ),
        503 => (
            "service_unavailable",
            "the request took longer than the service allows; retry",
        ),
        _ => ("error", "the request failed"),
    };
    let message = if text.is_empty() || text.len() > 300 {
        fallback.to_owned()
    } else {
        text
    };
    let mut out = (
        status,
        axum::Json(ErrorBody {
            error: code.to_owned(),
            message,
            balance: None,
        }),
    )
        .into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// The routes and the OpenAPI document generated from the same handler annotations, so
/// the document cannot drift from what is served.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(webhooks::clerk_webhook))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(credits::get_user))
        .routes(routes!(credits::consume))
        .routes(routes!(credits::grant))
        .routes(routes!(credits::ledger))
        .split_for_parts();
    openapi::complete(&mut doc);
    (router, doc)
}

pub fn router(state: AppState) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request<_>| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            let request_id = request
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if matches!(route, "/healthz" | "/readyz" | "/metrics") {
                tracing::debug_span!("request", method = %request.method(), route, request_id)
            } else {
                tracing::info_span!("request", method = %request.method(), route, request_id)
            }
        })
        .on_response(
            |response: &axum::http::Response<_>, latency: Duration, span: &tracing::Span| {
                // A probe's span is at DEBUG: below that, its answer is not logged either,
                // rather than logged without its method and route.
                if !span.is_disabled() {
                    tracing::info!(
                        status = response.status().as_u16(),
                        latency_ms = latency.as_secs_f64() * 1000.0,
                        "finished processing request"
                    );
                }
            },
        );
    let (routes, openapi) = routes();
    let openapi = Arc::new(openapi);
    routes
        .route(
            "/openapi.json",
            get(move || {
                let openapi = openapi.clone();
                async move { axum::Json(openapi) }
            }),
        )
        .merge(console::routes())
        .fallback(not_found)
        .with_state(state)
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_READ_TIMEOUT,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn(json_errors))
}
