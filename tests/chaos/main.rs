//! The chaos suite: the real `clerk-sync serve` binary under faults, on loopback, each
//! scenario checked row by row (every delivered message: one user, one signup_bonus row,
//! one processed event, one outbox job done, one metadata PATCH at the fake Clerk; the
//! ledger adds up), and a table of lost / doubled / stuck counts printed at the end.
//!
//! `cargo test --test chaos` runs the bounded profile (CI, a few minutes); the full one:
//!
//! ```text
//! ulimit -n 20000; CHAOS_PROFILE=full cargo test --release --test chaos -- --nocapture
//! ```
//!
//! Scenarios that restart PostgreSQL make their own throwaway cluster with the
//! distribution's `initdb`; the others use the server of `scripts/test`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[allow(dead_code, unused_imports)]
#[path = "../api/helpers/mod.rs"]
mod helpers;

mod fuzz;
mod harness;

use harness::*;
use helpers::*;

struct Profile {
    name: &'static str,
    signups: usize,
    backlog: usize,
    connections: usize,
    fuzz: usize,
}

fn profile() -> Profile {
    match std::env::var("CHAOS_PROFILE").as_deref() {
        Ok("full") => Profile {
            name: "full",
            signups: 2000,
            backlog: 2000,
            connections: 2000,
            fuzz: 50_000,
        },
        _ => Profile {
            name: "ci",
            signups: 200,
            backlog: 300,
            connections: 300,
            fuzz: 3000,
        },
    }
}

/// One line of the report.
pub struct Row {
    scenario: String,
    load: String,
    fault: String,
    tally: Tally,
    measured: String,
    problems: Vec<String>,
}

fn env_for(database_url: &str, clerk: Option<&FakeClerk>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("CLERK_WEBHOOK_SIGNING_SECRET", SECRET.to_owned()),
        ("CLERK_SYNC_API_KEYS", API_KEY.to_owned()),
    ];
    if let Some(clerk) = clerk {
        env.push(("CLERK_API_URL", clerk.url.clone()));
        env.push(("CLERK_SECRET_KEY", FakeClerk::KEY.to_owned()));
    }
    env
}

async fn wait_for(count: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::SeqCst) < at_least && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// PostgreSQL restarted (`fast` or `immediate`) while signups arrive.
async fn database_restart(mode: &str, p: &Profile) -> Row {
    let cluster = Cluster::start();
    let clerk = FakeClerk::start().await;
    let service = Service::start(&env_for(&cluster.url(), Some(&clerk))).await;
    let messages = messages(&format!("restart{mode}"), p.signups);
    let delivered = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(deliver(
        vec![service.webhook_url()],
        messages.clone(),
        16,
        Duration::from_secs(180),
        delivered.clone(),
    ));
    wait_for(&delivered, p.signups / 3).await;
    let down = Instant::now();
    cluster.restart(mode);
    let restart_ms = down.elapsed().as_millis();
    let sent = sender.await.unwrap();
    let store = store_at(&cluster.url()).await;
    let (tally, problems) = check(&store, &messages, &clerk, Duration::from_secs(120)).await;
    store.close().await;
    Row {
        scenario: format!("PostgreSQL restart ({mode}) under load"),
        load: format!("{} signups, 16 at once", p.signups),
        fault: format!("`pg_ctl restart -m {mode}` after a third ({restart_ms} ms down)"),
        tally,
        measured: format!(
            "{} requests, {} non-2xx, {} unanswered (retried)",
            sent.requests, sent.non_2xx, sent.no_answer
        ),
        problems,
    }
}

/// kill -9 of the service while signups arrive, then started again.
async fn kill9(backend: Backend, p: &Profile) -> Row {
    let db = TestDb::new(backend).await;
    let clerk = FakeClerk::start().await;
    let mut service = Service::start(&env_for(&db.url, Some(&clerk))).await;
    let messages = messages(&format!("kill{backend:?}"), p.signups);
    let delivered = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(deliver(
        vec![service.webhook_url()],
        messages.clone(),
        16,
        Duration::from_secs(180),
        delivered.clone(),
    ));
    wait_for(&delivered, p.signups / 3).await;
    service.kill9_and_restart().await;
    let sent = sender.await.unwrap();
    let store = db.store().await;
    let (tally, problems) = check(&store, &messages, &clerk, Duration::from_secs(120)).await;
    store.close().await;
    Row {
        scenario: format!("kill -9 under load ({backend:?})"),
        load: format!("{} signups, 16 at once", p.signups),
        fault: "kill -9 after a third, started again".into(),
        tally,
        measured: format!(
            "{} requests, {} non-2xx, {} unanswered (retried)",
            sent.requests, sent.non_2xx, sent.no_answer
        ),
        problems,
    }
}

/// Two replicas on one PostgreSQL, every message delivered to both at once.
async fn two_replicas(p: &Profile) -> Row {
    let db = TestDb::new(Backend::Postgres).await;
    let clerk = FakeClerk::start().await;
    let a = Service::start(&env_for(&db.url, Some(&clerk))).await;
    let b = Service::start(&env_for(&db.url, Some(&clerk))).await;
    let messages = messages("replicas", p.signups);
    let sent = deliver(
        vec![a.webhook_url(), b.webhook_url()],
        messages.clone(),
        16,
        Duration::from_secs(180),
        Arc::default(),
    )
    .await;
    let store = db.store().await;
    let (tally, problems) = check(&store, &messages, &clerk, Duration::from_secs(120)).await;
    store.close().await;
    Row {
        scenario: "two replicas, duplicates split between them".into(),
        load: format!("{} signups, each to both replicas", p.signups),
        fault: "every message delivered twice at once".into(),
        tally,
        measured: format!("{} requests, {} non-2xx", sent.requests, sent.non_2xx),
        problems,
    }
}

/// A backlog of metadata updates built while Clerk was unusable, then drained through
/// 500s, 429s with Retry-After and calls that hang past the client's timeout.
async fn clerk_failing_then_recovering(p: &Profile) -> Row {
    let db = TestDb::new(Backend::Postgres).await;
    let clerk = FakeClerk::start().await;
    let messages = messages("clerk", p.backlog);
    {
        // No CLERK_SECRET_KEY: every job waits.
        let mut first = Service::start(&env_for(&db.url, None)).await;
        let sent = deliver(
            vec![first.webhook_url()],
            messages.clone(),
            16,
            Duration::from_secs(180),
            Arc::default(),
        )
        .await;
        assert_eq!(sent.undelivered, 0);
        first.sigterm().await;
    }
    let mut script = vec![500u16; 30];
    script.extend([429; 5]);
    clerk.script(&script);
    clerk.delay_every_call(Duration::from_millis(5));
    clerk.hang_next(4, Duration::from_secs(12));
    let started = Instant::now();
    let service = Service::start(&env_for(&db.url, Some(&clerk))).await;
    let store = db.store().await;
    let (tally, problems) = check(&store, &messages, &clerk, Duration::from_secs(300)).await;
    let drained = started.elapsed();
    store.close().await;
    drop(service);
    Row {
        scenario: "Clerk failing, then recovering".into(),
        load: format!("backlog of {} metadata updates", p.backlog),
        fault: "30 × 500, 5 × 429 (Retry-After: 1), 4 calls hanging 12 s".into(),
        tally,
        measured: format!(
            "drained in {:.1} s ({:.0} jobs/s; OUTBOX_RATE_PER_SECOND=50)",
            drained.as_secs_f64(),
            p.backlog as f64 / drained.as_secs_f64()
        ),
        problems,
    }
}

/// SIGTERM while signups arrive and clients hold half-sent headers.
async fn sigterm(p: &Profile) -> Row {
    let db = TestDb::new(Backend::Sqlite).await;
    let clerk = FakeClerk::start().await;
    let mut env = env_for(&db.url, Some(&clerk));
    env.push(("SHUTDOWN_DRAIN_MS", "2000".into()));
    env.push(("HEADER_READ_TIMEOUT_MS", "600000".into()));
    let mut service = Service::start(&env).await;
    let mut half_open = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", service.port))
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut s,
            b"POST /api/webhooks/clerk HTTP/1.1\r\nHost: x\r\n",
        )
        .await
        .unwrap();
        half_open.push(s);
    }
    let messages = messages("sigterm", p.signups);
    let delivered = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(deliver(
        vec![service.webhook_url()],
        messages.clone(),
        16,
        Duration::from_secs(180),
        delivered.clone(),
    ));
    wait_for(&delivered, p.signups / 3).await;
    let exit = service.sigterm().await;
    let mut problems = Vec::new();
    if exit > Duration::from_secs(7) {
        problems.push(format!("SIGTERM took {exit:?} with a 2 s drain"));
    }
    service.restart().await;
    let sent = sender.await.unwrap();
    let store = db.store().await;
    let (tally, more) = check(&store, &messages, &clerk, Duration::from_secs(120)).await;
    problems.extend(more);
    store.close().await;
    drop(half_open);
    Row {
        scenario: "SIGTERM under load, 20 clients holding half-sent headers".into(),
        load: format!("{} signups, 16 at once (SQLite)", p.signups),
        fault: "SIGTERM after a third (SHUTDOWN_DRAIN_MS=2000), started again".into(),
        tally,
        measured: format!(
            "exited {} ms after SIGTERM; {} requests, {} unanswered (retried)",
            exit.as_millis(),
            sent.requests,
            sent.no_answer
        ),
        problems,
    }
}

/// Many idle and slow connections at once: the service still answers, and gives its
/// memory back when they are gone.
async fn idle_and_slow_connections(p: &Profile) -> Row {
    let db = TestDb::new(Backend::Postgres).await;
    let mut env = env_for(&db.url, None);
    env.push(("MAX_CONNECTIONS", "200".into()));
    env.push(("HEADER_READ_TIMEOUT_MS", "3000".into()));
    let service = Service::start(&env).await;
    let client = reqwest::Client::new();
    let health = format!("{}/healthz", service.base);
    let _ = client.get(&health).send().await;
    let idle_kb = service.rss_kb();
    let mut held = Vec::new();
    for i in 0..p.connections {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", service.port)).await else {
            break;
        };
        if i % 2 == 1 {
            // Slow: a few bytes of a request, never finished.
            let _ =
                tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /healthz HTTP/1.1\r\nHo").await;
        }
        held.push(s);
    }
    let opened = held.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held_kb = service.rss_kb();
    // A new client, on a new connection: over MAX_CONNECTIONS it waits in the backlog
    // until idle connections reach HEADER_READ_TIMEOUT_MS and are closed.
    let newcomer = reqwest::Client::new();
    let asked = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(30), newcomer.get(&health).send())
        .await
        .map(|r| r.map(|r| r.status().as_u16()));
    let health_ms = asked.elapsed().as_millis();
    drop(held);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_kb = service.rss_kb();
    let mut problems = Vec::new();
    if !matches!(answered, Ok(Ok(200))) {
        problems.push(format!("/healthz while held: {answered:?}"));
    }
    if after_kb > idle_kb + 16 * 1024 {
        problems.push(format!(
            "memory not given back: {} MB idle, {} MB after",
            idle_kb / 1024,
            after_kb / 1024
        ));
    }
    Row {
        scenario: "idle and slow connections".into(),
        load: format!("{opened} connections held open (half silent, half slow)"),
        fault: "MAX_CONNECTIONS=200, HEADER_READ_TIMEOUT_MS=3000".into(),
        tally: Tally::default(),
        measured: format!(
            "a new connection's /healthz answered in {health_ms} ms; RSS {} MB idle, {} MB held, {} MB after",
            idle_kb / 1024,
            held_kb / 1024,
            after_kb / 1024
        ),
        problems,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos() {
    helpers::init();
    let p = profile();
    let started = Instant::now();
    // CHAOS_ONLY=<part of a scenario's key> runs only the scenarios it names.
    let only = std::env::var("CHAOS_ONLY").ok();
    let wanted = |key: &str| only.as_deref().is_none_or(|o| key.contains(o));
    let mut rows = Vec::new();
    if wanted("restart-fast") {
        rows.push(database_restart("fast", &p).await);
    }
    if wanted("restart-immediate") {
        rows.push(database_restart("immediate", &p).await);
    }
    if wanted("kill9-postgres") {
        rows.push(kill9(Backend::Postgres, &p).await);
    }
    if wanted("kill9-sqlite") {
        rows.push(kill9(Backend::Sqlite, &p).await);
    }
    if wanted("replicas") {
        rows.push(two_replicas(&p).await);
    }
    if wanted("clerk") {
        rows.push(clerk_failing_then_recovering(&p).await);
    }
    if wanted("sigterm") {
        rows.push(sigterm(&p).await);
    }
    if wanted("connections") {
        rows.push(idle_and_slow_connections(&p).await);
    }
    if wanted("fuzz") {
        rows.push(fuzz::fuzz(p.fuzz).await);
    }

    println!(
        "\nchaos profile `{}`, {} cores, {:.0} s\n",
        p.name,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    println!("| scenario | load | fault | lost | doubled | stuck | measured |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario, r.load, r.fault, r.tally.lost, r.tally.doubled, r.tally.stuck, r.measured
        );
    }
    let failures: Vec<String> = rows
        .iter()
        .filter(|r| r.tally != Tally::default() || !r.problems.is_empty())
        .map(|r| format!("{}: {:?}; {:?}", r.scenario, r.tally, r.problems))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}
