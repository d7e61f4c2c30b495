//! `clerk-sync bench`: a signup load generator for any deployment. Sends N distinct,
//! correctly signed `user.created` events at concurrency C (closed loop) or at a fixed
//! rate (open loop), each optionally K times at once, then reports throughput, latency
//! percentiles and status counts, and, given a database URL, checks that exactly one
//! user, one signup ledger row and one processed event exist per Clerk user.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::config::DatabaseUrl;
use crate::store::Store;
use crate::webhooks::{sign, WebhookSecret};
use crate::with_pool;

#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub url: String,
    pub secret: WebhookSecret,
    pub events: usize,
    pub concurrency: usize,
    /// Open loop: requests started per second, whatever the answers.
    pub rate: Option<f64>,
    pub duplicates: usize,
    pub verify: Option<DatabaseUrl>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub url: String,
    pub mode: String,
    pub events: usize,
    pub duplicates: usize,
    pub concurrency: usize,
    pub requests: usize,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub latency_ms: Latency,
    pub statuses: BTreeMap<String, usize>,
    pub non_2xx: usize,
    pub database: Option<Verification>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct Verification {
    pub users: i64,
    pub signup_ledger_rows: i64,
    pub processed_events: i64,
    pub expected: i64,
    pub exact: bool,
}

/// One request's answer: latency in microseconds and the status (0: no answer).
type Sample = (u32, u16);

/// The body of event `i` of run `run`: a `user.created` in Clerk's shape.
fn event(run: &str, i: usize, now_ms: i64) -> (String, Vec<u8>) {
    let id = format!("user_bench{run}x{i}");
    let body = serde_json::json!({
        "data": {
            "id": id,
            "object": "user",
            "email_addresses": [{"id": "idn_primary", "email_address": format!("bench{run}x{i}@example.com"), "object": "email_address"}],
            "primary_email_address_id": "idn_primary",
            "first_name": "Bench",
            "last_name": "User",
            "image_url": "https://img.clerk.com/bench",
            "created_at": now_ms,
            "updated_at": now_ms,
        },
        "object": "event",
        "timestamp": now_ms,
        "type": "user.created",
    });
    (
        format!("msg_bench{run}x{i}"),
        serde_json::to_vec(&body).expect("serializable"),
    )
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    secret: &WebhookSecret,
    msg_id: &str,
    body: &[u8],
) -> Sample {
    let ts = chrono::Utc::now().timestamp();
    let signature = sign(secret, msg_id, ts, body);
    let start = Instant::now();
    let status = client
        .post(url)
        .header("content-type", "application/json")
        .header("svix-id", msg_id)
        .header("svix-timestamp", ts.to_string())
        .header("svix-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    (
        start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
        status,
    )
}

/// Send one event `duplicates` times at once.
async fn deliver_all(
    client: reqwest::Client,
    url: Arc<str>,
    secret: WebhookSecret,
    msg_id: String,
    body: Vec<u8>,
    duplicates: usize,
) -> Vec<Sample> {
    let body: Arc<[u8]> = body.into();
    let mut extra = Vec::new();
    for _ in 1..duplicates {
        let (client, url, secret, msg_id, body) = (
            client.clone(),
            url.clone(),
            secret.clone(),
            msg_id.clone(),
            body.clone(),
        );
        extra.push(tokio::spawn(async move {
            deliver(&client, &url, &secret, &msg_id, &body).await
        }));
    }
    let mut samples = vec![deliver(&client, &url, &secret, &msg_id, &body).await];
    for h in extra {
        samples.push(h.await.unwrap_or((0, 0)));
    }
    samples
}

pub async fn run(plan: BenchPlan) -> anyhow::Result<BenchReport> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency * plan.duplicates.max(1))
        .timeout(Duration::from_secs(30))
        .build()?;
    let url: Arc<str> = plan.url.clone().into();
    let run_id = cuid2::slug();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let duplicates = plan.duplicates.max(1);
    let start = Instant::now();
    let samples: Vec<Sample> = match plan.rate {
        None => {
            let next = Arc::new(AtomicUsize::new(0));
            let mut workers = Vec::new();
            for _ in 0..plan.concurrency {
                let (client, url, secret, next, run_id) = (
                    client.clone(),
                    url.clone(),
                    plan.secret.clone(),
                    next.clone(),
                    run_id.clone(),
                );
                let events = plan.events;
                workers.push(tokio::spawn(async move {
                    let mut samples = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= events {
                            return samples;
                        }
                        let (msg_id, body) = event(&run_id, i, now_ms);
                        samples.extend(
                            deliver_all(
                                client.clone(),
                                url.clone(),
                                secret.clone(),
                                msg_id,
                                body,
                                duplicates,
                            )
                            .await,
                        );
                    }
                }));
            }
            let mut all = Vec::new();
            for w in workers {
                all.extend(w.await?);
            }
            all
        }
        Some(rate) => {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut tasks = Vec::with_capacity(plan.events);
            for i in 0..plan.events {
                // Latency counts from the scheduled start, so a slow server cannot hide
                // its queueing (no coordinated omission).
                let scheduled = start + interval.mul_f64(i as f64);
                tokio::time::sleep_until(scheduled.into()).await;
                let (msg_id, body) = event(&run_id, i, now_ms);
                let (client, url, secret) = (client.clone(), url.clone(), plan.secret.clone());
                tasks.push(tokio::spawn(async move {
                    let samples = deliver_all(client, url, secret, msg_id, body, duplicates).await;
                    let waited = scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    samples
                        .into_iter()
                        .map(|(_, status)| (waited, status))
                        .collect::<Vec<_>>()
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await?);
            }
            all
        }
    };
    let seconds = start.elapsed().as_secs_f64();

    let mut latencies: Vec<u32> = samples.iter().map(|(l, _)| *l).collect();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[idx]) / 1000.0
    };
    let mut statuses = BTreeMap::new();
    for (_, s) in &samples {
        *statuses
            .entry(if *s == 0 {
                "no answer".to_owned()
            } else {
                s.to_string()
            })
            .or_insert(0) += 1;
    }
    let non_2xx = samples
        .iter()
        .filter(|(_, s)| !(200..300).contains(s))
        .count();
    let database = match &plan.verify {
        Some(db) => Some(verify(db, &run_id, plan.events).await?),
        None => None,
    };
    Ok(BenchReport {
        url: plan.url,
        mode: match plan.rate {
            Some(r) => format!("open loop at {r} events/s"),
            None => format!("closed loop at concurrency {}", plan.concurrency),
        },
        events: plan.events,
        duplicates,
        concurrency: plan.concurrency,
        requests: samples.len(),
        seconds,
        requests_per_second: samples.len() as f64 / seconds,
        latency_ms: Latency {
            p50: pct(0.50),
            p95: pct(0.95),
            p99: pct(0.99),
            max: pct(1.0),
        },
        statuses,
        non_2xx,
        database,
    })
}

async fn verify(url: &DatabaseUrl, run_id: &str, expected: usize) -> anyhow::Result<Verification> {
    const COUNTS: &str = r#"
SELECT (SELECT COUNT(*) FROM "User" WHERE substr("clerkId", 1, length($1)) = $1),
       (SELECT COUNT(DISTINCT "tracking_id") FROM "Transaction"
         WHERE "reason" = 'signup_bonus' AND substr("tracking_id", 1, length($1)) = $1),
       (SELECT COUNT(*) FROM "Transaction"
         WHERE "reason" = 'signup_bonus' AND substr("tracking_id", 1, length($1)) = $1),
       (SELECT COUNT(*) FROM "WebhookEvent" WHERE substr("eventId", 1, length($2)) = $2 AND "status" = 'processed')"#;
    let store = Store::connect(url, 1, Duration::from_secs(10))
        .await
        .context("connecting to verify")?;
    let user_prefix = format!("user_bench{run_id}x");
    let msg_prefix = format!("msg_bench{run_id}x");
    let (users, distinct_signup, signup, events): (i64, i64, i64, i64) =
        with_pool!(&store, |pool, p| {
            sqlx::query_as(COUNTS)
                .bind(&user_prefix)
                .bind(&msg_prefix)
                .persistent(p)
                .fetch_one(pool)
                .await
                .context("counting rows")?
        });
    store.close().await;
    let expected = expected as i64;
    Ok(Verification {
        users,
        signup_ledger_rows: signup,
        processed_events: events,
        expected,
        exact: users == expected
            && signup == expected
            && distinct_signup == expected
            && events == expected,
    })
}

/// A pgbench script running exactly the service's signup statements for a new user
/// (`signup::new_user_statements_postgres`), with each `$n` bound to what the service binds.
pub fn pgbench_signup_script() -> String {
    let (_, payload) = event("pgb", 0, chrono::Utc::now().timestamp_millis());
    let payload = format!(
        "'{}'::jsonb",
        String::from_utf8(payload)
            .expect("utf-8")
            .replace('\'', "''")
    );
    let job = "'{\"type\": \"update_clerk_metadata.v1\", \"clerkId\": \"user_pgb\", \"userId\": \"usr\"}'::jsonb".to_owned();
    let id = |prefix: &str| format!("'{prefix}' || CAST(:n AS text)");
    let clerk = id("user_pgb");
    let email = format!("{} || '@example.com'", id("pgb"));
    let now = "LOCALTIMESTAMP".to_owned();
    let s = |v: &str| v.to_owned();
    let photo = s("'https://img.clerk.com/bench'");
    let params: [Vec<String>; 1] = [
        // PG_SIGNUP for a new user: event, sync row, user, bonus, job
        vec![
            id("evt"),
            id("msg_pgb"),
            s("'user.created'"),
            payload,
            clerk.clone(),
            s("1654012591835"),
            email,
            photo,
            s("'Bench'"),
            s("'User'"),
            now,
            id("usr"),
            s("20"),
            id("txn"),
            // pgbench reads `:name` as a variable even inside quotes: chr(58) is ':'.
            format!("'signup' || chr(58) || {clerk}"),
            id("job"),
            s("'update_clerk_metadata'"),
            job,
        ],
    ];
    let mut script = String::from(
        "-- Generated by `clerk-sync bench --print-pgbench-script` from signup::new_user_statements_postgres().\n\\set n random(1, 9000000000000000000)\n",
    );
    for (sql, args) in crate::signup::new_user_statements_postgres()
        .iter()
        .zip(params)
    {
        let mut stmt = sql.trim().to_owned();
        // Highest index first, so `$1` never eats the start of `$10`.
        for (i, arg) in args.iter().enumerate().rev() {
            stmt = stmt.replace(&format!("${}", i + 1), arg);
        }
        assert!(
            !stmt.contains('$'),
            "a parameter of a signup statement has no pgbench value"
        );
        script.push_str(&stmt);
        script.push_str(";\n");
    }
    script
}

impl BenchReport {
    pub fn render(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let mut out = format!(
            "clerk-sync bench → {}\n  mode         {}\n  events       {} × {} deliver{}\n  requests     {}\n  duration     {:.2} s\n  throughput   {:.0} req/s\n  latency ms   p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}\n  statuses     {}\n",
            self.url,
            self.mode,
            self.events,
            self.duplicates,
            if self.duplicates == 1 { "y" } else { "ies each" },
            self.requests,
            self.seconds,
            self.requests_per_second,
            self.latency_ms.p50,
            self.latency_ms.p95,
            self.latency_ms.p99,
            self.latency_ms.max,
            statuses.join(", "),
        );
        if let Some(v) = &self.database {
            out.push_str(&format!(
                "  database     users {}/{}, signup ledger rows {}/{}, processed events {}/{}: {}\n",
                v.users,
                v.expected,
                v.signup_ledger_rows,
                v.expected,
                v.processed_events,
                v.expected,
                if v.exact { "exact" } else { "MISMATCH" }
            ));
        }
        out
    }
}
