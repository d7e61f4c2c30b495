//! Credits: spend and grant generations atomically, with a ledger that always adds up.
//!
//! A movement is one transaction: a conditional `UPDATE "User"` (a debit never takes the
//! balance below zero) and the ledger row with its `balanceAfter`, keyed by the caller's
//! idempotency key (unique per user). A repeated key returns the first result; the same
//! key with a different request is a conflict. On PostgreSQL the user lookup, the key
//! check, the update and the ledger row are ONE statement (one round trip,
//! `postgres.rs`), which movements waiting together share ([`CreditsQueue`]); SQLite runs
//! them one at a time on its writer's thread (`stepwise.rs`). Both answer through
//! [`decide`], from what they wrote or found. The ledger is read in `ledger.rs`.

mod ledger;
mod postgres;
mod stepwise;

use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Serialize;
use tracing::{info, instrument};

use crate::domain::{Amount, CallerKey, ClerkUserId, CreditChange, LedgerReason, LedgerType};
use crate::outbox::{ClerkClient, DeliveryError};
use crate::signup::{self, SignupSettings};
use crate::store::{Store, StoreError, TextEnum};
use crate::webhooks::clerk_event::profile_from_user;
use crate::with_pool;

pub use ledger::{ledger_page, Cursor, LedgerEntry};
pub use postgres::{
    consume_statements_postgres, CreditsQueue, MovementStatement, MOVEMENT_ARRAY_PARAMS,
};

/// What the credits use case answers: a refusal the caller can act on, or the store's
/// error.
#[derive(Debug, thiserror::Error)]
pub enum CreditsError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a credits call changed nothing, in words for the caller.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
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
    #[serde(serialize_with = "crate::domain::time::rfc3339_utc")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: NaiveDateTime,
    #[sqlx(rename = "updatedAt")]
    #[serde(serialize_with = "crate::domain::time::rfc3339_utc")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: NaiveDateTime,
}

/// The outcome of one movement; a replay returns the first one with `replayed: true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Movement {
    pub transaction_id: String,
    #[serde(rename = "type")]
    pub kind: LedgerType,
    pub reason: LedgerReason,
    pub amount: i32,
    pub balance_after: i32,
    pub replayed: bool,
}

/// What the caller asked to move.
#[derive(Debug, Clone, Copy)]
pub struct MovementRequest<'a> {
    pub change: CreditChange,
    pub amount: Amount,
    pub key: &'a CallerKey,
    pub reference: Option<&'a CallerKey>,
}

impl MovementRequest<'_> {
    fn tracking(&self) -> &str {
        self.reference.unwrap_or(self.key).as_str()
    }
}

/// How a movement changes the user row, and when it may: `{amount}` is the amount's
/// parameter. A debit never takes the balance below zero; a credit never overflows.
/// Each backend's statements are built from these, so both decide alike.
struct Change {
    set: &'static str,
    allowed: &'static str,
    /// The balance after the movement, from the user row before it.
    after: &'static str,
}

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

/// A ledger row written before with the caller's key.
#[derive(Debug, sqlx::FromRow)]
struct EarlierRow {
    id: String,
    #[sqlx(rename = "type")]
    kind: Option<LedgerType>,
    reason: Option<LedgerReason>,
    amount: Option<i32>,
    #[sqlx(rename = "balanceAfter")]
    balance_after: Option<i32>,
}

/// What a backend's movement found: the row it wrote (id, balance after), else the row
/// of this key written before and the current balance (`None`: no such user).
struct Found {
    written: Option<(String, i32)>,
    earlier: Option<EarlierRow>,
    current: Option<i64>,
}

/// The `SELECT … FROM "User"` of a [`UserCredits`], for a `WHERE` to follow.
macro_rules! select_user_credits {
    () => {
        r#"SELECT "id", "clerkId", "email", "firstName", "lastName", "photo",
       "availableGenerations", "usedGenerations", "createdAt", "updatedAt"
FROM "User" "#
    };
}
pub(crate) use select_user_credits;

const FIND_USER: &str = concat!(select_user_credits!(), r#"WHERE "clerkId" = $1"#);

impl UserCredits {
    /// Fill in `balance`, which the row does not hold.
    pub(crate) fn with_balance(mut self) -> Self {
        self.balance = i64::from(self.available_generations) - i64::from(self.used_generations);
        self
    }
}

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
    Ok(user.map(UserCredits::with_balance))
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
    let clerk = clerk.ok_or(Refusal::UnknownUser)?;
    // A deleted user stays deleted: answered here, Clerk not asked.
    if signup::is_deleted(store, clerk_id.as_str()).await? {
        return Err(Refusal::UnknownUser.into());
    }
    let user = clerk
        .find_user(clerk_id.as_str())
        .await
        .map_err(Refusal::Clerk)?
        .ok_or(Refusal::UnknownUser)?;
    let profile =
        profile_from_user(&user, None).map_err(|e| Refusal::Unprovisionable(e.to_string()))?;
    if profile.clerk_id != *clerk_id {
        return Err(Refusal::Unprovisionable("Clerk returned a different user".into()).into());
    }
    match signup::provision(store, settings, &profile).await? {
        signup::Outcome::Failed(reason) => return Err(Refusal::Unprovisionable(reason).into()),
        outcome => info!(outcome = outcome.status(), "provisioned from the Clerk API"),
    }
    Ok(find_user(store, clerk_id)
        .await?
        .ok_or(Refusal::UnknownUser)?)
}

/// Spend or grant `amount` generations of the user with this Clerk id. A user unknown
/// here is first provisioned from Clerk's API when it is configured, as `resolve_user`
/// does.
#[instrument(skip_all, fields(clerk_user_id = %clerk_id, reason = movement.change.reason().as_str(), amount = movement.amount.get()))]
pub async fn move_credits(
    store: &Store,
    queue: Option<&CreditsQueue>,
    clerk: Option<&ClerkClient>,
    settings: &SignupSettings,
    clerk_id: &ClerkUserId,
    movement: &MovementRequest<'_>,
) -> Result<Movement, CreditsError> {
    let timeout = settings.transaction_timeout;
    match apply(store, queue, timeout, clerk_id, movement).await {
        Err(CreditsError::Refused(Refusal::UnknownUser)) if clerk.is_some() => {
            resolve_user(store, clerk, settings, clerk_id).await?;
            apply(store, queue, timeout, clerk_id, movement).await
        }
        result => result,
    }
}

async fn apply(
    store: &Store,
    queue: Option<&CreditsQueue>,
    timeout: Duration,
    clerk_id: &ClerkUserId,
    m: &MovementRequest<'_>,
) -> Result<Movement, CreditsError> {
    let run = async {
        let found = match store {
            Store::Postgres(pg) => postgres::apply(pg, queue, clerk_id, m).await?,
            Store::Sqlite(lite) => stepwise::apply(lite, clerk_id, m).await?,
        };
        decide(m, found)
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| StoreError::Timeout(timeout))?
}

/// The answer to a movement: the row just written, else the first result of this key
/// (or a conflict when it was used for a different request), else why nothing moved.
fn decide(m: &MovementRequest<'_>, found: Found) -> Result<Movement, CreditsError> {
    let (kind, reason, amount) = (m.change.ledger_type(), m.change.reason(), m.amount.get());
    if let Some((transaction_id, balance_after)) = found.written {
        return Ok(Movement {
            transaction_id,
            kind,
            reason,
            amount,
            balance_after,
            replayed: false,
        });
    }
    let refusal = match (found.earlier, found.current) {
        (Some(earlier), _) => match earlier {
            EarlierRow {
                id,
                kind: Some(k),
                reason: Some(r),
                amount: Some(a),
                balance_after: Some(balance_after),
            } if (k, r, a) == (kind, reason, amount) => {
                return Ok(Movement {
                    transaction_id: id,
                    kind,
                    reason,
                    amount,
                    balance_after,
                    replayed: true,
                })
            }
            _ => Refusal::IdempotencyConflict,
        },
        (None, None) => Refusal::UnknownUser,
        (None, Some(balance)) => match m.change {
            CreditChange::Consume => Refusal::InsufficientCredits { balance },
            CreditChange::Grant(_) => Refusal::LimitExceeded,
        },
    };
    Err(refusal.into())
}
