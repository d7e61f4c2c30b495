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
    /// HTTP connections open now.
    pub http_connections: Gauge,
    /// Clerk users seen by reconcile passes inside `serve`, by outcome.
    pub reconciled_users: Family<OutcomeLabel, Counter>,
    /// Reconcile passes inside `serve`: done, failed, skipped (another replica's turn).
    pub reconcile_passes: Family<OutcomeLabel, Counter>,
    /// Unix time of the last reconcile pass that finished.
    pub reconcile_last_success: Gauge,
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
        let signup_queue = QueueMetrics::default();
        registry.register(
            "signup_queue_waiting",
            "Signup webhooks waiting for a database statement (PostgreSQL)",
            signup_queue.waiting.clone(),
        );
        registry.register(
            "signup_batch_size",
            "Signup webhooks per database statement (PostgreSQL)",
            signup_queue.batch_size.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "HTTP connections open now (at most MAX_CONNECTIONS)",
            http_connections.clone(),
        );
        let reconciled_users = Family::<OutcomeLabel, Counter>::default();
        let reconcile_passes = Family::<OutcomeLabel, Counter>::default();
        let reconcile_last_success = Gauge::default();
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
        // Every family shows at zero from the start, so a dashboard or an alert has a
        // series before the first event.
        for (family, outcomes) in [
            (
                &webhook_events,
                &["processed", "duplicate", "ignored", "failed"][..],
            ),
            (&outbox_jobs, &["done", "retried", "dead"][..]),
            (
                &reconciled_users,
                &["created", "updated", "unchanged", "unprovisionable"][..],
            ),
            (&reconcile_passes, &["done", "failed", "skipped"][..]),
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
            http_connections,
            reconciled_users,
            reconcile_passes,
            reconcile_last_success,
        }
    }
}

impl Metrics {
    pub fn count(family: &Family<OutcomeLabel, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabel { outcome }).inc();
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

impl Default for QueueMetrics {
    fn default() -> Self {
        Self {
            waiting: Gauge::default(),
            batch_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        }
    }
}
