//! clerk-sync inside the app's Prisma project, checked with Prisma itself (pinned in
//! tests/prisma/package.json and installed by scripts/test): its schema engine, as
//! `prisma migrate dev / deploy / resolve / diff` run it, and its client. PostgreSQL only:
//! the app's Prisma datasource is PostgreSQL (Neon).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::helpers::*;

const SEED_SCHEMA: &str = "tests/prisma/fixtures/seed.prisma";

/// Run one of tests/prisma's scripts with node; its JSON answer.
fn node(script: &str, command: &str, args: Value) -> Result<Value, String> {
    let dir = Path::new("tests/prisma");
    assert!(
        dir.join("node_modules/prisma").exists(),
        "tests/prisma/node_modules is missing: run the tests through scripts/test, which \
         installs the pinned Prisma with npm ci"
    );
    let out = std::process::Command::new("node")
        .arg(dir.join(script))
        .arg(command)
        .arg(args.to_string())
        .output()
        .unwrap_or_else(|e| panic!("node is needed for the Prisma checks: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}")))
}

fn engine(command: &str, args: Value) -> Value {
    node("engine.mjs", command, args).unwrap_or_else(|e| panic!("prisma {command}: {e}"))
}

fn clerk_sync(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
        .args(args)
        .env_remove("DIRECT_URL")
        .output()
        .expect("run clerk-sync");
    assert!(
        out.status.success(),
        "clerk-sync {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The app's Prisma project as docs/prisma.md's steps leave it: the seed's schema with
/// `clerk-sync prisma-schema --write` applied, and its migrations: `0_init` as Prisma
/// Migrate generated it from the seed's schema, then clerk-sync's migration.
struct PrismaProject {
    _dir: tempfile::TempDir,
    schema: PathBuf,
    migrations: PathBuf,
}

impl PrismaProject {
    fn new(db: &TestDb) -> Self {
        let project = Self::as_the_seed_left_it(db);
        clerk_sync(&[
            "prisma-schema",
            "--schema",
            project.schema.to_str().unwrap(),
            "--write",
        ]);
        project
    }

    /// The seed's schema and its `0_init`, without `prisma-schema --write`.
    fn as_the_seed_left_it(db: &TestDb) -> Self {
        // Inside tests/prisma, so that node finds the pinned packages from it.
        let dir = tempfile::Builder::new()
            .prefix("project-")
            .tempdir_in("tests/prisma")
            .unwrap();
        let schema = dir.path().join("schema.prisma");
        std::fs::copy(SEED_SCHEMA, &schema).unwrap();
        let migrations = dir.path().join("migrations");
        let init = migrations.join("0_init");
        std::fs::create_dir_all(&init).unwrap();
        std::fs::write(
            migrations.join("migration_lock.toml"),
            "provider = \"postgresql\"\n",
        )
        .unwrap();
        // What `prisma migrate dev` wrote for the seed app, before clerk-sync.
        let init_sql = engine(
            "diff",
            json!({"url": db.url, "schema": schema, "from": "empty", "to": {"schema": schema}, "script": true}),
        );
        std::fs::write(
            init.join("migration.sql"),
            init_sql["stdout"].as_str().unwrap(),
        )
        .unwrap();
        Self {
            _dir: dir,
            schema,
            migrations,
        }
    }

    /// Add clerk-sync's migration as the app commits it.
    fn add_clerk_sync_migration(&self) {
        let dir = self.migrations.join("1_clerk_sync");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("migration.sql"),
            clerk_sync(&["prisma-schema", "--migration"]),
        )
        .unwrap();
    }

    fn args(&self, db: &TestDb) -> Value {
        json!({"url": db.url, "schema": self.schema, "migrations": self.migrations})
    }
}

/// Prisma sees the database exactly as the app's schema says, `migrate dev` would only
/// create a migration (never reset), and the migration history replays to the schema.
fn assert_in_sync(project: &PrismaProject, db: &TestDb) {
    let mut args = project.args(db);
    args["from"] = json!({"database": true});
    args["to"] = json!({"schema": project.schema});
    args["script"] = json!(true);
    let diff = engine("diff", args.clone());
    assert_eq!(
        diff["exitCode"],
        0,
        "Prisma sees a difference between the database and the schema:\n{}",
        diff["stdout"].as_str().unwrap_or_default()
    );
    let dev = engine("devDiagnostic", project.args(db));
    assert_eq!(
        dev["action"]["tag"], "createMigration",
        "prisma migrate dev would reset the database: {dev}"
    );
    args["from"] = json!({"migrations": project.migrations});
    let replay = engine("diff", args);
    assert_eq!(
        replay["exitCode"],
        0,
        "the migrations do not produce the schema:\n{}",
        replay["stdout"].as_str().unwrap_or_default()
    );
    let history = engine("history", project.args(db));
    assert_eq!(history["history"], Value::Null, "{history}");
    assert_eq!(history["failedMigrationNames"], json!([]), "{history}");
    assert_eq!(history["editedMigrationNames"], json!([]), "{history}");
}

/// The app's migrations first (as deployed before clerk-sync), then `clerk-sync migrate`,
/// then clerk-sync's migration committed into the app and deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prisma_is_in_sync_when_the_app_migrated_first() {
    let db = TestDb::new(Backend::Postgres).await;
    let project = PrismaProject::new(&db);
    let deployed = engine("deploy", project.args(&db));
    assert_eq!(deployed["appliedMigrationNames"], json!(["0_init"]));

    clerk_sync(&["migrate", "--database-url", &db.url]);
    project.add_clerk_sync_migration();
    let deployed = engine("deploy", project.args(&db));
    assert_eq!(deployed["appliedMigrationNames"], json!(["1_clerk_sync"]));
    assert_in_sync(&project, &db);
}

/// `clerk-sync migrate` on an empty database first; the app baselines its `0_init`
/// (`prisma migrate resolve --applied`), then deploys clerk-sync's migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prisma_is_in_sync_when_clerk_sync_migrated_first() {
    let db = TestDb::new(Backend::Postgres).await;
    let project = PrismaProject::new(&db);
    clerk_sync(&["migrate", "--database-url", &db.url]);
    project.add_clerk_sync_migration();

    // What Prisma says before the baseline, as docs/prisma.md describes.
    let refused = node("engine.mjs", "deploy", project.args(&db)).unwrap_err();
    assert!(
        refused.contains("P3005") || refused.contains("not empty"),
        "{refused}"
    );

    let mut resolve = project.args(&db);
    resolve["name"] = json!("0_init");
    engine("resolveApplied", resolve);
    let deployed = engine("deploy", project.args(&db));
    assert_eq!(deployed["appliedMigrationNames"], json!(["1_clerk_sync"]));
    assert_in_sync(&project, &db);

    // And the app's next `migrate deploy` after a clerk-sync upgrade changes nothing.
    clerk_sync(&["migrate", "--database-url", &db.url]);
    assert_in_sync(&project, &db);
}

/// The app spends credits itself through the Prisma client, as the seed app did: the
/// ledger trigger records it, `diagnose` passes, and the credits API shows the balance.
/// The Prisma client keeps working on a clerk-sync database: Json payloads, P2002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prisma_client_spends_directly_and_the_ledger_stays_true() {
    let db = TestDb::new(Backend::Postgres).await;
    let project = PrismaProject::new(&db);
    let client_dir = project.schema.parent().unwrap().join("client");
    let mut schema = std::fs::read_to_string(&project.schema).unwrap();
    schema.push_str(&format!(
        "\ngenerator client {{\n  provider = \"prisma-client-js\"\n  output   = \"{}\"\n}}\n",
        client_dir.display()
    ));
    std::fs::write(&project.schema, schema).unwrap();
    let generate = std::process::Command::new("node")
        .args([
            "tests/prisma/node_modules/prisma/build/index.js",
            "generate",
            "--schema",
        ])
        .arg(&project.schema)
        // `generate` needs no schema engine, but the CLI looks for one first and would
        // download it: point it at a file that exists.
        .env("PRISMA_SCHEMA_ENGINE_BINARY", "/bin/false")
        .env("PRISMA_HIDE_UPDATE_MESSAGE", "1")
        .output()
        .expect("node runs prisma generate");
    assert!(
        generate.status.success(),
        "prisma generate: {}{}",
        String::from_utf8_lossy(&generate.stdout),
        String::from_utf8_lossy(&generate.stderr)
    );

    let app = TestApp::spawn(&db).await;
    let clerk_id = "user_29w83sxmDNGwOuEthce5gg56FcC";
    let (s, _) = status_json(
        app.post_webhook("msg_prisma", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = app
        .api(
            reqwest::Method::POST,
            &format!("/v1/users/{clerk_id}/credits/consume"),
            Some(json!({"amount": 2, "idempotencyKey": "api_spend"})),
        )
        .await;
    assert_eq!((s, b["balanceAfter"].as_i64()), (200, Some(18)), "{b}");

    let args = json!({"url": db.url, "client": client_dir, "clerkId": clerk_id, "times": 3});
    let spent = node("client.mjs", "spend", args.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        spent,
        json!({"usedGenerations": 5, "availableGenerations": 25})
    );
    let checks = node("client.mjs", "checks", args).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        checks,
        json!({
            "email": "example@example.org",
            "updatedAtIsDate": true,
            "payloadType": "user.created",
            "eventStatus": "processed",
            "duplicate": "P2002",
        })
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
        .args(["diagnose", "--database-url", &db.url])
        .env_remove("DIRECT_URL")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("12/12 passed"), "{report}");
    assert!(
        report.contains("3 direct change(s) by another writer recorded"),
        "{report}"
    );

    assert_eq!(app.credits_of(clerk_id).await, (20, 5, 25));
    let rows = ledger(&app.store).await;
    let reasons: Vec<(Option<String>, Option<i32>)> =
        rows.iter().map(|t| (t.reason.clone(), t.amount)).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|(r, _)| r.as_deref() == Some("direct_write"))
            .count(),
        3,
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&(Some("purchase".into()), Some(5))),
        "{reasons:?}"
    );
    assert_ledger_adds_up(&app.store).await;
}

/// Issue #30 with the real Prisma: the app committed clerk-sync's migration but its
/// `schema.prisma` lacks clerk-sync's declarations, so the migration `prisma migrate dev`
/// generates (the engine's diff from the migration history to the schema, as `migrate
/// dev` computes it, applied by `migrate deploy`, which records it in
/// `_prisma_migrations`) drops what clerk-sync writes. The running service reports the
/// drift within one check interval and names that migration; `prisma-schema --check`
/// fails on that schema and passes after `--write`; `diagnose --fix` makes it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prisma_migration_from_a_schema_without_clerk_syncs_fields_is_caught() {
    let db = TestDb::new(Backend::Postgres).await;
    // The project as docs/prisma.md's "clerk-sync first" steps leave it, but with the seed's
    // schema.prisma as it was, without `prisma-schema --write`.
    let project = PrismaProject::as_the_seed_left_it(&db);
    project.add_clerk_sync_migration();
    let (schema, migrations) = (project.schema.clone(), project.migrations.clone());
    let args = json!({"url": db.url, "schema": schema, "migrations": migrations});
    clerk_sync(&["migrate", "--database-url", &db.url]);
    let mut resolve = args.clone();
    resolve["name"] = json!("0_init");
    engine("resolveApplied", resolve);
    let deployed = engine("deploy", args.clone());
    assert_eq!(deployed["appliedMigrationNames"], json!(["1_clerk_sync"]));

    let app = TestApp::spawn_with(
        &db,
        AppOptions {
            schema_check_interval_ms: Some(300),
            ..AppOptions::default()
        },
    )
    .await;
    assert_eq!(app.get("/readyz").await.status(), 200);

    // `prisma-schema --check` would have stopped it in the app's CI.
    let check = |schema: &Path| {
        run_to_end(
            std::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
                .args(["prisma-schema", "--check", "--schema"])
                .arg(schema),
        )
    };
    let (ok, _, err) = check(&schema);
    assert!(
        !ok,
        "--check passed a schema without clerk-sync's fields: {err}"
    );
    assert!(err.contains("model WebhookEvent: clerkId"), "{err}");
    assert!(
        err.contains("model Transaction: @@unique([userId, idempotencyKey])"),
        "{err}"
    );

    // `prisma migrate dev`: it would create a migration (not reset), and that migration
    // drops clerk-sync's columns and its idempotency index.
    let dev = engine("devDiagnostic", args.clone());
    assert_eq!(dev["action"]["tag"], "createMigration", "{dev}");
    let mut diff = args.clone();
    diff["from"] = json!({"migrations": migrations});
    diff["to"] = json!({"schema": schema});
    diff["script"] = json!(true);
    let generated = engine("diff", diff);
    let sql = generated["stdout"].as_str().unwrap();
    assert!(sql.contains(r#"DROP COLUMN "clerkId""#), "{sql}");
    assert!(
        sql.contains(r#"DROP INDEX "Transaction_userId_idempotencyKey_key""#),
        "{sql}"
    );
    let name = "20261208093000_tidy_models";
    std::fs::create_dir_all(migrations.join(name)).unwrap();
    std::fs::write(migrations.join(name).join("migration.sql"), sql).unwrap();
    let deployed = engine("deploy", args.clone());
    assert_eq!(deployed["appliedMigrationNames"], json!([name]));

    // Within one interval the service is not ready, names what is gone and the migration.
    let mut body = Value::Null;
    for _ in 0..100 {
        let r = app.get("/readyz").await;
        if r.status() == 503 {
            body = r.json().await.unwrap();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(body["schema"]["status"], "drift", "{body:#}");
    let whats: Vec<&str> = body["schema"]["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["what"].as_str().unwrap())
        .collect();
    assert!(
        whats.contains(&r#""WebhookEvent"."clerkId" is missing"#),
        "{whats:?}"
    );
    assert!(
        whats.iter().any(|w| w.contains("(userId, idempotencyKey)")),
        "{whats:?}"
    );
    let named: Vec<&str> = body["schema"]["prismaMigrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(named, vec![name], "{body:#}");
    let (s, b) = status_json(
        app.post_webhook("msg_after_prisma", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (503, Some("schema_drift")), "{b}");

    // The fix: clerk-sync restores its pieces; the app's schema gets the declarations.
    clerk_sync(&["diagnose", "--fix", "--yes", "--database-url", &db.url]);
    clerk_sync(&[
        "prisma-schema",
        "--schema",
        schema.to_str().unwrap(),
        "--write",
    ]);
    let (ok, _, err) = check(&schema);
    assert!(ok, "--check still fails after --write: {err}");
    let mut ready = false;
    for _ in 0..100 {
        if app.get("/readyz").await.status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "not ready again after diagnose --fix");
    let (s, b) = status_json(
        app.post_webhook("msg_after_prisma", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("processed")), "{b}");
    assert_eq!(users(&app.store).await.len(), 1);
    app.stop().await;
}
