//! Typed configuration, parsed and validated once at start.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use url::Url;

use crate::cli::{DatabaseArgs, ServeArgs};
pub use crate::domain::{Redacted, MAX_CREDITS};
pub use crate::store::DatabaseUrl;
use crate::webhooks::WebhookSecret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {problem}")]
    Invalid { var: &'static str, problem: String },
}

fn invalid(var: &'static str, problem: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        var,
        problem: problem.to_string(),
    }
}

/// Worker threads when `TOKIO_WORKER_THREADS` is not set: one per core, but one fewer
/// when the database is a PostgreSQL on this machine. Each signup and consume statement
/// runs in one PostgreSQL backend, the serial part of the path, and a worker of ours on
/// every core takes CPU from it (bench/README.md, measured on 2 cores: one worker did
/// as many to 21% more signups per second, and 4–18% more consumes). SQLite runs inside the process; a remote database does
/// not compete for the cores.
pub fn default_worker_threads(database: Option<&DatabaseUrl>, cores: usize) -> usize {
    let cores = cores.max(1);
    if database.is_some_and(DatabaseUrl::is_postgres_on_this_machine) {
        (cores - 1).max(1)
    } else {
        cores
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: DatabaseUrl,
    /// For migrations (session-level advisory locks do not survive a transaction pooler).
    pub direct_url: Option<DatabaseUrl>,
    pub pool_max: u32,
    pub transaction_timeout: Duration,
}

impl DatabaseSettings {
    pub fn from_args(
        args: &DatabaseArgs,
        transaction_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let url = DatabaseUrl::parse(&args.database_url).map_err(|p| invalid("DATABASE_URL", p))?;
        let direct_url = args
            .direct_url
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(DatabaseUrl::parse)
            .transpose()
            .map_err(|p| invalid("DIRECT_URL", p))?;
        if let Some(direct) = &direct_url {
            if direct.backend_name() != url.backend_name() {
                return Err(invalid(
                    "DIRECT_URL",
                    "must use the same database kind as DATABASE_URL",
                ));
            }
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        // SQLite has one writer at a time: more connections only wait in its busy
        // handler (measured: p99 95 ms with 5, 26 ms with 2, same throughput).
        let pool_max = args.database_pool_max.unwrap_or(match url {
            DatabaseUrl::Postgres { .. } => cores * 2 + 1,
            DatabaseUrl::Sqlite { .. } => 2,
        });
        if pool_max == 0 || pool_max > 1000 {
            return Err(invalid("DATABASE_POOL_MAX", "must be between 1 and 1000"));
        }
        Ok(Self {
            url,
            direct_url,
            pool_max,
            transaction_timeout,
        })
    }

    /// The URL migrations run over.
    pub fn migration_url(&self) -> &DatabaseUrl {
        self.direct_url.as_ref().unwrap_or(&self.url)
    }
}

#[derive(Debug, Clone)]
pub struct ClerkSettings {
    pub api_url: Url,
    pub secret_key: Option<Redacted<String>>,
    /// Outbox deliveries in flight at once (`OUTBOX_CONCURRENCY`).
    pub outbox_concurrency: usize,
    /// Clerk calls per second from the outbox, all deliveries together
    /// (`OUTBOX_RATE_PER_SECOND`).
    pub outbox_rate_per_second: u32,
    /// Reconcile inside `serve` this often (`RECONCILE_INTERVAL`); `None`: never.
    pub reconcile_interval: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseSettings,
    pub listen: SocketAddr,
    /// Empty means "use the development secret from the data directory".
    pub webhook_secrets: Vec<WebhookSecret>,
    pub clerk: ClerkSettings,
    pub signup_credits: i32,
    /// Keys accepted by the `/v1` API; empty refuses every call.
    pub api_keys: Vec<Redacted<String>>,
    /// Keys that open the console; empty turns it off.
    pub admin_keys: Vec<Redacted<String>>,
    /// Run the outbox worker inside `serve` (tests step it by hand instead).
    pub run_worker: bool,
    /// Connection timeouts and limits of the HTTP server.
    pub server: ServerSettings,
    /// How often `schema_watch` checks the live schema (`SCHEMA_CHECK_INTERVAL_MS`).
    pub schema_check_interval: Duration,
}

impl Config {
    pub fn from_serve_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        if args.transaction_timeout_ms == 0 || args.transaction_timeout_ms > 600_000 {
            return Err(invalid(
                "TRANSACTION_TIMEOUT_MS",
                "must be between 1 and 600000",
            ));
        }
        let database = DatabaseSettings::from_args(
            &args.database,
            Duration::from_millis(args.transaction_timeout_ms),
        )?;
        let ip: IpAddr = args
            .host
            .parse()
            .map_err(|_| invalid("HOST", "must be an IP address such as 127.0.0.1 or 0.0.0.0"))?;
        let webhook_secrets = match args.clerk_webhook_signing_secret.as_deref() {
            Some(s) if !s.trim().is_empty() => parse_secrets(s)?,
            _ => Vec::new(),
        };
        let api_url = Url::parse(&args.clerk_api_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| invalid("CLERK_API_URL", "must be an http(s) URL"))?;
        let secret_key = args
            .clerk_secret_key
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Redacted(s.to_owned()));
        if !(0..=MAX_CREDITS).contains(&args.signup_credits) {
            return Err(invalid(
                "SIGNUP_CREDITS",
                format!("must be between 0 and {MAX_CREDITS}"),
            ));
        }
        let api_keys = parse_keys("CLERK_SYNC_API_KEYS", args.clerk_sync_api_keys.as_deref())?;
        let admin_keys = parse_keys(
            "CLERK_SYNC_ADMIN_KEYS",
            args.clerk_sync_admin_keys.as_deref(),
        )?;
        if args.reconcile_interval.is_some() && secret_key.is_none() {
            return Err(invalid(
                "RECONCILE_INTERVAL",
                "needs CLERK_SECRET_KEY: reconcile reads Clerk's user list with it",
            ));
        }
        Ok(Self {
            database,
            listen: SocketAddr::new(ip, args.port),
            api_keys,
            admin_keys,
            webhook_secrets,
            clerk: ClerkSettings {
                api_url,
                secret_key,
                outbox_concurrency: match args.outbox_concurrency {
                    n @ 1..=256 => n,
                    _ => return Err(invalid("OUTBOX_CONCURRENCY", "must be between 1 and 256")),
                },
                reconcile_interval: args
                    .reconcile_interval
                    .as_deref()
                    .map(parse_interval)
                    .transpose()?,
                outbox_rate_per_second: match args.outbox_rate_per_second {
                    n @ 1..=10_000 => n,
                    _ => {
                        return Err(invalid(
                            "OUTBOX_RATE_PER_SECOND",
                            "must be between 1 and 10000",
                        ))
                    }
                },
            },
            signup_credits: args.signup_credits,
            run_worker: true,
            server: server_settings(args)?,
            schema_check_interval: match args.schema_check_interval_ms {
                ms @ 100..=3_600_000 => Duration::from_millis(ms),
                _ => {
                    return Err(invalid(
                        "SCHEMA_CHECK_INTERVAL_MS",
                        "must be between 100 and 3600000",
                    ))
                }
            },
        })
    }
}

/// The HTTP server's connection limits (`http::server`), validated once here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_drain: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            shutdown_drain: Duration::from_secs(10),
        }
    }
}

/// `RECONCILE_INTERVAL`: a number with `s`, `m` or `h`, from 1 s to 7 days.
fn parse_interval(raw: &str) -> Result<Duration, ConfigError> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.len().saturating_sub(1));
    let seconds = digits.parse::<u64>().ok().and_then(|n| match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    });
    match seconds {
        Some(s @ 1..=604_800) => Ok(Duration::from_secs(s)),
        _ => Err(invalid(
            "RECONCILE_INTERVAL",
            "must be a duration such as 30s, 15m or 6h (1s to 168h)",
        )),
    }
}

fn server_settings(args: &ServeArgs) -> Result<ServerSettings, ConfigError> {
    let millis = |name: &'static str, value: u64, max: u64| {
        if (1..=max).contains(&value) {
            Ok(Duration::from_millis(value))
        } else {
            Err(invalid(name, format!("must be between 1 and {max}")))
        }
    };
    if !(1..=1_000_000).contains(&args.max_connections) {
        return Err(invalid("MAX_CONNECTIONS", "must be between 1 and 1000000"));
    }
    Ok(ServerSettings {
        header_read_timeout: millis(
            "HEADER_READ_TIMEOUT_MS",
            args.header_read_timeout_ms,
            600_000,
        )?,
        max_connections: args.max_connections,
        shutdown_drain: millis("SHUTDOWN_DRAIN_MS", args.shutdown_drain_ms, 600_000)?,
    })
}

/// Bearer or console keys: comma separated, each at least 16 printable characters.
fn parse_keys(var: &'static str, raw: Option<&str>) -> Result<Vec<Redacted<String>>, ConfigError> {
    raw.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .enumerate()
        .map(|(i, k)| {
            if k.len() >= 16 && k.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(Redacted(k.to_owned()))
            } else {
                Err(invalid(
                    var,
                    format!("key #{} must be at least 16 printable characters", i + 1),
                ))
            }
        })
        .collect()
}

/// `whsec_…` secrets separated by spaces (several during rotation).
pub fn parse_secrets(raw: &str) -> Result<Vec<WebhookSecret>, ConfigError> {
    raw.split_whitespace()
        .enumerate()
        .map(|(i, s)| {
            WebhookSecret::parse(s).map_err(|e| {
                // `,` is not base64: the usual cause is a list written like the API keys'.
                let hint = if s.contains(',') {
                    "; several secrets are separated by spaces, not commas"
                } else {
                    ""
                };
                invalid(
                    "CLERK_WEBHOOK_SIGNING_SECRET",
                    format!("secret #{}: {e}{hint}", i + 1),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn serve(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["clerk-sync", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => Config::from_serve_args(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_postgres_on_this_machine_leaves_it_a_core() {
        let threads = |url: &str, cores| {
            default_worker_threads(Some(&DatabaseUrl::parse(url).unwrap()), cores)
        };
        for local in [
            "postgres://postgres@127.0.0.1:5432/db",
            "postgres://postgres@localhost/db",
            "postgresql://u:p@[::1]:5432/db",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
            "postgres://u@ignored/db?host=/var/run/postgresql",
        ] {
            assert_eq!(threads(local, 2), 1, "{local}");
            assert_eq!(threads(local, 8), 7, "{local}");
            assert_eq!(threads(local, 1), 1, "{local}");
        }
        for elsewhere in [
            "postgres://u:p@ep-cool-name-123.eu-central-1.aws.neon.tech/db?sslmode=require",
            "postgres://u@10.0.0.5/db",
            "postgres://u@db/db",
        ] {
            assert_eq!(threads(elsewhere, 2), 2, "{elsewhere}");
        }
        assert_eq!(threads("sqlite://data/clerk-sync.db", 2), 2);
        assert_eq!(default_worker_threads(None, 4), 4);
        assert_eq!(default_worker_threads(None, 0), 1);
    }

    #[test]
    fn defaults_are_sqlite_on_localhost() {
        let c = serve(&["--database-url", "sqlite://data/clerk-sync.db"]).unwrap();
        assert!(matches!(c.database.url, DatabaseUrl::Sqlite { .. }));
        assert_eq!(c.database.url.data_dir(), PathBuf::from("data"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(c.signup_credits, 20);
        assert_eq!(c.database.pool_max, 2, "one SQLite writer at a time");
        assert!(c.webhook_secrets.is_empty());
    }

    #[test]
    fn reconcile_interval_parses_units_and_needs_the_clerk_key() {
        let with = |interval: &str| {
            serve(&[
                "--database-url",
                "sqlite://data/x.db",
                "--clerk-secret-key",
                "sk_test_x",
                "--reconcile-interval",
                interval,
            ])
        };
        for (raw, secs) in [("30s", 30), ("15m", 900), ("6h", 21_600)] {
            let c = with(raw).unwrap();
            assert_eq!(c.clerk.reconcile_interval, Some(Duration::from_secs(secs)));
        }
        for bad in ["0s", "1d", "15", "m", "", "169h"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("RECONCILE_INTERVAL"), "{bad}: {e}");
        }
        let e = serve(&[
            "--database-url",
            "sqlite://data/x.db",
            "--reconcile-interval",
            "1h",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs CLERK_SECRET_KEY"), "{e}");
        let c = serve(&["--database-url", "sqlite://data/x.db"]).unwrap();
        assert_eq!(c.clerk.reconcile_interval, None);
    }

    #[test]
    fn unknown_scheme_is_refused_not_a_new_sqlite_file() {
        let e = serve(&["--database-url", "mysql://x/y"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("DATABASE_URL:"), "{e}");
        let e = serve(&["--database-url", "data/clerk-sync.db"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported scheme"), "{e}");
    }

    #[test]
    fn neon_url_with_prisma_params_parses_and_hides_the_password() {
        let c = serve(&[
            "--database-url",
            "postgresql://u:hunter2@ep-x-pooler.neon.tech/db?sslmode=require&channel_binding=require&pgbouncer=true&connection_limit=1",
        ])
        .unwrap();
        match &c.database.url {
            DatabaseUrl::Postgres {
                pgbouncer, options, ..
            } => {
                assert!(*pgbouncer);
                assert_eq!(options.get_host(), "ep-x-pooler.neon.tech");
            }
            _ => panic!("expected postgres"),
        }
        let shown = format!("{} {:?}", c.database.url, c.database.url);
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn rotation_secrets_and_bad_values_name_the_variable() {
        let c = serve(&[
            "--clerk-webhook-signing-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        ])
        .unwrap();
        assert_eq!(c.webhook_secrets.len(), 2);
        let e = serve(&["--clerk-webhook-signing-secret", "whsec_%%%"])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("CLERK_WEBHOOK_SIGNING_SECRET: secret #1"),
            "{e}"
        );
        let e = serve(&[
            "--clerk-webhook-signing-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.ends_with("separated by spaces, not commas"), "{e}");
        let e = serve(&["--clerk-webhook-signing-secret", "whsec_AA=="])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is 1 byte(s) long"), "{e}");
        let e = serve(&["--signup-credits=-1"]).unwrap_err().to_string();
        assert!(e.starts_with("SIGNUP_CREDITS"), "{e}");
        let e = serve(&["--host", "localhost"]).unwrap_err().to_string();
        assert!(e.starts_with("HOST"), "{e}");
    }

    #[test]
    fn secret_key_is_redacted_in_debug() {
        let c = serve(&["--clerk-secret-key", "sk_test_abcdef"]).unwrap();
        assert!(!format!("{c:?}").contains("sk_test_abcdef"));
    }
}
