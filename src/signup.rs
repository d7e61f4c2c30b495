//! THE signup transaction. Everything that happens when Clerk tells us about a user is in
//! this file, for both backends.
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
//! round trip per webhook (`upsert_user_postgres`). SQLite, which has no data-modifying
//! CTEs and no network, runs the same steps one statement at a time inside a transaction
//! (`upsert_user_stepwise`), as does lazy provisioning, which writes no event.
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
use crate::store::{self, new_id, PgStore, Store, StoreError};
use crate::webhooks::clerk_event::{parse_envelope, UserProfile};
use crate::webhooks::VerifiedWebhook;
use crate::with_tx;

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
    pub fn status(&self) -> &'static str {
        match self {
            Self::Processed(_) => "processed",
            Self::Duplicate => "duplicate",
            Self::Ignored(_) => "ignored",
            Self::Failed(_) => "failed",
        }
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

const STATUS_PROCESSED: &str = "processed";
const STATUS_IGNORED: &str = "ignored";
const STATUS_FAILED: &str = "failed";

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

static CLAIM_USER_SYNC: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
INSERT INTO "ClerkUserSync" ("clerkId", "clerkUpdatedAt", "deletedAt")
VALUES ($1, $2, NULL)
{USER_SYNC_CONFLICT}
RETURNING "clerkId""#
    )
});

const USER_IS_DELETED: &str = r#"
SELECT "deletedAt" IS NOT NULL FROM "ClerkUserSync" WHERE "clerkId" = $1"#;

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

const INSERT_OUTBOX_JOB: &str = r#"
INSERT INTO "OutboxJob"
    ("id", "kind", "payload", "status", "attempts", "nextAttemptAt", "createdAt", "updatedAt")
VALUES ($1, $2, $3, 'pending', 0, $4, $4, $4)"#;

const TOMBSTONE_USER: &str = r#"
INSERT INTO "ClerkUserSync" ("clerkId", "clerkUpdatedAt", "deletedAt")
VALUES ($1, $2, $3)
ON CONFLICT ("clerkId") DO UPDATE
SET "deletedAt" = COALESCE("ClerkUserSync"."deletedAt", excluded."deletedAt")"#;

/// The statements a `user.created` for a new user runs on PostgreSQL, in order (one round
/// trip each; today one statement, in autocommit). `clerk-sync bench
/// --print-pgbench-script` turns them into the pgbench peer of `bench/compare`: keep this
/// list in step with `upsert_user_postgres`.
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
        let processed = $status != STATUS_FAILED;
        let reason: Option<&str> = $reason;
        $query
            .bind(new_id())
            .bind($event.msg_id.as_str())
            .bind($event.event_type)
            .bind(processed)
            .bind(processed.then_some($now))
            .bind($now)
            .bind($status)
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
    hook: &VerifiedWebhook,
) -> Result<Outcome, StoreError> {
    tokio::time::timeout(
        settings.transaction_timeout,
        dispatch(store, settings, hook),
    )
    .await
    .map_err(|_| StoreError::Timeout(settings.transaction_timeout))?
}

async fn dispatch(
    store: &Store,
    settings: &SignupSettings,
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
            return record_only(store, settings, &event, STATUS_FAILED, e.to_string()).await;
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
                upsert_user(store, settings, &event, &profile).await
            }
            Err(e) => record_only(store, settings, &event, STATUS_FAILED, e.to_string()).await,
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
            Err(e) => record_only(store, settings, &event, STATUS_FAILED, e.to_string()).await,
        },
        _ => {
            record_only(
                store,
                settings,
                &event,
                STATUS_IGNORED,
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
    event: &EventRow<'_>,
    profile: &UserProfile,
) -> Result<Outcome, StoreError> {
    info!("user creation started");
    match upsert_user_tx(store, settings, Some(event), profile).await {
        Ok(UpsertResult::Done(outcome)) => {
            if let Outcome::Processed(action) = &outcome {
                info!(action = action.as_str(), "transaction completed");
            }
            Ok(outcome)
        }
        Ok(UpsertResult::Refused(reason)) => {
            record_only(store, settings, event, STATUS_FAILED, reason).await
        }
        Err(StoreError::Constraint(violation)) => {
            // The schema refused the write (e.g. a NOT NULL column without DEFAULT added by
            // another writer). Record why, and answer 5xx so Svix retries: the redelivery
            // claims the failed event again once the schema is fixed.
            warn!(reason = %violation, "user creation failed");
            record_only(store, settings, event, STATUS_FAILED, violation.to_string()).await?;
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
    event: Option<&EventRow<'_>>,
    profile: &UserProfile,
) -> Result<UpsertResult, StoreError> {
    match (store, event) {
        (Store::Postgres(pg), Some(event)) => {
            upsert_user_postgres(pg, settings, event, profile).await
        }
        _ => upsert_user_stepwise(store, settings, event, profile).await,
    }
}

/// Steps 1–5 for a webhook on PostgreSQL, as ONE statement run on its own (autocommit):
/// one round trip per signup, which is what matters on Neon, where every round trip
/// crosses a network.
///
/// Its parts all see the statement's snapshot, so every decision that must survive a
/// concurrent writer is taken by a unique index, never by a plain read:
/// - `sync` claims the per-user row with `INSERT … ON CONFLICT DO UPDATE … WHERE newer`,
///   which waits for a concurrent event of the same user and then judges the latest
///   committed row;
/// - `ev` records the event with `ON CONFLICT ("eventId")`, so of concurrent deliveries
///   of one message exactly one gets a row back; the others are duplicates;
/// - `usr` inserts the user with `ON CONFLICT ("clerkId") DO UPDATE`, so a user created
///   by a concurrent event is updated, not inserted twice; the user is new exactly when
///   the returned id is the one we proposed, and only then are the `signup_bonus` row and
///   the outbox job written.
///
/// `prior` (a delivery already handled) and `taken` (the email address belongs to another
/// Clerk user) are plain reads: they only keep a message that will change nothing from
/// claiming the per-user row. Any write that fails (a constraint, a missing table) fails
/// the whole statement, and nothing is written.
///
/// Returns no row for a duplicate, else the event's status and reason and whether the
/// user was created.
static PG_SIGNUP: LazyLock<String> = LazyLock::new(|| {
    for reason in [EMAIL_TAKEN, REASON_DELETED, REASON_STALE] {
        assert!(
            !reason.contains('\''),
            "reasons are inlined as SQL literals"
        );
    }
    format!(
        r#"
WITH prior AS (
    SELECT "status" FROM "WebhookEvent" WHERE "eventId" = $2
),
taken AS (
    SELECT EXISTS (SELECT 1 FROM "User" WHERE "email" = $7 AND "clerkId" <> $5) AS "yes"
),
sync AS (
    INSERT INTO "ClerkUserSync" ("clerkId", "clerkUpdatedAt", "deletedAt")
    SELECT $5, $6, NULL
    WHERE NOT EXISTS (SELECT 1 FROM prior WHERE "status" <> 'failed')
      AND NOT (SELECT "yes" FROM taken)
    {USER_SYNC_CONFLICT}
    RETURNING "clerkId"
),
verdict AS (
    SELECT CASE WHEN EXISTS (SELECT 1 FROM sync) THEN 'processed'
                WHEN (SELECT "yes" FROM taken) THEN 'failed'
                ELSE 'ignored' END AS "status",
           CASE WHEN EXISTS (SELECT 1 FROM sync) THEN NULL
                WHEN (SELECT "yes" FROM taken) THEN '{EMAIL_TAKEN}'
                WHEN EXISTS (SELECT 1 FROM "ClerkUserSync"
                             WHERE "clerkId" = $5 AND "deletedAt" IS NOT NULL)
                    THEN '{REASON_DELETED}'
                ELSE '{REASON_STALE}' END AS "error"
),
ev AS (
    INSERT INTO "WebhookEvent"
        ("id", "eventId", "eventType", "processed", "processedAt", "createdAt", "status",
         "error", "payload", "clerkId")
    SELECT $1, $2, $3, v."status" <> 'failed',
           CASE WHEN v."status" <> 'failed' THEN $11 END, $11, v."status", v."error", $4, $5
    FROM verdict v
    {EVENT_ID_CONFLICT}
    RETURNING "status", "error"
),
usr AS (
    INSERT INTO "User"
        ("id", "clerkId", "email", "photo", "firstName", "lastName",
         "usedGenerations", "availableGenerations", "createdAt", "updatedAt")
    SELECT $12, $5, $7, $8, $9, $10, 0, $13, $11, $11
    WHERE EXISTS (SELECT 1 FROM ev WHERE "status" = 'processed')
    ON CONFLICT ("clerkId") DO UPDATE SET
        "email" = excluded."email", "photo" = excluded."photo",
        "firstName" = excluded."firstName", "lastName" = excluded."lastName",
        "updatedAt" = excluded."updatedAt"
    RETURNING "id"
),
bonus AS (
    INSERT INTO "Transaction"
        ("id", "tracking_id", "userId", "status", "amount", "type", "description",
         "reason", "webhookEventId", "idempotencyKey", "balanceAfter", "createdAt")
    SELECT $14, $5, usr."id", 'completed', $13, 'credit', 'Signup bonus',
           'signup_bonus', $2, $15, $13, $11
    FROM usr WHERE usr."id" = $12 AND $13 > 0
),
job AS (
    INSERT INTO "OutboxJob"
        ("id", "kind", "payload", "status", "attempts", "nextAttemptAt", "createdAt", "updatedAt")
    SELECT $16, $17, $18, 'pending', 0, $11, $11, $11
    FROM usr WHERE usr."id" = $12
)
SELECT ev."status", ev."error", EXISTS (SELECT 1 FROM usr WHERE "id" = $12) FROM ev"#
    )
});

pub(crate) fn pg_signup() -> &'static str {
    PG_SIGNUP.as_str()
}

async fn upsert_user_postgres(
    pg: &PgStore,
    settings: &SignupSettings,
    event: &EventRow<'_>,
    profile: &UserProfile,
) -> Result<UpsertResult, StoreError> {
    let now = store::now();
    let clerk_id = profile.clerk_id.as_str();
    let user_id = new_id();
    let job = Job::UpdateClerkMetadata {
        clerk_id: clerk_id.to_owned(),
        user_id: user_id.clone(),
    };
    let signup_key = format!("signup:{clerk_id}");
    let (event_row_id, bonus_id, job_id) = (new_id(), new_id(), new_id());
    let query = || {
        sqlx::query_as(pg_signup())
            .bind(&event_row_id)
            .bind(event.msg_id.as_str())
            .bind(event.event_type)
            .bind(event.payload.map(Json))
            .bind(clerk_id)
            .bind(profile.clerk_updated_at)
            .bind(profile.email.as_str())
            .bind(&profile.photo)
            .bind(profile.first_name.as_deref())
            .bind(profile.last_name.as_deref())
            .bind(now)
            .bind(&user_id)
            .bind(settings.signup_credits)
            .bind(&bonus_id)
            .bind(&signup_key)
            .bind(&job_id)
            .bind(job.kind())
            .bind(Json(&job))
            .persistent(pg.prepared)
    };
    let row: Option<(String, Option<String>, bool)> = if settings.dry_run {
        let mut tx = pg.pool.begin().await?;
        let row = query().fetch_optional(&mut *tx).await?;
        tx.rollback().await?;
        row
    } else {
        // One statement, idempotent by `svix-id`: safe to run again on a new connection.
        store::retry_lost_connection(&pg.pool, || query().fetch_optional(&pg.pool)).await?
    };
    let Some((status, reason, created)) = row else {
        return Ok(UpsertResult::Done(Outcome::Duplicate));
    };
    let reason = reason.unwrap_or_default();
    let outcome = match status.as_str() {
        STATUS_PROCESSED if created => {
            info!(user_id = %user_id, "user created");
            Outcome::Processed(Action::Created)
        }
        STATUS_PROCESSED => Outcome::Processed(Action::Updated),
        STATUS_IGNORED => {
            info!(reason = %reason, "event ignored");
            Outcome::Ignored(reason)
        }
        _ => {
            tracing::error!(reason = %reason, "webhook event failed permanently");
            Outcome::Failed(reason)
        }
    };
    Ok(UpsertResult::Done(outcome))
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

async fn upsert_user_stepwise(
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
                STATUS_PROCESSED,
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

        let fresh: Option<String> = sqlx::query_scalar(CLAIM_USER_SYNC.as_str())
            .bind(clerk_id)
            .bind(profile.clerk_updated_at)
            .persistent(p)
            .fetch_optional(&mut *tx)
            .await?;
        if fresh.is_none() {
            let deleted: bool = sqlx::query_scalar(USER_IS_DELETED)
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
            sqlx::query(INSERT_OUTBOX_JOB)
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
    let run = upsert_user_tx(store, settings, None, profile);
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
            STATUS_PROCESSED,
            None,
            now
        )
        .persistent(p)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            return Ok(Outcome::Duplicate);
        }
        sqlx::query(TOMBSTONE_USER)
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
    status: &'static str,
    reason: String,
) -> Result<Outcome, StoreError> {
    let now = store::now();
    let failed = status == STATUS_FAILED;
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
