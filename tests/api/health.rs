//! `/healthz`, `/readyz`, and the database outage answered with 503.

use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    health_and_readiness_when_all_is_well,
    database_down_gives_503_and_nothing_half_written,
);

async fn health_and_readiness_when_all_is_well(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    let (s, b) = status_json(app.get("/healthz").await).await;
    assert_eq!((s, b), (200, json!({"status": "ok"})));
    let (s, b) = status_json(app.get("/readyz").await).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "ready");
    assert_eq!(b["migrations"]["status"], "ok");
    let (s, b) = status_json(app.get("/nope").await).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));

    app.post_webhook("msg_m", &fixture("clerk-user-created.json"))
        .await;
    app.post_webhook("msg_m", &fixture("clerk-user-created.json"))
        .await;
    app.post_raw(&[], b"{}".to_vec()).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"clerk_sync_webhook_events_total{outcome="processed"} 1"#,
        r#"clerk_sync_webhook_events_total{outcome="duplicate"} 1"#,
        r#"clerk_sync_webhook_errors_total{outcome="missing_svix_headers"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }
}

async fn database_down_gives_503_and_nothing_half_written(backend: Backend) {
    let db = TestDb::new(backend).await;
    let body = fixture("clerk-user-created.json");
    match backend {
        Backend::Postgres => {
            // The app reaches PostgreSQL through a proxy; cutting it is the outage.
            let admin = url::Url::parse(&admin_url()).unwrap();
            let target = format!(
                "{}:{}",
                admin.host_str().unwrap(),
                admin.port().unwrap_or(5432)
            );
            let proxy = CuttableProxy::start(target).await;
            let mut via = url::Url::parse(&db.url).unwrap();
            via.set_host(Some("127.0.0.1")).unwrap();
            via.set_port(Some(proxy.port)).unwrap();
            let opts = AppOptions {
                database_url: Some(via.to_string()),
                transaction_timeout_ms: 2000,
                ..AppOptions::default()
            };
            let app = TestApp::spawn_with(&db, opts).await;
            proxy.cut();

            let (s, b) = status_json(app.post_webhook("msg_down", &body).await).await;
            assert_eq!(s, 503, "{b}");
            assert_eq!(b["error"], "database_unavailable");
            let (s, b) = status_json(app.get("/readyz").await).await;
            assert_eq!(s, 503, "{b}");
            assert_eq!(b["database"]["status"], "error");
            assert_scrape_says_unreachable(&app).await;
            assert_nothing_written(&app.store).await;

            // Svix retries against a healthy database: processed once.
            let healthy = TestApp::spawn(&db).await;
            let (s, b) = status_json(healthy.post_webhook("msg_down", &body).await).await;
            assert_eq!((s, b["status"].as_str()), (200, Some("processed")));
        }
        Backend::Sqlite => {
            // Another process holds the write lock longer than the transaction may wait.
            let opts = AppOptions {
                transaction_timeout_ms: 1000,
                ..AppOptions::default()
            };
            let app = TestApp::spawn_with(&db, opts).await;
            let locker = db.store().await;
            let clerk_sync::store::Store::Sqlite(lite) = &locker else {
                unreachable!()
            };
            let mut conn = lite.pool.acquire().await.unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut *conn)
                .await
                .unwrap();

            let (s, b) = status_json(app.post_webhook("msg_down", &body).await).await;
            assert_eq!(s, 503, "{b}");
            assert_eq!(b["error"], "database_unavailable");
            // (Readers are not blocked in WAL mode: the scrape's read still answers.)

            sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
            drop(conn);
            assert_nothing_written(&app.store).await;
            let (s, b) = status_json(app.post_webhook("msg_down", &body).await).await;
            assert_eq!((s, b["status"].as_str()), (200, Some("processed")));
        }
    }
}

/// `/metrics` still answers, at once, and says the database did not.
async fn assert_scrape_says_unreachable(app: &TestApp) {
    let started = std::time::Instant::now();
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let text = response.text().await.unwrap();
    for (line, what) in [
        ("clerk_sync_database_reachable 0", "unreachable"),
        (
            "clerk_sync_metrics_scrape_errors_total 1",
            "one scrape error",
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "{what}: {text}");
    }
}

async fn assert_nothing_written(store: &clerk_sync::store::Store) {
    assert!(users(store).await.is_empty());
    assert!(ledger(store).await.is_empty());
    assert!(events(store).await.is_empty());
    assert!(jobs(store).await.is_empty());
}

both_backends!(openapi_document_matches_the_served_routes);

async fn openapi_document_matches_the_served_routes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    let (s, doc) = status_json(app.get("/openapi.json").await).await;

    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "/api/webhooks/clerk",
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/users/{clerk_id}",
            "/v1/users/{clerk_id}/credits/consume",
            "/v1/users/{clerk_id}/credits/grant",
            "/v1/users/{clerk_id}/ledger",
        ]
    );
    // Every documented operation is served (never the router's 404), and every schema
    // it references exists.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {name}");
    }
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let url = format!(
                "{}{}",
                app.address,
                path.replace("{clerk_id}", "user_nobody")
            );
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app.http.request(m, &url).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert!(
                !body.contains("\"not_found\""),
                "{method} {path} is documented but not served ({status})"
            );
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
}

/// PostgreSQL only: the server ends every connection the service holds (what a restart,
/// a failover or a pooler recycling idle connections does). Idle connections are not
/// pinged within 10 s of use, so the next statements meet dead connections; each one
/// runs again on a fresh connection, and no caller sees an error.
mod connections_ended_by_the_server_are_replaced_without_an_error {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::connections_ended_by_the_server_are_replaced_without_an_error().await
    }
}

async fn connections_ended_by_the_server_are_replaced_without_an_error() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::spawn(&db).await;
    let signup = |i: usize| {
        let mut event = fixture_json("clerk-user-created.json");
        event["data"]["id"] = serde_json::json!(format!("user_ended{i}"));
        event["data"]["email_addresses"][0]["email_address"] =
            serde_json::json!(format!("ended{i}@example.org"));
        app.signed_request(
            &format!("msg_ended{i}"),
            &serde_json::to_vec(&event).unwrap(),
        )
        .send()
    };
    // Fill the pool with idle connections.
    let warm: Vec<_> = (0..5).map(|i| tokio::spawn(signup(i))).collect();
    for w in warm {
        assert_eq!(w.await.unwrap().unwrap().status(), 200);
    }

    let ended: i64 = {
        let admin = db.store().await;
        let clerk_sync::store::Store::Postgres(pg) = &admin else {
            unreachable!("a PostgreSQL test")
        };
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
        )
        .fetch_one(&pg.pool)
        .await
        .unwrap()
    };
    assert!(ended >= 1, "the service held no connection");

    for i in 5..10 {
        let (s, b) = status_json(signup(i).await.unwrap()).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["action"], "created");
    }
    let (s, b) = app
        .api(
            reqwest::Method::POST,
            "/v1/users/user_ended0/credits/consume",
            Some(serde_json::json!({"amount": 1, "idempotencyKey": "after-restart"})),
        )
        .await;
    assert_eq!((s, b["balanceAfter"].as_i64()), (200, Some(19)), "{b}");
    assert_eq!(users(&app.store).await.len(), 10);
    assert_ledger_adds_up(&app.store).await;
}

both_backends!(every_metric_family_is_served_at_zero_before_its_first_event);

/// A dashboard or an alert has a series from the start, not after the first event.
async fn every_metric_family_is_served_at_zero_before_its_first_event(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for series in [
        r#"clerk_sync_webhook_events_total{outcome="processed"} 0"#,
        r#"clerk_sync_webhook_events_total{outcome="failed"} 0"#,
        r#"clerk_sync_outbox_jobs_total{outcome="done"} 0"#,
        r#"clerk_sync_outbox_jobs_total{outcome="dead"} 0"#,
        r#"clerk_sync_reconciled_users_total{outcome="created"} 0"#,
        r#"clerk_sync_reconcile_passes_total{outcome="skipped"} 0"#,
        "clerk_sync_http_connections ",
        "clerk_sync_signup_queue_waiting 0",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
}
