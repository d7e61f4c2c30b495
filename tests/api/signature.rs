//! What happens before the body is trusted: the official Svix vectors over HTTP, forged,
//! stale, future, missing-header and oversize requests. None of them changes a row.

use serde_json::Value;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    every_official_svix_vector_over_http,
    refused_requests_get_their_status_and_change_nothing,
    webhook_prefixed_headers_and_rotated_secrets_are_accepted,
);

async fn every_official_svix_vector_over_http(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vectors: Vec<Value> = serde_json::from_slice(&fixture("svix-vectors.json")).unwrap();
    assert!(vectors.len() >= 20, "the vector file is complete");
    let mut valid_ids = std::collections::BTreeSet::new();
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let opts = AppOptions {
            secret: v["secret"].as_str().unwrap().to_owned(),
            ..AppOptions::default()
        };
        let app = TestApp::spawn_clocked(&db, opts, Some(v["now"].as_i64().unwrap())).await;
        let msg_id = v["msg_id"].as_str().unwrap();
        let events_before = events(&app.store).await.len();

        let (status, body) = status_json(
            app.post_raw(
                &[
                    ("svix-id", msg_id),
                    (
                        "svix-timestamp",
                        &v["timestamp"].as_i64().unwrap().to_string(),
                    ),
                    ("svix-signature", v["signature"].as_str().unwrap()),
                ],
                v["payload"].as_str().unwrap().as_bytes().to_vec(),
            )
            .await,
        )
        .await;

        match v["expected"].as_str().unwrap() {
            "valid" => {
                // Accepted; the body is not a Clerk event, so it is recorded as failed once.
                assert_eq!(status, 200, "{name}: {body}");
                valid_ids.insert(msg_id.to_owned());
            }
            _ => {
                assert_eq!(status, 401, "{name}: {body}");
                assert!(
                    matches!(
                        body["error"].as_str(),
                        Some("invalid_signature" | "timestamp_out_of_tolerance")
                    ),
                    "{name}: {body}"
                );
                assert_eq!(
                    events(&app.store).await.len(),
                    events_before,
                    "{name} wrote a row"
                );
            }
        }
        app.stop().await;
    }
    let store = db.store().await;
    let recorded: std::collections::BTreeSet<String> = events(&store)
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        recorded, valid_ids,
        "exactly the valid messages were recorded"
    );
    assert!(users(&store).await.is_empty());
}

/// name, headers, body, expected status, expected error code
type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<u8>, u16, &'a str);

async fn refused_requests_get_their_status_and_change_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let body = fixture("clerk-user-created.json");
    let now = chrono::Utc::now().timestamp();
    let sig = |ts: i64| clerk_sync::webhooks::sign(&app.secret, "msg_r", ts, &body);
    let other =
        clerk_sync::webhooks::WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .unwrap();
    let forged = clerk_sync::webhooks::sign(&other, "msg_r", now, &body);
    let now_s = now.to_string();
    let stale_s = (now - 301).to_string();
    let future_s = (now + 301).to_string();

    let cases: Vec<Case> = vec![
        (
            "forged",
            vec![
                ("svix-id", "msg_r".into()),
                ("svix-timestamp", now_s.clone()),
                ("svix-signature", forged),
            ],
            body.clone(),
            401,
            "invalid_signature",
        ),
        (
            "tampered body",
            vec![
                ("svix-id", "msg_r".into()),
                ("svix-timestamp", now_s.clone()),
                ("svix-signature", sig(now)),
            ],
            [body.clone(), b" ".to_vec()].concat(),
            401,
            "invalid_signature",
        ),
        (
            "stale",
            vec![
                ("svix-id", "msg_r".into()),
                ("svix-timestamp", stale_s.clone()),
                ("svix-signature", sig(now - 301)),
            ],
            body.clone(),
            401,
            "timestamp_out_of_tolerance",
        ),
        (
            "future",
            vec![
                ("svix-id", "msg_r".into()),
                ("svix-timestamp", future_s.clone()),
                ("svix-signature", sig(now + 301)),
            ],
            body.clone(),
            401,
            "timestamp_out_of_tolerance",
        ),
        (
            "missing signature",
            vec![
                ("svix-id", "msg_r".into()),
                ("svix-timestamp", now_s.clone()),
            ],
            body.clone(),
            400,
            "missing_svix_headers",
        ),
        (
            "missing all",
            vec![],
            body.clone(),
            400,
            "missing_svix_headers",
        ),
        (
            "bad timestamp",
            vec![
                ("svix-id", "msg_r".into()),
                ("svix-timestamp", "soon".into()),
                ("svix-signature", sig(now)),
            ],
            body.clone(),
            400,
            "malformed_svix_headers",
        ),
    ];
    for (name, headers, payload, want_status, want_code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, json) = status_json(app.post_raw(&headers, payload).await).await;
        assert_eq!(status, want_status, "{name}: {json}");
        assert_eq!(json["error"], want_code, "{name}: {json}");
        assert!(json["message"].is_string(), "{name}: {json}");
    }

    // Oversize, declared by Content-Length (300 KiB) or sent chunked with none: 413.
    // Over raw TCP, because the server answers before the client has written the body
    // and an HTTP client may see the closed connection first.
    let head =
        format!("svix-id: msg_big\r\nsvix-timestamp: {now_s}\r\nsvix-signature: v1,AAAA\r\n");
    let big = vec![b' '; 300 * 1024];
    for framing in [Framing::ContentLength, Framing::Chunked] {
        let (status, json) =
            raw_post(&app.address, "/api/webhooks/clerk", &head, &big, framing).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (413, Some("payload_too_large")),
            "{framing:?}"
        );
    }

    assert!(events(&app.store).await.is_empty());
    assert!(users(&app.store).await.is_empty());
    assert!(ledger(&app.store).await.is_empty());
}

async fn webhook_prefixed_headers_and_rotated_secrets_are_accepted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let new_secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let opts = AppOptions {
        secret: format!("{SECRET} {new_secret}"),
        ..AppOptions::default()
    };
    let app = TestApp::spawn_with(&db, opts).await;
    let body = fixture("clerk-user-created.json");
    let now = chrono::Utc::now().timestamp();
    let signed_by_new = clerk_sync::webhooks::sign(
        &clerk_sync::webhooks::WebhookSecret::parse(new_secret).unwrap(),
        "msg_rot",
        now,
        &body,
    );

    let (status, json) = status_json(
        app.post_raw(
            &[
                ("webhook-id", "msg_rot"),
                ("webhook-timestamp", &now.to_string()),
                ("webhook-signature", &format!("v1,bm9wZQ== {signed_by_new}")),
            ],
            body,
        )
        .await,
    )
    .await;

    assert_eq!(status, 200, "{json}");
    assert_eq!(json["status"], "processed");
    assert_eq!(users(&app.store).await.len(), 1);
}
