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

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::types::Json;
use tokio::sync::oneshot;
use tracing::{info, instrument, warn};

use crate::domain::{ClerkUserId, SvixMessageId};
use crate::metrics::QueueMetrics;
use crate::outbox::Job;
use crate::store::{self, new_id, OwnTablesSql, PgStore, Store, StoreError, OWN_SCHEMA};
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

/// The statements a `user.created` for a new user runs on PostgreSQL, in order (one round
/// trip each; today one statement, in autocommit, with arrays of one element when the
/// webhook goes alone). `clerk-sync bench --print-pgbench-script` turns them into the
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
                upsert_user(store, settings, queue, &event, &profile).await
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

/// Steps 1–5 on PostgreSQL, as ONE statement run on its own (autocommit), for a batch of
/// webhooks: one row per webhook in each array parameter (`$11` now, `$13` the signup
/// credits and `$17` the job kind are shared). A lone webhook is a batch of one: one round
/// trip per signup, which is what matters on Neon, where every round trip crosses a
/// network. Under load [`SignupQueue`] groups concurrent webhooks into one statement, so
/// they share a round trip and a commit.
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
/// `handled` (a delivery already handled) and `taken` (the email address belongs to
/// another Clerk user) are plain reads: they only keep a message that will change nothing
/// from claiming the per-user row. They are scalar subqueries, not `EXISTS`, so that the
/// planner always looks them up by index: on a new database's empty tables it would plan
/// an `EXISTS` as one scan of the whole table, and keep that plan as the table grows.
///
/// Rows of one batch must not share a `svix-id`, a Clerk user or an email address
/// ([`SignupRow::conflicts_with`]): within one statement they could not see each other.
/// Rows are written in Clerk id order, so two statements lock rows in the same order.
/// Any write that fails (a constraint, a missing table) fails the whole statement, and
/// nothing is written.
///
/// Returns a row per webhook that is not a duplicate: its `svix-id`, the event's status
/// and reason, and whether the user was created.
static PG_SIGNUP: LazyLock<String> = LazyLock::new(|| {
    for reason in [EMAIL_TAKEN, REASON_DELETED, REASON_STALE] {
        assert!(
            !reason.contains('\''),
            "reasons are inlined as SQL literals"
        );
    }
    format!(
        r#"
WITH input AS (
    SELECT i.*,
           COALESCE((SELECT w."status" <> 'failed' FROM "WebhookEvent" w
                     WHERE w."eventId" = i."eventId"), false) AS "handled",
           COALESCE((SELECT u."clerkId" <> i."clerkId" FROM "User" u
                     WHERE u."email" = i."email"), false) AS "taken"
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[],
                $7::text[], $8::text[], $9::text[], $10::text[], $12::text[], $14::text[],
                $15::text[], $16::text[], $18::text[])
        AS i("rowId", "eventId", "eventType", "payload", "clerkId", "clerkUpdatedAt",
             "email", "photo", "firstName", "lastName", "userId", "bonusId",
             "signupKey", "jobId", "jobPayload")
),
sync AS (
    INSERT INTO {OWN_SCHEMA}."ClerkUserSync" ("clerkId", "clerkUpdatedAt", "deletedAt")
    SELECT i."clerkId", i."clerkUpdatedAt", NULL FROM input i
    WHERE NOT i."handled" AND NOT i."taken"
    ORDER BY i."clerkId"
    {USER_SYNC_CONFLICT}
    RETURNING "clerkId"
),
verdict AS (
    SELECT i.*,
           CASE WHEN s."clerkId" IS NOT NULL THEN 'processed'
                WHEN i."taken" THEN 'failed'
                ELSE 'ignored' END AS "status",
           CASE WHEN s."clerkId" IS NOT NULL THEN NULL
                WHEN i."taken" THEN '{EMAIL_TAKEN}'
                WHEN (SELECT c."deletedAt" IS NOT NULL FROM {OWN_SCHEMA}."ClerkUserSync" c
                      WHERE c."clerkId" = i."clerkId") THEN '{REASON_DELETED}'
                ELSE '{REASON_STALE}' END AS "error"
    FROM input i LEFT JOIN sync s ON s."clerkId" = i."clerkId"
),
ev AS (
    INSERT INTO "WebhookEvent"
        ("id", "eventId", "eventType", "processed", "processedAt", "createdAt", "status",
         "error", "payload", "clerkId")
    SELECT v."rowId", v."eventId", v."eventType", v."status" <> 'failed',
           CASE WHEN v."status" <> 'failed' THEN $11 END, $11, v."status", v."error",
           v."payload"::jsonb, v."clerkId"
    FROM verdict v
    ORDER BY v."clerkId"
    {EVENT_ID_CONFLICT}
    RETURNING "eventId", "status", "error"
),
usr AS (
    INSERT INTO "User"
        ("id", "clerkId", "email", "photo", "firstName", "lastName",
         "usedGenerations", "availableGenerations", "createdAt", "updatedAt")
    SELECT i."userId", i."clerkId", i."email", i."photo", i."firstName", i."lastName",
           0, $13, $11, $11
    FROM input i JOIN ev ON ev."eventId" = i."eventId"
    WHERE ev."status" = 'processed'
    ORDER BY i."clerkId"
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
    SELECT i."bonusId", i."clerkId", usr."id", 'completed', $13, 'credit', 'Signup bonus',
           'signup_bonus', i."eventId", i."signupKey", $13, $11
    FROM usr JOIN input i ON i."userId" = usr."id"
    WHERE $13 > 0
),
job AS (
    INSERT INTO {OWN_SCHEMA}."OutboxJob"
        ("id", "kind", "payload", "status", "attempts", "nextAttemptAt", "createdAt", "updatedAt")
    SELECT i."jobId", $17, i."jobPayload"::jsonb, 'pending', 0, $11, $11, $11
    FROM usr JOIN input i ON i."userId" = usr."id"
)
SELECT ev."eventId", ev."status", ev."error",
       EXISTS (SELECT 1 FROM usr WHERE usr."id" = i."userId")
FROM input i JOIN ev ON ev."eventId" = i."eventId""#
    )
});

pub(crate) fn pg_signup() -> &'static str {
    PG_SIGNUP.as_str()
}

/// The parameters of [`PG_SIGNUP`] that hold one element per webhook; the others are
/// shared by the batch.
pub const PG_SIGNUP_ARRAY_PARAMS: [usize; 15] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 16, 18];

/// One `user.created` / `user.updated` webhook as a row of [`PG_SIGNUP`], owned so that
/// it can wait in the [`SignupQueue`].
#[derive(Debug)]
struct SignupRow {
    event_row_id: String,
    msg_id: String,
    event_type: String,
    /// The event as JSON text (the column is `jsonb`).
    payload: Option<String>,
    clerk_id: String,
    clerk_updated_at: i64,
    email: String,
    photo: String,
    first_name: Option<String>,
    last_name: Option<String>,
    user_id: String,
    bonus_id: String,
    signup_key: String,
    job_id: String,
    job_kind: &'static str,
    job_payload: String,
}

impl SignupRow {
    fn new(event: &EventRow<'_>, profile: &UserProfile) -> Self {
        let clerk_id = profile.clerk_id.as_str();
        let user_id = new_id();
        let job = Job::UpdateClerkMetadata {
            clerk_id: clerk_id.to_owned(),
            user_id: user_id.clone(),
        };
        Self {
            event_row_id: new_id(),
            msg_id: event.msg_id.as_str().to_owned(),
            event_type: event.event_type.to_owned(),
            payload: event.payload.map(Value::to_string),
            clerk_id: clerk_id.to_owned(),
            clerk_updated_at: profile.clerk_updated_at,
            email: profile.email.as_str().to_owned(),
            photo: profile.photo.clone(),
            first_name: profile.first_name.clone(),
            last_name: profile.last_name.clone(),
            user_id,
            bonus_id: new_id(),
            signup_key: format!("signup:{clerk_id}"),
            job_id: new_id(),
            job_kind: job.kind(),
            job_payload: serde_json::to_string(&job).expect("a job serialises"),
        }
    }

    fn payload_bytes(&self) -> usize {
        self.payload.as_ref().map_or(0, String::len)
    }

    /// Whether two webhooks must go to the database in different statements.
    fn conflicts_with(&self, other: &Self) -> bool {
        self.clerk_id == other.clerk_id || self.msg_id == other.msg_id || self.email == other.email
    }
}

/// What [`PG_SIGNUP`] decided for one webhook that was not a duplicate.
#[derive(Debug)]
struct Applied {
    status: String,
    reason: Option<String>,
    created: bool,
}

/// Run [`PG_SIGNUP`] for `rows` (at least one, no two in conflict); `None` for a
/// duplicate. A dry run rolls back.
async fn run_pg_signup(
    pg: &PgStore,
    signup_credits: i32,
    dry_run: bool,
    rows: &[SignupRow],
) -> Result<Vec<Option<Applied>>, sqlx::Error> {
    let now = store::now();
    let query = || {
        let texts = |f: fn(&SignupRow) -> &str| rows.iter().map(f).collect::<Vec<_>>();
        let maybe = |f: fn(&SignupRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
        sqlx::query_as::<_, (String, String, Option<String>, bool)>(pg_signup())
            .bind(texts(|r| &r.event_row_id))
            .bind(texts(|r| &r.msg_id))
            .bind(texts(|r| &r.event_type))
            .bind(maybe(|r| r.payload.as_deref()))
            .bind(texts(|r| &r.clerk_id))
            .bind(rows.iter().map(|r| r.clerk_updated_at).collect::<Vec<_>>())
            .bind(texts(|r| &r.email))
            .bind(texts(|r| &r.photo))
            .bind(maybe(|r| r.first_name.as_deref()))
            .bind(maybe(|r| r.last_name.as_deref()))
            .bind(now)
            .bind(texts(|r| &r.user_id))
            .bind(signup_credits)
            .bind(texts(|r| &r.bonus_id))
            .bind(texts(|r| &r.signup_key))
            .bind(texts(|r| &r.job_id))
            .bind(rows[0].job_kind)
            .bind(texts(|r| &r.job_payload))
            .persistent(pg.prepared)
    };
    let mut found = if dry_run {
        let mut tx = pg.pool.begin().await?;
        let found = query().fetch_all(&mut *tx).await?;
        tx.rollback().await?;
        found
    } else {
        // One statement, idempotent by `svix-id`: safe to run again on a new connection.
        store::retry_lost_connection(&pg.pool, || query().fetch_all(&pg.pool)).await?
    };
    Ok(rows
        .iter()
        .map(|row| {
            let at = found.iter().position(|f| f.0 == row.msg_id)?;
            let (_, status, reason, created) = found.swap_remove(at);
            Some(Applied {
                status,
                reason,
                created,
            })
        })
        .collect())
}

/// Webhooks that arrive while the database is busy wait here and go to it together, as
/// one [`PG_SIGNUP`]: one round trip, one plan and one commit for the group (group
/// commit). A webhook that finds the queue idle goes at once, alone, so the queue costs no
/// latency when the service is quiet.
///
/// One statement at a time per process, from a task spawned when work arrives and ended
/// when the queue is empty. Measured on 2 cores (README, Performance): one queue beat one
/// per pooled connection, whose smaller batches each paid a plan and a commit. Scaling
/// out is more replicas; their statements meet in PostgreSQL, whose unique indexes decide.
///
/// The events of one user are applied in arrival order and never in one statement (nor
/// are two webhooks with one `svix-id` or email address: [`SignupRow::conflicts_with`]).
/// A caller that stops waiting (its timeout, a closed connection) is dropped from the
/// queue before its webhook is sent; Svix delivers it again. A batch the database refuses
/// (a constraint, a deadlock with another writer) is applied again one webhook at a time,
/// so each gets its own answer.
#[derive(Debug, Clone)]
pub struct SignupQueue {
    pg: PgStore,
    signup_credits: i32,
    state: Arc<Mutex<QueueState>>,
    metrics: QueueMetrics,
}

/// The most webhooks in one statement.
const MAX_BATCH: usize = 64;

#[derive(Debug, Default)]
struct QueueState {
    waiting: Vec<Waiting>,
    /// A task is applying the queue's webhooks.
    running: bool,
}

#[derive(Debug)]
struct Waiting {
    row: SignupRow,
    reply: Reply,
}

type Reply = oneshot::Sender<Result<Option<Applied>, StoreError>>;

impl SignupQueue {
    pub fn new(pg: &PgStore, settings: &SignupSettings, metrics: QueueMetrics) -> Self {
        Self {
            pg: pg.clone(),
            signup_credits: settings.signup_credits,
            state: Arc::default(),
            metrics,
        }
    }

    async fn apply(&self, row: SignupRow) -> Result<Option<Applied>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.waiting.push(Waiting { row, reply });
            self.metrics.waiting.set(state.waiting.len() as i64);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            tokio::spawn(self.clone().run());
        }
        // The sender is dropped unanswered only if the queue's task panicked.
        answer
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::WorkerCrashed))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A list and a flag: valid after any panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Apply the waiting webhooks, a batch at a time, until none is left.
    async fn run(self) {
        // Should a batch panic, the queue must not stay marked running with no task.
        struct Release<'a>(&'a SignupQueue);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.lock().running = false;
            }
        }
        let release = Release(&self);
        loop {
            let batch = {
                let mut state = self.lock();
                let batch = take_batch(&mut state.waiting);
                self.metrics.waiting.set(state.waiting.len() as i64);
                if batch.is_empty() {
                    state.running = false;
                    std::mem::forget(release);
                    return;
                }
                batch
            };
            self.metrics.batch_size.observe(batch.len() as f64);
            let (rows, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|w| (w.row, w.reply)).unzip();
            self.run_batch(&rows, replies).await;
        }
    }

    /// Apply `rows` in one statement and answer each caller. A statement the database
    /// refuses is applied again one webhook at a time, skipping callers that stopped
    /// waiting: during an outage every attempt waits out the pool's timeout, and the
    /// queue must not spend that on answers nobody reads.
    async fn run_batch(&self, rows: &[SignupRow], replies: Vec<Reply>) {
        let applied = run_pg_signup(&self.pg, self.signup_credits, false, rows).await;
        match applied {
            Ok(applied) => {
                for (reply, applied) in replies.into_iter().zip(applied) {
                    // The caller may have stopped waiting; its webhook was applied anyway.
                    let _ = reply.send(Ok(applied));
                }
            }
            Err(e) if rows.len() == 1 => {
                let reply = replies.into_iter().next().expect("one reply per row");
                let _ = reply.send(Err(e.into()));
            }
            Err(e) => {
                warn!(webhooks = rows.len(), error.message = %e,
                    "signup batch refused; applying its webhooks one at a time");
                for (row, reply) in rows.iter().zip(replies) {
                    if reply.is_closed() {
                        continue;
                    }
                    let alone = std::slice::from_ref(row);
                    let result = run_pg_signup(&self.pg, self.signup_credits, false, alone).await;
                    let _ = reply.send(result.map(|mut a| a.pop().flatten()).map_err(Into::into));
                }
            }
        }
    }
}

/// The payload bytes past which a batch takes no more webhooks (its first always goes):
/// a signed body may be 256 KiB, and 64 of them in one message would be 16 MiB.
const MAX_BATCH_PAYLOAD_BYTES: usize = 1024 * 1024;

/// The next batch: waiting webhooks in arrival order, up to [`MAX_BATCH`] and
/// [`MAX_BATCH_PAYLOAD_BYTES`], none in conflict with an earlier one (those wait for a
/// later batch, in order). Webhooks whose caller stopped waiting are dropped.
fn take_batch(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let mut batch: Vec<Waiting> = Vec::new();
    let mut bytes = 0;
    let mut later = Vec::new();
    for w in waiting.drain(..) {
        if w.reply.is_closed() {
            continue;
        }
        let fits = batch.is_empty()
            || (batch.len() < MAX_BATCH
                && bytes + w.row.payload_bytes() <= MAX_BATCH_PAYLOAD_BYTES);
        if fits && !batch.iter().any(|b| b.row.conflicts_with(&w.row)) {
            bytes += w.row.payload_bytes();
            batch.push(w);
        } else {
            later.push(w);
        }
    }
    *waiting = later;
    batch
}

async fn upsert_user_postgres(
    pg: &PgStore,
    settings: &SignupSettings,
    queue: Option<&SignupQueue>,
    event: &EventRow<'_>,
    profile: &UserProfile,
) -> Result<UpsertResult, StoreError> {
    let row = SignupRow::new(event, profile);
    let user_id = row.user_id.clone();
    let applied = match queue {
        Some(queue) if !settings.dry_run => queue.apply(row).await?,
        _ => run_pg_signup(pg, settings.signup_credits, settings.dry_run, &[row])
            .await?
            .pop()
            .flatten(),
    };
    let Some(Applied {
        status,
        reason,
        created,
    }) = applied
    else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(clerk_id: &str, msg_id: &str, email: &str, payload_bytes: usize) -> SignupRow {
        SignupRow {
            event_row_id: new_id(),
            msg_id: msg_id.into(),
            event_type: "user.created".into(),
            payload: Some("x".repeat(payload_bytes)),
            clerk_id: clerk_id.into(),
            clerk_updated_at: 1,
            email: email.into(),
            photo: String::new(),
            first_name: None,
            last_name: None,
            user_id: new_id(),
            bonus_id: new_id(),
            signup_key: format!("signup:{clerk_id}"),
            job_id: new_id(),
            job_kind: "update_clerk_metadata",
            job_payload: "{}".into(),
        }
    }

    type Answer = oneshot::Receiver<Result<Option<Applied>, StoreError>>;

    /// Queue `rows`; the receivers must live for their webhooks to count as waited for.
    fn queue(rows: Vec<SignupRow>) -> (Vec<Waiting>, Vec<Answer>) {
        rows.into_iter()
            .map(|row| {
                let (reply, answer) = oneshot::channel();
                (Waiting { row, reply }, answer)
            })
            .unzip()
    }

    fn msg_ids(batch: &[Waiting]) -> Vec<&str> {
        batch.iter().map(|w| w.row.msg_id.as_str()).collect()
    }

    #[test]
    fn a_batch_never_holds_one_user_message_or_address_twice_and_keeps_order() {
        let (mut waiting, _answers) = queue(vec![
            row("user_a", "msg_1", "a@example.org", 10),
            row("user_a", "msg_2", "a@example.org", 10), // same user: later
            row("user_b", "msg_1", "b@example.org", 10), // same svix-id: later
            row("user_c", "msg_3", "a@example.org", 10), // same address: later
            row("user_d", "msg_4", "d@example.org", 10),
            row("user_a", "msg_5", "a2@example.org", 10), // same user: later
        ]);
        let first = take_batch(&mut waiting);
        assert_eq!(msg_ids(&first), ["msg_1", "msg_4"]);
        assert_eq!(msg_ids(&waiting), ["msg_2", "msg_1", "msg_3", "msg_5"]);
        let second = take_batch(&mut waiting);
        assert_eq!(msg_ids(&second), ["msg_2", "msg_1"]);
        assert_eq!(msg_ids(&waiting), ["msg_3", "msg_5"]);
    }

    #[test]
    fn a_batch_stops_at_its_count_and_payload_limits_but_always_takes_one() {
        let rows = (0..MAX_BATCH + 3)
            .map(|i| {
                row(
                    &format!("user_{i}"),
                    &format!("msg_{i}"),
                    &format!("{i}@example.org"),
                    1,
                )
            })
            .collect();
        let (mut waiting, _answers) = queue(rows);
        assert_eq!(take_batch(&mut waiting).len(), MAX_BATCH);
        assert_eq!(waiting.len(), 3);

        let big = MAX_BATCH_PAYLOAD_BYTES / 2 + 1;
        let (mut waiting, _answers) = queue(vec![
            row(
                "user_a",
                "msg_a",
                "a@example.org",
                MAX_BATCH_PAYLOAD_BYTES * 2,
            ),
            row("user_b", "msg_b", "b@example.org", big),
            row("user_c", "msg_c", "c@example.org", big),
        ]);
        assert_eq!(msg_ids(&take_batch(&mut waiting)), ["msg_a"]);
        assert_eq!(msg_ids(&take_batch(&mut waiting)), ["msg_b"]);
        assert_eq!(msg_ids(&take_batch(&mut waiting)), ["msg_c"]);
        assert!(take_batch(&mut waiting).is_empty());
    }

    #[test]
    fn webhooks_whose_caller_stopped_waiting_are_dropped() {
        let (mut waiting, mut answers) = queue(vec![
            row("user_a", "msg_a", "a@example.org", 1),
            row("user_b", "msg_b", "b@example.org", 1),
        ]);
        drop(answers.remove(0));
        assert_eq!(msg_ids(&take_batch(&mut waiting)), ["msg_b"]);
        assert!(waiting.is_empty());
    }
}
