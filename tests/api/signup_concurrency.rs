//! The signup path under concurrency: deliveries of one message, events of one user,
//! replicas racing, and batches the database refuses.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    twenty_concurrent_deliveries_of_one_message_make_one_user,
    update_before_create_creates_once_with_one_bonus,
    concurrent_events_for_one_user_create_it_once_and_the_newest_wins,
);

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
/// Within one replica the events of one user never share a statement and keep their
/// order; two replicas on one database are where they overlap, so the update goes to a second replica.
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
