//! Hostile input that a valid signature or API key can still carry: NUL characters in a
//! user's text (they come from the person signing up), and bodies that are not JSON.

use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};

use crate::both_backends;
use crate::credits::{app_with_user, CLERK_ID};
use crate::helpers::*;

both_backends!(
    nul_characters_in_a_users_text_are_stored_as_the_replacement_character,
    credits_calls_that_are_not_json_are_refused_with_415,
);

/// PostgreSQL only: SQLite is a file, with no connection to refuse.
mod a_database_that_accepts_then_closes_gives_503 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_database_that_accepts_then_closes_gives_503().await
    }
}

/// A pooler or proxy in front of a database that is down accepts the connection, then
/// closes it (sqlx: "unexpected response from SSLRequest"). That is the database being
/// unreachable: 503 so Svix retries, like a refused connection, never 500.
async fn a_database_that_accepts_then_closes_gives_503() {
    let db = TestDb::new(Backend::Postgres).await;
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
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            database_url: Some(via.to_string()),
            transaction_timeout_ms: 2000,
            ..AppOptions::default()
        },
    )
    .await;
    proxy.accept_and_close();

    let body = fixture("clerk-user-created.json");
    let (s, b) = status_json(app.post_webhook("msg_closed", &body).await).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (503, Some("database_unavailable")),
        "{b}"
    );
    let (s, b) = app
        .api(reqwest::Method::GET, &format!("/v1/users/{CLERK_ID}"), None)
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (503, Some("database_unavailable")),
        "{b}"
    );
    assert!(users(&app.store).await.is_empty());
    assert!(events(&app.store).await.is_empty());
}

/// The stored payload of the event with this `svix-id`.
async fn payload_of(store: &clerk_sync::store::Store, msg_id: &str) -> Value {
    let payload: sqlx::types::Json<Value> = clerk_sync::with_pool!(store, |pool, _p| {
        sqlx::query_scalar(r#"SELECT "payload" FROM "WebhookEvent" WHERE "eventId" = $1"#)
            .bind(msg_id)
            .fetch_one(pool)
            .await
            .unwrap()
    });
    payload.0
}

/// PostgreSQL stores no NUL in `text` nor its escape in `jsonb`; SQLite stores both. A
/// `user.created` whose names, image, username, external id or the signing-up browser's
/// user agent hold one is applied on both, alike: each NUL becomes U+FFFD, and a
/// redelivery is a duplicate (before, PostgreSQL answered 500 on every redelivery).
async fn nul_characters_in_a_users_text_are_stored_as_the_replacement_character(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let mut event = fixture_json("clerk-user-created.json");
    event["data"]["first_name"] = json!("Ada\u{0}");
    event["data"]["last_name"] = json!("\u{0}Love\u{0}lace");
    event["data"]["image_url"] = json!("https://img.clerk.com/\u{0}x");
    event["data"]["username"] = json!("ada\u{0}");
    event["data"]["external_id"] = json!("\u{0}");
    event["event_attributes"] =
        json!({"http_request": {"client_ip": "127.0.0.1", "user_agent": "Mozilla\u{0}/5.0"}});
    let body = serde_json::to_vec(&event).unwrap();
    assert!(String::from_utf8_lossy(&body).contains("\\u0000"));

    for _ in 0..2 {
        let (s, b) = status_json(app.post_webhook("msg_nul", &body).await).await;
        assert_eq!(s, 200, "{b}");
    }
    let users = users(&app.store).await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].first_name.as_deref(), Some("Ada\u{FFFD}"));
    assert_eq!(
        users[0].last_name.as_deref(),
        Some("\u{FFFD}Love\u{FFFD}lace")
    );
    assert_eq!(users[0].photo, "https://img.clerk.com/\u{FFFD}x");
    assert_eq!(users[0].available, 20);
    let recorded = events(&app.store).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].status.as_deref(), Some("processed"));
    let payload = payload_of(&app.store, "msg_nul").await;
    assert_eq!(
        payload["event_attributes"]["http_request"]["user_agent"],
        "Mozilla\u{FFFD}/5.0"
    );
    assert_eq!(payload["data"]["username"], "ada\u{FFFD}");
    assert_eq!(ledger(&app.store).await.len(), 1);
    assert_eq!(jobs(&app.store).await.len(), 1);

    // An unknown type with a NUL is recorded as ignored, its type storable.
    let (s, b) = status_json(
        app.post_webhook("msg_nul_type", br#"{"type":"session.\u0000","data":{}}"#)
            .await,
    )
    .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ignored")), "{b}");
    let events = events(&app.store).await;
    assert_eq!(events[1].event_type, "session.\u{FFFD}");
    assert_ledger_adds_up(&app.store).await;
}

/// `/v1` bodies are JSON: any other (or no) Content-Type is 415 and moves nothing.
async fn credits_calls_that_are_not_json_are_refused_with_415(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = app_with_user(&db).await;
    let url = format!("{}/v1/users/{CLERK_ID}/credits/consume", app.address);
    let body = r#"{"amount": 1, "idempotencyKey": "k1"}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = app.http.post(&url).bearer_auth(API_KEY).body(body);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        let (s, b) = status_json(req.send().await.unwrap()).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (415, Some("unsupported_media_type")),
            "{content_type:?}: {b}"
        );
        assert!(b["message"].as_str().unwrap().contains("application/json"));
    }
    assert_eq!(app.credits_of(CLERK_ID).await, (20, 0, 20), "nothing moved");
    assert_eq!(ledger(&app.store).await.len(), 1, "the signup bonus only");

    let (s, b) = status_json(
        app.http
            .post(&url)
            .bearer_auth(API_KEY)
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["balanceAfter"].as_i64()), (200, Some(19)), "{b}");
}
