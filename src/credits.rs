//! Credits: spend and grant generations atomically, with a ledger that always adds up.
//!
//! A movement is one transaction: a conditional `UPDATE "User"` (a debit never takes the
//! balance below zero) and the ledger row with its `balanceAfter`, keyed by the caller's
//! idempotency key (unique per user). A repeated key returns the first result; the same
//! key with a different request is a conflict. On PostgreSQL the user lookup, the key
//! check, the update and the ledger row are ONE statement (one round trip,
//! `Change::movement_postgres`); SQLite runs them one at a time (`apply_stepwise`).

use std::sync::LazyLock;
use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Serialize;
use tracing::{info, instrument};

use crate::domain::{Amount, CallerKey, ClerkUserId};
use crate::outbox::{ClerkClient, DeliveryError};
use crate::signup::{self, SignupSettings};
use crate::store::{self, new_id, ConstraintKind, PgStore, Store, StoreError};
use crate::webhooks::clerk_event::profile_from_user;
use crate::{with_pool, with_tx};

#[derive(Debug, thiserror::Error)]
pub enum CreditsError {
    #[error("no such user")]
    UnknownUser,
    #[error("not enough credits: balance is {balance}")]
    InsufficientCredits { balance: i64 },
    #[error("this idempotency key was already used for a different request")]
    IdempotencyConflict,
    #[error("the grant would take availableGenerations past its limit")]
    LimitExceeded,
    #[error("the Clerk API could not provide the user: {0}")]
    Clerk(#[source] DeliveryError),
    #[error("the Clerk user could not be provisioned: {0}")]
    Unprovisionable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a movement changes the balance, and the ledger `reason` it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Consume,
    Purchase,
    Refund,
    Grant,
    Adjustment,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consume => "consume",
            Self::Purchase => "purchase",
            Self::Refund => "refund",
            Self::Grant => "grant",
            Self::Adjustment => "adjustment",
        }
    }

    fn ledger_type(self) -> &'static str {
        match self {
            Self::Consume => "debit",
            _ => "credit",
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserCredits {
    pub id: String,
    #[sqlx(rename = "clerkId")]
    pub clerk_id: String,
    pub email: String,
    #[sqlx(rename = "firstName")]
    pub first_name: Option<String>,
    #[sqlx(rename = "lastName")]
    pub last_name: Option<String>,
    pub photo: String,
    #[sqlx(rename = "availableGenerations")]
    pub available_generations: i32,
    #[sqlx(rename = "usedGenerations")]
    pub used_generations: i32,
    #[sqlx(skip)]
    pub balance: i64,
    #[sqlx(rename = "createdAt")]
    pub created_at: NaiveDateTime,
    #[sqlx(rename = "updatedAt")]
    pub updated_at: NaiveDateTime,
}

/// The outcome of one movement; a replay returns the first one with `replayed: true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Movement {
    pub transaction_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub amount: i32,
    pub balance_after: i32,
    pub replayed: bool,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    pub id: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: Option<String>,
    pub reason: Option<String>,
    pub amount: Option<i32>,
    #[sqlx(rename = "balanceAfter")]
    pub balance_after: Option<i32>,
    /// The caller's reference (`tracking_id`).
    #[sqlx(rename = "tracking_id")]
    pub reference: String,
    #[sqlx(rename = "idempotencyKey")]
    pub idempotency_key: Option<String>,
    #[sqlx(rename = "createdAt")]
    pub created_at: NaiveDateTime,
}

/// Keyset position in a user's ledger: newest first by (`createdAt`, `id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    created_at: NaiveDateTime,
    id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!(
            "{}.{}",
            self.created_at.and_utc().timestamp_millis(),
            self.id
        )
    }

    pub fn parse(raw: &str) -> Option<Self> {
        let (ms, id) = raw.split_once('.')?;
        let created_at = chrono::DateTime::from_timestamp_millis(ms.parse().ok()?)?.naive_utc();
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then(|| {
            Self {
                created_at,
                id: id.to_owned(),
            }
        })
    }
}

const FIND_USER: &str = r#"
SELECT "id", "clerkId", "email", "firstName", "lastName", "photo",
       "availableGenerations", "usedGenerations", "createdAt", "updatedAt"
FROM "User" WHERE "clerkId" = $1"#;

/// How a movement changes the user row, and when it may: `{amount}` is the amount's
/// parameter. A debit never takes the balance below zero; a credit never overflows.
const DEBIT: Change = Change {
    set: r#""usedGenerations" = "usedGenerations" + {amount}"#,
    allowed: r#""availableGenerations" - "usedGenerations" >= {amount}"#,
    after: r#""availableGenerations" - "usedGenerations" - {amount}"#,
};
const CREDIT: Change = Change {
    set: r#""availableGenerations" = "availableGenerations" + {amount}"#,
    allowed: r#""availableGenerations" <= 2147483647 - {amount}"#,
    after: r#""availableGenerations" - "usedGenerations" + {amount}"#,
};

struct Change {
    set: &'static str,
    allowed: &'static str,
    /// The balance after the movement, from the user row before it.
    after: &'static str,
}

impl Change {
    /// The stepwise path's first statement: the ledger row, written only when the user
    /// can move and the key is new. `$1` the user's id, `$2` the amount, `$3` now, `$4` the
    /// row's id, `$5` its `tracking_id`, `$6` type, `$7` description, `$8` reason, `$9` the
    /// key. The row goes first so that the ledger trigger on `"User"` (migration 6), which
    /// fires as the user row changes, finds it and records no direct write.
    fn insert_movement(&self) -> String {
        format!(
            r#"
INSERT INTO "Transaction"
    ("id", "tracking_id", "userId", "status", "amount", "type", "description",
     "reason", "idempotencyKey", "balanceAfter", "createdAt")
SELECT $4, $5, "id", 'completed', $2, $6, $7, $8, $9, {}, $3
FROM "User" WHERE "id" = $1 AND {}
ON CONFLICT ("userId", "idempotencyKey") DO NOTHING
RETURNING "id", CAST("balanceAfter" AS BIGINT)"#,
            self.after.replace("{amount}", "$2"),
            self.allowed.replace("{amount}", "$2")
        )
    }

    /// The stepwise path's second statement: `$1` the user's id, `$2` the amount, `$3`
    /// now (the ledger row's `createdAt`).
    fn update_user(&self) -> String {
        format!(
            r#"UPDATE "User" SET {}, "updatedAt" = $3 WHERE "id" = $1"#,
            self.set.replace("{amount}", "$2"),
        )
    }

    /// The whole movement as ONE statement, for PostgreSQL: one round trip. `$1` the Clerk
    /// id, `$2` the idempotency key, `$3` the amount, `$4` now, `$5` the new ledger row's
    /// id, `$6` its `tracking_id`, `$7` type, `$8` description, `$9` reason.
    ///
    /// `prior` (the key used before) is read with the statement's snapshot; a concurrent
    /// request with the same key is caught by the unique `(userId, idempotencyKey)` index
    /// instead, which fails this statement as a whole (nothing moves), and the caller runs
    /// it again to find the first result. The `UPDATE` waits for concurrent movements of
    /// this user and re-checks `allowed` on the newest row, so balances never race.
    /// `clerk_sync.writer`, set for this statement's transaction only, tells the ledger
    /// trigger on `"User"` (migration 6) that the ledger row is written here.
    fn movement_postgres(&self) -> String {
        format!(
            r#"
WITH usr AS (
    SELECT "id" FROM "User" WHERE "clerkId" = $1
),
prior AS (
    SELECT t."id", t."type", t."reason", t."amount", t."balanceAfter"
    FROM "Transaction" t JOIN usr ON t."userId" = usr."id"
    WHERE t."idempotencyKey" = $2
),
moved AS (
    UPDATE "User" SET {}, "updatedAt" = $4
    WHERE "id" = (SELECT "id" FROM usr) AND {}
      AND NOT EXISTS (SELECT 1 FROM prior)
      AND set_config('clerk_sync.writer', 'on', true) = 'on'
    RETURNING "id", CAST("availableGenerations" - "usedGenerations" AS BIGINT) AS "balance"
),
ins AS (
    INSERT INTO "Transaction"
        ("id", "tracking_id", "userId", "status", "amount", "type", "description",
         "reason", "idempotencyKey", "balanceAfter", "createdAt")
    SELECT $5, $6, moved."id", 'completed', $3, $7, $8, $9, $2, moved."balance", $4
    FROM moved
    RETURNING "id", "balanceAfter"
)
SELECT EXISTS (SELECT 1 FROM usr),
       ins."id", ins."balanceAfter",
       prior."id", prior."type", prior."reason", prior."amount", prior."balanceAfter",
       (SELECT CAST("availableGenerations" - "usedGenerations" AS BIGINT) FROM "User"
         WHERE "id" = (SELECT "id" FROM usr))
FROM (SELECT 1) AS one LEFT JOIN ins ON TRUE LEFT JOIN prior ON TRUE"#,
            self.set.replace("{amount}", "$3"),
            self.allowed.replace("{amount}", "$3")
        )
    }
}

static DEBIT_USER: LazyLock<String> = LazyLock::new(|| DEBIT.update_user());
static CREDIT_USER: LazyLock<String> = LazyLock::new(|| CREDIT.update_user());
static DEBIT_ROW: LazyLock<String> = LazyLock::new(|| DEBIT.insert_movement());
static CREDIT_ROW: LazyLock<String> = LazyLock::new(|| CREDIT.insert_movement());
static CONSUME_POSTGRES: LazyLock<String> = LazyLock::new(|| DEBIT.movement_postgres());
static GRANT_POSTGRES: LazyLock<String> = LazyLock::new(|| CREDIT.movement_postgres());

/// The unique index that makes an idempotency key single-use per user.
const KEY_INDEX: &str = "Transaction_userId_idempotencyKey_key";

/// The statements a consume runs on PostgreSQL, in order: one statement, in autocommit. `clerk-sync bench --scenario consume
/// --print-pgbench-script` turns them into the pgbench peer of `bench/compare`: keep this
/// list in step with `apply_postgres`.
pub fn consume_statements_postgres() -> [&'static str; 1] {
    [CONSUME_POSTGRES.as_str()]
}

const FIND_MOVEMENT: &str = r#"
SELECT "id", "type", "reason", "amount", "balanceAfter"
FROM "Transaction" WHERE "userId" = $1 AND "idempotencyKey" = $2"#;

const BALANCE: &str = r#"
SELECT CAST("availableGenerations" - "usedGenerations" AS BIGINT) FROM "User" WHERE "id" = $1"#;

const LEDGER_FIRST_PAGE: &str = r#"
SELECT "id", "type", "reason", "amount", "balanceAfter", "tracking_id", "idempotencyKey", "createdAt"
FROM "Transaction" WHERE "userId" = $1
ORDER BY "createdAt" DESC, "id" DESC LIMIT $2"#;

const LEDGER_NEXT_PAGE: &str = r#"
SELECT "id", "type", "reason", "amount", "balanceAfter", "tracking_id", "idempotencyKey", "createdAt"
FROM "Transaction"
WHERE "userId" = $1 AND ("createdAt" < $3 OR ("createdAt" = $3 AND "id" < $4))
ORDER BY "createdAt" DESC, "id" DESC LIMIT $2"#;

pub async fn find_user(
    store: &Store,
    clerk_id: &ClerkUserId,
) -> Result<Option<UserCredits>, StoreError> {
    let user: Option<UserCredits> = with_pool!(store, |pool, p| {
        sqlx::query_as(FIND_USER)
            .bind(clerk_id.as_str())
            .persistent(p)
            .fetch_optional(pool)
            .await?
    });
    Ok(user.map(|mut u| {
        u.balance = i64::from(u.available_generations) - i64::from(u.used_generations);
        u
    }))
}

/// The user, provisioned from Clerk's Backend API when the first credits call arrives
/// before the `user.created` webhook (only when `CLERK_SECRET_KEY` is set).
#[instrument(skip_all, fields(clerk_user_id = %clerk_id))]
pub async fn resolve_user(
    store: &Store,
    clerk: Option<&ClerkClient>,
    settings: &SignupSettings,
    clerk_id: &ClerkUserId,
) -> Result<UserCredits, CreditsError> {
    if let Some(user) = find_user(store, clerk_id).await? {
        return Ok(user);
    }
    let clerk = clerk.ok_or(CreditsError::UnknownUser)?;
    let user = clerk
        .get_user(clerk_id.as_str())
        .await
        .map_err(CreditsError::Clerk)?
        .ok_or(CreditsError::UnknownUser)?;
    let profile =
        profile_from_user(&user, None).map_err(|e| CreditsError::Unprovisionable(e.to_string()))?;
    if profile.clerk_id != *clerk_id {
        return Err(CreditsError::Unprovisionable(
            "Clerk returned a different user".into(),
        ));
    }
    match signup::provision(store, settings, &profile).await? {
        signup::Outcome::Failed(reason) => return Err(CreditsError::Unprovisionable(reason)),
        outcome => info!(outcome = outcome.status(), "provisioned from the Clerk API"),
    }
    find_user(store, clerk_id)
        .await?
        .ok_or(CreditsError::UnknownUser)
}

/// Spend (`Reason::Consume`) or grant (any other reason) `amount` generations of the
/// user with this Clerk id. A user unknown here is first provisioned from Clerk's API when
/// it is configured, as `resolve_user` does.
#[instrument(skip_all, fields(clerk_user_id = %clerk_id, reason = movement.reason.as_str(), amount = movement.amount.get()))]
pub async fn move_credits(
    store: &Store,
    clerk: Option<&ClerkClient>,
    settings: &SignupSettings,
    clerk_id: &ClerkUserId,
    movement: &MovementRequest<'_>,
) -> Result<Movement, CreditsError> {
    let timeout = settings.transaction_timeout;
    match apply(store, timeout, clerk_id, movement).await {
        Err(CreditsError::UnknownUser) if clerk.is_some() => {
            resolve_user(store, clerk, settings, clerk_id).await?;
            apply(store, timeout, clerk_id, movement).await
        }
        result => result,
    }
}

/// What the caller asked to move.
#[derive(Debug, Clone, Copy)]
pub struct MovementRequest<'a> {
    pub reason: Reason,
    pub amount: Amount,
    pub key: &'a CallerKey,
    pub reference: Option<&'a CallerKey>,
}

impl MovementRequest<'_> {
    fn tracking(&self) -> &str {
        self.reference.unwrap_or(self.key).as_str()
    }

    fn description(&self) -> &'static str {
        match self.reason {
            Reason::Consume => "Generations spent",
            _ => "Generations granted",
        }
    }
}

async fn apply(
    store: &Store,
    timeout: Duration,
    clerk_id: &ClerkUserId,
    movement: &MovementRequest<'_>,
) -> Result<Movement, CreditsError> {
    let run = async {
        match store {
            Store::Postgres(pg) => match apply_postgres(pg, clerk_id, movement).await {
                // A concurrent request with the same key committed first: nothing moved
                // here; run again to answer with its result.
                Err(CreditsError::Store(StoreError::Constraint(v)))
                    if v.kind == ConstraintKind::Unique
                        && v.target.as_deref() == Some(KEY_INDEX) =>
                {
                    apply_postgres(pg, clerk_id, movement).await
                }
                result => result,
            },
            Store::Sqlite(_) => {
                let user = find_user(store, clerk_id)
                    .await?
                    .ok_or(CreditsError::UnknownUser)?;
                apply_stepwise(store, &user.id, movement).await
            }
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| StoreError::Timeout(timeout))?
}

/// A ledger row written before with the same key: id, type, reason, amount, balanceAfter.
type MovementRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
);

type PgMovementRow = (
    bool,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<i64>,
);

async fn apply_postgres(
    pg: &PgStore,
    clerk_id: &ClerkUserId,
    m: &MovementRequest<'_>,
) -> Result<Movement, CreditsError> {
    let sql = if m.reason == Reason::Consume {
        &CONSUME_POSTGRES
    } else {
        &GRANT_POSTGRES
    };
    let (now, row_id) = (store::now(), new_id());
    let query = || {
        sqlx::query_as(sql.as_str())
            .bind(clerk_id.as_str())
            .bind(m.key.as_str())
            .bind(m.amount.get())
            .bind(now)
            .bind(&row_id)
            .bind(m.tracking())
            .bind(m.reason.ledger_type())
            .bind(m.description())
            .bind(m.reason.as_str())
            .persistent(pg.prepared)
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        // One statement, idempotent by its key: safe to run again on a new connection.
        let row: PgMovementRow =
            store::retry_lost_connection(&pg.pool, || query().fetch_one(&pg.pool))
                .await
                .map_err(StoreError::from)?;
        let (known, id, after, p_id, p_kind, p_reason, p_amount, p_after, current) = row;
        if !known {
            return Err(CreditsError::UnknownUser);
        }
        // A consume refused although the statement's snapshot showed enough: a concurrent one
        // committed first, and `current` (read with that snapshot) is stale. Run again on
        // a new snapshot, to move or to answer with the balance as it is now.
        let raced = m.reason == Reason::Consume
            && id.is_none()
            && p_id.is_none()
            && current.is_some_and(|balance| balance >= i64::from(m.amount.get()));
        if raced && attempts < MAX_RACED_ATTEMPTS {
            continue;
        }
        let earlier = p_id.map(|id| (id, p_kind, p_reason, p_amount, p_after));
        return decide(m, id.zip(after), earlier, current);
    }
}

/// How often a movement refused by a concurrent one runs again before answering.
const MAX_RACED_ATTEMPTS: u32 = 5;

/// The same movement as `apply_postgres`, one statement at a time in a transaction.
async fn apply_stepwise(
    store: &Store,
    user_id: &str,
    m: &MovementRequest<'_>,
) -> Result<Movement, CreditsError> {
    let (written, earlier, current) = stepwise_tx(store, user_id, m).await?;
    decide(m, written, earlier, current)
}

/// What the stepwise transaction found: the row it wrote, or else the earlier row of this
/// key and the current balance.
type StepwiseFound = (Option<(String, i32)>, Option<MovementRow>, Option<i64>);

async fn stepwise_tx(
    store: &Store,
    user_id: &str,
    m: &MovementRequest<'_>,
) -> Result<StepwiseFound, StoreError> {
    let now = store::now();
    let (row, change) = if m.reason == Reason::Consume {
        (&DEBIT_ROW, &DEBIT_USER)
    } else {
        (&CREDIT_ROW, &CREDIT_USER)
    };
    with_tx!(store, |tx, p| {
        let inserted: Option<(String, i64)> = sqlx::query_as(row.as_str())
            .bind(user_id)
            .bind(m.amount.get())
            .bind(now)
            .bind(new_id())
            .bind(m.tracking())
            .bind(m.reason.ledger_type())
            .bind(m.description())
            .bind(m.reason.as_str())
            .bind(m.key.as_str())
            .persistent(p)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((id, balance)) = inserted {
            sqlx::query(change.as_str())
                .bind(user_id)
                .bind(m.amount.get())
                .bind(now)
                .persistent(p)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok((Some((id, balance as i32)), None, None));
        }
        // Nothing to commit: either the key was used before, or the user cannot move.
        let earlier: Option<MovementRow> = sqlx::query_as(FIND_MOVEMENT)
            .bind(user_id)
            .bind(m.key.as_str())
            .persistent(p)
            .fetch_optional(&mut *tx)
            .await?;
        let current: Option<i64> = sqlx::query_scalar(BALANCE)
            .bind(user_id)
            .persistent(p)
            .fetch_optional(&mut *tx)
            .await?;
        tx.rollback().await?;
        Ok((None, earlier, current))
    })
}

/// The answer to a movement: the row just written, else the first result of this key
/// (or a conflict when it was used for a different request), else why nothing moved.
fn decide(
    m: &MovementRequest<'_>,
    written: Option<(String, i32)>,
    earlier: Option<MovementRow>,
    current: Option<i64>,
) -> Result<Movement, CreditsError> {
    if let Some((id, balance_after)) = written {
        return Ok(Movement {
            transaction_id: id,
            kind: m.reason.ledger_type().to_owned(),
            reason: m.reason.as_str().to_owned(),
            amount: m.amount.get(),
            balance_after,
            replayed: false,
        });
    }
    match (earlier, current) {
        (Some((id, kind, r, amt, after)), _) => {
            if amt == Some(m.amount.get()) && r.as_deref() == Some(m.reason.as_str()) {
                Ok(Movement {
                    transaction_id: id,
                    kind: kind.unwrap_or_default(),
                    reason: r.unwrap_or_default(),
                    amount: amt.unwrap_or_default(),
                    balance_after: after.unwrap_or_default(),
                    replayed: true,
                })
            } else {
                Err(CreditsError::IdempotencyConflict)
            }
        }
        (None, None) => Err(CreditsError::UnknownUser),
        (None, Some(balance)) if m.reason == Reason::Consume => {
            Err(CreditsError::InsufficientCredits { balance })
        }
        (None, Some(_)) => Err(CreditsError::LimitExceeded),
    }
}

/// One page of a user's ledger, newest first, and the cursor of the next page.
pub async fn ledger_page(
    store: &Store,
    user_id: &str,
    limit: u32,
    cursor: Option<&Cursor>,
) -> Result<(Vec<LedgerEntry>, Option<Cursor>), StoreError> {
    let fetch = i64::from(limit) + 1;
    let mut rows: Vec<LedgerEntry> = with_pool!(store, |pool, p| {
        match cursor {
            None => {
                sqlx::query_as(LEDGER_FIRST_PAGE)
                    .bind(user_id)
                    .bind(fetch)
                    .persistent(p)
                    .fetch_all(pool)
                    .await?
            }
            Some(c) => {
                sqlx::query_as(LEDGER_NEXT_PAGE)
                    .bind(user_id)
                    .bind(fetch)
                    .bind(c.created_at)
                    .bind(&c.id)
                    .persistent(p)
                    .fetch_all(pool)
                    .await?
            }
        }
    });
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| Cursor {
            created_at: r.created_at,
            id: r.id.clone(),
        })
    } else {
        None
    };
    Ok((rows, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            created_at: store::now(),
            id: "abc123".into(),
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        for bad in ["", "x.y", "123", "123.", "123.a'b"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
