//! `clerk-sync replay`: select failed events, replay them (or list them) through
//! `crate::replay`, print the report.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cli::ReplayArgs;
use crate::replay::{run, Report, Selection};

/// The report as lines for a terminal.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for e in &report.events {
        let was = e.was.as_deref().unwrap_or("");
        if report.dry_run {
            let _ = writeln!(
                out,
                "would replay {} ({}): failed: {was}",
                e.svix_id, e.event_type
            );
        } else {
            let detail = e
                .detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{} ({}): failed → {}{detail}   was: {was}",
                e.svix_id, e.event_type, e.status
            );
        }
    }
    if report.without_payload > 0 {
        let _ = writeln!(
            out,
            "{} failed event(s) have no stored payload (not JSON, or the user was deleted) and cannot be replayed",
            report.without_payload
        );
    }
    let _ = writeln!(
        out,
        "{}{}",
        if report.dry_run {
            "dry run, nothing changed: "
        } else {
            "replayed: "
        },
        if report.dry_run {
            format!("{} event(s) would be replayed", report.events.len())
        } else {
            report.summary()
        }
    );
    out
}

/// `clerk-sync replay`: select, replay (or list), print.
pub async fn run_command(args: ReplayArgs) -> anyhow::Result<()> {
    let since = super::parse_since(args.since.as_deref())?;
    anyhow::ensure!(
        (0..=crate::domain::MAX_CREDITS).contains(&args.signup_credits),
        "SIGNUP_CREDITS must be between 0 and {}",
        crate::domain::MAX_CREDITS
    );
    let store = super::open_existing(&args.database).await?;
    let settings = crate::signup::SignupSettings {
        signup_credits: args.signup_credits,
        transaction_timeout: Duration::from_secs(30),
    };
    let selection = Selection {
        since,
        svix_ids: args.svix_ids,
    };
    let report = run(&store, &settings, &selection, args.dry_run).await;
    store.close().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}
