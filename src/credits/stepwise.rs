//! A movement one statement at a time, in a transaction: SQLite, on its writer's thread
//! ([`crate::store::SqliteWriter`]).

use std::sync::LazyLock;

use super::*;
use crate::store::sqlite_writer::{bind, first, first_row, sqlite_time};
use crate::store::tables::TRANSACTION;
use crate::store::{self, new_id, SqliteStore, Step};

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

const USER_ID: &str = r#"SELECT "id" FROM "User" WHERE "clerkId" = $1"#;

/// The movement as one request to SQLite's writer, which commits it with every other
/// request waiting: the user's id, the ledger row, the user row; or, when nothing moved,
/// what the answer needs (the row of this key written before, the balance).
pub(super) async fn apply(
    lite: &SqliteStore,
    clerk_id: &ClerkUserId,
    m: &MovementRequest<'_>,
) -> Result<Found, StoreError> {
    let statements = match m.change.ledger_type() {
        LedgerType::Debit => &DEBIT_STEPWISE,
        LedgerType::Credit => &CREDIT_STEPWISE,
    };
    let clerk_id = clerk_id.as_str().to_owned();
    let (amount, key, tracking) = (
        m.amount.get(),
        m.key.as_str().to_owned(),
        m.tracking().to_owned(),
    );
    let (kind, description, reason) = (
        m.change.ledger_type().as_str(),
        m.change.description(),
        m.change.reason().as_str(),
    );
    let now = sqlite_time(store::now());
    let row_id = new_id();
    lite.writer
        .write(move |conn| {
            let nothing = Found {
                written: None,
                earlier: None,
                current: None,
            };
            let Some(user_id): Option<String> = first(conn, USER_ID, &[&clerk_id])? else {
                return Ok(Step::Rollback(nothing));
            };
            let inserted: Option<(String, i64)> = first_row(
                conn,
                statements.insert_movement.as_str(),
                &[
                    &user_id,
                    &amount,
                    &now,
                    &row_id,
                    &tracking,
                    &kind,
                    &description,
                    &reason,
                    &key,
                ],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            if let Some((id, balance)) = inserted {
                bind(
                    conn,
                    statements.update_user.as_str(),
                    &[&user_id, &amount, &now],
                )?
                .raw_execute()?;
                let balance = i32::try_from(balance).expect("a balance is an integer column");
                return Ok(Step::Commit(Found {
                    written: Some((id, balance)),
                    ..nothing
                }));
            }
            // Nothing moved: either the key was used before, or the user cannot move.
            let earlier = first_row(conn, FIND_EARLIER, &[&user_id, &key], |row| {
                Ok(EarlierRow {
                    id: row.get(0)?,
                    kind: row
                        .get::<_, Option<String>>(1)?
                        .as_deref()
                        .and_then(LedgerType::parse),
                    reason: row
                        .get::<_, Option<String>>(2)?
                        .as_deref()
                        .and_then(LedgerReason::parse),
                    amount: row.get(3)?,
                    balance_after: row.get(4)?,
                })
            })?;
            let current: Option<i64> = first(conn, BALANCE, &[&user_id])?;
            Ok(Step::Rollback(Found {
                written: None,
                earlier,
                current,
            }))
        })
        .await
}
