//! Logging: one `tracing` subscriber for the whole process.
//!
//! JSON for log shippers in production, pretty for a person at a terminal; the filter comes
//! from settings unless `RUST_LOG` is set. Secrets never reach a log line because every secret
//! is a `SecretString`, whose `Debug` prints `[REDACTED]`, and PII is never given to a span.

use tracing_subscriber::{
    fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter,
};

use crate::settings::{LogFormat, LogSettings};

/// Installs the global subscriber writing to `sink`. Call once, before anything logs; a
/// second call returns an error instead of replacing the first subscriber.
pub fn init_subscriber<W>(settings: &LogSettings, sink: W) -> anyhow::Result<()>
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
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(sink),
            )
            .try_init()?,
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_writer(sink),
            )
            .try_init()?,
    }
    Ok(())
}

/// Replaces quoted values in an error message with `…`. serde's messages quote the value
/// they failed on (`invalid type: string "Jane"`), which may be personal data; the rest of
/// the message (what was expected, where) is what an operator needs.
pub fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_redacted_and_the_rest_kept() {
        let e = serde_json::from_str::<u32>("\"Jane Doe\"").expect_err("type");
        let redacted = redact_values(&e.to_string());
        assert!(!redacted.contains("Jane"), "{redacted}");
        assert!(redacted.contains("expected u32"), "{redacted}");
        assert_eq!(redact_values("a `x` and \"y\""), "a `…` and \"…\"");
        assert_eq!(redact_values("open \"tail"), "open \"…");
    }
}
