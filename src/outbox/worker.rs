//! The outbox worker: claim one due job in a short transaction, commit, call Clerk with
//! no lock held, then record the result. A claim is a lease (`nextAttemptAt` moved past
//! the call's timeout), so a crashed replica's job is picked up again, and PostgreSQL's
//! `FOR UPDATE SKIP LOCKED` keeps replicas from claiming the same job.
//!
//! Delivered once in effect:
//! - the result is recorded with retries while the database is briefly unreachable, so a
//!   call that succeeded is not made again because its "done" could not be written;
//! - a job claimed again after an attempt that recorded nothing (the process died, or the
//!   database stayed away, between the call and its record) first asks Clerk whether the
//!   update is already there, and only sends it when it is not.
//!
//! `serve` runs `OUTBOX_CONCURRENCY` deliveries at once, paced together at
//! `OUTBOX_RATE_PER_SECOND` (Clerk's Backend API answers 429 beyond its rate limit); a 429's
//! `Retry-After` pauses them all. One slow call holds one delivery, not the others.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::types::Json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, instrument, warn};

use super::{ClerkClient, DeliveryError, Job};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::store::{self, OwnTablesSql, Store, StoreError};
use crate::with_pool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Clerk no longer has the user: nothing to update; the job ends `done`, its
    /// `lastError` saying so.
    Gone,
    Retried,
    Dead,
    /// No job was due.
    Empty,
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub max_attempts: i32,
    /// How long a claim lasts; longer than one Clerk call can take.
    pub lease: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// How often an idle worker looks for due jobs (it is also woken after each signup).
    pub poll_interval: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Clerk calls per second, all deliveries together.
    pub rate_per_second: u32,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            lease: Duration::from_secs(60),
            base_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
            concurrency: 8,
            rate_per_second: 50,
        }
    }
}

impl WorkerSettings {
    /// Exponential backoff with ±20% jitter, at least what `Retry-After` asks for.
    pub fn backoff(&self, attempts: i32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).max(0) as u32))
            .min(self.max_backoff);
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        exp.mul_f64(jitter).max(retry_after.unwrap_or_default())
    }
}

/// Lease the next due job by moving its `nextAttemptAt` to `$2`. On PostgreSQL `FOR
/// UPDATE SKIP LOCKED` lets replicas claim different jobs at once; SQLite has one writer at
/// a time, so there the statement alone is the claim.
static CLAIM: OwnTablesSql = OwnTablesSql::new(
    r#"
UPDATE {own}"OutboxJob"
SET "attempts" = "attempts" + 1, "nextAttemptAt" = $2, "updatedAt" = $1
WHERE "id" = (
    SELECT "id" FROM {own}"OutboxJob"
    WHERE "status" = 'pending' AND "nextAttemptAt" <= $1
    ORDER BY "nextAttemptAt"
    LIMIT 1
    {skip_locked}
)
RETURNING "id", "payload", "attempts",
    "lastError" IS NULL OR "lastError" LIKE 'unverified: %' AS "unverified""#,
);

static MARK_DONE: OwnTablesSql = OwnTablesSql::new(
    r#"
UPDATE {own}"OutboxJob" SET "status" = 'done', "lastError" = NULL, "updatedAt" = $2 WHERE "id" = $1"#,
);

static MARK_RETRY: OwnTablesSql = OwnTablesSql::new(
    r#"
UPDATE {own}"OutboxJob" SET "nextAttemptAt" = $2, "lastError" = $3, "updatedAt" = $4 WHERE "id" = $1"#,
);

static MARK_GONE: OwnTablesSql = OwnTablesSql::new(
    r#"
UPDATE {own}"OutboxJob" SET "status" = 'done', "lastError" = $2, "updatedAt" = $3 WHERE "id" = $1"#,
);

static MARK_DEAD: OwnTablesSql = OwnTablesSql::new(
    r#"
UPDATE {own}"OutboxJob" SET "status" = 'dead', "lastError" = $2, "updatedAt" = $3 WHERE "id" = $1"#,
);

/// A claimed job. `unverified` with `attempts > 1`: an earlier attempt recorded no result,
/// or only that it could not look whether an attempt before it had reached Clerk.
type Claimed = (String, Json<serde_json::Value>, i32, bool);

async fn claim(store: &Store, lease: Duration) -> Result<Option<Claimed>, StoreError> {
    let now = store::now();
    let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
    let row = with_pool!(store, |pool, p| {
        sqlx::query_as::<_, Claimed>(CLAIM.for_store(store))
            .bind(now)
            .bind(until)
            .persistent(p)
            .fetch_optional(pool)
            .await?
    });
    Ok(row)
}

/// Claim and deliver at most one due job. Tests step the worker with this.
pub async fn try_execute_job(
    store: &Store,
    client: &ClerkClient,
    settings: &WorkerSettings,
) -> Result<Outcome, StoreError> {
    deliver_one(store, client, settings, None, None).await
}

/// The start of a retry's reason when the attempt could not check whether an earlier one
/// reached Clerk (the claim matches it: `LIKE 'unverified: %'`).
const UNVERIFIED: &str = "unverified: ";

/// Deliver one job: make the call unless an earlier attempt already did.
async fn deliver(
    client: &ClerkClient,
    job: Job,
    earlier_unrecorded: bool,
) -> Result<(), DeliveryError> {
    let Job::UpdateClerkMetadata { clerk_id, user_id } = job;
    if earlier_unrecorded {
        // The earlier attempt may have reached Clerk: look before sending again. When the
        // look itself fails, the reason says so, and the next attempt looks again.
        let found = client.get_user(&clerk_id).await.map_err(|e| match e {
            DeliveryError::Retryable {
                reason,
                retry_after,
            } => DeliveryError::Retryable {
                reason: format!("{UNVERIFIED}{reason}"),
                retry_after,
            },
            permanent => permanent,
        })?;
        if let Some(user) = found {
            if user["public_metadata"]["userId"].as_str() == Some(user_id.as_str()) {
                info!("an earlier attempt already applied the update; not sending it again");
                return Ok(());
            }
        }
    }
    client.update_metadata(&clerk_id, &user_id).await
}

#[instrument(skip_all, fields(job_id))]
async fn deliver_one(
    store: &Store,
    client: &ClerkClient,
    settings: &WorkerSettings,
    pace: Option<&Pace>,
    metrics: Option<&Metrics>,
) -> Result<Outcome, StoreError> {
    let Some((id, Json(payload), attempts, unverified)) = claim(store, settings.lease).await?
    else {
        return Ok(Outcome::Empty);
    };
    tracing::Span::current().record("job_id", id.as_str());
    let result = match serde_json::from_value::<Job>(payload) {
        Ok(job) => {
            if let Some(pace) = pace {
                pace.wait().await;
            }
            let started = std::time::Instant::now();
            let result = deliver(client, job, attempts > 1 && unverified).await;
            if let Some(metrics) = metrics {
                let outcome = match &result {
                    Ok(()) => "done",
                    Err(DeliveryError::NotFound(_)) => "gone",
                    Err(DeliveryError::Retryable { .. }) if attempts < settings.max_attempts => {
                        "retried"
                    }
                    Err(_) => "dead",
                };
                metrics
                    .outbox_delivery_duration
                    .get_or_create(&OutcomeLabel { outcome })
                    .observe(started.elapsed().as_secs_f64());
            }
            result
        }
        Err(_) => Err(DeliveryError::Permanent(
            "payload is not a job this version understands".to_owned(),
        )),
    };
    if let (
        Some(pace),
        Err(DeliveryError::Retryable {
            retry_after: Some(after),
            ..
        }),
    ) = (pace, &result)
    {
        pace.pause_for(*after);
    }
    let now = store::now();
    let outcome = match result {
        Ok(()) => {
            record(
                store,
                settings,
                &MARK_DONE,
                &[Param::Text(&id), Param::At(now)],
            )
            .await?;
            info!(attempts, "outbox job delivered");
            Outcome::Done
        }
        Err(DeliveryError::Retryable {
            reason,
            retry_after,
        }) if attempts < settings.max_attempts => {
            let delay = settings.backoff(attempts, retry_after);
            let next =
                now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
            let params = [
                Param::Text(&id),
                Param::At(next),
                Param::Text(&reason),
                Param::At(now),
            ];
            record(store, settings, &MARK_RETRY, &params).await?;
            warn!(attempts, delay_ms = delay.as_millis() as u64, reason = %reason, "outbox job will be retried");
            Outcome::Retried
        }
        Err(DeliveryError::NotFound(reason)) => {
            let reason = format!("the user no longer exists in Clerk: {reason}");
            let params = [Param::Text(&id), Param::Text(&reason), Param::At(now)];
            record(store, settings, &MARK_GONE, &params).await?;
            info!(attempts, reason = %reason, "outbox job ended: the Clerk user is gone");
            Outcome::Gone
        }
        Err(e) => {
            let reason = e.to_string();
            let params = [Param::Text(&id), Param::Text(&reason), Param::At(now)];
            record(store, settings, &MARK_DEAD, &params).await?;
            error!(attempts, reason = %reason, "outbox job is dead");
            Outcome::Dead
        }
    };
    Ok(outcome)
}

/// A parameter of a result statement.
enum Param<'a> {
    Text(&'a str),
    At(chrono::NaiveDateTime),
}

/// Write a job's result, again while the database is briefly unreachable (for up to half
/// the lease): a result that is not written makes the job run again once its lease ends.
async fn record(
    store: &Store,
    settings: &WorkerSettings,
    sql: &'static OwnTablesSql,
    params: &[Param<'_>],
) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + settings.lease / 2;
    let mut pause = Duration::from_millis(100);
    loop {
        let written: Result<(), StoreError> = async {
            with_pool!(store, |pool, p| {
                let mut query = sqlx::query(sql.for_store(store));
                for param in params {
                    query = match param {
                        Param::Text(text) => query.bind(*text),
                        Param::At(at) => query.bind(*at),
                    };
                }
                query.persistent(p).execute(pool).await?;
            });
            Ok(())
        }
        .await;
        match written {
            Err(e) if e.is_retryable() && tokio::time::Instant::now() + pause < deadline => {
                warn!(error.message = %e, "could not record the job's result; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Spaces Clerk calls `1 / OUTBOX_RATE_PER_SECOND` apart across every delivery, and holds
/// them all while a 429's `Retry-After` lasts.
struct Pace {
    state: std::sync::Mutex<PaceState>,
    interval: Duration,
}

struct PaceState {
    /// The next free slot.
    next: tokio::time::Instant,
    /// No call before this (a 429's `Retry-After`).
    paused_until: tokio::time::Instant,
}

impl Pace {
    fn new(rate_per_second: u32) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            state: std::sync::Mutex::new(PaceState {
                next: now,
                paused_until: now,
            }),
            interval: Duration::from_secs(1) / rate_per_second.max(1),
        }
    }

    /// Wait for a slot; a pause that began while waiting is waited out too.
    async fn wait(&self) {
        loop {
            let at = {
                let mut state = self.state.lock().expect("never poisoned");
                let at = state
                    .next
                    .max(state.paused_until)
                    .max(tokio::time::Instant::now());
                state.next = at + self.interval;
                at
            };
            tokio::time::sleep_until(at).await;
            let paused_until = self.state.lock().expect("never poisoned").paused_until;
            if paused_until <= tokio::time::Instant::now() {
                return;
            }
        }
    }

    fn pause_for(&self, pause: Duration) {
        let until = tokio::time::Instant::now() + pause;
        let mut state = self.state.lock().expect("never poisoned");
        state.paused_until = state.paused_until.max(until);
        state.next = state.next.max(until);
    }
}

/// The worker inside `serve`: `settings.concurrency` deliveries at once, until shutdown.
pub async fn run(
    store: Store,
    client: ClerkClient,
    settings: WorkerSettings,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    info!(
        concurrency = settings.concurrency,
        rate_per_second = settings.rate_per_second,
        "outbox worker started"
    );
    let pace = Arc::new(Pace::new(settings.rate_per_second));
    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..settings.concurrency.max(1) {
        deliveries.spawn(deliver_until_stopped(
            store.clone(),
            client.clone(),
            settings.clone(),
            pace.clone(),
            wake.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    while deliveries.join_next().await.is_some() {}
    info!("outbox worker stopped");
}

async fn deliver_until_stopped(
    store: Store,
    client: ClerkClient,
    settings: WorkerSettings,
    pace: Arc<Pace>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let pause = match deliver_one(&store, &client, &settings, Some(&pace), Some(&metrics)).await
        {
            Ok(Outcome::Empty) => settings.poll_interval,
            Ok(outcome) => {
                let label = match outcome {
                    Outcome::Done => "done",
                    Outcome::Gone => "gone",
                    Outcome::Retried => "retried",
                    _ => "dead",
                };
                Metrics::count(&metrics.outbox_jobs, label);
                Duration::ZERO
            }
            Err(e) => {
                error!(error.message = %e, error.cause_chain = ?e, "outbox worker could not reach the database");
                Duration::from_secs(5)
            }
        };
        if shutdown.is_cancelled() {
            break;
        }
        if !pause.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let s = WorkerSettings::default();
        let first = s.backoff(1, None);
        assert!(first >= Duration::from_millis(1600) && first <= Duration::from_millis(2400));
        let tenth = s.backoff(10, None);
        assert!(tenth >= Duration::from_secs(800));
        assert!(s.backoff(40, None) <= Duration::from_secs(4320));
        assert!(s.backoff(1, Some(Duration::from_secs(120))) >= Duration::from_secs(120));
    }
}
