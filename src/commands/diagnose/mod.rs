//! `clerk-sync diagnose`: a numbered suite that finds the seed's failure class (a NOT
//! NULL column without DEFAULT) and its relatives in a live database, and names the SQL
//! that fixes each problem. It leaves no trace: every write happens in a transaction
//! that is rolled back, so an interrupted run leaves nothing behind either.

pub mod schema;

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::types::chrono::NaiveDateTime;

use crate::signup::{self, insert_probe_user, Outcome, SignupSettings, UPDATE_USER};
use crate::store::{self, new_id, ConstraintKind, OwnTablesSql, Store, StoreError};
use crate::webhooks::{sign, verify, WebhookSecret};
use crate::{with_pool, with_tx};
use schema::{Catalog, Drift, DriftKind};

/// Oldest PostgreSQL the SQL here is written for (`ON CONFLICT`, `FOR UPDATE SKIP LOCKED`,
/// `DROP DATABASE … WITH (FORCE)` in tests).
pub const MIN_PG_VERSION: i32 = 130000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FixAction {
    /// SQL to run, in one transaction with the other fixes.
    Sql(String),
    /// A command to run instead (pending migrations).
    Command(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Fix {
    #[serde(flatten)]
    pub action: FixAction,
    /// `--fix` applies it: it adds (defaults, indexes, tables, columns, ledger rows) and
    /// never drops or rewrites data.
    pub safe: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub what: String,
    pub fix: Option<Fix>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub number: usize,
    pub name: &'static str,
    pub status: Status,
    pub summary: String,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub database: String,
    pub backend: &'static str,
    pub steps: Vec<Step>,
    pub passed: usize,
    pub total: usize,
    pub ok: bool,
}

pub const STEP_NAMES: &[&str] = &[
    "connection",
    "schema retrieved",
    "schema matches contract",
    "migrations applied and current",
    "insert through the service's write path",
    "raw SQL insert omitting defaulted columns",
    "full signup transaction",
    "duplicate clerkId and email rejected",
    "update moves updatedAt",
    "ledger adds up for every user",
    "outbox backlog",
    "cleanup verified",
];

struct StepResult {
    status: Status,
    summary: String,
    problems: Vec<Problem>,
}

fn pass(summary: impl Into<String>) -> StepResult {
    StepResult {
        status: Status::Pass,
        summary: summary.into(),
        problems: Vec::new(),
    }
}

fn fail(summary: impl Into<String>, problems: Vec<Problem>) -> StepResult {
    StepResult {
        status: Status::Fail,
        summary: summary.into(),
        problems,
    }
}

fn skip(summary: impl Into<String>) -> StepResult {
    StepResult {
        status: Status::Skip,
        summary: summary.into(),
        problems: Vec::new(),
    }
}

fn errored(e: &StoreError) -> StepResult {
    fail(format!("error: {e}"), Vec::new())
}

/// What `run` needs to know beyond the store.
pub struct Target {
    pub display: String,
    pub pgbouncer: bool,
}

/// Run every step, in order, against the database.
pub async fn run(store: &Store, target: &Target) -> Report {
    let mut results = Vec::new();
    let connection = connection(store, target).await;
    let connected = connection.status != Status::Fail;
    results.push(connection);

    let catalog = if connected {
        schema::read_catalog(store).await
    } else {
        Err(StoreError::Timeout(Duration::ZERO))
    };
    match &catalog {
        Ok(c) => results.push(pass(format!(
            "{} of {} contract tables found",
            schema::TABLES
                .iter()
                .filter(|t| c.columns.contains_key(t.name))
                .count(),
            schema::TABLES.len()
        ))),
        Err(e) if connected => results.push(errored(e)),
        Err(_) => results.push(skip("not connected")),
    }
    let catalog = catalog.unwrap_or_default();
    let drifts = schema::drift(store, &catalog);
    let has = |t: &str| catalog.columns.contains_key(t);
    let user_ok = connected && has("User");

    results.push(if connected {
        schema_step(store, &catalog, &drifts)
    } else {
        skip("not connected")
    });
    results.push(if connected {
        migrations_step(store).await
    } else {
        skip("not connected")
    });
    results.push(if user_ok {
        service_insert(store).await
    } else {
        skip("no \"User\" table")
    });
    results.push(if user_ok {
        raw_insert(store, &catalog, &drifts).await
    } else {
        skip("no \"User\" table")
    });
    let all_tables = connected && schema::TABLES.iter().all(|t| has(t.name));
    results.push(if all_tables {
        signup_transaction(store).await
    } else {
        skip("contract tables missing")
    });
    results.push(if user_ok {
        unique_step(store, &drifts).await
    } else {
        skip("no \"User\" table")
    });
    results.push(if user_ok {
        update_step(store).await
    } else {
        skip("no \"User\" table")
    });
    results.push(if user_ok && has("Transaction") {
        ledger_step(store).await
    } else {
        skip("no \"User\" or \"Transaction\" table")
    });
    results.push(if connected && has("OutboxJob") {
        outbox_step(store).await
    } else {
        skip("no \"OutboxJob\" table")
    });
    results.push(if user_ok {
        cleanup_step(store).await
    } else {
        skip("no \"User\" table")
    });

    let steps: Vec<Step> = results
        .into_iter()
        .zip(STEP_NAMES)
        .enumerate()
        .map(|(i, (r, name))| Step {
            number: i + 1,
            name,
            status: r.status,
            summary: r.summary,
            problems: r.problems,
        })
        .collect();
    let passed = steps.iter().filter(|s| s.status == Status::Pass).count();
    let ok = !steps
        .iter()
        .any(|s| matches!(s.status, Status::Fail | Status::Skip));
    Report {
        database: target.display.clone(),
        backend: store.backend_name(),
        total: steps.len(),
        passed,
        steps,
        ok,
    }
}

impl Report {
    /// The fixes `--fix` applies, without repeats, in step order.
    pub fn safe_fixes(&self) -> Vec<FixAction> {
        let mut out: Vec<FixAction> = Vec::new();
        for p in self.steps.iter().flat_map(|s| &s.problems) {
            if let Some(Fix { action, safe: true }) = &p.fix {
                if !out.contains(action) {
                    out.push(action.clone());
                }
            }
        }
        out
    }

    /// The human form: one line per step, problems and fixes below, then `N/M passed`.
    pub fn render(&self) -> String {
        let mut s = format!(
            "clerk-sync diagnose: {} ({})\n",
            self.database, self.backend
        );
        for step in &self.steps {
            let label = match step.status {
                Status::Pass => "PASS",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
                Status::Skip => "SKIP",
            };
            s.push_str(&format!(
                "[{:>2}/{}] {label} {}: {}\n",
                step.number, self.total, step.name, step.summary
            ));
            for p in &step.problems {
                s.push_str(&format!("        - {}\n", p.what));
                match &p.fix {
                    Some(Fix {
                        action: FixAction::Sql(sql),
                        safe,
                    }) => {
                        let tag = if *safe {
                            "fix (applied by --fix)"
                        } else {
                            "fix (review, then run by hand)"
                        };
                        s.push_str(&format!("          {tag}:\n"));
                        for line in sql.lines() {
                            s.push_str(&format!("            {line}\n"));
                        }
                    }
                    Some(Fix {
                        action: FixAction::Command(c),
                        ..
                    }) => s.push_str(&format!("          fix: run `{c}`\n")),
                    None => {}
                }
            }
        }
        s.push_str(&format!("{}/{} passed\n", self.passed, self.total));
        s
    }
}

/// Apply fixes: pending migrations first, then all SQL in one transaction.
pub async fn apply_fixes(store: &Store, fixes: &[FixAction]) -> Result<(), StoreError> {
    if fixes.iter().any(|f| matches!(f, FixAction::Command(_))) {
        store.migrate().await?;
    }
    let sql: Vec<&str> = fixes
        .iter()
        .filter_map(|f| match f {
            FixAction::Sql(s) => Some(s.as_str()),
            FixAction::Command(_) => None,
        })
        .collect();
    if sql.is_empty() {
        return Ok(());
    }
    let script = sql.join("\n");
    with_tx!(store, |tx, p| {
        // Reviewed: the script is built from the contract and the embedded migrations.
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Steps.

async fn connection(store: &Store, target: &Target) -> StepResult {
    let start = Instant::now();
    if let Err(e) = store.ping().await {
        return fail(format!("cannot connect: {e}"), vec![Problem {
            what: "the database does not answer; check DATABASE_URL / DIRECT_URL, the network, and that the instance is running (Neon suspends idle computes)".into(),
            fix: None,
        }]);
    }
    let connect = start.elapsed();
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        if store.ping().await.is_err() {
            break;
        }
        samples.push(t.elapsed());
    }
    samples.sort();
    let latency = samples.get(samples.len() / 2).copied().unwrap_or(connect);
    let latency_ms = latency.as_secs_f64() * 1000.0;
    match store {
        Store::Postgres(pg) => {
            let info: Result<(String, i32, bool), sqlx::Error> = sqlx::query_as(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                 COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            )
            .persistent(pg.prepared)
            .fetch_one(&pg.pool)
            .await;
            let (version, num, tls) = match info {
                Ok(i) => i,
                Err(e) => return errored(&e.into()),
            };
            let summary = format!(
                "PostgreSQL {version}, TLS {}, {}, latency {latency_ms:.1} ms",
                if tls { "in use" } else { "off" },
                if target.pgbouncer {
                    "transaction pooler (pgbouncer=true, unprepared statements)"
                } else {
                    "direct connection"
                }
            );
            if num < MIN_PG_VERSION {
                return fail(
                    summary,
                    vec![Problem {
                        what: format!("PostgreSQL {version} is older than the supported 13"),
                        fix: None,
                    }],
                );
            }
            pass(summary)
        }
        Store::Sqlite(lite) => {
            let info: Result<(String, String), sqlx::Error> = sqlx::query_as(
                "SELECT sqlite_version(), (SELECT journal_mode FROM pragma_journal_mode)",
            )
            .fetch_one(&lite.pool)
            .await;
            match info {
                Ok((version, journal)) => pass(format!(
                    "SQLite {version}, journal {journal}, latency {latency_ms:.2} ms"
                )),
                Err(e) => errored(&e.into()),
            }
        }
    }
}

fn fix_for(store: &Store, catalog: &Catalog, d: &Drift) -> Option<Fix> {
    let table = schema::table(d.table);
    let pg = matches!(store, Store::Postgres(_));
    let name = schema::qualified(store, d.table);
    let sql = |s: String, safe: bool| {
        Some(Fix {
            action: FixAction::Sql(s),
            safe,
        })
    };
    match (&d.kind, pg) {
        (DriftKind::MissingTable, _) => sql(migration_statements(store, d.table), true),
        (DriftKind::MissingColumn(c), _) => {
            let col = schema::column(table, c);
            let (if_not_exists, decl) = if pg {
                ("IF NOT EXISTS ", col.pg_decl())
            } else {
                ("", col.sqlite_decl())
            };
            sql(
                format!("ALTER TABLE {name} ADD COLUMN {if_not_exists}{decl};"),
                col.nullable || col.default.is_some(),
            )
        }
        (DriftKind::MissingDefault(c), true) => {
            let col = schema::column(table, c);
            sql(
                format!(
                    "ALTER TABLE {name} ALTER COLUMN \"{c}\" SET DEFAULT {};",
                    col.default.unwrap_or("NULL")
                ),
                true,
            )
        }
        (DriftKind::WrongType(c), true) => {
            let col = schema::column(table, c);
            let ty = col.pg_decl();
            let ty = ty.split_whitespace().nth(1).unwrap_or_default().to_owned();
            sql(
                format!(
                    "ALTER TABLE {name} ALTER COLUMN \"{c}\" TYPE {ty} USING \"{c}\"::{};",
                    ty.to_lowercase()
                ),
                false,
            )
        }
        (DriftKind::WrongNullability(c), true) => {
            let col = schema::column(table, c);
            let change = if col.nullable {
                "DROP NOT NULL"
            } else {
                "SET NOT NULL"
            };
            sql(
                format!("ALTER TABLE {name} ALTER COLUMN \"{c}\" {change};"),
                false,
            )
        }
        // SQLite cannot alter a column: the table is rebuilt in one transaction, every row
        // copied. Safe for a missing default (values copy unchanged), reviewed otherwise.
        (DriftKind::MissingDefault(_), false) => sql(sqlite_rebuild(store, catalog, d.table), true),
        (DriftKind::WrongType(_) | DriftKind::WrongNullability(_), false) => {
            sql(sqlite_rebuild(store, catalog, d.table), false)
        }
        (DriftKind::MissingUnique(index), _) => {
            let cols = table
                .unique
                .iter()
                .find(|(n, _)| n == index)
                .map(|(_, c)| *c)
                .unwrap_or_default();
            let cols = cols
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            if index.ends_with("_pkey") {
                sql(
                    format!("ALTER TABLE {name} ADD PRIMARY KEY ({cols});"),
                    false,
                )
            } else {
                sql(
                    format!("CREATE UNIQUE INDEX IF NOT EXISTS \"{index}\" ON {name}({cols});"),
                    true,
                )
            }
        }
    }
}

/// The statements of the embedded migrations that create `table` and its indexes
/// (all `IF NOT EXISTS`, so safe to run again).
fn migration_statements(store: &Store, table: &str) -> String {
    // Comments go first: they may contain `;`.
    let create = format!("CREATE TABLE IF NOT EXISTS \"{table}\"");
    let alter = format!("ALTER TABLE \"{table}\"");
    let on = format!("ON \"{table}\"(");
    let statements = store
        .migrator()
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| without_comments(m.sql.as_str()))
        .flat_map(|sql| {
            sql.split(';')
                .map(|stmt| stmt.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|stmt| {
            stmt.starts_with(&create)
                || stmt.starts_with(&alter)
                || (stmt.starts_with("CREATE") && stmt.contains(&on))
        })
        .map(|stmt| format!("{stmt};"))
        .collect::<Vec<_>>()
        .join("\n");
    // The migrations create clerk-sync's own tables in the app's schema; version 5 moves
    // them. A fix creates them where they belong.
    let quoted = format!("\"{table}\"");
    statements.replace(&quoted, &schema::qualified(store, table))
}

/// SQL text without its `--` comment lines.
fn without_comments(sql: &str) -> String {
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rebuild a SQLite table to the contract's shape: rename, create, copy every row
/// (extra columns kept), drop the renamed copy, recreate the indexes.
fn sqlite_rebuild(store: &Store, catalog: &Catalog, table: &str) -> String {
    let spec = schema::table(table);
    let live = catalog.columns.get(table).cloned().unwrap_or_default();
    let statements = migration_statements(store, table);
    let (creates, indexes): (Vec<&str>, Vec<&str>) = statements
        .split_inclusive(";\n")
        .map(str::trim)
        .partition(|s| s.starts_with("CREATE TABLE"));
    let old = format!("_{table}_rebuild");
    let mut out = vec![format!("ALTER TABLE \"{table}\" RENAME TO \"{old}\";")];
    out.extend(creates.iter().map(|s| s.to_string()));
    for (name, c) in &live {
        if !spec.columns.iter().any(|sc| sc.name == name) {
            out.push(format!(
                "ALTER TABLE \"{table}\" ADD COLUMN \"{name}\" {};",
                c.declared
            ));
        }
    }
    let cols = live
        .keys()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    out.push(format!(
        "INSERT INTO \"{table}\" ({cols}) SELECT {cols} FROM \"{old}\";"
    ));
    out.push(format!("DROP TABLE \"{old}\";"));
    out.extend(indexes.iter().map(|s| s.to_string()));
    // The ledger trigger went with the old table.
    if table == "User" {
        out.extend(ledger_trigger_sql(store));
    }
    out.join("\n")
}

fn schema_step(store: &Store, catalog: &Catalog, drifts: &[Drift]) -> StepResult {
    let problems: Vec<Problem> = drifts
        .iter()
        .map(|d| Problem {
            what: d.what.clone(),
            fix: fix_for(store, catalog, d),
        })
        .collect();
    if problems.is_empty() {
        let mut summary =
            "every contract table, column, type, nullability, default and unique index as expected"
                .to_owned();
        if let Some(note) = schema::client_side_note(catalog) {
            summary.push_str(&format!("; note: {note}"));
        }
        pass(summary)
    } else {
        fail(
            format!("{} difference(s) from the contract", problems.len()),
            problems,
        )
    }
}

async fn migrations_step(store: &Store) -> StepResult {
    match store.pending_migrations().await {
        Ok(pending) if pending.is_empty() => pass(format!(
            "{} embedded migrations applied",
            store::migrations::latest(store.migrator())
        )),
        Ok(pending) => {
            let names: Vec<String> = store
                .migrator()
                .iter()
                .filter(|m| !m.migration_type.is_down_migration())
                .filter(|m| pending.contains(&m.version))
                .map(|m| format!("{} {}", m.version, m.description))
                .collect();
            fail(
                format!("{} migration(s) not applied", pending.len()),
                vec![Problem {
                    what: format!("not applied: {}", names.join(", ")),
                    fix: Some(Fix {
                        action: FixAction::Command("clerk-sync migrate".into()),
                        safe: true,
                    }),
                }],
            )
        }
        Err(e) => errored(&e),
    }
}

/// A throwaway identity for the diagnostic writes; every one is rolled back.
fn probe_ids() -> (String, String, String) {
    let tag = new_id();
    (
        new_id(),
        format!("diag_{tag}"),
        format!("diag_{tag}@diagnose.invalid"),
    )
}

async fn service_insert(store: &Store) -> StepResult {
    let (id, clerk_id, email) = probe_ids();
    let now = store::now();
    let result: Result<i64, StoreError> = async {
        with_tx!(store, |tx, p| {
            insert_probe_user!(&mut *tx, p, &id, &clerk_id, &email, 20, now).await?;
            let n: i64 = sqlx::query_scalar(r#"SELECT COUNT(*) FROM "User" WHERE "id" = $1"#)
                .bind(&id)
                .persistent(p)
                .fetch_one(&mut *tx)
                .await?;
            tx.rollback().await?;
            Ok(n)
        })
    }
    .await;
    match result {
        Ok(1) => pass("the service's INSERT into \"User\" succeeded (rolled back)"),
        Ok(n) => fail(format!("inserted row read back {n} times"), Vec::new()),
        Err(e) => fail(format!("{e}"), Vec::new()),
    }
}

/// What a hand-written or foreign writer sends: only the columns without a default
/// (and the id, which has none), exactly like the seed's failing Prisma INSERT.
const RAW_INSERTS: &[(&str, &str)] = &[
    (
        "User",
        r#"INSERT INTO "User" ("id", "clerkId", "email", "photo") VALUES ($1, $2, $3, '')"#,
    ),
    (
        "WebhookEvent",
        r#"INSERT INTO "WebhookEvent" ("id", "eventId", "eventType") VALUES ($1, $2, 'diagnose')"#,
    ),
    (
        "Transaction",
        r#"INSERT INTO "Transaction" ("id", "tracking_id") VALUES ($1, $2)"#,
    ),
];

async fn raw_insert(store: &Store, catalog: &Catalog, drifts: &[Drift]) -> StepResult {
    let mut problems = Vec::new();
    let mut done = Vec::new();
    for (table, sql) in RAW_INSERTS {
        if !catalog.columns.contains_key(*table) {
            continue;
        }
        let (id, clerk_id, email) = probe_ids();
        let result: Result<(), StoreError> = async {
            with_tx!(store, |tx, p| {
                // Reviewed: constant statements above.
                sqlx::query(sqlx::AssertSqlSafe(*sql))
                    .bind(&id)
                    .bind(&clerk_id)
                    .bind(&email)
                    .persistent(p)
                    .execute(&mut *tx)
                    .await?;
                tx.rollback().await?;
                Ok(())
            })
        }
        .await;
        match result {
            Ok(()) => done.push(*table),
            Err(StoreError::Constraint(v)) if v.kind == ConstraintKind::NotNull => {
                let fix = drifts
                    .iter()
                    .find(|d| {
                        d.table == *table
                            && v.target.as_deref().is_some_and(|c| {
                                d.kind
                                    == DriftKind::MissingDefault(
                                        schema::column(schema::table(table), c).name,
                                    )
                            })
                    })
                    .and_then(|d| fix_for(store, catalog, d));
                problems.push(Problem {
                    what: format!("INSERT into \"{table}\" omitting defaulted columns failed: {v}"),
                    fix,
                });
            }
            Err(e) => problems.push(Problem {
                what: format!("INSERT into \"{table}\" failed: {e}"),
                fix: None,
            }),
        }
    }
    if problems.is_empty() {
        pass(format!(
            "INSERTs into {} relying on database defaults succeeded (rolled back)",
            done.join(", ")
        ))
    } else {
        fail(
            format!(
                "{} table(s) refuse an INSERT that omits defaulted columns",
                problems.len()
            ),
            problems,
        )
    }
}

async fn signup_transaction(store: &Store) -> StepResult {
    let (_, clerk_id, email) = probe_ids();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let body = serde_json::json!({
        "type": "user.created",
        "object": "event",
        "timestamp": now_ms,
        "data": {
            "id": clerk_id,
            "email_addresses": [{"id": "idn_diag", "email_address": email}],
            "primary_email_address_id": "idn_diag",
            "image_url": "",
            "updated_at": now_ms,
        }
    });
    let body = serde_json::to_vec(&body).expect("serializable");
    let (secret, _) = WebhookSecret::generate();
    let msg_id = format!("msg_{clerk_id}");
    let now = now_ms / 1000;
    let mut headers = axum::http::HeaderMap::new();
    for (k, v) in [
        ("svix-id", msg_id.clone()),
        ("svix-timestamp", now.to_string()),
        ("svix-signature", sign(&secret, &msg_id, now, &body)),
    ] {
        headers.insert(k, v.parse().expect("ascii header"));
    }
    let hook = match verify(&[secret], &headers, body.into(), now) {
        Ok(h) => h,
        Err(e) => return fail(format!("could not sign a probe: {e}"), Vec::new()),
    };
    let settings = SignupSettings {
        signup_credits: 20,
        transaction_timeout: Duration::from_secs(10),
        dry_run: true,
    };
    match signup::handle(store, &settings, None, &hook).await {
        Ok(Outcome::Processed(_)) => {
            pass("event, user, ledger row and outbox job inserted in one transaction (rolled back)")
        }
        Ok(other) => fail(format!("unexpected outcome {other:?}"), Vec::new()),
        Err(e) => fail(format!("{e}"), Vec::new()),
    }
}

async fn insert_probe_user(store: &Store, users: &[(&str, &str, &str)]) -> Result<(), StoreError> {
    let now = store::now();
    with_tx!(store, |tx, p| {
        let mut result = Ok(());
        for (id, clerk_id, email) in users {
            let r = insert_probe_user!(&mut *tx, p, *id, *clerk_id, *email, 0, now).await;
            if let Err(e) = r {
                result = Err(e.into());
                break;
            }
        }
        tx.rollback().await?;
        result
    })
}

async fn unique_step(store: &Store, drifts: &[Drift]) -> StepResult {
    let (a, clerk_a, email_a) = probe_ids();
    let (b, clerk_b, email_b) = probe_ids();
    let mut problems = Vec::new();
    let cases = [
        (
            "clerkId",
            "User_clerkId_key",
            [
                (a.as_str(), clerk_a.as_str(), email_a.as_str()),
                (b.as_str(), clerk_a.as_str(), email_b.as_str()),
            ],
        ),
        (
            "email",
            "User_email_key",
            [
                (a.as_str(), clerk_a.as_str(), email_a.as_str()),
                (b.as_str(), clerk_b.as_str(), email_a.as_str()),
            ],
        ),
    ];
    for (column, index, rows) in cases {
        match insert_probe_user(store, &rows).await {
            Err(StoreError::Constraint(v)) if v.kind == ConstraintKind::Unique => {}
            Ok(()) => {
                let fix = drifts
                    .iter()
                    .find(|d| d.kind == DriftKind::MissingUnique(index))
                    .map(|_| Fix {
                        action: FixAction::Sql(format!("CREATE UNIQUE INDEX IF NOT EXISTS \"{index}\" ON \"User\"(\"{column}\");")),
                        safe: true,
                    });
                problems.push(Problem {
                    what: format!("two users with the same {column} were accepted"),
                    fix,
                });
            }
            Err(e) => problems.push(Problem {
                what: format!("probe insert failed: {e}"),
                fix: None,
            }),
        }
    }
    if problems.is_empty() {
        pass("duplicate clerkId and duplicate email both refused by unique indexes (rolled back)")
    } else {
        fail("the database accepts duplicates", problems)
    }
}

async fn update_step(store: &Store) -> StepResult {
    let (id, clerk_id, email) = probe_ids();
    let earlier = store::now() - chrono::Duration::minutes(1);
    let result: Result<(NaiveDateTime, NaiveDateTime), StoreError> = async {
        with_tx!(store, |tx, p| {
            insert_probe_user!(&mut *tx, p, &id, &clerk_id, &email, 0, earlier).await?;
            sqlx::query(UPDATE_USER)
                .bind(&clerk_id)
                .bind(&email)
                .bind("updated")
                .bind(Some("Diag"))
                .bind(None::<String>)
                .bind(store::now())
                .persistent(p)
                .fetch_optional(&mut *tx)
                .await?;
            let row: (NaiveDateTime, NaiveDateTime) =
                sqlx::query_as(r#"SELECT "createdAt", "updatedAt" FROM "User" WHERE "id" = $1"#)
                    .bind(&id)
                    .persistent(p)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            Ok(row)
        })
    }
    .await;
    match result {
        Ok((created, updated)) if updated > created => pass(format!(
            "updatedAt moved forward by {} ms (rolled back)",
            (updated - created).num_milliseconds()
        )),
        Ok(_) => fail("updatedAt did not move on update", Vec::new()),
        Err(e) => fail(format!("{e}"), Vec::new()),
    }
}

const LEDGER_BY_USER: &str = r#"
SELECT u."id", u."clerkId",
       CAST(u."availableGenerations" - u."usedGenerations" AS BIGINT),
       CAST(COALESCE((SELECT SUM(CASE WHEN t."type" = 'credit' THEN t."amount"
                                      WHEN t."type" = 'debit' THEN -t."amount"
                                      ELSE 0 END)
                      FROM "Transaction" t WHERE t."userId" = u."id"), 0) AS BIGINT)
FROM "User" u"#;

/// A user whose ledger does not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerMismatch {
    pub user_id: String,
    pub clerk_id: String,
    /// `availableGenerations - usedGenerations`.
    pub balance: i64,
    /// Credits minus debits in the ledger.
    pub ledger: i64,
}

/// Users whose ledger does not add up.
pub async fn ledger_mismatches(store: &Store) -> Result<Vec<LedgerMismatch>, StoreError> {
    let rows: Vec<(String, String, i64, i64)> = with_pool!(store, |pool, p| {
        sqlx::query_as(LEDGER_BY_USER)
            .persistent(p)
            .fetch_all(pool)
            .await?
    });
    Ok(rows
        .into_iter()
        .filter(|(_, _, balance, ledger)| balance != ledger)
        .map(|(user_id, clerk_id, balance, ledger)| LedgerMismatch {
            user_id,
            clerk_id,
            balance,
            ledger,
        })
        .collect())
}

/// The adoption migration's statement, with this run's own ids and keys, appends one
/// `adjustment` row per user whose ledger does not add up.
fn ledger_adjustment_sql(store: &Store) -> Option<String> {
    let opening = store
        .migrator()
        .iter()
        .find(|m| m.description.contains("opening balances"))?;
    let tag = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let body = without_comments(opening.sql.as_str());
    Some(
        body.replace("'opening_' ||", &format!("'adjust_{tag}_' ||"))
            .replace("'opening:' ||", &format!("'adjust:{tag}:' ||"))
            .replace(
                "opening balance when clerk-sync adopted this database",
                "adjustment written by hand after clerk-sync diagnose",
            )
            .trim()
            .to_owned(),
    )
}

/// The migration that installs the ledger trigger on `"User"`, as an idempotent fix.
fn ledger_trigger_sql(store: &Store) -> Option<String> {
    store
        .migrator()
        .iter()
        .find(|m| {
            !m.migration_type.is_down_migration() && m.description.contains("ledger direct writes")
        })
        .map(|m| m.sql.as_str().trim().to_owned())
}

const LEDGER_TRIGGER: &str = "User_credits_ledger";

async fn ledger_trigger_exists(store: &Store) -> Result<bool, StoreError> {
    const PG: &str = r#"
SELECT EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgrelid = to_regclass('"User"') AND tgname = $1 AND tgenabled <> 'D')"#;
    const LITE: &str =
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = $1)";
    Ok(match store {
        Store::Postgres(pg) => {
            sqlx::query_scalar(PG)
                .bind(LEDGER_TRIGGER)
                .persistent(pg.prepared)
                .fetch_one(&pg.pool)
                .await?
        }
        Store::Sqlite(lite) => {
            sqlx::query_scalar(LITE)
                .bind(LEDGER_TRIGGER)
                .fetch_one(&lite.pool)
                .await?
        }
    })
}

/// Ledger rows of these users that another writer wrote without a balance (clerk-sync
/// and its trigger always write `balanceAfter`): the likely rows that moved no column.
async fn foreign_rows(store: &Store, user_id: &str) -> Result<Vec<String>, StoreError> {
    const ROWS: &str = r#"
SELECT "id" || ' (' || COALESCE("reason", "type", '?') || ' ' || COALESCE(CAST("amount" AS TEXT), '?') || ')'
FROM "Transaction" WHERE "userId" = $1 AND "balanceAfter" IS NULL
ORDER BY "createdAt" DESC LIMIT 3"#;
    Ok(with_pool!(store, |pool, p| {
        sqlx::query_scalar(ROWS)
            .bind(user_id)
            .persistent(p)
            .fetch_all(pool)
            .await?
    }))
}

async fn direct_writes(store: &Store) -> Result<i64, StoreError> {
    const COUNT: &str =
        r#"SELECT CAST(COUNT(*) AS BIGINT) FROM "Transaction" WHERE "reason" = 'direct_write'"#;
    Ok(with_pool!(store, |pool, p| {
        sqlx::query_scalar(COUNT)
            .persistent(p)
            .fetch_one(pool)
            .await?
    }))
}

/// Step 10. The ledger trigger records direct changes of the credit columns by another
/// writer as `direct_write` rows, so a ledger that does not add up means rows that moved
/// no column (a row the app wrote without changing the columns), changes made while the
/// trigger was missing, or rows rewritten by hand. No fix for that is safe: appending an
/// adjustment makes it add up by hiding what happened, so it is printed for review.
async fn ledger_step(store: &Store) -> StepResult {
    let run = async {
        let trigger = ledger_trigger_exists(store).await?;
        let mismatches = ledger_mismatches(store).await?;
        let direct = direct_writes(store).await?;
        let mut foreign = Vec::new();
        for m in mismatches.iter().take(5) {
            foreign.push(foreign_rows(store, &m.user_id).await?);
        }
        Ok::<_, StoreError>((trigger, mismatches, direct, foreign))
    };
    let (trigger, mismatches, direct, foreign) = match run.await {
        Ok(found) => found,
        Err(e) => return errored(&e),
    };
    let mut problems = Vec::new();
    if !trigger {
        problems.push(Problem {
            what: format!(
                "the ledger trigger \"{LEDGER_TRIGGER}\" on \"User\" is missing: changes of \
                 usedGenerations / availableGenerations by another writer are not recorded"
            ),
            fix: ledger_trigger_sql(store).map(|sql| Fix {
                action: FixAction::Sql(sql),
                safe: true,
            }),
        });
    }
    if !mismatches.is_empty() {
        let shown: Vec<String> = mismatches
            .iter()
            .zip(&foreign)
            .map(|(m, rows)| {
                let mut line = format!(
                    "{}: balance {}, ledger {} (ledger - balance = {})",
                    m.clerk_id,
                    m.balance,
                    m.ledger,
                    m.ledger - m.balance
                );
                if !rows.is_empty() {
                    line.push_str(&format!(
                        "; rows written by another writer: {}",
                        rows.join(", ")
                    ));
                }
                line
            })
            .collect();
        problems.push(Problem {
            what: format!(
                "ledger does not add up for {}{}. Either a ledger row was written without \
                 changing the columns (e.g. a purchase whose credits were never granted: \
                 grant them in the same transaction as a row, or through POST \
                 /v1/users/{{clerkId}}/credits/grant), or the columns changed while the \
                 ledger trigger was missing. Review the rows; the SQL below appends one \
                 adjustment per user that makes the ledger match the columns as they are",
                shown.join("; "),
                if mismatches.len() > 5 { "; …" } else { "" }
            ),
            fix: ledger_adjustment_sql(store).map(|sql| Fix {
                action: FixAction::Sql(sql),
                safe: false,
            }),
        });
    }
    if problems.is_empty() {
        let mut summary = "credits minus debits equal availableGenerations - usedGenerations \
                           for every user"
            .to_owned();
        if direct > 0 {
            summary.push_str(&format!(
                "; {direct} direct change(s) by another writer recorded as direct_write rows"
            ));
        }
        pass(summary)
    } else {
        fail(
            format!(
                "{} user(s) whose ledger does not add up{}",
                mismatches.len(),
                if trigger {
                    ""
                } else {
                    "; ledger trigger missing"
                }
            ),
            problems,
        )
    }
}

async fn outbox_step(store: &Store) -> StepResult {
    static BACKLOG: OwnTablesSql = OwnTablesSql::new(
        r#"
SELECT CAST(COALESCE(SUM(CASE WHEN "status" = 'pending' THEN 1 ELSE 0 END), 0) AS BIGINT),
       CAST(COALESCE(SUM(CASE WHEN "status" = 'dead' THEN 1 ELSE 0 END), 0) AS BIGINT),
       MIN(CASE WHEN "status" = 'pending' THEN "createdAt" END)
FROM {own}"OutboxJob""#,
    );
    static REQUEUE_DEAD: OwnTablesSql = OwnTablesSql::new(
        r#"UPDATE {own}"OutboxJob" SET "status" = 'pending', "attempts" = 0, "nextAttemptAt" = CURRENT_TIMESTAMP WHERE "status" = 'dead';"#,
    );
    let row: Result<(i64, i64, Option<NaiveDateTime>), StoreError> = async {
        Ok(with_pool!(store, |pool, p| {
            sqlx::query_as(BACKLOG.for_store(store))
                .persistent(p)
                .fetch_one(pool)
                .await?
        }))
    }
    .await;
    match row {
        Ok((pending, dead, oldest)) => {
            let age = oldest
                .map(|t| (store::now() - t).num_seconds())
                .unwrap_or(0);
            let summary = format!("{pending} pending (oldest {age} s), {dead} dead");
            let mut problems = Vec::new();
            if dead > 0 {
                problems.push(Problem {
                    what: format!("{dead} dead job(s): see \"lastError\"; after fixing the cause, requeue them"),
                    fix: Some(Fix {
                        action: FixAction::Sql(REQUEUE_DEAD.for_store(store).into()),
                        safe: false,
                    }),
                });
            }
            if age > 900 {
                problems.push(Problem {
                    what: "pending jobs older than 15 minutes: is a worker running with CLERK_SECRET_KEY set?".into(),
                    fix: None,
                });
            }
            StepResult {
                status: if problems.is_empty() {
                    Status::Pass
                } else {
                    Status::Warn
                },
                summary,
                problems,
            }
        }
        Err(e) => errored(&e),
    }
}

async fn cleanup_step(store: &Store) -> StepResult {
    const LEFTOVERS: &str = r#"
SELECT (SELECT COUNT(*) FROM "User" WHERE substr("clerkId", 1, 5) = 'diag_')
     + (SELECT COUNT(*) FROM "WebhookEvent" WHERE substr("eventId", 1, 9) = 'msg_diag_')
     + (SELECT COUNT(*) FROM "Transaction" WHERE substr("tracking_id", 1, 5) = 'diag_')"#;
    let n: Result<i64, StoreError> = async {
        Ok(with_pool!(store, |pool, p| {
            sqlx::query_scalar(LEFTOVERS)
                .persistent(p)
                .fetch_one(pool)
                .await?
        }))
    }
    .await;
    match n {
        Ok(0) => pass("no diagnostic row left behind"),
        Ok(n) => fail(
            format!("{n} diagnostic row(s) left behind"),
            vec![Problem {
                what: "rows tagged diag_ exist".into(),
                fix: Some(Fix {
                    action: FixAction::Sql(
                        "DELETE FROM \"User\" WHERE substr(\"clerkId\", 1, 5) = 'diag_';\n\
                         DELETE FROM \"WebhookEvent\" WHERE substr(\"eventId\", 1, 9) = 'msg_diag_';\n\
                         DELETE FROM \"Transaction\" WHERE substr(\"tracking_id\", 1, 5) = 'diag_';"
                            .into(),
                    ),
                    safe: true,
                }),
            }],
        ),
        Err(e) => errored(&e),
    }
}
