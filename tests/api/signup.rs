//! The signup path: `user.created` / `user.updated` / `user.deleted` end to end.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    created_user_has_every_column_a_ledger_row_and_a_job,
    twenty_concurrent_deliveries_of_one_message_make_one_user,
    update_before_create_creates_once_with_one_bonus,
    concurrent_events_for_one_user_create_it_once_and_the_newest_wins,
    stale_update_after_a_newer_one_changes_nothing,
    delete_then_late_update_does_not_resurrect,
    other_event_types_are_recorded_as_ignored,
    signed_malformed_json_and_no_email_are_recorded_as_failed,
    email_owned_by_another_clerk_user_is_failed,
    a_failure_mid_transaction_writes_nothing,
);

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
    assert_eq!(u.id.len(), 24, "cuid2 id: {}", u.id);
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

async fn twenty_concurrent_deliveries_of_one_message_make_one_user(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let body = fixture("clerk-user-created.json");

    let sends: Vec<_> = (0..20)
        .map(|_| tokio::spawn(app.signed_request("msg_dup", &body).send()))
        .collect();

    let mut statuses = Vec::new();
    for send in sends {
        let (status, body) = status_json(send.await.unwrap().unwrap()).await;
        assert_eq!(status, 200, "{body}");
        statuses.push(body["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "processed").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "duplicate").count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(users(&app.store).await.len(), 1);
    assert_eq!(ledger(&app.store).await.len(), 1);
    assert_eq!(jobs(&app.store).await.len(), 1);
    assert_eq!(events(&app.store).await.len(), 1);
}

async fn update_before_create_creates_once_with_one_bonus(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    let (s1, b1) = status_json(
        app.post_webhook("msg_upd", &fixture("clerk-user-updated.json"))
            .await,
    )
    .await;
    let (s2, b2) = status_json(
        app.post_webhook("msg_crt", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;

    assert_eq!(
        (s1, b1),
        (200, json!({"status": "processed", "action": "created"}))
    );
    assert_eq!(s2, 200);
    assert_eq!(b2["status"], "ignored", "{b2}");
    let users = users(&app.store).await;
    assert_eq!(users.len(), 1);
    assert_eq!(
        users[0].email, "example.new@example.org",
        "the newer update wins"
    );
    assert_eq!(users[0].last_name.as_deref(), Some("Example Updated"));
    assert_eq!(users[0].available, 20);
    let ledger = ledger(&app.store).await;
    assert_eq!(ledger.len(), 1, "one signup bonus");
    assert_eq!(ledger[0].webhook_event_id.as_deref(), Some("msg_upd"));
    assert_eq!(jobs(&app.store).await.len(), 1);
    assert_ledger_adds_up(&app.store).await;
}

/// Distinct messages about one user racing each other: a `user.created` and ten
/// `user.updated`s with rising `updated_at`, for five users at once. Whatever order the
/// database sees them in, each user is inserted once with one bonus and one job, and ends
/// with the newest event's fields.
async fn concurrent_events_for_one_user_create_it_once_and_the_newest_wins(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let created: Value = fixture_json("clerk-user-created.json");
    let updated_at = created["data"]["updated_at"].as_i64().unwrap();

    let mut sends = Vec::new();
    for user in 0..5 {
        for version in 0..=10 {
            let mut event = created.clone();
            if version > 0 {
                event["type"] = json!("user.updated");
            }
            event["data"]["id"] = json!(format!("user_race{user}"));
            event["data"]["email_addresses"][0]["email_address"] =
                json!(format!("race{user}@example.org"));
            event["data"]["updated_at"] = json!(updated_at + version);
            event["data"]["last_name"] = json!(format!("v{version}"));
            let body = serde_json::to_vec(&event).unwrap();
            let msg_id = format!("msg_race{user}v{version}");
            sends.push(tokio::spawn(app.signed_request(&msg_id, &body).send()));
        }
    }
    for send in sends {
        let (status, body) = status_json(send.await.unwrap().unwrap()).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["status"] == "processed" || body["status"] == "ignored",
            "{body}"
        );
    }

    let users = users(&app.store).await;
    assert_eq!(users.len(), 5, "one row per user");
    for u in &users {
        assert_eq!(u.last_name.as_deref(), Some("v10"), "the newest event wins");
        assert_eq!(u.available, 20);
    }
    let ledger = ledger(&app.store).await;
    assert_eq!(ledger.len(), 5, "one signup bonus per user");
    assert_eq!(jobs(&app.store).await.len(), 5, "one outbox job per user");
    let events = events(&app.store).await;
    assert_eq!(events.len(), 55);
    assert!(events.iter().all(|e| e.processed), "none failed");
    assert_ledger_adds_up(&app.store).await;
}

/// PostgreSQL only: SQLite admits one writer at a time, so this race cannot happen there.
mod a_user_created_by_a_concurrent_statement_is_updated_not_inserted_again {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_user_created_by_a_concurrent_statement_is_updated_not_inserted_again().await
    }
}

/// The signup statement reads with the snapshot it started with. Force the worst order: a
/// `user.updated` starts while the `user.created` for the same user is half-way (its
/// per-user row claimed, its event key blocked by an open transaction of ours), then waits
/// for it. When the create commits, the update must find that user through the unique
/// index and update it, not insert a second one (a 23505 and a 500).
///
/// Within one replica the events of one user queue in one lane and never overlap; two
/// replicas on one database are where they do, so the update goes to a second replica.
async fn a_user_created_by_a_concurrent_statement_is_updated_not_inserted_again() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::spawn(&db).await;
    let replica = TestApp::spawn(&db).await;
    let created = fixture("clerk-user-created.json");
    let mut updated: Value = fixture_json("clerk-user-created.json");
    updated["type"] = json!("user.updated");
    updated["data"]["updated_at"] = json!(updated["data"]["updated_at"].as_i64().unwrap() + 1);
    updated["data"]["last_name"] = json!("Newer");
    let updated = serde_json::to_vec(&updated).unwrap();

    let clerk_sync::store::Store::Postgres(pg) = &app.store else {
        unreachable!("a PostgreSQL test")
    };
    let blocker = hold_event_key(pg, "msg_created").await;

    let create = tokio::spawn(app.signed_request("msg_created", &created).send());
    wait_for_lock_waiters(pg, 1).await;
    let update = tokio::spawn(replica.signed_request("msg_updated", &updated).send());
    wait_for_lock_waiters(pg, 2).await;
    blocker.rollback().await.unwrap();

    assert_eq!(
        status_json(create.await.unwrap().unwrap()).await,
        (200, json!({"status": "processed", "action": "created"}))
    );
    assert_eq!(
        status_json(update.await.unwrap().unwrap()).await,
        (200, json!({"status": "processed", "action": "updated"}))
    );
    let users = users(&app.store).await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].last_name.as_deref(), Some("Newer"));
    assert_eq!(users[0].available, 20);
    assert_eq!(ledger(&app.store).await.len(), 1);
    assert_eq!(jobs(&app.store).await.len(), 1);
    assert_ledger_adds_up(&app.store).await;
}

/// PostgreSQL only: SQLite applies each webhook in its own transaction; there is no queue.
mod a_refused_batch_is_applied_one_webhook_at_a_time {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_refused_batch_is_applied_one_webhook_at_a_time().await
    }
}

/// A `user.created` for `user_{name}` with the address `{name}@example.org`.
fn created_for(name: &str) -> Vec<u8> {
    let mut event: Value = fixture_json("clerk-user-created.json");
    event["data"]["id"] = json!(format!("user_{name}"));
    event["data"]["email_addresses"][0]["email_address"] = json!(format!("{name}@example.org"));
    serde_json::to_vec(&event).unwrap()
}

/// Webhooks that arrive while a signup statement runs wait, then go to the database in
/// one statement. When one of them breaks a constraint the statement writes nothing; each
/// webhook is then applied alone, so the others land and only that one fails (500, event
/// recorded `failed`, Svix retries it).
async fn a_refused_batch_is_applied_one_webhook_at_a_time() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::spawn(&db).await;
    let clerk_sync::store::Store::Postgres(pg) = &app.store else {
        unreachable!("a PostgreSQL test")
    };
    sqlx::query(
        r#"ALTER TABLE "User" ADD CONSTRAINT "refuse_one_address"
           CHECK ("email" <> 'refused@example.org')"#,
    )
    .execute(&pg.pool)
    .await
    .unwrap();

    // Hold the first webhook's statement on a lock, so that the next three queue.
    let blocker = hold_event_key(pg, "msg_first").await;
    let first = tokio::spawn(
        app.signed_request("msg_first", &created_for("first"))
            .send(),
    );
    wait_for_lock_waiters(pg, 1).await;
    let queued: Vec<_> = ["good1", "refused", "good2"]
        .into_iter()
        .map(|name| {
            let send = app.signed_request(&format!("msg_{name}"), &created_for(name));
            (name, tokio::spawn(send.send()))
        })
        .collect();
    wait_for_metric(&app, "clerk_sync_signup_queue_waiting", 3.0).await;
    blocker.rollback().await.unwrap();

    let created = json!({"status": "processed", "action": "created"});
    assert_eq!(
        status_json(first.await.unwrap().unwrap()).await,
        (200, created.clone())
    );
    for (name, send) in queued {
        let (status, body) = status_json(send.await.unwrap().unwrap()).await;
        if name == "refused" {
            assert_eq!(status, 500, "{body}");
            assert_eq!(body["error"], "constraint_violation", "{body}");
        } else {
            assert_eq!((status, body), (200, created.clone()), "{name}");
        }
    }
    // One statement for the first webhook, one for the three that waited.
    assert_eq!(
        metric(&app, "clerk_sync_signup_batch_size_count").await,
        2.0
    );
    assert_eq!(metric(&app, "clerk_sync_signup_batch_size_sum").await, 4.0);

    let mut clerk_ids: Vec<_> = users(&app.store)
        .await
        .into_iter()
        .map(|u| u.clerk_id)
        .collect();
    clerk_ids.sort();
    assert_eq!(clerk_ids, ["user_first", "user_good1", "user_good2"]);
    assert_eq!(ledger(&app.store).await.len(), 3);
    assert_eq!(jobs(&app.store).await.len(), 3);
    let refused = events(&app.store)
        .await
        .into_iter()
        .find(|e| e.event_id == "msg_refused")
        .expect("the refused event is recorded");
    assert_eq!(refused.status.as_deref(), Some("failed"));
    assert!(
        refused
            .error
            .as_deref()
            .is_some_and(|e| e.contains("check constraint")),
        "{refused:?}"
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

    let ev = events(&app.store).await;
    assert_eq!(ev.len(), 2);
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
    let app = TestApp::spawn(&db).await;
    // Sabotage the last insert of the transaction: the outbox table is gone.
    let own = own_table(&app.store, "OutboxJob");
    db.exec(&format!(r#"ALTER TABLE {own} RENAME TO "OutboxJobGone""#))
        .await;

    let (s, b) = status_json(
        app.post_webhook("msg_x", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;

    assert_eq!(s, 500, "{b}");
    assert_eq!(b["error"], "internal_error");
    assert!(
        !b["message"].as_str().unwrap().contains("OutboxJob"),
        "no SQL detail leaks: {b}"
    );
    assert!(users(&app.store).await.is_empty());
    assert!(ledger(&app.store).await.is_empty());
    assert!(events(&app.store).await.is_empty());

    // Svix retries; once the table is back, the same message goes through.
    let gone = own.replace("OutboxJob", "OutboxJobGone");
    db.exec(&format!(r#"ALTER TABLE {gone} RENAME TO "OutboxJob""#))
        .await;
    let (s, b) = status_json(
        app.post_webhook("msg_x", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!((s, b["status"].clone()), (200, json!("processed")));
    assert_eq!(users(&app.store).await.len(), 1);
}

both_backends!(send_command_posts_a_signed_sample_that_creates_a_user);

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
