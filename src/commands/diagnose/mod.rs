//! `clerk-sync diagnose`: a numbered suite that finds the seed's failure class (a NOT
//! NULL column without DEFAULT) and its relatives in a live database, and names the SQL
//! that fixes each problem. It leaves no trace: every write happens in a transaction
//! that is rolled back, so an interrupted run leaves nothing behind either.

mod fixes;
mod ledger;
mod steps;

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::types::chrono::NaiveDateTime;

use crate::signup::{self, insert_probe_user, Outcome, UPDATE_USER};
pub use crate::store::contract as schema;
use crate::store::{self, new_id, ConstraintKind, OwnTablesSql, Store, StoreError};
use crate::webhooks::{sign, verify, WebhookSecret};
use crate::{with_pool, with_tx};
use fixes::*;
use ledger::*;
pub use ledger::{ledger_mismatches, LedgerMismatch};
use schema::{Catalog, Drift, DriftKind};
use steps::*;

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
    /// `--fix` applies it: it adds (defaults, indexes, tables, columns, migrations, the
    /// ledger trigger) and never drops or rewrites data, nor appends ledger rows.
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
    /// The URL itself: when the pool cannot connect, one direct connection says why.
    pub url: crate::store::DatabaseUrl,
}

/// The Prisma migrations that finished since the service last found the schema whole:
/// the app's change that most likely dropped what is missing.
async fn prisma_migrations_problem(store: &Store) -> Option<Problem> {
    let since = crate::schema_watch::last_whole(store).await;
    let migrations = crate::schema_watch::prisma_migrations_since(store, since).await;
    if migrations.is_empty() {
        return None;
    }
    let names: Vec<String> = migrations
        .iter()
        .map(|m| format!("{} (finished {})", m.name, m.finished_at))
        .collect();
    let when = match since {
        Some(t) => format!(
            "since clerk-sync last found the schema whole ({})",
            crate::domain::time::rfc3339_millis(t)
        ),
        None => "(clerk-sync never recorded the schema whole)".to_owned(),
    };
    Some(Problem {
        what: format!(
            "Prisma migrations applied {when}: {}; the app's schema.prisma likely lacks              clerk-sync's declarations (`clerk-sync prisma-schema --check --schema              prisma/schema.prisma`)",
            names.join(", ")
        ),
        fix: None,
    })
}

/// Run every step, in order, against the database.
impl Target {
    pub fn for_url(url: &crate::store::DatabaseUrl) -> Self {
        Self {
            url: url.clone(),
            display: url.to_string(),
            pgbouncer: matches!(
                url,
                crate::store::DatabaseUrl::Postgres {
                    pgbouncer: true,
                    ..
                }
            ),
        }
    }
}

/// The report the console's Health page shows, for the database at `url`.
pub fn console_report(url: &crate::store::DatabaseUrl) -> crate::http::console::DiagnoseReport {
    let target = std::sync::Arc::new(Target::for_url(url));
    std::sync::Arc::new(move |store| {
        let target = target.clone();
        Box::pin(async move { run(&store, &target).await.render() })
    })
}

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

    let empty = connected && schema::TABLES.iter().all(|t| !has(t.name));
    results.push(if empty {
        // An empty database needs one command, not a CREATE TABLE per table.
        fail(
            "none of the contract's tables exist: this database was never migrated",
            vec![Problem {
                what: format!(
                    "run `clerk-sync migrate --database-url {}` (it creates every table, and \
                     adopts the Prisma app's tables when they exist)",
                    target.display
                ),
                fix: None,
            }],
        )
    } else if connected {
        let mut step = schema_step(store, &catalog, &drifts);
        if drifts.iter().any(schema::Drift::blocks_writes) {
            step.problems.extend(prisma_migrations_problem(store).await);
        }
        step
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
