//! Span export that can never hold up a job.
//!
//! Finished spans go into a bounded queue; a thread of its own takes them out in batches and
//! posts them to the OTLP receiver. When the receiver is slow or down the queue fills and
//! further spans are dropped on the spot (counted in `kyc_trace_spans_dropped_total`), so a
//! handler never waits for tracing; a batch whose export fails or times out is dropped and
//! counted too. The SDK's own batch processor is not used because it keeps its drop count to
//! itself.

use std::{
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{Span, SpanData, SpanExporter, SpanProcessor},
    Resource,
};
use prometheus::IntCounter;

/// Spans posted in one request at most.
const BATCH: usize = 512;
/// How long a finished span may wait for a fuller batch.
const LINGER: Duration = Duration::from_secs(1);

enum Message {
    Span(Box<SpanData>),
    Resource(Resource),
    Flush(mpsc::Sender<()>),
}

/// A [`SpanProcessor`] with a bounded queue in front of an exporter running on its own thread.
pub struct BoundedExport {
    queue: SyncSender<Message>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Set at shutdown: the last batches are exported until then, the rest dropped.
    shutdown_by: std::sync::Arc<Mutex<Option<Instant>>>,
    dropped: IntCounter,
}

impl std::fmt::Debug for BoundedExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedExport").finish_non_exhaustive()
    }
}

impl BoundedExport {
    /// Starts the export thread. `capacity` spans wait at most; `timeout` bounds one export.
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        capacity: usize,
        timeout: Duration,
        dropped: IntCounter,
    ) -> std::io::Result<Self> {
        let (queue, rx) = mpsc::sync_channel(capacity);
        let shutdown_by = std::sync::Arc::new(Mutex::new(None));
        let worker = Worker {
            exporter,
            rx,
            timeout,
            dropped: dropped.clone(),
            shutdown_by: shutdown_by.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("kyc-trace-export".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            queue,
            worker: Mutex::new(Some(handle)),
            shutdown_by,
            dropped,
        })
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (ack, done) = mpsc::channel();
        self.queue
            .try_send(Message::Flush(ack))
            .map_err(|_| OTelSdkError::InternalFailure("the export queue is full".into()))?;
        done.recv_timeout(Duration::from_secs(30))
            .map_err(|_| OTelSdkError::Timeout(Duration::from_secs(30)))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let Some(handle) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        *self.shutdown_by.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + timeout);
        // Wakes the worker; the queue's sender is closed when the processor is dropped.
        let (ack, _done) = mpsc::channel();
        let _ = self.queue.try_send(Message::Flush(ack));
        handle
            .join()
            .map_err(|_| OTelSdkError::InternalFailure("the export thread panicked".into()))
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Sent before any span: the queue is empty when the provider is built.
        let _ = self.queue.try_send(Message::Resource(resource.clone()));
    }
}

struct Worker<E> {
    exporter: E,
    rx: Receiver<Message>,
    timeout: Duration,
    dropped: IntCounter,
    shutdown_by: std::sync::Arc<Mutex<Option<Instant>>>,
}

impl<E: SpanExporter> Worker<E> {
    fn run(mut self) {
        // The exporter's HTTP client is async: a small runtime of this thread's own, never
        // the application's.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("trace export disabled: cannot start its runtime: {e}");
                return;
            }
        };
        let mut batch = Vec::with_capacity(BATCH);
        let mut oldest: Option<Instant> = None;
        loop {
            let wait = oldest.map_or(LINGER, |t| LINGER.saturating_sub(t.elapsed()));
            let closing = self.closing();
            match self.rx.recv_timeout(if closing.is_some() {
                Duration::ZERO
            } else {
                wait
            }) {
                Ok(Message::Span(span)) => {
                    oldest.get_or_insert_with(Instant::now);
                    batch.push(*span);
                    if batch.len() >= BATCH {
                        self.export(&runtime, &mut batch);
                        oldest = None;
                    }
                }
                Ok(Message::Resource(resource)) => self.exporter.set_resource(&resource),
                Ok(Message::Flush(ack)) => {
                    self.export(&runtime, &mut batch);
                    oldest = None;
                    let _ = ack.send(());
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.export(&runtime, &mut batch);
                    oldest = None;
                    if closing.is_some() {
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.export(&runtime, &mut batch);
                    break;
                }
            }
        }
        let _ = self.exporter.shutdown_with_timeout(self.timeout);
    }

    fn closing(&self) -> Option<Instant> {
        *self.shutdown_by.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Posts the batch; on failure or timeout its spans are dropped and counted.
    fn export(&self, runtime: &tokio::runtime::Runtime, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let n = spans.len() as u64;
        if self.closing().is_some_and(|by| Instant::now() >= by) {
            self.dropped.inc_by(n);
            return;
        }
        let sent = runtime.block_on(async {
            tokio::time::timeout(self.timeout, self.exporter.export(spans)).await
        });
        if !matches!(sent, Ok(Ok(()))) {
            self.dropped.inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{atomic::AtomicUsize, atomic::Ordering, Arc};

    /// An exporter that takes `delay` per batch and counts what it got.
    #[derive(Debug, Clone)]
    struct Slow {
        delay: Duration,
        fail: bool,
        exported: Arc<AtomicUsize>,
    }

    impl SpanExporter for Slow {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            tokio::time::sleep(self.delay).await;
            if self.fail {
                return Err(OTelSdkError::InternalFailure("down".into()));
            }
            self.exported.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    fn span() -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([1; 16]),
                SpanId::from_bytes([2; 8]),
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "s".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn a_stalled_receiver_drops_and_counts_instead_of_blocking() {
        let dropped = IntCounter::new("d", "d").expect("counter");
        let exported = Arc::new(AtomicUsize::new(0));
        let exporter = Slow {
            delay: Duration::from_secs(3),
            fail: false,
            exported: exported.clone(),
        };
        let processor =
            BoundedExport::start(exporter, 10, Duration::from_millis(200), dropped.clone())
                .expect("thread");
        let started = Instant::now();
        for _ in 0..1_000 {
            processor.on_end(span());
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "ending spans must not wait for the receiver: {:?}",
            started.elapsed()
        );
        assert!(dropped.get() >= 990 - BATCH as u64, "{}", dropped.get());
        processor
            .shutdown_with_timeout(Duration::from_millis(100))
            .expect("shutdown");
        // Every span is either exported or counted: the timed-out batch counts as dropped.
        assert_eq!(exported.load(Ordering::SeqCst), 0);
        assert_eq!(dropped.get(), 1_000);
    }

    #[test]
    fn a_failed_export_counts_its_spans_and_a_good_one_does_not() {
        for (fail, want_dropped, want_exported) in [(true, 5, 0), (false, 0, 5)] {
            let dropped = IntCounter::new("d", "d").expect("counter");
            let exported = Arc::new(AtomicUsize::new(0));
            let exporter = Slow {
                delay: Duration::ZERO,
                fail,
                exported: exported.clone(),
            };
            let processor =
                BoundedExport::start(exporter, 100, Duration::from_secs(1), dropped.clone())
                    .expect("thread");
            for _ in 0..5 {
                processor.on_end(span());
            }
            processor.force_flush().expect("flush");
            assert_eq!(dropped.get(), want_dropped);
            assert_eq!(exported.load(Ordering::SeqCst), want_exported);
            processor
                .shutdown_with_timeout(Duration::from_secs(1))
                .expect("shutdown");
        }
    }
}
