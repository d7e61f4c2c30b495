//! `StoreError`: the only place that inspects `sqlx::Error`. Classification uses error
//! codes and kinds, never message text.

use std::time::Duration;

use sqlx::error::ErrorKind;

/// The underlying driver's error: sqlx's, or rusqlite's for SQLite's writer
/// ([`super::sqlite_writer`]).
pub type DriverError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is overloaded; a retry may succeed (HTTP 503).
    #[error("database unavailable")]
    Unavailable(#[source] DriverError),
    /// The transaction did not finish within `TRANSACTION_TIMEOUT_MS` (HTTP 503).
    #[error("database transaction timed out after {0:?}")]
    Timeout(Duration),
    /// A constraint refused the write.
    #[error("{0}")]
    Constraint(ConstraintViolation),
    /// The statement needs a table, column, index or type the live schema lacks (it
    /// drifted under the service: `schema_watch`); a retry succeeds once it is
    /// whole again (HTTP 503 `schema_drift`).
    #[error("the database schema lacks what the statement needs")]
    Schema(#[source] DriverError),
    #[error("migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database's layout forbids the operation (migrations, reverts); the message says
    /// why and what to do.
    #[error("{0}")]
    Layout(String),
    #[error("database error")]
    Other(#[source] DriverError),
}

impl StoreError {
    /// Whether Svix (or any caller) should retry: answered with 503.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Timeout(_) | Self::Schema(_)
        )
    }

    /// A [`StoreError::Schema`], and a prompt for the schema watch to check at once.
    pub(super) fn schema_drift(e: DriverError) -> Self {
        super::contract::alarm();
        Self::Schema(e)
    }
}

/// PostgreSQL SQLSTATEs that mean the schema lacks what a statement names: the table,
/// column, index or function is gone, or a column's type no longer takes the value.
fn pg_code_is_schema(code: &str) -> bool {
    matches!(
        code,
        "42703" // undefined_column
            | "42P01" // undefined_table
            | "42704" // undefined_object
            | "42883" // undefined_function
            | "42P10" // invalid_column_reference: ON CONFLICT names no unique index
            | "42804" // datatype_mismatch: a column's type changed
    )
}

/// SQLite reports a missing table, column or unique index only as SQLITE_ERROR with a
/// message; these are its words for them.
pub(super) fn sqlite_message_is_schema(message: &str) -> bool {
    message.starts_with("no such table")
        || message.starts_with("no such column")
        || message.contains("has no column named")
        || message.contains("does not match any PRIMARY KEY or UNIQUE constraint")
}

/// A constraint failure named well enough to act on: the table, the column or
/// constraint, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstraintViolation {
    pub kind: ConstraintKind,
    pub table: Option<String>,
    pub target: Option<String>,
    pub hint: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    NotNull,
    Unique,
    ForeignKey,
    Check,
}

impl ConstraintViolation {
    fn new(kind: ConstraintKind, table: Option<String>, target: Option<String>) -> Self {
        let hint = hint_for(kind, table.as_deref(), target.as_deref());
        Self {
            kind,
            table,
            target,
            hint,
        }
    }
}

impl std::fmt::Display for ConstraintViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            ConstraintKind::NotNull => "not-null constraint violated",
            ConstraintKind::Unique => "unique constraint violated",
            ConstraintKind::ForeignKey => "foreign key constraint violated",
            ConstraintKind::Check => "check constraint violated",
        };
        write!(f, "{what}")?;
        if let Some(t) = &self.table {
            write!(f, " on table \"{t}\"")?;
        }
        if let Some(c) = &self.target {
            write!(f, " ({c})")?;
        }
        write!(f, "; hint: {}", self.hint)
    }
}

/// PostgreSQL SQLSTATEs that mean "try again later".
fn pg_code_is_transient(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || matches!(
            code,
            "57P01" // admin_shutdown
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now
                | "53300" // too_many_connections
                | "53000" // insufficient_resources
                | "40001" // serialization_failure
                | "40P01" // deadlock_detected
                | "57014" // query_canceled (statement_timeout)
                | "55P03" // lock_not_available
        )
}

/// Whether a PostgreSQL query failed because its connection was gone: the server
/// restarted or failed over, or a pooler or the network dropped the connection while it
/// sat idle in our pool (connections are pinged only after 10 s idle). Nothing ran, or
/// the statement ran whole; either way the same statement may run again on a new
/// connection when it is idempotent.
pub fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some_and(|pg| {
                let code = pg.code();
                code.starts_with("08") || matches!(code, "57P01" | "57P02")
            }),
        _ => false,
    }
}

/// SQLite primary result codes SQLITE_BUSY (5) and SQLITE_LOCKED (6); extended codes
/// keep the primary code in the low byte.
pub(super) fn sqlite_code_is_transient(code: i64) -> bool {
    matches!(code & 0xff, 5 | 6)
}

fn hint_for(kind: ConstraintKind, table: Option<&str>, target: Option<&str>) -> &'static str {
    match (kind, table, target) {
        (ConstraintKind::NotNull, Some("User"), Some("updatedAt" | "createdAt")) => {
            "the column is NOT NULL without a DEFAULT: ALTER TABLE \"User\" ALTER COLUMN \"updatedAt\" SET DEFAULT CURRENT_TIMESTAMP (run `clerk-sync diagnose`)"
        }
        (ConstraintKind::NotNull, _, _) => {
            "a NOT NULL column received no value and has no DEFAULT; run `clerk-sync diagnose` to find the schema drift"
        }
        (ConstraintKind::Unique, Some("User"), Some(t)) if t.contains("email") => {
            "the email address already belongs to another user"
        }
        (ConstraintKind::Unique, _, _) => "a row with the same unique key already exists",
        (ConstraintKind::ForeignKey, _, _) => "the referenced row does not exist",
        (ConstraintKind::Check, _, _) => "a value is outside what the table allows",
    }
}

/// For SQLite, the table and column come from the message, e.g.
/// `NOT NULL constraint failed: User.updatedAt` — SQLite offers no other source.
fn sqlite_target(message: &str) -> (Option<String>, Option<String>) {
    message
        .split_once("constraint failed: ")
        .map(|(_, rest)| {
            let first = rest.split(',').next().unwrap_or(rest).trim();
            match first.split_once('.') {
                Some((t, c)) => (Some(t.to_owned()), Some(c.to_owned())),
                None => (None, Some(first.to_owned())),
            }
        })
        .unwrap_or((None, None))
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // Every way of not reaching the database, including a server (or a pooler in
            // front of one that is down) that accepts and then closes the connection,
            // which sqlx reports as a protocol error ("unexpected response from
            // SSLRequest"): a retry may succeed.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(Box::new(e)),
            sqlx::Error::Database(db) => {
                if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    if pg_code_is_transient(pg.code()) {
                        return Self::Unavailable(Box::new(e));
                    }
                    if pg_code_is_schema(pg.code()) {
                        return Self::schema_drift(Box::new(e));
                    }
                    if let Some(kind) = constraint_kind(db.kind()) {
                        return Self::Constraint(ConstraintViolation::new(
                            kind,
                            pg.table().map(str::to_owned),
                            pg.column().or(pg.constraint()).map(str::to_owned),
                        ));
                    }
                } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    if db
                        .code()
                        .and_then(|c| c.parse().ok())
                        .is_some_and(sqlite_code_is_transient)
                    {
                        return Self::Unavailable(Box::new(e));
                    }
                    if let Some(kind) = constraint_kind(db.kind()) {
                        let (table, target) = sqlite_target(db.message());
                        return Self::Constraint(ConstraintViolation::new(kind, table, target));
                    }
                    if sqlite_message_is_schema(db.message()) {
                        return Self::schema_drift(Box::new(e));
                    }
                }
                Self::Other(Box::new(e))
            }
            // A column whose type changed under the service no longer decodes.
            sqlx::Error::ColumnDecode { .. } => Self::schema_drift(Box::new(e)),
            _ => Self::Other(Box::new(e)),
        }
    }
}

/// A constraint failure from SQLite's extended result code and message (rusqlite).
pub(super) fn sqlite_constraint(
    extended_code: i32,
    message: Option<&str>,
) -> Option<ConstraintViolation> {
    let kind = match extended_code {
        1299 => ConstraintKind::NotNull,       // SQLITE_CONSTRAINT_NOTNULL
        2067 | 1555 => ConstraintKind::Unique, // _UNIQUE, _PRIMARYKEY
        787 => ConstraintKind::ForeignKey,     // _FOREIGNKEY
        275 => ConstraintKind::Check,          // _CHECK
        _ => return None,
    };
    let (table, target) = sqlite_target(message.unwrap_or_default());
    Some(ConstraintViolation::new(kind, table, target))
}

fn constraint_kind(kind: ErrorKind) -> Option<ConstraintKind> {
    match kind {
        ErrorKind::NotNullViolation => Some(ConstraintKind::NotNull),
        ErrorKind::UniqueViolation => Some(ConstraintKind::Unique),
        ErrorKind::ForeignKeyViolation => Some(ConstraintKind::ForeignKey),
        ErrorKind::CheckViolation => Some(ConstraintKind::Check),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes() {
        assert!(pg_code_is_transient("08006"));
        assert!(pg_code_is_transient("57P01"));
        assert!(!pg_code_is_transient("23502"));
        assert!(sqlite_code_is_transient(5));
        assert!(sqlite_code_is_transient(517));
        assert!(sqlite_code_is_transient(6));
        assert!(!sqlite_code_is_transient(1299));
    }

    #[test]
    fn sqlite_messages_name_table_and_column() {
        assert_eq!(
            sqlite_target("NOT NULL constraint failed: User.updatedAt"),
            (Some("User".into()), Some("updatedAt".into()))
        );
        assert_eq!(
            sqlite_target("UNIQUE constraint failed: User.email"),
            (Some("User".into()), Some("email".into()))
        );
    }
}
