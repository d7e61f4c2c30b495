//! `clerk-sync migrate`: apply the embedded migrations, list them (`--status`), or take
//! the database back to an earlier version (`--revert-to`).

use std::time::Duration;

use anyhow::Context;

use crate::cli::MigrateArgs;
use crate::config::{DatabaseSettings, DatabaseUrl};
use crate::store::{migrations, Store};

pub async fn run_command(args: MigrateArgs) -> anyhow::Result<()> {
    let settings = DatabaseSettings::from_args(&args.database, Duration::from_secs(30))?;
    let url = settings.migration_url();
    if args.status {
        return status(url).await;
    }
    // One direct connection first: a cause and its fix, at once, instead of a pool
    // timing out 30 s later.
    crate::store::connect::probe(url).await?;
    let store = Store::connect(url, 1, settings.transaction_timeout).await?;
    let result = async {
        if let Some(target) = args.revert_to {
            let plan = store
                .revert_to(target, args.yes)
                .await
                .context("reverting migrations")?;
            for (table, rows) in &plan.dropped_rows {
                println!("dropped \"{table}\" with {rows} row(s)");
            }
            println!(
                "{url}: reverted {} migration(s) {:?}; the database is at version {target}",
                plan.versions.len(),
                plan.versions
            );
            return Ok(());
        }
        let pending = store
            .pending_migrations()
            .await
            .context("reading applied migrations")?;
        store.migrate().await.context("applying migrations")?;
        println!(
            "{url}: applied {} migration(s) {pending:?}; schema is current",
            pending.len()
        );
        Ok(())
    }
    .await;
    store.close().await;
    result
}

/// `migrate --status`: every migration this binary ships, applied or pending, and those
/// a newer release applied. Creates nothing: a SQLite file that is not there has nothing
/// applied.
async fn status(url: &DatabaseUrl) -> anyhow::Result<()> {
    let migrator = match url {
        DatabaseUrl::Postgres { .. } => &*migrations::POSTGRES,
        DatabaseUrl::Sqlite { .. } => &*migrations::SQLITE,
    };
    let applied = match url {
        DatabaseUrl::Sqlite { path, .. } if !path.exists() => Vec::new(),
        _ => {
            crate::store::connect::probe(url).await?;
            let store = Store::connect(url, 1, Duration::from_secs(10)).await?;
            let applied = store.applied_migrations().await;
            store.close().await;
            applied.context("reading applied migrations")?
        }
    };
    let report = StatusReport::new(migrator, &applied);
    print!("{url}: {}", report.render());
    anyhow::ensure!(
        report.pending == 0,
        "{} migration(s) pending: run `clerk-sync migrate` (or `serve`, which applies them)",
        report.pending
    );
    Ok(())
}

struct StatusReport {
    /// (version, state, description), by version.
    rows: Vec<(i64, &'static str, String)>,
    pending: usize,
}

impl StatusReport {
    fn new(migrator: &sqlx::migrate::Migrator, applied: &[i64]) -> Self {
        let mut rows: Vec<(i64, &'static str, String)> = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| {
                let state = if applied.contains(&m.version) {
                    "applied"
                } else {
                    "pending"
                };
                (m.version, state, m.description.replace('_', " "))
            })
            .collect();
        for version in applied {
            if !rows.iter().any(|(v, ..)| v == version) {
                rows.push((
                    *version,
                    "applied",
                    "by a newer clerk-sync (this binary does not ship it)".to_owned(),
                ));
            }
        }
        rows.sort_by_key(|(v, ..)| *v);
        let pending = rows.iter().filter(|(_, s, _)| *s == "pending").count();
        Self { rows, pending }
    }

    fn render(&self) -> String {
        let applied = self.rows.len() - self.pending;
        let mut out = match self.pending {
            0 => format!("{applied} migration(s) applied; the schema is current\n"),
            n => format!("{applied} migration(s) applied, {n} pending\n"),
        };
        for (version, state, description) in &self.rows {
            out.push_str(&format!("  {version:>3}  {state:<7}  {description}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_applied_pending_and_newer_versions() {
        let migrator = &*migrations::SQLITE;
        let shipped: Vec<i64> = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| m.version)
            .collect();
        let latest = migrations::latest(migrator);
        let mut applied: Vec<i64> = shipped[..shipped.len() - 1].to_vec();
        applied.push(latest + 1);
        let report = StatusReport::new(migrator, &applied);
        assert_eq!(report.pending, 1);
        let text = report.render();
        assert!(
            text.starts_with(&format!(
                "{} migration(s) applied, 1 pending\n",
                shipped.len()
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("{latest:>3}  pending")),
            "the newest shipped one is pending: {text}"
        );
        assert!(text.contains("by a newer clerk-sync"), "{text}");
    }
}
