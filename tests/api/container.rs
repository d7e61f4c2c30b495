//! The container's runtime, without a container: the binary started as the Dockerfile
//! starts it (its `USER`, `ENV`, `WORKDIR` as an empty directory that user owns, its
//! `CMD`) serves, and its `HEALTHCHECK` command passes against it and fails once it is
//! gone. (Docker images cannot be pulled on these machines; `deploy/check` lints the
//! Dockerfile with hadolint.)

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::both_backends;
use crate::helpers::*;

both_backends!(the_image_user_env_and_healthcheck_work);

/// The runtime stage's settings, read from the Dockerfile.
struct Runtime {
    uid: u32,
    env: BTreeMap<String, String>,
    workdir: String,
    healthcheck: Vec<String>,
    cmd: Vec<String>,
}

fn json_words(rest: &str) -> Vec<String> {
    serde_json::from_str(rest.trim()).unwrap_or_else(|e| panic!("{rest}: {e}"))
}

fn runtime_stage() -> Runtime {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("Dockerfile");
    // Continuation lines joined; only the last stage (after the last FROM) counts.
    let joined = text.replace("\\\n", " ");
    let stage = joined.rsplit("\nFROM ").next().unwrap();
    let mut runtime = Runtime {
        uid: 0,
        env: BTreeMap::new(),
        workdir: String::new(),
        healthcheck: Vec::new(),
        cmd: Vec::new(),
    };
    for line in stage.lines().map(str::trim) {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        match instruction {
            "USER" => runtime.uid = rest.split(':').next().unwrap().parse().unwrap(),
            "WORKDIR" => runtime.workdir = rest.trim().to_owned(),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair.split_once('=').unwrap();
                    runtime.env.insert(k.to_owned(), v.to_owned());
                }
            }
            "HEALTHCHECK" => {
                let (_, cmd) = rest.split_once("CMD").expect("HEALTHCHECK CMD");
                runtime.healthcheck = json_words(cmd);
            }
            "CMD" => runtime.cmd = json_words(rest),
            _ => {}
        }
    }
    runtime
}

async fn the_image_user_env_and_healthcheck_work(backend: Backend) {
    let db = TestDb::new(backend).await;
    let runtime = runtime_stage();
    assert!(runtime.uid >= 1000, "a non-root user: {}", runtime.uid);
    assert_eq!(runtime.healthcheck[0], "clerk-sync");
    assert_eq!(runtime.cmd, ["serve"]);

    // WORKDIR (/data) becomes an empty directory the image's user owns; the image's
    // paths under it are rewritten to it.
    let root = tempfile::tempdir().unwrap();
    let workdir = root.path().join("data");
    std::fs::create_dir(&workdir).unwrap();
    std::os::unix::fs::chown(&workdir, Some(runtime.uid), Some(runtime.uid)).unwrap();
    let mut env = runtime.env.clone();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    env.insert("PORT".into(), port.to_string());
    env.insert("CLERK_WEBHOOK_SIGNING_SECRET".into(), SECRET.into());
    match backend {
        Backend::Sqlite => {
            let url = env["DATABASE_URL"].replace(&runtime.workdir, workdir.to_str().unwrap());
            env.insert("DATABASE_URL".into(), url);
        }
        Backend::Postgres => {
            env.insert("DATABASE_URL".into(), db.url.clone());
        }
    }
    let bin = env!("CARGO_BIN_EXE_clerk-sync");
    let as_image_user = |args: &[String]| {
        let mut command = Command::new(bin);
        command
            .args(args)
            .current_dir(&workdir)
            .env_clear()
            .envs(&env)
            .uid(runtime.uid)
            .gid(runtime.uid);
        command
    };
    let mut server = as_image_user(&runtime.cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start as the image's user");

    let health = &runtime.healthcheck[1..];
    let mut healthy = false;
    for _ in 0..100 {
        let out = as_image_user(health).output().unwrap();
        if out.status.success() {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "HEALTHCHECK never passed");

    // It listens on every interface (HOST=0.0.0.0) and serves as that user.
    let body = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("\"ready\""), "{body}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.id())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == runtime.uid.to_string()),
        "{uid_line}"
    );
    if backend == Backend::Sqlite {
        assert!(workdir.join("clerk-sync.db").exists(), "SQLite in WORKDIR");
    }

    server.kill().unwrap();
    server.wait().unwrap();
    let out = as_image_user(health).output().unwrap();
    assert!(
        !out.status.success(),
        "HEALTHCHECK fails once the server is gone"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no answer"),
        "{out:?}"
    );
}
