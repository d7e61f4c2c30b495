//! Credits: spend and grant generations atomically, with a ledger that always adds up.
//!
//! A movement is one transaction of two statements: a conditional `UPDATE "User"` (a
//! debit never takes the balance below zero) and the ledger row with its
//! `balanceAfter`, keyed by the caller's idempotency key (unique per user). A repeated
//! key returns the first result; the same key with a different request is a conflict.

use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Serialize;
use tracing::{info, instrument};

use crate::domain::{Amount, CallerKey, ClerkUserId};
use crate::outbox::{ClerkClient, DeliveryError};
use crate::signup::{self, SignupSettings};
use crate::store::{self, new_id, Store, StoreError};
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

impl From<sqlx::Error> for CreditsError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
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

const DEBIT_USER: &str = r#"
UPDATE "User" SET "usedGenerations" = "usedGenerations" + $2, "updatedAt" = $3
WHERE "id" = $1 AND "availableGenerations" - "usedGenerations" >= $2
RETURNING CAST("availableGenerations" - "usedGenerations" AS BIGINT) AS "balance""#;

const CREDIT_USER: &str = r#"
UPDATE "User" SET "availableGenerations" = "availableGenerations" + $2, "updatedAt" = $3
WHERE "id" = $1 AND "availableGenerations" <= 2147483647 - $2
RETURNING CAST("availableGenerations" - "usedGenerations" AS BIGINT) AS "balance""#;

const INSERT_MOVEMENT: &str = r#"
INSERT INTO "Transaction"
    ("id", "tracking_id", "userId", "status", "amount", "type", "description",
     "reason", "idempotencyKey", "balanceAfter", "createdAt")
VALUES ($1, $2, $3, 'completed', $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT ("userId", "idempotencyKey") DO NOTHING
RETURNING "id""#;

/// The statements a successful consume runs, in order: `FIND_USER` on the pool, then
/// `DEBIT_USER` and `INSERT_MOVEMENT` between `BEGIN` and `COMMIT`. `clerk-sync bench
/// --scenario consume --print-pgbench-script` turns them into the pgbench peer of
/// `bench/compare`: keep this list in step with `resolve_user` and `apply_tx`.
pub fn consume_statements() -> [&'static str; 3] {
    [FIND_USER, DEBIT_USER, INSERT_MOVEMENT]
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

/// Spend (`Reason::Consume`) or grant (any other reason) `amount` generations.
#[instrument(skip_all, fields(reason = reason.as_str(), amount = amount.get()))]
pub async fn apply(
    store: &Store,
    timeout: Duration,
    user: &UserCredits,
    reason: Reason,
    amount: Amount,
    key: &CallerKey,
    reference: Option<&CallerKey>,
) -> Result<Movement, CreditsError> {
    tokio::time::timeout(
        timeout,
        apply_tx(store, user, reason, amount, key, reference),
    )
    .await
    .map_err(|_| StoreError::Timeout(timeout))?
}

type MovementRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
);

async fn apply_tx(
    store: &Store,
    user: &UserCredits,
    reason: Reason,
    amount: Amount,
    key: &CallerKey,
    reference: Option<&CallerKey>,
) -> Result<Movement, CreditsError> {
    let now = store::now();
    let change = if reason == Reason::Consume {
        DEBIT_USER
    } else {
        CREDIT_USER
    };
    let tracking = reference.unwrap_or(key).as_str();
    let description = match reason {
        Reason::Consume => "Generations spent",
        _ => "Generations granted",
    };
    with_tx!(store, |tx, p| {
        let balance: Option<i64> = sqlx::query_scalar(change)
            .bind(&user.id)
            .bind(amount.get())
            .bind(now)
            .persistent(p)
            .fetch_optional(&mut *tx)
            .await?;
        let inserted: Option<String> = match balance {
            Some(balance) => {
                sqlx::query_scalar(INSERT_MOVEMENT)
                    .bind(new_id())
                    .bind(tracking)
                    .bind(&user.id)
                    .bind(amount.get())
                    .bind(reason.ledger_type())
                    .bind(description)
                    .bind(reason.as_str())
                    .bind(key.as_str())
                    .bind(balance as i32)
                    .bind(now)
                    .persistent(p)
                    .fetch_optional(&mut *tx)
                    .await?
            }
            None => None,
        };
        if let (Some(id), Some(balance)) = (inserted, balance) {
            tx.commit().await?;
            return Ok(Movement {
                transaction_id: id,
                kind: reason.ledger_type().to_owned(),
                reason: reason.as_str().to_owned(),
                amount: amount.get(),
                balance_after: balance as i32,
                replayed: false,
            });
        }
        // Nothing to commit: either the key was used before, or the user cannot move.
        let earlier: Option<MovementRow> = sqlx::query_as(FIND_MOVEMENT)
            .bind(&user.id)
            .bind(key.as_str())
            .persistent(p)
            .fetch_optional(&mut *tx)
            .await?;
        let current: Option<i64> = sqlx::query_scalar(BALANCE)
            .bind(&user.id)
            .persistent(p)
            .fetch_optional(&mut *tx)
            .await?;
        tx.rollback().await?;
        match (earlier, current) {
            (Some((id, kind, r, amt, after)), _) => {
                if amt == Some(amount.get()) && r.as_deref() == Some(reason.as_str()) {
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
            (None, Some(balance)) if reason == Reason::Consume => {
                Err(CreditsError::InsufficientCredits { balance })
            }
            (None, Some(_)) => Err(CreditsError::LimitExceeded),
        }
    })
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
