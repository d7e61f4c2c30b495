//! The HTTP surface: thin handlers over the use cases.

pub mod auth;
pub mod console;
mod credits;
pub mod error;
mod extract;
mod health;
pub mod metrics;
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

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub webhook_secrets: Arc<[WebhookSecret]>,
    pub signup: SignupSettings,
    /// Groups concurrent webhooks into one statement (PostgreSQL only).
    pub signup_queue: Option<SignupQueue>,
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

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "clerk-sync", description = "Clerk webhooks provisioned exactly once, and the credits API."),
    modifiers(&BearerKey)
)]
struct ApiDoc;

struct BearerKey;

impl utoipa::Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// The routes and the OpenAPI document generated from the same handler annotations, so
/// the document cannot drift from what is served.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(webhooks::clerk_webhook))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(credits::get_user))
        .routes(routes!(credits::consume))
        .routes(routes!(credits::grant))
        .routes(routes!(credits::ledger))
        .split_for_parts()
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
}
