//! A movement on PostgreSQL: ONE statement, one round trip.

use std::sync::LazyLock;

use super::*;
use crate::store::batch_queue::{BatchQueue, Batched};
use crate::store::tables::TRANSACTION;
use crate::store::{self, new_id, ConstraintKind, PgStore};

impl Change {
    /// The whole movement as ONE statement, for a batch of movements of this direction:
    /// one row per movement in each array parameter. `$1` the Clerk ids, `$2` the
    /// idempotency keys, `$3` the amounts, `$4` now (shared), `$5` the new ledger rows'
    /// ids, `$6` their `tracking_id`, `$7` type, `$8` description, `$9` reason. A lone
    /// movement is a batch of one; under load [`CreditsQueue`] groups concurrent ones, so
    /// they share a round trip and a commit.
    ///
    /// `prior` (the key used before) is read with the statement's snapshot; a concurrent
    /// request with the same key is caught by the unique `(userId, idempotencyKey)` index
    /// instead, which fails this statement as a whole (nothing moves), and the caller runs
    /// it again to find the first result. The `UPDATE` waits for concurrent movements of
    /// its users and re-checks `allowed` on the newest row, so balances never race; a
    /// batch never holds two movements of one user ([`MovementStatement::conflicts`]),
    /// which one `UPDATE` could not apply both of.
    /// `clerk_sync.writer`, set for this statement's transaction only, tells the ledger
    /// trigger on `"User"` (migration 6) that the ledger rows are written here.
    ///
    /// The statement names that unique index as a `regclass` literal, resolved when the
    /// statement is analysed: if another writer's migration dropped it, the statement
    /// fails at once (42P01, `StoreError::Schema`, 503 `schema_drift`) instead of letting
    /// two concurrent movements with one key both through. Dropping an index invalidates
    /// the prepared plans of its table, so a cached statement is analysed again too. It
    /// costs nothing at run time (a constant).
    ///
    /// The arrays are read through a subquery with `OFFSET 0`, so the planner cannot see
    /// their lengths: a plan made for given arrays then costs what the generic plan costs,
    /// and PostgreSQL keeps the generic plan of the prepared statement instead of planning
    /// each execution again. Measured in PostgreSQL's log under `bench/compare`'s consume
    /// load: `unnest($1, …)` planned at every bind, 0.56 ms a statement; this form binds
    /// in 0.06 ms.
    ///
    /// Returns one row per movement, in their order.
    fn movement_postgres(&self) -> String {
        format!(
            r#"
WITH req AS (
    SELECT r.*, u."id" AS "userId"
    FROM (SELECT $1::text[] AS a1, $2::text[] AS a2, $3::int4[] AS a3, $5::text[] AS a5,
                 $6::text[] AS a6, $7::text[] AS a7, $8::text[] AS a8, $9::text[] AS a9
          OFFSET 0) AS p
    CROSS JOIN LATERAL unnest(p.a1, p.a2, p.a3, p.a5, p.a6, p.a7, p.a8, p.a9)
        WITH ORDINALITY AS r("clerkId", "key", "amount", "rowId", "tracking", "type",
                             "description", "reason", "n")
    LEFT JOIN "User" u ON u."clerkId" = r."clerkId"
),
prior AS (
    SELECT req."n", t."id", t."type", t."reason", t."amount", t."balanceAfter"
    FROM req JOIN "Transaction" t
      ON t."userId" = req."userId" AND t."idempotencyKey" = req."key"
),
moved AS (
    UPDATE "User" SET {set}, "updatedAt" = $4
    FROM req
    WHERE "User"."id" = req."userId" AND {allowed}
      AND NOT EXISTS (SELECT 1 FROM prior WHERE prior."n" = req."n")
      AND set_config('clerk_sync.writer', 'on', true) = 'on'
      AND '"{key_index}"'::regclass IS NOT NULL
    RETURNING req."n", "User"."id",
              CAST("User"."availableGenerations" - "User"."usedGenerations" AS BIGINT) AS "balance"
),
ins AS (
    INSERT INTO "Transaction" ({TRANSACTION})
    SELECT req."rowId", req."tracking", moved."id", 'completed', req."amount", req."type",
           req."description", req."reason", NULL, req."key", moved."balance", $4
    FROM moved JOIN req ON req."n" = moved."n"
    RETURNING "id", "balanceAfter"
)
SELECT req."userId" IS NOT NULL AS "known",
       ins."id" AS "writtenId", ins."balanceAfter" AS "writtenBalanceAfter",
       prior."id", prior."type", prior."reason", prior."amount", prior."balanceAfter",
       (SELECT CAST(u."availableGenerations" - u."usedGenerations" AS BIGINT) FROM "User" u
         WHERE u."id" = req."userId") AS "current"
FROM req LEFT JOIN ins ON ins."id" = req."rowId" LEFT JOIN prior ON prior."n" = req."n"
ORDER BY req."n""#,
            key_index = KEY_INDEX,
            set = self.set.replace("{amount}", r#"req."amount""#),
            allowed = self.allowed.replace("{amount}", r#"req."amount""#)
        )
    }
}

static DEBIT_POSTGRES: LazyLock<String> = LazyLock::new(|| DEBIT.movement_postgres());
static CREDIT_POSTGRES: LazyLock<String> = LazyLock::new(|| CREDIT.movement_postgres());

/// The parameters of the movement statement that are arrays (one element per movement);
/// `$4`, now, is shared.
pub const MOVEMENT_ARRAY_PARAMS: [usize; 8] = [1, 2, 3, 5, 6, 7, 8, 9];

/// The unique index that makes an idempotency key single-use per user.
const KEY_INDEX: &str = "Transaction_userId_idempotencyKey_key";

/// How often a movement refused by a concurrent one runs again before answering.
const MAX_RACED_ATTEMPTS: u32 = 5;

/// The statements a consume runs on PostgreSQL, in order: one statement, in autocommit.
/// `clerk-sync bench --scenario consume --print-pgbench-script` turns them into the
/// pgbench peer of `bench/compare`: keep this list in step with [`apply`].
pub fn consume_statements_postgres() -> [&'static str; 1] {
    [statement(LedgerType::Debit)]
}

fn statement(kind: LedgerType) -> &'static str {
    match kind {
        LedgerType::Debit => DEBIT_POSTGRES.as_str(),
        LedgerType::Credit => CREDIT_POSTGRES.as_str(),
    }
}

/// Movements waiting for their statement: those that arrive while the database is busy
/// share one ([`BatchQueue`]), so they share a round trip and a commit.
pub type CreditsQueue = BatchQueue<MovementStatement>;

/// The movement statement, for a batch of movements of one direction.
#[derive(Debug, Clone)]
pub struct MovementStatement {
    pg: PgStore,
}

impl MovementStatement {
    pub fn new(pg: &PgStore) -> Self {
        Self { pg: pg.clone() }
    }
}

/// One movement, as the statement binds it.
#[derive(Debug, Clone)]
pub struct MovementRow {
    clerk_id: String,
    key: String,
    amount: i32,
    row_id: String,
    tracking: String,
    change: CreditChange,
}

impl Batched for MovementStatement {
    type Request = MovementRow;
    type Answer = MovementResult;
    const NAME: &'static str = "credit movements";

    /// One `UPDATE` cannot move one user twice; debits and credits are different
    /// statements.
    fn conflicts(a: &MovementRow, b: &MovementRow) -> bool {
        a.clerk_id == b.clerk_id || a.change.ledger_type() != b.change.ledger_type()
    }

    async fn run(&self, rows: &[MovementRow]) -> Result<Vec<MovementResult>, StoreError> {
        let pg = &self.pg;
        let now = store::now();
        // Sent in Clerk id order, which is the order the `UPDATE` locks users in with its
        // nested loop over `req`: two replicas' statements then wait for each other
        // instead of deadlocking (a deadlock would still be safe: the batch fails whole
        // and its movements run again one at a time).
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by(|&a, &b| rows[a].clerk_id.cmp(&rows[b].clerk_id));
        let sorted: Vec<&MovementRow> = order.iter().map(|&i| &rows[i]).collect();
        let texts = |f: fn(&MovementRow) -> &str| sorted.iter().map(|r| f(r)).collect::<Vec<_>>();
        let query = || {
            sqlx::query_as(statement(rows[0].change.ledger_type()))
                .bind(texts(|r| &r.clerk_id))
                .bind(texts(|r| &r.key))
                .bind(sorted.iter().map(|r| r.amount).collect::<Vec<_>>())
                .bind(now)
                .bind(texts(|r| &r.row_id))
                .bind(texts(|r| &r.tracking))
                .bind(texts(|r| r.change.ledger_type().as_str()))
                .bind(texts(|r| r.change.description()))
                .bind(texts(|r| r.change.reason().as_str()))
                .persistent(pg.prepared)
        };
        // One statement, idempotent by its keys: safe to run again on a new connection.
        pg.waits.note(&pg.pool);
        let found: Vec<MovementResult> =
            store::retry_lost_connection(&pg.pool, || query().fetch_all(&pg.pool)).await?;
        if found.len() != rows.len() {
            return Err(StoreError::Other(
                format!("{} rows for {} movements", found.len(), rows.len()).into(),
            ));
        }
        // Back to the callers' order: the statement's k-th row answers rows[order[k]].
        let mut answers: Vec<(usize, MovementResult)> = order.into_iter().zip(found).collect();
        answers.sort_unstable_by_key(|&(i, _)| i);
        Ok(answers.into_iter().map(|(_, row)| row).collect())
    }
}

/// The statement's row for one movement: whether the user exists, the row it wrote, the
/// row of this key written before (flattened, its columns by their names), the balance.
#[derive(Debug, sqlx::FromRow)]
pub struct MovementResult {
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
/// got in first; through the queue when there is one.
pub(super) async fn apply(
    pg: &PgStore,
    queue: Option<&CreditsQueue>,
    clerk_id: &ClerkUserId,
    m: &MovementRequest<'_>,
) -> Result<Found, CreditsError> {
    match apply_once(pg, queue, clerk_id, m).await {
        // A concurrent request with the same key committed first: nothing moved here;
        // run again to answer with its result.
        Err(CreditsError::Store(StoreError::Constraint(v)))
            if v.kind == ConstraintKind::Unique && v.target.as_deref() == Some(KEY_INDEX) =>
        {
            apply_once(pg, queue, clerk_id, m).await
        }
        result => result,
    }
}

async fn apply_once(
    pg: &PgStore,
    queue: Option<&CreditsQueue>,
    clerk_id: &ClerkUserId,
    m: &MovementRequest<'_>,
) -> Result<Found, CreditsError> {
    let row = MovementRow {
        clerk_id: clerk_id.as_str().to_owned(),
        key: m.key.as_str().to_owned(),
        amount: m.amount.get(),
        row_id: new_id(),
        tracking: m.tracking().to_owned(),
        change: m.change,
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let row: MovementResult = match queue {
            Some(queue) => queue.apply(row.clone()).await?,
            None => {
                let statement = MovementStatement::new(pg);
                let mut found = statement.run(std::slice::from_ref(&row)).await?;
                found.pop().expect("run checks one row per movement")
            }
        };
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
        let of = |change: CreditChange| statement(change.ledger_type());
        assert_eq!(of(CreditChange::Consume), DEBIT_POSTGRES.as_str());
        for kind in [
            GrantReason::Purchase,
            GrantReason::Refund,
            GrantReason::Grant,
            GrantReason::Adjustment,
        ] {
            assert_eq!(of(CreditChange::Grant(kind)), CREDIT_POSTGRES.as_str());
        }
    }
}
