//! The test harness: a fresh database per test (PostgreSQL: its own database, dropped
//! afterwards; SQLite: a temp file), the real application on a loopback port, real
//! signatures, and a fake Clerk API. PostgreSQL tests never skip: they panic when the
//! server cannot be reached.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Once};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::patch;
use axum::{Json, Router};
use chrono::NaiveDateTime;
use clap::Parser;
use clerk_sync::cli::{Cli, Command};
use clerk_sync::config::Config;
use clerk_sync::outbox::worker::{try_execute_job, Outcome, WorkerSettings};
use clerk_sync::outbox::ClerkClient;
use clerk_sync::startup::Application;
use clerk_sync::store::Store;
use clerk_sync::webhooks::{sign, WebhookSecret};
use clerk_sync::with_pool;
use serde_json::Value;
use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Emit `mod <name> { postgres, sqlite }` tests that call `<name>(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
        }
    )*};
}

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const API_KEY: &str = "csk_test_primary_0123456789";
pub const API_KEY_2: &str = "csk_test_rotated_0123456789";

static INIT: Once = Once::new();

fn init() {
    INIT.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("TEST_LOG").is_some() {
            clerk_sync::telemetry::init(
                Some(clerk_sync::cli::LogFormat::Pretty),
                clerk_sync::telemetry::DEFAULT_FILTER,
            );
        }
    });
}

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own for one test.
pub struct TestDb {
    /// The `DATABASE_URL` the application uses.
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        init();
        match backend {
            Backend::Postgres => {
                let name = format!("clerk_sync_test_{}", uuid::Uuid::new_v4().simple());
                let admin = admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL tests need a server: could not connect to {admin} ({e}). \
                         Run the tests through scripts/test, which provides one."
                        )
                    });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(&admin).unwrap();
                url.set_path(&name);
                Self {
                    url: url.to_string(),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// A store on this database for assertions (no migrations run).
    pub async fn store(&self) -> Store {
        let url = clerk_sync::config::DatabaseUrl::parse(&self.url).unwrap();
        Store::connect(&url, 4, std::time::Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// Run SQL text on this database (setup and sabotage).
    pub async fn exec(&self, sql: &str) {
        let store = self.store().await;
        with_pool!(&store, |pool, _p| {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
        store.close().await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside async code; a thread with its own runtime does the work.
            let admin = admin_url();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppOptions {
    pub clerk_api_url: Option<String>,
    pub clerk_secret_key: Option<String>,
    pub run_worker: bool,
    pub transaction_timeout_ms: u64,
    pub secret: String,
    /// Overrides `DATABASE_URL` (e.g. to go through a proxy that can be cut).
    pub database_url: Option<String>,
    pub api_keys: String,
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
            api_keys: format!("{API_KEY},{API_KEY_2}"),
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
    ];
    if let Some(u) = &opts.clerk_api_url {
        argv.extend(["--clerk-api-url", u]);
    }
    if let Some(k) = &opts.clerk_secret_key {
        argv.extend(["--clerk-secret-key", k]);
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

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

pub fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

// ---------------------------------------------------------------------------------------
// Reading rows, on either backend.

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    #[sqlx(rename = "clerkId")]
    pub clerk_id: String,
    pub email: String,
    pub photo: String,
    #[sqlx(rename = "firstName")]
    pub first_name: Option<String>,
    #[sqlx(rename = "lastName")]
    pub last_name: Option<String>,
    #[sqlx(rename = "usedGenerations")]
    pub used: i32,
    #[sqlx(rename = "availableGenerations")]
    pub available: i32,
    #[sqlx(rename = "createdAt")]
    pub created_at: NaiveDateTime,
    #[sqlx(rename = "updatedAt")]
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LedgerRow {
    pub id: String,
    pub tracking_id: String,
    #[sqlx(rename = "userId")]
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub amount: Option<i32>,
    #[sqlx(rename = "type")]
    pub kind: Option<String>,
    pub reason: Option<String>,
    #[sqlx(rename = "webhookEventId")]
    pub webhook_event_id: Option<String>,
    #[sqlx(rename = "idempotencyKey")]
    pub idempotency_key: Option<String>,
    #[sqlx(rename = "balanceAfter")]
    pub balance_after: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    #[sqlx(rename = "eventId")]
    pub event_id: String,
    #[sqlx(rename = "eventType")]
    pub event_type: String,
    pub processed: bool,
    pub status: Option<String>,
    pub error: Option<String>,
    pub has_payload: bool,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub payload: sqlx::types::Json<Value>,
    pub status: String,
    pub attempts: i32,
    #[sqlx(rename = "nextAttemptAt")]
    pub next_attempt_at: NaiveDateTime,
    #[sqlx(rename = "lastError")]
    pub last_error: Option<String>,
}

pub async fn users(store: &Store) -> Vec<UserRow> {
    with_pool!(store, |pool, _p| {
        sqlx::query_as(r#"SELECT * FROM "User" ORDER BY "createdAt", "id""#)
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

pub async fn ledger(store: &Store) -> Vec<LedgerRow> {
    with_pool!(store, |pool, _p| {
        sqlx::query_as(
            r#"SELECT "id", "tracking_id", "userId", "status", "amount", "type", "reason",
                      "webhookEventId", "idempotencyKey", "balanceAfter"
               FROM "Transaction" ORDER BY "createdAt", "id""#,
        )
        .fetch_all(pool)
        .await
        .unwrap()
    })
}

pub async fn events(store: &Store) -> Vec<EventRow> {
    with_pool!(store, |pool, _p| {
        sqlx::query_as(
            r#"SELECT "eventId", "eventType", "processed", "status", "error",
                      "payload" IS NOT NULL AS has_payload
               FROM "WebhookEvent" ORDER BY "createdAt", "id""#,
        )
        .fetch_all(pool)
        .await
        .unwrap()
    })
}

/// clerk-sync's own table `name` as SQL names it on this store's backend.
pub fn own_table(store: &Store, name: &str) -> String {
    match store {
        Store::Postgres(_) => format!("clerk_sync.\"{name}\""),
        Store::Sqlite(_) => format!("\"{name}\""),
    }
}

pub async fn jobs(store: &Store) -> Vec<JobRow> {
    let sql = format!(
        r#"SELECT "id", "kind", "payload", "status", "attempts", "nextAttemptAt", "lastError"
           FROM {} ORDER BY "createdAt", "id""#,
        own_table(store, "OutboxJob")
    );
    with_pool!(store, |pool, _p| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

/// Per user: credits minus debits in the ledger equal `available - used` (the check
/// `diagnose` runs).
pub async fn assert_ledger_adds_up(store: &Store) {
    let mismatches = clerk_sync::diagnose::ledger_mismatches(store)
        .await
        .unwrap();
    assert!(
        mismatches.is_empty(),
        "ledger does not add up: {mismatches:?}"
    );
}

/// Make every pending job due now (stands in for waiting out the backoff).
pub async fn make_jobs_due(store: &Store) {
    let sql = format!(
        r#"UPDATE {} SET "nextAttemptAt" = $1 WHERE "status" = 'pending'"#,
        own_table(store, "OutboxJob")
    );
    with_pool!(store, |pool, _p| {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(clerk_sync::store::now() - chrono::Duration::seconds(1))
            .execute(pool)
            .await
            .unwrap();
    });
}

pub async fn step_worker(store: &Store, clerk: &FakeClerk) -> Outcome {
    let client = ClerkClient::new(
        clerk.url.parse().unwrap(),
        clerk_sync::config::Redacted(FakeClerk::KEY.to_owned()),
    )
    .unwrap();
    try_execute_job(store, &client, &WorkerSettings::default())
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// A fake Clerk Backend API on loopback.

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct FakeState {
    /// Statuses to answer with, in order; 200 once they run out.
    script: VecDeque<u16>,
    requests: Vec<Recorded>,
    /// Users returned by `GET /v1/users/{id}`.
    users: std::collections::HashMap<String, Value>,
}

#[derive(Clone)]
pub struct FakeClerk {
    pub url: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeClerk {
    pub const KEY: &'static str = "sk_test_fake_clerk_key";

    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = Router::new()
            .route("/v1/users/{id}/metadata", patch(fake_patch_metadata))
            .route("/v1/users/{id}", axum::routing::get(fake_get_user))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    /// Answer the next calls with these statuses.
    pub fn script(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script.extend(statuses);
    }

    /// Answer 200 from now on.
    pub fn clear_script(&self) {
        self.state.lock().unwrap().script.clear();
    }

    pub fn add_user(&self, user: Value) {
        let id = user["id"].as_str().unwrap().to_owned();
        self.state.lock().unwrap().users.insert(id, user);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn record(
    state: &Mutex<FakeState>,
    method: &str,
    path: String,
    headers: &HeaderMap,
    body: Value,
) -> StatusCode {
    let mut s = state.lock().unwrap();
    s.requests.push(Recorded {
        method: method.to_owned(),
        path,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    });
    StatusCode::from_u16(s.script.pop_front().unwrap_or(200)).unwrap()
}

async fn fake_patch_metadata(
    State(state): State<Arc<Mutex<FakeState>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let status = record(
        &state,
        "PATCH",
        format!("/v1/users/{id}/metadata"),
        &headers,
        body.clone(),
    );
    (
        status,
        Json(serde_json::json!({"id": id, "public_metadata": body["public_metadata"]})),
    )
}

async fn fake_get_user(
    State(state): State<Arc<Mutex<FakeState>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let status = record(
        &state,
        "GET",
        format!("/v1/users/{id}"),
        &headers,
        Value::Null,
    );
    let user = state.lock().unwrap().users.get(&id).cloned();
    match user {
        Some(u) if status.is_success() => (status, Json(u)),
        Some(_) => (status, Json(serde_json::json!({"errors": []}))),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"errors": [{"code": "resource_not_found"}]})),
        ),
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Framing {
    ContentLength,
    Chunked,
}

/// POST over a raw TCP connection, writing the body from another task while the
/// response is read, so an early answer is seen even if the server stops reading.
pub async fn raw_post(
    address: &str,
    path: &str,
    headers: &str,
    body: &[u8],
    framing: Framing,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&host).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let length = match framing {
        Framing::ContentLength => format!("content-length: {}\r\n", body.len()),
        Framing::Chunked => "transfer-encoding: chunked\r\n".to_owned(),
    };
    let mut request = format!("POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n{length}{headers}\r\n").into_bytes();
    match framing {
        Framing::ContentLength => request.extend_from_slice(body),
        Framing::Chunked => {
            for chunk in body.chunks(10 * 1024) {
                request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                request.extend_from_slice(chunk);
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(b"0\r\n\r\n");
        }
    }
    // The server may close before the whole body is written: that is the point.
    tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let wanted = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .expect("content-length in the response");
            if rest.len() >= wanted {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, serde_json::from_str(&rest[..wanted]).unwrap());
            }
        }
        let n = reader.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before a full response: {text}");
        response.extend_from_slice(&buf[..n]);
    }
}

// ---------------------------------------------------------------------------------------
// A TCP proxy in front of PostgreSQL that a test can cut, to stand for a database outage.

pub struct CuttableProxy {
    pub port: u16,
    cut: CancellationToken,
}

impl CuttableProxy {
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = CancellationToken::new();
        let token = cut.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    return;
                };
                let target = target.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Self { port, cut }
    }

    /// Close the listener and every proxied connection.
    pub fn cut(&self) {
        self.cut.cancel();
    }
}

/// Wait until `n` sessions on this database wait for a lock.
/// An open transaction that has inserted a `failed` event for `msg_id`: a signup
/// statement for that message waits on its key until the transaction ends.
pub async fn hold_event_key(
    pg: &clerk_sync::store::PgStore,
    msg_id: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut blocker = pg.pool.begin().await.unwrap();
    sqlx::query(
        r#"INSERT INTO "WebhookEvent" ("id", "eventId", "eventType", "processed", "createdAt", "status")
           VALUES ('blocker', $1, 'user.created', false, LOCALTIMESTAMP, 'failed')"#,
    )
    .bind(msg_id)
    .execute(&mut *blocker)
    .await
    .unwrap();
    blocker
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

pub async fn wait_for_lock_waiters(pg: &clerk_sync::store::PgStore, n: i64) {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pg.pool)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{n} sessions never waited for a lock");
}
