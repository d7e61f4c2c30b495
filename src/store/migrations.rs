//! The embedded migrations: applied, reverted, and where their history lives.
//!
//! One set per backend (`migrations/postgres`, `migrations/sqlite`), with the same
//! versions. Every version above 1 has a `.down.sql` beside it, so that
//! `clerk-sync migrate --revert-to N` takes a database back to version N and the release
//! that shipped N runs on it again. Version 1 created the app's own tables and is never
//! reverted.
//!
//! PostgreSQL, from version [`OWN_SCHEMA_VERSION`]: clerk-sync's own tables and its
//! migration history live in schema [`OWN_SCHEMA`], out of sight of a Prisma datasource
//! on the app's schema. A database migrated by an earlier release keeps its history in
//! the app's schema; [`apply`] moves it, with the tables of version 5, in one
//! transaction, under the same advisory lock every sqlx migrator of this database takes
//! (earlier releases included), then lets sqlx apply what is pending.

use std::sync::LazyLock;

use sqlx::migrate::{Migrate, Migration, Migrator};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{Connection, Executor};

use super::{PgStore, StoreError, OWN_TABLES};

/// clerk-sync's own PostgreSQL schema.
pub const OWN_SCHEMA: &str = "clerk_sync";

/// The migration that moved clerk-sync's own tables into [`OWN_SCHEMA`].
pub const OWN_SCHEMA_VERSION: i64 = 5;

/// The history table on PostgreSQL from [`OWN_SCHEMA_VERSION`] on, and before it (in the
/// app's schema, as every sqlx migrator names it).
const PG_HISTORY: &str = "clerk_sync._sqlx_migrations";
const LEGACY_HISTORY: &str = "_sqlx_migrations";

pub static POSTGRES: LazyLock<Migrator> = LazyLock::new(|| {
    let mut m = sqlx::migrate!("./migrations/postgres");
    m.dangerous_set_table_name(PG_HISTORY);
    m.create_schema(OWN_SCHEMA);
    // `apply` takes the lock itself, to move the history under it first.
    m.set_locking(false);
    m
});

pub static SQLITE: LazyLock<Migrator> = LazyLock::new(|| sqlx::migrate!("./migrations/sqlite"));

/// The newest version this binary ships.
pub fn latest(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

fn up(migrator: &Migrator, version: i64) -> Option<&Migration> {
    migrator
        .iter()
        .find(|m| m.version == version && !m.migration_type.is_down_migration())
}

fn down(migrator: &Migrator, version: i64) -> Option<&Migration> {
    migrator
        .iter()
        .find(|m| m.version == version && m.migration_type.is_down_migration())
}

/// Where the migration history of this PostgreSQL database is, if anywhere. `prepared`:
/// false behind a transaction-mode pooler (see [`super::PgStore`]).
async fn pg_history(
    conn: &mut sqlx::PgConnection,
    prepared: bool,
) -> Result<Option<&'static str>, StoreError> {
    let (own, legacy): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('clerk_sync._sqlx_migrations') IS NOT NULL, \
                to_regclass('_sqlx_migrations') IS NOT NULL",
    )
    .persistent(prepared)
    .fetch_one(&mut *conn)
    .await?;
    Ok(match (own, legacy) {
        (true, false) => Some(PG_HISTORY),
        (false, true) => Some(LEGACY_HISTORY),
        (false, false) => None,
        (true, true) => {
            return Err(StoreError::Layout(
                "both clerk_sync._sqlx_migrations and _sqlx_migrations in the app's schema exist: \
             a release before this one migrated this database after it was upgraded. Compare \
             them, keep the newer, then run clerk-sync migrate again"
                    .into(),
            ))
        }
    })
}

/// Versions applied successfully, read from wherever the history is (`/readyz` asks,
/// over the service's pool).
pub async fn applied_postgres(pg: &PgStore) -> Result<Vec<i64>, StoreError> {
    let mut conn = pg.pool.acquire().await?;
    pg_applied(&mut conn, pg.prepared).await
}

async fn pg_applied(conn: &mut sqlx::PgConnection, prepared: bool) -> Result<Vec<i64>, StoreError> {
    let Some(table) = pg_history(conn, prepared).await? else {
        return Ok(Vec::new());
    };
    let sql = format!("SELECT version FROM {table} WHERE success ORDER BY version");
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .persistent(prepared)
        .fetch_all(&mut *conn)
        .await?)
}

pub async fn applied_sqlite(pool: &SqlitePool) -> Result<Vec<i64>, StoreError> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?,
    )
}

/// Apply every pending migration on PostgreSQL, moving an earlier release's history first.
pub async fn apply_postgres(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    conn.lock().await?;
    let result = async {
        move_legacy_history(&mut conn).await?;
        POSTGRES.run(&mut *conn).await?;
        Ok::<_, StoreError>(())
    }
    .await;
    let unlocked = conn.unlock().await;
    result?;
    Ok(unlocked?)
}

/// A database migrated by a release before version 5: move its history and clerk-sync's
/// tables into [`OWN_SCHEMA`] in ONE transaction (version 5's own statements, which sqlx
/// then records as applied). Running services see either layout, never half of one.
async fn move_legacy_history(conn: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    if pg_history(conn, true).await? != Some(LEGACY_HISTORY) {
        return Ok(());
    }
    let own_schema = up(&POSTGRES, OWN_SCHEMA_VERSION).expect("version 5 is embedded");
    let mut tx = conn.begin().await?;
    tx.execute("CREATE SCHEMA IF NOT EXISTS clerk_sync; ALTER TABLE _sqlx_migrations SET SCHEMA clerk_sync")
        .await?;
    tx.execute(sqlx::raw_sql(own_schema.sql.clone())).await?;
    tx.commit().await?;
    tracing::info!(
        schema = OWN_SCHEMA,
        "moved clerk-sync's tables and migration history out of the app's schema"
    );
    Ok(())
}

/// What `--revert-to` would do, or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevertPlan {
    /// Versions to revert, newest first.
    pub versions: Vec<i64>,
    /// Tables whose rows the reverted versions drop, with their row counts.
    pub dropped_rows: Vec<(String, i64)>,
}

/// Check that `target` can be reverted to, and say what that takes.
pub fn plan(migrator: &Migrator, applied: &[i64], target: i64) -> Result<Vec<i64>, StoreError> {
    let latest = latest(migrator);
    if target < 1 || target > latest {
        return Err(StoreError::Layout(format!(
            "--revert-to must be a version from 1 to {latest}: version 1 created the app's own \
             tables, which clerk-sync never drops"
        )));
    }
    if let Some(unknown) = applied.iter().find(|v| up(migrator, **v).is_none()) {
        return Err(StoreError::Layout(format!(
            "this database has version {unknown} applied, which this release does not know: \
             revert it with the release that shipped it"
        )));
    }
    let mut versions: Vec<i64> = applied.iter().copied().filter(|v| *v > target).collect();
    versions.sort_unstable_by(|a, b| b.cmp(a));
    if let Some(v) = versions.iter().find(|v| down(migrator, **v).is_none()) {
        return Err(StoreError::Layout(format!(
            "version {v} has no reverse migration"
        )));
    }
    Ok(versions)
}

/// Rows that reverting below version 2 would drop (clerk-sync's own tables).
async fn pg_rows_dropped(
    conn: &mut sqlx::PgConnection,
    versions: &[i64],
) -> Result<Vec<(String, i64)>, StoreError> {
    if !versions.contains(&2) {
        return Ok(Vec::new());
    }
    let schema = if versions.contains(&OWN_SCHEMA_VERSION) {
        "clerk_sync."
    } else {
        ""
    };
    let mut out = Vec::new();
    for table in OWN_TABLES {
        let sql = format!(r#"SELECT count(*) FROM {schema}"{table}""#);
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?;
        out.push((table.to_owned(), n));
    }
    Ok(out)
}

/// Revert PostgreSQL to `target`: each version's `.down.sql` and the removal of its
/// history row in one transaction, newest first. `allow_drop` must be set when a
/// reverted version drops rows (see [`RevertPlan::dropped_rows`]).
pub async fn revert_postgres(
    pool: &PgPool,
    target: i64,
    allow_drop: bool,
) -> Result<RevertPlan, StoreError> {
    let mut conn = pool.acquire().await?;
    conn.lock().await?;
    let result = async {
        let applied = pg_applied(&mut conn, true).await?;
        let versions = plan(&POSTGRES, &applied, target)?;
        let dropped_rows = pg_rows_dropped(&mut conn, &versions).await?;
        refuse_silent_loss(&dropped_rows, allow_drop)?;
        for version in &versions {
            let migration = down(&POSTGRES, *version).expect("planned");
            let mut tx = conn.begin().await?;
            tx.execute(sqlx::raw_sql(migration.sql.clone())).await?;
            // The history moves back to the app's schema with version 5's reverse.
            let history = if *version > OWN_SCHEMA_VERSION {
                PG_HISTORY
            } else {
                LEGACY_HISTORY
            };
            let sql = format!("DELETE FROM {history} WHERE version = $1");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "reverted migration");
        }
        Ok::<_, StoreError>(RevertPlan {
            versions,
            dropped_rows,
        })
    }
    .await;
    let unlocked = conn.unlock().await;
    let plan = result?;
    unlocked?;
    Ok(plan)
}

/// Revert SQLite to `target`, as [`revert_postgres`] does.
pub async fn revert_sqlite(
    pool: &SqlitePool,
    target: i64,
    allow_drop: bool,
) -> Result<RevertPlan, StoreError> {
    let applied = applied_sqlite(pool).await?;
    let versions = plan(&SQLITE, &applied, target)?;
    let mut dropped_rows = Vec::new();
    if versions.contains(&2) {
        for table in OWN_TABLES {
            let sql = format!(r#"SELECT count(*) FROM "{table}""#);
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await?;
            dropped_rows.push((table.to_owned(), n));
        }
    }
    refuse_silent_loss(&dropped_rows, allow_drop)?;
    for version in &versions {
        let migration = down(&SQLITE, *version).expect("planned");
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        tx.execute(sqlx::raw_sql(migration.sql.clone())).await?;
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "reverted migration");
    }
    Ok(RevertPlan {
        versions,
        dropped_rows,
    })
}

fn refuse_silent_loss(dropped: &[(String, i64)], allow_drop: bool) -> Result<(), StoreError> {
    let losing: Vec<String> = dropped
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| format!("{n} row(s) of \"{t}\""))
        .collect();
    if losing.is_empty() || allow_drop {
        return Ok(());
    }
    Err(StoreError::Layout(format!(
        "reverting below version 2 drops clerk-sync's own tables with {}; nothing was \
         changed. Add --yes to do it anyway",
        losing.join(" and ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_ship_the_same_versions_each_with_a_reverse_above_1() {
        let names = |m: &Migrator| {
            m.iter()
                .map(|m| {
                    (
                        m.version,
                        m.description.to_string(),
                        m.migration_type.is_down_migration(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&POSTGRES), names(&SQLITE));
        for m in [&*POSTGRES, &*SQLITE] {
            for v in 1..=latest(m) {
                assert!(up(m, v).is_some(), "version {v} is there");
                assert_eq!(down(m, v).is_some(), v > 1, "reverse of version {v}");
            }
        }
    }

    #[test]
    fn a_plan_reverts_newest_first_and_never_version_1() {
        let applied: Vec<i64> = (1..=latest(&POSTGRES)).collect();
        let versions = plan(&POSTGRES, &applied, 4).unwrap();
        let mut expected: Vec<i64> = (5..=latest(&POSTGRES)).rev().collect();
        assert_eq!(versions, expected);
        expected = (2..=latest(&POSTGRES)).rev().collect();
        assert_eq!(plan(&POSTGRES, &applied, 1).unwrap(), expected);
        assert!(plan(&POSTGRES, &applied, 0).is_err());
        assert!(plan(&POSTGRES, &applied, latest(&POSTGRES) + 1).is_err());
        assert!(plan(&POSTGRES, &[1, 2, 99], 1).is_err(), "unknown version");
        assert_eq!(plan(&POSTGRES, &[1, 2, 3], 4).unwrap(), Vec::<i64>::new());
    }
}
