//! What the console (`http::console`) shows and does, as queries over the store: webhook
//! events filtered and paged newest first, one event with its payload (emails masked),
//! outbox jobs, a dead job queued again, a user found by Clerk id or email.

use chrono::NaiveDateTime;
use serde_json::Value;
use sqlx::types::Json;

use crate::credits::UserCredits;
use crate::store::{self, OwnTablesSql, Store, StoreError};
use crate::with_pool;

/// Rows per page of every console list.
pub const PAGE: i64 = 25;

/// Which events to list; every field optional.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub clerk_id: Option<String>,
    /// Received at or after.
    pub since: Option<NaiveDateTime>,
    /// Keyset: strictly older than this (`createdAt`, `id`) — the last row shown.
    pub before: Option<(NaiveDateTime, String)>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: String,
    #[sqlx(rename = "eventId")]
    pub svix_id: String,
    #[sqlx(rename = "eventType")]
    pub event_type: String,
    pub status: Option<String>,
    pub error: Option<String>,
    #[sqlx(rename = "clerkId")]
    pub clerk_id: Option<String>,
    #[sqlx(rename = "createdAt")]
    pub received_at: NaiveDateTime,
    #[sqlx(rename = "processedAt")]
    pub processed_at: Option<NaiveDateTime>,
    #[sqlx(rename = "hasPayload")]
    pub has_payload: bool,
}

impl EventRow {
    /// From arrival to the last write, in milliseconds.
    pub fn latency_ms(&self) -> Option<i64> {
        self.processed_at
            .map(|done| (done - self.received_at).num_milliseconds().max(0))
    }
}

/// The columns of an [`EventRow`].
macro_rules! event_columns {
    () => {
        r#""id", "eventId", "eventType", "status", "error", "clerkId", "createdAt", "processedAt",
       CASE WHEN "payload" IS NULL THEN FALSE ELSE TRUE END AS "hasPayload""#
    };
}

const EVENTS: &str = concat!(
    "SELECT ",
    event_columns!(),
    r#" FROM "WebhookEvent"
WHERE ($1 IS NULL OR "eventType" = $1) AND ($2 IS NULL OR "status" = $2)
  AND ($3 IS NULL OR "clerkId" = $3) AND ($4 IS NULL OR "createdAt" >= $4)
  AND ($5 IS NULL OR "createdAt" < $5 OR ("createdAt" = $5 AND "id" < $6))
ORDER BY "createdAt" DESC, "id" DESC LIMIT $7"#
);

const EVENT: &str = concat!(
    "SELECT ",
    event_columns!(),
    r#", "payload" FROM "WebhookEvent" WHERE "eventId" = $1"#
);

/// A page of events, newest first, and whether there are more.
pub async fn events(
    store: &Store,
    filter: &EventFilter,
) -> Result<(Vec<EventRow>, bool), StoreError> {
    let (before_at, before_id) = match &filter.before {
        Some((at, id)) => (Some(*at), Some(id.as_str())),
        None => (None, None),
    };
    let mut rows: Vec<EventRow> = with_pool!(store, |pool, p| {
        sqlx::query_as(EVENTS)
            .bind(filter.event_type.as_deref())
            .bind(filter.status.as_deref())
            .bind(filter.clerk_id.as_deref())
            .bind(filter.since)
            .bind(before_at)
            .bind(before_id)
            .bind(PAGE + 1)
            .persistent(p)
            .fetch_all(pool)
            .await?
    });
    let more = rows.len() > PAGE as usize;
    rows.truncate(PAGE as usize);
    Ok((rows, more))
}

/// One event and its stored payload, pretty-printed with every email address masked.
pub async fn event(
    store: &Store,
    svix_id: &str,
) -> Result<Option<(EventRow, Option<String>)>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct WithPayload {
        #[sqlx(flatten)]
        row: EventRow,
        payload: Option<Json<Value>>,
    }
    let found: Option<WithPayload> = with_pool!(store, |pool, p| {
        sqlx::query_as(EVENT)
            .bind(svix_id)
            .persistent(p)
            .fetch_optional(pool)
            .await?
    });
    Ok(found.map(|f| {
        let payload = f.payload.map(|Json(mut v)| {
            mask_emails(&mut v);
            serde_json::to_string_pretty(&v).expect("JSON serialises")
        });
        (f.row, payload)
    }))
}

/// `jane.doe@example.org` → `j***@example.org`, wherever a string holds an address.
pub fn mask_emails(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Some((local, domain)) = s.split_once('@') {
                if !local.is_empty() && domain.contains('.') && !s.contains(char::is_whitespace) {
                    let first: String = local.chars().take(1).collect();
                    *s = format!("{first}***@{domain}");
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_emails),
        Value::Object(map) => map.values_mut().for_each(mask_emails),
        _ => {}
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    #[sqlx(rename = "lastError")]
    pub last_error: Option<String>,
    #[sqlx(rename = "nextAttemptAt")]
    pub next_attempt_at: NaiveDateTime,
    #[sqlx(rename = "createdAt")]
    pub created_at: NaiveDateTime,
    #[sqlx(rename = "updatedAt")]
    pub updated_at: NaiveDateTime,
    pub payload: Json<Value>,
}

impl JobRow {
    /// The Clerk user the job is for.
    pub fn clerk_id(&self) -> Option<&str> {
        self.payload.0["clerkId"].as_str()
    }
}

/// Jobs in `status` (`pending`, `dead`, `done`), the most recently changed first.
pub async fn jobs(store: &Store, status: &str) -> Result<Vec<JobRow>, StoreError> {
    static JOBS: OwnTablesSql = OwnTablesSql::new(
        r#"SELECT "id", "kind", "status", "attempts", "lastError", "nextAttemptAt", "createdAt", "updatedAt", "payload"
FROM {own}"OutboxJob" WHERE "status" = $1 ORDER BY "updatedAt" DESC, "id" DESC LIMIT $2"#,
    );
    Ok(with_pool!(store, |pool, p| {
        sqlx::query_as(JOBS.for_store(store))
            .bind(status)
            .bind(PAGE)
            .persistent(p)
            .fetch_all(pool)
            .await?
    }))
}

/// Queue a dead job again from its first attempt. False when it is not dead (already
/// retried, or unknown): nothing changed.
pub async fn retry_dead_job(store: &Store, id: &str) -> Result<bool, StoreError> {
    static RETRY: OwnTablesSql = OwnTablesSql::new(
        r#"UPDATE {own}"OutboxJob" SET "status" = 'pending', "attempts" = 0, "nextAttemptAt" = $2, "updatedAt" = $2
WHERE "id" = $1 AND "status" = 'dead'"#,
    );
    let changed = with_pool!(store, |pool, p| {
        sqlx::query(RETRY.for_store(store))
            .bind(id)
            .bind(store::now())
            .persistent(p)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(changed == 1)
}

/// The user whose Clerk id or email address is `query` (exactly).
pub async fn find_user(store: &Store, query: &str) -> Result<Option<UserCredits>, StoreError> {
    const FIND: &str = concat!(
        crate::credits::select_user_credits!(),
        r#"WHERE "clerkId" = $1 OR "email" = $1 LIMIT 1"#
    );
    let user: Option<UserCredits> = with_pool!(store, |pool, p| {
        sqlx::query_as(FIND)
            .bind(query.trim())
            .persistent(p)
            .fetch_optional(pool)
            .await?
    });
    Ok(user.map(UserCredits::with_balance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_masked_wherever_they_are() {
        let mut v = serde_json::json!({
            "data": {
                "email_addresses": [{"email_address": "jane.doe@example.org", "id": "idn_1"}],
                "first_name": "Jane",
                "note": "write to me at x@y"
            }
        });
        mask_emails(&mut v);
        assert_eq!(
            v["data"]["email_addresses"][0]["email_address"],
            "j***@example.org"
        );
        assert_eq!(v["data"]["first_name"], "Jane");
        assert_eq!(v["data"]["note"], "write to me at x@y", "not an address");
    }
}
