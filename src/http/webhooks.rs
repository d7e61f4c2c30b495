//! `POST /api/webhooks/clerk`: headers, then the size-limited raw body, then the
//! signature; only a `VerifiedWebhook` reaches the signup transaction.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use std::time::Instant;
use tracing::instrument;

use super::error::ApiError;
use super::extract::read_body;
use super::{AppState, ErrorBody};
use crate::metrics::{Metrics, WebhookLabels};
use crate::signup::{self, Outcome};
use crate::webhooks::clerk_event::{parse_envelope, EventType};
use crate::webhooks::verify::SignatureHeaders;

/// Clerk user events are a few KiB; Svix caps payloads far below this.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A Svix-signed Clerk event (`user.created`, `user.updated`, `user.deleted`; others are
/// recorded as ignored). The signature is checked on the raw body.
#[utoipa::path(
    post, path = "/api/webhooks/clerk", tag = "webhooks",
    params(
        ("svix-id" = String, Header, description = "Message id (or `webhook-id`)"),
        ("svix-timestamp" = i64, Header, description = "Unix seconds (or `webhook-timestamp`)"),
        ("svix-signature" = String, Header, description = "Space-separated `v1,<base64>` (or `webhook-signature`)"),
    ),
    request_body(content = super::openapi::ClerkEvent, content_type = "application/json", description = "The Clerk event, at most 256 KiB, signed as sent (the signature covers the raw bytes)"),
    responses(
        (status = 200, body = WebhookOutcome, description = "processed, duplicate, ignored or failed (recorded with its reason)"),
        (status = 400, body = ErrorBody, description = "Svix headers missing or malformed"),
        (status = 401, body = ErrorBody, description = "Signature invalid or timestamp outside ±5 minutes"),
        (status = 413, body = ErrorBody),
        (status = 500, body = ErrorBody, description = "The schema refused the write (`constraint_violation`); Svix retries"),
        (status = 503, body = ErrorBody, description = "Database unavailable (`database_unavailable`), or its schema lacks what the service needs (`schema_drift`, see /readyz); Svix retries"),
    )
)]
#[instrument(name = "clerk_webhook", skip_all, fields(svix_id))]
pub async fn clerk_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<WebhookOutcome>, ApiError> {
    let started = Instant::now();
    let mut seen = Seen::default();
    // Boxed: the signup path's future is large, and every layer around the handler
    // (tracing, timeout, routing) would otherwise move it again; a profile of the signup
    // bench had about 2.4% of the service's CPU in those copies.
    let result = Box::pin(handle(&state, headers, body, &mut seen)).await;
    account(&state, seen, &result, started);
    result
}

/// Count the answer (error codes, the latency histogram, the console's last hour) and
/// tell the observer, if there is one.
fn account(
    state: &AppState,
    seen: Seen,
    result: &Result<Json<WebhookOutcome>, ApiError>,
    started: Instant,
) {
    if let Err(e) = result {
        Metrics::count(&state.metrics.webhook_errors, e.code());
    }
    let labels = WebhookLabels {
        event_type: seen.event_type.as_ref().map_or("none", EventType::label),
        outcome: match result {
            Ok(Json(o)) => o.status,
            Err(e) => e.code(),
        },
    };
    let seconds = started.elapsed().as_secs_f64();
    if matches!(labels.event_type, "user.created" | "none") {
        state
            .metrics
            .recent_signups
            .record((state.clock)(), labels.outcome, seconds);
    }
    state
        .metrics
        .webhook_duration
        .get_or_create(&labels)
        .observe(seconds);
    if let Some(observe) = &state.observer {
        observe(WebhookSeen {
            event_type: seen.event_type.map(|t| t.as_str().to_owned()),
            clerk_id: seen.clerk_id,
            outcome: match result {
                Ok(Json(o)) => match (&o.action, &o.reason) {
                    (Some(action), _) => format!("{} {action}", o.status),
                    (None, Some(reason)) => format!("{}: {reason}", o.status),
                    (None, None) => o.status.to_owned(),
                },
                Err(e) => e.code().to_owned(),
            },
            ok: result.as_ref().is_ok_and(|Json(o)| o.status == "processed"),
            elapsed: started.elapsed(),
        });
    }
}

/// What one delivery came to, for an observer (`clerk-sync dev`): known before the
/// signature was checked only as far as the error says.
#[derive(Debug, Clone)]
pub struct WebhookSeen {
    /// `user.created`, …; `None` before the signature was verified.
    pub event_type: Option<String>,
    pub clerk_id: Option<String>,
    /// `processed created`, `duplicate`, `ignored: <reason>`, `failed: <reason>`, or the
    /// error code (`invalid_signature`, …).
    pub outcome: String,
    /// Processed (created, updated or deleted).
    pub ok: bool,
    pub elapsed: std::time::Duration,
}

/// Called once per delivery, after its answer is decided.
pub type WebhookObserver = std::sync::Arc<dyn Fn(WebhookSeen) + Send + Sync>;

/// What the handler learned of a verified body: its type, and (for an observer) its
/// Clerk id; nothing for a request refused before that.
#[derive(Debug, Default)]
struct Seen {
    event_type: Option<EventType>,
    clerk_id: Option<String>,
}

/// What became of a verified webhook.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct WebhookOutcome {
    /// `processed`, `duplicate`, `ignored` or `failed`.
    status: &'static str,
    /// `created`, `updated` or `deleted`, when processed.
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
    /// Why, when ignored or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn handle(
    state: &AppState,
    headers: HeaderMap,
    body: Body,
    seen: &mut Seen,
) -> Result<Json<WebhookOutcome>, ApiError> {
    let signature = SignatureHeaders::from_headers(&headers)?;
    tracing::Span::current().record("svix_id", signature.msg_id().as_str());
    let bytes = read_body(&headers, body, MAX_BODY_BYTES).await?;
    let hook = signature.verify(&state.webhook_secrets, bytes, (state.clock)())?;
    state.writable()?;
    // Parsed once, here: the type labels the latency histogram; the Clerk id is read for
    // an observer only.
    let envelope = parse_envelope(hook.body());
    if let Ok(e) = &envelope {
        seen.event_type = Some(e.event_type.clone());
        if state.observer.is_some() {
            seen.clerk_id = e.data_id();
        }
    }
    let outcome = signup::handle_parsed(
        &state.store,
        &state.signup,
        state.signup_queue.as_ref(),
        &hook,
        envelope,
    )
    .await?;
    Metrics::count(&state.metrics.webhook_events, outcome.status());
    if matches!(outcome, Outcome::Processed(signup::Action::Created)) {
        state.metrics.signups_created.inc();
        state.outbox_wake.notify_one();
    }
    let status = outcome.status();
    Ok(Json(match outcome {
        Outcome::Processed(action) => WebhookOutcome {
            status,
            action: Some(action.as_str()),
            reason: None,
        },
        Outcome::Duplicate => WebhookOutcome {
            status,
            action: None,
            reason: None,
        },
        Outcome::Ignored(reason) | Outcome::Failed(reason) => WebhookOutcome {
            status,
            action: None,
            reason: Some(reason),
        },
    }))
}
