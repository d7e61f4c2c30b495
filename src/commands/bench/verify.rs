//! After a run: what the database holds, against what it should hold.

use std::time::Duration;

use anyhow::Context;

use super::{Check, Scenario, Verification};
use crate::config::DatabaseUrl;
use crate::store::Store;
use crate::with_pool;

/// Counts for the run's users (Clerk ids `user_bench<run>x…`) and events.
const SIGNUP_COUNTS: &str = r#"
SELECT (SELECT COUNT(*) FROM "User" WHERE substr("clerkId", 1, length($1)) = $1),
       (SELECT COUNT(DISTINCT "tracking_id") FROM "Transaction"
         WHERE "reason" = 'signup_bonus' AND substr("tracking_id", 1, length($1)) = $1),
       (SELECT COUNT(*) FROM "Transaction"
         WHERE "reason" = 'signup_bonus' AND substr("tracking_id", 1, length($1)) = $1),
       (SELECT COUNT(*) FROM "WebhookEvent" WHERE substr("eventId", 1, length($2)) = $2 AND "status" = 'processed')"#;

const CONSUME_COUNTS: &str = r#"
WITH bench AS (
    SELECT "id", "availableGenerations" AS available, "usedGenerations" AS used
    FROM "User" WHERE substr("clerkId", 1, length($1)) = $1
),
moves AS (
    SELECT t."userId",
           SUM(CASE WHEN t."reason" = 'consume' THEN 1 ELSE 0 END) AS consumes,
           SUM(CASE WHEN t."type" = 'credit' THEN t."amount" ELSE -t."amount" END) AS net
    FROM "Transaction" t JOIN bench b ON b."id" = t."userId"
    GROUP BY t."userId"
)
SELECT (SELECT COUNT(*) FROM bench),
       CAST((SELECT COALESCE(SUM(consumes), 0) FROM moves) AS BIGINT),
       CAST((SELECT COALESCE(SUM(used), 0) FROM bench) AS BIGINT),
       (SELECT COUNT(*) FROM bench b LEFT JOIN moves m ON m."userId" = b."id"
         WHERE COALESCE(m.net, 0) <> b.available - b.used)"#;

pub(super) async fn verify(
    url: &DatabaseUrl,
    scenario: Scenario,
    run_id: &str,
    users: usize,
    requests: usize,
) -> anyhow::Result<Verification> {
    let store = Store::connect(url, 1, Duration::from_secs(10))
        .await
        .context("connecting to verify")?;
    let user_prefix = format!("user_bench{run_id}x");
    let msg_prefix = format!("msg_bench{run_id}x");
    let (a, b, c, d): (i64, i64, i64, i64) = with_pool!(&store, |pool, p| {
        sqlx::query_as(match scenario {
            Scenario::Signup => SIGNUP_COUNTS,
            Scenario::Consume => CONSUME_COUNTS,
        })
        .bind(&user_prefix)
        .bind(&msg_prefix)
        .persistent(p)
        .fetch_one(pool)
        .await
        .context("counting rows")?
    });
    store.close().await;
    let (users, requests) = (users as i64, requests as i64);
    let checks = match scenario {
        Scenario::Signup => vec![
            Check {
                what: "users",
                found: a,
                expected: users,
            },
            Check {
                what: "signup ledger rows",
                found: c,
                expected: users,
            },
            Check {
                what: "users with a signup row",
                found: b,
                expected: users,
            },
            Check {
                what: "processed events",
                found: d,
                expected: users,
            },
        ],
        Scenario::Consume => vec![
            Check {
                what: "users",
                found: a,
                expected: users,
            },
            Check {
                what: "consume ledger rows",
                found: b,
                expected: requests,
            },
            Check {
                what: "used generations",
                found: c,
                expected: requests,
            },
            Check {
                what: "users whose ledger does not add up",
                found: d,
                expected: 0,
            },
        ],
    };
    Ok(Verification {
        exact: checks.iter().all(|c| c.found == c.expected),
        checks,
    })
}
