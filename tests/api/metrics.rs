//! `/metrics` after a known sequence of webhooks and credits calls: each family holds
//! what the sequence did, and the families it did not touch are there at zero.

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    metrics_count_a_known_sequence,
    pool_waits_count_a_statement_that_found_every_connection_busy,
);

/// The value of the series `name` (labels included, as Prometheus text writes them).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

async fn metrics_count_a_known_sequence(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let created = fixture("clerk-user-created.json");
    let clerk_id = fixture_json("clerk-user-created.json")["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Two signups, one duplicate delivery, one forged signature.
    assert_eq!(app.post_webhook("msg_m1", &created).await.status(), 200);
    assert_eq!(app.post_webhook("msg_m1", &created).await.status(), 200);
    assert_eq!(
        app.post_webhook("msg_m2", &created_for("metrics_two"))
            .await
            .status(),
        200
    );
    let forged = app
        .http
        .post(app.webhook_url())
        .header("svix-id", "msg_forged")
        .header("svix-timestamp", chrono::Utc::now().timestamp().to_string())
        .header("svix-signature", "v1,AAAA")
        .body(created.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    // Spend 3 (and replay it: not counted again), grant 5 as a purchase.
    let base = format!("/v1/users/{clerk_id}/credits");
    for _ in 0..2 {
        let (s, _) = app
            .api(
                Method::POST,
                &format!("{base}/consume"),
                Some(json!({"amount": 3, "idempotencyKey": "m-consume"})),
            )
            .await;
        assert_eq!(s, 200);
    }
    let (s, _) = app
        .api(
            Method::POST,
            &format!("{base}/grant"),
            Some(json!({"amount": 5, "kind": "purchase", "idempotencyKey": "m-grant"})),
        )
        .await;
    assert_eq!(s, 200);

    let text = app.get("/metrics").await.text().await.unwrap();
    let webhook = |event_type: &str, outcome: &str| {
        value(
            &text,
            &format!(
                "clerk_sync_webhook_duration_seconds_count{{event_type=\"{event_type}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(webhook("user.created", "processed"), 2.0);
    assert_eq!(webhook("user.created", "duplicate"), 1.0);
    assert_eq!(webhook("none", "invalid_signature"), 1.0);
    assert_eq!(
        webhook("user.deleted", "processed"),
        0.0,
        "declared at zero"
    );
    let processed_sum = value(
        &text,
        "clerk_sync_webhook_duration_seconds_sum{event_type=\"user.created\",outcome=\"processed\"}",
    );
    assert!(
        processed_sum > 0.0 && processed_sum < 10.0,
        "{processed_sum}"
    );
    assert_eq!(value(&text, "clerk_sync_signups_created_total"), 2.0);
    assert_eq!(value(&text, "clerk_sync_credits_consumed_total"), 3.0);
    assert_eq!(
        value(&text, "clerk_sync_credits_granted_total{kind=\"purchase\"}"),
        5.0
    );
    assert_eq!(
        value(&text, "clerk_sync_credits_granted_total{kind=\"refund\"}"),
        0.0
    );
    // No worker (no CLERK_SECRET_KEY): both metadata jobs wait.
    assert_eq!(value(&text, "clerk_sync_outbox_pending_jobs"), 2.0);
    assert_eq!(value(&text, "clerk_sync_outbox_dead_jobs"), 0.0);
    let age = value(&text, "clerk_sync_outbox_oldest_pending_age_seconds");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(
        value(
            &text,
            "clerk_sync_outbox_delivery_duration_seconds_count{outcome=\"done\"}"
        ),
        0.0
    );
    assert_eq!(value(&text, "clerk_sync_db_pool_max_connections"), 5.0);
    let in_use = value(&text, "clerk_sync_db_pool_connections{state=\"in_use\"}");
    let idle = value(&text, "clerk_sync_db_pool_connections{state=\"idle\"}");
    assert!((1.0..=5.0).contains(&(in_use + idle)), "{in_use} {idle}");
    assert_eq!(value(&text, "clerk_sync_db_pool_waits_total"), 0.0);
    assert_eq!(value(&text, "clerk_sync_metrics_scrape_errors_total"), 0.0);
    assert_eq!(value(&text, "clerk_sync_database_reachable"), 1.0);
    assert_eq!(
        value(
            &text,
            &format!(
                "clerk_sync_build_info{{version=\"{}\",backend=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                match backend {
                    Backend::Postgres => "postgres",
                    Backend::Sqlite => "sqlite",
                }
            )
        ),
        1.0
    );
    for family in [
        "clerk_sync_replayed_events_total{outcome=\"processed\"}",
        "clerk_sync_reconcile_passes_total{outcome=\"done\"}",
        "clerk_sync_webhook_errors_total{outcome=\"database_unavailable\"}",
    ] {
        assert_eq!(value(&text, family), 0.0, "{family}");
    }
    app.stop().await;
}

/// A pool of one: while a transaction holds the connection, a statement waits for it, and
/// is counted.
async fn pool_waits_count_a_statement_that_found_every_connection_busy(backend: Backend) {
    let db = TestDb::new(backend).await;
    let url = clerk_sync::config::DatabaseUrl::parse(&db.url).unwrap();
    let store = clerk_sync::store::Store::connect(&url, 1, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    store.ping().await.unwrap();
    // The connection goes back to the pool just after the statement: let it arrive.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let tx = store.begin().await.unwrap();
    assert_eq!(store.pool_stats().waits, 0, "an idle connection: no wait");
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { store.ping().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the statement waits for the connection"
    );
    let stats = store.pool_stats();
    assert_eq!(
        (stats.size, stats.idle, stats.max, stats.waits),
        (1, 0, 1, 1)
    );
    tx.rollback().await.unwrap();
    waiting.await.unwrap().unwrap();
    store.close().await;
}
