//! Reading rows, on either backend.

use chrono::NaiveDateTime;
use clerk_sync::outbox::worker::{try_execute_job, Outcome, WorkerSettings};
use clerk_sync::outbox::ClerkClient;
use clerk_sync::store::Store;
use clerk_sync::with_pool;
use serde_json::Value;

use super::FakeClerk;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    #[sqlx(rename = "clerkId")]
    pub clerk_id: String,
    pub email: String,
    pub photo: String,
    #[sqlx(rename = "firstName")]
    pub first_name: Option<String>,
    #[sqlx(rename = "lastName")]
    pub last_name: Option<String>,
    #[sqlx(rename = "usedGenerations")]
    pub used: i32,
    #[sqlx(rename = "availableGenerations")]
    pub available: i32,
    #[sqlx(rename = "createdAt")]
    pub created_at: NaiveDateTime,
    #[sqlx(rename = "updatedAt")]
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LedgerRow {
    pub id: String,
    pub tracking_id: String,
    #[sqlx(rename = "userId")]
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub amount: Option<i32>,
    #[sqlx(rename = "type")]
    pub kind: Option<String>,
    pub reason: Option<String>,
    #[sqlx(rename = "webhookEventId")]
    pub webhook_event_id: Option<String>,
    #[sqlx(rename = "idempotencyKey")]
    pub idempotency_key: Option<String>,
    #[sqlx(rename = "balanceAfter")]
    pub balance_after: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    #[sqlx(rename = "eventId")]
    pub event_id: String,
    #[sqlx(rename = "eventType")]
    pub event_type: String,
    pub processed: bool,
    pub status: Option<String>,
    pub error: Option<String>,
    pub has_payload: bool,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub payload: sqlx::types::Json<Value>,
    pub status: String,
    pub attempts: i32,
    #[sqlx(rename = "nextAttemptAt")]
    pub next_attempt_at: NaiveDateTime,
    #[sqlx(rename = "lastError")]
    pub last_error: Option<String>,
}

pub async fn users(store: &Store) -> Vec<UserRow> {
    with_pool!(store, |pool, _p| {
        sqlx::query_as(r#"SELECT * FROM "User" ORDER BY "createdAt", "id""#)
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

pub async fn ledger(store: &Store) -> Vec<LedgerRow> {
    with_pool!(store, |pool, _p| {
        sqlx::query_as(
            r#"SELECT "id", "tracking_id", "userId", "status", "amount", "type", "reason",
                      "webhookEventId", "idempotencyKey", "balanceAfter"
               FROM "Transaction" ORDER BY "createdAt", "id""#,
        )
        .fetch_all(pool)
        .await
        .unwrap()
    })
}

pub async fn events(store: &Store) -> Vec<EventRow> {
    with_pool!(store, |pool, _p| {
        sqlx::query_as(
            r#"SELECT "eventId", "eventType", "processed", "status", "error",
                      "payload" IS NOT NULL AS has_payload
               FROM "WebhookEvent" ORDER BY "createdAt", "id""#,
        )
        .fetch_all(pool)
        .await
        .unwrap()
    })
}

/// clerk-sync's own table `name` as SQL names it on this store's backend.
pub fn own_table(store: &Store, name: &str) -> String {
    match store {
        Store::Postgres(_) => format!("clerk_sync.\"{name}\""),
        Store::Sqlite(_) => format!("\"{name}\""),
    }
}

pub async fn jobs(store: &Store) -> Vec<JobRow> {
    let sql = format!(
        r#"SELECT "id", "kind", "payload", "status", "attempts", "nextAttemptAt", "lastError"
           FROM {} ORDER BY "createdAt", "id""#,
        own_table(store, "OutboxJob")
    );
    with_pool!(store, |pool, _p| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

/// Per user: credits minus debits in the ledger equal `available - used` (the check
/// `diagnose` runs).
pub async fn assert_ledger_adds_up(store: &Store) {
    let mismatches = clerk_sync::commands::diagnose::ledger_mismatches(store)
        .await
        .unwrap();
    assert!(
        mismatches.is_empty(),
        "ledger does not add up: {mismatches:?}"
    );
}

/// Make every pending job due now (stands in for waiting out the backoff).
pub async fn make_jobs_due(store: &Store) {
    let sql = format!(
        r#"UPDATE {} SET "nextAttemptAt" = $1 WHERE "status" = 'pending'"#,
        own_table(store, "OutboxJob")
    );
    with_pool!(store, |pool, _p| {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(clerk_sync::store::now() - chrono::Duration::seconds(1))
            .execute(pool)
            .await
            .unwrap();
    });
}

pub async fn step_worker(store: &Store, clerk: &FakeClerk) -> Outcome {
    let client = ClerkClient::new(
        clerk.url.parse().unwrap(),
        clerk_sync::config::Redacted(FakeClerk::KEY.to_owned()),
    )
    .unwrap();
    try_execute_job(store, &client, &WorkerSettings::default())
        .await
        .unwrap()
}
