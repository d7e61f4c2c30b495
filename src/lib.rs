//! clerk-sync: the service that owns a Next.js + Clerk + Prisma product's signup write
//! path, and the commands around it.
//!
//! The service, top to bottom (a module uses those below it):
//!
//! - `startup`: one process, the HTTP server and the outbox worker, supervised.
//! - `http/`: thin handlers, the router and its OpenAPI document, one `ApiError`.
//! - `signup`, `credits`, `outbox/`: the use cases: the signup transaction, credit
//!   movements, delivering the Clerk metadata update after commit.
//! - `webhooks/`, `domain/`: Svix verification, Clerk payloads, types that parse.
//! - `store/`: the two pools, error classification, migrations.
//!
//! Beside every layer: `metrics` (counted into from anywhere), `telemetry`, `config` and
//! `cli` (settings parsed once), `dev_secret`.
//!
//! `commands/` holds the tools for the people who run the service (`diagnose`, `smoke`,
//! `send`, `bench`, `prisma-schema`). They use the service's layers; the service never
//! uses them.

pub mod cli;
pub mod commands;
pub mod config;
pub mod credits;
pub mod dev_secret;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod signup;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod webhooks;
