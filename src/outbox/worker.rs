//! The outbox worker: claim one due job in a short transaction, commit, call Clerk with
//! no lock held, then record the result. A claim is a lease (`nextAttemptAt` moved past
//! the call's timeout), so a crashed replica's job is picked up again, and PostgreSQL's
//! `FOR UPDATE SKIP LOCKED` keeps replicas from claiming the same job.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::types::Json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, instrument, warn};

use super::{ClerkClient, DeliveryError, Job};
use crate::metrics::Metrics;
use crate::store::{self, OwnTablesSql, Store, StoreError};
use crate::with_pool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
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
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            lease: Duration::from_secs(60),
            base_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
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
RETURNING "id", "payload", "attempts""#,
);

static MARK_DONE: OwnTablesSql = OwnTablesSql::new(
    r#"
UPDATE {own}"OutboxJob" SET "status" = 'done', "lastError" = NULL, "updatedAt" = $2 WHERE "id" = $1"#,
);

static MARK_RETRY: OwnTablesSql = OwnTablesSql::new(
    r#"
UPDATE {own}"OutboxJob" SET "nextAttemptAt" = $2, "lastError" = $3, "updatedAt" = $4 WHERE "id" = $1"#,
);

static MARK_DEAD: OwnTablesSql = OwnTablesSql::new(
    r#"
UPDATE {own}"OutboxJob" SET "status" = 'dead', "lastError" = $2, "updatedAt" = $3 WHERE "id" = $1"#,
);

type Claimed = (String, Json<serde_json::Value>, i32);

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
#[instrument(skip_all, fields(job_id))]
pub async fn try_execute_job(
    store: &Store,
    client: &ClerkClient,
    settings: &WorkerSettings,
) -> Result<Outcome, StoreError> {
    let Some((id, Json(payload), attempts)) = claim(store, settings.lease).await? else {
        return Ok(Outcome::Empty);
    };
    tracing::Span::current().record("job_id", id.as_str());
    let result = match serde_json::from_value::<Job>(payload) {
        Ok(Job::UpdateClerkMetadata { clerk_id, user_id }) => {
            client.update_metadata(&clerk_id, &user_id).await
        }
        Err(_) => Err(DeliveryError::Permanent(
            "payload is not a job this version understands".to_owned(),
        )),
    };
    let now = store::now();
    let outcome = match result {
        Ok(()) => {
            with_pool!(store, |pool, p| {
                sqlx::query(MARK_DONE.for_store(store))
                    .bind(&id)
                    .bind(now)
                    .persistent(p)
                    .execute(pool)
                    .await?;
            });
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
            with_pool!(store, |pool, p| {
                sqlx::query(MARK_RETRY.for_store(store))
                    .bind(&id)
                    .bind(next)
                    .bind(&reason)
                    .bind(now)
                    .persistent(p)
                    .execute(pool)
                    .await?;
            });
            warn!(attempts, delay_ms = delay.as_millis() as u64, reason = %reason, "outbox job will be retried");
            Outcome::Retried
        }
        Err(e) => {
            let reason = e.to_string();
            with_pool!(store, |pool, p| {
                sqlx::query(MARK_DEAD.for_store(store))
                    .bind(&id)
                    .bind(&reason)
                    .bind(now)
                    .persistent(p)
                    .execute(pool)
                    .await?;
            });
            error!(attempts, reason = %reason, "outbox job is dead");
            Outcome::Dead
        }
    };
    Ok(outcome)
}

/// The worker loop inside `serve`: deliver due jobs until shutdown.
pub async fn run(
    store: Store,
    client: ClerkClient,
    settings: WorkerSettings,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    info!("outbox worker started");
    loop {
        let pause = match try_execute_job(&store, &client, &settings).await {
            Ok(Outcome::Empty) => settings.poll_interval,
            Ok(outcome) => {
                let label = match outcome {
                    Outcome::Done => "done",
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
    info!("outbox worker stopped");
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
