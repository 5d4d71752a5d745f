//! Logging: one `tracing` subscriber for the whole process.
//!
//! JSON for log shippers in production, pretty for a person at a terminal; the filter comes
//! from settings unless `RUST_LOG` is set. Secrets never reach a log line because every secret
//! is a `SecretString`, whose `Debug` prints `[REDACTED]`, and PII is never given to a span.

use tracing_subscriber::{
    fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter,
};

use crate::settings::{LogFormat, LogSettings};

/// Installs the global subscriber writing to `sink`, with ANSI colours in the pretty format
/// only when `colours` (a terminal: escape codes in a file or a log shipper are noise). Call
/// once, before anything logs; a second call returns an error instead of replacing the first
/// subscriber.
pub fn init_subscriber<W>(settings: &LogSettings, sink: W, colours: bool) -> anyhow::Result<()>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.trim().is_empty() => EnvFilter::try_new(directive)?,
        _ => EnvFilter::try_new(&settings.level)?,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match settings.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_ansi(false)
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(sink),
            )
            .try_init()?,
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(colours)
                    .with_writer(sink),
            )
            .try_init()?,
    }
    Ok(())
}

pub use didit::redact_values;
