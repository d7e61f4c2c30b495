//! Mutated requests against the real binary: invalid ones (bad or missing signatures,
//! malformed headers, huge declared lengths, bad API keys, bodies that are not what they
//! claim) must change no row; signed webhooks with hostile payloads (NUL and other
//! control characters, deep nesting, wrong types) must be answered 200 and recorded. No
//! request may get a 5xx, and the process must not panic.

use std::time::Duration;

use clerk_sync::webhooks::{sign, WebhookSecret};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::helpers::*;
use crate::{Row, Tally};

const CONTROL: [&str; 6] = [
    "\u{0}",
    "\u{1}",
    "\u{7f}",
    "\u{1b}[31m",
    "\u{202e}",
    "\u{feff}",
];

fn hostile_text(rng: &mut impl Rng) -> String {
    let mut s = String::from("Ada");
    for _ in 0..rng.gen_range(1..4) {
        let boundaries: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
        s.insert_str(
            *boundaries.choose(rng).unwrap(),
            CONTROL.choose(rng).unwrap(),
        );
    }
    s
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("x"), |inner, _| json!([inner]))
}

/// A signed `user.created` whose payload is mutated in one way.
fn hostile_event(rng: &mut impl Rng, i: usize) -> Vec<u8> {
    let mut e = fixture_json("clerk-user-created.json");
    e["data"]["id"] = json!(format!("user_fuzz{i}"));
    e["data"]["email_addresses"][0]["email_address"] = json!(format!("fuzz{i}@example.org"));
    match rng.gen_range(0..8) {
        0 => e["data"]["first_name"] = json!(hostile_text(rng)),
        1 => e["data"]["last_name"] = json!(hostile_text(rng)),
        2 => e["data"]["image_url"] = json!(hostile_text(rng)),
        3 => {
            e["event_attributes"] =
                json!({"http_request": {"user_agent": hostile_text(rng), "client_ip": ""}})
        }
        4 => e["data"]["extra"] = nested(rng.gen_range(100..400)),
        5 => e["data"]["updated_at"] = json!(hostile_text(rng)),
        6 => e["type"] = json!(hostile_text(rng)),
        _ => e["data"]["email_addresses"][0]["email_address"] = json!(hostile_text(rng)),
    }
    serde_json::to_vec(&e).unwrap()
}

/// Row counts of the tables a request could change.
async fn counts(store: &clerk_sync::store::Store) -> [usize; 4] {
    [
        users(store).await.len(),
        events(store).await.len(),
        ledger(store).await.len(),
        jobs(store).await.len(),
    ]
}

/// A request with a huge declared length and a short body, over raw TCP.
async fn huge_declared_length(port: u16, path: &str, auth: &str) -> u16 {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n{auth}content-length: 99999999999\r\n\r\n{{\"a\":"
    );
    let _ = s.write_all(head.as_bytes()).await;
    let mut buf = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
    match read {
        Ok(Ok(n)) if n >= 12 => String::from_utf8_lossy(&buf[9..12]).parse().unwrap_or(0),
        _ => 0,
    }
}

pub async fn fuzz(n: usize) -> Row {
    let db = TestDb::new(Backend::Postgres).await;
    let service = Service::start(&[
        ("DATABASE_URL", db.url.clone()),
        ("CLERK_WEBHOOK_SIGNING_SECRET", SECRET.to_owned()),
        ("CLERK_SYNC_API_KEYS", API_KEY.to_owned()),
    ])
    .await;
    let store = db.store().await;
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let hook = service.webhook_url();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261130);
    let valid = fixture("clerk-user-created.json");
    let mut statuses: std::collections::BTreeMap<u16, usize> = Default::default();
    let mut problems = Vec::new();

    // Invalid requests: nothing may change.
    let before = counts(&store).await;
    let invalid = n * 7 / 10;
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..invalid {
        let now = chrono::Utc::now().timestamp();
        let msg = format!("msg_fuzz_bad{i}");
        let good_sig = sign(&secret, &msg, now, &valid);
        let kind = rng.gen_range(0..12);
        let mut body = valid.clone();
        if kind % 3 == 0 {
            let at = rng.gen_range(0..body.len());
            body[at] = rng.gen();
        }
        let (client, hook, base, port) = (
            client.clone(),
            hook.clone(),
            service.base.clone(),
            service.port,
        );
        let sig = {
            let mut s = good_sig.clone().into_bytes();
            let at = rng.gen_range(6..s.len());
            s[at] = if s[at] == b'A' { b'B' } else { b'A' };
            String::from_utf8_lossy(&s).into_owned()
        };
        let noise: String = (0..rng.gen_range(0..64))
            .map(|_| char::from(rng.gen_range(0x20u8..0x7f)))
            .collect();
        pending.spawn(async move {
            let post = |url: String| client.post(url).header("content-type", "application/json");
            let sent = match kind {
                // A signature that does not match.
                0 | 1 => {
                    post(hook)
                        .header("svix-id", &msg)
                        .header("svix-timestamp", now.to_string())
                        .header("svix-signature", sig)
                        .body(body)
                        .send()
                        .await
                }
                // Headers missing or malformed.
                2 => post(hook).body(body).send().await,
                3 => {
                    post(hook)
                        .header("svix-id", &noise)
                        .header("svix-timestamp", &noise)
                        .header("svix-signature", &noise)
                        .body(body)
                        .send()
                        .await
                }
                // Signed, but outside the timestamp tolerance.
                4 => {
                    let old = now - 3600;
                    post(hook)
                        .header("svix-id", &msg)
                        .header("svix-timestamp", old.to_string())
                        .header(
                            "svix-signature",
                            sign(&WebhookSecret::parse(SECRET).unwrap(), &msg, old, &body),
                        )
                        .body(body)
                        .send()
                        .await
                }
                // A huge declared length.
                5 => return huge_declared_length(port, "/api/webhooks/clerk", "").await,
                6 => {
                    return huge_declared_length(
                        port,
                        &format!("/v1/users/user_fuzz{i}/credits/consume"),
                        &format!("authorization: Bearer {API_KEY}\r\n"),
                    )
                    .await
                }
                // The credits API: no key, a wrong key, bodies that are not valid.
                7 => {
                    post(format!("{base}/v1/users/user_fuzz{i}/credits/consume"))
                        .body(r#"{"amount":1,"idempotencyKey":"k"}"#)
                        .send()
                        .await
                }
                8 => {
                    post(format!("{base}/v1/users/user_fuzz{i}/credits/grant"))
                        .bearer_auth(&noise)
                        .body(body)
                        .send()
                        .await
                }
                9 => {
                    post(format!(
                        "{base}/v1/users/user_29w83sxmDNGwOuEthce5gg56FcC/credits/consume"
                    ))
                    .bearer_auth(API_KEY)
                    .body(body)
                    .send()
                    .await
                }
                10 => {
                    client
                        .post(format!(
                            "{base}/v1/users/user_29w83sxmDNGwOuEthce5gg56FcC/credits/consume"
                        ))
                        .bearer_auth(API_KEY)
                        .header("content-type", "text/plain")
                        .body(r#"{"amount":1,"idempotencyKey":"k"}"#)
                        .send()
                        .await
                }
                // A path or method that does not exist.
                _ => {
                    client
                        .request(reqwest::Method::DELETE, format!("{base}/{noise}"))
                        .send()
                        .await
                }
            };
            sent.map(|r| r.status().as_u16()).unwrap_or(0)
        });
        if pending.len() >= 32 {
            let s = pending.join_next().await.unwrap().unwrap();
            *statuses.entry(s).or_default() += 1;
        }
    }
    while let Some(s) = pending.join_next().await {
        *statuses.entry(s.unwrap()).or_default() += 1;
    }
    let after = counts(&store).await;
    if after != before {
        problems.push(format!(
            "invalid requests changed rows: {before:?} -> {after:?}"
        ));
    }

    // Signed webhooks with hostile payloads: each answered 200 and recorded.
    let signed = n - invalid;
    let mut answered_200 = 0;
    for i in 0..signed {
        let body = hostile_event(&mut rng, i);
        let msg = format!("msg_fuzz_signed{i}");
        let now = chrono::Utc::now().timestamp();
        let status = client
            .post(&hook)
            .header("content-type", "application/json")
            .header("svix-id", &msg)
            .header("svix-timestamp", now.to_string())
            .header("svix-signature", sign(&secret, &msg, now, &body))
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        *statuses.entry(status).or_default() += 1;
        if status == 200 {
            answered_200 += 1;
        }
    }
    if answered_200 != signed {
        problems.push(format!(
            "{} of {signed} signed webhooks not answered 200",
            signed - answered_200
        ));
    }
    let recorded = events(&store).await.len() - before[1];
    if recorded != signed {
        problems.push(format!(
            "{recorded} events recorded for {signed} signed webhooks"
        ));
    }
    let server_errors: usize = statuses.range(500..).map(|(_, n)| n).sum();
    if server_errors > 0 {
        problems.push(format!("{server_errors} answers were 5xx: {statuses:?}"));
    }
    if statuses.contains_key(&0) {
        problems.push(format!("{} requests got no answer", statuses[&0]));
    }
    let log = service.log_text();
    if log.contains("panicked") {
        problems.push("the service panicked".into());
    }
    store.close().await;
    Row {
        scenario: "fuzz".into(),
        load: format!("{n} mutated requests ({invalid} invalid, {signed} signed with hostile payloads)"),
        fault: "bad/missing signatures and keys, huge declared lengths, NUL and control characters, nesting 100–400 deep, wrong types".into(),
        tally: Tally::default(),
        measured: format!("answers by status: {statuses:?}; 0 rows changed by invalid requests"),
        problems,
    }
}
