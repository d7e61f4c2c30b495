//! Upgrading from the previous release, and reverting: every row of every table kept,
//! the catalog of each version reproduced, and the previous release's binary serving the
//! reverted database again. The previous release is the real binary, built from its
//! commit by `scripts/test` (see `previous_release`).

use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::both_backends;
use crate::helpers::*;

both_backends!(upgrade_from_the_previous_release_keeps_every_row_and_reverts,);

/// The version the previous release (`PREVIOUS_RELEASE` in `scripts/test`) shipped last.
pub(crate) const PREVIOUS_VERSION: i64 = 4;

/// The binary of the previous release, which `scripts/test` builds and names here.
fn previous_release() -> String {
    let path = std::env::var("CLERK_SYNC_PREVIOUS_BIN").unwrap_or_else(|_| {
        panic!(
            "CLERK_SYNC_PREVIOUS_BIN is not set: run the tests through scripts/test, which \
             builds the previous release's binary"
        )
    });
    assert!(
        std::path::Path::new(&path).exists(),
        "CLERK_SYNC_PREVIOUS_BIN={path} does not exist"
    );
    path
}

pub(crate) fn run(bin: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .env_remove("DIRECT_URL")
        .env("LOG_FORMAT", "json")
        .output()
        .expect("run clerk-sync");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn current() -> &'static str {
    env!("CARGO_BIN_EXE_clerk-sync")
}

/// A `clerk-sync serve` process of either release on a free loopback port.
struct Served {
    child: tokio::process::Child,
    address: String,
    http: reqwest::Client,
    secret: clerk_sync::webhooks::WebhookSecret,
}

impl Served {
    async fn start(bin: &str, db: &TestDb, clerk: &FakeClerk) -> Self {
        Self::start_with(bin, db, clerk, true).await
    }

    /// `deliver`: set CLERK_SECRET_KEY, so that its worker delivers metadata updates.
    async fn start_with(bin: &str, db: &TestDb, clerk: &FakeClerk, deliver: bool) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut command = tokio::process::Command::new(bin);
        if deliver {
            command.env("CLERK_SECRET_KEY", FakeClerk::KEY);
        } else {
            command.env_remove("CLERK_SECRET_KEY");
        }
        let mut child = command
            .arg("serve")
            .env("DATABASE_URL", &db.url)
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
            .env("CLERK_SYNC_API_KEYS", API_KEY)
            .env("CLERK_API_URL", &clerk.url)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "clerk_sync=info")
            .env_remove("DIRECT_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start serve");
        // Ready when it logs (to stderr) that it listens; a failure to start ends the log
        // first.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let ready = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let listening = line.contains("\"listening\"");
                seen.push(line);
                if listening {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !ready {
            let _ = child.kill().await;
            panic!("{bin} serve did not start:\n{}", seen.join("\n"));
        }
        // Keep draining its logs so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            secret: clerk_sync::webhooks::WebhookSecret::parse(SECRET).unwrap(),
        }
    }

    async fn signup(&self, msg_id: &str, clerk_id: &str, email: &str) -> (u16, Value) {
        let mut event = fixture_json("clerk-user-created.json");
        event["data"]["id"] = json!(clerk_id);
        event["data"]["email_addresses"][0]["email_address"] = json!(email);
        let body = serde_json::to_vec(&event).unwrap();
        let ts = chrono::Utc::now().timestamp();
        let sig = clerk_sync::webhooks::sign(&self.secret, msg_id, ts, &body);
        let r = self
            .http
            .post(format!("{}/api/webhooks/clerk", self.address))
            .header("content-type", "application/json")
            .header("svix-id", msg_id)
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    async fn consume(&self, clerk_id: &str, key: &str, amount: i64) -> (u16, Value) {
        let r = self
            .http
            .post(format!(
                "{}/v1/users/{clerk_id}/credits/consume",
                self.address
            ))
            .bearer_auth(API_KEY)
            .json(&json!({"amount": amount, "idempotencyKey": key}))
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait()).await;
    }
}

/// Every table's row count and a digest of its rows, where the current layout keeps it.
pub(crate) async fn table_digests(
    db: &TestDb,
    backend: Backend,
    own_schema: bool,
) -> Vec<(String, i64, String)> {
    let store = db.store().await;
    let mut out = Vec::new();
    for table in [
        "User",
        "WebhookEvent",
        "Transaction",
        "ClerkUserSync",
        "OutboxJob",
    ] {
        let own = matches!(table, "ClerkUserSync" | "OutboxJob");
        let (count, digest): (i64, String) = match (&store, backend) {
            (clerk_sync::store::Store::Postgres(pg), _) => {
                let name = if own && own_schema {
                    format!("clerk_sync.\"{table}\"")
                } else {
                    format!("\"{table}\"")
                };
                let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                    .bind(&name)
                    .fetch_one(&pg.pool)
                    .await
                    .unwrap();
                if !exists {
                    out.push((table.to_owned(), -1, "missing".to_owned()));
                    continue;
                }
                let sql = format!(
                    "SELECT count(*), COALESCE(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {name} t"
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&pg.pool)
                    .await
                    .unwrap()
            }
            (clerk_sync::store::Store::Sqlite(lite), _) => {
                let cols: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                        .bind(table)
                        .fetch_all(&lite.pool)
                        .await
                        .unwrap();
                if cols.is_empty() {
                    out.push((table.to_owned(), -1, "missing".to_owned()));
                    continue;
                }
                let row = cols
                    .iter()
                    .map(|c| format!("quote(\"{c}\")"))
                    .collect::<Vec<_>>()
                    .join(" || ',' || ");
                let sql = format!("SELECT {row} FROM \"{table}\" ORDER BY 1");
                let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&lite.pool)
                    .await
                    .unwrap();
                (rows.len() as i64, rows.join("\n"))
            }
        };
        out.push((table.to_owned(), count, digest));
    }
    store.close().await;
    out
}

async fn upgrade_from_the_previous_release_keeps_every_row_and_reverts(backend: Backend) {
    let previous = previous_release();
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;

    // The previous release creates the database and serves signups and credits; Clerk
    // refuses its metadata updates, so jobs are pending when the upgrade comes.
    let (ok, out, err) = run(&previous, &["migrate", "--database-url", &db.url]);
    assert!(ok, "{out}{err}");
    clerk.script(&[503; 40]);
    let old = Served::start(&previous, &db, &clerk).await;
    for i in 0..6 {
        let (s, b) = old
            .signup(
                &format!("msg_old_{i}"),
                &format!("user_old_{i}"),
                &format!("old{i}@example.com"),
            )
            .await;
        assert_eq!((s, b["status"].as_str()), (200, Some("processed")), "{b}");
    }
    let (s, b) = old.consume("user_old_0", "spend_1", 3).await;
    assert_eq!(s, 200, "{b}");
    old.stop().await;
    let before = table_digests(&db, backend, false).await;
    assert!(before.iter().all(|(_, n, _)| *n > 0), "{before:?}");
    // A replica of the previous release keeps running through the upgrade (PostgreSQL:
    // SQLite is one process, upgraded by restarting it). No worker, so the rows stay put.
    let running = if backend == Backend::Postgres {
        Some(Served::start_with(&previous, &db, &clerk, false).await)
    } else {
        None
    };

    // Upgrade: every row of every table intact, clerk-sync's tables out of the app's schema.
    let (ok, out, err) = run(current(), &["migrate", "--database-url", &db.url]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("applied 4 migration(s) [5, 6, 7, 8]"), "{out}");
    assert_eq!(table_digests(&db, backend, true).await, before);
    if backend == Backend::Postgres {
        let store = db.store().await;
        let clerk_sync::store::Store::Postgres(pg) = &store else {
            unreachable!()
        };
        let public: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        )
        .fetch_all(&pg.pool)
        .await
        .unwrap();
        assert_eq!(public, ["Transaction", "User", "WebhookEvent"]);
        store.close().await;
    }

    // A replica of the previous release that starts now refuses, and writes nothing.
    let (ok, out, err) = run(&previous, &["migrate", "--database-url", &db.url]);
    assert!(
        !ok,
        "the previous release must not migrate an upgraded database:\n{out}"
    );
    let why = match backend {
        Backend::Postgres => r#"type "_sqlx_migrations" already exists"#,
        Backend::Sqlite => "migration 5 was previously applied but is missing",
    };
    assert!(err.contains(why) || out.contains(why), "{out}\n{err}");
    assert_eq!(table_digests(&db, backend, true).await, before);

    // The replica that was running: its signups fail whole (5xx, so Svix delivers them
    // again, to a new replica) and its credits calls work, recorded once in the ledger.
    if let Some(old) = running {
        let (s, b) = old
            .signup("msg_during_upgrade", "user_during", "during@example.com")
            .await;
        assert_eq!(s, 500, "{b}");
        let (s, b) = old.consume("user_old_2", "spend_during", 1).await;
        assert_eq!((s, b["balanceAfter"].as_i64()), (200, Some(19)), "{b}");
        old.stop().await;
        let store = db.store().await;
        assert_eq!(
            users(&store).await.len(),
            6,
            "the failed signup wrote nothing"
        );
        assert_ledger_adds_up(&store).await;
        store.close().await;
    }

    // The new release serves it: signups, credits, and the jobs the old one queued.
    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            clerk_api_url: Some(clerk.url.clone()),
            clerk_secret_key: Some(FakeClerk::KEY.into()),
            ..Default::default()
        },
    )
    .await;
    let mut event = fixture_json("clerk-user-created.json");
    event["data"]["id"] = json!("user_new_0");
    let (s, b) = status_json(
        app.post_webhook("msg_new_0", &serde_json::to_vec(&event).unwrap())
            .await,
    )
    .await;
    assert_eq!((s, b["action"].as_str()), (200, Some("created")), "{b}");
    let (s, b) = app
        .api(
            reqwest::Method::POST,
            "/v1/users/user_old_1/credits/consume",
            Some(json!({"amount": 2, "idempotencyKey": "spend_2"})),
        )
        .await;
    assert_eq!((s, b["balanceAfter"].as_i64()), (200, Some(18)), "{b}");
    clerk.clear_script();
    let store = db.store().await;
    make_jobs_due(&store).await;
    let mut delivered = 0;
    while step_worker(&store, &clerk).await != clerk_sync::outbox::worker::Outcome::Empty {
        delivered += 1;
        make_jobs_due(&store).await;
        assert!(delivered < 100, "the worker never ran dry");
    }
    let done = jobs(&store).await;
    assert_eq!(done.len(), 7, "six old signups and one new");
    assert!(done.iter().all(|j| j.status == "done"), "{done:?}");
    assert_ledger_adds_up(&store).await;
    store.close().await;
    app.stop().await;
    let upgraded = table_digests(&db, backend, true).await;

    // Revert to the previous release's version: every row intact, and the previous
    // release serves the database again.
    let (ok, out, err) = run(
        current(),
        &[
            "migrate",
            "--revert-to",
            &PREVIOUS_VERSION.to_string(),
            "--database-url",
            &db.url,
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("reverted 4 migration(s) [8, 7, 6, 5]"),
        "{out}"
    );
    assert_eq!(table_digests(&db, backend, false).await, upgraded);
    let (ok, out, err) = run(&previous, &["migrate", "--database-url", &db.url]);
    assert!(
        ok,
        "the previous release accepts the reverted database:\n{out}{err}"
    );
    assert!(out.contains("applied 0 migration(s)"), "{out}");

    let old = Served::start(&previous, &db, &clerk).await;
    let (s, b) = old
        .signup("msg_after_revert", "user_after_revert", "after@example.com")
        .await;
    assert_eq!((s, b["action"].as_str()), (200, Some("created")), "{b}");
    let (s, b) = old.consume("user_new_0", "spend_3", 5).await;
    assert_eq!((s, b["balanceAfter"].as_i64()), (200, Some(15)), "{b}");
    // Its worker delivers the metadata update of the user it just created.
    let store = db.store().await;
    let delivered = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let sql = r#"SELECT count(*) FROM "OutboxJob" WHERE "status" = 'done'"#;
            let done: i64 = clerk_sync::with_pool!(&store, |pool, _p| {
                sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
            });
            if done == 8 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        delivered.is_ok(),
        "the previous release's worker delivered its job"
    );
    assert!(clerk
        .requests()
        .iter()
        .any(|r| r.path == "/v1/users/user_after_revert/metadata"));
    old.stop().await;
    store.close().await;

    // And the current release upgrades it again.
    let (ok, out, err) = run(current(), &["migrate", "--database-url", &db.url]);
    assert!(
        ok && out.contains("applied 4 migration(s) [5, 6, 7, 8]"),
        "{out}{err}"
    );
    let store = db.store().await;
    assert_ledger_adds_up(&store).await;
    store.close().await;
}
