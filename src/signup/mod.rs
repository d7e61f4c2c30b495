//! THE signup transaction. Everything that happens when Clerk tells us about a user is in
//! this module, for both backends: the decisions here, the statements they share in
//! `statements.rs`, and next to each other `postgres.rs` (the ONE statement), `queue.rs`
//! (webhooks that wait share it) and `stepwise.rs` (SQLite, and lazy provisioning);
//! `delete.rs` deletes a user.
//!
//! For `user.created` / `user.updated`, in ONE transaction:
//! 1. insert the `"WebhookEvent"` row keyed by `svix-id`: no row back means the message was
//!    already handled, so nothing else happens. A message recorded as `failed` is claimed
//!    again when it is redelivered (a Svix retry after a 5xx, or a resend from the
//!    dashboard once the cause is fixed);
//! 2. refuse an email address that belongs to another Clerk user (recorded as `failed`);
//! 3. upsert `"ClerkUserSync"` only if this event is newer than what was applied and the
//!    user is not deleted (this row also serialises concurrent events for one user);
//! 4. update the `"User"`, or insert it with `SIGNUP_CREDITS` generations, explicit
//!    `createdAt`/`updatedAt`, its `signup_bonus` ledger row (key `signup:<clerkId>`) and
//!    the `"OutboxJob"` that writes our user id into Clerk's metadata after commit;
//! 5. commit.
//!
//! On PostgreSQL the five steps are ONE statement ([`PG_SIGNUP`]), run on its own: one
//! round trip per webhook (`upsert_user_postgres`). Webhooks that arrive while one runs
//! wait in the [`SignupQueue`] and then share one statement, one round trip and one
//! commit. SQLite, which has no data-modifying CTEs and no network, runs the same steps
//! one statement at a time, on its writer's thread, where every webhook waiting shares one
//! commit (`sqlite.rs`); lazy provisioning, which writes no event, and `diagnose`'s
//! rehearsal run them in a transaction of their own (`upsert_user_stepwise`).
//!
//! `user.deleted` deletes the user row (ledger rows stay), erases the stored payloads of
//! that user's events (they hold the email address) and tombstones the Clerk id so a
//! late `user.updated` cannot bring it back. Unknown event types are recorded as
//! `ignored`; permanent payload problems as `failed` with their reason.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::types::Json;
use tracing::{info, instrument, warn};

use crate::domain::text::{storable_json, storable_owned};
use crate::domain::{ClerkUserId, SvixMessageId};
use crate::outbox::Job;
use crate::store::{self, new_id, Store, StoreError, StoreTx, TextEnum};
use crate::text_enum;
use crate::webhooks::clerk_event::{
    parse_envelope, Envelope, EventType, PayloadError, UserProfile,
};
use crate::webhooks::VerifiedWebhook;

use delete::delete_user;
pub use delete::forget;
use postgres::upsert_user_postgres;
pub use postgres::{new_user_statements_postgres, PG_SIGNUP_ARRAY_PARAMS};
pub use queue::{SignupQueue, SignupStatement};
use sqlite::upsert_user_sqlite;
use statements::*;
pub(crate) use statements::{insert_probe_user, INSERT_USER, UPDATE_USER};
use stepwise::upsert_user_stepwise;

mod delete;
mod postgres;
mod queue;
mod sqlite;
mod statements;
mod stepwise;

/// A new user's signup as a typical implementation sends it, on PostgreSQL: five
/// statements, one at a time, in one transaction: insert the event (not yet processed),
/// the user, the signup bonus, the outbox job, then mark the event processed. The
/// service does not run this; `clerk-sync bench --peer plain --print-pgbench-script` turns
/// it into the second pgbench peer of `bench/compare`.
pub fn plain_signup_statements_postgres() -> [&'static str; 5] {
    [
        INSERT_EVENT.as_str(),
        INSERT_USER.as_str(),
        INSERT_SIGNUP_BONUS.as_str(),
        INSERT_OUTBOX_JOB.postgres(),
        MARK_EVENT_PROCESSED,
    ]
}

#[derive(Debug, Clone, Copy)]
pub struct SignupSettings {
    pub signup_credits: i32,
    pub transaction_timeout: Duration,
}

/// What became of one verified webhook. Every variant is answered 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Processed(Action),
    /// This `svix-id` was handled before; nothing changed.
    Duplicate,
    Ignored(String),
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

impl Outcome {
    /// The answer's `status`: the event's, or `duplicate`.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Processed(_) => EventStatus::Processed.as_str(),
            Self::Duplicate => "duplicate",
            Self::Ignored(_) => EventStatus::Ignored.as_str(),
            Self::Failed(_) => EventStatus::Failed.as_str(),
        }
    }
}

/// `"WebhookEvent"."status"`, as clerk-sync writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    Processed,
    Ignored,
    /// A permanent problem with a valid signature; a redelivery claims the event again.
    Failed,
}

impl TextEnum for EventStatus {
    const ALL: &'static [Self] = &[Self::Processed, Self::Ignored, Self::Failed];
    const COLUMN: &'static str = r#""WebhookEvent"."status""#;

    fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Ignored => "ignored",
            Self::Failed => "failed",
        }
    }
}
text_enum!(EventStatus);

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }
}

/// The longest `"eventType"` recorded; a longer unknown type is cut.
const MAX_EVENT_TYPE_CHARS: usize = 100;

/// The event row every path writes first.
#[derive(Clone, Copy)]
struct EventRow<'a> {
    msg_id: &'a SvixMessageId,
    event_type: &'a str,
    /// The verified body, once it parsed as JSON: stored as received.
    payload: Option<&'a str>,
    /// The Clerk user the event is about, once the payload names one.
    clerk_id: Option<&'a str>,
}

impl<'a> EventRow<'a> {
    /// The payload for a `jsonb` (PostgreSQL) or text (SQLite) column, as its text.
    fn payload_json(&self) -> Option<Json<&'a RawValue>> {
        self.payload
            .map(|text| Json(serde_json::from_str(text).expect("the payload parsed as JSON")))
    }
}

/// The event type as recorded: at most `MAX_EVENT_TYPE_CHARS`, storable on both backends.
fn recorded_type(event_type: &EventType) -> String {
    let cut: String = event_type
        .as_str()
        .chars()
        .take(MAX_EVENT_TYPE_CHARS)
        .collect();
    storable_owned(cut)
}

/// The verified body as the stored payload: its text, with any NUL replaced (see
/// [`crate::domain::text`]).
fn storable_payload(hook: &VerifiedWebhook) -> Cow<'_, str> {
    // JSON is UTF-8: a body that parsed is text.
    storable_json(std::str::from_utf8(hook.body()).expect("JSON that parsed is UTF-8"))
}

/// Handle one verified webhook within `TRANSACTION_TIMEOUT_MS`.
pub async fn handle(
    store: &Store,
    settings: &SignupSettings,
    queue: Option<&SignupQueue>,
    hook: &VerifiedWebhook,
) -> Result<Outcome, StoreError> {
    handle_parsed(store, settings, queue, hook, parse_envelope(hook.body())).await
}

/// [`handle`], with the body already parsed by the caller (the HTTP handler reads the
/// event's type for its metrics), so that it is parsed once.
#[instrument(name = "signup", skip_all, fields(event_type, clerk_user_id))]
pub async fn handle_parsed(
    store: &Store,
    settings: &SignupSettings,
    queue: Option<&SignupQueue>,
    hook: &VerifiedWebhook,
    envelope: Result<Envelope, PayloadError>,
) -> Result<Outcome, StoreError> {
    tokio::time::timeout(
        settings.transaction_timeout,
        dispatch(store, settings, queue, hook, envelope),
    )
    .await
    .map_err(|_| StoreError::Timeout(settings.transaction_timeout))?
}

async fn dispatch(
    store: &Store,
    settings: &SignupSettings,
    queue: Option<&SignupQueue>,
    hook: &VerifiedWebhook,
    envelope: Result<Envelope, PayloadError>,
) -> Result<Outcome, StoreError> {
    let msg_id = hook.msg_id();
    let envelope = match envelope {
        Ok(parsed) => parsed,
        Err(e) => {
            let event = EventRow {
                msg_id,
                event_type: "unknown",
                payload: None,
                clerk_id: None,
            };
            return record_only(store, &event, EventStatus::Failed, e.to_string()).await;
        }
    };
    let event_type = recorded_type(&envelope.event_type);
    let span = tracing::Span::current();
    span.record("event_type", event_type.as_str());
    let payload = storable_payload(hook);
    let event = EventRow {
        msg_id,
        event_type: &event_type,
        payload: Some(&payload),
        clerk_id: None,
    };
    match envelope.event_type {
        EventType::UserCreated | EventType::UserUpdated => match envelope.user_profile() {
            Ok(profile) => {
                span.record("clerk_user_id", profile.clerk_id.as_str());
                let event = EventRow {
                    clerk_id: Some(profile.clerk_id.as_str()),
                    ..event
                };
                upsert_user(store, settings, queue, &event, &profile).await
            }
            Err(e) => record_only(store, &event, EventStatus::Failed, e.to_string()).await,
        },
        EventType::UserDeleted => match envelope.deleted_user() {
            Ok(clerk_id) => {
                span.record("clerk_user_id", clerk_id.as_str());
                let ts = envelope.timestamp.unwrap_or(hook.timestamp() * 1000);
                let event = EventRow {
                    clerk_id: Some(clerk_id.as_str()),
                    ..event
                };
                delete_user(store, &event, &clerk_id, ts).await
            }
            Err(e) => record_only(store, &event, EventStatus::Failed, e.to_string()).await,
        },
        EventType::Other(_) => {
            record_only(
                store,
                &event,
                EventStatus::Ignored,
                "event type not handled".into(),
            )
            .await
        }
    }
}

/// What the user transaction decided.
enum UpsertResult {
    Done(Outcome),
    /// A permanent refusal: the transaction must be rolled back; the event is recorded as
    /// failed.
    Refused(String),
}

async fn upsert_user(
    store: &Store,
    settings: &SignupSettings,
    queue: Option<&SignupQueue>,
    event: &EventRow<'_>,
    profile: &UserProfile,
) -> Result<Outcome, StoreError> {
    info!("user creation started");
    match upsert_user_tx(store, settings, queue, Some(event), profile).await {
        Ok(UpsertResult::Done(outcome)) => {
            if let Outcome::Processed(action) = &outcome {
                info!(action = action.as_str(), "transaction completed");
            }
            Ok(outcome)
        }
        Ok(UpsertResult::Refused(reason)) => {
            record_only(store, event, EventStatus::Failed, reason).await
        }
        Err(StoreError::Constraint(violation)) => {
            // The schema refused the write (e.g. a NOT NULL column without DEFAULT added by
            // another writer). Record why, and answer 5xx so Svix retries: the redelivery
            // claims the failed event again once the schema is fixed.
            warn!(reason = %violation, "user creation failed");
            record_only(store, event, EventStatus::Failed, violation.to_string()).await?;
            Err(StoreError::Constraint(violation))
        }
        Err(e) => {
            warn!(error.message = %e, "user creation failed");
            Err(e)
        }
    }
}

/// `event` is `None` when the user is provisioned from Clerk's Backend API (a credits call
/// that arrived before the webhook): everything else is the same transaction.
///
/// PostgreSQL runs a webhook's transaction as one statement ([`PG_SIGNUP`]) in
/// autocommit; SQLite runs it on its writer's thread, committed with the others waiting
/// (`sqlite.rs`); lazy provisioning, on either backend, runs the same steps one statement
/// at a time in a transaction opened and ended here.
async fn upsert_user_tx(
    store: &Store,
    settings: &SignupSettings,
    queue: Option<&SignupQueue>,
    event: Option<&EventRow<'_>>,
    profile: &UserProfile,
) -> Result<UpsertResult, StoreError> {
    match (store, event) {
        (Store::Postgres(pg), Some(event)) => {
            return upsert_user_postgres(pg, settings.signup_credits, queue, event, profile).await
        }
        (Store::Sqlite(lite), Some(event)) => {
            return upsert_user_sqlite(lite, settings.signup_credits, event, profile).await
        }
        (_, None) => {}
    }
    let mut tx = store.begin().await?;
    let result = upsert_user_stepwise(&mut tx, settings.signup_credits, event, profile).await?;
    match result {
        UpsertResult::Refused(_) => tx.rollback().await?,
        UpsertResult::Done(_) => tx.commit().await?,
    }
    Ok(result)
}

/// Apply one `user.created` / `user.updated` webhook inside `tx`, which the caller opened
/// and ends: the statements [`handle`] runs for it, on this backend, without the commit.
/// `diagnose` rehearses the signup transaction this way and rolls it back. Another event
/// type, or a payload that does not parse, is answered without writing anything.
pub async fn apply_in(
    tx: &mut StoreTx,
    signup_credits: i32,
    hook: &VerifiedWebhook,
) -> Result<Outcome, StoreError> {
    let envelope = match parse_envelope(hook.body()) {
        Ok(envelope) => envelope,
        Err(e) => return Ok(Outcome::Failed(e.to_string())),
    };
    if !matches!(
        envelope.event_type,
        EventType::UserCreated | EventType::UserUpdated
    ) {
        return Ok(Outcome::Ignored(format!(
            "{} is not applied in a transaction of the caller's",
            envelope.event_type.as_str()
        )));
    }
    let profile = match envelope.user_profile() {
        Ok(profile) => profile,
        Err(e) => return Ok(Outcome::Failed(e.to_string())),
    };
    let payload = storable_payload(hook);
    let event_type = recorded_type(&envelope.event_type);
    let event = EventRow {
        msg_id: hook.msg_id(),
        event_type: &event_type,
        payload: Some(&payload),
        clerk_id: Some(profile.clerk_id.as_str()),
    };
    let result = match tx {
        StoreTx::Postgres { tx, prepared } => {
            postgres::upsert_user_postgres_in(tx, *prepared, signup_credits, &event, &profile)
                .await?
        }
        StoreTx::Sqlite(_) => {
            upsert_user_stepwise(tx, signup_credits, Some(&event), &profile).await?
        }
    };
    Ok(match result {
        UpsertResult::Done(outcome) => outcome,
        UpsertResult::Refused(reason) => Outcome::Failed(reason),
    })
}

const EMAIL_TAKEN: &str = "email address already belongs to another Clerk user";
const REASON_DELETED: &str = "user was deleted; a late event does not bring it back";
const REASON_STALE: &str = "stale: an event with a newer updated_at was already applied";

fn ignored_reason(deleted: bool) -> &'static str {
    if deleted {
        REASON_DELETED
    } else {
        REASON_STALE
    }
}

/// Provision a user from Clerk's Backend API exactly as `user.created` would (same
/// transaction, same signup bonus key), without a webhook event. A webhook that arrives
/// later for the same `updated_at` changes nothing.
#[instrument(name = "provision", skip_all, fields(clerk_user_id = %profile.clerk_id))]
pub async fn provision(
    store: &Store,
    settings: &SignupSettings,
    profile: &UserProfile,
) -> Result<Outcome, StoreError> {
    info!("user creation started");
    let run = upsert_user_tx(store, settings, None, None, profile);
    match tokio::time::timeout(settings.transaction_timeout, run)
        .await
        .map_err(|_| StoreError::Timeout(settings.transaction_timeout))?
    {
        Ok(UpsertResult::Done(outcome)) => {
            info!(outcome = outcome.status(), "transaction completed");
            Ok(outcome)
        }
        Ok(UpsertResult::Refused(reason)) => Ok(Outcome::Failed(reason)),
        Err(e) => {
            warn!(error.message = %e, "user creation failed");
            Err(e)
        }
    }
}

/// [`provision`] inside the caller's transaction, without the commit: what it would do
/// (`reconcile --dry-run` rolls it back).
pub async fn provision_in(
    tx: &mut StoreTx,
    signup_credits: i32,
    profile: &UserProfile,
) -> Result<Outcome, StoreError> {
    Ok(
        match upsert_user_stepwise(tx, signup_credits, None, profile).await? {
            UpsertResult::Done(outcome) => outcome,
            UpsertResult::Refused(reason) => Outcome::Failed(reason),
        },
    )
}

/// Record an event that changes nothing else (`ignored` or `failed`), in one statement.
async fn record_only(
    store: &Store,
    event: &EventRow<'_>,
    status: EventStatus,
    reason: String,
) -> Result<Outcome, StoreError> {
    let now = store::now();
    let reason = storable_owned(reason);
    let inserted: Option<String> = crate::with_pool!(store, |pool, p| {
        bind_event!(
            sqlx::query_scalar(INSERT_EVENT.as_str()),
            event,
            status,
            Some(reason.as_str()),
            now
        )
        .persistent(p)
        .fetch_optional(pool)
        .await?
    });
    if inserted.is_none() {
        return Ok(Outcome::Duplicate);
    }
    if status == EventStatus::Failed {
        tracing::error!(reason = %reason, "webhook event failed permanently");
        Ok(Outcome::Failed(reason))
    } else {
        info!(reason = %reason, "webhook event ignored");
        Ok(Outcome::Ignored(reason))
    }
}

/// Whether `user.deleted` (or `reconcile`) tombstoned this Clerk id: nothing may bring
/// the user back, so lazy provisioning answers "no such user" without asking Clerk.
pub async fn is_deleted(store: &Store, clerk_id: &str) -> Result<bool, StoreError> {
    let sql = statements::USER_IS_DELETED.for_store(store);
    let deleted: Option<bool> = crate::with_pool!(store, |pool, p| {
        sqlx::query_scalar(sql)
            .bind(clerk_id)
            .persistent(p)
            .fetch_optional(pool)
            .await?
    });
    Ok(deleted.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_statuses_read_back_as_written_and_nothing_else() {
        for s in [
            EventStatus::Processed,
            EventStatus::Ignored,
            EventStatus::Failed,
        ] {
            assert_eq!(EventStatus::parse(s.as_str()), Some(s));
        }
        for unknown in ["", "Processed", "duplicate", "pending"] {
            assert_eq!(EventStatus::parse(unknown), None, "{unknown:?}");
        }
    }
}
