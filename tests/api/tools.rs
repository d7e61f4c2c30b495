//! The tools around `serve`, run as a user runs them (the binary): `migrate --status`,
//! `clerk-sync dev`, and shell completions.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::both_backends;
use crate::diagnose::clerk_sync;
use crate::helpers::*;

both_backends!(
    migrate_status_lists_applied_and_pending_and_changes_nothing,
    dev_prints_one_line_per_webhook,
);

async fn migrate_status_lists_applied_and_pending_and_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let shipped = 8;

    let (ok, out, err) = clerk_sync(&["migrate", "--status", "--database-url", &db.url]);
    assert!(!ok, "pending migrations exit 1: {out}");
    assert!(
        out.contains(&format!("0 migration(s) applied, {shipped} pending")),
        "{out}"
    );
    assert_eq!(out.matches("  pending  ").count(), shipped, "{out}");
    assert!(
        err.contains(&format!(
            "{shipped} migration(s) pending: run `clerk-sync migrate`"
        )),
        "{err}"
    );
    match backend {
        Backend::Sqlite => assert!(
            !std::path::Path::new(db.url.trim_start_matches("sqlite://")).exists(),
            "no SQLite file created"
        ),
        Backend::Postgres => {
            let store = db.store().await;
            assert!(store.applied_migrations().await.unwrap().is_empty());
            store.close().await;
        }
    }

    let (ok, _, err) = clerk_sync(&["migrate", "--database-url", &db.url]);
    assert!(ok, "{err}");
    let (ok, out, err) = clerk_sync(&["migrate", "--status", "--database-url", &db.url]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "{shipped} migration(s) applied; the schema is current"
        )),
        "{out}"
    );
    assert_eq!(out.matches("  applied  ").count(), shipped, "{out}");
    assert!(out.contains("    7  applied  reconcile state"), "{out}");
}

/// `clerk-sync dev` on a free port: a processed `user.created` (sent by `clerk-sync send`),
/// the same event again, and a forged signature each print one line on stdout, and
/// nothing else does.
async fn dev_prints_one_line_per_webhook(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
        .args(["dev", "--port", "0", "--database-url", &db.url])
        .current_dir(dir.path())
        .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
        .env("NO_COLOR", "1")
        .env_remove("CLERK_SECRET_KEY")
        .env_remove("DIRECT_URL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = |stream: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let stdout = lines(Box::new(child.stdout.take().unwrap()));
    let stderr = lines(Box::new(child.stderr.take().unwrap()));
    let next = |rx: &std::sync::mpsc::Receiver<String>, what: &str| {
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no {what}"))
    };
    let ready = loop {
        let line = next(&stderr, "ready line");
        if line.contains("ready:") {
            break line;
        }
    };
    let url = ready
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();

    let send = |payload: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
            .args(["send", "--url", &url, "--payload", payload])
            .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let created = fixture_path("clerk-user-created.json");
    send(&created);
    let first = next(&stdout, "line for the first event");
    let clerk_id = fixture_json("clerk-user-created.json")["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        first.contains("user.created")
            && first.contains(&clerk_id)
            && first.contains("processed created (")
            && first.ends_with(" ms)"),
        "{first}"
    );
    assert!(!first.contains('\x1b'), "NO_COLOR: {first}");

    // A forged signature: the error code; no type or id (nothing unverified is read).
    let forged = reqwest::Client::new()
        .post(&url)
        .header("svix-id", "msg_forged")
        .header("svix-timestamp", chrono::Utc::now().timestamp().to_string())
        .header("svix-signature", "v1,AAAA")
        .body(fixture("clerk-user-created.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let second = next(&stdout, "line for the forged event");
    assert!(second.contains("invalid_signature"), "{second}");
    assert!(!second.contains(&clerk_id), "{second}");

    // Health checks and the API print nothing here.
    reqwest::get(url.replace("/api/webhooks/clerk", "/healthz"))
        .await
        .unwrap();
    assert!(
        stdout.recv_timeout(Duration::from_millis(500)).is_err(),
        "one line per webhook only"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bash_completion_completes_commands_and_flags() {
    let (ok, script, err) = clerk_sync(&["completions", "bash"]);
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clerk-sync.bash");
    std::fs::write(&file, &script).unwrap();
    // As bash calls the function `complete -p` names: (command, word, previous word).
    let complete = |words: &str, cword: usize| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}'; f=$(complete -p clerk-sync | sed -E 's/.*-F ([^ ]+).*/\\1/'); \
                 COMP_WORDS=({words}); COMP_CWORD={cword}; \
                 \"$f\" clerk-sync \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                file.display()
            ))
            .output()
            .expect("bash");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let commands = complete("clerk-sync ''", 1);
    for command in ["serve", "dev", "migrate", "diagnose", "completions"] {
        assert!(
            commands.lines().any(|l| l == command),
            "{command}: {commands}"
        );
    }
    let flags = complete("clerk-sync migrate --st", 2);
    assert_eq!(flags.trim(), "--status", "{flags}");
    for shell in ["zsh", "fish"] {
        let (ok, script, _) = clerk_sync(&["completions", shell]);
        assert!(
            ok && script.contains("migrate") && script.contains("status"),
            "{shell}"
        );
    }
}
