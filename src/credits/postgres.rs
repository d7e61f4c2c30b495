//! A movement on PostgreSQL: ONE statement, one round trip.

use std::sync::LazyLock;

use super::*;
use crate::store::tables::TRANSACTION;
use crate::store::{self, new_id, ConstraintKind, PgStore};

impl Change {
    /// The whole movement as ONE statement. `$1` the Clerk id, `$2` the idempotency key,
    /// `$3` the amount, `$4` now, `$5` the new ledger row's id, `$6` its `tracking_id`, `$7`
    /// type, `$8` description, `$9` reason.
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
    UPDATE "User" SET {set}, "updatedAt" = $4
    WHERE "id" = (SELECT "id" FROM usr) AND {allowed}
      AND NOT EXISTS (SELECT 1 FROM prior)
      AND set_config('clerk_sync.writer', 'on', true) = 'on'
    RETURNING "id", CAST("availableGenerations" - "usedGenerations" AS BIGINT) AS "balance"
),
ins AS (
    INSERT INTO "Transaction" ({TRANSACTION})
    SELECT $5, $6, moved."id", 'completed', $3, $7, $8, $9, NULL, $2, moved."balance", $4
    FROM moved
    RETURNING "id", "balanceAfter"
)
SELECT EXISTS (SELECT 1 FROM usr) AS "known",
       ins."id" AS "writtenId", ins."balanceAfter" AS "writtenBalanceAfter",
       prior."id", prior."type", prior."reason", prior."amount", prior."balanceAfter",
       (SELECT CAST("availableGenerations" - "usedGenerations" AS BIGINT) FROM "User"
         WHERE "id" = (SELECT "id" FROM usr)) AS "current"
FROM (SELECT 1) AS one LEFT JOIN ins ON TRUE LEFT JOIN prior ON TRUE"#,
            set = self.set.replace("{amount}", "$3"),
            allowed = self.allowed.replace("{amount}", "$3")
        )
    }
}

static DEBIT_POSTGRES: LazyLock<String> = LazyLock::new(|| DEBIT.movement_postgres());
static CREDIT_POSTGRES: LazyLock<String> = LazyLock::new(|| CREDIT.movement_postgres());

/// The unique index that makes an idempotency key single-use per user.
const KEY_INDEX: &str = "Transaction_userId_idempotencyKey_key";

/// How often a movement refused by a concurrent one runs again before answering.
const MAX_RACED_ATTEMPTS: u32 = 5;

/// The statements a consume runs on PostgreSQL, in order: one statement, in autocommit.
/// `clerk-sync bench --scenario consume --print-pgbench-script` turns them into the
/// pgbench peer of `bench/compare`: keep this list in step with [`apply`].
pub fn consume_statements_postgres() -> [&'static str; 1] {
    [statement(CreditChange::Consume)]
}

fn statement(change: CreditChange) -> &'static str {
    match change.ledger_type() {
        LedgerType::Debit => DEBIT_POSTGRES.as_str(),
        LedgerType::Credit => CREDIT_POSTGRES.as_str(),
    }
}

/// The statement's one row: whether the user exists, the row it wrote, the row of this
/// key written before (flattened, its columns by their names), the balance.
#[derive(Debug, sqlx::FromRow)]
struct MovementResult {
    known: bool,
    #[sqlx(rename = "writtenId")]
    written_id: Option<String>,
    #[sqlx(rename = "writtenBalanceAfter")]
    written_balance_after: Option<i32>,
    #[sqlx(rename = "id")]
    earlier_id: Option<String>,
    #[sqlx(rename = "type")]
    earlier_kind: Option<LedgerType>,
    #[sqlx(rename = "reason")]
    earlier_reason: Option<LedgerReason>,
    #[sqlx(rename = "amount")]
    earlier_amount: Option<i32>,
    #[sqlx(rename = "balanceAfter")]
    earlier_balance_after: Option<i32>,
    current: Option<i64>,
}

/// The movement, run again while a concurrent one with the same key or of the same user
/// got in first.
pub(super) async fn apply(
    pg: &PgStore,
    clerk_id: &ClerkUserId,
    m: &MovementRequest<'_>,
) -> Result<Found, CreditsError> {
    match apply_once(pg, clerk_id, m).await {
        // A concurrent request with the same key committed first: nothing moved here;
        // run again to answer with its result.
        Err(CreditsError::Store(StoreError::Constraint(v)))
            if v.kind == ConstraintKind::Unique && v.target.as_deref() == Some(KEY_INDEX) =>
        {
            apply_once(pg, clerk_id, m).await
        }
        result => result,
    }
}

async fn apply_once(
    pg: &PgStore,
    clerk_id: &ClerkUserId,
    m: &MovementRequest<'_>,
) -> Result<Found, CreditsError> {
    let (now, row_id) = (store::now(), new_id());
    let query = || {
        sqlx::query_as(statement(m.change))
            .bind(clerk_id.as_str())
            .bind(m.key.as_str())
            .bind(m.amount.get())
            .bind(now)
            .bind(&row_id)
            .bind(m.tracking())
            .bind(m.change.ledger_type())
            .bind(m.change.description())
            .bind(m.change.reason())
            .persistent(pg.prepared)
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        // One statement, idempotent by its key: safe to run again on a new connection.
        pg.waits.note(&pg.pool);
        let row: MovementResult =
            store::retry_lost_connection(&pg.pool, || query().fetch_one(&pg.pool))
                .await
                .map_err(StoreError::from)?;
        if !row.known {
            return Err(Refusal::UnknownUser.into());
        }
        // A consume refused although the statement's snapshot showed enough: a concurrent
        // one committed first, and `current` (read with that snapshot) is stale. Run again
        // on a new snapshot, to move or to answer with the balance as it is now.
        let raced = m.change == CreditChange::Consume
            && row.written_id.is_none()
            && row.earlier_id.is_none()
            && row
                .current
                .is_some_and(|balance| balance >= i64::from(m.amount.get()));
        if raced && attempts < MAX_RACED_ATTEMPTS {
            continue;
        }
        return Ok(Found {
            written: row.written_id.zip(row.written_balance_after),
            earlier: row.earlier_id.map(|id| EarlierRow {
                id,
                kind: row.earlier_kind,
                reason: row.earlier_reason,
                amount: row.earlier_amount,
                balance_after: row.earlier_balance_after,
            }),
            current: row.current,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::GrantReason;

    #[test]
    fn consume_debits_and_every_grant_credits() {
        assert_eq!(statement(CreditChange::Consume), DEBIT_POSTGRES.as_str());
        for kind in [
            GrantReason::Purchase,
            GrantReason::Refund,
            GrantReason::Grant,
            GrantReason::Adjustment,
        ] {
            assert_eq!(
                statement(CreditChange::Grant(kind)),
                CREDIT_POSTGRES.as_str()
            );
        }
    }
}
