//! `pgbouncer=true` (Neon's transaction-mode pooler): no statement may be left prepared
//! on the server session, because the next transaction may run on another one.

use std::time::Duration;

use clerk_sync::config::DatabaseUrl;
use clerk_sync::signup::{self, Outcome, SignupSettings};
use clerk_sync::store::Store;
use clerk_sync::with_pool;

use crate::helpers::*;

async fn prepared_statements_after_a_signup(url: &str, msg_id: &str) -> i64 {
    let url = DatabaseUrl::parse(url).unwrap();
    // One connection, so the count below sees the session the signup ran on.
    let store = Store::connect(&url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    let hook = verified_webhook(msg_id, &fixture("clerk-user-created.json"));
    let settings = SignupSettings {
        signup_credits: 20,
        transaction_timeout: Duration::from_secs(5),
    };
    let outcome = signup::handle(&store, &settings, None, &hook)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Processed(_) | Outcome::Ignored(_)),
        "{outcome:?}"
    );
    // What /readyz asks: where the migration history is, and what it holds.
    assert!(store.pending_migrations().await.unwrap().is_empty());
    let count: i64 = with_pool!(&store, |pool, p| {
        sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements")
            .persistent(p)
            .fetch_one(pool)
            .await
            .unwrap()
    });
    store.close().await;
    count
}

mod pgbouncer_mode_runs_every_statement_unprepared {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = TestDb::new(Backend::Postgres).await;
        db.store().await.migrate().await.unwrap();

        let pooled =
            prepared_statements_after_a_signup(&format!("{}?pgbouncer=true", db.url), "msg_a")
                .await;
        let direct = prepared_statements_after_a_signup(&db.url, "msg_b").await;

        assert_eq!(pooled, 0, "pgbouncer=true left prepared statements behind");
        assert!(
            direct > 0,
            "without pgbouncer=true statements are prepared and cached ({direct})"
        );
    }
}
