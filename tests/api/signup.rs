//! The signup path: `user.created` / `user.updated` / `user.deleted` end to end.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    created_user_has_every_column_a_ledger_row_and_a_job,
    stale_update_after_a_newer_one_changes_nothing,
    delete_then_late_update_does_not_resurrect,
    other_event_types_are_recorded_as_ignored,
    signed_malformed_json_and_no_email_are_recorded_as_failed,
    email_owned_by_another_clerk_user_is_failed,
    a_failure_mid_transaction_writes_nothing,
    an_unverified_address_is_never_claimed,
);

/// Issue #31: a user whose only address is unverified is recorded failed and claims no
/// email, so the address's real owner signs up afterwards; once the first user verifies
/// an address of their own, their `user.updated` creates them.
async fn an_unverified_address_is_never_claimed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let mut squatter: Value = serde_json::from_slice(&created_for("squatter")).unwrap();
    squatter["data"]["primary_email_address_id"] = Value::Null;
    squatter["data"]["email_addresses"][0]["email_address"] = json!("owner@example.org");
    squatter["data"]["email_addresses"][0]["verification"]["status"] = json!("unverified");
    let (s, b) = status_json(
        app.post_webhook("msg_squat", &serde_json::to_vec(&squatter).unwrap())
            .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "failed");
    assert_eq!(b["reason"], "user has no verified email address");
    assert!(users(&app.store).await.is_empty());

    let mut owner: Value = serde_json::from_slice(&created_for("owner")).unwrap();
    owner["data"]["email_addresses"][0]["email_address"] = json!("owner@example.org");
    let (s, b) = status_json(
        app.post_webhook("msg_owner", &serde_json::to_vec(&owner).unwrap())
            .await,
    )
    .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("processed")), "{b}");

    let mut verified = squatter.clone();
    verified["type"] = json!("user.updated");
    verified["data"]["updated_at"] = json!(squatter["data"]["updated_at"].as_i64().unwrap() + 1000);
    verified["data"]["email_addresses"][0]["email_address"] = json!("squatter@example.org");
    verified["data"]["email_addresses"][0]["verification"]["status"] = json!("verified");
    let (s, b) = status_json(
        app.post_webhook("msg_verified", &serde_json::to_vec(&verified).unwrap())
            .await,
    )
    .await;
    assert_eq!((s, b["action"].as_str()), (200, Some("created")), "{b}");
    let mut emails: Vec<(String, String)> = users(&app.store)
        .await
        .into_iter()
        .map(|u| (u.clerk_id, u.email))
        .collect();
    emails.sort();
    assert_eq!(
        emails,
        vec![
            ("user_owner".to_owned(), "owner@example.org".to_owned()),
            (
                "user_squatter".to_owned(),
                "squatter@example.org".to_owned()
            ),
        ]
    );
}

async fn created_user_has_every_column_a_ledger_row_and_a_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let before = clerk_sync::store::now();

    let (status, body) = status_json(
        app.post_webhook("msg_created_1", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;

    assert_eq!(status, 200);
    assert_eq!(body, json!({"status": "processed", "action": "created"}));
    let users = users(&app.store).await;
    assert_eq!(users.len(), 1);
    let u = &users[0];
    assert_eq!(u.id.len(), 24, "a cuid: {}", u.id);
    assert_eq!(u.clerk_id, "user_29w83sxmDNGwOuEthce5gg56FcC");
    assert_eq!(u.email, "example@example.org");
    assert_eq!(u.photo, "https://img.clerk.com/xxxxxx");
    assert_eq!(u.first_name.as_deref(), Some("Example"));
    assert_eq!(u.last_name.as_deref(), Some("Example"));
    assert_eq!(u.used, 0);
    assert_eq!(u.available, 20);
    assert_eq!(u.created_at, u.updated_at);
    assert!(u.created_at >= before && u.created_at <= clerk_sync::store::now());

    let ledger = ledger(&app.store).await;
    assert_eq!(ledger.len(), 1);
    let t = &ledger[0];
    assert_eq!(t.tracking_id, u.clerk_id);
    assert_eq!(t.user_id.as_deref(), Some(u.id.as_str()));
    assert_eq!(t.status.as_deref(), Some("completed"));
    assert_eq!(t.amount, Some(20));
    assert_eq!(t.kind.as_deref(), Some("credit"));
    assert_eq!(t.reason.as_deref(), Some("signup_bonus"));
    assert_eq!(t.webhook_event_id.as_deref(), Some("msg_created_1"));
    assert_eq!(
        t.idempotency_key.as_deref(),
        Some("signup:user_29w83sxmDNGwOuEthce5gg56FcC")
    );
    assert_eq!(t.balance_after, Some(20));

    let events = events(&app.store).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_id, "msg_created_1");
    assert_eq!(events[0].event_type, "user.created");
    assert!(events[0].processed);
    assert_eq!(events[0].status.as_deref(), Some("processed"));
    assert!(events[0].has_payload);

    let jobs = jobs(&app.store).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].kind, "update_clerk_metadata");
    assert_eq!(jobs[0].status, "pending");
    assert_eq!(jobs[0].attempts, 0);
    assert_eq!(
        jobs[0].payload.0,
        json!({"type": "update_clerk_metadata.v1", "clerkId": u.clerk_id, "userId": u.id})
    );
    assert_ledger_adds_up(&app.store).await;
}

async fn stale_update_after_a_newer_one_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let mut older: Value = fixture_json("clerk-user-updated.json");
    older["data"]["updated_at"] = json!(1654012700000i64);
    older["data"]["last_name"] = json!("Older Name");

    let (s, _) = status_json(
        app.post_webhook("msg_c", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = status_json(
        app.post_webhook("msg_new", &fixture("clerk-user-updated.json"))
            .await,
    )
    .await;
    assert_eq!(
        (s, b),
        (200, json!({"status": "processed", "action": "updated"}))
    );
    let after_newer = users(&app.store).await;

    let (s, b) = status_json(
        app.post_webhook("msg_old", &serde_json::to_vec(&older).unwrap())
            .await,
    )
    .await;

    assert_eq!(s, 200);
    assert_eq!(b["status"], "ignored");
    assert!(b["reason"].as_str().unwrap().contains("stale"), "{b}");
    assert_eq!(
        users(&app.store).await,
        after_newer,
        "the user row is unchanged"
    );
    assert_eq!(after_newer[0].last_name.as_deref(), Some("Example Updated"));
    assert!(after_newer[0].updated_at >= after_newer[0].created_at);
    let ev = events(&app.store).await;
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[2].status.as_deref(), Some("ignored"));
    assert_eq!(ledger(&app.store).await.len(), 1);
}

async fn delete_then_late_update_does_not_resurrect(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    status_json(
        app.post_webhook("msg_c", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    let (s, b) = status_json(
        app.post_webhook("msg_d", &fixture("clerk-user-deleted.json"))
            .await,
    )
    .await;
    assert_eq!(
        (s, b),
        (200, json!({"status": "processed", "action": "deleted"}))
    );
    assert!(users(&app.store).await.is_empty(), "PII row deleted");
    assert_eq!(ledger(&app.store).await.len(), 1, "ledger rows stay");
    let ev = events(&app.store).await;
    assert_eq!(ev.len(), 2);
    assert!(
        !ev[0].has_payload,
        "the user.created payload (with the email) is erased"
    );
    assert_eq!(
        ev[0].status.as_deref(),
        Some("processed"),
        "the event row itself stays"
    );

    let (s, b) = status_json(
        app.post_webhook("msg_late", &fixture("clerk-user-updated.json"))
            .await,
    )
    .await;

    assert_eq!(s, 200);
    assert_eq!(b["status"], "ignored");
    assert!(b["reason"].as_str().unwrap().contains("deleted"), "{b}");
    assert!(users(&app.store).await.is_empty(), "not brought back");
    // A repeated user.created for the deleted user does not grant a second bonus either.
    let (_, b) = status_json(
        app.post_webhook("msg_c2", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!(b["status"], "ignored");
    assert_eq!(ledger(&app.store).await.len(), 1);
}

async fn other_event_types_are_recorded_as_ignored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let body = json!({"type": "session.created", "data": {"id": "sess_1"}, "object": "event"});

    let (s, b) = status_json(
        app.post_webhook("msg_sess", &serde_json::to_vec(&body).unwrap())
            .await,
    )
    .await;

    assert_eq!(s, 200);
    assert_eq!(b["status"], "ignored");
    let ev = events(&app.store).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].event_type, "session.created");
    assert_eq!(ev[0].status.as_deref(), Some("ignored"));
    assert!(users(&app.store).await.is_empty());
}

async fn signed_malformed_json_and_no_email_are_recorded_as_failed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    let (s, b) = status_json(
        app.post_webhook("msg_bad_json", b"{\"type\": \"user.created\", ")
            .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        b,
        json!({"status": "failed", "reason": "body is not valid JSON"})
    );

    let (s, b) = status_json(
        app.post_webhook("msg_no_email", &fixture("clerk-user-created-no-email.json"))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        b,
        json!({"status": "failed", "reason": "user has no email address"})
    );

    let mut ev = events(&app.store).await;
    assert_eq!(ev.len(), 2);
    // Both may land in the same millisecond: in svix-id order, not arrival order.
    ev.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(
        (ev[0].event_id.as_str(), ev[0].event_type.as_str()),
        ("msg_bad_json", "unknown")
    );
    assert_eq!(ev[0].status.as_deref(), Some("failed"));
    assert_eq!(ev[0].error.as_deref(), Some("body is not valid JSON"));
    assert!(!ev[0].processed && !ev[0].has_payload);
    assert_eq!(ev[1].event_type, "user.created");
    assert_eq!(ev[1].status.as_deref(), Some("failed"));
    assert_eq!(ev[1].error.as_deref(), Some("user has no email address"));
    assert!(users(&app.store).await.is_empty());
    assert!(ledger(&app.store).await.is_empty());
    assert!(jobs(&app.store).await.is_empty());

    // A redelivery (e.g. a resend from the Svix dashboard) is processed again: still
    // failed, still one row.
    let (_, b) = status_json(
        app.post_webhook("msg_no_email", &fixture("clerk-user-created-no-email.json"))
            .await,
    )
    .await;
    assert_eq!(b["status"], "failed");
    assert_eq!(events(&app.store).await.len(), 2);
}

async fn email_owned_by_another_clerk_user_is_failed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let mut other: Value = fixture_json("clerk-user-created.json");
    other["data"]["id"] = json!("user_someoneElse");

    status_json(
        app.post_webhook("msg_first", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    let (s, b) = status_json(
        app.post_webhook("msg_other", &serde_json::to_vec(&other).unwrap())
            .await,
    )
    .await;

    assert_eq!(s, 200);
    assert_eq!(b["status"], "failed");
    assert_eq!(
        b["reason"],
        "email address already belongs to another Clerk user"
    );
    assert_eq!(users(&app.store).await.len(), 1);
    assert_eq!(ledger(&app.store).await.len(), 1);
    let ev = events(&app.store).await;
    assert_eq!(ev[1].status.as_deref(), Some("failed"));
}

async fn a_failure_mid_transaction_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            schema_check_interval_ms: Some(200),
            ..AppOptions::default()
        },
    )
    .await;
    // Sabotage the last insert of the transaction: the outbox table is gone.
    let own = own_table(&app.store, "OutboxJob");
    db.exec(&format!(r#"ALTER TABLE {own} RENAME TO "OutboxJobGone""#))
        .await;

    let (s, b) = status_json(
        app.post_webhook("msg_x", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;

    // A table the statement names is gone: schema drift, retryable, never a 500.
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"], "schema_drift");
    // The message may name the missing table (once the schema watch has seen it), never
    // the statement or the driver's words.
    let message = b["message"].as_str().unwrap();
    for leak in [
        "INSERT",
        "relation",
        "no such table",
        "does not exist",
        "clerk_sync.",
    ] {
        assert!(!message.contains(leak), "no SQL detail leaks ({leak}): {b}");
    }
    assert!(users(&app.store).await.is_empty());
    assert!(ledger(&app.store).await.is_empty());
    assert!(events(&app.store).await.is_empty());

    // Svix retries; once the table is back, the same message goes through.
    let gone = own.replace("OutboxJob", "OutboxJobGone");
    db.exec(&format!(r#"ALTER TABLE {gone} RENAME TO "OutboxJob""#))
        .await;
    // Within one schema check, the service takes writes again.
    for _ in 0..200 {
        if app.get("/readyz").await.status() == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (s, b) = status_json(
        app.post_webhook("msg_x", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!((s, b["status"].clone()), (200, json!("processed")));
    assert_eq!(users(&app.store).await.len(), 1);
}

both_backends!(
    send_command_posts_a_signed_sample_that_creates_a_user,
    send_finds_the_server_by_host_and_port_and_names_what_is_wrong,
);

/// `send` with no `--url` reads `HOST` and `PORT` as `serve` does, prints the Clerk user
/// id it created (the next step needs it), and says what is wrong when nothing listens.
async fn send_finds_the_server_by_host_and_port_and_names_what_is_wrong(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let send = |port: String| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
            .arg("send")
            .env("HOST", "0.0.0.0")
            .env("PORT", port)
            .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
            .output()
    };
    let out = send(port).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users = users(&app.store).await;
    assert_eq!(users.len(), 1);
    assert!(
        stdout.contains(&format!("clerk user id: {}", users[0].clerk_id)),
        "{stdout}"
    );

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port().to_string();
    drop(dead);
    let out = send(dead_port.clone()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("127.0.0.1:{dead_port}")) && stderr.contains("connection refused"),
        "{stderr}"
    );
    assert!(stderr.contains("clerk-sync serve"), "the fix: {stderr}");
}

async fn send_command_posts_a_signed_sample_that_creates_a_user(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let url = app.webhook_url();

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
        .args([
            "send",
            "--url",
            &url,
            "--clerk-webhook-signing-secret",
            SECRET,
        ])
        .output()
        .await
        .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("200 OK"), "{stdout}");
    assert!(stdout.contains(r#""action":"created""#), "{stdout}");
    let users = users(&app.store).await;
    assert_eq!(users.len(), 1);
    assert!(users[0].clerk_id.starts_with("user_"));
    assert_eq!(ledger(&app.store).await.len(), 1);
}
