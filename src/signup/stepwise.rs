//! The signup transaction one statement at a time: SQLite, and lazy provisioning.

use super::*;

pub(super) async fn upsert_user_stepwise(
    store: &Store,
    settings: &SignupSettings,
    event: Option<&EventRow<'_>>,
    profile: &UserProfile,
) -> Result<UpsertResult, StoreError> {
    let now = store::now();
    let clerk_id = profile.clerk_id.as_str();
    with_tx!(store, |tx, p| {
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
            .fetch_optional(&mut *tx)
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
            .fetch_one(&mut *tx)
            .await?;
        if taken {
            return Ok(UpsertResult::Refused(EMAIL_TAKEN.to_owned()));
        }

        let fresh: Option<String> = sqlx::query_scalar(CLAIM_USER_SYNC.for_store(store))
            .bind(clerk_id)
            .bind(profile.clerk_updated_at)
            .persistent(p)
            .fetch_optional(&mut *tx)
            .await?;
        if fresh.is_none() {
            let deleted: bool = sqlx::query_scalar(USER_IS_DELETED.for_store(store))
                .bind(clerk_id)
                .persistent(p)
                .fetch_one(&mut *tx)
                .await?;
            let reason = ignored_reason(deleted);
            if let Some(event_row_id) = &event_row_id {
                sqlx::query(MARK_EVENT_IGNORED)
                    .bind(event_row_id)
                    .bind(reason)
                    .persistent(p)
                    .execute(&mut *tx)
                    .await?;
            }
            finish(tx, settings.dry_run).await?;
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
            .fetch_optional(&mut *tx)
            .await?;
        let action = if updated.is_some() {
            Action::Updated
        } else {
            let user_id = new_id();
            sqlx::query(INSERT_USER)
                .bind(&user_id)
                .bind(clerk_id)
                .bind(profile.email.as_str())
                .bind(&profile.photo)
                .bind(profile.first_name.as_deref())
                .bind(profile.last_name.as_deref())
                .bind(settings.signup_credits)
                .bind(now)
                .persistent(p)
                .execute(&mut *tx)
                .await?;
            if settings.signup_credits > 0 {
                sqlx::query(INSERT_SIGNUP_BONUS)
                    .bind(new_id())
                    .bind(clerk_id)
                    .bind(&user_id)
                    .bind(settings.signup_credits)
                    .bind(event.map(|e| e.msg_id.as_str()))
                    .bind(format!("signup:{clerk_id}"))
                    .bind(now)
                    .persistent(p)
                    .execute(&mut *tx)
                    .await?;
            }
            let job = Job::UpdateClerkMetadata {
                clerk_id: clerk_id.to_owned(),
                user_id: user_id.clone(),
            };
            sqlx::query(INSERT_OUTBOX_JOB.for_store(store))
                .bind(new_id())
                .bind(job.kind())
                .bind(Json(&job))
                .bind(now)
                .persistent(p)
                .execute(&mut *tx)
                .await?;
            info!(user_id = %user_id, "user created");
            Action::Created
        };
        finish(tx, settings.dry_run).await?;
        Ok(UpsertResult::Done(Outcome::Processed(action)))
    })
}
