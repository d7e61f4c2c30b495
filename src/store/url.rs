//! `DATABASE_URL`, parsed once: PostgreSQL or SQLite, chosen by the scheme.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use url::Url;

/// A database chosen by the URL's scheme. Anything else is refused, never turned into a
/// new SQLite file.
#[derive(Clone)]
pub enum DatabaseUrl {
    Postgres {
        options: PgConnectOptions,
        /// `pgbouncer=true`: a transaction-mode pooler sits in front, so no named
        /// prepared statements.
        pgbouncer: bool,
        redacted: String,
    },
    Sqlite {
        options: SqliteConnectOptions,
        path: PathBuf,
    },
}

/// Query parameters Prisma puts on its URLs that sqlx does not know.
const PRISMA_ONLY_PARAMS: &[&str] = &[
    "pgbouncer",
    "schema",
    "connection_limit",
    "pool_timeout",
    "connect_timeout",
    "socket_timeout",
    "channel_binding",
    "statement_cache_size",
];

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Self::parse_postgres(raw)
        } else if let Some(rest) = raw.strip_prefix("sqlite:") {
            Self::parse_sqlite(rest)
        } else {
            Err("unsupported scheme: use postgres://, postgresql:// or sqlite://".to_owned())
        }
    }

    fn parse_postgres(raw: &str) -> Result<Self, String> {
        let mut url = Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
        let mut pgbouncer = false;
        let mut schema = None;
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(k, v)| {
                match k.as_ref() {
                    "pgbouncer" => pgbouncer = v == "true",
                    "schema" => schema = Some(v.to_string()),
                    _ => {}
                }
                (!PRISMA_ONLY_PARAMS.contains(&k.as_ref()))
                    .then(|| (k.into_owned(), v.into_owned()))
            })
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        let mut options =
            PgConnectOptions::from_str(url.as_str()).map_err(|e| format!("invalid: {e}"))?;
        if let Some(schema) = schema.filter(|s| s != "public") {
            options = options.options([("search_path", schema.as_str())]);
        }
        options = options.application_name("clerk-sync");
        if pgbouncer {
            options = options.statement_cache_capacity(0);
        }
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        Ok(Self::Postgres {
            options,
            pgbouncer,
            redacted: shown.to_string(),
        })
    }

    fn parse_sqlite(rest: &str) -> Result<Self, String> {
        let path_part = rest.strip_prefix("//").unwrap_or(rest);
        let path_part = path_part.split('?').next().unwrap_or_default();
        if path_part.is_empty() || path_part == ":memory:" {
            return Err("needs a file path, e.g. sqlite://data/clerk-sync.db".to_owned());
        }
        let path = PathBuf::from(path_part);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        Ok(Self::Sqlite { options, path })
    }

    /// Where development state (the generated signing secret) lives: next to the SQLite
    /// file, or `./data` when the database is PostgreSQL.
    pub fn data_dir(&self) -> PathBuf {
        match self {
            Self::Sqlite { path, .. } => path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            Self::Postgres { .. } => PathBuf::from("data"),
        }
    }

    /// A PostgreSQL server on this machine: a Unix socket, `localhost` or a loopback
    /// address. Its backends then compete with the service for the same cores.
    pub fn is_postgres_on_this_machine(&self) -> bool {
        let Self::Postgres { options, .. } = self else {
            return false;
        };
        if options.get_socket().is_some() {
            return true;
        }
        let host = options
            .get_host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Postgres { .. } => "postgres",
            Self::Sqlite { .. } => "sqlite",
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres { redacted, .. } => f.write_str(redacted),
            Self::Sqlite { path, .. } => write!(f, "sqlite://{}", path.display()),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}
