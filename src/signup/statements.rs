//! The statements of the signup path that PostgreSQL and SQLite share, and the rules the
//! PostgreSQL statement (`postgres.rs`) inlines. Column lists come from
//! [`crate::store::tables`].

use std::sync::LazyLock;

use super::EventStatus;
use crate::domain::{LedgerReason, LedgerType};
use crate::store::tables::{CLERK_USER_SYNC, OUTBOX_JOB, TRANSACTION, USER, WEBHOOK_EVENT};
use crate::store::{OwnTablesSql, TextEnum};

/// The event-id rule, shared by every path that records an event: a repeated `svix-id`
/// changes nothing and returns no row, unless the earlier attempt was recorded `failed`,
/// which a redelivery claims again.
pub(super) static EVENT_ID_CONFLICT: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"ON CONFLICT ("eventId") DO UPDATE SET
    "eventType" = excluded."eventType", "processed" = excluded."processed",
    "processedAt" = excluded."processedAt", "status" = excluded."status",
    "error" = excluded."error", "payload" = excluded."payload", "clerkId" = excluded."clerkId"
WHERE "WebhookEvent"."status" = '{failed}'"#,
        failed = EventStatus::Failed.as_str()
    )
});

pub(super) static INSERT_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
INSERT INTO "WebhookEvent" ({WEBHOOK_EVENT})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
{conflict}
RETURNING "id""#,
        conflict = *EVENT_ID_CONFLICT
    )
});

/// The last of the plain signup's statements ([`super::plain_signup_statements_postgres`]):
/// `$1` the event row, `$2` now.
pub(super) const MARK_EVENT_PROCESSED: &str = r#"
UPDATE "WebhookEvent" SET "processed" = true, "processedAt" = $2 WHERE "id" = $1"#;

/// `$2` the reason, `$3` [`EventStatus::Ignored`].
pub(super) const MARK_EVENT_IGNORED: &str = r#"
UPDATE "WebhookEvent" SET "status" = $3, "error" = $2 WHERE "id" = $1"#;

/// The per-user rule: an event applies only when it is newer than what was applied and
/// the user is not deleted; the claim returns no row otherwise.
pub(super) const USER_SYNC_CONFLICT: &str = r#"ON CONFLICT ("clerkId") DO UPDATE SET "clerkUpdatedAt" = excluded."clerkUpdatedAt"
WHERE "ClerkUserSync"."clerkUpdatedAt" < excluded."clerkUpdatedAt"
  AND "ClerkUserSync"."deletedAt" IS NULL"#;

pub(super) static CLAIM_USER_SYNC: LazyLock<OwnTablesSql> = LazyLock::new(|| {
    OwnTablesSql::new(
        format!(
            r#"
INSERT INTO {{own}}"ClerkUserSync" ({CLERK_USER_SYNC})
VALUES ($1, $2, NULL)
{USER_SYNC_CONFLICT}
RETURNING "clerkId""#
        )
        .leak(),
    )
});

pub(super) static USER_IS_DELETED: OwnTablesSql = OwnTablesSql::new(
    r#"
SELECT "deletedAt" IS NOT NULL FROM {own}"ClerkUserSync" WHERE "clerkId" = $1"#,
);

pub(super) const EMAIL_OWNED_BY_OTHER: &str = r#"
SELECT EXISTS (SELECT 1 FROM "User" WHERE "email" = $1 AND "clerkId" <> $2)"#;

pub(crate) const UPDATE_USER: &str = r#"
UPDATE "User"
SET "email" = $2, "photo" = $3, "firstName" = $4, "lastName" = $5, "updatedAt" = $6
WHERE "clerkId" = $1
RETURNING "id""#;

/// A new user: `$7` the signup credits, `$8` now.
pub(crate) static INSERT_USER: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
INSERT INTO "User" ({USER})
VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $8)"#
    )
});

/// The service's `INSERT_USER` for a throwaway user (`diagnose`, `smoke`): empty photo,
/// no names. `$exec` is a pool or `&mut *tx`.
macro_rules! insert_probe_user {
    ($exec:expr, $p:expr, $id:expr, $clerk_id:expr, $email:expr, $credits:expr, $at:expr) => {
        sqlx::query($crate::signup::INSERT_USER.as_str())
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

/// The `signup_bonus` ledger row: `$4` the signup credits, `$5` the event's `svix-id`,
/// `$6` its key (`signup:<clerkId>`), `$7` now.
pub(super) static INSERT_SIGNUP_BONUS: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
INSERT INTO "Transaction" ({TRANSACTION})
VALUES ($1, $2, $3, 'completed', $4, '{credit}', 'Signup bonus', '{signup_bonus}', $5, $6, $4, $7)"#,
        credit = LedgerType::Credit.as_str(),
        signup_bonus = LedgerReason::SignupBonus.as_str()
    )
});

pub(super) static INSERT_OUTBOX_JOB: LazyLock<OwnTablesSql> = LazyLock::new(|| {
    OwnTablesSql::new(
        format!(
            r#"
INSERT INTO {{own}}"OutboxJob" ({OUTBOX_JOB})
VALUES ($1, $2, $3, 'pending', 0, $4, $4, $4)"#
        )
        .leak(),
    )
});

pub(super) static TOMBSTONE_USER: LazyLock<OwnTablesSql> = LazyLock::new(|| {
    OwnTablesSql::new(
        format!(
            r#"
INSERT INTO {{own}}"ClerkUserSync" ({CLERK_USER_SYNC})
VALUES ($1, $2, $3)
ON CONFLICT ("clerkId") DO UPDATE
SET "deletedAt" = COALESCE("ClerkUserSync"."deletedAt", excluded."deletedAt")"#
        )
        .leak(),
    )
});

pub(super) const DELETE_USER: &str = r#"DELETE FROM "User" WHERE "clerkId" = $1"#;

/// The stored payloads of a deleted user's events hold their email address: erase them.
pub(super) const ERASE_EVENT_PAYLOADS: &str = r#"
UPDATE "WebhookEvent" SET "payload" = NULL WHERE "clerkId" = $1 AND "payload" IS NOT NULL"#;

/// Bind the ten parameters of `INSERT_EVENT` for an [`EventRow`](super::EventRow).
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
            .bind(status)
            .bind(reason)
            .bind($event.payload_json())
            .bind($event.clerk_id)
    }};
}
pub(super) use bind_event;

/// The signup bonus's idempotency key: one bonus per Clerk user, whichever path wrote it.
pub(super) fn signup_key(clerk_id: &str) -> String {
    format!("signup:{clerk_id}")
}
