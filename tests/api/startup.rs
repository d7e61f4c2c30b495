//! `clerk-sync serve`'s start, run as a user runs it (the binary, in an empty directory):
//! a start that fails names the cause and the fix once, and prints and keeps no secret;
//! a start that succeeds prints one line to act on (the webhook URL, where the data is).

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::both_backends;
use crate::helpers::*;

/// `clerk-sync serve <args>` in `dir`, with nothing from the test's own environment.
fn serve_command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clerk-sync"));
    command.arg("serve").args(args).current_dir(dir);
    for name in [
        "DATABASE_URL",
        "DIRECT_URL",
        "CLERK_WEBHOOK_SIGNING_SECRET",
        "CLERK_SECRET_KEY",
        "CLERK_SYNC_API_KEYS",
        "HOST",
        "PORT",
        "RUST_LOG",
        "LOG_FORMAT",
        "TOKIO_WORKER_THREADS",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command
}

/// A start that must fail: its stderr.
fn failed_start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let Output { status, stderr, .. } = serve_command(dir, args, env).output().unwrap();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(!status.success(), "serve {args:?} started: {stderr}");
    let printed_secret = stderr.match_indices("whsec_").any(|(at, _)| {
        stderr[at + 6..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b))
            .count()
            >= 20
    });
    assert!(
        !printed_secret && !stderr.contains("development secret"),
        "no secret before a failure: {stderr}"
    );
    assert!(
        !dir.join("data").join("webhook-secret").exists(),
        "no secret kept by a failed start"
    );
    stderr
}

#[test]
fn a_failed_start_says_the_cause_and_the_fix_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = failed_start(dir, &["--port", &port], &[]);
    let cause = format!("could not listen on 127.0.0.1:{port}: address already in use.");
    assert!(err.contains(&cause), "{err}");
    assert!(
        err.contains("stop it, or set PORT (--port) to a free port"),
        "{err}"
    );
    assert_eq!(err.matches("already in use").count(), 1, "once: {err}");
    assert!(!dir.join("data").exists(), "nothing created: {err}");
    drop(taken);

    // PORT from the environment is named as such; on the command line it is not.
    let err = failed_start(dir, &[], &[("PORT", "abc")]);
    assert!(
        err.contains("invalid value 'abc' for '--port <PORT>'"),
        "{err}"
    );
    assert!(err.contains("environment variable PORT"), "{err}");
    let err = failed_start(dir, &["--port", "abc"], &[]);
    assert!(!err.contains("environment variable"), "{err}");

    // TOKIO_WORKER_THREADS is ours to check: tokio itself would panic on it.
    let err = failed_start(dir, &[], &[("TOKIO_WORKER_THREADS", "0")]);
    assert!(
        err.contains("invalid value '0' for '--worker-threads <WORKER_THREADS>'")
            && err.contains("1..=1024"),
        "{err}"
    );
    assert!(
        err.contains("environment variable TOKIO_WORKER_THREADS"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Signing secrets: commas instead of spaces; a truncated secret.
    let err = failed_start(
        dir,
        &["--port", "0"],
        &[(
            "CLERK_WEBHOOK_SIGNING_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        )],
    );
    assert!(
        err.contains("CLERK_WEBHOOK_SIGNING_SECRET: secret #1")
            && err.contains("separated by spaces, not commas"),
        "{err}"
    );
    let err = failed_start(
        dir,
        &["--port", "0"],
        &[("CLERK_WEBHOOK_SIGNING_SECRET", "whsec_AA==")],
    );
    assert!(err.contains("is 1 byte(s) long"), "{err}");

    // A SQLite path that cannot be created, and one that cannot be opened.
    std::fs::write(dir.join("a-file"), b"").unwrap();
    std::fs::create_dir(dir.join("a-directory.db")).unwrap();
    for (url, cause) in [
        (
            "sqlite://a-file/clerk-sync.db",
            "cannot create a-file, the directory of the SQLite database: file exists",
        ),
        (
            "sqlite://a-directory.db",
            "cannot open the SQLite database a-directory.db: unable to open database file",
        ),
    ] {
        let err = failed_start(
            dir,
            &["--port", "0"],
            &[
                ("DATABASE_URL", url),
                ("CLERK_WEBHOOK_SIGNING_SECRET", SECRET),
            ],
        );
        assert!(err.contains(cause), "{url}: {err}");
        assert_eq!(err.matches(cause).count(), 1, "once: {err}");
        assert!(
            err.contains("Make that directory writable by this user, or set DATABASE_URL"),
            "{err}"
        );
        assert!(!err.contains("code: 14"), "{err}");
    }
}

both_backends!(
    a_ready_server_prints_the_webhook_url_and_where_the_data_is,
    serve_with_a_clerk_key_starts_with_no_ca_store,
);

/// Issue #31: the runtime image has no CA certificates. With the system's store empty
/// (SSL_CERT_FILE and SSL_CERT_DIR naming nothing, as in debian:bookworm-slim) and
/// CLERK_SECRET_KEY set, `serve` starts: the Clerk client's roots are in the binary.
/// Before, it exited 1: `could not build the Clerk API client: … No CA certificates were
/// loaded from the system`.
async fn serve_with_a_clerk_key_starts_with_no_ca_store(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let no_file = empty.path().join("no-such-bundle.pem");
    let seen = until_ready(
        dir.path(),
        &[
            ("DATABASE_URL", &db.url),
            ("CLERK_WEBHOOK_SIGNING_SECRET", SECRET),
            ("CLERK_SECRET_KEY", "sk_test_no_ca_store_0123456789"),
            ("SSL_CERT_FILE", no_file.to_str().unwrap()),
            ("SSL_CERT_DIR", empty.path().to_str().unwrap()),
        ],
    );
    assert!(!seen.contains("Clerk API client"), "{seen}");
    assert!(seen.contains("ready:"), "{seen}");
}

/// Start `serve` on a free port in an empty directory and return its stderr up to the
/// "ready" line, then stop it.
fn until_ready(dir: &Path, env: &[(&str, &str)]) -> String {
    let (mut child, seen) = start_until_ready(dir, env);
    let _ = child.kill();
    let _ = child.wait();
    seen
}

/// Start `serve` on a free port in an empty directory: the running process and its
/// stderr up to the "ready" line.
fn start_until_ready(dir: &Path, env: &[(&str, &str)]) -> (std::process::Child, String) {
    let mut child = serve_command(dir, &["--port", "0"], env)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains("ready:") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no ready line: {seen}");
            }
        }
    }
    (child, seen)
}

async fn a_ready_server_prints_the_webhook_url_and_where_the_data_is(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let seen = match backend {
        // PostgreSQL with its secret set: no data directory at all.
        Backend::Postgres => {
            let seen = until_ready(
                dir,
                &[
                    ("DATABASE_URL", &db.url),
                    ("CLERK_WEBHOOK_SIGNING_SECRET", SECRET),
                ],
            );
            assert!(seen.contains("data in postgres://"), "{seen}");
            assert!(!dir.join("data").exists(), "no data directory");
            seen
        }
        // The default: SQLite in ./data, and a development secret generated, kept and
        // printed once; the next start uses it.
        Backend::Sqlite => {
            let seen = until_ready(dir, &[]);
            let file = dir.canonicalize().unwrap().join("data/clerk-sync.db");
            assert!(
                seen.contains(&format!("data in {}", file.display())),
                "{seen}"
            );
            let secret = std::fs::read_to_string(dir.join("data/webhook-secret")).unwrap();
            let secret = secret.trim();
            assert!(
                seen.contains("generated the development secret data/webhook-secret"),
                "{seen}"
            );
            assert_eq!(seen.matches(secret).count(), 1, "{seen}");
            let again = until_ready(dir, &[]);
            assert!(
                again.contains("using the development secret data/webhook-secret")
                    && again.contains(secret),
                "{again}"
            );
            seen
        }
    };
    let ready = seen.lines().find(|l| l.contains("ready:")).unwrap();
    assert!(
        ready.contains("give Clerk the webhook URL http://127.0.0.1:")
            && ready.contains("/api/webhooks/clerk"),
        "{ready}"
    );
    assert_eq!(seen.matches("ready:").count(), 1, "{seen}");
    let _ = db;
}

both_backends!(serve_runs_as_many_worker_threads_as_configured);

/// `TOKIO_WORKER_THREADS` sizes the runtime that serves requests; unset, serve runs
/// `config::default_worker_threads` workers: one per core, one fewer for a PostgreSQL on
/// this machine (README: Performance). Counted in /proc as the threads tokio names
/// `tokio-rt-worker`.
async fn serve_runs_as_many_worker_threads_as_configured(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let workers = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter(|task| {
                let comm = std::fs::read_to_string(task.as_ref().unwrap().path().join("comm"));
                comm.is_ok_and(|c| c.trim() == "tokio-rt-worker")
            })
            .count()
    };
    let cores = std::thread::available_parallelism().unwrap().get();
    let url = clerk_sync::config::DatabaseUrl::parse(&db.url).unwrap();
    let default = clerk_sync::config::default_worker_threads(Some(&url), cores);
    if backend == Backend::Postgres && url.is_postgres_on_this_machine() && cores > 1 {
        assert_eq!(default, cores - 1);
    }
    for threads in [Some(1), Some(3), None] {
        let mut env = vec![
            ("DATABASE_URL", db.url.clone()),
            ("CLERK_WEBHOOK_SIGNING_SECRET", SECRET.to_owned()),
        ];
        if let Some(n) = threads {
            env.push(("TOKIO_WORKER_THREADS", n.to_string()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let expected = threads.unwrap_or(default);
        let (mut child, _) = start_until_ready(dir.path(), &env);
        // A worker names itself once it first runs, which on a loaded machine can come
        // after the ready line: read until the count is right or 10 s have passed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut counted = workers(child.id());
        while counted != expected && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            counted = workers(child.id());
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(counted, expected, "worker threads ({threads:?} set)");
    }
}
