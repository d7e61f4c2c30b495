//! The chaos suite's parts: the real `clerk-sync serve` process, a throwaway PostgreSQL
//! cluster that can be restarted, a sender that retries like Svix, and the row-by-row
//! check of what every delivered message must leave behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clerk_sync::store::Store;
use clerk_sync::webhooks::{sign, WebhookSecret};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::helpers::*;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn store_at(url: &str) -> Store {
    let url = clerk_sync::config::DatabaseUrl::parse(url).unwrap();
    Store::connect(&url, 4, Duration::from_secs(10))
        .await
        .unwrap()
}

/// A `clerk-sync serve` process.
pub struct Service {
    child: Child,
    pub port: u16,
    pub base: String,
    log: PathBuf,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Service {
    /// Start the binary with `env` on a free port and wait until `/healthz` answers.
    pub async fn start(env: &[(&str, String)]) -> Self {
        let port = free_port();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        Self::spawn(port, env).await
    }

    async fn spawn(port: u16, env: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serve.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "clerk_sync=warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("start clerk-sync serve");
        let service = Self {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            log,
            env,
            _dir: dir,
        };
        service.wait_healthy().await;
        service
    }

    async fn wait_healthy(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "serve did not come up: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/api/webhooks/clerk", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// kill -9, then start the same service again on the same port.
    pub async fn kill9_and_restart(&mut self) {
        self.child.kill().await.unwrap();
        let env = self.env.clone();
        let port = self.port;
        let previous = std::mem::replace(self, Self::spawn(port, env).await);
        // Keep the killed process's log with the new one's.
        let old = std::fs::read_to_string(&previous.log).unwrap_or_default();
        let new = std::fs::read_to_string(&self.log).unwrap_or_default();
        std::fs::write(&self.log, old + &new).unwrap();
    }

    /// SIGTERM, and how long the process took to exit.
    pub async fn sigterm(&mut self) -> Duration {
        let started = Instant::now();
        let pid = self.pid().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("serve exited after SIGTERM")
            .unwrap();
        started.elapsed()
    }

    /// Start again after it exited, on the same port.
    pub async fn restart(&mut self) {
        let env = self.env.clone();
        *self = Self::spawn(self.port, env).await;
    }

    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A PostgreSQL cluster of its own, in a temporary directory on a free port, for the
/// scenarios that restart the database. Made with the distribution's `initdb`.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

fn as_postgres(program: &std::path::Path) -> std::process::Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    }
}

impl Cluster {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries (Debian: package postgresql) for the restart scenarios")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let _ = std::process::Command::new("chown")
            .args(["postgres"])
            .arg(dir.path())
            .status();
        let port = free_port();
        let data = dir.path().join("data");
        let ok = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "initdb failed");
        let cluster = Self { dir, port, bin };
        cluster.pg_ctl(&["start", "-w", "-l"], true);
        cluster
    }

    fn pg_ctl(&self, args: &[&str], with_log: bool) {
        let data = self.dir.path().join("data");
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(&data).args(args);
        if with_log {
            c.arg(self.dir.path().join("log"));
        }
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let ok = c
            .args(["-o", &opts])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_ctl {args:?} failed");
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m fast|immediate`.
    pub fn restart(&self, mode: &str) {
        self.pg_ctl(&["restart", "-w", "-m", mode, "-l"], true);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

/// One signup as Svix would deliver it.
#[derive(Clone)]
pub struct Message {
    pub msg_id: String,
    pub clerk_id: String,
    pub body: Vec<u8>,
}

pub fn messages(run: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let clerk_id = format!("user_chaos{run}x{i}");
            let mut event = fixture_json("clerk-user-created.json");
            event["data"]["id"] = json!(clerk_id);
            event["data"]["email_addresses"][0]["email_address"] =
                json!(format!("chaos{run}x{i}@example.org"));
            Message {
                msg_id: format!("msg_chaos{run}x{i}"),
                clerk_id,
                body: serde_json::to_vec(&event).unwrap(),
            }
        })
        .collect()
}

/// The window over which a sender starts its messages.
pub const SPREAD: Duration = Duration::from_secs(3);

/// What a sender saw.
#[derive(Debug, Default)]
pub struct Sent {
    pub requests: usize,
    pub non_2xx: usize,
    pub no_answer: usize,
    /// Messages never answered 2xx before the deadline.
    pub undelivered: usize,
}

/// Deliver every message to each of `targets` (one target: once; several: a duplicate
/// to each), their first attempts spread evenly over `SPREAD` so that a fault lands
/// mid-load, at most `concurrency` at a time, each retried like Svix (sooner) until it is
/// answered 2xx or `deadline` passes. `delivered` counts messages answered 2xx.
pub async fn deliver(
    targets: Vec<String>,
    messages: Vec<Message>,
    concurrency: usize,
    deadline: Duration,
    delivered: Arc<AtomicUsize>,
) -> Sent {
    let count = messages.len().max(1) as u32;
    let start = Instant::now();
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let until = Instant::now() + deadline;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, m) in messages.into_iter().enumerate() {
        let first_at = start + SPREAD * i as u32 / count;
        for target in targets.clone() {
            let (client, secret, semaphore, delivered) = (
                client.clone(),
                secret.clone(),
                semaphore.clone(),
                delivered.clone(),
            );
            let m = m.clone();
            tasks.spawn(async move {
                tokio::time::sleep_until(first_at.into()).await;
                let _permit = semaphore.acquire_owned().await.unwrap();
                let mut sent = Sent::default();
                loop {
                    let now = chrono::Utc::now().timestamp();
                    sent.requests += 1;
                    let answer = client
                        .post(&target)
                        .header("svix-id", &m.msg_id)
                        .header("svix-timestamp", now.to_string())
                        .header("svix-signature", sign(&secret, &m.msg_id, now, &m.body))
                        .header("content-type", "application/json")
                        .body(m.body.clone())
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status().is_success() => {
                            delivered.fetch_add(1, Ordering::SeqCst);
                            return sent;
                        }
                        Ok(_) => sent.non_2xx += 1,
                        Err(_) => sent.no_answer += 1,
                    }
                    if Instant::now() > until {
                        sent.undelivered = 1;
                        return sent;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    }
    let mut total = Sent::default();
    while let Some(sent) = tasks.join_next().await {
        let sent = sent.unwrap();
        total.requests += sent.requests;
        total.non_2xx += sent.non_2xx;
        total.no_answer += sent.no_answer;
        total.undelivered += sent.undelivered;
    }
    total
}

/// Lost, doubled and stuck messages, counted row by row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub lost: usize,
    pub doubled: usize,
    pub stuck: usize,
}

/// Wait (up to `within`) until every outbox job is done, then check each message: one
/// user, one signup_bonus row, one processed event, one outbox job (done), and one
/// metadata PATCH applied by the fake Clerk; and the ledger adds up.
pub async fn check(
    store: &Store,
    messages: &[Message],
    clerk: &FakeClerk,
    within: Duration,
) -> (Tally, Vec<String>) {
    let deadline = Instant::now() + within;
    while jobs(store).await.iter().any(|j| j.status != "done") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = |keys: Vec<String>| {
        let mut map: HashMap<String, usize> = HashMap::new();
        for k in keys {
            *map.entry(k).or_default() += 1;
        }
        map
    };
    let users_by = count(users(store).await.into_iter().map(|u| u.clerk_id).collect());
    let bonus_by = count(
        ledger(store)
            .await
            .into_iter()
            .filter(|t| t.reason.as_deref() == Some("signup_bonus"))
            .map(|t| t.tracking_id)
            .collect(),
    );
    let processed_by = count(
        events(store)
            .await
            .into_iter()
            .filter(|e| e.status.as_deref() == Some("processed"))
            .map(|e| e.event_id)
            .collect(),
    );
    let all_jobs = jobs(store).await;
    let jobs_by = count(
        all_jobs
            .iter()
            .map(|j| j.payload.0["clerkId"].as_str().unwrap_or("").to_owned())
            .collect(),
    );
    let done_by = count(
        all_jobs
            .iter()
            .filter(|j| j.status == "done")
            .map(|j| j.payload.0["clerkId"].as_str().unwrap_or("").to_owned())
            .collect(),
    );
    let mut patches: HashMap<String, usize> = HashMap::new();
    for r in clerk.requests() {
        if r.method == "PATCH" && (200..300).contains(&r.status) {
            let id = r
                .path
                .trim_start_matches("/v1/users/")
                .trim_end_matches("/metadata");
            *patches.entry(id.to_owned()).or_default() += 1;
        }
    }
    let mut tally = Tally::default();
    let mut problems = Vec::new();
    for m in messages {
        let n = |map: &HashMap<String, usize>, k: &str| map.get(k).copied().unwrap_or(0);
        let rows = [
            ("user", n(&users_by, &m.clerk_id)),
            ("signup_bonus", n(&bonus_by, &m.clerk_id)),
            ("processed event", n(&processed_by, &m.msg_id)),
            ("outbox job", n(&jobs_by, &m.clerk_id)),
        ];
        let patched = n(&patches, &m.clerk_id);
        if rows.iter().any(|(_, c)| *c == 0) {
            tally.lost += 1;
            problems.push(format!("{}: lost {rows:?}", m.msg_id));
        } else if rows.iter().any(|(_, c)| *c > 1) || patched > 1 {
            tally.doubled += 1;
            problems.push(format!("{}: doubled {rows:?}, {patched} PATCH", m.msg_id));
        } else if n(&done_by, &m.clerk_id) != 1 || patched != 1 {
            tally.stuck += 1;
            problems.push(format!("{}: stuck ({patched} PATCH)", m.msg_id));
        }
    }
    let mismatches = clerk_sync::commands::diagnose::ledger_mismatches(store)
        .await
        .unwrap();
    if !mismatches.is_empty() {
        problems.push(format!("ledger does not add up: {mismatches:?}"));
    }
    (tally, problems)
}
