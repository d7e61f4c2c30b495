//! The command line: every setting is a flag and an environment variable (the contract's
//! names). Parsing into typed configuration happens in `config.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use serde::Serialize;

pub use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "clerk-sync",
    version,
    about = "Owns the signup write path: Clerk webhooks, verified and provisioned exactly once.",
    long_about = "clerk-sync receives Clerk's Svix-signed user webhooks, records each event once, \
creates the user with their signup credits, writes the credit ledger and queues the Clerk \
metadata update, all in one database transaction. PostgreSQL in production, SQLite by default.\n\n\
Start with `clerk-sync serve`, then `clerk-sync send` in another terminal."
)]
pub struct Cli {
    /// Log format: `pretty` on a terminal, `json` otherwise. Filter with RUST_LOG.
    #[arg(long, env = "LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Threads that run requests and database work. Default: one per core, one fewer when
    /// DATABASE_URL is a PostgreSQL on this machine (bench/README.md).
    #[arg(
        long,
        env = "TOKIO_WORKER_THREADS",
        global = true,
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub worker_threads: Option<u16>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parse the command line; a bad value read from an environment variable (or `.env`)
    /// is named by that variable, which is where the user has to fix it.
    pub fn parse_or_exit() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let mut command = Self::command();
        let error = match command.try_get_matches_from_mut(std::env::args_os()) {
            Ok(matches) => match Self::from_arg_matches(&matches) {
                Ok(cli) => return cli,
                Err(e) => e,
            },
            Err(e) => e,
        };
        let note = env_source(&command, &error);
        let error = error.format(&mut command);
        let _ = error.print();
        if let Some(variable) = note {
            eprintln!(
                "\nThat value comes from the environment variable {variable} (or a .env file): \
                 fix it there, or unset it to use the default."
            );
        }
        std::process::exit(error.exit_code());
    }
}

/// The environment variable a rejected value came from, if it came from one.
fn env_source(command: &clap::Command, error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let text = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let (arg, value) = (
        text(ContextKind::InvalidArg)?,
        text(ContextKind::InvalidValue)?,
    );
    std::iter::once(command)
        .chain(command.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .filter(|a| {
            a.get_long().is_some_and(|long| {
                arg.starts_with(&format!("--{long} ")) || arg == format!("--{long}")
            })
        })
        .filter_map(|a| a.get_env()?.to_str().map(str::to_owned))
        .find(|env| std::env::var(env).is_ok_and(|v| v == value))
}

/// What `clerk-sync bench` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Signed `user.created` webhooks.
    Signup,
    /// `POST /v1/users/{id}/credits/consume` of 1 generation.
    Consume,
}

/// Which pgbench peer `clerk-sync bench --print-pgbench-script` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// The service's own statements for the scenario.
    Service,
    /// The signup as a typical implementation sends it: five statements, one at a time,
    /// in one transaction (signup scenario only).
    Plain,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service and the outbox worker (applies pending migrations first).
    Serve(ServeArgs),
    /// `serve` for development: instead of log lines, one line per webhook (type, Clerk
    /// id, outcome, milliseconds), coloured on a terminal.
    Dev(ServeArgs),
    /// Apply the embedded migrations (adopts a database the Prisma app already uses), or
    /// take the database back to an earlier version with --revert-to.
    Migrate(MigrateArgs),
    /// Check a live database end to end, without leaving a trace; print the SQL that fixes each problem.
    Diagnose(DiagnoseArgs),
    /// Insert a test user, read it back, update it, delete it, each step printed.
    Smoke(DatabaseArgs),
    /// Send a correctly signed sample `user.created` (or a payload file) to a running server.
    Send(SendArgs),
    /// Load-test a deployment: signed `user.created` events, or credits consumes.
    Bench(BenchArgs),
    /// Print what clerk-sync adds to the app's User, WebhookEvent and Transaction tables,
    /// for the app's schema.prisma (or, with --migration, as an idempotent SQL migration).
    PrismaSchema(PrismaSchemaArgs),
    /// Apply again the webhooks recorded `failed`, from their stored payloads, once the
    /// cause is fixed: the same path and idempotency as a delivery.
    Replay(ReplayArgs),
    /// Compare Clerk's user list with the database and provision or update what webhooks
    /// missed; report users that Clerk no longer has. Resumes an interrupted pass.
    Reconcile(ReconcileArgs),
    /// Exit 0 when the server on HOST:PORT answers `/healthz` (or `/readyz` with
    /// --ready) within 3 s, 1 otherwise: a container's HEALTHCHECK, with no curl needed.
    Healthcheck(HealthcheckArgs),
    /// A TCP proxy delaying each direction by --delay-ms: a network between the service
    /// and its database, for bench/compare.
    #[command(hide = true)]
    DelayProxy(DelayProxyArgs),
    /// Print a shell completion script: `clerk-sync completions bash > \
    /// ~/.local/share/bash-completion/completions/clerk-sync` (zsh: a file `_clerk-sync` in
    /// a directory of $fpath; fish: ~/.config/fish/completions/clerk-sync.fish).
    Completions(CompletionsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DelayProxyArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Address every connection is forwarded to.
    #[arg(long)]
    pub upstream: std::net::SocketAddr,
    /// Delay added to each direction, in milliseconds (a round trip gains twice this).
    #[arg(long)]
    pub delay_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The server's address, as `serve` reads it (0.0.0.0 is checked on 127.0.0.1).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// The server's port, as `serve` reads it.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Check `/readyz` (database reachable, migrations current) instead of `/healthz`.
    #[arg(long)]
    pub ready: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Clerk Backend API key `sk_…`.
    #[arg(long, env = "CLERK_SECRET_KEY", hide_env_values = true)]
    pub clerk_secret_key: String,

    /// Clerk Backend API base URL.
    #[arg(long, env = "CLERK_API_URL", default_value = "https://api.clerk.com")]
    pub clerk_api_url: String,

    /// Change nothing; print what would change.
    #[arg(long)]
    pub dry_run: bool,

    /// Only users created at or after this time: `2026-11-30`, or RFC 3339.
    #[arg(long)]
    pub since: Option<String>,

    /// Delete the users that Clerk no longer has (otherwise they are only reported).
    #[arg(long)]
    pub delete: bool,

    /// With --delete: delete even when Clerk lacks more than 10% of the local users (and
    /// more than one). Without it such a pass deletes nothing: a key of another Clerk
    /// instance, or a wrong CLERK_API_URL, makes every user look deleted.
    #[arg(long, requires = "delete")]
    pub allow_mass_delete: bool,

    /// Clerk API requests per second.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,

    /// Print the summary as one JSON document.
    #[arg(long)]
    pub json: bool,

    /// Generations granted to a user the pass creates.
    #[arg(long, env = "SIGNUP_CREDITS", default_value_t = 20)]
    pub signup_credits: i32,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Only events first received at or after this time: `2026-11-30`, or RFC 3339
    /// (`2026-11-30T08:00:00Z`).
    #[arg(long)]
    pub since: Option<String>,

    /// Only the event with this `svix-id` (repeat for several).
    #[arg(long = "svix-id", value_name = "SVIX_ID")]
    pub svix_ids: Vec<String>,

    /// List what would be replayed; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,

    /// Generations granted to a user the replay creates.
    #[arg(long, env = "SIGNUP_CREDITS", default_value_t = 20)]
    pub signup_credits: i32,
}

#[derive(Debug, Clone, Args)]
pub struct PrismaSchemaArgs {
    /// The app's schema.prisma: print only what its models lack.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,

    /// With --schema: add the missing fields and attributes to the file itself.
    #[arg(long, requires = "schema", conflicts_with = "migration")]
    pub write: bool,

    /// With --schema: exit 1 and list what the models lack when `prisma migrate dev` from
    /// that file would drop a column, index or default clerk-sync needs; exit 0 when
    /// complete. For the app's CI, before a migration is generated or deployed.
    #[arg(long, requires = "schema", conflicts_with_all = ["migration", "write"])]
    pub check: bool,

    /// Print the SQL migration for prisma/migrations/<timestamp>_clerk_sync/migration.sql
    /// instead: every statement idempotent, so either order of `prisma migrate deploy` and
    /// `clerk-sync migrate` works.
    #[arg(long)]
    pub migration: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to send: `signup` (distinct signed `user.created` events) or `consume` (sign
    /// up ⌈N/10⌉ users untimed, then N consumes of 1 through the credits API).
    #[arg(long, value_enum, default_value_t = Scenario::Signup)]
    pub scenario: Scenario,

    /// Webhook endpoint of the deployment under test (the credits API is on its origin).
    #[arg(long, default_value = "http://127.0.0.1:3000/api/webhooks/clerk")]
    pub url: String,

    /// Signing secret; unset: the development secret `serve` keeps in the data directory.
    #[arg(long, env = "CLERK_WEBHOOK_SIGNING_SECRET", hide_env_values = true)]
    pub clerk_webhook_signing_secret: Option<String>,

    /// Bearer key for the credits API (`consume`): one of the service's CLERK_SYNC_API_KEYS.
    /// [env: CLERK_SYNC_API_KEYS, the server's: its first key]
    #[arg(long, env = "CLERK_SYNC_API_KEYS", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Requests to time: distinct events (signup) or consumes (consume).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub events: usize,

    /// Events in flight at once (closed loop).
    #[arg(short = 'c', long, default_value_t = 16)]
    pub concurrency: usize,

    /// Open loop instead: start this many events per second, whatever the answers.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Deliver each event this many times at once (duplicate deliveries).
    #[arg(short = 'k', long, default_value_t = 1)]
    pub duplicates: usize,

    /// The deployment's database: afterwards, check one user, one signup ledger row and
    /// one processed event per Clerk user.
    #[arg(long)]
    pub verify_database_url: Option<String>,

    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Print the pgbench script that runs the service's statements for the scenario,
    /// then exit.
    #[arg(long)]
    pub print_pgbench_script: bool,

    /// With --print-pgbench-script: the service's statements, or the plain signup.
    #[arg(long, value_enum, default_value_t = Peer::Service, requires = "print_pgbench_script")]
    pub peer: Peer,

    /// With --print-pgbench-script, the service's signup statement: this many new users
    /// per statement (1 to 64), as the service sends webhooks that waited together.
    #[arg(long, default_value_t = 1, requires = "print_pgbench_script")]
    pub batch: u32,

    /// Print the SQL that creates the users the consume pgbench script spends from, then
    /// exit.
    #[arg(long)]
    pub print_pgbench_setup: bool,

    /// Used only to find the data directory holding the development secret.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/clerk-sync.db"
    )]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Revert every migration above this version, newest first, each in its own
    /// transaction, so that the release that shipped it runs again. Rows are kept; only
    /// going below 2 drops clerk-sync's own tables, and that needs --yes.
    #[arg(long, value_name = "VERSION")]
    pub revert_to: Option<i64>,

    /// With --revert-to: drop clerk-sync's own tables even when they hold rows.
    #[arg(long, requires = "revert_to")]
    pub yes: bool,

    /// List the applied and the pending migrations and change nothing; exit 1 when some
    /// are pending (a check before a deploy).
    #[arg(long, conflicts_with = "revert_to")]
    pub status: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,

    /// Apply the safe fixes (missing defaults, indexes, tables, columns, migrations, the
    /// ledger trigger) in one transaction; never drops or rewrites anything, and never
    /// appends ledger rows. Asks first unless --yes.
    #[arg(long)]
    pub fix: bool,

    /// With --fix: do not ask.
    #[arg(long, requires = "fix")]
    pub yes: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `postgres://user:pass@host/db?sslmode=require[&pgbouncer=true]` or `sqlite://path/to/file.db`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/clerk-sync.db"
    )]
    pub database_url: String,

    /// Direct (unpooled) PostgreSQL URL, Prisma's name: used for migrations when set.
    #[arg(long, env = "DIRECT_URL")]
    pub direct_url: Option<String>,

    /// Connection pool size [default: cores × 2 + 1 for PostgreSQL, 2 for SQLite].
    #[arg(long, env = "DATABASE_POOL_MAX")]
    pub database_pool_max: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Listen address.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Listen port.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Svix signing secret(s) `whsec_…`, separated by spaces during rotation.
    /// Unset: a development secret is generated once into the data directory and printed.
    #[arg(long, env = "CLERK_WEBHOOK_SIGNING_SECRET", hide_env_values = true)]
    pub clerk_webhook_signing_secret: Option<String>,

    /// Clerk Backend API key `sk_…`. Unset: metadata updates stay queued (one warning at start).
    #[arg(long, env = "CLERK_SECRET_KEY", hide_env_values = true)]
    pub clerk_secret_key: Option<String>,

    /// Bearer keys for the `/v1` credits API, comma separated (several during rotation;
    /// at least 16 characters each). Unset: every `/v1` call is refused.
    #[arg(long, env = "CLERK_SYNC_API_KEYS", hide_env_values = true)]
    pub clerk_sync_api_keys: Option<String>,

    /// Keys that open the console at /admin, comma separated (several during rotation; at
    /// least 16 characters each). Unset: the console is off (/admin answers 404).
    #[arg(long, env = "CLERK_SYNC_ADMIN_KEYS", hide_env_values = true)]
    pub clerk_sync_admin_keys: Option<String>,

    /// Clerk Backend API base URL.
    #[arg(long, env = "CLERK_API_URL", default_value = "https://api.clerk.com")]
    pub clerk_api_url: String,

    /// Generations granted on signup.
    #[arg(long, env = "SIGNUP_CREDITS", default_value_t = 20)]
    pub signup_credits: i32,

    /// Limit for one database transaction, in milliseconds.
    #[arg(long, env = "TRANSACTION_TIMEOUT_MS", default_value_t = 5000)]
    pub transaction_timeout_ms: u64,

    /// Time a client has to send a request's headers, in milliseconds, counted from when
    /// the connection is ready for the next request (so it also closes idle keep-alive
    /// connections).
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// HTTP connections open at once; more wait until one closes (a warning is logged).
    /// Keep it below the process's open-file limit (`ulimit -n`).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// On SIGTERM / Ctrl-C: how long requests in flight may finish, in milliseconds,
    /// before the connections still open are closed.
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value_t = 10_000)]
    pub shutdown_drain_ms: u64,
    /// How often the live schema is checked against what the service needs, in
    /// milliseconds (also at once when a statement finds a piece missing); while it
    /// lacks one, /readyz and writes answer 503.
    #[arg(long, env = "SCHEMA_CHECK_INTERVAL_MS", default_value_t = 15_000)]
    pub schema_check_interval_ms: u64,

    /// Clerk metadata updates delivered at once by the outbox.
    #[arg(long, env = "OUTBOX_CONCURRENCY", default_value_t = 8)]
    pub outbox_concurrency: usize,

    /// Clerk calls per second from the outbox, all deliveries together (Clerk's Backend
    /// API answers 429 beyond its rate limit; a 429's Retry-After pauses every delivery).
    #[arg(long, env = "OUTBOX_RATE_PER_SECOND", default_value_t = 50)]
    pub outbox_rate_per_second: u32,

    /// Reconcile with Clerk's user list this often inside serve (`30s`, `15m`, `6h`; one
    /// replica at a time). Unset: never (run `clerk-sync reconcile` instead).
    #[arg(long, env = "RECONCILE_INTERVAL")]
    pub reconcile_interval: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Webhook endpoint of a running clerk-sync [default: http://HOST:PORT/api/webhooks/clerk].
    #[arg(long)]
    pub url: Option<String>,

    /// The running server's address, as `serve` reads it (0.0.0.0 is sent to 127.0.0.1).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// The running server's port, as `serve` reads it.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Signing secret; unset: the development secret `serve` keeps in the data directory.
    #[arg(long, env = "CLERK_WEBHOOK_SIGNING_SECRET", hide_env_values = true)]
    pub clerk_webhook_signing_secret: Option<String>,

    /// Used only to find the data directory holding the development secret.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/clerk-sync.db"
    )]
    pub database_url: String,

    /// A JSON event to send instead of the generated sample `user.created`.
    #[arg(long)]
    pub payload: Option<PathBuf>,
}
