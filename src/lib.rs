//! clerk-sync: the service that owns a Next.js + Clerk + Prisma product's signup write
//! path, and the commands around it.
//!
//! The service, top to bottom (a module uses those below it, never those above):
//!
//! ```text
//! startup            one process: the HTTP server and the outbox worker, supervised
//! http/              thin handlers, router + OpenAPI, one ApiError, one ErrorBody
//! signup/ credits/   the use cases, each transaction in one place (and reconcile, which
//!                    applies Clerk's user list through signup's transaction, and replay,
//!                    which applies a failed event's stored payload through it):
//!   outbox/            mod.rs decides; postgres.rs is the ONE statement; stepwise.rs the
//!                      same steps one at a time (SQLite); statements.rs the shared SQL
//! webhooks/ domain/  Svix verification, Clerk payloads, types that parse (ledger enums)
//! schema_watch       the live schema checked against what the service needs (readiness)
//! store/             the pools, StoreTx, error classification, migrations, and
//!                    tables.rs (each written table's column list, once), TextEnum
//! ```
//!
//! Beside every layer: `metrics` (counted into from anywhere), `telemetry`, `config` and
//! `cli` (settings parsed once, after `env_file` read `.env`), `dev_secret`.
//!
//! `commands/` holds the tools for the people who run the service (`diagnose`, `smoke`,
//! `send`, `bench`, `prisma-schema`). They use the service's layers; the service never
//! uses them. A tool that needs a transaction the service would commit opens it itself
//! (`Store::begin`) and rolls it back: `diagnose` rehearses the signup that way.
//!
//! Where a decision is taken twice (PostgreSQL in SQL, SQLite in Rust),
//! `tests/api/backends_agree` runs one sequence through both and compares every row.

pub mod admin;
pub mod cli;
pub mod commands;
pub mod config;
pub mod credits;
pub mod dev_secret;
pub mod domain;
pub mod env_file;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod reconcile;
pub mod replay;
pub mod schema_watch;
pub mod signup;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod webhooks;
