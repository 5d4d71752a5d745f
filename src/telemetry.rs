//! Logs and traces: one `tracing` subscriber for the whole process.
//!
//! Logs: JSON for log shippers in production, pretty for a person at a terminal; the filter
//! comes from settings unless `RUST_LOG` is set. Secrets never reach a log line because every
//! secret is a `SecretString`, whose `Debug` prints `[REDACTED]`, and PII is never given to a
//! span.
//!
//! Traces: a verification crosses a producer, the intake, a start job, Didit, a webhook, polls
//! and the outcome event, in several processes and over days; one trace per verification
//! shows that path. When `[telemetry]` names an OTLP receiver, the fleet's own spans (never
//! other crates' spans, never log events, which may quote a Didit error) are exported over
//! OTLP/HTTP with protobuf. The trace context travels as a W3C `traceparent`
//! ([`TraceParent`]): taken from the caller (HTTP header, intake-stream field, the Rust
//! producer's current span), written into job envelopes, kept once beside a waiting session
//! (its record, not its poll job) for the webhook and polls that end it, and stamped as `trace_id` on each outcome event and on the
//! job span every log line of that work carries. Without a receiver nothing is exported and
//! a caller's `traceparent` is passed along unchanged; the span-context lookups are skipped,
//! so a job pays one atomic load for tracing.
//!
//! The OpenTelemetry part (span contexts, the export) is the `otel` feature, on by default.
//! A build without it passes a caller's `traceparent` along the same way but never starts or
//! exports a trace; `kyc-bench tracing` compares the two builds.

#[cfg(feature = "otel")]
mod export;
mod traceparent;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU8, Ordering},
        LazyLock,
    },
};

#[cfg(feature = "otel")]
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
#[cfg(feature = "otel")]
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Instrument, Span};
#[cfg(feature = "otel")]
use tracing_opentelemetry::OpenTelemetrySpanExt;
#[cfg(feature = "otel")]
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::{
    fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer,
};

use crate::settings::{LogFormat, LogSettings, TelemetrySettings};

pub use didit::redact_values;
pub use traceparent::TraceParent;

/// The header and intake-stream field a caller's trace context arrives in.
pub const TRACEPARENT: &str = "traceparent";

/// Spans dropped instead of exported (queue full, receiver down or slow); one count per
/// process, registered in every [`crate::metrics::Metrics`] registry.
pub static SPANS_DROPPED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        "kyc_trace_spans_dropped_total",
        "Finished spans dropped instead of exported: the export queue was full or the OTLP receiver failed.",
    )
    .expect("a constant metric name is valid")
});

/// What this process's spans are, as [`init_subscriber`] set them up. Without a tracer, a job
/// outside any trace has no trace to continue or start, so it runs without its span (see
/// [`job`]), and no span has a trace context to look up (see [`current`]).
static SPANS: AtomicU8 = AtomicU8::new(SPANS_NOT_OURS);
/// No subscriber of ours: a library user's (a producer's) spans may carry trace contexts.
const SPANS_NOT_OURS: u8 = 0;
/// Our subscriber without a tracer: no span carries a trace context.
const SPANS_UNTRACED: u8 = 1;
/// Our subscriber with the tracer: spans are traced and exported.
const SPANS_TRACED: u8 = 2;

fn tracer_installed() -> bool {
    SPANS.load(Ordering::Relaxed) == SPANS_TRACED
}

tokio::task_local! {
    /// The trace context of the work this task does, for when no tracer is installed (then
    /// a caller's `traceparent` is passed along as it came).
    static INHERITED: Option<TraceParent>;
}

/// The trace export of this process; flushes what is queued when shut down or dropped.
#[derive(Debug, Default)]
pub struct Tracing {
    #[cfg(feature = "otel")]
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Exports what is queued (bounded by `telemetry.export_timeout`) and stops.
    pub fn shutdown(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::debug!(error = %e, "trace export did not shut down cleanly");
            }
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs the global subscriber writing logs to `sink` and, when `telemetry` names a
/// receiver, exporting spans. ANSI colours go in the pretty format only when `colours` (a
/// terminal: escape codes in a file or a log shipper are noise). Call once, before anything
/// logs; a second call returns an error instead of replacing the first subscriber. `instance`
/// tells this process's spans apart from other processes' (`service.instance.id`).
pub fn init_subscriber<W>(
    settings: &LogSettings,
    telemetry: &TelemetrySettings,
    instance: &str,
    sink: W,
    colours: bool,
) -> anyhow::Result<Tracing>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.trim().is_empty() => EnvFilter::try_new(directive)?,
        _ => EnvFilter::try_new(&settings.level)?,
    };
    let logs = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(sink)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(colours)
            .with_writer(sink)
            .with_filter(filter)
            .boxed(),
    };
    #[cfg(feature = "otel")]
    let (export, spans) = span_export(telemetry, instance)?;
    #[cfg(not(feature = "otel"))]
    let (export, spans) = no_span_export(telemetry, instance)?;
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()?;
    SPANS.store(
        if exporting(&export) {
            SPANS_TRACED
        } else {
            SPANS_UNTRACED
        },
        Ordering::Relaxed,
    );
    Ok(export)
}

/// The span layer of a build without OpenTelemetry: none. A receiver set is refused, so an
/// operator is never left wondering where the spans went.
#[cfg(not(feature = "otel"))]
fn no_span_export(
    telemetry: &TelemetrySettings,
    // Names a process's exported spans; there are none.
    _instance: &str,
) -> anyhow::Result<(Tracing, Option<tracing_subscriber::layer::Identity>)> {
    if telemetry.traces_url().is_some() {
        anyhow::bail!(
            "telemetry.otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) is set, but this kyc-worker \
             was built without the `otel` feature and cannot export traces"
        );
    }
    Ok((Tracing::default(), None))
}

#[cfg(not(feature = "otel"))]
fn exporting(_: &Tracing) -> bool {
    false
}

#[cfg(feature = "otel")]
fn exporting(export: &Tracing) -> bool {
    export.provider.is_some()
}

/// The export and the span layer feeding it, when `telemetry` names a receiver.
#[cfg(feature = "otel")]
fn span_export<S>(
    telemetry: &TelemetrySettings,
    instance: &str,
) -> anyhow::Result<(Tracing, Option<impl Layer<S>>)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let provider = match telemetry.traces_url() {
        Some(url) => Some(provider(telemetry, &url, instance)?),
        None => None,
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("kyc-worker"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_level(false)
            // The fleet's and the Didit SDK's spans only: no log events (an error message
            // may quote Didit), no spans of other crates.
            .with_filter(filter_fn(|meta| {
                meta.is_span()
                    && *meta.level() <= tracing::Level::INFO
                    && (meta.target().starts_with("kyc_worker")
                        || meta.target().starts_with("didit"))
            }))
    });
    Ok((Tracing { provider }, traces))
}

#[cfg(feature = "otel")]
fn provider(
    telemetry: &TelemetrySettings,
    url: &str,
    instance: &str,
) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(telemetry.export_timeout)
        .with_http_client(
            reqwest::Client::builder()
                .timeout(telemetry.export_timeout)
                .build()?,
        )
        .build()?;
    let processor = export::BoundedExport::start(
        exporter,
        telemetry.export_queue,
        telemetry.export_timeout,
        SPANS_DROPPED.clone(),
    )?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .with_attributes([
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            opentelemetry::KeyValue::new("service.instance.id", instance.to_owned()),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            telemetry.sampling_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The trace context of the current work: the current span's when spans are traced (in this
/// process, or in a producer's process that traces with `tracing-opentelemetry`), else the
/// caller's `traceparent` passed along; `None` outside any trace.
pub fn current() -> Option<TraceParent> {
    current_span_trace().or_else(|| INHERITED.try_with(|inherited| *inherited).ok().flatten())
}

/// The current span's trace context; not looked up where no span can have one.
#[cfg(feature = "otel")]
fn current_span_trace() -> Option<TraceParent> {
    if SPANS.load(Ordering::Relaxed) == SPANS_UNTRACED {
        return None;
    }
    let context = Span::current().context();
    TraceParent::from_span_context(context.span().span_context())
}

#[cfg(not(feature = "otel"))]
fn current_span_trace() -> Option<TraceParent> {
    None
}

/// Makes `span` continue `parent` and returns its own trace context, when spans are traced.
#[cfg(feature = "otel")]
fn continue_trace(span: &Span, parent: Option<TraceParent>) -> Option<TraceParent> {
    if SPANS.load(Ordering::Relaxed) == SPANS_UNTRACED {
        return None;
    }
    if let Some(parent) = parent {
        // Refused only when no tracer is installed: then the parent is passed along as is.
        let _ = span.set_parent(
            opentelemetry::Context::new().with_remote_span_context(parent.span_context()),
        );
    }
    TraceParent::from_span_context(span.context().span().span_context())
}

#[cfg(not(feature = "otel"))]
fn continue_trace(_: &Span, _: Option<TraceParent>) -> Option<TraceParent> {
    None
}

/// Runs `work` in `span`, continuing the trace `parent` names (a new trace when `None` and
/// spans are traced). The span must declare an empty `trace_id` field: it is filled in, so
/// every log line of the work names its trace.
pub async fn within<F: Future>(span: Span, parent: Option<TraceParent>, work: F) -> F::Output {
    let traced = continue_trace(&span, parent);
    if let Some(trace) = traced.or(parent) {
        span.record("trace_id", tracing::field::display(trace.trace_id()));
    }
    INHERITED.scope(parent, work.instrument(span)).await
}

/// Runs one job of `queue` in its span (a consumer span named `process <queue>`), continuing
/// the trace its envelope carries. Without this process's tracer, a job outside any trace runs
/// bare: no span, no context lookup, no task-local scope (what tracing costs it is one load).
pub async fn job<F: Future>(
    queue: &'static str,
    parent: Option<TraceParent>,
    work: F,
) -> F::Output {
    if parent.is_none() && !tracer_installed() {
        return work.await;
    }
    let span = tracing::info_span!(
        "job",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        trace_id = tracing::field::Empty,
    );
    within(span, parent, work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_tracer_a_job_passes_its_callers_trace_along_and_none_outside_one() {
        let caller = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert!(!tracer_installed());
        assert_eq!(
            job("start", Some(caller), async { current() }).await,
            Some(caller)
        );
        assert_eq!(job("start", None, async { current() }).await, None);
    }
}
