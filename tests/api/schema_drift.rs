//! The schema drifting under the running service (issue #30): noticed within one check
//! interval (or at once when a statement fails for it), readiness 503 naming each piece
//! and its fix, writes refused with 503 `schema_drift`, reads going on, and recovery
//! without a restart once the schema is whole again.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::credits::CLERK_ID;
use crate::diagnose::{clerk_sync, diagnose_json};
use crate::helpers::*;

both_backends!(
    a_dropped_column_is_named_refused_and_recovered_without_restart,
    a_dropped_idempotency_index_refuses_consumes_and_never_debits_twice,
    a_dropped_ledger_trigger_is_reported_and_reinstalled,
    a_failing_statement_prompts_the_check_at_once,
    a_dropped_idempotency_index_never_lets_a_key_debit_twice_before_any_check,
    a_dropped_email_index_refuses_signups_before_any_check,
);

/// Prisma's own migration history table, as `prisma migrate` creates it.
const PRISMA_MIGRATIONS: &str = r#"
CREATE TABLE "_prisma_migrations" (
    "id" VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum" VARCHAR(64) NOT NULL,
    "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL,
    "logs" TEXT,
    "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count" INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "_prisma_migrations" ("id", "checksum", "finished_at", "migration_name", "applied_steps_count")
VALUES ('m0', 'c0', now() - interval '1 day', '20261101000000_init', 1);"#;

/// Only a failing statement can prompt a check within a test.
fn checks_an_hour_apart() -> AppOptions {
    AppOptions {
        schema_check_interval_ms: Some(3_600_000),
        ..AppOptions::default()
    }
}

fn fast_checks() -> AppOptions {
    AppOptions {
        schema_check_interval_ms: Some(200),
        ..AppOptions::default()
    }
}

/// `/readyz` until it answers `status` (within 10 s): its body.
async fn readiness_until(app: &TestApp, status: u16) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (s, body) = status_json(app.get("/readyz").await).await;
        if s == status {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {status}: {last:#}");
}

/// 8 concurrent consumes of 1 for each of 10 keys (`{round}-0` … `{round}-9`), split
/// over the replicas: each answer's status and body.
async fn duplicate_consumes(apps: &[TestApp], round: &str) -> Vec<(u16, Value)> {
    let sends: Vec<_> = (0..80)
        .map(|i| {
            let app = &apps[i % apps.len()];
            tokio::spawn(
                app.http
                    .post(format!(
                        "{}/v1/users/{CLERK_ID}/credits/consume",
                        app.address
                    ))
                    .bearer_auth(API_KEY)
                    .json(&json!({"amount": 1, "idempotencyKey": format!("{round}-{}", i % 10)}))
                    .send(),
            )
        })
        .collect();
    let mut answers = Vec::new();
    for s in sends {
        answers.push(status_json(s.await.unwrap().unwrap()).await);
    }
    answers
}

/// Two replicas on one PostgreSQL (SQLite is one process), and the fixture's user
/// signed up through the first.
async fn replicas_with_the_fixture_user(
    db: &TestDb,
    backend: Backend,
    options: fn() -> AppOptions,
) -> Vec<TestApp> {
    let replicas = match backend {
        Backend::Postgres => 2,
        Backend::Sqlite => 1,
    };
    let mut apps = Vec::new();
    for _ in 0..replicas {
        apps.push(TestApp::spawn_with(db, options()).await);
    }
    let (s, _) = status_json(
        apps[0]
            .post_webhook("msg_signup", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    apps
}

fn missing_whats(readiness: &Value) -> Vec<String> {
    readiness["schema"]["missing"]
        .as_array()
        .unwrap_or_else(|| panic!("no schema.missing in {readiness:#}"))
        .iter()
        .map(|m| m["what"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_dropped_column_is_named_refused_and_recovered_without_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, fast_checks()).await;
    let ready = readiness_until(&app, 200).await;
    assert_eq!(ready["schema"]["status"], "ok", "{ready:#}");
    assert_eq!(metric(&app, "clerk_sync_schema_drift").await, 0.0);

    // The app's migration drops a column clerk-sync writes (what `prisma migrate dev`
    // generates from a schema.prisma without clerk-sync's declarations).
    match backend {
        Backend::Postgres => {
            db.exec(PRISMA_MIGRATIONS).await;
            db.exec(
                r#"ALTER TABLE "WebhookEvent" DROP COLUMN "clerkId";
                   INSERT INTO "_prisma_migrations" ("id", "checksum", "finished_at", "migration_name", "applied_steps_count")
                   VALUES ('m1', 'c1', now(), '20261208093000_drop_webhook_clerk_id', 1);"#,
            )
            .await
        }
        Backend::Sqlite => {
            db.exec(
                r#"DROP INDEX IF EXISTS "WebhookEvent_clerkId_idx";
                   ALTER TABLE "WebhookEvent" DROP COLUMN "clerkId";"#,
            )
            .await
        }
    }

    let body = readiness_until(&app, 503).await;
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["schema"]["status"], "drift");
    assert_eq!(
        missing_whats(&body),
        vec![r#""WebhookEvent"."clerkId" is missing"#.to_owned()],
        "{body:#}"
    );
    let fix = body["schema"]["missing"][0]["fix"].as_str().unwrap();
    assert!(
        fix.starts_with(r#"ALTER TABLE "WebhookEvent" ADD COLUMN"#),
        "{fix}"
    );
    if backend == Backend::Postgres {
        let names: Vec<&str> = body["schema"]["prismaMigrations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            vec!["20261208093000_drop_webhook_clerk_id"],
            "only the migration since the schema was last whole: {body:#}"
        );
    }
    assert_eq!(metric(&app, "clerk_sync_schema_drift").await, 1.0);
    let session = crate::console::log_in(&app, false).await;
    let health = crate::console::page(&app, &session, "/admin/health").await;
    assert!(
        health.contains("schema drifted:") && health.contains("clerkId"),
        "the console's Health line: {health}"
    );

    // A signed webhook is refused with a retryable 503, and nothing is written.
    let (s, b) = status_json(
        app.post_webhook("msg_during_drift", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (503, Some("schema_drift")), "{b}");
    assert!(b["message"].as_str().unwrap().contains("clerkId"), "{b}");
    assert!(users(&app.store).await.is_empty());
    // Reads go on.
    let (s, b) = app
        .api(Method::GET, &format!("/v1/users/{CLERK_ID}"), None)
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (404, Some("user_not_found")),
        "{b}"
    );
    // An unsigned request is still refused for its signature, not for the schema.
    let r = app
        .post_raw(
            &[
                ("svix-id", "msg_x"),
                ("svix-timestamp", "1"),
                ("svix-signature", "v1,AAAA"),
            ],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status().as_u16(), 401);

    // diagnose names the break (and, on PostgreSQL, the Prisma migration), and --fix
    // restores it without touching a row.
    let (ok, report) = diagnose_json(&db);
    assert!(!ok);
    let text = report.to_string();
    assert!(
        text.contains(r#"\"WebhookEvent\".\"clerkId\" is missing"#),
        "{text}"
    );
    if backend == Backend::Postgres {
        assert!(
            text.contains("20261208093000_drop_webhook_clerk_id"),
            "diagnose does not name the Prisma migration: {text}"
        );
        assert!(!text.contains("20261101000000_init"), "{text}");
    }
    let (ok, out, err) = clerk_sync(&["diagnose", "--fix", "--yes", "--database-url", &db.url]);
    assert!(ok, "{out}{err}");

    // Ready again within an interval, no restart; Svix's redelivery is applied once.
    let ready = readiness_until(&app, 200).await;
    assert_eq!(ready["schema"]["status"], "ok");
    assert_eq!(metric(&app, "clerk_sync_schema_drift").await, 0.0);
    let health = crate::console::page(&app, &session, "/admin/health").await;
    assert!(health.contains("schema whole"), "{health}");
    for expected in ["processed", "duplicate"] {
        let (s, b) = status_json(
            app.post_webhook("msg_during_drift", &fixture("clerk-user-created.json"))
                .await,
        )
        .await;
        assert_eq!((s, b["status"].as_str()), (200, Some(expected)), "{b}");
    }
    assert_eq!(users(&app.store).await.len(), 1);
    assert_eq!(ledger(&app.store).await.len(), 1);
    let events = events(&app.store).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].status.as_deref(), Some("processed"));
    app.stop().await;
}

async fn a_dropped_idempotency_index_refuses_consumes_and_never_debits_twice(backend: Backend) {
    let db = TestDb::new(backend).await;
    let apps = replicas_with_the_fixture_user(&db, backend, fast_checks).await;

    db.exec(r#"DROP INDEX "Transaction_userId_idempotencyKey_key""#)
        .await;
    for app in &apps {
        let body = readiness_until(app, 503).await;
        assert_eq!(
            missing_whats(&body),
            vec![r#""Transaction"(userId, idempotencyKey) has no unique index: duplicates are not rejected"#.to_owned()],
            "{body:#}"
        );
    }

    let answers = duplicate_consumes(&apps, "drift").await;
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 503 && b["error"] == "schema_drift"),
        "{:?}",
        answers.iter().find(|(s, _)| *s != 503)
    );
    assert_eq!(
        apps[0].credits_of(CLERK_ID).await,
        (20, 0, 20),
        "nothing debited"
    );
    assert_eq!(
        ledger(&apps[0].store).await.len(),
        1,
        "only the signup bonus"
    );

    // The fix readiness printed restores the index; every replica turns ready, and the
    // same burst debits each key once.
    let body = readiness_until(&apps[0], 503).await;
    db.exec(body["schema"]["missing"][0]["fix"].as_str().unwrap())
        .await;
    for app in &apps {
        readiness_until(app, 200).await;
    }
    let answers = duplicate_consumes(&apps, "whole").await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert_eq!(apps[0].credits_of(CLERK_ID).await, (10, 10, 20));
    let ledger = ledger(&apps[0].store).await;
    for k in 0..10 {
        let key = format!("whole-{k}");
        assert_eq!(
            ledger
                .iter()
                .filter(|r| r.idempotency_key.as_deref() == Some(key.as_str()))
                .count(),
            1,
            "{key} debited more than once"
        );
    }
    assert_ledger_adds_up(&apps[0].store).await;
    for app in apps {
        app.stop().await;
    }
}

async fn a_dropped_ledger_trigger_is_reported_and_reinstalled(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, fast_checks()).await;
    readiness_until(&app, 200).await;
    db.exec(match backend {
        Backend::Postgres => r#"DROP TRIGGER "User_credits_ledger" ON "User""#,
        Backend::Sqlite => r#"DROP TRIGGER "User_credits_ledger""#,
    })
    .await;
    let body = readiness_until(&app, 503).await;
    let whats = missing_whats(&body);
    assert_eq!(whats.len(), 1, "{body:#}");
    assert!(
        whats[0].contains(r#"trigger "User_credits_ledger""#) && whats[0].contains("go unrecorded"),
        "{whats:?}"
    );
    assert_eq!(body["schema"]["missing"][0]["blocksWrites"], false);
    // The service's own writes do not need the trigger: a signup still goes through.
    let (s, b) = status_json(
        app.post_webhook("msg_signup", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("processed")), "{b}");
    let (ok, out, err) = clerk_sync(&["diagnose", "--fix", "--yes", "--database-url", &db.url]);
    assert!(ok, "{out}{err}");
    readiness_until(&app, 200).await;
    // The reinstalled trigger records the app's direct write.
    db.exec(r#"UPDATE "User" SET "usedGenerations" = "usedGenerations" + 1"#)
        .await;
    let ledger = ledger(&app.store).await;
    assert_eq!(
        ledger
            .iter()
            .filter(|r| r.reason.as_deref() == Some("direct_write"))
            .count(),
        1
    );
    assert_ledger_adds_up(&app.store).await;
    app.stop().await;
}

/// With checks an hour apart, only a failing statement can tell the watch: the first
/// webhook after the break answers 503 `schema_drift` (never 500), and readiness follows
/// at once.
async fn a_failing_statement_prompts_the_check_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, checks_an_hour_apart()).await;
    readiness_until(&app, 200).await;
    db.exec(match backend {
        // A type the service cannot write: "photo" is text in the contract.
        Backend::Postgres => r#"ALTER TABLE "User" ALTER COLUMN "photo" TYPE integer USING 0"#,
        // SQLite cannot change a type; a dropped column fails the same way.
        Backend::Sqlite => r#"ALTER TABLE "User" DROP COLUMN "photo""#,
    })
    .await;
    let (s, b) = status_json(
        app.post_webhook("msg_after_break", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (503, Some("schema_drift")), "{b}");
    let body = readiness_until(&app, 503).await;
    let whats = missing_whats(&body);
    let expected = match backend {
        Backend::Postgres => r#""User"."photo" has type integer, expected text"#,
        Backend::Sqlite => r#""User"."photo" is missing"#,
    };
    assert_eq!(whats, vec![expected.to_owned()], "{body:#}");
    assert_eq!(metric(&app, "clerk_sync_schema_drift").await, 1.0);
    assert!(users(&app.store).await.is_empty());
    app.stop().await;
}

/// The window between the app's migration and the next check: with checks an hour apart,
/// a burst of duplicate consumes right after the unique index is dropped never debits a
/// key twice. On PostgreSQL the movement statement names the index and fails without it
/// (503 `schema_drift`, even on connections whose plan was cached before); SQLite's one
/// writer applies movements one at a time, so the second of a key finds the first.
async fn a_dropped_idempotency_index_never_lets_a_key_debit_twice_before_any_check(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let apps = replicas_with_the_fixture_user(&db, backend, checks_an_hour_apart).await;
    let replicas = apps.len();
    // Warm every replica's statement (and its cached plan) first.
    for (i, app) in apps.iter().enumerate() {
        for k in 0..3 {
            let (s, b) = app
                .api(
                    Method::POST,
                    &format!("/v1/users/{CLERK_ID}/credits/consume"),
                    Some(json!({"amount": 1, "idempotencyKey": format!("warm-{i}-{k}")})),
                )
                .await;
            assert_eq!(s, 200, "{b}");
        }
    }
    let warmed = 3 * replicas as i64;

    db.exec(r#"DROP INDEX "Transaction_userId_idempotencyKey_key""#)
        .await;
    let answers = duplicate_consumes(&apps, "race").await;
    let ledger = ledger(&apps[0].store).await;
    for k in 0..10 {
        let key = format!("race-{k}");
        let rows = ledger
            .iter()
            .filter(|r| r.idempotency_key.as_deref() == Some(key.as_str()))
            .count();
        assert!(rows <= 1, "{key} debited {rows} times: {answers:?}");
    }
    let (balance, used, _) = apps[0].credits_of(CLERK_ID).await;
    let debited = ledger
        .iter()
        .filter(|r| {
            r.idempotency_key
                .as_deref()
                .is_some_and(|k| k.starts_with("race-"))
        })
        .count() as i64;
    assert_eq!((used, balance), (warmed + debited, 20 - warmed - debited));
    match backend {
        Backend::Postgres => {
            assert_eq!(debited, 0);
            assert!(
                answers
                    .iter()
                    .all(|(s, b)| *s == 503 && b["error"] == "schema_drift"),
                "{answers:?}"
            );
            // The failing statements told the watch: readiness follows.
            for app in &apps {
                let body = readiness_until(app, 503).await;
                assert!(
                    missing_whats(&body)
                        .iter()
                        .any(|w| w.contains("(userId, idempotencyKey)")),
                    "{body:#}"
                );
            }
        }
        Backend::Sqlite => assert!(answers.iter().all(|(s, _)| *s == 200 || *s == 503)),
    }
    for app in apps {
        app.stop().await;
    }
}

/// Two users with one email address would need only two concurrent signups once
/// `"User_email_key"` is gone: on PostgreSQL the signup statement names the index and
/// refuses without it, before any check; SQLite's one writer decides by a read it alone
/// writes after, so it goes on.
async fn a_dropped_email_index_refuses_signups_before_any_check(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, checks_an_hour_apart()).await;
    let (s, _) = status_json(app.post_webhook("msg_a", &created_for("ada")).await).await;
    assert_eq!(s, 200);
    db.exec(r#"DROP INDEX "User_email_key""#).await;
    let (s, b) = status_json(app.post_webhook("msg_b", &created_for("bob")).await).await;
    match backend {
        Backend::Postgres => {
            assert_eq!((s, b["error"].as_str()), (503, Some("schema_drift")), "{b}");
            assert_eq!(users(&app.store).await.len(), 1);
            let body = readiness_until(&app, 503).await;
            assert!(
                missing_whats(&body)
                    .iter()
                    .any(|w| w.contains(r#""User"(email)"#)),
                "{body:#}"
            );
        }
        Backend::Sqlite => {
            assert_eq!((s, b["status"].as_str()), (200, Some("processed")), "{b}");
            assert_eq!(users(&app.store).await.len(), 2);
        }
    }
    app.stop().await;
}
