//! Connections the service does not control: idle, silent, half-sent, too many, and
//! still open at shutdown. Each is bounded by a setting (`HEADER_READ_TIMEOUT_MS`,
//! `MAX_CONNECTIONS`, `SHUTDOWN_DRAIN_MS`); the bounds asserted here are generous multiples
//! of the settings, to say "it ends", not how fast.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    idle_silent_and_half_sent_connections_are_closed,
    connections_over_the_limit_wait_and_are_served_when_one_closes,
    shutdown_ends_within_the_drain_time_with_a_client_holding_half_sent_headers,
    a_body_that_stops_arriving_is_answered_408,
    a_huge_declared_length_is_refused_at_once,
);

/// Send `head` (a request's headers and the start of its body) and read the answer's status.
async fn status_of_raw(app: &TestApp, head: &str) -> u16 {
    let mut stream = TcpStream::connect(host_port(app)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = closed_or_answered(&mut stream, Duration::from_secs(40)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// The bytes the server sent until it closed, or until it sent a whole head.
async fn closed_or_answered(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    seen
}

/// A body announced as 100 bytes of which 10 arrive: 408 once `BODY_READ_TIMEOUT` has
/// passed, not a 503 from the request timeout, and nothing moved.
async fn a_body_that_stops_arriving_is_answered_408(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = crate::credits::app_with_user(&db).await;
    let head = format!(
        "POST /v1/users/{}/credits/consume HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"amount\":",
        crate::credits::CLERK_ID
    );
    assert_eq!(status_of_raw(&app, &head).await, 408);
    assert_eq!(app.credits_of(crate::credits::CLERK_ID).await, (20, 0, 20));
}

/// A declared length over the limit is refused before any of the body is read.
async fn a_huge_declared_length_is_refused_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = crate::credits::app_with_user(&db).await;
    let v1 = format!(
        "POST /v1/users/{}/credits/consume HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: 99999999999\r\n\r\n{{",
        crate::credits::CLERK_ID
    );
    assert_eq!(status_of_raw(&app, &v1).await, 413);
    let hook = "POST /api/webhooks/clerk HTTP/1.1\r\nHost: x\r\nsvix-id: msg_1\r\nsvix-timestamp: 1\r\nsvix-signature: v1,x\r\ncontent-type: application/json\r\ncontent-length: 99999999999\r\n\r\n{";
    assert_eq!(status_of_raw(&app, hook).await, 413);
    assert_eq!(app.credits_of(crate::credits::CLERK_ID).await, (20, 0, 20));
}

/// Waits for the server to close `stream`: the read that returns 0 bytes.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server kept the connection open for {within:?}"));
    seen
}

fn host_port(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

async fn idle_silent_and_half_sent_connections_are_closed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            header_read_timeout_ms: Some(300),
            ..AppOptions::default()
        },
    )
    .await;
    let addr = host_port(&app);

    // Silent: connects and sends nothing.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // Half-sent: the start of a webhook's headers, then nothing.
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"POST /api/webhooks/clerk HTTP/1.1\r\nHost: x\r\nsvix-id: m")
        .await
        .unwrap();
    // Idle keep-alive: one request answered, then nothing.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    let bound = Duration::from_secs(10);
    closed_by_server(&mut silent, bound).await;
    closed_by_server(&mut half, bound).await;
    let answered = closed_by_server(&mut idle, bound).await;
    assert!(
        String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answered)
    );
    // Nothing was written by the half-sent webhook, and the service still answers.
    assert!(events(&app.store).await.is_empty());
    let (s, _) = status_json(app.get("/healthz").await).await;
    assert_eq!(s, 200);
}

async fn connections_over_the_limit_wait_and_are_served_when_one_closes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            max_connections: Some(3),
            header_read_timeout_ms: Some(60_000),
            ..AppOptions::default()
        },
    )
    .await;
    let addr = host_port(&app);
    // Two silent connections, and the test's own client (it keeps its connection open
    // between requests) reading the gauge: three, the limit.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    wait_for_metric(&app, "clerk_sync_http_connections", 3.0).await;

    // A fourth connection is accepted by the kernel but not served while three are open.
    let waiting = tokio::spawn({
        let client = reqwest::Client::new();
        let url = format!("{}/healthz", app.address);
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served past MAX_CONNECTIONS");

    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);

    // The silent ones closed: only the test's own connection is left open.
    drop(held);
    for _ in 0..500 {
        if metric(&app, "clerk_sync_http_connections").await <= 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("closed connections are still counted");
}

async fn shutdown_ends_within_the_drain_time_with_a_client_holding_half_sent_headers(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            // Longer than the test: only the drain can end this connection.
            header_read_timeout_ms: Some(600_000),
            shutdown_drain_ms: Some(500),
            ..AppOptions::default()
        },
    )
    .await;
    let mut half = TcpStream::connect(host_port(&app)).await.unwrap();
    half.write_all(b"POST /api/webhooks/clerk HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (s, b) = status_json(
        app.post_webhook("msg_before_stop", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!(
        (s, b),
        (200, json!({"status": "processed", "action": "created"}))
    );
    let store = db.store().await;

    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("shutdown finished although a client held half-sent headers");
    closed_by_server(&mut half, Duration::from_secs(10)).await;
    assert_eq!(users(&store).await.len(), 1);
}
