//! Reconcile with Clerk: webhooks are the fast path, Clerk's user list is the truth.
//!
//! One pass pages through Clerk's users oldest first (Clerk's `starting_after` cursor,
//! which orders users of one creation millisecond too; never `offset`, which skips users
//! when others are deleted mid-scan) and applies each
//! one through the signup transaction of lazy provisioning: a user missing here is
//! created with the same signup-bonus key as `user.created` (never a second bonus), one
//! whose Clerk `updated_at` is newer than what was applied is updated, the rest are left
//! alone. The creation time reached is stored after every page in `"ReconcileState"`,
//! so an interrupted pass resumes from there (`created_at_after`, the users of that
//! millisecond listed again and found unchanged). Only a scan that reached Clerk's last
//! page is complete: only then are the users Clerk no longer has looked for. Users here that Clerk no longer has are reported, and
//! deleted only when asked. Clerk's rate limit is kept: requests are paced, and a 429's
//! `Retry-After` is waited out.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use crate::domain::ClerkUserId;
use crate::outbox::{ClerkClient, DeliveryError};
use crate::signup::{self, Outcome, SignupSettings};
use crate::store::{self, OwnTablesSql, Store, StoreError};
use crate::webhooks::clerk_event::profile_from_user;
use crate::with_pool;

/// Clerk's largest page.
pub const PAGE_SIZE: u32 = 500;

#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// Change nothing: apply each user in a transaction that is rolled back.
    pub dry_run: bool,
    /// Only users created at or after this time (ms); a fresh pass, not resumed.
    pub since_ms: Option<i64>,
    /// Clerk requests per second.
    pub rate_per_second: u32,
    /// Delete the users Clerk no longer has (otherwise they are only reported).
    pub delete: bool,
    /// Delete even more than [`MASS_DELETE_SHARE`] of the local users in one pass.
    pub allow_mass_delete: bool,
    pub page_size: u32,
}

/// A pass with `delete` deletes nothing when Clerk lacks more than this share of the
/// local users (and more than one) unless `allow_mass_delete`: a key of another Clerk
/// instance makes every user look deleted.
pub const MASS_DELETE_SHARE: f64 = 0.10;

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            since_ms: None,
            rate_per_second: 10,
            delete: false,
            allow_mass_delete: false,
            page_size: PAGE_SIZE,
        }
    }
}

/// What a pass did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub dry_run: bool,
    /// How many users Clerk has, when it said (for progress and an ETA).
    pub clerk_total: Option<u64>,
    /// The pass resumed an interrupted one from this cursor (ms).
    pub resumed_from: Option<i64>,
    pub pages: usize,
    pub scanned: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Clerk users that cannot be provisioned (no email address, …), with why.
    pub unprovisionable: Vec<String>,
    /// Users here that Clerk no longer has.
    pub deleted_in_clerk: Vec<String>,
    /// Of those, deleted here (`--delete`).
    pub deleted: usize,
    /// Users whose Clerk `public_metadata.userId` was missing: their metadata update
    /// queued again (a dead job revived), or, dry, would be.
    pub metadata_requeued: usize,
    /// Users whose Clerk `public_metadata.userId` names another id than theirs here:
    /// reported, never overwritten.
    pub metadata_conflicts: Vec<String>,
    /// `--delete` deleted nothing: Clerk lacked more than [`MASS_DELETE_SHARE`] of the
    /// local users; the reason, for the operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_refused: Option<String>,
}

impl Summary {
    pub fn changed_anything(&self) -> bool {
        self.created + self.updated + self.deleted + self.metadata_requeued > 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the Clerk API: {0}")]
    Clerk(DeliveryError),
    /// Clerk's list did not move past the last user of the previous page: the scan stops
    /// unfinished (and does not look for deleted users); the next pass resumes.
    #[error("the Clerk user list did not advance past {0}; the scan is incomplete")]
    Stalled(String),
    /// The secret key belongs to another Clerk instance than the webhooks applied here.
    #[error("CLERK_SECRET_KEY belongs to Clerk instance {key}, but the webhooks applied here came from {webhooks}: refusing to reconcile this database with another instance's users (use that instance's key)")]
    OtherInstance { key: String, webhooks: String },
}

const STATE_NAME: &str = "users";

static LOAD_CURSOR: OwnTablesSql =
    OwnTablesSql::new(r#"SELECT "createdAtAfter" FROM {own}"ReconcileState" WHERE "name" = $1"#);

static SAVE_CURSOR: OwnTablesSql = OwnTablesSql::new(
    r#"
INSERT INTO {own}"ReconcileState" ("name", "createdAtAfter", "startedAt", "finishedAt", "updatedAt")
VALUES ($1, $2, $3, NULL, $3)
ON CONFLICT ("name") DO UPDATE SET "createdAtAfter" = excluded."createdAtAfter",
    "finishedAt" = NULL, "updatedAt" = excluded."updatedAt""#,
);

static FINISH: OwnTablesSql = OwnTablesSql::new(
    r#"
UPDATE {own}"ReconcileState" SET "createdAtAfter" = NULL, "finishedAt" = $2, "updatedAt" = $2
WHERE "name" = $1"#,
);

const LOCAL_USERS: &str = r#"SELECT "clerkId" FROM "User""#;

/// The Clerk instance of the newest applied webhook that still has its payload.
const WEBHOOK_INSTANCE: &str = r#"
SELECT "payload" ->> 'instance_id' FROM "WebhookEvent"
WHERE "payload" IS NOT NULL AND "payload" ->> 'instance_id' IS NOT NULL
ORDER BY "createdAt" DESC LIMIT 1"#;

/// Refuse to reconcile with a key of another instance than the webhooks' (`GET
/// /v1/instance` against the stored events' `instance_id`): its user list would make
/// every local user look deleted. Either side unknown (no webhook yet, an API without
/// the endpoint) passes.
async fn check_instance(
    store: &Store,
    clerk: &ClerkClient,
    interval: Duration,
) -> Result<(), ReconcileError> {
    let key = call_clerk(interval, || clerk.instance_id()).await?;
    let webhooks: Option<String> = with_pool!(store, |pool, p| {
        sqlx::query_scalar(WEBHOOK_INSTANCE)
            .persistent(p)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)?
    });
    match (key, webhooks) {
        (Some(key), Some(webhooks)) if key != webhooks => {
            Err(ReconcileError::OtherInstance { key, webhooks })
        }
        _ => Ok(()),
    }
}

static TAKE_LEASE: OwnTablesSql = OwnTablesSql::new(
    r#"
INSERT INTO {own}"ReconcileState" ("name", "leaseHolder", "leaseUntil", "updatedAt")
VALUES ($1, $2, $3, $4)
ON CONFLICT ("name") DO UPDATE SET "leaseHolder" = excluded."leaseHolder",
    "leaseUntil" = excluded."leaseUntil", "updatedAt" = excluded."updatedAt"
WHERE "ReconcileState"."leaseUntil" IS NULL OR "ReconcileState"."leaseUntil" < $4
   OR "ReconcileState"."leaseHolder" = $2
RETURNING "name""#,
);

static RELEASE_LEASE: OwnTablesSql = OwnTablesSql::new(
    r#"
UPDATE {own}"ReconcileState" SET "leaseHolder" = NULL, "leaseUntil" = NULL
WHERE "name" = $1 AND "leaseHolder" = $2"#,
);

/// Take the lease that lets one replica at a time run a pass inside `serve`, for `hold`;
/// false while another replica holds it. A crashed holder's lease runs out.
pub async fn take_lease(store: &Store, holder: &str, hold: Duration) -> Result<bool, StoreError> {
    let now = store::now();
    let until = now + chrono::Duration::from_std(hold).unwrap_or(chrono::Duration::hours(1));
    let taken: Option<String> = with_pool!(store, |pool, p| {
        sqlx::query_scalar(TAKE_LEASE.for_store(store))
            .bind(STATE_NAME)
            .bind(holder)
            .bind(until)
            .bind(now)
            .persistent(p)
            .fetch_optional(pool)
            .await?
    });
    Ok(taken.is_some())
}

pub async fn release_lease(store: &Store, holder: &str) -> Result<(), StoreError> {
    with_pool!(store, |pool, p| {
        sqlx::query(RELEASE_LEASE.for_store(store))
            .bind(STATE_NAME)
            .bind(holder)
            .persistent(p)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Passes inside `serve`, every `interval`, by whichever replica holds the lease, until
/// shutdown. Each pass resumes an interrupted one (its own or another replica's).
pub async fn run_periodically(
    store: Store,
    clerk: ClerkClient,
    settings: SignupSettings,
    interval: Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let holder = store::new_id();
    // A pass holds the lease for at least ten minutes, renewed by the next pass.
    let hold = interval.max(Duration::from_secs(600));
    info!(
        interval_s = interval.as_secs(),
        "reconcile inside serve started"
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        match take_lease(&store, &holder, hold).await {
            Ok(false) => {
                crate::metrics::Metrics::count(&metrics.reconcile_passes, "skipped");
                continue;
            }
            Err(e) => {
                warn!(error.message = %e, "reconcile could not take its lease");
                crate::metrics::Metrics::count(&metrics.reconcile_passes, "failed");
                continue;
            }
            Ok(true) => {}
        }
        let options = ReconcileOptions::default();
        let mut quiet = |_: &Summary| {};
        let pass = tokio::select! {
            _ = shutdown.cancelled() => None,
            pass = run(&store, &clerk, &settings, &options, &mut quiet) => Some(pass),
        };
        match pass {
            Some(Ok(summary)) => {
                for (outcome, n) in [
                    ("created", summary.created),
                    ("updated", summary.updated),
                    ("unchanged", summary.unchanged),
                    ("unprovisionable", summary.unprovisionable.len()),
                ] {
                    metrics
                        .reconciled_users
                        .get_or_create(&crate::metrics::OutcomeLabel { outcome })
                        .inc_by(n as u64);
                }
                metrics
                    .reconcile_last_success
                    .set(chrono::Utc::now().timestamp());
                crate::metrics::Metrics::count(&metrics.reconcile_passes, "done");
            }
            Some(Err(e)) => {
                warn!(error.message = %e, "reconcile pass failed; the next one resumes it");
                crate::metrics::Metrics::count(&metrics.reconcile_passes, "failed");
            }
            None => {}
        }
        if let Err(e) = release_lease(&store, &holder).await {
            warn!(error.message = %e, "reconcile could not release its lease; it runs out");
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    info!("reconcile inside serve stopped");
}

async fn local_users(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(with_pool!(store, |pool, p| {
        sqlx::query_scalar(LOCAL_USERS)
            .persistent(p)
            .fetch_all(pool)
            .await?
    }))
}

async fn load_cursor(store: &Store) -> Result<Option<i64>, StoreError> {
    let cursor: Option<Option<i64>> = with_pool!(store, |pool, p| {
        sqlx::query_scalar(LOAD_CURSOR.for_store(store))
            .bind(STATE_NAME)
            .persistent(p)
            .fetch_optional(pool)
            .await?
    });
    Ok(cursor.flatten())
}

async fn save_cursor(store: &Store, cursor: i64) -> Result<(), StoreError> {
    with_pool!(store, |pool, p| {
        sqlx::query(SAVE_CURSOR.for_store(store))
            .bind(STATE_NAME)
            .bind(cursor)
            .bind(store::now())
            .persistent(p)
            .execute(pool)
            .await?;
    });
    Ok(())
}

async fn finish(store: &Store) -> Result<(), StoreError> {
    with_pool!(store, |pool, p| {
        sqlx::query(FINISH.for_store(store))
            .bind(STATE_NAME)
            .bind(store::now())
            .persistent(p)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// A Clerk call, paced, and tried again on 429 (after its `Retry-After`) and on other
/// retryable failures (1 s, 2 s, 4 s, … up to six tries).
async fn call_clerk<T, F, Fut>(interval: Duration, mut call: F) -> Result<T, ReconcileError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DeliveryError>>,
{
    let mut backoff = Duration::from_secs(1);
    for attempt in 1.. {
        tokio::time::sleep(interval).await;
        match call().await {
            Ok(value) => return Ok(value),
            Err(DeliveryError::Retryable {
                reason,
                retry_after,
            }) if attempt < 6 => {
                let wait = retry_after.unwrap_or(backoff);
                warn!(reason = %reason, wait_ms = wait.as_millis() as u64, "Clerk API refused; waiting");
                tokio::time::sleep(wait).await;
                backoff *= 2;
            }
            Err(e) => return Err(ReconcileError::Clerk(e)),
        }
    }
    unreachable!("the loop returns")
}

/// One pass. `progress` is called after every page.
pub async fn run(
    store: &Store,
    clerk: &ClerkClient,
    settings: &SignupSettings,
    options: &ReconcileOptions,
    progress: &mut (dyn FnMut(&Summary) + Send),
) -> Result<Summary, ReconcileError> {
    let interval = Duration::from_secs(1) / options.rate_per_second.max(1);
    let mut summary = Summary {
        dry_run: options.dry_run,
        ..Summary::default()
    };
    let cursor = match options.since_ms {
        Some(since) => Some(since - 1),
        None => {
            let stored = load_cursor(store).await?;
            summary.resumed_from = stored;
            stored
        }
    };
    let complete_scan = options.since_ms.is_none() && summary.resumed_from.is_none();
    check_instance(store, clerk, interval).await?;
    // Only for progress: a pass goes on without it.
    summary.clerk_total = call_clerk(interval, || clerk.count_users()).await.ok();
    let mut seen: HashSet<String> = HashSet::new();
    // Within the pass: the last user listed; the filter `cursor` stays as it started.
    let mut last_id: Option<String> = None;
    let mut newest = cursor;
    loop {
        let page = call_clerk(interval, || {
            clerk.list_users(options.page_size, cursor, last_id.as_deref())
        })
        .await?;
        summary.pages += 1;
        let mut new_on_page = 0;
        for user in &page {
            let created_at = user["created_at"].as_i64();
            newest = newest.max(created_at);
            let Some(id) = user["id"].as_str() else {
                continue;
            };
            if !seen.insert(id.to_owned()) {
                continue;
            }
            new_on_page += 1;
            summary.scanned += 1;
            let profile = match profile_from_user(user, None) {
                Ok(profile) => profile,
                Err(e) => {
                    summary.unprovisionable.push(format!("{id}: {e}"));
                    continue;
                }
            };
            let outcome = if options.dry_run {
                let mut tx = store.begin().await?;
                let outcome =
                    signup::provision_in(&mut tx, settings.signup_credits, &profile).await;
                tx.rollback().await?;
                outcome?
            } else {
                signup::provision(store, settings, &profile).await?
            };
            match outcome {
                // Its signup queued the metadata update.
                Outcome::Processed(signup::Action::Created) => summary.created += 1,
                Outcome::Processed(_) => {
                    summary.updated += 1;
                    check_metadata(store, user, id, options, &mut summary).await?;
                }
                Outcome::Failed(reason) => summary.unprovisionable.push(format!("{id}: {reason}")),
                Outcome::Ignored(_) | Outcome::Duplicate => {
                    summary.unchanged += 1;
                    check_metadata(store, user, id, options, &mut summary).await?;
                }
            }
        }
        // A resumed pass lists from one millisecond before the newest user applied, so
        // users of that millisecond on the next page are not skipped.
        if !options.dry_run {
            if let Some(ms) = newest {
                save_cursor(store, ms - 1).await?;
            }
        }
        progress(&summary);
        if (page.len() as u32) < options.page_size {
            break;
        }
        let Some(last) = page.last().and_then(|u| u["id"].as_str()) else {
            return Err(ReconcileError::Stalled("a page without user ids".into()));
        };
        if new_on_page == 0 || last_id.as_deref() == Some(last) {
            warn!(
                last_id = last,
                "the Clerk user list did not advance; the scan stops unfinished"
            );
            return Err(ReconcileError::Stalled(last.to_owned()));
        }
        last_id = Some(last.to_owned());
    }
    if complete_scan {
        deleted_in_clerk(store, clerk, interval, &seen, options, &mut summary).await?;
    }
    if !options.dry_run {
        finish(store).await?;
    }
    info!(
        scanned = summary.scanned,
        created = summary.created,
        updated = summary.updated,
        deleted_in_clerk = summary.deleted_in_clerk.len(),
        "reconcile pass finished"
    );
    Ok(summary)
}

/// Compare Clerk's `public_metadata.userId` of a user already here with its id here: a
/// missing one (its job died: an outage longer than its attempts, a refusal) is queued
/// again; a different one is reported and left alone.
async fn check_metadata(
    store: &Store,
    user: &serde_json::Value,
    clerk_id: &str,
    options: &ReconcileOptions,
    summary: &mut Summary,
) -> Result<(), StoreError> {
    const LOCAL_ID: &str = r#"SELECT "id" FROM "User" WHERE "clerkId" = $1"#;
    let local: Option<String> = with_pool!(store, |pool, p| {
        sqlx::query_scalar(LOCAL_ID)
            .bind(clerk_id)
            .persistent(p)
            .fetch_optional(pool)
            .await?
    });
    let Some(local) = local else {
        return Ok(());
    };
    match user["public_metadata"]["userId"]
        .as_str()
        .filter(|v| !v.is_empty())
    {
        Some(theirs) if theirs == local => {}
        Some(theirs) => summary.metadata_conflicts.push(format!(
            "{clerk_id}: Clerk's public_metadata.userId is {theirs}, here {local}"
        )),
        None if options.dry_run => summary.metadata_requeued += 1,
        None => {
            if crate::outbox::requeue_metadata_update(store, clerk_id, &local).await? {
                summary.metadata_requeued += 1;
            }
        }
    }
    Ok(())
}

/// Users here whom a complete scan did not list: asked about one by one (a user created
/// after the scan began is listed by then, so only a 404 counts as deleted).
async fn deleted_in_clerk(
    store: &Store,
    clerk: &ClerkClient,
    interval: Duration,
    seen: &HashSet<String>,
    options: &ReconcileOptions,
    summary: &mut Summary,
) -> Result<(), ReconcileError> {
    let local = local_users(store).await?;
    let total = local.len();
    for clerk_id in local.into_iter().filter(|id| !seen.contains(id)) {
        let found = call_clerk(interval, || clerk.get_user(&clerk_id)).await?;
        if found.is_none() {
            summary.deleted_in_clerk.push(clerk_id);
        }
    }
    if !options.delete || options.dry_run || summary.deleted_in_clerk.is_empty() {
        return Ok(());
    }
    let gone = summary.deleted_in_clerk.len();
    if gone > 1 && gone as f64 > MASS_DELETE_SHARE * total as f64 && !options.allow_mass_delete {
        let reason = format!(
            "Clerk lacks {gone} of the {total} local users (more than {:.0}%): deleted none. \
             Is CLERK_SECRET_KEY this app's instance, and CLERK_API_URL Clerk's API? If the \
             users were deleted in Clerk, run again with --allow-mass-delete",
            MASS_DELETE_SHARE * 100.0
        );
        warn!(gone, total, "reconcile --delete refused a mass deletion");
        summary.delete_refused = Some(reason);
        return Ok(());
    }
    for clerk_id in &summary.deleted_in_clerk {
        if let Ok(id) = ClerkUserId::parse(clerk_id) {
            if signup::forget(store, &id).await? {
                summary.deleted += 1;
            }
        }
    }
    Ok(())
}
