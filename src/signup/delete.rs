//! Deleting a user: `user.deleted` (with its event recorded), and `forget` for a user
//! Clerk no longer has (`reconcile --delete`). Either way the user row goes (ledger rows
//! stay), the stored payloads of the user's events are erased (they hold the email
//! address), and the Clerk id is tombstoned so that a late `user.updated` cannot bring
//! it back.

use super::*;

/// Delete a user that Clerk no longer has, as `user.deleted` would but with no event to
/// record (`reconcile --delete`): the user row goes (ledger rows stay), its events'
/// payloads are erased, and the Clerk id is tombstoned.
pub async fn forget(store: &Store, clerk_id: &ClerkUserId) -> Result<bool, StoreError> {
    let now = store::now();
    with_tx!(store, |tx, p| {
        sqlx::query(TOMBSTONE_USER.for_store(store))
            .bind(clerk_id.as_str())
            .bind(now.and_utc().timestamp_millis())
            .bind(now)
            .persistent(p)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query(DELETE_USER)
            .bind(clerk_id.as_str())
            .persistent(p)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(ERASE_EVENT_PAYLOADS)
            .bind(clerk_id.as_str())
            .persistent(p)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted > 0)
    })
}

pub(super) async fn delete_user(
    store: &Store,
    event: &EventRow<'_>,
    clerk_id: &ClerkUserId,
    event_ts_ms: i64,
) -> Result<Outcome, StoreError> {
    let now = store::now();
    with_tx!(store, |tx, p| {
        let inserted: Option<String> = bind_event!(
            sqlx::query_scalar(INSERT_EVENT.as_str()),
            event,
            EventStatus::Processed,
            None,
            now
        )
        .persistent(p)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            return Ok(Outcome::Duplicate);
        }
        sqlx::query(TOMBSTONE_USER.for_store(store))
            .bind(clerk_id.as_str())
            .bind(event_ts_ms)
            .bind(now)
            .persistent(p)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query(DELETE_USER)
            .bind(clerk_id.as_str())
            .persistent(p)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(ERASE_EVENT_PAYLOADS)
            .bind(clerk_id.as_str())
            .persistent(p)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        info!(rows = deleted, "user deleted");
        Ok(Outcome::Processed(Action::Deleted))
    })
}
