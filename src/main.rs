//! clerk-sync: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use clerk_sync::cli::{BenchArgs, Cli, Command, DiagnoseArgs, PrismaSchemaArgs};
use clerk_sync::commands::{send, smoke};
use clerk_sync::config::{self, Config, DatabaseSettings, DatabaseUrl};
use clerk_sync::startup::Application;
use clerk_sync::{dev_secret, telemetry};

/// mimalloc instead of glibc's malloc: a signup allocates and frees many small buffers
/// (request, JSON, statement arguments) across worker threads, and glibc's
/// malloc/free were about 12% of the service's CPU in a profile (bench/README.md).
/// Built with `no_thp`: mimalloc does not ask for transparent huge pages, which put 10 of
/// an idle service's 11.5 MB of anonymous memory in 2 MB pages it barely used.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // The command line before the runtime: it sizes the runtime. Given explicitly, so
    // tokio never reads (and panics on) a bad TOKIO_WORKER_THREADS itself.
    let cli = Cli::parse_or_exit();
    let threads = cli.worker_threads.map_or_else(
        || {
            // A bad DATABASE_URL is reported by the command itself, once it runs.
            let served = match &cli.command {
                Command::Serve(args) | Command::Dev(args) => {
                    DatabaseUrl::parse(&args.database.database_url).ok()
                }
                _ => None,
            };
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            config::default_worker_threads(served.as_ref(), cores)
        },
        usize::from,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async_main(env_file, cli))
}

async fn async_main(env_file: Option<clerk_sync::env_file::EnvFile>, cli: Cli) -> ExitCode {
    let filter = match cli.command {
        Command::Serve(_) => telemetry::DEFAULT_FILTER,
        // Its own line per webhook instead of the request log; warnings, and the ready line.
        Command::Dev(_) => DEV_FILTER,
        _ => telemetry::QUIET_FILTER,
    };
    telemetry::init(cli.log_format, filter);
    if let Some(file) = &env_file {
        match cli.command {
            Command::Serve(_) | Command::Dev(_) => {
                tracing::info!(file = %file.path.display(), variables = ?file.set, overridden = ?file.overridden, "read .env")
            }
            _ => eprintln!("clerk-sync: {}", file.describe()),
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `a: b: c`, leaving out a cause whose text is
/// already there (sqlx's migration errors print their source and also return it).
fn render_error(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(Config::from_serve_args(&args)?, None).await,
        Command::Dev(args) => {
            let colour = clerk_sync::commands::dev::colour_wanted();
            let observer: clerk_sync::http::WebhookObserver = std::sync::Arc::new(move |seen| {
                let at = chrono::Local::now();
                println!("{}", clerk_sync::commands::dev::line(&seen, at, colour));
            });
            serve(Config::from_serve_args(&args)?, Some(observer)).await
        }
        Command::DelayProxy(args) => {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("listening on {}", args.listen))?;
            eprintln!(
                "delay-proxy: {} -> {}, +{} ms each way",
                args.listen, args.upstream, args.delay_ms
            );
            clerk_sync::commands::bench::delay_proxy::run(
                listener,
                args.upstream,
                Duration::from_millis(args.delay_ms),
            )
            .await?;
            Ok(())
        }
        Command::Healthcheck(args) => {
            let url = format!(
                "{}/{}",
                send::origin(&args.host, args.port),
                if args.ready { "readyz" } else { "healthz" }
            );
            let response = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?
                .get(&url)
                .send()
                .await
                .with_context(|| format!("{url}: no answer"))?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            println!("{url}: {}", response.status());
            Ok(())
        }
        Command::Completions(args) => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "clerk-sync", &mut script);
            let mut script = String::from_utf8(script)?;
            if args.shell == clap_complete::Shell::Bash {
                // clap_complete 4.6.12 spells the state of a hyphenated binary two ways
                // (clap-rs/clap#6421), so no subcommand's flags complete: use the one the
                // dispatch loop uses. tests/api/tools.rs completes `migrate --st`.
                script = script.replace("clerk__subcmd__sync", "clerk__sync");
            }
            print!("{script}");
            Ok(())
        }
        Command::Migrate(args) => clerk_sync::commands::migrate::run_command(args).await,
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
        (Some(path), Some(text)) if args.check => {
            let lacking = ps::lacking(&text)?;
            if lacking.is_empty() {
                eprintln!("{}: declares everything clerk-sync needs", path.display());
            } else {
                eprintln!(
                    "{}: `prisma migrate dev` from this schema would drop what clerk-sync needs; its models lack:",
                    path.display()
                );
                for (model, line) in &lacking {
                    eprintln!("  model {model}: {line}");
                }
                eprintln!(
                    "Add them with `clerk-sync prisma-schema --schema {} --write`.",
                    path.display()
                );
                std::process::exit(1);
            }
        }
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

/// Connect for `diagnose` / `smoke` (over `DIRECT_URL` when set), refusing to create a
/// SQLite file that is not there.
async fn diagnose(args: DiagnoseArgs) -> anyhow::Result<()> {
    let store = clerk_sync::commands::open_existing(&args.database).await?;
    let settings = DatabaseSettings::from_args(&args.database, Duration::from_secs(30))?;
    let url = settings.migration_url();
    let target = clerk_sync::commands::diagnose::Target::for_url(url);
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
    use clerk_sync::cli::Peer;
    use clerk_sync::commands::bench::{self as b, Scenario};
    if args.print_pgbench_script {
        if args.batch != 1 && (args.scenario, args.peer) != (Scenario::Signup, Peer::Service) {
            anyhow::bail!(
                "--batch is for the service's signup statement: use it with --scenario signup and --peer service"
            );
        }
        anyhow::ensure!(
            (1..=b::PGBENCH_MAX_BATCH).contains(&args.batch),
            "--batch {} is out of range: the signup queue sends 1 to {} users per statement",
            args.batch,
            b::PGBENCH_MAX_BATCH
        );
        print!(
            "{}",
            match (args.scenario, args.peer) {
                (Scenario::Signup, Peer::Service) => b::pgbench_signup_script(args.batch),
                (Scenario::Signup, Peer::Plain) => b::pgbench_plain_signup_script(),
                (Scenario::Consume, Peer::Service) => b::pgbench_consume_script(),
                (Scenario::Consume, Peer::Plain) => {
                    anyhow::bail!("--peer plain is a signup peer: use it with --scenario signup")
                }
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
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
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

/// `clerk-sync dev`'s log filter: warnings, and the ready line.
const DEV_FILTER: &str = "warn,clerk_sync::ready=info";

async fn serve(
    mut config: Config,
    observer: Option<clerk_sync::http::WebhookObserver>,
) -> anyhow::Result<()> {
    let dev_secret = match config.webhook_secrets.is_empty() {
        true => {
            let secret = dev_secret::DevSecret::prepare(&config.database.url.data_dir())
                .context("reading the development signing secret")?;
            config.webhook_secrets = vec![secret.secret.clone()];
            Some(secret)
        }
        false => None,
    };
    // Bind, reach the database, migrate: a failure here prints no secret and keeps none.
    let mut app = Application::build(&config).await?;
    if let Some(observer) = observer {
        app = app.with_observer(observer);
    }
    // The console's Health page renders `clerk-sync diagnose` (over DIRECT_URL when set).
    app = app.with_diagnose(clerk_sync::commands::diagnose::console_report(
        config.database.migration_url(),
    ));
    if let Some(secret) = &dev_secret {
        secret.keep().map_err(|e| {
            anyhow::anyhow!(
                "CLERK_WEBHOOK_SIGNING_SECRET is not set, and the development secret cannot be \
                 kept in {}: {}. Set CLERK_WEBHOOK_SIGNING_SECRET to the Signing Secret of your \
                 Clerk webhook endpoint (whsec_…), or start from a directory where {} can be \
                 written",
                secret.path().display(),
                clerk_sync::store::connect::io_cause(&e),
                secret
                    .path()
                    .parent()
                    .map_or(".".into(), |p| p.display().to_string()),
            )
        })?;
        eprintln!(
            "CLERK_WEBHOOK_SIGNING_SECRET is not set; {} development secret {}:\n  {}\n\
             Use it as the signing secret of a Clerk webhook endpoint, or run `clerk-sync send`.",
            if secret.new {
                "generated the"
            } else {
                "using the"
            },
            secret.path().display(),
            secret.text,
        );
    }
    tracing::info!(
        target: "clerk_sync::ready",
        "ready: give Clerk the webhook URL {} (in development, through a tunnel to this port); data in {}",
        webhook_url(app.local_addr()),
        data_location(&config.database.url),
    );
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

/// The webhook URL on this machine (`0.0.0.0` is reached as `127.0.0.1`).
fn webhook_url(addr: std::net::SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}/api/webhooks/clerk")
}

/// Where the data lives: the SQLite file's full path, or the PostgreSQL URL (no password).
fn data_location(url: &DatabaseUrl) -> String {
    match url {
        DatabaseUrl::Sqlite { path, .. } => std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string(),
        DatabaseUrl::Postgres { .. } => url.to_string(),
    }
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
