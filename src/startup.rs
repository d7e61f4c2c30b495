//! Building and running the service: the API and the outbox worker side by side, stopped
//! together through a `CancellationToken` passed in by the caller.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::config::ServerSettings;
use crate::credits::{CreditsQueue, MovementStatement};
use crate::http::auth::ApiKeys;
use crate::http::{router, server, system_clock, AppState, AppStateInner, Clock};
use crate::metrics::Metrics;
use crate::outbox::worker::{self, WorkerSettings};
use crate::outbox::ClerkClient;
use crate::signup::{SignupQueue, SignupSettings, SignupStatement};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("no webhook signing secret configured")]
    NoSigningSecret,
    /// The cause and the fix, in one sentence (no source to repeat it).
    #[error("could not listen on {addr}: {cause}. {fix}")]
    Bind {
        addr: String,
        cause: String,
        fix: &'static str,
    },
    #[error("could not open the database")]
    Database(#[source] StoreError),
    #[error("could not apply migrations")]
    Migrate(#[source] StoreError),
    /// Its own message (cause, then fix) is the whole story: no source to repeat it.
    #[error("cannot reach the database: {0}")]
    Unreachable(crate::store::connect::Unreachable),
    #[error("could not build the Clerk API client")]
    ClerkClient(#[source] reqwest::Error),
}

pub struct Application {
    listener: TcpListener,
    state: AppStateInner,
    server: ServerSettings,
    worker: Option<(ClerkClient, WorkerSettings)>,
    /// Reconcile with Clerk this often (`RECONCILE_INTERVAL`).
    reconcile: Option<std::time::Duration>,
}

/// `could not listen on …`: what the address error means here, and what to change.
fn bind_error(addr: std::net::SocketAddr, e: std::io::Error) -> StartupError {
    use std::io::ErrorKind;
    let fix = match e.kind() {
        ErrorKind::AddrInUse => {
            "Another process listens there (another `clerk-sync serve`?): stop it, or set PORT \
             (--port) to a free port"
        }
        ErrorKind::PermissionDenied => {
            "Ports below 1024 need privileges: set PORT (--port) to 1024 or above"
        }
        ErrorKind::AddrNotAvailable => {
            "HOST is not an address of this machine: use 127.0.0.1, or 0.0.0.0 for every interface"
        }
        _ => "Check HOST and PORT (--host, --port)",
    };
    StartupError::Bind {
        addr: addr.to_string(),
        cause: crate::store::connect::io_cause(&e),
        fix,
    }
}

/// Apply pending migrations, over `DIRECT_URL` when it is set.
pub async fn run_migrations(config: &Config, store: &Store) -> Result<(), StartupError> {
    match &config.database.direct_url {
        Some(direct) => {
            crate::store::connect::probe(direct)
                .await
                .map_err(StartupError::Unreachable)?;
            let migrator = Store::connect(direct, 1, config.database.transaction_timeout)
                .await
                .map_err(StartupError::Migrate)?;
            let result = migrator.migrate().await.map_err(StartupError::Migrate);
            migrator.close().await;
            result
        }
        None => store.migrate().await.map_err(StartupError::Migrate),
    }
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| bind_error(config.listen, e))?;
        Self::build_with_listener(config, listener).await
    }

    pub async fn build_with_listener(
        config: &Config,
        listener: TcpListener,
    ) -> Result<Self, StartupError> {
        if config.webhook_secrets.is_empty() {
            return Err(StartupError::NoSigningSecret);
        }
        // One direct connection first: the cause and its fix, at once.
        crate::store::connect::probe(&config.database.url)
            .await
            .map_err(StartupError::Unreachable)?;
        let store = Store::connect(
            &config.database.url,
            config.database.pool_max,
            config.database.transaction_timeout,
        )
        .await
        .map_err(StartupError::Database)?;
        run_migrations(config, &store).await?;
        info!(database = %config.database.url, "database connection established");

        let worker = match &config.clerk.secret_key {
            Some(key) => Some((
                ClerkClient::new(config.clerk.api_url.clone(), key.clone())
                    .map_err(StartupError::ClerkClient)?,
                WorkerSettings {
                    concurrency: config.clerk.outbox_concurrency,
                    rate_per_second: config.clerk.outbox_rate_per_second,
                    ..WorkerSettings::default()
                },
            )),
            None => {
                warn!("CLERK_SECRET_KEY is not set: Clerk metadata updates stay queued as pending jobs");
                None
            }
        };
        if config.api_keys.is_empty() {
            warn!("CLERK_SYNC_API_KEYS is not set: the /v1 credits API refuses every request");
        }
        let signup = SignupSettings {
            signup_credits: config.signup_credits,
            transaction_timeout: config.database.transaction_timeout,
        };
        let metrics = Arc::new(Metrics::default());
        metrics.set_build(store.backend_name());
        let (signup_queue, credits_queue) = match &store {
            Store::Postgres(pg) => (
                Some(SignupQueue::new(
                    SignupStatement::new(pg, &signup),
                    metrics.signup_queue.clone(),
                )),
                Some(CreditsQueue::new(
                    MovementStatement::new(pg),
                    metrics.credits_queue.clone(),
                )),
            ),
            Store::Sqlite(_) => (None, None),
        };
        // The schema as it is now, before the first request: readiness and writes are
        // right from the start. Then `schema_watch::run` keeps it current.
        let schema = crate::schema_watch::SchemaWatch::new(config.schema_check_interval);
        match crate::schema_watch::check(&store).await {
            Ok(found) => {
                schema.apply(found, &metrics);
            }
            Err(e) => {
                warn!(error.message = %e, "the first schema check could not run; it runs again shortly")
            }
        }
        let state = AppStateInner {
            store,
            webhook_secrets: config.webhook_secrets.clone().into(),
            signup,
            signup_queue,
            credits_queue,
            outbox_wake: Arc::new(Notify::new()),
            clock: system_clock(),
            metrics,
            api_keys: ApiKeys::new(&config.api_keys),
            clerk: worker.as_ref().map(|(client, _)| client.clone()),
            observer: None,
            console: crate::http::console::ConsoleKeys::new(&config.admin_keys),
            diagnose: None,
            schema,
        };
        Ok(Self {
            listener,
            state,
            server: config.server,
            reconcile: config.clerk.reconcile_interval,
            worker: worker.filter(|_| config.run_worker),
        })
    }

    /// Tell `observer` what each webhook delivery came to (`clerk-sync dev`).
    pub fn with_observer(mut self, observer: crate::http::WebhookObserver) -> Self {
        self.state.observer = Some(observer);
        self
    }

    /// Give the console's Health page its `diagnose` report.
    pub fn with_diagnose(mut self, report: crate::http::console::DiagnoseReport) -> Self {
        self.state.diagnose = Some(report);
        self
    }

    /// Replace the clock used for the signature timestamp check (tests of the vectors).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.state.clock = clock;
        self
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serve until `shutdown` is cancelled (or the server fails), then stop the worker.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let worker = self.worker.map(|(client, settings)| {
            tokio::spawn(worker::run(
                self.state.store.clone(),
                client,
                settings,
                self.state.outbox_wake.clone(),
                self.state.metrics.clone(),
                shutdown.clone(),
            ))
        });
        let reconcile = match (self.reconcile, self.state.clerk.clone()) {
            (Some(interval), Some(clerk)) => {
                Some(tokio::spawn(crate::reconcile::run_periodically(
                    self.state.store.clone(),
                    clerk,
                    self.state.signup,
                    interval,
                    self.state.metrics.clone(),
                    shutdown.clone(),
                )))
            }
            _ => None,
        };
        let schema_watch = tokio::spawn(crate::schema_watch::run(
            self.state.store.clone(),
            self.state.schema.clone(),
            self.state.metrics.clone(),
            shutdown.clone(),
        ));
        info!(address = %self.listener.local_addr()?, "listening");
        let metrics = self.state.metrics.clone();
        let app = router(AppState::new(self.state));
        let served =
            server::serve(self.listener, app, self.server, metrics, shutdown.clone()).await;
        shutdown.cancel();
        let _ = schema_watch.await;
        if let Some(reconcile) = reconcile {
            let _ = reconcile.await;
        }
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        served
    }
}
