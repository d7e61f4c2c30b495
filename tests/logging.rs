//! Log lines: structured, carrying request and svix ids, and never an email address,
//! a secret or a payload. Its own test binary, because it installs the global subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};

use clerk_sync::cli::LogFormat;
use clerk_sync::telemetry::{subscriber, DEFAULT_FILTER};
use serde_json::Value;
use tracing_subscriber::EnvFilter;

#[allow(dead_code, unused_imports)]
#[path = "api/helpers/mod.rs"]
mod helpers;

use helpers::*;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Sink;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Both backends in one test: the global subscriber can be installed only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_ids_and_no_personal_data_or_secrets() {
    let sink = Sink::default();
    tracing::subscriber::set_global_default(subscriber(
        LogFormat::Json,
        EnvFilter::new(DEFAULT_FILTER),
        sink.clone(),
    ))
    .unwrap();

    for backend in [Backend::Postgres, Backend::Sqlite] {
        let db = TestDb::new(backend).await;
        let clerk = FakeClerk::start().await;
        let app = TestApp::spawn_with(
            &db,
            AppOptions {
                clerk_api_url: Some(clerk.url.clone()),
                clerk_secret_key: Some(FakeClerk::KEY.to_owned()),
                ..AppOptions::default()
            },
        )
        .await;
        let mut other: Value = fixture_json("clerk-user-created.json");
        other["data"]["id"] = "user_other".into();
        app.post_webhook("msg_log_1", &fixture("clerk-user-created.json"))
            .await;
        app.post_webhook("msg_log_2", &serde_json::to_vec(&other).unwrap())
            .await;
        app.post_webhook("msg_log_3", &fixture("clerk-user-updated.json"))
            .await;
        app.post_webhook("msg_log_4", &fixture("clerk-user-deleted.json"))
            .await;
        app.post_raw(&[("svix-id", "msg_log_5")], b"{}".to_vec())
            .await;
        for probe in ["/healthz", "/readyz", "/metrics"] {
            app.get(probe).await;
        }
        clerk.script(&[500]);
        step_worker(&app.store, &clerk).await;
        app.stop().await;
    }

    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    assert!(
        lines.len() > 20,
        "expected a log, got {} lines",
        lines.len()
    );
    for forbidden in [
        "@example.org",
        "example.new",
        "whsec_",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        FakeClerk::KEY,
        "img.clerk.com",
    ] {
        assert!(!text.contains(forbidden), "log contains {forbidden:?}");
    }
    let spans_of = |message: &str| -> Vec<&Value> {
        lines.iter().filter(|l| l["message"] == message).collect()
    };
    for message in [
        "user creation started",
        "user created",
        "transaction completed",
        "webhook event failed permanently",
    ] {
        let found = spans_of(message);
        assert!(found.len() >= 2, "{message:?} on each backend");
        for line in found {
            let spans = line["spans"].as_array().expect("span list");
            let field = |name: &str| spans.iter().find_map(|s| s.get(name).cloned());
            assert!(
                field("request_id").is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty())),
                "{line}"
            );
            assert!(
                field("svix_id").is_some_and(|v| v.as_str().unwrap().starts_with("msg_log_")),
                "{line}"
            );
            assert!(field("event_type").is_some(), "{line}");
        }
    }
    // Every answer logged names its method and route; the probes' are not logged at info.
    let answers = spans_of("finished processing request");
    assert!(answers.len() >= 10, "{}", answers.len());
    for line in answers {
        let spans = line["spans"].as_array().expect("span list");
        let route = spans.iter().find_map(|s| s.get("route")).expect("route");
        assert!(spans.iter().any(|s| s.get("method").is_some()), "{line}");
        assert!(
            line["status"].is_u64() && line["latency_ms"].is_f64(),
            "{line}"
        );
        assert!(
            !["/healthz", "/readyz", "/metrics"].contains(&route.as_str().unwrap()),
            "{line}"
        );
    }
    assert_eq!(spans_of("database connection established").len(), 2);
    assert_eq!(spans_of("outbox job will be retried").len(), 2);
}
