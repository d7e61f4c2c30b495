//! `clerk-sync diagnose` and `smoke` against live databases broken on purpose, through
//! the real binary.

use serde_json::Value;

use crate::both_backends;
use crate::helpers::*;

both_backends!(
    healthy_database_passes_every_step_and_keeps_its_rows,
    json_report_parses_and_carries_every_step,
    seed_case_updated_at_without_default,
    missing_unique_index_on_email,
    wrong_column_type,
    missing_table,
    unapplied_migration,
    constraint_failures_are_named_in_the_response_the_event_and_diagnose,
);

pub(crate) fn clerk_sync(args: &[&str]) -> (bool, String, String) {
    run_to_end(
        std::process::Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
            .args(args)
            .env_remove("DIRECT_URL"),
    )
}

pub(crate) fn diagnose_json(db: &TestDb) -> (bool, Value) {
    let (ok, stdout, stderr) = clerk_sync(&["diagnose", "--json", "--database-url", &db.url]);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(
        report["ok"].as_bool().unwrap(),
        ok,
        "exit status follows the report"
    );
    (ok, report)
}

/// A migrated database holding one signed-up user.
pub(crate) async fn database_with_a_user(backend: Backend) -> TestDb {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let (s, _) = status_json(
        app.post_webhook("msg_1", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    app.stop().await;
    db
}

type Snapshot = (Vec<UserRow>, Vec<LedgerRow>, Vec<EventRow>, Vec<JobRow>);

async fn snapshot(db: &TestDb) -> Snapshot {
    let store = db.store().await;
    let snap = (
        users(&store).await,
        ledger(&store).await,
        events(&store).await,
        jobs(&store).await,
    );
    store.close().await;
    snap
}

async fn healthy_database_passes_every_step_and_keeps_its_rows(backend: Backend) {
    let db = database_with_a_user(backend).await;
    let before = snapshot(&db).await;

    let (ok, text, stderr) = clerk_sync(&["diagnose", "--database-url", &db.url]);
    assert!(ok, "{text}{stderr}");
    assert!(text.trim_end().ends_with("12/12 passed"), "{text}");
    assert_eq!(text.matches("PASS").count(), 12, "{text}");
    let (ok, smoke, stderr) = clerk_sync(&["smoke", "--database-url", &db.url]);
    assert!(ok, "{smoke}{stderr}");
    for line in [
        "1. inserting test user",
        "2. verifying user",
        "3. updating user",
        "ok: updatedAt moved",
        "4. cleaning up",
        "all smoke steps passed",
    ] {
        assert!(smoke.contains(line), "{line:?} missing from {smoke}");
    }

    assert_eq!(
        snapshot(&db).await,
        before,
        "diagnose and smoke leave every row as it was"
    );
}

async fn json_report_parses_and_carries_every_step(backend: Backend) {
    let db = database_with_a_user(backend).await;

    let (ok, report) = diagnose_json(&db);

    assert!(ok, "{report:#}");
    let steps = report["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, clerk_sync::commands::diagnose::STEP_NAMES);
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["number"], i + 1);
        assert_eq!(s["status"], "pass", "{s}");
        assert!(!s["summary"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        (report["passed"].as_u64(), report["total"].as_u64()),
        (Some(12), Some(12))
    );
    assert_eq!(
        report["backend"],
        match backend {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    );
}

/// Every problem of a report, with its fix, as text to search.
pub(crate) fn problems(report: &Value) -> String {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["problems"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |p| format!("[{}] {}\n{}\n", s["name"], p["what"], p["fix"]))
        })
        .collect()
}

pub(crate) enum Repair {
    /// `diagnose --fix --yes` repairs it.
    FixFlag,
    /// The printed SQL (not applied by --fix) repairs it.
    PrintedSql,
}

/// Break a healthy database, check `diagnose` names the break and its fix, repair it,
/// and check the database passes again with its user intact.
pub(crate) async fn break_and_repair(
    backend: Backend,
    pg: &str,
    sqlite: &str,
    expected: &[&str],
    repair: Repair,
) -> TestDb {
    let db = database_with_a_user(backend).await;
    db.exec(match backend {
        Backend::Postgres => pg,
        Backend::Sqlite => sqlite,
    })
    .await;

    let (ok, report) = diagnose_json(&db);

    assert!(!ok, "the break went unnoticed: {report:#}");
    let found = problems(&report);
    for e in expected {
        assert!(found.contains(e), "{e:?} not named in:\n{found}");
    }
    match repair {
        Repair::FixFlag => {
            let (ok, out, err) =
                clerk_sync(&["diagnose", "--fix", "--yes", "--database-url", &db.url]);
            assert!(ok, "--fix did not repair:\n{out}\n{err}");
        }
        Repair::PrintedSql => {
            let (ok, out, err) =
                clerk_sync(&["diagnose", "--fix", "--yes", "--database-url", &db.url]);
            assert!(!ok, "--fix must not apply a reviewed fix:\n{out}\n{err}");
            for step in report["steps"].as_array().unwrap() {
                for p in step["problems"].as_array().unwrap() {
                    if p["fix"]["safe"] == false {
                        db.exec(p["fix"]["sql"].as_str().unwrap()).await;
                    }
                }
            }
        }
    }
    let (ok, report) = diagnose_json(&db);
    assert!(ok, "still broken after the repair:\n{}", problems(&report));
    let store = db.store().await;
    assert_eq!(users(&store).await.len(), 1, "the user survived the repair");
    store.close().await;
    db
}

/// The seed's failure class on an empty "User": another writer adds a NOT NULL column
/// without a default (`plan`); then the fix, a default. (SQL to break, SQL to fix.)
pub(crate) fn not_null_plan_column(backend: Backend) -> (String, String) {
    match backend {
        Backend::Postgres => (
            r#"ALTER TABLE "User" ADD COLUMN "plan" text NOT NULL"#.to_owned(),
            r#"ALTER TABLE "User" ALTER COLUMN "plan" SET DEFAULT 'free'"#.to_owned(),
        ),
        Backend::Sqlite => (
            sqlite_user_table_with("lastName", r#""lastName" TEXT, "plan" TEXT NOT NULL"#),
            sqlite_user_table_with(
                "lastName",
                r#""lastName" TEXT, "plan" TEXT NOT NULL DEFAULT 'free'"#,
            ),
        ),
    }
}

/// The contract's SQLite "User" table with one column declaration replaced, rebuilt in
/// place with its rows.
pub(crate) fn sqlite_user_table_with(column: &str, declaration: &str) -> String {
    let columns = [
        ("id", r#""id" TEXT NOT NULL PRIMARY KEY"#),
        ("clerkId", r#""clerkId" TEXT NOT NULL"#),
        ("email", r#""email" TEXT NOT NULL"#),
        ("photo", r#""photo" TEXT NOT NULL"#),
        ("firstName", r#""firstName" TEXT"#),
        ("lastName", r#""lastName" TEXT"#),
        (
            "usedGenerations",
            r#""usedGenerations" INTEGER NOT NULL DEFAULT 0"#,
        ),
        (
            "availableGenerations",
            r#""availableGenerations" INTEGER NOT NULL DEFAULT 20"#,
        ),
        (
            "createdAt",
            r#""createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP"#,
        ),
        (
            "updatedAt",
            r#""updatedAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP"#,
        ),
    ];
    let decls: Vec<&str> = columns
        .iter()
        .map(|(n, d)| if *n == column { declaration } else { d })
        .collect();
    let names: Vec<String> = columns.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    format!(
        // One transaction: a concurrent reader (the service's schema watch) sees the
        // table before or after, never renamed away or without its indexes.
        r#"BEGIN IMMEDIATE;
CREATE TABLE "User_broken" ({});
INSERT INTO "User_broken" ({cols}) SELECT {cols} FROM "User";
DROP TABLE "User";
ALTER TABLE "User_broken" RENAME TO "User";
CREATE UNIQUE INDEX "User_clerkId_key" ON "User"("clerkId");
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
{trigger}
COMMIT;"#,
        decls.join(", "),
        cols = names.join(", "),
        // The ledger trigger went with the old table, as with any rebuild.
        trigger = include_str!("../../migrations/sqlite/0006_ledger_direct_writes.sql"),
    )
}

async fn seed_case_updated_at_without_default(backend: Backend) {
    let sqlite = sqlite_user_table_with("updatedAt", r#""updatedAt" DATETIME NOT NULL"#);
    let fix = match backend {
        Backend::Postgres => {
            r#"ALTER TABLE \"User\" ALTER COLUMN \"updatedAt\" SET DEFAULT CURRENT_TIMESTAMP;"#
        }
        Backend::Sqlite => r#"ALTER TABLE \"User\" RENAME TO \"_User_rebuild\";"#,
    };
    break_and_repair(
        backend,
        r#"ALTER TABLE "User" ALTER COLUMN "updatedAt" DROP DEFAULT"#,
        &sqlite,
        &[
            r#"\"User\".\"updatedAt\" is NOT NULL without DEFAULT CURRENT_TIMESTAMP"#,
            "@updatedAt",
            fix,
            r#"INSERT into \"User\" omitting defaulted columns failed: not-null constraint violated on table \"User\" (updatedAt)"#,
        ],
        Repair::FixFlag,
    )
    .await;
}

async fn missing_unique_index_on_email(backend: Backend) {
    let drop = r#"DROP INDEX "User_email_key""#;
    break_and_repair(
        backend,
        drop,
        drop,
        &[
            r#"\"User\"(email) has no unique index"#,
            r#"CREATE UNIQUE INDEX IF NOT EXISTS \"User_email_key\" ON \"User\"(\"email\");"#,
            "two users with the same email were accepted",
        ],
        Repair::FixFlag,
    )
    .await;
}

async fn wrong_column_type(backend: Backend) {
    let sqlite = sqlite_user_table_with(
        "usedGenerations",
        r#""usedGenerations" TEXT NOT NULL DEFAULT 0"#,
    );
    let (named, fix) = match backend {
        Backend::Postgres => (
            r#"\"User\".\"usedGenerations\" has type text, expected integer"#,
            r#"TYPE INTEGER USING \"usedGenerations\"::integer"#,
        ),
        Backend::Sqlite => (
            r#"\"User\".\"usedGenerations\" has type TEXT, expected INTEGER"#,
            r#"ALTER TABLE \"User\" RENAME TO \"_User_rebuild\";"#,
        ),
    };
    break_and_repair(
        backend,
        r#"ALTER TABLE "User" ALTER COLUMN "usedGenerations" TYPE text"#,
        &sqlite,
        &[named, fix, r#""safe":false"#],
        Repair::PrintedSql,
    )
    .await;
}

async fn missing_table(backend: Backend) {
    let create = match backend {
        Backend::Postgres => r#"CREATE TABLE IF NOT EXISTS clerk_sync.\"OutboxJob\""#,
        Backend::Sqlite => r#"CREATE TABLE IF NOT EXISTS \"OutboxJob\""#,
    };
    break_and_repair(
        backend,
        r#"DROP TABLE clerk_sync."OutboxJob""#,
        r#"DROP TABLE "OutboxJob""#,
        &[r#"table \"OutboxJob\" is missing"#, create],
        Repair::FixFlag,
    )
    .await;
}

async fn unapplied_migration(backend: Backend) {
    break_and_repair(
        backend,
        "DELETE FROM clerk_sync._sqlx_migrations WHERE version = 2",
        "DELETE FROM _sqlx_migrations WHERE version = 2",
        &["not applied: 2 clerk sync tables", "clerk-sync migrate"],
        Repair::FixFlag,
    )
    .await;
}

async fn constraint_failures_are_named_in_the_response_the_event_and_diagnose(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    // Another writer's migration adds a NOT NULL column without a DEFAULT.
    db.exec(match backend {
        Backend::Postgres => r#"ALTER TABLE "User" ADD COLUMN "plan" TEXT NOT NULL"#,
        Backend::Sqlite => r#"CREATE TABLE "User_new" AS SELECT * FROM "User" WHERE 0;
DROP TABLE "User";
CREATE TABLE "User" ("id" TEXT NOT NULL PRIMARY KEY, "clerkId" TEXT NOT NULL, "email" TEXT NOT NULL, "photo" TEXT NOT NULL, "firstName" TEXT, "lastName" TEXT, "usedGenerations" INTEGER NOT NULL DEFAULT 0, "availableGenerations" INTEGER NOT NULL DEFAULT 20, "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, "updatedAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, "plan" TEXT NOT NULL);
DROP TABLE "User_new";
CREATE UNIQUE INDEX "User_clerkId_key" ON "User"("clerkId");
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");"#,
    })
    .await;

    let (s, b) = status_json(
        app.post_webhook("msg_plan", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;

    assert_eq!(s, 500, "{b}");
    assert_eq!(b["error"], "constraint_violation");
    let message = b["message"].as_str().unwrap();
    assert!(
        message.starts_with(r#"not-null constraint violated on table "User" (plan); hint:"#),
        "{message}"
    );
    assert!(!message.contains("INSERT"), "no SQL: {message}");
    let ev = events(&app.store).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].status.as_deref(), Some("failed"));
    assert_eq!(ev[0].error.as_deref(), Some(message));
    assert!(users(&app.store).await.is_empty());
    let (_, report) = diagnose_json(&db);
    assert!(
        problems(&report).contains(r#"not-null constraint violated on table \"User\" (plan)"#),
        "{report:#}"
    );

    // Once the column gets a default, Svix's retry of the same message goes through.
    db.exec(match backend {
        Backend::Postgres => r#"ALTER TABLE "User" ALTER COLUMN "plan" SET DEFAULT 'free'"#,
        Backend::Sqlite => r#"ALTER TABLE "User" RENAME TO "User_old";
CREATE TABLE "User" ("id" TEXT NOT NULL PRIMARY KEY, "clerkId" TEXT NOT NULL, "email" TEXT NOT NULL, "photo" TEXT NOT NULL, "firstName" TEXT, "lastName" TEXT, "usedGenerations" INTEGER NOT NULL DEFAULT 0, "availableGenerations" INTEGER NOT NULL DEFAULT 20, "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, "updatedAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, "plan" TEXT NOT NULL DEFAULT 'free');
DROP TABLE "User_old";
CREATE UNIQUE INDEX "User_clerkId_key" ON "User"("clerkId");
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");"#,
    })
    .await;
    let (s, b) = status_json(
        app.post_webhook("msg_plan", &fixture("clerk-user-created.json"))
            .await,
    )
    .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("processed")), "{b}");
    let ev = events(&app.store).await;
    assert_eq!(
        (ev.len(), ev[0].status.as_deref(), ev[0].error.as_deref()),
        (1, Some("processed"), None)
    );
    assert_eq!(users(&app.store).await.len(), 1);
}
