//! The HTTP surface: thin handlers over the use cases.

pub mod error;
mod health;
pub mod metrics;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Notify;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Level;

pub use error::ApiError;
pub use webhooks::MAX_BODY_BYTES;

use crate::signup::SignupSettings;
use crate::store::Store;
use crate::webhooks::WebhookSecret;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub webhook_secrets: Arc<[WebhookSecret]>,
    pub signup: SignupSettings,
    /// Wakes the outbox worker after a commit that queued a job.
    pub outbox_wake: Arc<Notify>,
    /// Unix seconds for the signature's timestamp check; fixed in tests of the ±5 minute rule.
    pub clock: Clock,
    pub metrics: Arc<metrics::Metrics>,
}

pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| chrono::Utc::now().timestamp())
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

async fn not_found() -> ApiError {
    ApiError::NotFound
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
            tower_http::trace::DefaultOnResponse::new()
                .level(Level::INFO)
                .latency_unit(tower_http::LatencyUnit::Millis),
        );
    Router::new()
        .route("/api/webhooks/clerk", post(webhooks::clerk_webhook))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .fallback(not_found)
        .with_state(state)
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
}
