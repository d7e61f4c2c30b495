//! `POST /api/webhooks/clerk`: headers, then the size-limited raw body, then the
//! signature; only a `VerifiedWebhook` reaches the signup transaction.

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use tracing::instrument;

use super::error::ApiError;
use super::metrics::Metrics;
use super::AppState;
use crate::signup::{self, Outcome};
use crate::webhooks::verify::SignatureHeaders;

/// Clerk user events are a few KiB; Svix caps payloads far below this.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[instrument(name = "clerk_webhook", skip_all, fields(svix_id))]
pub async fn clerk_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let result = handle(&state, headers, body).await;
    if let Err(e) = &result {
        Metrics::count(&state.metrics.webhook_errors, e.code());
    }
    result
}

async fn handle(state: &AppState, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    let signature = SignatureHeaders::from_headers(&headers)?;
    tracing::Span::current().record("svix_id", signature.msg_id().as_str());
    let too_large = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY_BYTES);
    if too_large {
        return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
    }
    let bytes = to_bytes(body, MAX_BODY_BYTES).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ApiError::PayloadTooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::BodyUnreadable
        }
    })?;
    let hook = signature.verify(&state.webhook_secrets, bytes, (state.clock)())?;
    let outcome = signup::handle(&state.store, &state.signup, &hook).await?;
    Metrics::count(&state.metrics.webhook_events, outcome.status());
    if matches!(outcome, Outcome::Processed(signup::Action::Created)) {
        state.outbox_wake.notify_one();
    }
    Ok(Json(match &outcome {
        Outcome::Processed(action) => {
            json!({"status": outcome.status(), "action": action.as_str()})
        }
        Outcome::Duplicate => json!({"status": outcome.status()}),
        Outcome::Ignored(reason) | Outcome::Failed(reason) => {
            json!({"status": outcome.status(), "reason": reason})
        }
    }))
}
