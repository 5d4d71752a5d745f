//! The apalis backend over our Redis queue: feeds a worker, finishes its jobs.
//!
//! apalis runs the workers (concurrency, panics, graceful shutdown); this is the seam where
//! it meets our storage, through apalis-core's `Backend` and `BackendConfig` (see
//! `docs/adr/0001-queue-backend.md`). Fetching lives in [`super::fetch`], finishing in
//! [`super::finish`] (installed here as the worker's acknowledgement layer), and what
//! becomes of a failed job in [`super::retry`].
//!
//! If the consumer group itself is lost (Redis restarted without persistence), it is
//! recreated at the start of the stream: every entry still there is delivered again, the
//! at-least-once choice.

use std::{
    collections::HashSet,
    marker::PhantomData,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::{
    backend::{finalize::Ephemeral, Backend, BackendConfig},
    task::Task,
    worker::{context::WorkerContext, ext::ack::AcknowledgeLayer},
};
use futures_util::{future::BoxFuture, FutureExt};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    envelope::{Envelope, Job},
    fetch::{attach, heartbeat, Feed, Reader},
    finish::Finisher,
    keys::{QueueKeys, GROUP},
    retry::{JobError, RetryPolicy, Verdict},
    scripts, Queue,
};
use crate::settings::QueueSettings;

/// Where a running job came from; handlers can read it with `Data<Delivery>`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub entry_id: String,
    pub job_id: String,
    /// Failed attempts before this one.
    pub attempt: u32,
    /// How many times a dead process abandoned this job before.
    pub abandoned: u32,
    pub(super) envelope: Arc<Envelope>,
    pub(super) received: std::time::Instant,
    /// This delivery's backoff jitter, drawn once so every question about its failure
    /// (here and in the finisher) gets the same answer.
    pub(super) jitter: f64,
}

impl Delivery {
    /// Unix ms after which a failing job is dead-lettered instead of retried.
    pub fn deadline_ms(&self) -> u64 {
        self.envelope.deadline_ms
    }

    /// The trace the job continues (its envelope's `traceparent`).
    pub fn trace(&self) -> Option<crate::telemetry::TraceParent> {
        self.envelope.trace
    }

    /// Whether failing now with `error` would dead-letter the job (so the handler can tell
    /// the world first).
    pub fn failure_is_final(&self, error: &JobError, settings: &QueueSettings) -> bool {
        matches!(self.verdict(error, settings), Verdict::Bury { .. })
    }

    /// The retry policy's verdict on this delivery failing now with `error`.
    pub(super) fn verdict(&self, error: &JobError, settings: &QueueSettings) -> Verdict {
        RetryPolicy::from_settings(settings).after_failure(
            self.attempt,
            self.envelope.deadline_ms,
            error,
            super::now_ms(),
            self.jitter,
        )
    }
}

/// State shared by the backend, its lane in the process's reader, heartbeat and
/// acknowledger.
pub(super) struct Shared {
    /// Entry ids this consumer holds (fetched, running or waiting to start).
    held: Mutex<HashSet<String>>,
    pub(super) closing: AtomicBool,
    /// Heartbeats that must still look for deliveries we never received: set after a failed
    /// read (its reply may have carried jobs); two checks, because a lost delivery becomes
    /// visible to the check only once it has been idle for a heartbeat period.
    unreceived_checks: AtomicU8,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Every critical section is a single insert/remove/clone: a panic cannot leave the
        // set half-updated, so a poisoned lock still holds consistent data.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Records an entry as held; `false` when it already was (a redelivery after the group
    /// was recreated must not run a job this process already runs).
    pub(super) fn hold(&self, id: &str) -> bool {
        self.held().insert(id.to_owned())
    }
    pub(super) fn release(&self, id: &str) -> bool {
        self.held().remove(id)
    }
    pub(super) fn holds(&self, id: &str) -> bool {
        self.held().contains(id)
    }
    pub(super) fn snapshot(&self) -> Vec<String> {
        self.held().iter().cloned().collect()
    }
    pub(super) fn suspect_unreceived(&self) {
        self.unreceived_checks.store(2, Ordering::SeqCst);
    }
    pub(super) fn unreceived_check_due(&self) -> bool {
        self.unreceived_checks.load(Ordering::SeqCst) > 0
    }
    pub(super) fn unreceived_checked(&self) {
        let _ = self
            .unreceived_checks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// A worker's source of jobs of type `A`. One per worker; each process start uses a new
/// consumer name, shared by all its workers: the workers of one consumer are fed by one
/// reader, one blocking read for all their queues.
pub struct RedisBackend<A: Job> {
    queue: Queue,
    keys: QueueKeys,
    consumer: String,
    shared: Arc<Shared>,
    rx: Option<mpsc::Receiver<Task<A>>>,
    /// The reader feeding this worker, once started.
    reader: Option<Arc<Reader>>,
    tasks: Vec<JoinHandle<()>>,
    closing: Option<BoxFuture<'static, ()>>,
    _job: PhantomData<A>,
}

impl<A: Job> std::fmt::Debug for RedisBackend<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("queue", &A::QUEUE)
            .field("consumer", &self.consumer)
            .finish()
    }
}

impl<A: Job> Drop for RedisBackend<A> {
    /// A backend dropped without a graceful close stops fetching and refreshing, so the
    /// jobs it held are reclaimed by others after `queue.reclaim_after`.
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(reader) = &self.reader {
            reader.wake();
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl<A: Job> RedisBackend<A> {
    /// A backend reading `A::QUEUE` as `consumer` (unique per process start; the same for
    /// every worker of the process, so one read serves them all).
    pub fn new(queue: Queue, consumer: impl Into<String>) -> Self {
        Self {
            keys: queue.keys(A::QUEUE),
            queue,
            consumer: consumer.into(),
            shared: Arc::new(Shared {
                held: Mutex::new(HashSet::new()),
                closing: AtomicBool::new(false),
                // A new consumer name has nothing pending, but a restarted worker reuses
                // its name: look once.
                unreceived_checks: AtomicU8::new(1),
            }),
            rx: None,
            reader: None,
            tasks: Vec::new(),
            closing: None,
            _job: PhantomData,
        }
    }

    /// Joins the process's reader and starts the heartbeat on the first poll (inside the
    /// worker's runtime).
    fn start(&mut self) {
        if self.rx.is_some() || self.closing.is_some() {
            return;
        }
        let batch = self.queue.settings().fetch_batch.max(1);
        let (tx, rx) = mpsc::channel(batch);
        self.rx = Some(rx);
        let feed = Feed::<A> {
            queue: self.queue.clone(),
            keys: self.keys.clone(),
            consumer: self.consumer.clone(),
            shared: self.shared.clone(),
            tx,
        };
        self.reader = Some(attach(&self.queue, &self.consumer, Arc::new(feed)));
        self.tasks.push(tokio::spawn(heartbeat(
            self.queue.clone(),
            self.keys.clone(),
            self.consumer.clone(),
            self.shared.clone(),
        )));
    }

    /// Stops fetching, gives fetched-but-unstarted jobs back, leaves the group.
    ///
    /// Called once every running job has finished (apalis drains its in-flight futures
    /// before closing the backend), so whatever this consumer still holds was never started.
    fn close(&mut self) -> BoxFuture<'static, ()> {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(rx) = self.rx.as_mut() {
            rx.close();
        }
        let tasks = std::mem::take(&mut self.tasks);
        let reader = self.reader.clone();
        let queue = self.queue.clone();
        let keys = self.keys.clone();
        let consumer = self.consumer.clone();
        let shared = self.shared.clone();
        async move {
            if let Some(reader) = reader {
                // The reader ends its blocked read (`CLIENT UNBLOCK`) and drops this lane;
                // after that nothing more can be delivered to us.
                reader.detach(&shared).await;
            }
            for task in tasks {
                task.abort();
            }
            give_back(&queue, &keys, &consumer, &shared, shared.snapshot()).await;
        }
        .boxed()
    }
}

/// Requeues entries this consumer holds but will not run, then removes the consumer.
async fn give_back(
    queue: &Queue,
    keys: &QueueKeys,
    consumer: &str,
    shared: &Shared,
    ids: Vec<String>,
) {
    let mut conn = queue.connection();
    if !ids.is_empty() {
        match requeue(&mut conn, keys, consumer, &ids, false).await {
            Ok(moved) => {
                tracing::info!(queue = %keys.ready, given_back = moved.len(), "returned unstarted jobs to the queue");
                for id in &ids {
                    shared.release(id);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not return unstarted jobs; they will be reclaimed")
            }
        }
    }
    let removed: redis::RedisResult<i64> = scripts::FORGET_CONSUMER
        .key(&keys.ready)
        .arg(GROUP)
        .arg(-1)
        .arg(consumer)
        .invoke_async(&mut conn)
        .await;
    if let Err(e) = removed {
        tracing::debug!(error = %e, "could not leave the consumer group; maintenance will remove us");
    }
}

/// Gives entries this consumer holds back to the queue (see [`scripts::REQUEUE`]).
pub(super) async fn requeue(
    conn: &mut super::RedisConnection,
    keys: &QueueKeys,
    consumer: &str,
    ids: &[String],
    abandoned: bool,
) -> redis::RedisResult<Vec<String>> {
    let mut invocation = scripts::REQUEUE.key(&keys.ready);
    invocation.arg(GROUP).arg(u8::from(abandoned)).arg(consumer);
    for id in ids {
        invocation.arg(id);
    }
    invocation.invoke_async(conn).await
}

impl<A: Job> Backend for RedisBackend<A> {
    type Task = Task<A>;
    type Error = std::convert::Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.start();
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.start();
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(task)) => {
                    // A job another consumer reclaimed while it waited here is theirs now.
                    let ours = task
                        .data()
                        .get::<Delivery>()
                        .is_some_and(|d| self.shared.holds(&d.entry_id));
                    if ours {
                        return Poll::Ready(Some(Ok(task)));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            self.closing = Some(self.close());
        }
        match self.closing.as_mut() {
            Some(fut) => fut.poll_unpin(cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<A: Job> BackendConfig for RedisBackend<A> {
    type Args = A;
    type Id = String;
    type Kind = Ephemeral;
    type Config = QueueKeys;
    type Layer = AcknowledgeLayer<Finisher<A>>;

    fn config(&self) -> &Self::Config {
        &self.keys
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        AcknowledgeLayer::new(Finisher {
            queue: self.queue.clone(),
            keys: self.keys.clone(),
            consumer: self.consumer.clone(),
            shared: self.shared.clone(),
            _job: PhantomData,
        })
    }
}
/// Capped exponential backoff for Redis errors: 100 ms doubling to 5 s, ±20 %.
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
    pub(super) fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
    pub(super) async fn wait(&mut self) {
        use rand::Rng;
        let pause = self.next.mul_f64(rand::rng().random_range(0.8..1.2));
        tokio::time::sleep(pause).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }
}
