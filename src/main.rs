//! clerk-sync: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use clerk_sync::cli::{BenchArgs, Cli, Command, DiagnoseArgs, MigrateArgs, PrismaSchemaArgs};
use clerk_sync::commands::{send, smoke};
use clerk_sync::config::{Config, DatabaseSettings, DatabaseUrl};
use clerk_sync::startup::Application;
use clerk_sync::store::Store;
use clerk_sync::{dev_secret, telemetry};

fn main() -> ExitCode {
    // `.env` first, while the process has one thread: the command line's `env` defaults
    // then see it, and the environment wins over it.
    let env_file = match std::env::current_dir()
        .map_err(|e| e.to_string())
        .and_then(|dir| clerk_sync::env_file::load(&dir))
    {
        Ok(file) => file,
        Err(e) => {
            eprintln!("error: reading .env: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async_main(env_file))
}

async fn async_main(env_file: Option<clerk_sync::env_file::EnvFile>) -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.command {
        Command::Serve(_) => telemetry::DEFAULT_FILTER,
        _ => telemetry::QUIET_FILTER,
    };
    telemetry::init(cli.log_format, filter);
    if let Some(file) = &env_file {
        match cli.command {
            Command::Serve(_) => {
                tracing::info!(file = %file.path.display(), variables = ?file.set, overridden = ?file.overridden, "read .env")
            }
            _ => eprintln!("clerk-sync: {}", file.describe()),
        }
    }
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
        Command::Migrate(args) => migrate(args).await,
        Command::Send(args) => send::run(args).await,
        Command::PrismaSchema(args) => prisma_schema(args),
        Command::Diagnose(args) => diagnose(args).await,
        Command::Bench(args) => bench(args).await,
        Command::Replay(args) => clerk_sync::commands::replay::run_command(args).await,
        Command::Reconcile(args) => clerk_sync::commands::reconcile::run_command(args).await,
        Command::Smoke(args) => {
            let store = clerk_sync::commands::open_existing(&args).await?;
            let result = smoke::run(&store, &mut std::io::stdout()).await;
            store.close().await;
            result
        }
    }
}

fn prisma_schema(args: PrismaSchemaArgs) -> anyhow::Result<()> {
    use clerk_sync::commands::prisma_schema as ps;
    if args.migration {
        print!("{}", ps::migration());
        return Ok(());
    }
    let schema = match &args.schema {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    match (&args.schema, schema) {
        (Some(path), Some(text)) if args.write => {
            let updated = ps::apply(&text)?;
            if updated == text {
                eprintln!("{}: nothing to add", path.display());
            } else {
                std::fs::write(path, updated)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!(
                    "{}: added clerk-sync's fields; run `prisma format` to align them",
                    path.display()
                );
            }
        }
        (_, schema) => print!("{}", ps::render(schema.as_deref())?),
    }
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let settings = DatabaseSettings::from_args(&args.database, Duration::from_secs(30))?;
    let url = settings.migration_url();
    // One direct connection first: a cause and its fix, at once, instead of a pool
    // timing out 30 s later.
    clerk_sync::store::connect::probe(url).await?;
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

/// Connect for `diagnose` / `smoke` (over `DIRECT_URL` when set), refusing to create a
/// SQLite file that is not there.
async fn diagnose(args: DiagnoseArgs) -> anyhow::Result<()> {
    let store = clerk_sync::commands::open_existing(&args.database).await?;
    let settings = DatabaseSettings::from_args(&args.database, Duration::from_secs(30))?;
    let url = settings.migration_url();
    let target = clerk_sync::commands::diagnose::Target {
        url: url.clone(),
        display: url.to_string(),
        pgbouncer: matches!(
            url,
            DatabaseUrl::Postgres {
                pgbouncer: true,
                ..
            }
        ),
    };
    let mut report = clerk_sync::commands::diagnose::run(&store, &target).await;
    print_report(&report, args.json)?;
    if args.fix {
        let fixes = report.safe_fixes();
        if fixes.is_empty() {
            eprintln!("nothing that --fix can apply");
        } else {
            eprintln!(
                "{} fix(es) to apply in one transaction (pending migrations run first).",
                fixes.len()
            );
            if !args.yes && !confirm("Apply them? [y/N] ")? {
                anyhow::bail!("not applied");
            }
            clerk_sync::commands::diagnose::apply_fixes(&store, &fixes)
                .await
                .context("applying fixes (nothing was changed)")?;
            eprintln!("applied; checking again");
            report = clerk_sync::commands::diagnose::run(&store, &target).await;
            print_report(&report, args.json)?;
        }
    }
    store.close().await;
    anyhow::ensure!(report.ok, "{}/{} steps passed", report.passed, report.total);
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use clerk_sync::commands::bench::{self as b, Scenario};
    if args.print_pgbench_script {
        print!(
            "{}",
            match args.scenario {
                Scenario::Signup => b::pgbench_signup_script(),
                Scenario::Consume => b::pgbench_consume_script(),
            }
        );
        return Ok(());
    }
    if args.print_pgbench_setup {
        print!("{}", b::pgbench_consume_setup());
        return Ok(());
    }
    for (flag, value) in [
        ("-n/--events", args.events),
        ("-c/--concurrency", args.concurrency),
        ("-k/--duplicates", args.duplicates),
        ("--threads", args.threads),
    ] {
        anyhow::ensure!(value >= 1, "{flag} must be at least 1 (got {value})");
    }
    // The server's CLERK_SYNC_API_KEYS may list several keys: any one of them works.
    let api_key = args
        .api_key
        .as_deref()
        .and_then(|keys| keys.split(',').map(str::trim).find(|k| !k.is_empty()))
        .map(str::to_owned);
    let plan = b::BenchPlan {
        scenario: args.scenario,
        api_key,
        url: args.url.clone(),
        secret: send::signing_secret(
            args.clerk_webhook_signing_secret.as_deref(),
            &args.database_url,
        )?,
        events: args.events,
        concurrency: args.concurrency,
        rate: args.rate,
        duplicates: args.duplicates,
        verify: args
            .verify_database_url
            .as_deref()
            .map(DatabaseUrl::parse)
            .transpose()
            .map_err(|p| anyhow::anyhow!("--verify-database-url: {p}"))?,
    };
    // The generator gets its own runtime, sized by --threads.
    let threads = args.threads;
    let report = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
            .block_on(clerk_sync::commands::bench::run(plan))
    })
    .await??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    let unanswered = report.statuses.get("no answer").copied().unwrap_or(0);
    anyhow::ensure!(
        unanswered == 0,
        "{unanswered} of {} requests got no answer from {}: connection refused or reset. Is \
         `clerk-sync serve` running there (HOST, PORT, --url)?",
        report.requests,
        report.url
    );
    anyhow::ensure!(report.non_2xx == 0, "{} non-2xx answers", report.non_2xx);
    if let Some(db) = &report.database {
        anyhow::ensure!(
            db.exact,
            "the database does not hold what the run should have written (see the checks above)"
        );
    }
    Ok(())
}

fn print_report(report: &clerk_sync::commands::diagnose::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

fn confirm(prompt: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "stdin is not a terminal: pass --yes to apply without asking"
    );
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
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
