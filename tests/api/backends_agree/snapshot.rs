//! Every column of every table the sequence writes, read back on either backend.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use clerk_sync::store::Store;
use clerk_sync::with_pool;
use serde_json::{json, Value};
use sqlx::types::Json;

use crate::helpers::own_table;

type Rows = Vec<BTreeMap<&'static str, Value>>;

#[derive(sqlx::FromRow)]
struct EventCols {
    id: String,
    #[sqlx(rename = "eventId")]
    event_id: String,
    #[sqlx(rename = "eventType")]
    event_type: String,
    processed: bool,
    #[sqlx(rename = "processedAt")]
    processed_at: Option<NaiveDateTime>,
    #[sqlx(rename = "createdAt")]
    created_at: NaiveDateTime,
    status: Option<String>,
    error: Option<String>,
    payload: Option<Json<Value>>,
    #[sqlx(rename = "clerkId")]
    clerk_id: Option<String>,
}

#[derive(sqlx::FromRow)]
struct UserCols {
    id: String,
    #[sqlx(rename = "clerkId")]
    clerk_id: String,
    email: String,
    photo: String,
    #[sqlx(rename = "firstName")]
    first_name: Option<String>,
    #[sqlx(rename = "lastName")]
    last_name: Option<String>,
    #[sqlx(rename = "usedGenerations")]
    used: i32,
    #[sqlx(rename = "availableGenerations")]
    available: i32,
    #[sqlx(rename = "createdAt")]
    created_at: NaiveDateTime,
    #[sqlx(rename = "updatedAt")]
    updated_at: NaiveDateTime,
}

#[derive(sqlx::FromRow)]
struct LedgerCols {
    id: String,
    tracking_id: String,
    #[sqlx(rename = "userId")]
    user_id: Option<String>,
    status: Option<String>,
    amount: Option<i32>,
    #[sqlx(rename = "type")]
    kind: Option<String>,
    description: Option<String>,
    reason: Option<String>,
    #[sqlx(rename = "webhookEventId")]
    webhook_event_id: Option<String>,
    #[sqlx(rename = "idempotencyKey")]
    idempotency_key: Option<String>,
    #[sqlx(rename = "balanceAfter")]
    balance_after: Option<i32>,
    #[sqlx(rename = "createdAt")]
    created_at: NaiveDateTime,
}

#[derive(sqlx::FromRow)]
struct SyncCols {
    #[sqlx(rename = "clerkId")]
    clerk_id: String,
    #[sqlx(rename = "clerkUpdatedAt")]
    clerk_updated_at: i64,
    #[sqlx(rename = "deletedAt")]
    deleted_at: Option<NaiveDateTime>,
}

#[derive(sqlx::FromRow)]
struct JobCols {
    id: String,
    kind: String,
    payload: Json<Value>,
    status: String,
    attempts: i32,
    #[sqlx(rename = "nextAttemptAt")]
    next_attempt_at: NaiveDateTime,
    #[sqlx(rename = "lastError")]
    last_error: Option<String>,
    #[sqlx(rename = "createdAt")]
    created_at: NaiveDateTime,
    #[sqlx(rename = "updatedAt")]
    updated_at: NaiveDateTime,
}

/// Every column of every table the sequence writes, in a stable order. Each table's
/// rows are sorted by columns that do not depend on generated ids or the clock.
pub(super) async fn snapshot(store: &Store) -> BTreeMap<&'static str, Rows> {
    let sync_table = own_table(store, "ClerkUserSync");
    let job_table = own_table(store, "OutboxJob");
    // One query per table, each run on this store's pool.
    macro_rules! all {
        ($sql:expr) => {
            with_pool!(store, |pool, _p| {
                sqlx::query_as(sqlx::AssertSqlSafe($sql))
                    .fetch_all(pool)
                    .await
                    .unwrap()
            })
        };
    }
    let events: Vec<EventCols> = all!(r#"SELECT * FROM "WebhookEvent" ORDER BY "eventId""#);
    let users: Vec<UserCols> = all!(r#"SELECT * FROM "User" ORDER BY "clerkId""#);
    let ledger: Vec<LedgerCols> =
        all!(r#"SELECT * FROM "Transaction" ORDER BY "tracking_id", "idempotencyKey""#);
    let syncs: Vec<SyncCols> = all!(format!(r#"SELECT * FROM {sync_table} ORDER BY "clerkId""#));
    let jobs: Vec<JobCols> = all!(format!("SELECT * FROM {job_table}"));
    // By the Clerk user a job is for: jsonb and text order differently.
    let mut jobs = jobs;
    jobs.sort_by_key(|j| j.payload.0["clerkId"].as_str().map(str::to_owned));
    let mut tables = BTreeMap::new();
    tables.insert(
        "WebhookEvent",
        events
            .into_iter()
            .map(|e| {
                BTreeMap::from([
                    ("id", json!(e.id)),
                    ("eventId", json!(e.event_id)),
                    ("eventType", json!(e.event_type)),
                    ("processed", json!(e.processed)),
                    (
                        "processedAt",
                        json!(e.processed_at.map(|t| t == e.created_at)),
                    ),
                    ("status", json!(e.status)),
                    ("error", json!(e.error)),
                    ("payload", e.payload.map_or(Value::Null, |p| p.0)),
                    ("clerkId", json!(e.clerk_id)),
                ])
            })
            .collect(),
    );
    tables.insert(
        "User",
        users
            .into_iter()
            .map(|u| {
                BTreeMap::from([
                    ("id", json!(u.id)),
                    ("clerkId", json!(u.clerk_id)),
                    ("email", json!(u.email)),
                    ("photo", json!(u.photo)),
                    ("firstName", json!(u.first_name)),
                    ("lastName", json!(u.last_name)),
                    ("usedGenerations", json!(u.used)),
                    ("availableGenerations", json!(u.available)),
                    // Equal at signup; a later movement may land in the same millisecond.
                    (
                        "updatedAt >= createdAt",
                        json!(u.updated_at >= u.created_at),
                    ),
                ])
            })
            .collect(),
    );
    tables.insert(
        "Transaction",
        ledger
            .into_iter()
            .map(|t| {
                BTreeMap::from([
                    ("id", json!(t.id)),
                    ("tracking_id", json!(t.tracking_id)),
                    ("userId", json!(t.user_id)),
                    ("status", json!(t.status)),
                    ("amount", json!(t.amount)),
                    ("type", json!(t.kind)),
                    ("description", json!(t.description)),
                    ("reason", json!(t.reason)),
                    ("webhookEventId", json!(t.webhook_event_id)),
                    ("idempotencyKey", json!(t.idempotency_key)),
                    ("balanceAfter", json!(t.balance_after)),
                    ("createdAt", json!(t.created_at.and_utc().timestamp() > 0)),
                ])
            })
            .collect(),
    );
    tables.insert(
        "ClerkUserSync",
        syncs
            .into_iter()
            .map(|s| {
                BTreeMap::from([
                    ("clerkId", json!(s.clerk_id)),
                    ("clerkUpdatedAt", json!(s.clerk_updated_at)),
                    ("deletedAt", json!(s.deleted_at.is_some())),
                ])
            })
            .collect(),
    );
    tables.insert(
        "OutboxJob",
        jobs.into_iter()
            .map(|j| {
                BTreeMap::from([
                    ("id", json!(j.id)),
                    ("kind", json!(j.kind)),
                    ("payload", j.payload.0),
                    ("status", json!(j.status)),
                    ("attempts", json!(j.attempts)),
                    (
                        "nextAttemptAt = createdAt",
                        json!(j.next_attempt_at == j.created_at),
                    ),
                    ("lastError", json!(j.last_error)),
                    ("updatedAt = createdAt", json!(j.updated_at == j.created_at)),
                ])
            })
            .collect(),
    );
    tables
}
