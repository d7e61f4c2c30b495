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
