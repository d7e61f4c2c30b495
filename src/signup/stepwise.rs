//! The signup transaction one statement at a time, inside a transaction the caller opened
//! and ends: SQLite, and lazy provisioning on either backend. Nothing here commits.

use super::*;
use crate::on_tx;

/// Steps 1–4 in `tx`. The caller commits unless the answer is [`UpsertResult::Refused`],
/// which it rolls back (the event row written in step 1 goes with it).
pub(super) async fn upsert_user_stepwise(
    tx: &mut StoreTx,
    signup_credits: i32,
    event: Option<&EventRow<'_>>,
    profile: &UserProfile,
) -> Result<UpsertResult, StoreError> {
    let now = store::now();
    let clerk_id = profile.clerk_id.as_str();
    let (claim_user_sync, user_is_deleted, insert_outbox_job) = (
        CLAIM_USER_SYNC.for_tx(tx),
        USER_IS_DELETED.for_tx(tx),
        INSERT_OUTBOX_JOB.for_tx(tx),
    );
    on_tx!(tx, |conn, p| {
        let mut event_row_id = None;
        if let Some(event) = event {
            let inserted: Option<String> = bind_event!(
                sqlx::query_scalar(INSERT_EVENT.as_str()),
                event,
                EventStatus::Processed,
                None,
                now
            )
            .persistent(p)
            .fetch_optional(&mut *conn)
            .await?;
            if inserted.is_none() {
                return Ok(UpsertResult::Done(Outcome::Duplicate));
            }
            event_row_id = inserted;
        }

        let taken: bool = sqlx::query_scalar(EMAIL_OWNED_BY_OTHER)
            .bind(profile.email.as_str())
            .bind(clerk_id)
            .persistent(p)
            .fetch_one(&mut *conn)
            .await?;
        if taken {
            return Ok(UpsertResult::Refused(EMAIL_TAKEN.to_owned()));
        }

        let fresh: Option<String> = sqlx::query_scalar(claim_user_sync)
            .bind(clerk_id)
            .bind(profile.clerk_updated_at)
            .persistent(p)
            .fetch_optional(&mut *conn)
            .await?;
        if fresh.is_none() {
            let deleted: bool = sqlx::query_scalar(user_is_deleted)
                .bind(clerk_id)
                .persistent(p)
                .fetch_one(&mut *conn)
                .await?;
            let reason = ignored_reason(deleted);
            if let Some(event_row_id) = &event_row_id {
                sqlx::query(MARK_EVENT_IGNORED)
                    .bind(event_row_id)
                    .bind(reason)
                    .bind(EventStatus::Ignored)
                    .persistent(p)
                    .execute(&mut *conn)
                    .await?;
            }
            info!(reason, "event ignored");
            return Ok(UpsertResult::Done(Outcome::Ignored(reason.to_owned())));
        }

        let updated: Option<String> = sqlx::query_scalar(UPDATE_USER)
            .bind(clerk_id)
            .bind(profile.email.as_str())
            .bind(&profile.photo)
            .bind(profile.first_name.as_deref())
            .bind(profile.last_name.as_deref())
            .bind(now)
            .persistent(p)
            .fetch_optional(&mut *conn)
            .await?;
        if updated.is_some() {
            return Ok(UpsertResult::Done(Outcome::Processed(Action::Updated)));
        }
        let user_id = new_id();
        sqlx::query(INSERT_USER.as_str())
            .bind(&user_id)
            .bind(clerk_id)
            .bind(profile.email.as_str())
            .bind(&profile.photo)
            .bind(profile.first_name.as_deref())
            .bind(profile.last_name.as_deref())
            .bind(signup_credits)
            .bind(now)
            .persistent(p)
            .execute(&mut *conn)
            .await?;
        if signup_credits > 0 {
            sqlx::query(INSERT_SIGNUP_BONUS.as_str())
                .bind(new_id())
                .bind(clerk_id)
                .bind(&user_id)
                .bind(signup_credits)
                .bind(event.map(|e| e.msg_id.as_str()))
                .bind(signup_key(clerk_id))
                .bind(now)
                .persistent(p)
                .execute(&mut *conn)
                .await?;
        }
        let job = Job::UpdateClerkMetadata {
            clerk_id: clerk_id.to_owned(),
            user_id: user_id.clone(),
        };
        sqlx::query(insert_outbox_job)
            .bind(new_id())
            .bind(job.kind())
            .bind(Json(&job))
            .bind(now)
            .persistent(p)
            .execute(&mut *conn)
            .await?;
        info!(user_id = %user_id, "user created");
        Ok(UpsertResult::Done(Outcome::Processed(Action::Created)))
    })
}
