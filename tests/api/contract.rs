//! The API as its OpenAPI document says: every response described, every limit a
//! schema keyword, times in RFC 3339 with `Z`, and a JSON error body for every rejection
//! axum's extractors make. `contract_tools.rs` runs the independent tools against it.

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    the_document_describes_every_answer_and_limit,
    every_rejection_is_a_json_error_and_times_have_z,
);

async fn the_document_describes_every_answer_and_limit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let (_, doc) = status_json(app.get("/openapi.json").await).await;
    let mut responses = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                responses += 1;
                let d = response["description"].as_str().unwrap_or("");
                assert!(!d.is_empty(), "{method} {path} {status} has no description");
            }
        }
    }
    assert!(responses >= 30, "{responses}");
    let schemas = &doc["components"]["schemas"];
    let consume = &schemas["ConsumeRequest"]["properties"];
    assert_eq!(consume["amount"]["minimum"], 1);
    assert_eq!(consume["amount"]["maximum"], 1_000_000);
    assert_eq!(consume["idempotencyKey"]["maxLength"], 200);
    assert_eq!(consume["idempotencyKey"]["minLength"], 1);
    let ledger = &doc["paths"]["/v1/users/{clerk_id}/ledger"]["get"]["parameters"];
    let param = |name: &str| {
        ledger
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["schema"]
            .clone()
    };
    assert_eq!(param("limit")["minimum"], 1);
    assert_eq!(param("limit")["maximum"], 200);
    assert_eq!(param("clerk_id")["pattern"], "^[A-Za-z0-9_]+$");
    assert_eq!(param("clerk_id")["maxLength"], 128);
    let webhook = &doc["paths"]["/api/webhooks/clerk"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    assert_eq!(webhook["$ref"], "#/components/schemas/ClerkEvent");
    assert_eq!(
        schemas["UserCredits"]["properties"]["createdAt"]["format"],
        "date-time"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    app.stop().await;
}

async fn every_rejection_is_a_json_error_and_times_have_z(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    app.post_webhook("msg_contract", &created_for("contract"))
        .await;
    let base = "/v1/users/user_contract";

    let (s, b) = app
        .api(Method::GET, &format!("{base}/ledger?limit=1&limit=2"), None)
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_request")),
        "{b}"
    );
    assert!(b["message"].as_str().unwrap().contains("`limit`"), "{b}");

    let r = app
        .http
        .delete(format!("{}{base}/ledger", app.address))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET,HEAD");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"], "method_not_allowed");

    // JSON Schema's integer: 27.0 is one, 27.5 is not.
    let (s, b) = app
        .api(
            Method::POST,
            &format!("{base}/credits/consume"),
            Some(json!({"amount": 2.0, "idempotencyKey": "c1"})),
        )
        .await;
    assert_eq!((s, b["amount"].as_i64()), (200, Some(2)), "{b}");
    let (s, b) = app
        .api(
            Method::POST,
            &format!("{base}/credits/consume"),
            Some(json!({"amount": 2.5, "idempotencyKey": "c2"})),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_request")),
        "{b}"
    );

    let (_, user) = app.api(Method::GET, base, None).await;
    let (_, page) = app.api(Method::GET, &format!("{base}/ledger"), None).await;
    for t in [
        &user["createdAt"],
        &user["updatedAt"],
        &page["items"][0]["createdAt"],
    ] {
        let t = t.as_str().unwrap();
        assert!(t.ends_with('Z'), "{t}");
        chrono::DateTime::parse_from_rfc3339(t).unwrap();
    }
    app.stop().await;
}
