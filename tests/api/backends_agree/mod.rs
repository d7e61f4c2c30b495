//! PostgreSQL and SQLite decide the same things differently: on PostgreSQL the signup
//! transaction and a credits movement are each ONE statement that decides in SQL `CASE`,
//! on SQLite they run step by step and decide in Rust `if`. This test runs one sequence
//! of webhooks and credits calls through both and compares every answer and every row
//! written, column by column. Generated ids become labels in order of appearance, and
//! timestamps what can be compared across two runs (set or not, equal to another or not).

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;
use snapshot::snapshot;

mod snapshot;

const ALICE: &str = "user_29w83sxmDNGwOuEthce5gg56FcC";
const BOB: &str = "user_2bobbbbbbbbbbbbbbbbbbbbbbb";
const CAROL: &str = "user_2carolcarolcarolcarolcaro";

fn user_event(kind: &str, clerk_id: &str, email: &str, updated_at: i64) -> Vec<u8> {
    let mut event = fixture_json("clerk-user-created.json");
    event["type"] = json!(kind);
    event["data"]["id"] = json!(clerk_id);
    event["data"]["email_addresses"][0]["email_address"] = json!(email);
    event["data"]["updated_at"] = json!(updated_at);
    serde_json::to_vec(&event).unwrap()
}

fn deleted_event(clerk_id: &str) -> Vec<u8> {
    let mut event = fixture_json("clerk-user-deleted.json");
    event["data"]["id"] = json!(clerk_id);
    serde_json::to_vec(&event).unwrap()
}

/// Every answer of one run and every row it wrote, normalised.
#[derive(Debug)]
struct Run {
    answers: Vec<(String, u16, Value)>,
    tables: BTreeMap<&'static str, Vec<BTreeMap<&'static str, Value>>>,
}

async fn run(backend: Backend) -> Run {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let mut carol = fixture_json("clerk-user-created.json")["data"].clone();
    carol["id"] = json!(CAROL);
    carol["email_addresses"][0]["email_address"] = json!("carol@example.org");
    clerk.add_user(carol);
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            clerk_api_url: Some(clerk.url.clone()),
            clerk_secret_key: Some(FakeClerk::KEY.to_owned()),
            ..AppOptions::default()
        },
    )
    .await;

    let mut answers = Vec::new();
    let webhooks: Vec<(&str, Vec<u8>)> = vec![
        (
            "msg_a1",
            user_event("user.created", ALICE, "alice@example.org", 1_000),
        ),
        // The same message again: a duplicate.
        (
            "msg_a1",
            user_event("user.created", ALICE, "alice@example.org", 1_000),
        ),
        (
            "msg_a2",
            user_event("user.updated", ALICE, "alice@new.example.org", 2_000),
        ),
        // Older than what was applied: stale.
        (
            "msg_a3",
            user_event("user.updated", ALICE, "alice@old.example.org", 1_500),
        ),
        // Alice's address, for another Clerk user: failed, and no user.
        (
            "msg_b1",
            user_event("user.created", BOB, "alice@new.example.org", 1_000),
        ),
        // Bob again, with an address of his own: created.
        (
            "msg_b2",
            user_event("user.created", BOB, "bob@example.org", 1_100),
        ),
        (
            "msg_x1",
            br#"{"type":"session.created","data":{},"timestamp":1}"#.to_vec(),
        ),
        ("msg_x2", fixture("clerk-user-created-no-email.json")),
        ("msg_x3", b"{not json".to_vec()),
    ];
    for (msg_id, body) in &webhooks {
        let (s, b) = status_json(app.post_webhook(msg_id, body).await).await;
        answers.push((format!("webhook {msg_id}"), s, b));
    }
    let calls: Vec<(&str, &str, Value)> = vec![
        (
            "consume",
            ALICE,
            json!({"amount": 3, "idempotencyKey": "k1"}),
        ),
        // A replay, a reuse for a different request, a refusal.
        (
            "consume",
            ALICE,
            json!({"amount": 3, "idempotencyKey": "k1"}),
        ),
        (
            "consume",
            ALICE,
            json!({"amount": 4, "idempotencyKey": "k1"}),
        ),
        (
            "consume",
            ALICE,
            json!({"amount": 100, "idempotencyKey": "k2"}),
        ),
        (
            "grant",
            ALICE,
            json!({"amount": 5, "kind": "purchase", "idempotencyKey": "k3", "reference": "pi_1"}),
        ),
        (
            "consume",
            BOB,
            json!({"amount": 20, "idempotencyKey": "k4"}),
        ),
        (
            "grant",
            BOB,
            json!({"amount": 1000000, "kind": "grant", "idempotencyKey": "k5"}),
        ),
        ("consume", BOB, json!({"amount": 1, "idempotencyKey": "k6"})),
        // Unknown here, known to Clerk: provisioned, then moved.
        (
            "consume",
            CAROL,
            json!({"amount": 2, "idempotencyKey": "k7"}),
        ),
        (
            "consume",
            "user_2nobodynobodynobodynobody",
            json!({"amount": 1, "idempotencyKey": "k8"}),
        ),
    ];
    for (op, clerk_id, body) in calls {
        let path = format!("/v1/users/{clerk_id}/credits/{op}");
        let (s, b) = app.api(Method::POST, &path, Some(body.clone())).await;
        answers.push((format!("{op} {clerk_id} {body}"), s, b));
    }
    for (msg_id, body) in [
        ("msg_a4", deleted_event(ALICE)),
        // After the delete: does not bring Alice back.
        (
            "msg_a5",
            user_event("user.updated", ALICE, "alice@new.example.org", 9_000),
        ),
    ] {
        let (s, b) = status_json(app.post_webhook(msg_id, &body).await).await;
        answers.push((format!("webhook {msg_id}"), s, b));
    }
    let (s, mut b) = app
        .api(Method::GET, &format!("/v1/users/{BOB}/ledger"), None)
        .await;
    // Newest first by (`createdAt`, `id`): rows written in the same millisecond are in
    // the order of their random ids, on either backend.
    if let Some(items) = b["items"].as_array_mut() {
        items.sort_by_key(|i| i["idempotencyKey"].as_str().map(str::to_owned));
    }
    answers.push(("ledger of Bob".into(), s, b));

    let tables = snapshot(&app.store).await;
    app.stop().await;
    let mut labels = Labels::default();
    let answers = answers
        .into_iter()
        .map(|(what, s, b)| (what, s, labels.value(b)))
        .collect();
    let tables = tables
        .into_iter()
        .map(|(table, rows)| {
            let rows = rows
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|(column, v)| (column, labels.value(v)))
                        .collect()
                })
                .collect();
            (table, rows)
        })
        .collect();
    Run { answers, tables }
}

/// Generated ids (cuids: 24 lowercase alphanumerics) become `id#n` in order of first
/// appearance, so two runs compare equal when they wrote the same rows.
#[derive(Default)]
struct Labels(Vec<String>);

impl Labels {
    fn label(&mut self, id: &str) -> String {
        let n = match self.0.iter().position(|known| known == id) {
            Some(n) => n,
            None => {
                self.0.push(id.to_owned());
                self.0.len() - 1
            }
        };
        format!("id#{n}")
    }

    fn value(&mut self, v: Value) -> Value {
        match v {
            Value::String(s) if is_cuid(&s) => Value::String(self.label(&s)),
            Value::String(s) => match s.split_once('.') {
                // A ledger cursor: `<ms>.<id>`.
                Some((ms, id)) if ms.parse::<i64>().is_ok() && is_cuid(id) => {
                    Value::String(format!("cursor({})", self.label(id)))
                }
                _ => Value::String(s),
            },
            Value::Array(items) => Value::Array(items.into_iter().map(|i| self.value(i)).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let v = match k.as_str() {
                            // Times differ between runs; whether they are there does not.
                            "createdAt" | "updatedAt" => json!(!v.is_null()),
                            _ => self.value(v),
                        };
                        (k, v)
                    })
                    .collect(),
            ),
            other => other,
        }
    }
}

fn is_cuid(s: &str) -> bool {
    s.len() == 24
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_sqlite_answer_and_write_alike() {
    let pg = run(Backend::Postgres).await;
    let lite = run(Backend::Sqlite).await;

    assert_eq!(pg.answers.len(), lite.answers.len());
    for ((what, pg_status, pg_body), (_, lite_status, lite_body)) in
        pg.answers.iter().zip(&lite.answers)
    {
        assert_eq!(
            (pg_status, pg_body),
            (lite_status, lite_body),
            "answers differ for {what}"
        );
    }
    assert_eq!(
        pg.tables.keys().collect::<Vec<_>>(),
        lite.tables.keys().collect::<Vec<_>>()
    );
    for (table, pg_rows) in &pg.tables {
        let lite_rows = &lite.tables[table];
        assert_eq!(
            pg_rows.len(),
            lite_rows.len(),
            "{table}: {pg_rows:#?}\nvs\n{lite_rows:#?}"
        );
        for (i, (p, l)) in pg_rows.iter().zip(lite_rows).enumerate() {
            assert_eq!(
                p.keys().collect::<Vec<_>>(),
                l.keys().collect::<Vec<_>>(),
                "{table} row {i}: columns"
            );
            for (column, pg_value) in p {
                assert_eq!(
                    pg_value, &l[column],
                    "{table} row {i} column {column}: PostgreSQL wrote {pg_value}, SQLite {}",
                    l[column]
                );
            }
        }
    }
    // The sequence reached every decision it was written for.
    let statuses: Vec<&str> = pg.tables["WebhookEvent"]
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    for status in ["processed", "ignored", "failed"] {
        assert!(statuses.contains(&status), "{status} in {statuses:?}");
    }
    let refused: Vec<u16> = pg.answers.iter().map(|(_, s, _)| *s).collect();
    for code in [200, 402, 404, 409] {
        assert!(refused.contains(&code), "{code} in {refused:?}");
    }
}
