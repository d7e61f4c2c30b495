//! `pgbouncer=true` (Neon's transaction-mode pooler): no statement may be left prepared
//! on the server session, because the next transaction may run on another one.

use std::time::Duration;

use clerk_sync::config::DatabaseUrl;
use clerk_sync::signup::{self, Outcome, SignupSettings};
use clerk_sync::store::Store;
use clerk_sync::with_pool;

use crate::helpers::*;

async fn prepared_statements_after_a_signup(url: &str, msg_id: &str) -> i64 {
    let url = DatabaseUrl::parse(url).unwrap();
    // One connection, so the count below sees the session the signup ran on.
    let store = Store::connect(&url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    let hook = verified_webhook(msg_id, &fixture("clerk-user-created.json"));
    let settings = SignupSettings {
        signup_credits: 20,
        transaction_timeout: Duration::from_secs(5),
    };
    let outcome = signup::handle(&store, &settings, None, &hook)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Processed(_) | Outcome::Ignored(_)),
        "{outcome:?}"
    );
    // What /readyz asks: where the migration history is, and what it holds.
    assert!(store.pending_migrations().await.unwrap().is_empty());
    let count: i64 = with_pool!(&store, |pool, p| {
        sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements")
            .persistent(p)
            .fetch_one(pool)
            .await
            .unwrap()
    });
    store.close().await;
    count
}

mod pgbouncer_mode_runs_every_statement_unprepared {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = TestDb::new(Backend::Postgres).await;
        db.store().await.migrate().await.unwrap();

        let pooled =
            prepared_statements_after_a_signup(&format!("{}?pgbouncer=true", db.url), "msg_a")
                .await;
        let direct = prepared_statements_after_a_signup(&db.url, "msg_b").await;

        assert_eq!(pooled, 0, "pgbouncer=true left prepared statements behind");
        assert!(
            direct > 0,
            "without pgbouncer=true statements are prepared and cached ({direct})"
        );
    }
}

/// A PgBouncer of its own (Debian's package, which `scripts/test` installs) in
/// transaction mode in front of the test server, with `server_round_robin = 1`: any
/// server connection may take a client's next flight, as on a busy pooler. Stopped when
/// dropped.
pub struct PgBouncer {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

pub const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

impl PgBouncer {
    pub fn start() -> Self {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            std::path::Path::new(PGBOUNCER).exists(),
            "{PGBOUNCER} is missing: install Debian's pgbouncer (scripts/test does)"
        );
        let admin = url::Url::parse(&admin_url()).unwrap();
        let (host, server_port) = (
            admin.host_str().unwrap().to_owned(),
            admin.port().unwrap_or(5432),
        );
        let user = admin.username().to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        // PgBouncer refuses to run as root: as root it is started with `-u postgres`,
        // which must be able to read its files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let users = dir.path().join("users.txt");
        std::fs::write(&users, format!("\"{user}\" \"\"\n")).unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={host} port={server_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 server_round_robin = 1\ndefault_pool_size = 8\nmax_client_conn = 500\n\
                 ignore_startup_parameters = extra_float_digits,search_path\n",
                users.display()
            ),
        )
        .unwrap();
        for f in [&users, &ini] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let log = std::fs::File::create(dir.path().join("pgbouncer.log")).unwrap();
        let mut cmd = std::process::Command::new(PGBOUNCER);
        // /proc/self belongs to the process's effective user.
        let root =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        if root {
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pgbouncer");
        let bouncer = Self {
            port,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return bouncer;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(bouncer._dir.path().join("pgbouncer.log"));
        panic!("pgbouncer did not listen on {port}: {log:?}");
    }

    /// `db`'s database through this pooler, as Neon's `-pooler` URL for Prisma names it.
    pub fn url_for(&self, db: &TestDb) -> String {
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.set_query(Some("pgbouncer=true"));
        url.to_string()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send every request, `concurrency` at a time; the status and body of each, in order.
async fn send_all(
    concurrency: usize,
    requests: Vec<reqwest::RequestBuilder>,
) -> Vec<(u16, serde_json::Value)> {
    let queue = std::sync::Arc::new(std::sync::Mutex::new(
        requests.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some((i, request)) = next else { break };
                    out.push((i, status_json(request.send().await.unwrap()).await));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

fn assert_all_2xx(what: &str, answers: &[(u16, serde_json::Value)]) {
    let bad: Vec<_> = answers
        .iter()
        .filter(|(s, _)| !(200..300).contains(s))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} answered non-2xx: {:?}",
        bad.len(),
        answers.len(),
        bad.iter().take(5).collect::<Vec<_>>()
    );
}

/// A `user.updated` for `user_{name}`, newer than [`created_for`]'s event.
fn updated_for(name: &str) -> Vec<u8> {
    let mut event: serde_json::Value = serde_json::from_slice(&created_for(name)).unwrap();
    event["type"] = serde_json::json!("user.updated");
    let at = event["data"]["updated_at"].as_i64().unwrap() + 1000;
    event["data"]["updated_at"] = serde_json::json!(at);
    event["data"]["first_name"] = serde_json::json!(format!("Renamed {name}"));
    serde_json::to_vec(&event).unwrap()
}

fn deleted_for(name: &str) -> Vec<u8> {
    let mut event = fixture_json("clerk-user-deleted.json");
    event["data"]["id"] = serde_json::json!(format!("user_{name}"));
    serde_json::to_vec(&event).unwrap()
}

mod every_path_through_a_transaction_mode_pooler_is_correct_under_concurrency {
    use super::*;
    use serde_json::json;

    /// Three cold starts of the service behind PgBouncer (`pgbouncer=true`,
    /// `server_round_robin = 1`), each at C = 32: 400 signups, 200 consumes, 100
    /// updates, 50 deletes, 100 grants, 40 lazily provisioned users, the outbox claiming
    /// and delivering every metadata job. Every answer 2xx, every row exact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        const C: usize = 32;
        let db = TestDb::new(Backend::Postgres).await;
        let bouncer = PgBouncer::start();
        let clerk = FakeClerk::start().await;
        let mut expected_users = 0;
        let mut expected_jobs = 0;
        for run in 0..3 {
            let app = TestApp::spawn_with(
                &db,
                AppOptions {
                    database_url: Some(bouncer.url_for(&db)),
                    direct_url: Some(db.url.clone()),
                    clerk_api_url: Some(clerk.url.clone()),
                    clerk_secret_key: Some(FakeClerk::KEY.to_owned()),
                    run_worker: true,
                    outbox_rate_per_second: Some(2000),
                    ..AppOptions::default()
                },
            )
            .await;
            let name = |i: usize| format!("pgb{run}x{i}");

            let signups = (0..400)
                .map(|i| app.signed_request(&format!("msg_c_{}", name(i)), &created_for(&name(i))))
                .collect();
            let answers = send_all(C, signups).await;
            assert_all_2xx("signups", &answers);
            assert!(answers.iter().all(|(_, b)| b["status"] == "processed"));

            let api = |method: reqwest::Method, path: String, body: serde_json::Value| {
                app.http
                    .request(method, format!("{}{path}", app.address))
                    .bearer_auth(API_KEY)
                    .json(&body)
            };
            // Two consumes of 3 for each of the first 100 users.
            let consumes = (0..200)
                .map(|k| {
                    api(
                        reqwest::Method::POST,
                        format!("/v1/users/user_{}/credits/consume", name(k % 100)),
                        json!({"amount": 3, "idempotencyKey": format!("gen-{k}")}),
                    )
                })
                .collect();
            assert_all_2xx("consumes", &send_all(C, consumes).await);
            let grants = (100..200)
                .map(|i| {
                    api(
                        reqwest::Method::POST,
                        format!("/v1/users/user_{}/credits/grant", name(i)),
                        json!({"amount": 5, "kind": "purchase", "idempotencyKey": format!("buy-{i}")}),
                    )
                })
                .collect();
            assert_all_2xx("grants", &send_all(C, grants).await);
            let updates = (200..300)
                .map(|i| app.signed_request(&format!("msg_u_{}", name(i)), &updated_for(&name(i))))
                .collect();
            assert_all_2xx("updates", &send_all(C, updates).await);
            let deletes = (300..350)
                .map(|i| app.signed_request(&format!("msg_d_{}", name(i)), &deleted_for(&name(i))))
                .collect();
            assert_all_2xx("deletes", &send_all(C, deletes).await);
            // Users Clerk has and no webhook announced: the first consume provisions them.
            for i in 400..440 {
                let mut user: serde_json::Value =
                    serde_json::from_slice::<serde_json::Value>(&created_for(&name(i))).unwrap()
                        ["data"]
                        .clone();
                user["id"] = json!(format!("user_{}", name(i)));
                clerk.add_user(user);
            }
            let lazy = (400..440)
                .map(|i| {
                    api(
                        reqwest::Method::POST,
                        format!("/v1/users/user_{}/credits/consume", name(i)),
                        json!({"amount": 1, "idempotencyKey": "first"}),
                    )
                })
                .collect();
            assert_all_2xx("lazy provisioning", &send_all(C, lazy).await);

            // The rows, exactly.
            expected_users += 400 - 50 + 40;
            expected_jobs += 440;
            let users = users(&app.store).await;
            assert_eq!(users.len(), expected_users, "run {run}");
            let of = |i: usize| {
                users
                    .iter()
                    .find(|u| u.clerk_id == format!("user_{}", name(i)))
                    .unwrap_or_else(|| panic!("user_{} missing", name(i)))
            };
            for i in 0..100 {
                assert_eq!((of(i).used, of(i).available), (6, 20), "user {i}");
            }
            for i in 100..200 {
                assert_eq!((of(i).used, of(i).available), (0, 25), "user {i}");
            }
            for i in 200..300 {
                assert_eq!(of(i).first_name, Some(format!("Renamed {}", name(i))));
            }
            for i in 300..350 {
                assert!(!users
                    .iter()
                    .any(|u| u.clerk_id == format!("user_{}", name(i))));
            }
            for i in 400..440 {
                assert_eq!((of(i).used, of(i).available), (1, 20), "lazy user {i}");
            }
            let ledger = ledger(&app.store).await;
            let ids: std::collections::HashSet<&str> = users
                .iter()
                .filter(|u| u.clerk_id.starts_with(&format!("user_pgb{run}x")))
                .map(|u| u.id.as_str())
                .collect();
            let mine = |reason: &str| {
                ledger
                    .iter()
                    .filter(|r| {
                        r.reason.as_deref() == Some(reason)
                            && r.user_id.as_deref().is_some_and(|u| ids.contains(u))
                    })
                    .count()
            };
            let bonuses = ledger
                .iter()
                .filter(|r| {
                    r.idempotency_key
                        .as_deref()
                        .is_some_and(|k| k.starts_with(&format!("signup:user_pgb{run}x")))
                })
                .count();
            assert_eq!(bonuses, 440, "run {run}");
            assert_eq!(mine("consume"), 240, "run {run}");
            assert_eq!(mine("purchase"), 100, "run {run}");
            assert_ledger_adds_up(&app.store).await;

            // The outbox claimed and delivered every metadata job, each once.
            let mut delivered = false;
            for _ in 0..300 {
                let jobs = jobs(&app.store).await;
                assert_eq!(jobs.len(), expected_jobs, "run {run}");
                if jobs.iter().all(|j| j.status == "done") {
                    delivered = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let jobs = jobs(&app.store).await;
            assert!(
                delivered,
                "not every job was delivered: {:?}",
                jobs.iter()
                    .filter(|j| j.status != "done")
                    .take(3)
                    .collect::<Vec<_>>()
            );
            app.stop().await;
        }
        for i in 0..400 {
            let id = format!("user_pgb0x{i}");
            if !(300..350).contains(&i) {
                assert_eq!(clerk.applied_patches(&id), 1, "{id}");
            }
        }
    }
}
