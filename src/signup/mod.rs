//! THE signup transaction. Everything that happens when Clerk tells us about a user is in
//! this module, for both backends: the decisions and the statements they share here, and
//! next to each other in `postgres.rs` (the ONE statement), `queue.rs` (webhooks that
//! wait share it) and `stepwise.rs` (SQLite, and lazy provisioning).
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
//! one statement at a time inside a transaction (`upsert_user_stepwise`), as does lazy
//! provisioning, which writes no event.
//!
//! `user.deleted` deletes the user row (ledger rows stay), erases the stored payloads of
//! that user's events (they hold the email address) and tombstones the Clerk id so a
//! late `user.updated` cannot bring it back. Unknown event types are recorded as
//! `ignored`; permanent payload problems as `failed` with their reason.

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::Value;
use sqlx::types::Json;
use tracing::{info, instrument, warn};

use crate::domain::{ClerkUserId, SvixMessageId};
use crate::outbox::Job;
use crate::store::{self, new_id, OwnTablesSql, PgStore, Store, StoreError};
use crate::webhooks::clerk_event::{parse_envelope, UserProfile};
use crate::webhooks::VerifiedWebhook;
use crate::with_tx;

pub(crate) use postgres::pg_signup;
use postgres::upsert_user_postgres;
pub use postgres::PG_SIGNUP_ARRAY_PARAMS;
pub use queue::SignupQueue;
use stepwise::upsert_user_stepwise;

#[derive(Debug, Clone, Copy)]
pub struct SignupSettings {
    pub signup_credits: i32,
    pub transaction_timeout: Duration,
    /// Run every statement, then roll back instead of committing (`diagnose`).
    pub dry_run: bool,
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

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Ignored => "ignored",
            Self::Failed => "failed",
        }
    }

    /// A status read back from the database; any other text is an error, never a guess.
    fn from_db(raw: &str) -> Result<Self, StoreError> {
        [Self::Processed, Self::Ignored, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                StoreError::Layout(format!(
                    "\"WebhookEvent\".\"status\" holds {raw:?}, which this release does not write"
                ))
            })
    }
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }
}

/// The event-id rule, shared by every path that records an event: a repeated `svix-id`
/// changes nothing and returns no row, unless the earlier attempt was recorded `failed`,
/// which a redelivery claims again.
const EVENT_ID_CONFLICT: &str = r#"ON CONFLICT ("eventId") DO UPDATE SET
    "eventType" = excluded."eventType", "processed" = excluded."processed",
    "processedAt" = excluded."processedAt", "status" = excluded."status",
    "error" = excluded."error", "payload" = excluded."payload", "clerkId" = excluded."clerkId"
WHERE "WebhookEvent"."status" = 'failed'"#;

static INSERT_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
INSERT INTO "WebhookEvent"
    ("id", "eventId", "eventType", "processed", "processedAt", "createdAt", "status", "error",
     "payload", "clerkId")
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
{EVENT_ID_CONFLICT}
RETURNING "id""#
    )
});

const MARK_EVENT_IGNORED: &str = r#"
UPDATE "WebhookEvent" SET "status" = 'ignored', "error" = $2 WHERE "id" = $1"#;

/// The per-user rule: an event applies only when it is newer than what was applied and
/// the user is not deleted; the claim returns no row otherwise.
const USER_SYNC_CONFLICT: &str = r#"ON CONFLICT ("clerkId") DO UPDATE SET "clerkUpdatedAt" = excluded."clerkUpdatedAt"
WHERE "ClerkUserSync"."clerkUpdatedAt" < excluded."clerkUpdatedAt"
  AND "ClerkUserSync"."deletedAt" IS NULL"#;

static CLAIM_USER_SYNC: LazyLock<OwnTablesSql> = LazyLock::new(|| {
    OwnTablesSql::new(
        format!(
            r#"
INSERT INTO {{own}}"ClerkUserSync" ("clerkId", "clerkUpdatedAt", "deletedAt")
VALUES ($1, $2, NULL)
{USER_SYNC_CONFLICT}
RETURNING "clerkId""#
        )
        .leak(),
    )
});

static USER_IS_DELETED: OwnTablesSql = OwnTablesSql::new(
    r#"
SELECT "deletedAt" IS NOT NULL FROM {own}"ClerkUserSync" WHERE "clerkId" = $1"#,
);

const EMAIL_OWNED_BY_OTHER: &str = r#"
SELECT EXISTS (SELECT 1 FROM "User" WHERE "email" = $1 AND "clerkId" <> $2)"#;

pub(crate) const UPDATE_USER: &str = r#"
UPDATE "User"
SET "email" = $2, "photo" = $3, "firstName" = $4, "lastName" = $5, "updatedAt" = $6
WHERE "clerkId" = $1
RETURNING "id""#;

pub(crate) const INSERT_USER: &str = r#"
INSERT INTO "User"
    ("id", "clerkId", "email", "photo", "firstName", "lastName",
     "usedGenerations", "availableGenerations", "createdAt", "updatedAt")
VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $8)"#;

/// The service's `INSERT_USER` for a throwaway user (`diagnose`, `smoke`): empty photo,
/// no names. `$exec` is a pool or `&mut *tx`.
macro_rules! insert_probe_user {
    ($exec:expr, $p:expr, $id:expr, $clerk_id:expr, $email:expr, $credits:expr, $at:expr) => {
        sqlx::query($crate::signup::INSERT_USER)
            .bind($id)
            .bind($clerk_id)
            .bind($email)
            .bind("")
            .bind(None::<String>)
            .bind(None::<String>)
            .bind($credits)
            .bind($at)
            .persistent($p)
            .execute($exec)
    };
}
pub(crate) use insert_probe_user;

const INSERT_SIGNUP_BONUS: &str = r#"
INSERT INTO "Transaction"
    ("id", "tracking_id", "userId", "status", "amount", "type", "description",
     "reason", "webhookEventId", "idempotencyKey", "balanceAfter", "createdAt")
VALUES ($1, $2, $3, 'completed', $4, 'credit', 'Signup bonus',
        'signup_bonus', $5, $6, $4, $7)"#;

static INSERT_OUTBOX_JOB: OwnTablesSql = OwnTablesSql::new(
    r#"
INSERT INTO {own}"OutboxJob"
    ("id", "kind", "payload", "status", "attempts", "nextAttemptAt", "createdAt", "updatedAt")
VALUES ($1, $2, $3, 'pending', 0, $4, $4, $4)"#,
);

static TOMBSTONE_USER: OwnTablesSql = OwnTablesSql::new(
    r#"
INSERT INTO {own}"ClerkUserSync" ("clerkId", "clerkUpdatedAt", "deletedAt")
VALUES ($1, $2, $3)
ON CONFLICT ("clerkId") DO UPDATE
SET "deletedAt" = COALESCE("ClerkUserSync"."deletedAt", excluded."deletedAt")"#,
);

/// The statements a `user.created` for a new user runs on PostgreSQL, in order: one
/// statement, in autocommit, with arrays of one element when the webhook goes alone. `clerk-sync bench --print-pgbench-script` turns them into the
/// pgbench peer of `bench/compare`: keep this list in step with `upsert_user_postgres`.
pub fn new_user_statements_postgres() -> [&'static str; 1] {
    [pg_signup()]
}

const DELETE_USER: &str = r#"DELETE FROM "User" WHERE "clerkId" = $1"#;

/// The stored payloads of a deleted user's events hold their email address: erase them.
const ERASE_EVENT_PAYLOADS: &str = r#"
UPDATE "WebhookEvent" SET "payload" = NULL WHERE "clerkId" = $1 AND "payload" IS NOT NULL"#;

/// Bind the ten parameters of `INSERT_EVENT`.
macro_rules! bind_event {
    ($query:expr, $event:expr, $status:expr, $reason:expr, $now:expr) => {{
        let status: EventStatus = $status;
        let processed = status != EventStatus::Failed;
        let reason: Option<&str> = $reason;
        $query
            .bind(new_id())
            .bind($event.msg_id.as_str())
            .bind($event.event_type)
            .bind(processed)
            .bind(processed.then_some($now))
            .bind($now)
            .bind(status.as_str())
            .bind(reason)
            .bind($event.payload.map(Json))
            .bind($event.clerk_id)
    }};
}

/// The event row every path writes first.
#[derive(Clone, Copy)]
struct EventRow<'a> {
    msg_id: &'a SvixMessageId,
    event_type: &'a str,
    payload: Option<&'a Value>,
    /// The Clerk user the event is about, once the payload names one.
    clerk_id: Option<&'a str>,
}

/// Handle one verified webhook within `TRANSACTION_TIMEOUT_MS`.
#[instrument(name = "signup", skip_all, fields(event_type, clerk_user_id))]
pub async fn handle(
    store: &Store,
    settings: &SignupSettings,
    queue: Option<&SignupQueue>,
    hook: &VerifiedWebhook,
) -> Result<Outcome, StoreError> {
    tokio::time::timeout(
        settings.transaction_timeout,
        dispatch(store, settings, queue, hook),
    )
    .await
    .map_err(|_| StoreError::Timeout(settings.transaction_timeout))?
}

async fn dispatch(
    store: &Store,
    settings: &SignupSettings,
    queue: Option<&SignupQueue>,
    hook: &VerifiedWebhook,
) -> Result<Outcome, StoreError> {
    let msg_id = hook.msg_id();
    let (envelope, value) = match parse_envelope(hook.body()) {
        Ok(parsed) => parsed,
        Err(e) => {
            let event = EventRow {
                msg_id,
                event_type: "unknown",
                payload: None,
                clerk_id: None,
            };
            return record_only(store, settings, &event, EventStatus::Failed, e.to_string()).await;
        }
    };
    let event_type: String = envelope.event_type.chars().take(100).collect();
    let span = tracing::Span::current();
    span.record("event_type", event_type.as_str());
    let event = EventRow {
        msg_id,
        event_type: &event_type,
        payload: Some(&value),
        clerk_id: None,
    };
    match event_type.as_str() {
        "user.created" | "user.updated" => match envelope.user_profile() {
            Ok(profile) => {
                span.record("clerk_user_id", profile.clerk_id.as_str());
                let event = EventRow {
                    clerk_id: Some(profile.clerk_id.as_str()),
                    ..event
                };
                upsert_user(store, settings, queue, &event, &profile).await
            }
            Err(e) => {
                record_only(store, settings, &event, EventStatus::Failed, e.to_string()).await
            }
        },
        "user.deleted" => match envelope.deleted_user() {
            Ok(clerk_id) => {
                span.record("clerk_user_id", clerk_id.as_str());
                let ts = envelope.timestamp.unwrap_or(hook.timestamp() * 1000);
                let event = EventRow {
                    clerk_id: Some(clerk_id.as_str()),
                    ..event
                };
                delete_user(store, &event, &clerk_id, ts).await
            }
            Err(e) => {
                record_only(store, settings, &event, EventStatus::Failed, e.to_string()).await
            }
        },
        _ => {
            record_only(
                store,
                settings,
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
    /// A permanent refusal: the transaction was rolled back; record the event as failed.
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
            record_only(store, settings, event, EventStatus::Failed, reason).await
        }
        Err(StoreError::Constraint(violation)) => {
            // The schema refused the write (e.g. a NOT NULL column without DEFAULT added by
            // another writer). Record why, and answer 5xx so Svix retries: the redelivery
            // claims the failed event again once the schema is fixed.
            warn!(reason = %violation, "user creation failed");
            record_only(
                store,
                settings,
                event,
                EventStatus::Failed,
                violation.to_string(),
            )
            .await?;
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
/// PostgreSQL runs a webhook's transaction as one statement ([`PG_SIGNUP`]); SQLite, and
/// lazy provisioning on either backend, run the same steps one statement at a time.
async fn upsert_user_tx(
    store: &Store,
    settings: &SignupSettings,
    queue: Option<&SignupQueue>,
    event: Option<&EventRow<'_>>,
    profile: &UserProfile,
) -> Result<UpsertResult, StoreError> {
    match (store, event) {
        (Store::Postgres(pg), Some(event)) => {
            upsert_user_postgres(pg, settings, queue, event, profile).await
        }
        _ => upsert_user_stepwise(store, settings, event, profile).await,
    }
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

/// Commit, or roll back for a dry run.
async fn finish<DB: sqlx::Database>(
    tx: sqlx::Transaction<'_, DB>,
    dry_run: bool,
) -> Result<(), sqlx::Error> {
    if dry_run {
        tx.rollback().await
    } else {
        tx.commit().await
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

async fn delete_user(
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

/// Record an event that changes nothing else (`ignored` or `failed`), in one statement.
async fn record_only(
    store: &Store,
    settings: &SignupSettings,
    event: &EventRow<'_>,
    status: EventStatus,
    reason: String,
) -> Result<Outcome, StoreError> {
    let now = store::now();
    let failed = status == EventStatus::Failed;
    if settings.dry_run {
        return Ok(if failed {
            Outcome::Failed(reason)
        } else {
            Outcome::Ignored(reason)
        });
    }
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
    if failed {
        tracing::error!(reason = %reason, "webhook event failed permanently");
        Ok(Outcome::Failed(reason))
    } else {
        info!(reason = %reason, "webhook event ignored");
        Ok(Outcome::Ignored(reason))
    }
}

// Declared after the macros above, which they use.
mod postgres;
mod queue;
mod stepwise;

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
            assert_eq!(EventStatus::from_db(s.as_str()).unwrap(), s);
        }
        for unknown in ["", "Processed", "duplicate", "pending"] {
            assert!(EventStatus::from_db(unknown).is_err(), "{unknown:?}");
        }
    }
}
