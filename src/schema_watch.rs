//! The live schema, watched while the service runs: the seed's incident was a database
//! that drifted from what the write path expected, and nothing noticed until every
//! signup failed.
//!
//! The service knows what it needs of the schema (`store::contract`: the tables, their
//! columns and types, the unique indexes its exactly-once guarantees rest on, the ledger
//! trigger). [`check`] compares the catalog with it: two catalog queries and a trigger
//! lookup on PostgreSQL (5–7 ms of database time here, docs/operations.md, Schema drift), a few
//! `pragma` reads on SQLite. [`run`] checks
//! at start, every `SCHEMA_CHECK_INTERVAL`, and at once when a statement fails for want
//! of a table, column, index or type (`store::contract::alarm`).
//!
//! While something is missing, `/readyz` answers 503 naming each piece and its fix, the
//! gauge `clerk_sync_schema_drift` is 1, and writes (webhooks, credit movements) answer
//! 503 `schema_drift` (unless only the ledger trigger is missing, which the service's own
//! writes do not need), which Svix and well-behaved clients retry, instead of risking a
//! half-applied or doubled write. Reads go on. The episode is logged once when it starts
//! (and when what is missing changes) and once when it ends. When the schema is whole,
//! the time is recorded (`"SchemaWatch"`), so that a later drift names the Prisma
//! migrations that finished since (`_prisma_migrations`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::store::contract::{self, ledger_trigger_exists, LEDGER_TRIGGER};
use crate::store::{self, OwnTablesSql, Store, StoreError};

/// `SCHEMA_CHECK_INTERVAL`'s default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// While something is missing, checks come at least this often: recovery is seen within
/// a second, and a check that caught another writer mid-change (a table renamed, then
/// rebuilt) corrects itself as fast.
const RECHECK_WHILE_DRIFTED: Duration = Duration::from_secs(1);

/// After a check that an alarm prompted, alarms wait this long: a burst of failing
/// statements costs one check, not one each.
const ALARM_SPACING: Duration = Duration::from_millis(500);

/// One piece the service needs that the schema lacks, and what restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub what: String,
    pub fix: String,
    /// Writes are refused while it is missing (a table, column, type or unique index the
    /// service writes through). A missing ledger trigger is not: the service's own writes
    /// keep the ledger whole; the app's direct ones go unrecorded until it is back.
    #[serde(rename = "blocksWrites")]
    pub blocks_writes: bool,
}

/// A Prisma migration that finished after the schema was last seen whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrismaMigration {
    pub name: String,
    /// RFC 3339, UTC.
    pub finished_at: String,
}

/// What a check found wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    pub missing: Vec<Missing>,
    /// When a check last found the schema whole (RFC 3339, UTC), if one ever did.
    pub last_whole_at: Option<String>,
    /// Prisma migrations finished since then (all of them when never).
    pub prisma_migrations: Vec<PrismaMigration>,
}

impl Drift {
    /// Whether writes must be refused while this lasts.
    pub fn blocks_writes(&self) -> bool {
        self.missing.iter().any(|m| m.blocks_writes)
    }

    /// One line for a person: what is missing, and the Prisma migrations since.
    pub fn summary(&self) -> String {
        let whats: Vec<&str> = self.missing.iter().map(|m| m.what.as_str()).collect();
        let mut s = whats.join("; ");
        if !self.prisma_migrations.is_empty() {
            let names: Vec<&str> = self
                .prisma_migrations
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            s.push_str(&format!(
                " (Prisma migrations since the schema was last whole: {})",
                names.join(", ")
            ));
        }
        s
    }
}

/// The state the handlers, `/readyz`, the console and `/metrics` read; [`run`] writes it.
#[derive(Clone)]
pub struct SchemaWatch(Arc<Inner>);

struct Inner {
    interval: Duration,
    drifted: AtomicBool,
    drift: RwLock<Option<Drift>>,
}

impl SchemaWatch {
    pub fn new(interval: Duration) -> Self {
        Self(Arc::new(Inner {
            interval,
            drifted: AtomicBool::new(false),
            drift: RwLock::new(None),
        }))
    }

    pub fn interval(&self) -> Duration {
        self.0.interval
    }

    /// What is missing now; `None` while the schema is whole. One atomic load when whole.
    pub fn drift(&self) -> Option<Drift> {
        if !self.0.drifted.load(Ordering::Acquire) {
            return None;
        }
        self.0.drift.read().expect("not poisoned").clone()
    }

    fn set(&self, drift: Option<Drift>) {
        let mut held = self.0.drift.write().expect("not poisoned");
        self.0.drifted.store(drift.is_some(), Ordering::Release);
        *held = drift;
    }

    /// Record what a check found, and say so once per episode. Returns whether the
    /// schema is whole.
    pub fn apply(&self, found: Option<Drift>, metrics: &crate::metrics::Metrics) -> bool {
        let before = self.drift();
        match (&before, &found) {
            (None, Some(d)) => tracing::error!(
                missing = %d.summary(),
                "schema drift: the database lacks what the service needs; writes answer 503 \
                 schema_drift and /readyz 503 until it is restored (`clerk-sync diagnose --fix`)"
            ),
            (Some(old), Some(d)) if old.missing != d.missing => tracing::error!(
                missing = %d.summary(),
                "schema drift changed: the database still lacks what the service needs"
            ),
            (Some(_), None) => tracing::info!("schema whole again: writes and readiness restored"),
            _ => {}
        }
        metrics.schema_drift.set(i64::from(found.is_some()));
        let whole = found.is_none();
        self.set(found);
        whole
    }
}

const WATCH_NAME: &str = "contract";

static RECORD_WHOLE: OwnTablesSql = OwnTablesSql::new(
    r#"INSERT INTO {own}"SchemaWatch" ("name", "wholeAt") VALUES ($1, $2)
ON CONFLICT ("name") DO UPDATE SET "wholeAt" = excluded."wholeAt""#,
);

static LAST_WHOLE: OwnTablesSql =
    OwnTablesSql::new(r#"SELECT "wholeAt" FROM {own}"SchemaWatch" WHERE "name" = $1"#);

/// Compare the live schema with what the service needs. `Ok(None)`: whole (and the time
/// recorded); `Err`: the catalog could not be read (the database is down: `/readyz`
/// says so on its own).
pub async fn check(store: &Store) -> Result<Option<Drift>, StoreError> {
    let catalog = contract::read_catalog(store).await?;
    let mut missing: Vec<Missing> = contract::drift(store, &catalog)
        .into_iter()
        .filter(contract::Drift::blocks_writes)
        .map(|d| Missing {
            fix: contract::restoring_sql(store, &d)
                .unwrap_or_else(|| "run `clerk-sync diagnose --fix` (it prints the SQL)".into()),
            what: d.what,
            blocks_writes: true,
        })
        .collect();
    // Without its table the trigger is reported with the table.
    if catalog.columns.contains_key("User") && !ledger_trigger_exists(store).await? {
        missing.push(Missing {
            what: format!(
                "trigger \"{LEDGER_TRIGGER}\" on \"User\" is missing: the app's direct balance \
                 changes go unrecorded in the ledger"
            ),
            fix: "run `clerk-sync diagnose --fix` (it reinstalls the trigger)".into(),
            blocks_writes: false,
        });
    }
    if missing.is_empty() {
        record_whole(store).await;
        return Ok(None);
    }
    let last_whole = last_whole(store).await;
    let prisma_migrations = prisma_migrations_since(store, last_whole).await;
    Ok(Some(Drift {
        missing,
        last_whole_at: last_whole.map(rfc3339),
        prisma_migrations,
    }))
}

fn rfc3339(t: NaiveDateTime) -> String {
    crate::domain::time::rfc3339_millis(t)
}

async fn record_whole(store: &Store) {
    let now = store::now();
    let sql = RECORD_WHOLE.for_store(store);
    let result: Result<(), StoreError> = async {
        crate::with_pool!(store, |pool, p| {
            sqlx::query(sql)
                .bind(WATCH_NAME)
                .bind(now)
                .persistent(p)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error.message = %e, "could not record the time the schema was whole");
    }
}

/// When a check last found the schema whole; `None` if never (or its table is gone).
pub async fn last_whole(store: &Store) -> Option<NaiveDateTime> {
    let sql = LAST_WHOLE.for_store(store);
    let result: Result<Option<NaiveDateTime>, StoreError> = async {
        Ok(crate::with_pool!(store, |pool, p| {
            sqlx::query_scalar(sql)
                .bind(WATCH_NAME)
                .persistent(p)
                .fetch_optional(pool)
                .await?
        }))
    }
    .await;
    result.ok().flatten()
}

/// Prisma's migrations (PostgreSQL, `_prisma_migrations` in the app's schema) that
/// finished after `since`, oldest first; all of them when `since` is `None`. Empty when
/// the database has no Prisma history.
pub async fn prisma_migrations_since(
    store: &Store,
    since: Option<NaiveDateTime>,
) -> Vec<PrismaMigration> {
    const SQL: &str = r#"
SELECT migration_name::text, finished_at
FROM "_prisma_migrations"
WHERE to_regclass('"_prisma_migrations"') IS NOT NULL
  AND finished_at IS NOT NULL AND rolled_back_at IS NULL
  AND ($1::timestamptz IS NULL OR finished_at > $1::timestamptz)
ORDER BY finished_at, migration_name"#;
    const EXISTS: &str = r#"SELECT to_regclass('"_prisma_migrations"') IS NOT NULL"#;
    let Store::Postgres(pg) = store else {
        return Vec::new();
    };
    let exists: Result<bool, _> = sqlx::query_scalar(EXISTS)
        .persistent(pg.prepared)
        .fetch_one(&pg.pool)
        .await;
    if !matches!(exists, Ok(true)) {
        return Vec::new();
    }
    let rows: Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, _> = sqlx::query_as(SQL)
        .bind(since.map(|t| t.and_utc()))
        .persistent(pg.prepared)
        .fetch_all(&pg.pool)
        .await;
    match rows {
        Ok(rows) => rows
            .into_iter()
            .map(|(name, finished)| PrismaMigration {
                name,
                finished_at: rfc3339(finished.naive_utc()),
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error.message = %e, "could not read _prisma_migrations");
            Vec::new()
        }
    }
}

/// Check every `watch.interval()` (every second while something is missing), and soon
/// after a statement fails for want of a piece of the schema, until `shutdown`. The
/// alarm is process-wide: in a process with several stores (tests) a failure prompts a
/// check of each, which costs a check and changes nothing.
pub async fn run(
    store: Store,
    watch: SchemaWatch,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let mut alarms = contract::alarms();
    loop {
        match check(&store).await {
            Ok(found) => {
                watch.apply(found, &metrics);
            }
            Err(e) => tracing::debug!(error.message = %e, "schema check could not run"),
        }
        let next = match watch.drift() {
            Some(_) => watch.interval().min(RECHECK_WHILE_DRIFTED),
            None => watch.interval(),
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(next) => {}
            changed = alarms.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(ALARM_SPACING) => {}
                }
                alarms.borrow_and_update();
            }
        }
    }
}
