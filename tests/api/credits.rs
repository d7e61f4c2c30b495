//! The `/v1` credits API on both backends.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    api_keys_are_required_and_rotation_works,
    user_and_balance_are_reported,
    grant_then_consume,
    invalid_amounts_and_fields_are_named,
    ledger_pagination_walks_every_row_once,
    lazy_provisioning_then_the_late_webhook_gives_one_user_and_one_bonus,
    lazy_provisioning_asks_clerk_once_per_user,
);

pub(crate) const CLERK_ID: &str = "user_29w83sxmDNGwOuEthce5gg56FcC";

pub(crate) async fn app_with_user(db: &TestDb) -> TestApp {
    let app = TestApp::spawn(db).await;
    let (s, _) = status_json(
        app.post_webhook("msg_signup", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    app
}

pub(crate) fn consume(amount: Value, key: &str) -> Option<Value> {
    Some(json!({"amount": amount, "idempotencyKey": key, "reference": "gen-1"}))
}

async fn api_keys_are_required_and_rotation_works(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app_with_user(&db).await;
    let url = format!("{}/v1/users/{CLERK_ID}", app.address);

    for (name, auth) in [
        ("none", None),
        ("wrong", Some("Bearer csk_test_wrong_0123456789")),
        ("not bearer", Some(API_KEY)),
    ] {
        let mut req = app.http.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (s, b) = status_json(req.send().await.unwrap()).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (401, Some("unauthorized")),
            "{name}"
        );
    }
    let (s, b) = status_json(
        app.http
            .get(&url)
            .bearer_auth(API_KEY_2)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    // A refused consume changes nothing.
    let r = app
        .http
        .post(format!("{url}/credits/consume"))
        .json(&json!({"amount": 1, "idempotencyKey": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(users(&app.store).await[0].used, 0);
}

async fn user_and_balance_are_reported(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app_with_user(&db).await;

    let (s, b) = app
        .api(Method::GET, &format!("/v1/users/{CLERK_ID}"), None)
        .await;

    assert_eq!(s, 200, "{b}");
    assert_eq!(b["clerkId"], CLERK_ID);
    assert_eq!(b["email"], "example@example.org");
    assert_eq!(
        (
            b["availableGenerations"].as_i64(),
            b["usedGenerations"].as_i64(),
            b["balance"].as_i64()
        ),
        (Some(20), Some(0), Some(20))
    );
    let (s, b) = app.api(Method::GET, "/v1/users/user_unknown", None).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (404, Some("user_not_found")),
        "without CLERK_SECRET_KEY, an unknown user is 404"
    );
    let (s, b) = app.api(Method::GET, "/v1/users/not%20an%20id", None).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    assert!(b["message"].as_str().unwrap().contains("clerkId"), "{b}");
}

async fn grant_then_consume(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app_with_user(&db).await;
    let base = format!("/v1/users/{CLERK_ID}/credits");

    let (s, b) = app
        .api(Method::POST, &format!("{base}/grant"), Some(json!({"amount": 5, "kind": "purchase", "idempotencyKey": "stripe-pi_1", "reference": "pi_1"})))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (
            b["type"].as_str(),
            b["reason"].as_str(),
            b["balanceAfter"].as_i64()
        ),
        (Some("credit"), Some("purchase"), Some(25))
    );
    let (s, b) = app
        .api(
            Method::POST,
            &format!("{base}/consume"),
            consume(json!(25), "big"),
        )
        .await;
    assert_eq!((s, b["balanceAfter"].as_i64()), (200, Some(0)));
    let (s, b) = app
        .api(
            Method::POST,
            &format!("{base}/consume"),
            consume(json!(1), "one-more"),
        )
        .await;
    assert_eq!((s, b["balance"].as_i64()), (402, Some(0)));

    let u = users(&app.store).await.remove(0);
    assert_eq!((u.available, u.used), (25, 25));
    let rows = ledger(&app.store).await;
    let purchase = rows
        .iter()
        .find(|t| t.reason.as_deref() == Some("purchase"))
        .unwrap();
    assert_eq!(
        (
            purchase.amount,
            purchase.tracking_id.as_str(),
            purchase.idempotency_key.as_deref()
        ),
        (Some(5), "pi_1", Some("stripe-pi_1"))
    );
    assert_eq!(rows.len(), 3);
    assert_ledger_adds_up(&app.store).await;
}

async fn invalid_amounts_and_fields_are_named(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app_with_user(&db).await;
    let base = format!("/v1/users/{CLERK_ID}/credits");
    let cases = [
        (
            "consume",
            json!({"amount": 0, "idempotencyKey": "k"}),
            "amount",
        ),
        (
            "consume",
            json!({"amount": -1, "idempotencyKey": "k"}),
            "amount",
        ),
        (
            "consume",
            json!({"amount": 1.5, "idempotencyKey": "k"}),
            "amount",
        ),
        (
            "consume",
            json!({"amount": "3", "idempotencyKey": "k"}),
            "amount",
        ),
        (
            "consume",
            json!({"amount": 1_000_001, "idempotencyKey": "k"}),
            "amount",
        ),
        ("consume", json!({"idempotencyKey": "k"}), "amount"),
        ("consume", json!({"amount": 1}), "idempotencyKey"),
        (
            "consume",
            json!({"amount": 1, "idempotencyKey": ""}),
            "idempotencyKey",
        ),
        (
            "consume",
            json!({"amount": 1, "idempotencyKey": "k", "extra": true}),
            "extra",
        ),
        (
            "grant",
            json!({"amount": 1, "kind": "gift", "idempotencyKey": "k"}),
            "kind",
        ),
        ("grant", json!({"amount": 1, "idempotencyKey": "k"}), "kind"),
    ];
    for (op, body, field) in cases {
        let (s, b) = app
            .api(Method::POST, &format!("{base}/{op}"), Some(body.clone()))
            .await;
        assert_eq!(
            (s, b["error"].as_str()),
            (400, Some("invalid_request")),
            "{body}: {b}"
        );
        assert!(
            b["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}`")),
            "{body}: {b}"
        );
    }
    let (_, b) = app
        .api(
            Method::POST,
            &format!("{base}/grant"),
            Some(json!({"amount": 1, "kind": "gift", "idempotencyKey": "k"})),
        )
        .await;
    assert_eq!(
        b["message"], "`kind` must be one of: purchase, refund, grant, adjustment",
        "{b}"
    );
    let r = app
        .http
        .post(format!("{}{base}/consume", app.address))
        .bearer_auth(API_KEY)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    let (s, b) = app
        .api(
            Method::GET,
            &format!("/v1/users/{CLERK_ID}/ledger?limit=0"),
            None,
        )
        .await;
    assert_eq!(s, 400);
    assert!(b["message"].as_str().unwrap().contains("`limit`"));
    let (s, b) = app
        .api(
            Method::GET,
            &format!("/v1/users/{CLERK_ID}/ledger?cursor=nope"),
            None,
        )
        .await;
    assert_eq!(s, 400);
    assert!(b["message"].as_str().unwrap().contains("`cursor`"));
    assert_eq!(users(&app.store).await[0].used, 0);
    assert_eq!(ledger(&app.store).await.len(), 1);
}

async fn ledger_pagination_walks_every_row_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app_with_user(&db).await;
    let base = format!("/v1/users/{CLERK_ID}");
    for i in 0..15 {
        app.api(
            Method::POST,
            &format!("{base}/credits/consume"),
            consume(json!(1), &format!("c{i}")),
        )
        .await;
        app.api(
            Method::POST,
            &format!("{base}/credits/grant"),
            Some(json!({"amount": 2, "kind": "grant", "idempotencyKey": format!("g{i}")})),
        )
        .await;
    }
    let all_ids: BTreeSet<String> = ledger(&app.store).await.into_iter().map(|t| t.id).collect();
    assert_eq!(all_ids.len(), 31);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let (s, page) = app
            .api(Method::GET, &format!("{base}/ledger?limit=7{q}"), None)
            .await;
        assert_eq!(s, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 7);
        seen.extend(items.iter().map(|i| {
            (
                i["createdAt"].as_str().unwrap().to_owned(),
                i["id"].as_str().unwrap().to_owned(),
            )
        }));
        pages += 1;
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }

    assert_eq!(pages, 5);
    let seen_ids: Vec<&String> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!(
        seen_ids.iter().collect::<BTreeSet<_>>().len(),
        seen.len(),
        "no row twice"
    );
    assert_eq!(
        seen_ids.into_iter().cloned().collect::<BTreeSet<_>>(),
        all_ids,
        "every row once"
    );
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    assert_ledger_adds_up(&app.store).await;
}

async fn lazy_provisioning_then_the_late_webhook_gives_one_user_and_one_bonus(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    clerk.add_user(fixture_json("clerk-user-created.json")["data"].clone());
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            clerk_api_url: Some(clerk.url.clone()),
            clerk_secret_key: Some(FakeClerk::KEY.to_owned()),
            ..AppOptions::default()
        },
    )
    .await;

    // The signed-in user's first request arrives before the webhook.
    let (s, b) = app
        .api(
            Method::POST,
            &format!("/v1/users/{CLERK_ID}/credits/consume"),
            consume(json!(2), "first-image"),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["balanceAfter"], 18);
    let fetched: Vec<Recorded> = clerk
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].path, format!("/v1/users/{CLERK_ID}"));
    assert_eq!(
        fetched[0].authorization.as_deref(),
        Some("Bearer sk_test_fake_clerk_key")
    );

    let (s, b) = status_json(
        app.post_webhook("msg_late_created", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b["status"], "ignored", "{b}");

    let u = users(&app.store).await;
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].email.as_str(), u[0].available, u[0].used),
        ("example@example.org", 20, 2)
    );
    let bonuses: Vec<LedgerRow> = ledger(&app.store)
        .await
        .into_iter()
        .filter(|t| t.reason.as_deref() == Some("signup_bonus"))
        .collect();
    assert_eq!(bonuses.len(), 1);
    assert_eq!(
        bonuses[0].webhook_event_id, None,
        "written by the lazy path"
    );
    assert_eq!(jobs(&app.store).await.len(), 1, "one metadata job");
    // Unknown to Clerk too: 404, and nothing written.
    let (s, _) = app.api(Method::GET, "/v1/users/user_nobody", None).await;
    assert_eq!(s, 404);
    assert_eq!(users(&app.store).await.len(), 1);
    assert_ledger_adds_up(&app.store).await;
}

/// Issue #31's brake on lazy provisioning: 40 concurrent first calls for one new user
/// cost one Clerk GET; 20 calls for a user Clerk does not have cost one GET, and the next
/// call within the 404's lifetime none; a deleted user is answered from its tombstone
/// with no GET; Clerk's 429 becomes a 503 that passes on its `Retry-After`.
async fn lazy_provisioning_asks_clerk_once_per_user(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    clerk.add_user(fixture_json("clerk-user-created.json")["data"].clone());
    // Clerk's latency: the calls overlap.
    clerk.delay_every_call(std::time::Duration::from_millis(200));
    let app = TestApp::spawn_with(&db, clerk.app_options()).await;
    let gets = |id: &str| {
        let path = format!("/v1/users/{id}");
        clerk
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    };
    let consume_all = |id: &str, n: usize| {
        let sends: Vec<_> = (0..n)
            .map(|k| {
                tokio::spawn(
                    app.http
                        .post(format!("{}/v1/users/{id}/credits/consume", app.address))
                        .bearer_auth(API_KEY)
                        .json(&json!({"amount": 1, "idempotencyKey": format!("first-{k}")}))
                        .send(),
                )
            })
            .collect();
        async move {
            let mut answers = Vec::new();
            for s in sends {
                answers.push(status_json(s.await.unwrap().unwrap()).await);
            }
            answers
        }
    };

    // 40 consumes of 1 from the signup's 20: 20 spend, 20 find nothing left.
    let answers = consume_all(CLERK_ID, 40).await;
    let count = |status: u16| answers.iter().filter(|(s, _)| *s == status).count();
    assert_eq!((count(200), count(402)), (20, 20), "{answers:?}");
    assert_eq!(gets(CLERK_ID), 1, "40 first calls, one GET");
    assert_eq!(app.credits_of(CLERK_ID).await, (0, 20, 20));
    assert_eq!(users(&app.store).await.len(), 1);

    let ghost = "user_2ghostNotInClerk0000000000";
    let answers = consume_all(ghost, 20).await;
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 404 && b["error"] == "user_not_found"),
        "{answers:?}"
    );
    assert_eq!(gets(ghost), 1, "20 calls for a user Clerk lacks, one GET");
    let (s, _) = app
        .api(Method::GET, &format!("/v1/users/{ghost}"), None)
        .await;
    assert_eq!(s, 404);
    assert_eq!(gets(ghost), 1, "the 404 is remembered");

    // Deleted by its webhook: answered from the tombstone.
    let (s, _) = status_json(
        app.post_webhook("msg_deleted", &fixture("clerk-user-deleted.json"))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = app
        .api(
            Method::POST,
            &format!("/v1/users/{CLERK_ID}/credits/consume"),
            consume(json!(1), "after-delete"),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (404, Some("user_not_found")),
        "{b}"
    );
    assert_eq!(gets(CLERK_ID), 1, "no GET for a deleted user");
    assert!(users(&app.store).await.is_empty());

    // Clerk's rate limit reaches the caller with its Retry-After.
    clerk.script(&[429]);
    let r = app
        .http
        .get(format!(
            "{}/v1/users/user_2limitedUser000000000000000",
            app.address
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let (_, b) = status_json(r).await;
    assert_eq!(b["error"], "clerk_unavailable");
}
