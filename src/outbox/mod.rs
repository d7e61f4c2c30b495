//! Work done after commit: jobs written in the signup transaction, delivered by a worker
//! that runs apart from the HTTP handlers.

pub mod clerk_client;
pub mod worker;

use serde::{Deserialize, Serialize};

use crate::store::{OwnTablesSql, Store, StoreError};
use crate::with_pool;

pub use clerk_client::{ClerkClient, DeliveryError};

/// A job's payload: tagged and versioned, so old rows stay readable after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Job {
    /// Write our user id into the Clerk user's `public_metadata.userId`.
    #[serde(rename = "update_clerk_metadata.v1", rename_all = "camelCase")]
    UpdateClerkMetadata { clerk_id: String, user_id: String },
}

impl Job {
    /// The `"OutboxJob".kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UpdateClerkMetadata { .. } => "update_clerk_metadata",
        }
    }
}

/// The queue now: jobs pending, the age of the oldest, jobs dead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    pub pending: i64,
    pub dead: i64,
    /// 0 when nothing is pending.
    pub oldest_pending_age_seconds: i64,
}

/// Read the [`Backlog`] in one statement (`diagnose`, `/metrics`).
pub async fn backlog(store: &Store) -> Result<Backlog, StoreError> {
    static BACKLOG: OwnTablesSql = OwnTablesSql::new(
        r#"
SELECT CAST(COALESCE(SUM(CASE WHEN "status" = 'pending' THEN 1 ELSE 0 END), 0) AS BIGINT),
       CAST(COALESCE(SUM(CASE WHEN "status" = 'dead' THEN 1 ELSE 0 END), 0) AS BIGINT),
       MIN(CASE WHEN "status" = 'pending' THEN "createdAt" END)
FROM {own}"OutboxJob""#,
    );
    let (pending, dead, oldest): (i64, i64, Option<chrono::NaiveDateTime>) =
        with_pool!(store, |pool, p| {
            sqlx::query_as(BACKLOG.for_store(store))
                .persistent(p)
                .fetch_one(pool)
                .await?
        });
    Ok(Backlog {
        pending,
        dead,
        oldest_pending_age_seconds: oldest
            .map(|t| (crate::store::now() - t).num_seconds().max(0))
            .unwrap_or(0),
    })
}

/// Queue the metadata update of this user again, when Clerk lacks it (`reconcile`): its
/// dead job is revived from its first attempt, or, when the user has no job pending, a
/// new one is queued. False when a job was pending already: nothing changed.
pub async fn requeue_metadata_update(
    store: &Store,
    clerk_id: &str,
    user_id: &str,
) -> Result<bool, StoreError> {
    static REVIVE: OwnTablesSql = OwnTablesSql::new(
        r#"
UPDATE {own}"OutboxJob" SET "status" = 'pending', "attempts" = 0, "lastError" = NULL,
    "nextAttemptAt" = $3, "updatedAt" = $3
WHERE "id" = (SELECT "id" FROM {own}"OutboxJob"
              WHERE "status" = 'dead' AND "kind" = $1 AND "payload" ->> 'clerkId' = $2
              ORDER BY "createdAt" DESC LIMIT 1)
  AND NOT EXISTS (SELECT 1 FROM {own}"OutboxJob"
                  WHERE "status" = 'pending' AND "kind" = $1 AND "payload" ->> 'clerkId' = $2)"#,
    );
    static QUEUE: std::sync::LazyLock<OwnTablesSql> = std::sync::LazyLock::new(|| {
        OwnTablesSql::new(
            format!(
                r#"
INSERT INTO {{own}}"OutboxJob" ({})
SELECT $1, $2, $3, 'pending', 0, $5, $5, $5
WHERE NOT EXISTS (SELECT 1 FROM {{own}}"OutboxJob"
                  WHERE "status" = 'pending' AND "kind" = $2 AND "payload" ->> 'clerkId' = $4)"#,
                crate::store::tables::OUTBOX_JOB
            )
            .leak(),
        )
    });
    let job = Job::UpdateClerkMetadata {
        clerk_id: clerk_id.to_owned(),
        user_id: user_id.to_owned(),
    };
    let now = crate::store::now();
    let revived = with_pool!(store, |pool, p| {
        sqlx::query(REVIVE.for_store(store))
            .bind(job.kind())
            .bind(clerk_id)
            .bind(now)
            .persistent(p)
            .execute(pool)
            .await?
            .rows_affected()
    });
    if revived > 0 {
        return Ok(true);
    }
    let queued = with_pool!(store, |pool, p| {
        sqlx::query(QUEUE.for_store(store))
            .bind(crate::store::new_id())
            .bind(job.kind())
            .bind(sqlx::types::Json(&job))
            .bind(clerk_id)
            .bind(now)
            .persistent(p)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(queued > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_shape_is_stable() {
        let job = Job::UpdateClerkMetadata {
            clerk_id: "user_1".into(),
            user_id: "u1".into(),
        };
        assert_eq!(
            serde_json::to_value(&job).unwrap(),
            serde_json::json!({"type": "update_clerk_metadata.v1", "clerkId": "user_1", "userId": "u1"})
        );
    }
}
