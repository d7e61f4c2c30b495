//! `clerk-sync bench` and the pgbench scripts of `bench/compare`: the generator drives a
//! real service and its database check sees what was written; each pgbench script is
//! valid SQL that does what the service does.

use clerk_sync::commands::bench::{self, BenchPlan, Scenario};
use clerk_sync::config::DatabaseUrl;
use clerk_sync::webhooks::WebhookSecret;
use clerk_sync::with_pool;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    signup_bench_reports_every_request_and_an_exact_database,
    consume_bench_spends_once_per_request_and_the_ledger_adds_up,
    the_bench_binary_names_what_is_wrong,
);

fn bench_binary(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    run_to_end(
        std::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
            .arg("bench")
            .args(args)
            .env_remove("CLERK_SYNC_API_KEYS")
            .envs(env.iter().copied()),
    )
}

/// A dead port is "connection refused" with the fix, not "27228 req/s"; counts of zero
/// are refused by name; the API key comes from the server's own `CLERK_SYNC_API_KEYS`.
async fn the_bench_binary_names_what_is_wrong(backend: Backend) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/webhooks/clerk", dead.local_addr().unwrap());
    drop(dead);
    let secret = ["--clerk-webhook-signing-secret", SECRET];
    let (ok, out, err) = bench_binary(
        &[&["--url", url.as_str(), "-n", "20"][..], &secret[..]].concat(),
        &[],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("20 of 20 requests got no answer") && err.contains("connection refused"),
        "{err}"
    );
    assert!(err.contains("clerk-sync serve"), "{err}");
    for (flag, value) in [("-n", "0"), ("-c", "0"), ("-k", "0")] {
        let (ok, _, err) = bench_binary(
            &[&["--url", url.as_str(), flag, value][..], &secret[..]].concat(),
            &[],
        );
        assert!(!ok && err.contains("must be at least 1"), "{flag}: {err}");
    }

    // consume against a live service, its key taken from CLERK_SYNC_API_KEYS (the first).
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let keys = format!("{API_KEY},{API_KEY_2}");
    let (ok, out, err) = bench_binary(
        &[
            &[
                "--url",
                app.webhook_url().as_str(),
                "--scenario",
                "consume",
                "-n",
                "10",
            ][..],
            &secret[..],
        ]
        .concat(),
        &[("CLERK_SYNC_API_KEYS", keys.as_str())],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("200: "), "{out}");
}

fn plan(app: &TestApp, db: &TestDb, scenario: Scenario, requests: usize) -> BenchPlan {
    BenchPlan {
        scenario,
        url: app.webhook_url(),
        secret: WebhookSecret::parse(SECRET).unwrap(),
        api_key: Some(API_KEY.to_owned()),
        events: requests,
        concurrency: 4,
        rate: None,
        duplicates: 1,
        verify: Some(DatabaseUrl::parse(&db.url).unwrap()),
        progress: false,
    }
}

async fn signup_bench_reports_every_request_and_an_exact_database(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let mut plan = plan(&app, &db, Scenario::Signup, 30);
    plan.duplicates = 2;

    let report = bench::run(plan).await.unwrap();

    assert_eq!(report.requests, 60);
    assert_eq!(
        report.statuses.get("200"),
        Some(&60),
        "{:?}",
        report.statuses
    );
    assert_eq!(report.non_2xx, 0);
    let checks = report.database.unwrap();
    assert!(checks.exact, "{checks:?}");
    assert_eq!(users(&app.store).await.len(), 30);
    assert_eq!(ledger(&app.store).await.len(), 30);
    assert_eq!(
        events(&app.store).await.len(),
        30,
        "duplicates wrote nothing"
    );
}

async fn consume_bench_spends_once_per_request_and_the_ledger_adds_up(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    let report = bench::run(plan(&app, &db, Scenario::Consume, 25))
        .await
        .unwrap();

    assert_eq!(report.requests, 25, "the signups before are not timed");
    assert_eq!(report.non_2xx, 0, "{:?}", report.statuses);
    let checks = report.database.unwrap();
    assert!(checks.exact, "{checks:?}");
    let users = users(&app.store).await;
    assert_eq!(users.len(), 3, "25 consumes, 10 per user");
    let mut used: Vec<i32> = users.iter().map(|u| u.used).collect();
    used.sort_unstable();
    assert_eq!(used, [8, 8, 9], "round robin over the users");
    let ledger = ledger(&app.store).await;
    assert_eq!(
        ledger
            .iter()
            .filter(|r| r.reason.as_deref() == Some("consume"))
            .count(),
        25
    );
    assert_ledger_adds_up(&app.store).await;
}

mod pgbench_script_runs_the_signup_statements {
    use super::*;

    /// The script `bench/compare` gives pgbench is valid SQL that signs a user up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = TestDb::new(Backend::Postgres).await;
        db.store().await.migrate().await.unwrap();
        let script = clerk_sync::commands::bench::pgbench_signup_script(1);
        let sql: String = script
            .lines()
            .filter(|l| !l.starts_with('\\'))
            .collect::<Vec<_>>()
            .join("\n")
            .replace(":n", "42");

        db.exec(&sql).await;

        let store = db.store().await;
        let users = users(&store).await;
        assert_eq!(users.len(), 1);
        assert_eq!(
            (users[0].clerk_id.as_str(), users[0].available),
            ("user_pgb42", 20)
        );
        let rows = ledger(&store).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].idempotency_key.as_deref(),
            Some("signup:user_pgb42")
        );
        assert_eq!(jobs(&store).await.len(), 1);
        assert_eq!(events(&store).await[0].event_id, "msg_pgb42");
    }
}

mod a_batched_signup_script_signs_up_each_user_of_the_batch {
    use super::*;

    /// `bench/compare`'s "PostgreSQL alone" row runs the service's signup statement with
    /// 8 users per statement under the real pgbench: 2 clients x 20 statements x 8 users,
    /// each a user with the signup credits, its bonus row, its outbox job and its processed
    /// event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = TestDb::new(Backend::Postgres).await;
        db.store().await.migrate().await.unwrap();
        let script = bench::pgbench_signup_script(8);

        run_pgbench(&script, &db.url).await;

        assert_each_signed_up_once(&db.store().await, 320).await;
    }
}

/// `--batch` prints the service's signup statement with that many users, and refuses what
/// the service never sends, saying why.
#[test]
fn print_pgbench_script_takes_a_batch_the_signup_queue_could_send() {
    let print = |args: &[&str]| {
        run_to_end(
            std::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
                .args(["bench", "--print-pgbench-script"])
                .args(args),
        )
    };
    // The scripts differ from the library's only in the payload's timestamps.
    let shape = |script: &str| script.replace(|c: char| c.is_ascii_digit(), "");
    let (ok, script, _) = print(&["--batch", "8"]);
    assert!(ok);
    assert_eq!(shape(&script), shape(&bench::pgbench_signup_script(8)));
    assert!(
        script.starts_with("-- Generated by `clerk-sync bench --print-pgbench-script --batch 8`")
    );
    assert_eq!(script.matches("generate_series(1, 8)").count(), 15);
    let (ok, script, _) = print(&[]);
    assert!(ok);
    assert_eq!(shape(&script), shape(&bench::pgbench_signup_script(1)));
    assert!(!script.contains("generate_series"));

    let (ok, _, err) = print(&["--batch", "65"]);
    assert!(!ok);
    assert!(err.contains("--batch 65 is out of range"), "{err}");
    let (ok, _, err) = print(&["--batch", "0"]);
    assert!(!ok);
    assert!(err.contains("--batch 0 is out of range"), "{err}");
    let (ok, _, err) = print(&["--batch", "8", "--scenario", "consume"]);
    assert!(!ok);
    assert!(
        err.contains("--batch is for the service's signup statement"),
        "{err}"
    );
    let (ok, _, err) = print(&["--batch", "8", "--peer", "plain"]);
    assert!(!ok);
    assert!(
        err.contains("--batch is for the service's signup statement"),
        "{err}"
    );
}

/// The database holds `n` users, each signed up once as the service does it: the signup
/// credits, one bonus row of 20 with the balance after it, one outbox job and one processed
/// event per user.
async fn assert_each_signed_up_once(store: &clerk_sync::store::Store, n: usize) {
    let users = users(store).await;
    assert_eq!(users.len(), n);
    assert!(users.iter().all(|u| (u.available, u.used) == (20, 0)));
    let rows = ledger(store).await;
    assert_eq!(rows.len(), n);
    for u in &users {
        let key = format!("signup:{}", u.clerk_id);
        let own: Vec<_> = rows
            .iter()
            .filter(|r| r.user_id.as_ref() == Some(&u.id))
            .map(|r| (r.idempotency_key.as_deref(), r.amount, r.balance_after))
            .collect();
        assert_eq!(own, [(Some(key.as_str()), Some(20), Some(20))]);
    }
    assert_eq!(jobs(store).await.len(), n);
    let events = events(store).await;
    assert_eq!(events.len(), n);
    assert!(events
        .iter()
        .all(|e| e.processed && e.status.as_deref() == Some("processed")));
}

/// Run `script` under the real pgbench: 2 clients, 20 transactions each.
async fn run_pgbench(script: &str, url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.pgbench");
    std::fs::write(&path, script).unwrap();
    let out = tokio::process::Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", "2", "-t", "20", "-f"])
        .arg(&path)
        .arg(url)
        .output()
        .await
        .expect("pgbench (Debian: postgresql-client) must be installed");
    assert!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

mod the_plain_signup_peer_signs_users_up_under_pgbench {
    use super::*;

    /// The second signup peer of `bench/compare` runs under the real pgbench: each
    /// transaction writes a processed event, a user with the signup credits, the bonus row
    /// and the outbox job, as the service would.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = TestDb::new(Backend::Postgres).await;
        db.store().await.migrate().await.unwrap();
        let script = bench::pgbench_plain_signup_script();

        run_pgbench(&script, &db.url).await;

        assert_each_signed_up_once(&db.store().await, 40).await;
    }
}

mod pgbench_script_runs_the_consume_statements {
    use super::*;

    /// The consume script `bench/compare` gives pgbench runs under the real pgbench: each
    /// transaction spends one generation and writes its ledger row with the balance after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = TestDb::new(Backend::Postgres).await;
        db.store().await.migrate().await.unwrap();
        db.exec(&bench::pgbench_consume_setup()).await;
        let script = bench::pgbench_consume_script();

        run_pgbench(&script, &db.url).await;

        let store = db.store().await;
        let (rows, used, wrong_balance): (i64, i64, i64) = with_pool!(&store, |pool, _p| {
            sqlx::query_as(
                r#"SELECT (SELECT COUNT(*) FROM "Transaction" WHERE "reason" = 'consume'),
                          (SELECT CAST(SUM("usedGenerations") AS BIGINT) FROM "User"),
                          (SELECT COUNT(*) FROM "Transaction" t JOIN "User" u ON u."id" = t."userId"
                            WHERE t."balanceAfter" > u."availableGenerations" - 1
                               OR t."balanceAfter" < u."availableGenerations" - u."usedGenerations")"#,
            )
            .fetch_one(pool)
            .await
            .unwrap()
        });
        assert_eq!((rows, used, wrong_balance), (40, 40, 0));
    }
}
