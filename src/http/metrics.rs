//! `GET /metrics`: the application's registry (`crate::metrics`) as Prometheus text.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::AppState;
use crate::metrics::Sampled;

/// Prometheus / OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // The queue's figures come from the database; a scrape waits at most a second for
    // them, and keeps the last values when they do not come.
    let outbox = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        crate::outbox::backlog(&state.store),
    )
    .await
    .ok()
    .and_then(Result::ok);
    state.metrics.sample(&Sampled {
        outbox,
        pool: state.store.pool_stats(),
    });
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
