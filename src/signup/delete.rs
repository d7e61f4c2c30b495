//! Deleting a user: `user.deleted` (with its event recorded), and `forget` for a user
//! Clerk no longer has (`reconcile --delete`). Either way the user row goes (ledger rows
//! stay), the stored payloads of the user's events are erased (they hold the email
//! address), and the Clerk id is tombstoned so that a late `user.updated` cannot bring
//! it back.

use super::*;
use crate::on_tx;

/// The removal both share, inside `tx`: tombstone the Clerk id as of `deleted_at_ms`,
/// delete the user row, erase the payloads. Returns the user rows deleted.
async fn remove(
    tx: &mut StoreTx,
    clerk_id: &ClerkUserId,
    deleted_at_ms: i64,
    now: chrono::NaiveDateTime,
) -> Result<u64, StoreError> {
    let tombstone = TOMBSTONE_USER.for_tx(tx);
    on_tx!(tx, |conn, p| {
        sqlx::query(tombstone)
            .bind(clerk_id.as_str())
            .bind(deleted_at_ms)
            .bind(now)
            .persistent(p)
            .execute(&mut *conn)
            .await?;
        let deleted = sqlx::query(DELETE_USER)
            .bind(clerk_id.as_str())
            .persistent(p)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        sqlx::query(ERASE_EVENT_PAYLOADS)
            .bind(clerk_id.as_str())
            .persistent(p)
            .execute(&mut *conn)
            .await?;
        Ok(deleted)
    })
}

/// Delete a user that Clerk no longer has, as `user.deleted` would but with no event to
/// record (`reconcile --delete`).
pub async fn forget(store: &Store, clerk_id: &ClerkUserId) -> Result<bool, StoreError> {
    let now = store::now();
    let mut tx = store.begin().await?;
    let deleted = remove(&mut tx, clerk_id, now.and_utc().timestamp_millis(), now).await?;
    tx.commit().await?;
    Ok(deleted > 0)
}

/// `user.deleted`: the event recorded (a duplicate changes nothing), then the removal, in
/// one transaction.
pub(super) async fn delete_user(
    store: &Store,
    event: &EventRow<'_>,
    clerk_id: &ClerkUserId,
    event_ts_ms: i64,
) -> Result<Outcome, StoreError> {
    let now = store::now();
    let mut tx = store.begin().await?;
    let inserted: Option<String> = on_tx!(&mut tx, |conn, p| {
        bind_event!(
            sqlx::query_scalar(INSERT_EVENT.as_str()),
            event,
            EventStatus::Processed,
            None,
            now
        )
        .persistent(p)
        .fetch_optional(&mut *conn)
        .await?
    });
    if inserted.is_none() {
        // Dropping the transaction rolls it back: it wrote nothing.
        return Ok(Outcome::Duplicate);
    }
    let deleted = remove(&mut tx, clerk_id, event_ts_ms, now).await?;
    tx.commit().await?;
    info!(rows = deleted, "user deleted");
    Ok(Outcome::Processed(Action::Deleted))
}
