//! Why a database cannot be reached, in one line: the cause as the server or the network
//! gave it, and the fix for that cause. A pool only says it timed out; one direct
//! connection says why.

use std::fmt;
use std::time::Duration;

use sqlx::Connection;

use super::DatabaseUrl;

/// The database could not be reached: what happened, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    pub cause: String,
    pub fix: &'static str,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fix = self.fix.chars();
        let first = fix
            .next()
            .map(|c| c.to_uppercase().to_string())
            .unwrap_or_default();
        write!(f, "{}. {first}{}", self.cause, fix.as_str())
    }
}

impl std::error::Error for Unreachable {}

/// What to do when a SQLite file cannot be created or opened.
const SQLITE_FIX: &str = "Make that directory writable by this user, or set DATABASE_URL to a \
    writable place such as sqlite:///var/lib/clerk-sync/clerk-sync.db";

/// An operating system error as a short phrase: `read-only file system`, without
/// `(os error 30)`.
pub fn io_cause(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

/// One direct connection to `url` within 10 s; for SQLite, create the file's directory
/// and open the file, so that a path that cannot be written is named with its cause.
pub async fn probe(url: &DatabaseUrl) -> Result<(), Unreachable> {
    let options = match url {
        DatabaseUrl::Postgres { options, .. } => options,
        DatabaseUrl::Sqlite { options, path } => return probe_sqlite(options, path).await,
    };
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect_with(options),
    )
    .await;
    match attempt {
        Ok(Ok(mut conn)) => {
            let schema = search_path_exists(&mut conn).await;
            let _ = conn.close().await;
            schema
        }
        Ok(Err(e)) => Err(explain(&e, url)),
        Err(_) => Err(Unreachable {
            cause: format!("{url} did not answer within 10 s"),
            fix: "Check the host and port in DATABASE_URL, the network and firewall, and \
                  that the instance is running (Neon suspends idle computes; the first \
                  connection wakes it)",
        }),
    }
}

/// A connection whose `search_path` names no schema that exists (Prisma's `?schema=`
/// naming one not created yet) connects, then fails at its first `CREATE` with
/// `no schema has been selected to create in`: say so before.
async fn search_path_exists(conn: &mut sqlx::PgConnection) -> Result<(), Unreachable> {
    let row: Result<(Option<String>, String), _> =
        sqlx::query_as("SELECT current_schema(), current_setting('search_path')")
            .fetch_one(conn)
            .await;
    match row {
        Ok((None, search_path)) => Err(Unreachable {
            cause: format!("no schema of the search_path ({search_path}) exists in this database"),
            fix: "Create the schema Prisma's ?schema= names (CREATE SCHEMA \"name\";), or \
                  remove ?schema= from DATABASE_URL to use public",
        }),
        _ => Ok(()),
    }
}

/// The cause and fix of a connection error.
pub fn explain(e: &sqlx::Error, url: &DatabaseUrl) -> Unreachable {
    let (host, port) = match url {
        DatabaseUrl::Postgres { options, .. } => {
            (options.get_host().to_owned(), options.get_port())
        }
        DatabaseUrl::Sqlite { .. } => (String::new(), 0),
    };
    let at = format!("{host}:{port}");
    match e {
        sqlx::Error::Database(db) => {
            let message = db.message().to_owned();
            let (cause, fix) = match db.code().as_deref() {
                Some("28P01") => (
                    message,
                    "Check the user name and password in DATABASE_URL",
                ),
                Some("28000") if message.contains("no encryption") || message.contains("SSL off") => (
                    message,
                    "The server requires TLS: add ?sslmode=require to DATABASE_URL",
                ),
                Some("28000") => (message, "Check the user name in DATABASE_URL"),
                Some("3D000") => (
                    message,
                    "Create the database (createdb, or the Neon console) or fix its name in DATABASE_URL",
                ),
                Some("3F000") => (
                    message,
                    "Prisma's ?schema= names a schema that does not exist: create it, or remove the parameter",
                ),
                Some("53300") => (
                    message,
                    "The server has no connection to spare: lower DATABASE_POOL_MAX, or use the pooled (-pooler) endpoint with pgbouncer=true",
                ),
                _ => (
                    message,
                    "The server refused the connection; check DATABASE_URL",
                ),
            };
            Unreachable { cause, fix }
        }
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => Unreachable {
            cause: format!("connection refused by {at}"),
            fix: "Is PostgreSQL running there? Check the host and port in DATABASE_URL",
        },
        sqlx::Error::Io(io) => {
            let text = io.to_string();
            if text.contains("failed to lookup address") || text.contains("Name or service not known") {
                Unreachable {
                    cause: format!("unknown host {host}"),
                    fix: "Check the host name in DATABASE_URL",
                }
            } else {
                Unreachable {
                    cause: format!("could not reach {at}: {text}"),
                    fix: "Check the host and port in DATABASE_URL and the network",
                }
            }
        }
        sqlx::Error::Tls(tls) => Unreachable {
            cause: format!("TLS with {at} failed: {tls}"),
            fix: "Check sslmode in DATABASE_URL (Neon needs sslmode=require), and the server's certificate",
        },
        sqlx::Error::Protocol(p) => Unreachable {
            cause: format!("{at} accepted the connection, then: {p}"),
            fix: "Is that a PostgreSQL server (or a pooler whose database is up)? Check the port in DATABASE_URL",
        },
        other => Unreachable {
            cause: format!("could not connect to {at}: {other}"),
            fix: "Check DATABASE_URL",
        },
    }
}

async fn probe_sqlite(
    options: &sqlx::sqlite::SqliteConnectOptions,
    path: &std::path::Path,
) -> Result<(), Unreachable> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Unreachable {
            cause: format!(
                "cannot create {}, the directory of the SQLite database: {}",
                dir.display(),
                io_cause(&e)
            ),
            fix: SQLITE_FIX,
        })?;
    }
    match sqlx::SqliteConnection::connect_with(options).await {
        Ok(conn) => {
            let _ = conn.close().await;
            Ok(())
        }
        Err(e) => Err(Unreachable {
            cause: format!(
                "cannot open the SQLite database {}: {}",
                path.display(),
                match &e {
                    sqlx::Error::Database(db) => db.message().to_owned(),
                    sqlx::Error::Io(io) => io_cause(io),
                    other => other.to_string(),
                }
            ),
            fix: SQLITE_FIX,
        }),
    }
}
