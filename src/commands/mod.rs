//! The commands around the service, each a tool for the people who run it: `diagnose`
//! (find the seed's failure class in a live database), `smoke`, `send` (a signed sample
//! webhook), `bench` (a load generator), `prisma-schema` and `replay` (apply again the
//! webhooks recorded `failed`). They use the service's layers
//! (storage, signup, webhooks); nothing in the service uses them.

pub mod bench;
pub mod dev;
pub mod diagnose;
pub mod migrate;
pub mod prisma_schema;
pub mod replay;
pub mod send;
pub mod smoke;

use std::time::Duration;

use crate::cli::DatabaseArgs;
use crate::config::{DatabaseSettings, DatabaseUrl};
use crate::store::Store;

pub mod reconcile;

/// A store on a database that must exist already (a SQLite file is not created).
pub async fn open_existing(args: &DatabaseArgs) -> anyhow::Result<Store> {
    let settings = DatabaseSettings::from_args(args, Duration::from_secs(30))?;
    let url = settings.migration_url();
    if let DatabaseUrl::Sqlite { path, .. } = url {
        anyhow::ensure!(
            path.exists(),
            "no SQLite database at {}: run `clerk-sync migrate` (or `serve`) to create it, or \
             set DATABASE_URL (a .env in this directory is read) to the database you meant",
            path.display()
        );
    }
    Ok(Store::connect(url, 2, Duration::from_secs(10)).await?)
}

/// `--since`: a date (`2026-11-30`, midnight UTC) or an RFC 3339 time.
pub fn parse_since(raw: Option<&str>) -> anyhow::Result<Option<chrono::NaiveDateTime>> {
    raw.map(|raw| {
        chrono::DateTime::parse_from_rfc3339(raw)
            .map(|t| t.naive_utc())
            .or_else(|_| {
                chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
                    .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists"))
            })
            .map_err(|_| {
                anyhow::anyhow!(
                    "--since {raw:?}: expected a date (2026-11-30) or an RFC 3339 time (2026-11-30T08:00:00Z)"
                )
            })
    })
    .transpose()
}
