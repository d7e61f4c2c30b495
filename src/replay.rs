//! Replay: apply again the webhooks recorded `failed`, once their cause is
//! fixed (a schema repaired, a constraint relaxed). Each goes through the signup path a
//! delivery takes, under its own `svix-id`, so the same idempotency holds: an event that
//! succeeds is recorded `processed` and is never applied twice; one that fails again is
//! recorded `failed` with its new reason.
//!
//! Only events whose payload is stored can be replayed: a body that was not JSON has none,
//! and a deleted user's payloads are erased.

use bytes::Bytes;
use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;

use crate::domain::SvixMessageId;
use crate::signup::{self, Outcome, SignupSettings};
use crate::store::{Store, StoreError};
use crate::webhooks::VerifiedWebhook;
use crate::with_pool;

/// Which failed events to replay.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only events first received at or after this time (UTC).
    pub since: Option<NaiveDateTime>,
    /// Only these `svix-id`s; empty: every failed event.
    pub svix_ids: Vec<String>,
}

/// What became of one replayed event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    pub svix_id: String,
    pub event_type: String,
    /// Why it had failed.
    pub was: Option<String>,
    /// `processed`, `duplicate`, `ignored` or `failed`, or `error` (not recorded).
    pub status: String,
    /// `created` / `updated` / `deleted`, or the new reason.
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub dry_run: bool,
    /// Failed events without a stored payload, which cannot be replayed.
    pub without_payload: i64,
    pub events: Vec<Replayed>,
}

#[derive(sqlx::FromRow)]
struct FailedEvent {
    #[sqlx(rename = "eventId")]
    event_id: String,
    #[sqlx(rename = "eventType")]
    event_type: String,
    error: Option<String>,
    payload: Option<Json<Value>>,
    #[sqlx(rename = "createdAt")]
    created_at: NaiveDateTime,
}

const FAILED: &str = r#"
SELECT "eventId", "eventType", "error", "payload", "createdAt" FROM "WebhookEvent"
WHERE "status" = 'failed' AND ($1 IS NULL OR "createdAt" >= $1)
ORDER BY "createdAt", "eventId""#;

async fn failed_events(
    store: &Store,
    selection: &Selection,
) -> Result<Vec<FailedEvent>, StoreError> {
    let rows: Vec<FailedEvent> = with_pool!(store, |pool, p| {
        sqlx::query_as(FAILED)
            .bind(selection.since)
            .persistent(p)
            .fetch_all(pool)
            .await?
    });
    Ok(rows
        .into_iter()
        .filter(|e| selection.svix_ids.is_empty() || selection.svix_ids.contains(&e.event_id))
        .collect())
}

/// Replay the selected failed events, oldest first; with `dry_run`, only list them.
pub async fn run(
    store: &Store,
    settings: &SignupSettings,
    selection: &Selection,
    dry_run: bool,
) -> Result<Report, StoreError> {
    let mut report = Report {
        dry_run,
        without_payload: 0,
        events: Vec::new(),
    };
    for event in failed_events(store, selection).await? {
        let (Some(Json(payload)), Ok(msg_id)) =
            (event.payload, SvixMessageId::parse(&event.event_id))
        else {
            report.without_payload += 1;
            continue;
        };
        let mut replayed = Replayed {
            svix_id: event.event_id,
            event_type: event.event_type,
            was: event.error,
            status: "failed".into(),
            detail: None,
        };
        if !dry_run {
            let body = Bytes::from(serde_json::to_vec(&payload).expect("JSON serialises"));
            let hook =
                VerifiedWebhook::from_stored(msg_id, event.created_at.and_utc().timestamp(), body);
            match signup::handle(store, settings, None, &hook).await {
                Ok(outcome) => {
                    replayed.status = outcome.status().to_owned();
                    replayed.detail = match outcome {
                        Outcome::Processed(action) => Some(action.as_str().to_owned()),
                        Outcome::Ignored(reason) | Outcome::Failed(reason) => Some(reason),
                        Outcome::Duplicate => None,
                    };
                }
                Err(e) => {
                    replayed.status = "error".into();
                    replayed.detail = Some(e.to_string());
                }
            }
        }
        report.events.push(replayed);
    }
    if !dry_run {
        tracing::info!(
            replayed = report.events.len(),
            outcome = %report.summary(),
            without_payload = report.without_payload,
            "replayed failed events"
        );
    }
    Ok(report)
}

impl Report {
    /// Counts by status, e.g. `processed 3, failed 1`.
    pub fn summary(&self) -> String {
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for e in &self.events {
            *counts.entry(e.status.as_str()).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
        if parts.is_empty() {
            "nothing to replay".into()
        } else {
            parts.join(", ")
        }
    }
}
