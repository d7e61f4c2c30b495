//! Logging: tracing, structured; JSON off a terminal, pretty on one. Filters from RUST_LOG.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

pub const DEFAULT_FILTER: &str = "clerk_sync=info,tower_http=info,sqlx=warn";
/// For one-shot commands (`diagnose`, `smoke`, `migrate`, `send`), whose output is the report.
pub const QUIET_FILTER: &str = "warn";

/// A subscriber writing to `sink`: JSON lines carry the fields of every enclosing span
/// (request id, svix id, event type), so each line stands on its own.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    sink: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink);
    match format {
        LogFormat::Pretty => Box::new(builder.compact().finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true)
                .finish(),
        ),
    }
}

/// Install the global subscriber. Logs go to stderr; stdout is left to command output.
pub fn init(format: Option<LogFormat>, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let _ = tracing::subscriber::set_global_default(subscriber(format, filter, std::io::stderr));
}
