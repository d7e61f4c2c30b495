//! `clerk-sync reconcile`: the command around `crate::reconcile` (the pass itself, which
//! `serve` also runs): arguments, progress on a terminal, the summary.

use std::time::Duration;

use super::{open_existing, parse_since};
use crate::cli::ReconcileArgs;
use crate::reconcile::{ReconcileOptions, Summary};

/// `clerk-sync reconcile`: one pass, its progress on a terminal, its summary.
pub async fn run_command(args: ReconcileArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let since = parse_since(args.since.as_deref())?;
    anyhow::ensure!(
        (0..=crate::domain::MAX_CREDITS).contains(&args.signup_credits),
        "SIGNUP_CREDITS must be between 0 and {}",
        crate::domain::MAX_CREDITS
    );
    anyhow::ensure!(
        (1..=100).contains(&args.rate),
        "--rate must be between 1 and 100"
    );
    let api_url: url::Url = args
        .clerk_api_url
        .parse()
        .map_err(|_| anyhow::anyhow!("CLERK_API_URL must be an http(s) URL"))?;
    let key = args.clerk_secret_key.trim();
    anyhow::ensure!(
        !key.is_empty(),
        "CLERK_SECRET_KEY is empty: reconcile reads Clerk's user list with it"
    );
    let clerk = crate::outbox::ClerkClient::new(api_url, crate::domain::Redacted(key.to_owned()))?;
    let store = open_existing(&args.database).await?;
    let settings = crate::signup::SignupSettings {
        signup_credits: args.signup_credits,
        transaction_timeout: Duration::from_secs(30),
    };
    let options = ReconcileOptions {
        dry_run: args.dry_run,
        since_ms: since.map(|t| t.and_utc().timestamp_millis()),
        rate_per_second: args.rate,
        delete: args.delete,
        allow_mass_delete: args.allow_mass_delete,
        ..ReconcileOptions::default()
    };
    let started = std::time::Instant::now();
    let tty = std::io::stderr().is_terminal() && !args.json;
    let mut progress = |s: &Summary| {
        if tty {
            let rate = s.scanned as f64 / started.elapsed().as_secs_f64().max(0.001);
            let eta = s
                .clerk_total
                .filter(|_| rate > 0.0)
                .map(|total| {
                    let left = total.saturating_sub(s.scanned as u64) as f64 / rate;
                    format!(", ETA {left:.0} s")
                })
                .unwrap_or_default();
            let of = s
                .clerk_total
                .map(|t| format!(" of {t}"))
                .unwrap_or_default();
            eprint!(
                "\rpage {}: scanned {}{of}, created {}, updated {}, {:.0} users/s{eta}   ",
                s.pages, s.scanned, s.created, s.updated, rate
            );
        }
    };
    let result = crate::reconcile::run(&store, &clerk, &settings, &options, &mut progress).await;
    if tty {
        eprintln!();
    }
    store.close().await;
    let summary = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", render(&summary, started.elapsed()));
    }
    if let Some(reason) = &summary.delete_refused {
        anyhow::bail!("{reason}");
    }
    Ok(())
}

fn render(s: &Summary, took: Duration) -> String {
    let mut out = String::new();
    let verb = if s.dry_run { "would be " } else { "" };
    if let Some(from) = s.resumed_from {
        out.push_str(&format!(
            "resumed an interrupted pass (users created after {from} ms)\n"
        ));
    }
    out.push_str(&format!(
        "scanned {} Clerk user(s) in {} page(s), {:.1} s\n  created: {}{}\n  updated: {}{}\n  unchanged: {}\n",
        s.scanned, s.pages, took.as_secs_f64(), verb, s.created, verb, s.updated, s.unchanged
    ));
    if !s.unprovisionable.is_empty() {
        out.push_str(&format!(
            "  cannot be provisioned: {}\n",
            s.unprovisionable.len()
        ));
        for p in &s.unprovisionable {
            out.push_str(&format!("    {p}\n"));
        }
    }
    if !s.deleted_in_clerk.is_empty() {
        out.push_str(&format!(
            "  deleted in Clerk but still here: {}{}\n",
            s.deleted_in_clerk.len(),
            if s.deleted > 0 {
                format!(" (deleted {})", s.deleted)
            } else if s.delete_refused.is_some() {
                " (--delete refused: see below)".to_owned()
            } else {
                " (run with --delete to delete them)".to_owned()
            }
        ));
        for id in &s.deleted_in_clerk {
            out.push_str(&format!("    {id}\n"));
        }
    }
    if s.metadata_requeued > 0 {
        out.push_str(&format!(
            "  Clerk metadata (public_metadata.userId) missing, update queued: {}{}\n",
            verb, s.metadata_requeued
        ));
    }
    if !s.metadata_conflicts.is_empty() {
        out.push_str(&format!(
            "  Clerk metadata names another user id (left alone): {}\n",
            s.metadata_conflicts.len()
        ));
        for c in &s.metadata_conflicts {
            out.push_str(&format!("    {c}\n"));
        }
    }
    if s.dry_run {
        out.push_str("dry run: nothing changed\n");
    } else if !s.changed_anything() && s.deleted_in_clerk.is_empty() {
        out.push_str("nothing to change: the database matches Clerk\n");
    } else if !s.changed_anything() {
        out.push_str(
            "nothing to change: every Clerk user is here and current (the users above are only reported)\n",
        );
    }
    out
}
