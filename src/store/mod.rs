//! Storage: one enum over two concrete pools, chosen by `DATABASE_URL`.
//!
//! Query code is written once and expanded per backend by [`with_tx!`] / [`with_pool!`];
//! the SQL text is shared where the dialects agree (quoted Prisma identifiers, `$n`
//! placeholders, `ON CONFLICT`, `RETURNING`).

pub mod batch_queue;
pub mod connect;
pub mod contract;
mod error;
pub mod migrations;
pub mod sqlite_writer;
pub mod tables;
mod text_enum;
mod url;

use std::sync::OnceLock;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

pub use error::{connection_lost, ConstraintKind, ConstraintViolation, DriverError, StoreError};
pub use migrations::{RevertPlan, OWN_SCHEMA};
pub use sqlite_writer::{SqliteWriter, Step};
pub use text_enum::TextEnum;
pub use url::DatabaseUrl;

/// The tables only clerk-sync uses. On PostgreSQL they live in [`OWN_SCHEMA`]; on SQLite,
/// one file with one schema, beside the app's tables.
pub const OWN_TABLES: [&str; 2] = ["ClerkUserSync", "OutboxJob"];

/// SQL text written once for both backends where they differ only in naming: `{own}`
/// (clerk-sync's own tables, `{own}"OutboxJob"`) becomes `clerk_sync.` on PostgreSQL and
/// nothing on SQLite; `{skip_locked}` becomes `FOR UPDATE SKIP LOCKED` on PostgreSQL and
/// nothing on SQLite, which has one writer at a time. Declared as a `static`, so each
/// backend's text is built once and lives as long as the program (sqlx wants `'static`).
pub struct OwnTablesSql {
    template: &'static str,
    postgres: OnceLock<String>,
    sqlite: OnceLock<String>,
}

impl OwnTablesSql {
    pub const fn new(template: &'static str) -> Self {
        Self {
            template,
            postgres: OnceLock::new(),
            sqlite: OnceLock::new(),
        }
    }

    pub fn postgres(&'static self) -> &'static str {
        self.postgres.get_or_init(|| {
            self.template
                .replace("{own}", "clerk_sync.")
                .replace("{skip_locked}", "FOR UPDATE SKIP LOCKED")
        })
    }

    pub fn sqlite(&'static self) -> &'static str {
        self.sqlite.get_or_init(|| {
            self.template
                .replace("{own}", "")
                .replace("{skip_locked}", "")
        })
    }

    pub fn for_store(&'static self, store: &Store) -> &'static str {
        match store {
            Store::Postgres(_) => self.postgres(),
            Store::Sqlite(_) => self.sqlite(),
        }
    }

    pub fn for_tx(&'static self, tx: &StoreTx) -> &'static str {
        match tx {
            StoreTx::Postgres { .. } => self.postgres(),
            StoreTx::Sqlite(_) => self.sqlite(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pub pool: PgPool,
    /// False behind a transaction-mode pooler (`pgbouncer=true`): every query unprepared.
    pub prepared: bool,
    pub waits: PoolWaits,
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub pool: SqlitePool,
    pub waits: PoolWaits,
    /// The signup and credits transactions, group-committed on a thread of their own.
    pub writer: SqliteWriter,
}

/// Statements that found every connection of the pool busy (none idle, the pool at its
/// limit), and so waited for one: counted where a statement takes its connection
/// (`with_pool!`, `with_tx!`, `Store::begin`, and the PostgreSQL signup and credits
/// statements), read by `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct PoolWaits(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl PoolWaits {
    pub fn note<DB: sqlx::Database>(&self, pool: &sqlx::Pool<DB>) {
        if pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections() {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The pool now: connections open, idle, the limit, and the waits so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: usize,
    pub max: u32,
    pub waits: u64,
}

#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// A write transaction on either backend, opened by [`Store::begin`]. Whoever opens it
/// decides its end: the service commits, `diagnose` rolls back; dropping it rolls back.
/// Code that runs inside one is written once with [`on_tx!`](crate::on_tx).
pub enum StoreTx {
    Postgres {
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        /// False behind a transaction-mode pooler: every query unprepared.
        prepared: bool,
    },
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl StoreTx {
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Postgres { tx, .. } => tx.commit().await?,
            Self::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Self::Postgres { tx, .. } => tx.rollback().await?,
            Self::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

/// Run `$body` once per backend with `$conn` bound to the connection of a
/// [`StoreTx`] (`&mut StoreTx`) and `$p` to whether queries may be prepared.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, |$conn:ident, $p:ident| $body:block) => {
        match $tx {
            $crate::store::StoreTx::Postgres { tx, prepared } => {
                #[allow(unused_variables)]
                let $p = *prepared;
                let $conn = &mut **tx;
                $body
            }
            $crate::store::StoreTx::Sqlite(tx) => {
                #[allow(unused_variables)]
                let $p = true;
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

/// Open a write transaction and run `$body` with `$tx` bound to it and `$p` to whether
/// queries may be prepared, once per backend. PostgreSQL: `BEGIN`; SQLite:
/// `BEGIN IMMEDIATE` (a deferred transaction that later writes gets SQLITE_BUSY at once).
/// `$body` must commit; dropping the transaction rolls it back.
#[macro_export]
macro_rules! with_tx {
    ($store:expr, |$tx:ident, $p:ident| $body:block) => {
        match $store {
            $crate::store::Store::Postgres(pg) => {
                #[allow(unused_variables)]
                let $p = pg.prepared;
                pg.waits.note(&pg.pool);
                #[allow(unused_mut)]
                let mut $tx = pg.pool.begin().await?;
                $body
            }
            $crate::store::Store::Sqlite(lite) => {
                #[allow(unused_variables)]
                let $p = true;
                lite.waits.note(&lite.pool);
                #[allow(unused_mut)]
                let mut $tx = lite.pool.begin_with("BEGIN IMMEDIATE").await?;
                $body
            }
        }
    };
}

/// Run `$body` with `$pool` bound to the backend's pool (for single statements).
#[macro_export]
macro_rules! with_pool {
    ($store:expr, |$pool:ident, $p:ident| $body:block) => {
        match $store {
            $crate::store::Store::Postgres(pg) => {
                #[allow(unused_variables)]
                let $p = pg.prepared;
                pg.waits.note(&pg.pool);
                let $pool = &pg.pool;
                $body
            }
            $crate::store::Store::Sqlite(lite) => {
                #[allow(unused_variables)]
                let $p = true;
                lite.waits.note(&lite.pool);
                let $pool = &lite.pool;
                $body
            }
        }
    };
}

/// Run `attempt`, one idempotent statement on `pool`, again while it fails because its
/// connection was gone ([`connection_lost`]): after a restart every idle connection in
/// the pool may be dead, and each failure discards one, so at most one retry per
/// connection the pool can hold. Had an attempt committed, the next one finds its result.
pub async fn retry_lost_connection<T, F, Fut>(
    pool: &PgPool,
    mut attempt: F,
) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut retries = pool.options().get_max_connections();
    loop {
        match attempt().await {
            Err(e) if retries > 0 && connection_lost(&e) => {
                retries -= 1;
                tracing::warn!(error.message = %e, "connection lost; running the statement again");
            }
            result => return result,
        }
    }
}

/// A PostgreSQL connection idle this long is pinged before it is handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

impl Store {
    /// Build the pool. PostgreSQL connects lazily, so `serve` starts during an outage
    /// and `/readyz` reports it; SQLite creates its file (and directory) if missing.
    pub async fn connect(
        url: &DatabaseUrl,
        pool_max: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        match url {
            DatabaseUrl::Postgres {
                options, pgbouncer, ..
            } => {
                // sqlx pings every connection it hands out by default: one more round
                // trip per request. Ping only one that sat idle long enough to have been
                // dropped by the server or a pooler; one that breaks anyway fails its
                // query as `Unavailable` (503, retried) and is discarded.
                let pool = PgPoolOptions::new()
                    .max_connections(pool_max)
                    .acquire_timeout(acquire_timeout)
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_IF_IDLE_FOR {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_lazy_with(options.clone());
                Ok(Self::Postgres(PgStore {
                    pool,
                    prepared: !pgbouncer,
                    waits: PoolWaits::default(),
                }))
            }
            DatabaseUrl::Sqlite { options, path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
                }
                // A local file: a connection cannot be dropped under us, so no ping.
                let pool = SqlitePoolOptions::new()
                    .max_connections(pool_max)
                    .acquire_timeout(acquire_timeout)
                    .test_before_acquire(false)
                    .connect_with(options.clone())
                    .await?;
                // After the pool: it created the file and set WAL.
                let writer = SqliteWriter::start(path)?;
                Ok(Self::Sqlite(SqliteStore {
                    pool,
                    waits: PoolWaits::default(),
                    writer,
                }))
            }
        }
    }

    /// Open a write transaction: PostgreSQL `BEGIN`; SQLite `BEGIN IMMEDIATE`, as
    /// [`with_tx!`](crate::with_tx).
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        Ok(match self {
            Self::Postgres(pg) => {
                pg.waits.note(&pg.pool);
                StoreTx::Postgres {
                    tx: pg.pool.begin().await?,
                    prepared: pg.prepared,
                }
            }
            Self::Sqlite(lite) => {
                lite.waits.note(&lite.pool);
                StoreTx::Sqlite(lite.pool.begin_with("BEGIN IMMEDIATE").await?)
            }
        })
    }

    /// The pool now, for `/metrics`.
    pub fn pool_stats(&self) -> PoolStats {
        fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, waits: &PoolWaits) -> PoolStats {
            PoolStats {
                size: pool.size(),
                idle: pool.num_idle(),
                max: pool.options().get_max_connections(),
                waits: waits.get(),
            }
        }
        match self {
            Self::Postgres(pg) => of(&pg.pool, &pg.waits),
            Self::Sqlite(lite) => of(&lite.pool, &lite.waits),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    pub fn migrator(&self) -> &'static Migrator {
        match self {
            Self::Postgres(_) => &migrations::POSTGRES,
            Self::Sqlite(_) => &migrations::SQLITE,
        }
    }

    /// Apply every pending embedded migration. PostgreSQL takes an advisory lock, so
    /// replicas starting together apply them once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(pg) => migrations::apply_postgres(&pg.pool).await?,
            Self::Sqlite(lite) => {
                adopt_sqlite_tables(&lite.pool).await?;
                migrations::SQLITE.run(&lite.pool).await?
            }
        }
        Ok(())
    }

    /// Take the database back to migration `target` (see [`migrations`]).
    pub async fn revert_to(&self, target: i64, allow_drop: bool) -> Result<RevertPlan, StoreError> {
        match self {
            Self::Postgres(pg) => migrations::revert_postgres(&pg.pool, target, allow_drop).await,
            Self::Sqlite(lite) => migrations::revert_sqlite(&lite.pool, target, allow_drop).await,
        }
    }

    /// Versions applied successfully.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        match self {
            Self::Postgres(pg) => migrations::applied_postgres(pg).await,
            Self::Sqlite(lite) => migrations::applied_sqlite(&lite.pool).await,
        }
    }

    /// Versions of the embedded migrations not yet applied successfully.
    pub async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let applied = self.applied_migrations().await?;
        let mut pending: Vec<i64> = self
            .migrator()
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect();
        pending.dedup();
        Ok(pending)
    }

    /// One round trip: is the database there at all?
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, |pool, p| {
            sqlx::query("SELECT 1").persistent(p).execute(pool).await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Self::Postgres(pg) => pg.pool.close().await,
            Self::Sqlite(lite) => lite.pool.close().await,
        }
    }
}

/// Columns clerk-sync adds to the Prisma app's tables. PostgreSQL's migration adds them
/// with `ADD COLUMN IF NOT EXISTS`; SQLite has no such clause, so on a SQLite database
/// that already holds the Prisma tables they are added here, before the migrations run
/// (which then find every column their indexes need).
const SQLITE_ADOPTED_COLUMNS: &[(&str, &str, &str)] = &[
    ("WebhookEvent", "status", "TEXT"),
    ("WebhookEvent", "error", "TEXT"),
    ("WebhookEvent", "payload", "TEXT"),
    ("Transaction", "reason", "TEXT"),
    ("Transaction", "webhookEventId", "TEXT"),
    ("Transaction", "idempotencyKey", "TEXT"),
    ("Transaction", "balanceAfter", "INTEGER"),
];

async fn adopt_sqlite_tables(pool: &SqlitePool) -> Result<(), StoreError> {
    const HAS_COLUMN: &str = "SELECT EXISTS (SELECT 1 FROM pragma_table_info($1) WHERE name = $2)";
    const HAS_TABLE: &str =
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)";
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for (table, column, decl) in SQLITE_ADOPTED_COLUMNS {
        let table_exists: bool = sqlx::query_scalar(HAS_TABLE)
            .bind(table)
            .fetch_one(&mut *tx)
            .await?;
        if !table_exists {
            continue;
        }
        let has: bool = sqlx::query_scalar(HAS_COLUMN)
            .bind(table)
            .bind(column)
            .fetch_one(&mut *tx)
            .await?;
        if !has {
            // Identifiers come from the constant list above, never from input.
            let sql = format!("ALTER TABLE \"{table}\" ADD COLUMN \"{column}\" {decl}");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await?;
            tracing::info!(table, column, "added column to adopted table");
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Now, in UTC, at the millisecond precision of `timestamp(3)`, so both backends store
/// and compare the same value.
pub fn now() -> chrono::NaiveDateTime {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_millis(now.timestamp_millis())
        .expect("current time is representable")
        .naive_utc()
}

/// A new primary key for the columns the seed app's Prisma fills with `@default(cuid())`,
/// in the shape of Prisma's own cuids: 24 characters, `c`, the time in milliseconds (8
/// base-36 digits), a process-wide counter (4), then 11 characters (about 57 bits) drawn
/// from the thread's cryptographic generator (ChaCha).
///
/// Time first, so that a new row's key lands at the right-hand end of its B-tree index,
/// as Prisma's cuids do, instead of on a random page. Measured (bench/README.md):
/// SQLite signups 17–48% faster; on PostgreSQL 6–14% less CPU per signup, and on a
/// database of a million signups just after a checkpoint 3.8–4.0 KB of WAL per signup
/// (full-page images of the random pages dirtied) fell to 2.7–2.9 KB. Like Prisma's, an
/// id tells when it was made; no route takes one as a credential (the API and the console
/// ask for their own).
pub fn new_id() -> String {
    use rand::Rng;
    use std::sync::atomic::{AtomicU32, Ordering};
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const LEN: usize = 24;
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    /// `n` as `width` base-36 digits, its higher digits dropped (the time wraps in 2059).
    fn push_base36(id: &mut String, mut n: u64, width: usize) {
        let mut digits = [0u8; 8];
        for digit in digits[..width].iter_mut().rev() {
            let d = (n % 36) as usize;
            *digit = if d < 10 {
                ALPHABET[26 + d]
            } else {
                ALPHABET[d - 10]
            };
            n /= 36;
        }
        id.extend(digits[..width].iter().map(|&b| char::from(b)));
    }
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed) % 36u32.pow(4);
    let mut id = String::with_capacity(LEN);
    id.push('c');
    push_base36(&mut id, millis, 8);
    push_base36(&mut id, u64::from(count), 4);
    let mut rng = rand::thread_rng();
    while id.len() < LEN {
        id.push(char::from(ALPHABET[rng.gen_range(0..36)]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_have_cuids_shape_sort_by_time_and_do_not_repeat() {
        let before = chrono::Utc::now().timestamp_millis();
        let ids: Vec<String> = (0..10_000).map(|_| new_id()).collect();
        let after = chrono::Utc::now().timestamp_millis();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), 10_000);
        for id in &ids {
            assert_eq!(id.len(), 24, "{id}");
            assert!(id.starts_with('c'), "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{id}"
            );
            let millis = i64::from_str_radix(&id[1..9], 36).expect("base 36");
            assert!((before..=after).contains(&millis), "{id}: {millis}");
        }
        // One thread's ids increase (time, then the counter), so a new row's key goes to
        // the end of its index. (The counter wraps every 36^4 = 1,679,616 ids; only ids
        // of one millisecond on either side of a wrap come out of order.)
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order");
        // The random part uses the whole alphabet: not a constant or a narrowed range.
        let tails: std::collections::HashSet<u8> =
            ids.iter().flat_map(|i| i.bytes().skip(13)).collect();
        assert_eq!(tails.len(), 36);
    }

    #[test]
    fn both_backends_ship_the_same_migration_versions_and_names() {
        let names = |m: &Migrator| {
            m.iter()
                .map(|m| (m.version, m.description.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&migrations::POSTGRES), names(&migrations::SQLITE));
        assert!(!names(&migrations::POSTGRES).is_empty());
    }
}
