//! PostgreSQL keeps one plan for each batched statement (signup, credits movement) and
//! does not plan it again at every execution: planning the signup statement took twice as
//! long as running it. PostgreSQL-only: SQLite has no plan cache of this kind.

use std::time::Duration;

use clerk_sync::config::DatabaseUrl;
use clerk_sync::credits::{self, MovementRequest};
use clerk_sync::domain::{Amount, CallerKey, ClerkUserId, CreditChange};
use clerk_sync::signup::{self, Outcome, SignupSettings};
use clerk_sync::store::Store;
use clerk_sync::with_pool;

use crate::helpers::*;

/// Executions of each statement, alone (a batch of one, as on a quiet service). After
/// five plans for given parameters PostgreSQL may switch to the generic plan.
const RUNS: usize = 10;

/// `(generic_plans, custom_plans)` of the session's prepared statement that starts with
/// `head`.
async fn plans_of(store: &Store, head: &str) -> (i64, i64) {
    with_pool!(store, |pool, p| {
        sqlx::query_as(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
             WHERE ltrim(statement, E' \\n') LIKE $1 || '%'",
        )
        .bind(head)
        .persistent(p)
        .fetch_one(pool)
        .await
        .unwrap()
    })
}

mod batched_statements_keep_their_generic_plan {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = TestDb::new(Backend::Postgres).await;
        db.store().await.migrate().await.unwrap();
        // One connection, so that every statement runs on the session read below.
        let url = DatabaseUrl::parse(&db.url).unwrap();
        let store = Store::connect(&url, 1, Duration::from_secs(5))
            .await
            .unwrap();
        let settings = SignupSettings {
            signup_credits: 20,
            transaction_timeout: Duration::from_secs(5),
        };

        for n in 0..RUNS {
            let hook =
                verified_webhook(&format!("msg_plan_{n}"), &created_for(&format!("plan{n}")));
            let outcome = signup::handle(&store, &settings, None, &hook)
                .await
                .unwrap();
            assert!(matches!(outcome, Outcome::Processed(_)), "{outcome:?}");
        }
        let clerk_id = ClerkUserId::parse("user_plan0").unwrap();
        for n in 0..RUNS {
            let key = CallerKey::parse(&format!("plan-consume-{n}")).unwrap();
            let request = MovementRequest {
                change: CreditChange::Consume,
                amount: Amount::parse(1).unwrap(),
                key: &key,
                reference: None,
            };
            let m = credits::move_credits(&store, None, None, &settings, &clerk_id, &request)
                .await
                .unwrap();
            assert_eq!(m.balance_after, 19 - n as i32);
        }

        for (statement, head) in [("signup", "WITH input AS"), ("consume", "WITH req AS")] {
            let (generic, custom) = plans_of(&store, head).await;
            assert_eq!(
                generic + custom,
                RUNS as i64,
                "{statement}: one plan per execution"
            );
            assert!(
                custom <= 5 && generic >= 5,
                "{statement}: planned afresh {custom} of {RUNS} times, generic plan used {generic}"
            );
        }
        store.close().await;
    }
}
