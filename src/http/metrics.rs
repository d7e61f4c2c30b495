//! `GET /metrics`: Prometheus text format. Each application owns its registry (no global
//! recorder), so every test app counts on its own.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::signup::QueueMetrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Verified webhooks by outcome: processed, duplicate, ignored, failed.
    pub webhook_events: Family<OutcomeLabel, Counter>,
    /// Refused or unanswerable webhook requests by error code.
    pub webhook_errors: Family<OutcomeLabel, Counter>,
    /// Outbox deliveries by outcome: done, retried, dead.
    pub outbox_jobs: Family<OutcomeLabel, Counter>,
    /// The PostgreSQL signup queue: webhooks waiting, webhooks per statement.
    pub signup_queue: QueueMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("clerk_sync");
        let webhook_events = Family::<OutcomeLabel, Counter>::default();
        let webhook_errors = Family::<OutcomeLabel, Counter>::default();
        let outbox_jobs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhook_events",
            "Verified webhooks by outcome",
            webhook_events.clone(),
        );
        registry.register(
            "webhook_errors",
            "Webhook requests answered with an error, by code",
            webhook_errors.clone(),
        );
        registry.register(
            "outbox_jobs",
            "Outbox delivery attempts by outcome",
            outbox_jobs.clone(),
        );
        let signup_queue = QueueMetrics::default();
        registry.register(
            "signup_queue_waiting",
            "Signup webhooks waiting for a database statement (PostgreSQL)",
            signup_queue.waiting.clone(),
        );
        registry.register(
            "signup_batch_size",
            "Signup webhooks per database statement (PostgreSQL)",
            signup_queue.batch_size.clone(),
        );
        Self {
            registry,
            webhook_events,
            webhook_errors,
            outbox_jobs,
            signup_queue,
        }
    }
}

impl Metrics {
    pub fn count(family: &Family<OutcomeLabel, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

/// Prometheus / OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
