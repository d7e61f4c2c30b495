//! One integration-test binary: every test runs the real service over loopback HTTP,
//! once on PostgreSQL and once on SQLite.

mod helpers;

mod adoption;
mod backends_agree;
mod bench;
mod connections;
mod console;
mod console_browser;
mod container;
mod contract;
mod contract_tools;
mod credits;
mod credits_concurrency;
mod deploy;
mod diagnose;
mod diagnose_ledger;
mod env_file;
mod first_hour;
mod health;
mod hostile;
mod metrics;
mod outbox;
mod outbox_delivery;
mod pgbouncer;
mod plans;
mod prisma;
mod reconcile;
mod replay;
mod revert;
mod schema_drift;
mod signature;
mod signup;
mod signup_concurrency;
mod startup;
mod tools;
mod typescript_client;
mod upgrade;
