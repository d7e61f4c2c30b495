//! The service's metrics, which every layer may count into. Each application owns its
//! registry (no global recorder), so every test app counts on its own; `GET /metrics`
//! (`http::metrics`) serves it as Prometheus text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// A webhook's type (`user.created`, `user.updated`, `user.deleted`, `other`, or `none`
/// when the request was refused before its body was verified) and its outcome (the
/// answer's status, or the error code).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub event_type: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub backend: &'static str,
}

/// Seconds, from 1 ms to 10 s: a webhook, a Clerk call.
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// What a scrape reads from the database and the pool (`Metrics::sample`).
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    /// Jobs `pending`, the age of the oldest, and jobs `dead`; `None` when the database
    /// did not answer (the gauges keep their last value, and `scrape_errors` counts it).
    pub outbox: Option<crate::outbox::Backlog>,
    pub pool: crate::store::PoolStats,
}

pub struct Metrics {
    registry: Registry,
    /// Verified webhooks by outcome: processed, duplicate, ignored, failed.
    pub webhook_events: Family<OutcomeLabel, Counter>,
    /// Refused or unanswerable webhook requests by error code.
    pub webhook_errors: Family<OutcomeLabel, Counter>,
    /// Outbox deliveries by outcome: done, retried, dead.
    pub outbox_jobs: Family<OutcomeLabel, Counter>,
    /// The PostgreSQL signup queue: webhooks waiting, webhooks per statement.
    pub signup_queue: QueueMetrics,
    /// The PostgreSQL credits queue: movements waiting, movements per statement.
    pub credits_queue: QueueMetrics,
    /// HTTP connections open now.
    pub http_connections: Gauge,
    /// Clerk users seen by reconcile passes inside `serve`, by outcome.
    pub reconciled_users: Family<OutcomeLabel, Counter>,
    /// Reconcile passes inside `serve`: done, failed, skipped (another replica's turn).
    pub reconcile_passes: Family<OutcomeLabel, Counter>,
    /// Unix time of the last reconcile pass that finished.
    pub reconcile_last_success: Gauge,
    /// 1 while the live schema lacks something the service needs (`schema_watch`), else 0.
    pub schema_drift: Gauge,
    /// Time from a webhook's arrival to its answer, by type and outcome.
    pub webhook_duration: Family<WebhookLabels, Histogram>,
    /// Users created by a `user.created` (or an early update) webhook.
    pub signups_created: Counter,
    /// Generations spent through the credits API (replays not counted again).
    pub credits_consumed: Counter,
    /// Generations granted through the credits API, by kind.
    pub credits_granted: Family<KindLabel, Counter>,
    /// Failed events applied again from their stored payloads, by outcome.
    pub replayed_events: Family<OutcomeLabel, Counter>,
    /// A Clerk call of the outbox, by the job's outcome.
    pub outbox_delivery_duration: Family<OutcomeLabel, Histogram>,
    outbox_pending: Gauge,
    outbox_oldest_pending_age: Gauge,
    outbox_dead: Gauge,
    pool_connections: Family<StateLabel, Gauge>,
    pool_max: Gauge,
    pool_waits: Counter,
    scrape_errors: Counter,
    database_reachable: Gauge,
    build_info: Family<BuildLabels, Gauge>,
    /// The last hour of signups, per minute, for the console.
    pub recent_signups: RecentSignups,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("clerk_sync");
        let webhook_events = Family::<OutcomeLabel, Counter>::default();
        let webhook_errors = Family::<OutcomeLabel, Counter>::default();
        let outbox_jobs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhook_events",
            "Verified webhooks by outcome",
            webhook_events.clone(),
        );
        registry.register(
            "webhook_errors",
            "Webhook requests answered with an error, by code",
            webhook_errors.clone(),
        );
        registry.register(
            "outbox_jobs",
            "Outbox delivery attempts by outcome",
            outbox_jobs.clone(),
        );
        let signup_queue = QueueMetrics::registered(&mut registry, "signup", "Signup webhooks");
        let credits_queue = QueueMetrics::registered(&mut registry, "credits", "Credit movements");
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "HTTP connections open now (at most MAX_CONNECTIONS)",
            http_connections.clone(),
        );
        let reconciled_users = Family::<OutcomeLabel, Counter>::default();
        let reconcile_passes = Family::<OutcomeLabel, Counter>::default();
        let reconcile_last_success = Gauge::default();
        let schema_drift = Gauge::default();
        registry.register(
            "schema_drift",
            "1 while the database schema lacks a table, column, unique index or trigger the service needs (readiness answers 503), else 0",
            schema_drift.clone(),
        );
        registry.register(
            "reconciled_users",
            "Clerk users seen by reconcile passes inside serve, by outcome",
            reconciled_users.clone(),
        );
        registry.register(
            "reconcile_passes",
            "Reconcile passes inside serve: done, failed, skipped",
            reconcile_passes.clone(),
        );
        registry.register(
            "reconcile_last_success_timestamp_seconds",
            "Unix time of the last reconcile pass that finished",
            reconcile_last_success.clone(),
        );
        let webhook_duration = Family::<WebhookLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "webhook_duration_seconds",
            "Time from a webhook's arrival to its answer, by event type and outcome",
            webhook_duration.clone(),
        );
        let signups_created = Counter::default();
        registry.register(
            "signups_created",
            "Users created from Clerk webhooks",
            signups_created.clone(),
        );
        let credits_consumed = Counter::default();
        registry.register(
            "credits_consumed",
            "Generations spent through the credits API",
            credits_consumed.clone(),
        );
        let credits_granted = Family::<KindLabel, Counter>::default();
        registry.register(
            "credits_granted",
            "Generations granted through the credits API, by kind",
            credits_granted.clone(),
        );
        let replayed_events = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "replayed_events",
            "Failed webhook events applied again from their stored payloads, by outcome",
            replayed_events.clone(),
        );
        let outbox_delivery_duration = Family::<OutcomeLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "outbox_delivery_duration_seconds",
            "Clerk calls of the outbox, by the job's outcome",
            outbox_delivery_duration.clone(),
        );
        let (outbox_pending, outbox_oldest_pending_age, outbox_dead) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "outbox_pending_jobs",
            "Outbox jobs waiting for delivery (read at scrape)",
            outbox_pending.clone(),
        );
        registry.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest pending outbox job, 0 when none (read at scrape)",
            outbox_oldest_pending_age.clone(),
        );
        registry.register(
            "outbox_dead_jobs",
            "Outbox jobs given up on, waiting for a retry by hand (read at scrape)",
            outbox_dead.clone(),
        );
        let pool_connections = Family::<StateLabel, Gauge>::default();
        let (pool_max, pool_waits, scrape_errors) =
            (Gauge::default(), Counter::default(), Counter::default());
        registry.register(
            "db_pool_connections",
            "Database pool connections: in_use, idle",
            pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Database pool size limit (DATABASE_POOL_MAX)",
            pool_max.clone(),
        );
        registry.register(
            "db_pool_waits",
            "Statements that found every pool connection busy and waited for one",
            pool_waits.clone(),
        );
        registry.register(
            "metrics_scrape_errors",
            "Scrapes whose database figures could not be read (their gauges kept their last values)",
            scrape_errors.clone(),
        );
        let database_reachable = Gauge::default();
        registry.register(
            "database_reachable",
            "1 when the database answered this scrape's read, 0 when it did not",
            database_reachable.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1: the running version and storage backend",
            build_info.clone(),
        );
        for state in ["in_use", "idle"] {
            let _ = pool_connections.get_or_create(&StateLabel { state });
        }
        for kind in <crate::domain::GrantReason as crate::store::TextEnum>::ALL {
            let _ = credits_granted.get_or_create(&KindLabel {
                kind: crate::store::TextEnum::as_str(*kind),
            });
        }
        for event_type in ["user.created", "user.updated", "user.deleted"] {
            for outcome in ["processed", "duplicate", "ignored", "failed"] {
                let _ = webhook_duration.get_or_create(&WebhookLabels {
                    event_type,
                    outcome,
                });
            }
        }
        for outcome in ["done", "gone", "retried", "dead"] {
            let _ = outbox_delivery_duration.get_or_create(&OutcomeLabel { outcome });
        }
        // Every family shows at zero from the start, so a dashboard or an alert has a
        // series before the first event.
        for (family, outcomes) in [
            (
                &webhook_events,
                &["processed", "duplicate", "ignored", "failed"][..],
            ),
            (&outbox_jobs, &["done", "gone", "retried", "dead"][..]),
            (
                &reconciled_users,
                &["created", "updated", "unchanged", "unprovisionable"][..],
            ),
            (&reconcile_passes, &["done", "failed", "skipped"][..]),
            (
                &replayed_events,
                &["processed", "duplicate", "ignored", "failed"][..],
            ),
            (
                &webhook_errors,
                &[
                    "invalid_signature",
                    "database_unavailable",
                    "constraint_violation",
                ][..],
            ),
        ] {
            for outcome in outcomes {
                let _ = family.get_or_create(&OutcomeLabel { outcome });
            }
        }
        Self {
            registry,
            webhook_events,
            webhook_errors,
            outbox_jobs,
            signup_queue,
            credits_queue,
            http_connections,
            reconciled_users,
            reconcile_passes,
            reconcile_last_success,
            schema_drift,
            webhook_duration,
            signups_created,
            credits_consumed,
            credits_granted,
            replayed_events,
            outbox_delivery_duration,
            outbox_pending,
            outbox_oldest_pending_age,
            outbox_dead,
            pool_connections,
            pool_max,
            pool_waits,
            scrape_errors,
            database_reachable,
            build_info,
            recent_signups: RecentSignups::default(),
        }
    }
}

impl Metrics {
    pub fn count(family: &Family<OutcomeLabel, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Set the build's labels once (the backend is known once the store is open).
    pub fn set_build(&self, backend: &'static str) {
        self.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                backend,
            })
            .set(1);
    }

    /// Set the gauges read at scrape time.
    pub fn sample(&self, sampled: &Sampled) {
        match &sampled.outbox {
            Some(backlog) => {
                self.database_reachable.set(1);
                self.outbox_pending.set(backlog.pending);
                self.outbox_dead.set(backlog.dead);
                self.outbox_oldest_pending_age
                    .set(backlog.oldest_pending_age_seconds);
            }
            None => {
                self.database_reachable.set(0);
                self.scrape_errors.inc();
            }
        }
        let pool = &sampled.pool;
        self.pool_connections
            .get_or_create(&StateLabel { state: "in_use" })
            .set(i64::from(pool.size) - pool.idle as i64);
        self.pool_connections
            .get_or_create(&StateLabel { state: "idle" })
            .set(pool.idle as i64);
        self.pool_max.set(i64::from(pool.max));
        // The store counts waits itself; the counter follows it.
        let seen = self.pool_waits.get();
        if pool.waits > seen {
            self.pool_waits.inc_by(pool.waits - seen);
        }
    }

    /// Prometheus / OpenMetrics text of every family.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// What the PostgreSQL signup queue reports.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    /// Webhooks waiting for a statement.
    pub waiting: Gauge,
    /// Webhooks per statement.
    pub batch_size: Histogram,
}

impl QueueMetrics {
    /// A queue's metrics, registered as `{name}_queue_waiting` and `{name}_batch_size`;
    /// `what` names its requests in the help texts.
    fn registered(registry: &mut Registry, name: &str, what: &str) -> Self {
        let queue = Self::default();
        registry.register(
            format!("{name}_queue_waiting"),
            format!("{what} waiting for a database statement (PostgreSQL)"),
            queue.waiting.clone(),
        );
        registry.register(
            format!("{name}_batch_size"),
            format!("{what} per database statement (PostgreSQL)"),
            queue.batch_size.clone(),
        );
        queue
    }
}

impl Default for QueueMetrics {
    fn default() -> Self {
        Self {
            waiting: Gauge::default(),
            batch_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        }
    }
}

/// Signups (`user.created` webhooks, and requests refused before their type was known)
/// of the last hour, per minute, in this process: for the console's chart.
#[derive(Debug, Default)]
pub struct RecentSignups {
    minutes: std::sync::Mutex<std::collections::VecDeque<Minute>>,
}

/// One minute of [`RecentSignups`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Minute {
    /// Unix time of the minute's start, in minutes.
    pub minute: i64,
    pub processed: u32,
    /// Duplicates and ignored events: answered, nothing to do.
    pub unchanged: u32,
    /// Recorded failed, or answered with an error.
    pub failed: u32,
    /// Latency counts per [`LATENCY_BUCKETS`] bound, then one above the last.
    buckets: [u32; 14],
}

impl Minute {
    /// The latency under which `q` of this minute's signups were answered (the bucket's
    /// upper bound, in milliseconds); `None` with no signups.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u32 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * f64::from(total)).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BUCKETS.get(i).map_or(20_000.0, |s| s * 1000.0));
            }
        }
        None
    }
}

impl RecentSignups {
    const KEEP: i64 = 60;

    /// Count one answer at `unix_seconds`: `outcome` as the latency histogram labels it.
    pub fn record(&self, unix_seconds: i64, outcome: &str, seconds: f64) {
        let minute = unix_seconds.div_euclid(60);
        let mut minutes = self.minutes.lock().expect("never poisoned");
        if minutes.back().is_none_or(|m| m.minute != minute) {
            minutes.push_back(Minute {
                minute,
                ..Minute::default()
            });
            while minutes
                .front()
                .is_some_and(|m| m.minute <= minute - Self::KEEP)
            {
                minutes.pop_front();
            }
        }
        let current = minutes.back_mut().expect("just pushed");
        match outcome {
            "processed" => current.processed += 1,
            "duplicate" | "ignored" => current.unchanged += 1,
            _ => current.failed += 1,
        }
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        current.buckets[bucket] += 1;
    }

    /// The last 60 minutes up to `unix_seconds`, oldest first, a minute with nothing
    /// included as zeros.
    pub fn last_hour(&self, unix_seconds: i64) -> Vec<Minute> {
        let now = unix_seconds.div_euclid(60);
        let minutes = self.minutes.lock().expect("never poisoned");
        (now - Self::KEEP + 1..=now)
            .map(|minute| {
                minutes
                    .iter()
                    .find(|m| m.minute == minute)
                    .cloned()
                    .unwrap_or(Minute {
                        minute,
                        ..Minute::default()
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_signups_keep_an_hour_by_minute() {
        let recent = RecentSignups::default();
        let t0 = 1_800_000_000;
        recent.record(t0, "processed", 0.004);
        recent.record(t0 + 1, "processed", 0.2);
        recent.record(t0 + 2, "invalid_signature", 0.0001);
        recent.record(t0 + 61, "duplicate", 0.001);
        let hour = recent.last_hour(t0 + 61);
        assert_eq!(hour.len(), 60);
        let first = &hour[58];
        assert_eq!((first.processed, first.unchanged, first.failed), (2, 0, 1));
        assert_eq!(first.quantile_ms(0.5), Some(5.0));
        assert_eq!(first.quantile_ms(0.99), Some(250.0));
        assert_eq!(hour[59].unchanged, 1);
        assert_eq!(hour[0].quantile_ms(0.5), None);
        // An hour later the old minutes are gone.
        recent.record(t0 + 3_700, "processed", 0.01);
        assert!(recent
            .last_hour(t0 + 3_700)
            .iter()
            .all(|m| m.processed + m.failed + m.unchanged <= 1));
    }
}
