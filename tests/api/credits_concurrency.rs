//! The credits API under concurrency: many consumes against one balance, and replays
//! of one idempotency key racing each other.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::credits::{app_with_user, consume, CLERK_ID};
use crate::helpers::*;

both_backends!(
    hundred_concurrent_consumes_of_one_against_twenty,
    idempotent_replays_including_concurrent_ones,
    concurrent_movements_of_many_users_each_get_their_own_answer,
);

async fn hundred_concurrent_consumes_of_one_against_twenty(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app_with_user(&db).await;
    let url = format!("{}/v1/users/{CLERK_ID}/credits/consume", app.address);

    let sends: Vec<_> = (0..100)
        .map(|i| {
            let req = app
                .http
                .post(&url)
                .bearer_auth(API_KEY)
                .json(&json!({"amount": 1, "idempotencyKey": format!("gen-{i}")}));
            tokio::spawn(req.send())
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for send in sends {
        let (s, b) = status_json(send.await.unwrap().unwrap()).await;
        match s {
            200 => ok += 1,
            402 => {
                refused += 1;
                assert_eq!(b["error"], "insufficient_credits");
                assert_eq!(b["balance"], 0);
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }

    assert_eq!((ok, refused), (20, 80));
    let u = users(&app.store).await.remove(0);
    assert_eq!((u.available, u.used), (20, 20));
    let debits: Vec<LedgerRow> = ledger(&app.store)
        .await
        .into_iter()
        .filter(|t| t.kind.as_deref() == Some("debit"))
        .collect();
    assert_eq!(debits.len(), 20);
    let after: BTreeSet<i32> = debits.iter().map(|t| t.balance_after.unwrap()).collect();
    assert_eq!(
        after,
        (0..20).collect::<BTreeSet<_>>(),
        "each debit saw a distinct, non-negative balance"
    );
    assert_ledger_adds_up(&app.store).await;
}

/// Ten users, each spending 1 four times and buying 5 once, all at once, with a consume
/// for a user nobody signed up and a replay racing its first use: on PostgreSQL the
/// credits queue puts movements of different users in one statement, and every caller
/// still gets the answer of its own movement.
async fn concurrent_movements_of_many_users_each_get_their_own_answer(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let names: Vec<String> = (0..10).map(|i| format!("many{i}")).collect();
    for name in &names {
        let (s, b) = status_json(
            app.post_webhook(&format!("msg_{name}"), &created_for(name))
                .await,
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }

    // (clerk id, path, key, amount)
    // Round by round, users in reverse Clerk id order: a batch arrives in the opposite of
    // the order the statement sends it in (by Clerk id), so answers must be put back.
    let mut calls: Vec<(String, &str, String, i32)> = Vec::new();
    for round in 0..6 {
        for name in names.iter().rev() {
            let clerk_id = format!("user_{name}");
            calls.push(match round {
                0..4 => (clerk_id, "consume", format!("spend-{round}"), 1),
                4 => (clerk_id, "grant", "buy-1".to_owned(), 5),
                _ => (clerk_id, "consume", "spend-0".to_owned(), 1),
            });
        }
    }
    calls.push(("user_nobody".to_owned(), "consume", "spend-0".to_owned(), 1));
    let sends: Vec<_> = calls
        .iter()
        .map(|(clerk_id, path, key, amount)| {
            let body = match *path {
                "grant" => json!({"amount": amount, "idempotencyKey": key, "kind": "purchase"}),
                _ => json!({"amount": amount, "idempotencyKey": key}),
            };
            let url = format!("{}/v1/users/{clerk_id}/credits/{path}", app.address);
            tokio::spawn(app.http.post(url).bearer_auth(API_KEY).json(&body).send())
        })
        .collect();
    let mut answers = Vec::new();
    for send in sends {
        answers.push(status_json(send.await.unwrap().unwrap()).await);
    }

    let (s, b) = answers.pop().unwrap();
    assert_eq!(
        (s, b["error"].as_str()),
        (404, Some("user_not_found")),
        "{b}"
    );
    let mut transactions = BTreeSet::new();
    for ((clerk_id, path, key, amount), (s, b)) in calls.iter().zip(&answers) {
        assert_eq!(s, &200, "{clerk_id} {path} {key}: {b}");
        let kind = if *path == "grant" { "credit" } else { "debit" };
        assert_eq!(
            (b["type"].as_str(), b["amount"].as_i64()),
            (Some(kind), Some(i64::from(*amount))),
            "{b}"
        );
        transactions.insert((
            clerk_id.clone(),
            key.clone(),
            b["transactionId"].as_str().unwrap().to_owned(),
        ));
    }
    // Ten users x five movements; each user's second "spend-0" is a replay of the first.
    assert_eq!(transactions.len(), 50, "one transaction per user and key");

    let users = users(&app.store).await;
    assert_eq!(users.len(), 10);
    // Each answer names the row of its own user and key, with that row's balance.
    let ledger = ledger(&app.store).await;
    for ((clerk_id, _, key, _), (_, b)) in calls.iter().zip(&answers) {
        let row = ledger
            .iter()
            .find(|t| t.id == b["transactionId"].as_str().unwrap())
            .unwrap_or_else(|| panic!("{clerk_id} {key}: no row {b}"));
        let owner = users
            .iter()
            .find(|u| Some(&u.id) == row.user_id.as_ref())
            .unwrap();
        assert_eq!(
            (
                owner.clerk_id.as_str(),
                row.idempotency_key.as_deref(),
                row.balance_after
            ),
            (
                clerk_id.as_str(),
                Some(key.as_str()),
                b["balanceAfter"].as_i64().map(|v| v as i32)
            ),
            "{b}"
        );
    }
    for u in &users {
        assert_eq!((u.available, u.used), (25, 4), "{}", u.clerk_id);
    }
    assert_eq!(
        ledger.len(),
        10 * 6,
        "per user: signup bonus, four debits, one credit"
    );
    for u in &users {
        let mut after: Vec<i32> = ledger
            .iter()
            .filter(|t| t.user_id.as_deref() == Some(u.id.as_str()))
            .map(|t| t.balance_after.unwrap())
            .collect();
        after.sort_unstable();
        after.dedup();
        assert_eq!(
            after.len(),
            6,
            "{}: each movement saw a distinct balance: {after:?}",
            u.clerk_id
        );
    }
    assert_ledger_adds_up(&app.store).await;
    if backend == Backend::Postgres {
        let statements = metric(&app, "clerk_sync_credits_batch_size_count").await;
        assert!(
            statements < calls.len() as f64,
            "{statements} statements for {} movements: none was shared",
            calls.len()
        );
    }
}

async fn idempotent_replays_including_concurrent_ones(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app_with_user(&db).await;
    let path = format!("/v1/users/{CLERK_ID}/credits/consume");

    let (s, first) = app
        .api(Method::POST, &path, consume(json!(3), "order-1"))
        .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(
        (first["balanceAfter"].as_i64(), first["replayed"].as_bool()),
        (Some(17), Some(false))
    );
    let (s, again) = app
        .api(Method::POST, &path, consume(json!(3), "order-1"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(again["transactionId"], first["transactionId"]);
    assert_eq!(
        (again["balanceAfter"].as_i64(), again["replayed"].as_bool()),
        (Some(17), Some(true))
    );
    let (s, b) = app
        .api(Method::POST, &path, consume(json!(4), "order-1"))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("idempotency_conflict"))
    );

    let url = format!("{}{path}", app.address);
    let sends: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(
                app.http
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .json(&json!({"amount": 2, "idempotencyKey": "order-2"}))
                    .send(),
            )
        })
        .collect();
    let mut ids = BTreeSet::new();
    for send in sends {
        let (s, b) = status_json(send.await.unwrap().unwrap()).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["balanceAfter"], 15);
        ids.insert(b["transactionId"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "ten concurrent replays, one movement");
    let u = users(&app.store).await.remove(0);
    assert_eq!(u.used, 5);
    assert_eq!(
        ledger(&app.store).await.len(),
        3,
        "signup bonus + two debits"
    );
    assert_ledger_adds_up(&app.store).await;
}

/// PostgreSQL only (SQLite admits one writer at a time): the consume statement reads the
/// earlier use of a key with its snapshot, so a request with the same key that commits
/// while it runs is caught by the unique index instead. Force that order with an open
/// transaction holding the key: the service's statement waits on it, fails as a whole
/// when it commits, runs again and answers with that first result; nothing is debited.
mod a_key_committed_by_a_concurrent_request_is_replayed_not_spent_twice {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_key_committed_by_a_concurrent_request_is_replayed_not_spent_twice().await
    }
}

async fn a_key_committed_by_a_concurrent_request_is_replayed_not_spent_twice() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = app_with_user(&db).await;
    let user_id = users(&app.store).await.remove(0).id;
    let clerk_sync::store::Store::Postgres(pg) = &app.store else {
        unreachable!("a PostgreSQL test")
    };
    let mut first = pg.pool.begin().await.unwrap();
    sqlx::query(
        r#"INSERT INTO "Transaction"
               ("id", "tracking_id", "userId", "status", "amount", "type", "reason",
                "idempotencyKey", "balanceAfter", "createdAt")
           VALUES ('txn_first', 'order-1', $1, 'completed', 3, 'debit', 'consume',
                   'order-1', 17, LOCALTIMESTAMP)"#,
    )
    .bind(&user_id)
    .execute(&mut *first)
    .await
    .unwrap();

    let url = format!("{}/v1/users/{CLERK_ID}/credits/consume", app.address);
    let send = tokio::spawn(
        app.http
            .post(&url)
            .bearer_auth(API_KEY)
            .json(&json!({"amount": 3, "idempotencyKey": "order-1"}))
            .send(),
    );
    wait_for_lock_waiters(pg, 1).await;
    first.commit().await.unwrap();

    let (s, b) = status_json(send.await.unwrap().unwrap()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (
            b["transactionId"].as_str(),
            b["replayed"].as_bool(),
            b["balanceAfter"].as_i64()
        ),
        (Some("txn_first"), Some(true), Some(17))
    );
    assert_eq!(
        users(&app.store).await[0].used,
        0,
        "the replay debited nothing"
    );
    assert_eq!(
        ledger(&app.store).await.len(),
        2,
        "signup bonus + the first debit"
    );
}
