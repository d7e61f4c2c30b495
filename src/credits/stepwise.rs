//! A movement one statement at a time, in a transaction: SQLite.

use std::sync::LazyLock;

use super::*;
use crate::store::tables::TRANSACTION;
use crate::store::{self, new_id};
use crate::with_tx;

impl Change {
    /// The first statement: the ledger row, written only when the user can move and the
    /// key is new. `$1` the user's id, `$2` the amount, `$3` now, `$4` the row's id, `$5` its
    /// `tracking_id`, `$6` type, `$7` description, `$8` reason, `$9` the key. The row goes
    /// first so that the ledger trigger on `"User"` (migration 6), which fires as the user
    /// row changes, finds it and records no direct write.
    fn insert_movement(&self) -> String {
        format!(
            r#"
INSERT INTO "Transaction" ({TRANSACTION})
SELECT $4, $5, "id", 'completed', $2, $6, $7, $8, NULL, $9, {after}, $3
FROM "User" WHERE "id" = $1 AND {allowed}
ON CONFLICT ("userId", "idempotencyKey") DO NOTHING
RETURNING "id", CAST("balanceAfter" AS BIGINT)"#,
            after = self.after.replace("{amount}", "$2"),
            allowed = self.allowed.replace("{amount}", "$2")
        )
    }

    /// The second statement: `$1` the user's id, `$2` the amount, `$3` now (the ledger
    /// row's `createdAt`).
    fn update_user(&self) -> String {
        format!(
            r#"UPDATE "User" SET {}, "updatedAt" = $3 WHERE "id" = $1"#,
            self.set.replace("{amount}", "$2"),
        )
    }
}

struct Statements {
    insert_movement: LazyLock<String>,
    update_user: LazyLock<String>,
}

static DEBIT_STEPWISE: Statements = Statements {
    insert_movement: LazyLock::new(|| DEBIT.insert_movement()),
    update_user: LazyLock::new(|| DEBIT.update_user()),
};
static CREDIT_STEPWISE: Statements = Statements {
    insert_movement: LazyLock::new(|| CREDIT.insert_movement()),
    update_user: LazyLock::new(|| CREDIT.update_user()),
};

const FIND_EARLIER: &str = r#"
SELECT "id", "type", "reason", "amount", "balanceAfter"
FROM "Transaction" WHERE "userId" = $1 AND "idempotencyKey" = $2"#;

const BALANCE: &str = r#"
SELECT CAST("availableGenerations" - "usedGenerations" AS BIGINT) FROM "User" WHERE "id" = $1"#;

pub(super) async fn apply(
    store: &Store,
    user_id: &str,
    m: &MovementRequest<'_>,
) -> Result<Found, StoreError> {
    let now = store::now();
    let statements = match m.change.ledger_type() {
        LedgerType::Debit => &DEBIT_STEPWISE,
        LedgerType::Credit => &CREDIT_STEPWISE,
    };
    with_tx!(store, |tx, p| {
        let inserted: Option<(String, i64)> = sqlx::query_as(statements.insert_movement.as_str())
            .bind(user_id)
            .bind(m.amount.get())
            .bind(now)
            .bind(new_id())
            .bind(m.tracking())
            .bind(m.change.ledger_type())
            .bind(m.change.description())
            .bind(m.change.reason())
            .bind(m.key.as_str())
            .persistent(p)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((id, balance)) = inserted {
            sqlx::query(statements.update_user.as_str())
                .bind(user_id)
                .bind(m.amount.get())
                .bind(now)
                .persistent(p)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            let balance = i32::try_from(balance).expect("a balance is an integer column");
            return Ok(Found {
                written: Some((id, balance)),
                earlier: None,
                current: None,
            });
        }
        // Nothing to commit: either the key was used before, or the user cannot move.
        let earlier: Option<EarlierRow> = sqlx::query_as(FIND_EARLIER)
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
        Ok(Found {
            written: None,
            earlier,
            current,
        })
    })
}
