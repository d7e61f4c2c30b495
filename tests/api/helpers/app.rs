//! The real application on a loopback port, and what tests ask of it.

use std::sync::Arc;

use clap::Parser;
use clerk_sync::cli::{Cli, Command};
use clerk_sync::config::Config;
use clerk_sync::startup::Application;
use clerk_sync::store::Store;
use clerk_sync::webhooks::{sign, WebhookSecret};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{init, TestDb, ADMIN_KEY, API_KEY, API_KEY_2, SECRET};

#[derive(Debug, Clone)]
pub struct AppOptions {
    pub clerk_api_url: Option<String>,
    pub clerk_secret_key: Option<String>,
    pub run_worker: bool,
    pub transaction_timeout_ms: u64,
    pub secret: String,
    /// Overrides `DATABASE_URL` (e.g. to go through a proxy that can be cut).
    pub database_url: Option<String>,
    /// `DIRECT_URL`: where migrations run when `database_url` is a pooler.
    pub direct_url: Option<String>,
    pub api_keys: String,
    /// `RECONCILE_INTERVAL`; unset: no reconcile inside serve.
    pub reconcile_interval: Option<String>,
    /// `HEADER_READ_TIMEOUT_MS`, `MAX_CONNECTIONS`, `SHUTDOWN_DRAIN_MS`; unset: the defaults.
    pub header_read_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub shutdown_drain_ms: Option<u64>,
    /// `CLERK_SYNC_ADMIN_KEYS`: the console's keys.
    pub admin_keys: String,
    /// `OUTBOX_RATE_PER_SECOND`; unset: the default.
    pub outbox_rate_per_second: Option<u32>,
    /// `SCHEMA_CHECK_INTERVAL_MS`; unset: the default.
    pub schema_check_interval_ms: Option<u64>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            clerk_api_url: None,
            clerk_secret_key: None,
            run_worker: false,
            transaction_timeout_ms: 5000,
            secret: SECRET.to_owned(),
            database_url: None,
            direct_url: None,
            api_keys: format!("{API_KEY},{API_KEY_2}"),
            reconcile_interval: None,
            header_read_timeout_ms: None,
            max_connections: None,
            shutdown_drain_ms: None,
            admin_keys: ADMIN_KEY.to_owned(),
            outbox_rate_per_second: None,
            schema_check_interval_ms: None,
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub store: Store,
    pub secret: WebhookSecret,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn config_for(db: &TestDb, opts: &AppOptions) -> Config {
    let url = opts.database_url.clone().unwrap_or_else(|| db.url.clone());
    let timeout = opts.transaction_timeout_ms.to_string();
    let mut argv = vec![
        "clerk-sync",
        "serve",
        "--database-url",
        &url,
        "--port",
        "0",
        "--clerk-webhook-signing-secret",
        &opts.secret,
        "--transaction-timeout-ms",
        &timeout,
        "--database-pool-max",
        "5",
        "--clerk-sync-api-keys",
        &opts.api_keys,
        "--clerk-sync-admin-keys",
        &opts.admin_keys,
    ];
    if let Some(u) = &opts.clerk_api_url {
        argv.extend(["--clerk-api-url", u]);
    }
    if let Some(k) = &opts.clerk_secret_key {
        argv.extend(["--clerk-secret-key", k]);
    }
    if let Some(u) = &opts.direct_url {
        argv.extend(["--direct-url", u]);
    }
    let limits = [
        (
            "--header-read-timeout-ms",
            opts.header_read_timeout_ms.map(|v| v.to_string()),
        ),
        (
            "--max-connections",
            opts.max_connections.map(|v| v.to_string()),
        ),
        (
            "--shutdown-drain-ms",
            opts.shutdown_drain_ms.map(|v| v.to_string()),
        ),
        ("--reconcile-interval", opts.reconcile_interval.clone()),
        (
            "--outbox-rate-per-second",
            opts.outbox_rate_per_second.map(|v| v.to_string()),
        ),
        (
            "--schema-check-interval-ms",
            opts.schema_check_interval_ms.map(|v| v.to_string()),
        ),
    ];
    for (flag, value) in &limits {
        if let Some(value) = value {
            argv.extend([*flag, value.as_str()]);
        }
    }
    let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    let mut config = Config::from_serve_args(&args).unwrap();
    config.run_worker = opts.run_worker;
    config
}

impl TestApp {
    pub async fn spawn(db: &TestDb) -> Self {
        Self::spawn_with(db, AppOptions::default()).await
    }

    pub async fn spawn_with(db: &TestDb, opts: AppOptions) -> Self {
        Self::spawn_clocked(db, opts, None).await
    }

    pub async fn spawn_clocked(db: &TestDb, opts: AppOptions, now: Option<i64>) -> Self {
        init();
        let config = config_for(db, &opts);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = Application::build_with_listener(&config, listener)
            .await
            .expect("application builds");
        if let Some(now) = now {
            app = app.with_clock(Arc::new(move || now));
        }
        app = app.with_diagnose(clerk_sync::commands::diagnose::console_report(
            config.database.migration_url(),
        ));
        let address = format!("http://{}", app.local_addr());
        let store = db.store().await;
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            address,
            store,
            secret: WebhookSecret::parse(opts.secret.split_whitespace().next().unwrap()).unwrap(),
            http: reqwest::Client::new(),
            shutdown,
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
        self.store.close().await;
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/api/webhooks/clerk", self.address)
    }

    /// Post `body` signed now with the test secret.
    pub async fn post_webhook(&self, msg_id: &str, body: &[u8]) -> reqwest::Response {
        self.signed_request(msg_id, body)
            .send()
            .await
            .expect("request sent")
    }

    /// A request signed now with the test secret, ready to send (owns everything, so it
    /// can be sent from a spawned task).
    pub fn signed_request(&self, msg_id: &str, body: &[u8]) -> reqwest::RequestBuilder {
        let ts = chrono::Utc::now().timestamp();
        let sig = sign(&self.secret, msg_id, ts, body);
        self.http
            .post(self.webhook_url())
            .header("content-type", "application/json")
            .header("svix-id", msg_id)
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", sig)
            .body(body.to_vec())
    }

    pub async fn post_raw(&self, headers: &[(&str, &str)], body: Vec<u8>) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.webhook_url())
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(body).send().await.expect("request sent")
    }

    /// A `/v1` call with the primary API key.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(API_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        status_json(req.send().await.expect("request sent")).await
    }

    /// `GET /v1/users/{clerkId}`: (balance, usedGenerations, availableGenerations).
    pub async fn credits_of(&self, clerk_id: &str) -> (i64, i64, i64) {
        let (s, b) = self
            .api(reqwest::Method::GET, &format!("/v1/users/{clerk_id}"), None)
            .await;
        assert_eq!(s, 200, "{b}");
        let n = |k: &str| b[k].as_i64().unwrap_or_else(|| panic!("{k} in {b}"));
        (
            n("balance"),
            n("usedGenerations"),
            n("availableGenerations"),
        )
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Status and JSON body of a response.
pub async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, json)
}

/// `body` as the service's handler sees it once its signature is verified: signed now,
/// as message `msg_id`, with the test secret. For tests that call the library directly.
pub fn verified_webhook(msg_id: &str, body: &[u8]) -> clerk_sync::webhooks::VerifiedWebhook {
    let now = chrono::Utc::now().timestamp();
    let secret = clerk_sync::webhooks::WebhookSecret::parse(SECRET).unwrap();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("svix-id", msg_id.parse().unwrap());
    headers.insert("svix-timestamp", now.to_string().parse().unwrap());
    headers.insert(
        "svix-signature",
        clerk_sync::webhooks::sign(&secret, msg_id, now, body)
            .parse()
            .unwrap(),
    );
    clerk_sync::webhooks::verify(&[secret], &headers, body.to_vec().into(), now).unwrap()
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

pub fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A `user.created` for `user_{name}` with the address `{name}@example.org`.
pub fn created_for(name: &str) -> Vec<u8> {
    let mut event = fixture_json("clerk-user-created.json");
    event["data"]["id"] = serde_json::json!(format!("user_{name}"));
    event["data"]["email_addresses"][0]["email_address"] =
        serde_json::json!(format!("{name}@example.org"));
    serde_json::to_vec(&event).unwrap()
}

pub fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

/// The value of an unlabelled metric on `/metrics`.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// Wait until an unlabelled metric reaches `value`.
pub async fn wait_for_metric(app: &TestApp, name: &str, value: f64) {
    for _ in 0..500 {
        if metric(app, name).await >= value {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{name} never reached {value}");
}
