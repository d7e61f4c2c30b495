//! Step 10: the ledger adds up for every user, and the trigger that keeps it so is there.

use super::*;

pub(super) const LEDGER_BY_USER: &str = r#"
SELECT u."id", u."clerkId",
       CAST(u."availableGenerations" - u."usedGenerations" AS BIGINT),
       CAST(COALESCE((SELECT SUM(CASE WHEN t."type" = 'credit' THEN t."amount"
                                      WHEN t."type" = 'debit' THEN -t."amount"
                                      ELSE 0 END)
                      FROM "Transaction" t WHERE t."userId" = u."id"), 0) AS BIGINT)
FROM "User" u"#;

/// A user whose ledger does not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerMismatch {
    pub user_id: String,
    pub clerk_id: String,
    /// `availableGenerations - usedGenerations`.
    pub balance: i64,
    /// Credits minus debits in the ledger.
    pub ledger: i64,
}

/// Users whose ledger does not add up.
pub async fn ledger_mismatches(store: &Store) -> Result<Vec<LedgerMismatch>, StoreError> {
    let rows: Vec<(String, String, i64, i64)> = with_pool!(store, |pool, p| {
        sqlx::query_as(LEDGER_BY_USER)
            .persistent(p)
            .fetch_all(pool)
            .await?
    });
    Ok(rows
        .into_iter()
        .filter(|(_, _, balance, ledger)| balance != ledger)
        .map(|(user_id, clerk_id, balance, ledger)| LedgerMismatch {
            user_id,
            clerk_id,
            balance,
            ledger,
        })
        .collect())
}

/// The adoption migration's statement, with this run's own ids and keys, appends one
/// `adjustment` row per user whose ledger does not add up.
pub(super) fn ledger_adjustment_sql(store: &Store) -> Option<String> {
    let opening = store
        .migrator()
        .iter()
        .find(|m| m.description.contains("opening balances"))?;
    let tag = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let body = without_comments(opening.sql.as_str());
    Some(
        body.replace("'opening_' ||", &format!("'adjust_{tag}_' ||"))
            .replace("'opening:' ||", &format!("'adjust:{tag}:' ||"))
            .replace(
                "opening balance when clerk-sync adopted this database",
                "adjustment written by hand after clerk-sync diagnose",
            )
            .trim()
            .to_owned(),
    )
}

/// The migration that installs the ledger trigger on `"User"`, as an idempotent fix.
pub(super) fn ledger_trigger_sql(store: &Store) -> Option<String> {
    store
        .migrator()
        .iter()
        .find(|m| {
            !m.migration_type.is_down_migration() && m.description.contains("ledger direct writes")
        })
        .map(|m| m.sql.as_str().trim().to_owned())
}

pub(crate) use crate::store::contract::{ledger_trigger_exists, LEDGER_TRIGGER};

/// Ledger rows of these users that another writer wrote without a balance (clerk-sync
/// and its trigger always write `balanceAfter`): the likely rows that moved no column.
pub(super) async fn foreign_rows(store: &Store, user_id: &str) -> Result<Vec<String>, StoreError> {
    const ROWS: &str = r#"
SELECT "id" || ' (' || COALESCE("reason", "type", '?') || ' ' || COALESCE(CAST("amount" AS TEXT), '?') || ')'
FROM "Transaction" WHERE "userId" = $1 AND "balanceAfter" IS NULL
ORDER BY "createdAt" DESC LIMIT 3"#;
    Ok(with_pool!(store, |pool, p| {
        sqlx::query_scalar(ROWS)
            .bind(user_id)
            .persistent(p)
            .fetch_all(pool)
            .await?
    }))
}

pub(super) async fn direct_writes(store: &Store) -> Result<i64, StoreError> {
    const COUNT: &str =
        r#"SELECT CAST(COUNT(*) AS BIGINT) FROM "Transaction" WHERE "reason" = 'direct_write'"#;
    Ok(with_pool!(store, |pool, p| {
        sqlx::query_scalar(COUNT)
            .persistent(p)
            .fetch_one(pool)
            .await?
    }))
}

/// Step 10. The ledger trigger records direct changes of the credit columns by another
/// writer as `direct_write` rows, so a ledger that does not add up means rows that moved
/// no column (a row the app wrote without changing the columns), changes made while the
/// trigger was missing, or rows rewritten by hand. No fix for that is safe: appending an
/// adjustment makes it add up by hiding what happened, so it is printed for review.
pub(super) async fn ledger_step(store: &Store) -> StepResult {
    let run = async {
        let trigger = ledger_trigger_exists(store).await?;
        let mismatches = ledger_mismatches(store).await?;
        let direct = direct_writes(store).await?;
        let mut foreign = Vec::new();
        for m in mismatches.iter().take(5) {
            foreign.push(foreign_rows(store, &m.user_id).await?);
        }
        Ok::<_, StoreError>((trigger, mismatches, direct, foreign))
    };
    let (trigger, mismatches, direct, foreign) = match run.await {
        Ok(found) => found,
        Err(e) => return errored(&e),
    };
    let mut problems = Vec::new();
    if !trigger {
        problems.push(Problem {
            what: format!(
                "the ledger trigger \"{LEDGER_TRIGGER}\" on \"User\" is missing: changes of \
                 usedGenerations / availableGenerations by another writer are not recorded"
            ),
            fix: ledger_trigger_sql(store).map(|sql| Fix {
                action: FixAction::Sql(sql),
                safe: true,
            }),
        });
    }
    if !mismatches.is_empty() {
        let shown: Vec<String> = mismatches
            .iter()
            .zip(&foreign)
            .map(|(m, rows)| {
                let mut line = format!(
                    "{}: balance {}, ledger {} (ledger - balance = {})",
                    m.clerk_id,
                    m.balance,
                    m.ledger,
                    m.ledger - m.balance
                );
                if !rows.is_empty() {
                    line.push_str(&format!(
                        "; rows written by another writer: {}",
                        rows.join(", ")
                    ));
                }
                line
            })
            .collect();
        problems.push(Problem {
            what: format!(
                "ledger does not add up for {}{}. Either a ledger row was written without \
                 changing the columns (e.g. a purchase whose credits were never granted: \
                 grant them in the same transaction as a row, or through POST \
                 /v1/users/{{clerkId}}/credits/grant), or the columns changed while the \
                 ledger trigger was missing. Review the rows; the SQL below appends one \
                 adjustment per user that makes the ledger match the columns as they are",
                shown.join("; "),
                if mismatches.len() > 5 { "; …" } else { "" }
            ),
            fix: ledger_adjustment_sql(store).map(|sql| Fix {
                action: FixAction::Sql(sql),
                safe: false,
            }),
        });
    }
    if problems.is_empty() {
        let mut summary = "credits minus debits equal availableGenerations - usedGenerations \
                           for every user"
            .to_owned();
        if direct > 0 {
            summary.push_str(&format!(
                "; {direct} direct change(s) by another writer recorded as direct_write rows"
            ));
        }
        pass(summary)
    } else {
        fail(
            format!(
                "{} user(s) whose ledger does not add up{}",
                mismatches.len(),
                if trigger {
                    ""
                } else {
                    "; ledger trigger missing"
                }
            ),
            problems,
        )
    }
}
