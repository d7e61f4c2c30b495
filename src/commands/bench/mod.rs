//! `clerk-sync bench`: a load generator for any deployment.
//!
//! - `signup` (default): N distinct, correctly signed `user.created` events at concurrency
//!   C (closed loop) or at a fixed rate (open loop), each optionally K times at once; given
//!   a database URL, checks that exactly one user, one signup ledger row and one processed
//!   event exist per Clerk user.
//! - `consume`: first signs up ⌈N / 10⌉ users through the webhook (not timed), then spends
//!   one generation N times through `POST /v1/users/{id}/credits/consume`, round robin over
//!   those users; given a database URL, checks N consume rows, N used generations and a
//!   ledger that adds up for every one of them.
//!
//! Both report throughput, latency percentiles and status counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Serialize;

use crate::config::DatabaseUrl;
use crate::webhooks::{sign, WebhookSecret};

pub use crate::cli::Scenario;
pub use pgbench::{
    pgbench_consume_script, pgbench_consume_setup, pgbench_plain_signup_script,
    pgbench_signup_script, PGBENCH_CONSUME_USERS, PGBENCH_MAX_BATCH,
};

pub mod delay_proxy;
mod pgbench;
mod verify;

/// Consumes per bench user: each starts with the signup bonus, so `SIGNUP_CREDITS` must be
/// at least this for every consume to succeed.
pub const CONSUMES_PER_USER: usize = 10;

#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub scenario: Scenario,
    /// The webhook endpoint; the credits API is on the same origin.
    pub url: String,
    pub secret: WebhookSecret,
    /// Bearer key for the credits API (`consume`).
    pub api_key: Option<String>,
    pub events: usize,
    pub concurrency: usize,
    /// Open loop: requests started per second, whatever the answers.
    pub rate: Option<f64>,
    pub duplicates: usize,
    pub verify: Option<DatabaseUrl>,
    /// Show how far the run is on stderr, rewritten in place twice a second (a terminal).
    pub progress: bool,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub scenario: Scenario,
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

/// What the database holds after the run, against what it should hold.
#[derive(Debug, Serialize)]
pub struct Verification {
    pub checks: Vec<Check>,
    pub exact: bool,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub what: &'static str,
    pub found: i64,
    pub expected: i64,
}

/// One request's answer: latency in microseconds and the status (0: no answer).
type Sample = (u32, u16);

/// Builds request `i` of a run (called once per delivery, so duplicates are identical).
type MakeRequest = Arc<dyn Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync>;

/// The body of event `i` of run `run`: a `user.created` in Clerk's shape. Written as text,
/// not through a `serde_json::Value`: the generator shares the machine with what it
/// measures, and every piece here is ASCII letters and digits that need no escaping (the
/// test below parses it as the service does).
fn event(run: &str, i: usize, now_ms: i64) -> (String, Vec<u8>) {
    let id = bench_clerk_id(run, i);
    let body = format!(
        r#"{{"data":{{"id":"{id}","object":"user","email_addresses":[{{"id":"idn_primary","email_address":"bench{run}x{i}@example.com","object":"email_address","verification":{{"status":"verified"}}}}],"primary_email_address_id":"idn_primary","first_name":"Bench","last_name":"User","image_url":"https://img.clerk.com/bench","created_at":{now_ms},"updated_at":{now_ms}}},"object":"event","timestamp":{now_ms},"type":"user.created"}}"#
    );
    (format!("msg_bench{run}x{i}"), body.into_bytes())
}

fn bench_clerk_id(run: &str, i: usize) -> String {
    format!("user_bench{run}x{i}")
}

const SVIX_ID: HeaderName = HeaderName::from_static("svix-id");
const SVIX_TIMESTAMP: HeaderName = HeaderName::from_static("svix-timestamp");
const SVIX_SIGNATURE: HeaderName = HeaderName::from_static("svix-signature");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A header value from text the generator made itself (ids, digits, base64).
fn value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("bench header values are visible ASCII")
}

/// The URL is parsed once here, not per request.
fn signup_requests(
    url: reqwest::Url,
    secret: WebhookSecret,
    run: String,
    now_ms: i64,
) -> MakeRequest {
    Arc::new(move |client, i| {
        let (msg_id, body) = event(&run, i, now_ms);
        let ts = chrono::Utc::now().timestamp();
        let signature = sign(&secret, &msg_id, ts, &body);
        client
            .post(url.clone())
            .header(CONTENT_TYPE, JSON)
            .header(SVIX_ID, value(msg_id))
            .header(SVIX_TIMESTAMP, ts)
            .header(SVIX_SIGNATURE, value(signature))
            .body(body)
    })
}

/// Each user's consume URL is parsed once here, not per request.
fn consume_requests(
    origin: &reqwest::Url,
    api_key: String,
    run: String,
    users: usize,
) -> anyhow::Result<MakeRequest> {
    let urls = (0..users)
        .map(|u| {
            let path = format!("v1/users/{}/credits/consume", bench_clerk_id(&run, u));
            origin.join(&path).context("--url")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let auth = value(format!("Bearer {api_key}"));
    Ok(Arc::new(move |client, i| {
        client
            .post(urls[i % urls.len()].clone())
            .header(AUTHORIZATION, auth.clone())
            .header(CONTENT_TYPE, JSON)
            .body(format!(
                r#"{{"amount":1,"idempotencyKey":"bench{run}x{i}"}}"#
            ))
    }))
}

async fn send(request: reqwest::RequestBuilder) -> Sample {
    let start = Instant::now();
    let status = request
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    (
        start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
        status,
    )
}

/// Send request `i` `duplicates` times at once.
async fn deliver_all(
    client: reqwest::Client,
    make: MakeRequest,
    i: usize,
    duplicates: usize,
) -> Vec<Sample> {
    let extra: Vec<_> = (1..duplicates)
        .map(|_| tokio::spawn(send(make(&client, i))))
        .collect();
    let mut samples = vec![send(make(&client, i)).await];
    for h in extra {
        samples.push(h.await.unwrap_or((0, 0)));
    }
    samples
}

/// `  12,000 / 20,000 requests  (6,100/s)`: the progress line, without its `\r`.
fn progress_line(done: usize, total: usize, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    format!(
        "  {} / {} requests  ({}/s)",
        thousands(done as u64),
        thousands(total as u64),
        thousands(rate.round() as u64)
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rewrite the progress line on stderr every 500 ms until dropped.
fn show_progress(done: Arc<AtomicUsize>, total: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use std::io::Write;
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let line = progress_line(done.load(Ordering::Relaxed), total, start.elapsed());
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
        }
    })
}

/// Requests `0..count`, closed loop at `concurrency` or open loop at `rate`; each
/// request (with its duplicates) counts one in `done` when answered.
async fn drive(
    client: &reqwest::Client,
    make: MakeRequest,
    count: usize,
    concurrency: usize,
    rate: Option<f64>,
    duplicates: usize,
    done: &Arc<AtomicUsize>,
) -> anyhow::Result<Vec<Sample>> {
    let start = Instant::now();
    let mut all = Vec::with_capacity(count * duplicates);
    match rate {
        None => {
            let next = Arc::new(AtomicUsize::new(0));
            let mut workers = Vec::new();
            for _ in 0..concurrency {
                let (client, make, next, done) =
                    (client.clone(), make.clone(), next.clone(), done.clone());
                workers.push(tokio::spawn(async move {
                    let mut samples = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return samples;
                        }
                        samples
                            .extend(deliver_all(client.clone(), make.clone(), i, duplicates).await);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for w in workers {
                all.extend(w.await?);
            }
        }
        Some(rate) => {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut tasks = Vec::with_capacity(count);
            for i in 0..count {
                // Latency counts from the scheduled start, so a slow server cannot hide
                // its queueing (no coordinated omission).
                let scheduled = start + interval.mul_f64(i as f64);
                tokio::time::sleep_until(scheduled.into()).await;
                let (client, make, done) = (client.clone(), make.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    let samples = deliver_all(client, make, i, duplicates).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    let waited = scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    samples
                        .into_iter()
                        .map(|(_, status)| (waited, status))
                        .collect::<Vec<_>>()
                }));
            }
            for t in tasks {
                all.extend(t.await?);
            }
        }
    }
    Ok(all)
}

pub async fn run(plan: BenchPlan) -> anyhow::Result<BenchReport> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency * plan.duplicates.max(1))
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = reqwest::Url::parse(&plan.url).context("--url")?;
    let run_id = cuid2::slug();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let duplicates = plan.duplicates.max(1);
    let signups = signup_requests(url.clone(), plan.secret.clone(), run_id.clone(), now_ms);
    let (make, users) = match plan.scenario {
        Scenario::Signup => (signups, plan.events),
        Scenario::Consume => {
            let api_key = plan
                .api_key
                .clone()
                .context("the consume scenario needs --api-key (one of CLERK_SYNC_API_KEYS)")?;
            let origin = url.join("/").context("--url")?;
            let users = plan.events.div_ceil(CONSUMES_PER_USER);
            let untimed = Arc::new(AtomicUsize::new(0));
            let setup = drive(&client, signups, users, plan.concurrency, None, 1, &untimed).await?;
            let failed = setup
                .iter()
                .filter(|(_, s)| !(200..300).contains(s))
                .count();
            anyhow::ensure!(
                failed == 0,
                "{failed} of {users} bench users could not sign up"
            );
            (
                consume_requests(&origin, api_key, run_id.clone(), users)?,
                users,
            )
        }
    };
    let done = Arc::new(AtomicUsize::new(0));
    let progress = plan
        .progress
        .then(|| show_progress(done.clone(), plan.events));
    let start = Instant::now();
    let samples = drive(
        &client,
        make,
        plan.events,
        plan.concurrency,
        plan.rate,
        duplicates,
        &done,
    )
    .await;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(progress) = progress {
        progress.abort();
        eprint!("\r\x1b[K");
    }
    let samples = samples?;

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
        Some(db) => Some(verify::verify(db, plan.scenario, &run_id, users, plan.events).await?),
        None => None,
    };
    Ok(BenchReport {
        scenario: plan.scenario,
        url: plan.url,
        mode: match plan.rate {
            Some(r) => format!("open loop at {r} requests/s"),
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

impl BenchReport {
    pub fn render(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let mut out = format!(
            "clerk-sync bench {:?} → {}\n  mode         {}\n  events       {} × {} deliver{}\n  requests     {}\n  duration     {:.2} s\n  throughput   {:.0} req/s\n  latency ms   p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}\n  statuses     {}\n",
            self.scenario,
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
            let checks: Vec<String> = v
                .checks
                .iter()
                .map(|c| format!("{} {}/{}", c.what, c.found, c.expected))
                .collect();
            out.push_str(&format!(
                "  database     {}: {}\n",
                checks.join(", "),
                if v.exact { "exact" } else { "MISMATCH" }
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_counts_and_rates_in_thousands() {
        assert_eq!(
            progress_line(12_000, 20_000, Duration::from_secs(2)),
            "  12,000 / 20,000 requests  (6,000/s)"
        );
        assert_eq!(
            progress_line(0, 5, Duration::ZERO),
            "  0 / 5 requests  (0/s)"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    /// The hand-written body is the event the service expects: it parses as a Clerk
    /// `user.created` with the bench user's id and address, and as JSON equal to the
    /// same event built through `serde_json`.
    #[test]
    fn the_signup_body_is_a_clerk_user_created_event() {
        let (msg_id, body) = event("r1a2", 7, 1_700_000_000_123);
        assert_eq!(msg_id, "msg_benchr1a2x7");
        let envelope = crate::webhooks::clerk_event::parse_envelope(&body).expect("parses");
        let profile = envelope.user_profile().expect("a user");
        assert_eq!(profile.clerk_id.as_str(), "user_benchr1a2x7");
        assert_eq!(profile.clerk_updated_at, 1_700_000_000_123);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "data": {
                    "id": "user_benchr1a2x7",
                    "object": "user",
                    "email_addresses": [{"id": "idn_primary", "email_address": "benchr1a2x7@example.com", "object": "email_address", "verification": {"status": "verified"}}],
                    "primary_email_address_id": "idn_primary",
                    "first_name": "Bench",
                    "last_name": "User",
                    "image_url": "https://img.clerk.com/bench",
                    "created_at": 1_700_000_000_123_i64,
                    "updated_at": 1_700_000_000_123_i64,
                },
                "object": "event",
                "timestamp": 1_700_000_000_123_i64,
                "type": "user.created",
            })
        );
    }
}
