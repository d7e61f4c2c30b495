//! A database of its own for each test.

use sqlx::Connection;

use clerk_sync::store::Store;
use clerk_sync::with_pool;

use super::{init, Backend};

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own for one test.
pub struct TestDb {
    /// The `DATABASE_URL` the application uses.
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        init();
        match backend {
            Backend::Postgres => {
                let name = format!("clerk_sync_test_{}", uuid::Uuid::new_v4().simple());
                let admin = admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL tests need a server: could not connect to {admin} ({e}). \
                         Run the tests through scripts/test, which provides one."
                        )
                    });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(&admin).unwrap();
                url.set_path(&name);
                Self {
                    url: url.to_string(),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// A store on this database for assertions (no migrations run).
    pub async fn store(&self) -> Store {
        let url = clerk_sync::config::DatabaseUrl::parse(&self.url).unwrap();
        Store::connect(&url, 4, std::time::Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// Run SQL text on this database (setup and sabotage).
    pub async fn exec(&self, sql: &str) {
        let store = self.store().await;
        with_pool!(&store, |pool, _p| {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
        store.close().await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside async code; a thread with its own runtime does the work.
            let admin = admin_url();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// An open transaction that has inserted a `failed` event for `msg_id`: a signup
/// statement for that message waits on its key until the transaction ends.
pub async fn hold_event_key(
    pg: &clerk_sync::store::PgStore,
    msg_id: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut blocker = pg.pool.begin().await.unwrap();
    sqlx::query(
        r#"INSERT INTO "WebhookEvent" ("id", "eventId", "eventType", "processed", "createdAt", "status")
           VALUES ('blocker', $1, 'user.created', false, LOCALTIMESTAMP, 'failed')"#,
    )
    .bind(msg_id)
    .execute(&mut *blocker)
    .await
    .unwrap();
    blocker
}

/// Wait until `n` sessions on this database wait for a lock.
pub async fn wait_for_lock_waiters(pg: &clerk_sync::store::PgStore, n: i64) {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pg.pool)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{n} sessions never waited for a lock");
}
