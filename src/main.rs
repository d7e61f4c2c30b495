//! clerk-sync: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use clerk_sync::cli::{Cli, Command};
use clerk_sync::config::{Config, DatabaseSettings};
use clerk_sync::startup::Application;
use clerk_sync::store::Store;
use clerk_sync::{dev_secret, send, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(Config::from_serve_args(&args)?).await,
        Command::Migrate(args) => {
            let settings = DatabaseSettings::from_args(&args, std::time::Duration::from_secs(30))?;
            let url = settings.migration_url();
            let store = Store::connect(url, 1, settings.transaction_timeout).await?;
            let pending = store
                .pending_migrations()
                .await
                .context("reading applied migrations")?;
            store.migrate().await.context("applying migrations")?;
            println!(
                "{url}: applied {} migration(s) {pending:?}; schema is current",
                pending.len()
            );
            store.close().await;
            Ok(())
        }
        Command::Send(args) => send::run(args).await,
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    if config.webhook_secrets.is_empty() {
        let dir = config.database.url.data_dir();
        let (secret, text, created) = dev_secret::load_or_create(&dir)
            .with_context(|| format!("preparing the development secret in {}", dir.display()))?;
        eprintln!(
            "CLERK_WEBHOOK_SIGNING_SECRET is not set; {} development secret {}:\n  {text}\n\
             Use it as the signing secret of a Clerk webhook endpoint, or run `clerk-sync send`.",
            if created {
                "generated the"
            } else {
                "using the"
            },
            dev_secret::path(&dir).display()
        );
        config.webhook_secrets = vec![secret];
    }
    let app = Application::build(&config).await?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        on_signal.cancel();
    });
    app.run_until_stopped(shutdown).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
