//! The apalis backend over our Redis queue: feeds a worker, finishes its jobs.
//!
//! A background fetcher reads the ready stream with a blocking `XREADGROUP` on a connection of
//! its own and hands decoded jobs to the worker through a small channel (so at most
//! `queue.fetch_batch` jobs wait fetched-but-not-started). A job that cannot be decoded is
//! dead-lettered there and never reaches the worker. A heartbeat keeps every entry this
//! process holds fresh, and gives back entries Redis delivered to us but we never received
//! (a reply lost with a dropped connection). Completion is an [`Acknowledge`] layer the
//! backend installs itself, so every handler's result (including errors from panics and
//! timeouts) ends in exactly one atomic Redis step: finish, reschedule or bury.
//!
//! If the consumer group itself is lost (Redis restarted without persistence), it is
//! recreated at the start of the stream: every entry still there is delivered again, the
//! at-least-once choice.

use std::{
    collections::HashSet,
    marker::PhantomData,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use apalis_core::{
    backend::{finalize::Ephemeral, Backend, BackendConfig},
    error::BoxDynError,
    task::{ExecutionContext, Task},
    worker::{
        context::WorkerContext,
        ext::ack::{Acknowledge, AcknowledgeLayer},
    },
};
use futures_util::{future::BoxFuture, FutureExt};
use redis::{streams::StreamReadReply, AsyncCommands};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    envelope::{decode, Envelope, Job},
    keys::{QueueKeys, GROUP},
    now_ms, scripts, unix_ms, Queue,
};
use crate::settings::QueueSettings;

/// What a handler reports when it finished without error.
#[derive(Debug, Clone)]
pub enum Completion<A> {
    /// Done: the job leaves the queue.
    Done,
    /// Not yet: run the job again at `at` with `args`. Waiting is not failure, so attempts
    /// are reset and the retry deadline starts again from `at`.
    RunAgain { at: SystemTime, args: A },
}

/// A handler's failure, saying whether it is worth another attempt.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient: try again, after `after` when the cause said so (e.g. `Retry-After`),
    /// else after the queue's exponential backoff. Counts an attempt.
    #[error("{reason}")]
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Transient but not the job's fault (Didit's 429 or 5xx): try again after `after`
    /// without counting an attempt; only the job's deadline bounds it.
    #[error("{reason}")]
    Wait { reason: String, after: Duration },
    /// Permanent: dead-letter now with this reason.
    #[error("{0}")]
    Fatal(String),
}

/// Where a running job came from; handlers can read it with `Data<Delivery>`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub entry_id: String,
    pub job_id: String,
    /// Failed attempts before this one.
    pub attempt: u32,
    /// How many times a dead process abandoned this job before.
    pub abandoned: u32,
    envelope: Arc<Envelope>,
    received: std::time::Instant,
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
        matches!(decide_failure(self, error, settings), Finish::Bury { .. })
    }
}

/// State shared by the backend, its fetcher, heartbeat and acknowledger.
struct Shared {
    /// Entry ids this consumer holds (fetched, running or waiting to start).
    held: Mutex<HashSet<String>>,
    closing: AtomicBool,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Every critical section is a single insert/remove/clone: a panic cannot leave the
        // set half-updated, so a poisoned lock still holds consistent data.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Records an entry as held; `false` when it already was (a redelivery after the group
    /// was recreated must not run a job this process already runs).
    fn hold(&self, id: &str) -> bool {
        self.held().insert(id.to_owned())
    }
    fn release(&self, id: &str) -> bool {
        self.held().remove(id)
    }
    fn holds(&self, id: &str) -> bool {
        self.held().contains(id)
    }
    fn snapshot(&self) -> Vec<String> {
        self.held().iter().cloned().collect()
    }
}

/// A worker's source of jobs of type `A`. One per worker; each process start uses a new
/// consumer name.
pub struct RedisBackend<A: Job> {
    queue: Queue,
    keys: QueueKeys,
    consumer: String,
    shared: Arc<Shared>,
    rx: Option<mpsc::Receiver<Task<A>>>,
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
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl<A: Job> RedisBackend<A> {
    /// A backend reading `A::QUEUE` as `consumer` (unique per process start).
    pub fn new(queue: Queue, consumer: impl Into<String>) -> Self {
        Self {
            keys: queue.keys(A::QUEUE),
            queue,
            consumer: consumer.into(),
            shared: Arc::new(Shared {
                held: Mutex::new(HashSet::new()),
                closing: AtomicBool::new(false),
            }),
            rx: None,
            tasks: Vec::new(),
            closing: None,
            _job: PhantomData,
        }
    }

    /// Starts the fetcher and heartbeat on the first poll (inside the worker's runtime).
    fn start(&mut self) {
        if self.rx.is_some() || self.closing.is_some() {
            return;
        }
        let batch = self.queue.settings().fetch_batch.max(1);
        let (tx, rx) = mpsc::channel(batch);
        self.rx = Some(rx);
        let fetcher = Fetcher::<A> {
            queue: self.queue.clone(),
            keys: self.keys.clone(),
            consumer: self.consumer.clone(),
            shared: self.shared.clone(),
            tx,
        };
        self.tasks.push(tokio::spawn(fetcher.run()));
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
            // Wakes a fetcher waiting for room; it then stops after its current read.
            rx.close();
        }
        let tasks = std::mem::take(&mut self.tasks);
        let queue = self.queue.clone();
        let keys = self.keys.clone();
        let consumer = self.consumer.clone();
        let shared = self.shared.clone();
        async move {
            let mut tasks = tasks.into_iter();
            if let Some(fetcher) = tasks.next() {
                let _ = fetcher.await;
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
    conn: &mut crate::queue::RedisConnection,
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

struct Fetcher<A: Job> {
    queue: Queue,
    keys: QueueKeys,
    consumer: String,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Task<A>>,
}

impl<A: Job> Fetcher<A> {
    async fn run(self) {
        // A connection of its own: a blocking read must not hold up the shared one.
        let mut conn = self.queue.connector().connect();
        let mut backoff = Backoff::new();
        while !self.shared.closing.load(Ordering::SeqCst) {
            // Wait for room, then ask for as many jobs as there is room for.
            let Ok(permit) = self.tx.reserve().await else {
                return;
            };
            drop(permit);
            let count = self.tx.capacity().max(1);
            let c = &mut conn;
            let options = redis::streams::StreamReadOptions::default()
                .group(GROUP, &self.consumer)
                .count(count)
                .block(self.queue.settings().fetch_block.as_millis() as usize);
            let reply: redis::RedisResult<StreamReadReply> =
                c.xread_options(&[&self.keys.ready], &[">"], &options).await;
            match reply {
                Ok(reply) => {
                    backoff.reset();
                    for key in reply.keys {
                        for entry in key.ids {
                            self.deliver(entry).await;
                        }
                    }
                }
                Err(e) if e.code() == Some("NOGROUP") => {
                    if let Err(e) = ensure_group(c, &self.keys).await {
                        tracing::warn!(error = %e, "cannot create consumer group; retrying");
                        backoff.wait().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = A::QUEUE, "reading jobs failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    async fn deliver(&self, entry: redis::streams::StreamId) {
        let field = |name: &str| -> Option<String> { stream_field(&entry, name) };
        if !self.shared.hold(&entry.id) {
            return;
        }
        let raw = field("j").unwrap_or_default();
        let abandoned: u32 = field("d").and_then(|d| d.parse().ok()).unwrap_or(0);
        let replayed = field("r").is_some();
        match decode::<A>(&raw) {
            Ok((mut envelope, args)) => {
                if replayed {
                    envelope.attempt = 0;
                    envelope.deadline_ms = deadline_from(now_ms(), self.queue.settings());
                }
                let delivery = Delivery {
                    entry_id: entry.id.clone(),
                    job_id: envelope.id.clone(),
                    attempt: envelope.attempt,
                    abandoned,
                    envelope: Arc::new(envelope),
                    received: std::time::Instant::now(),
                };
                let mut task = Task::new(args);
                task.inject_data(delivery);
                if self.tx.send(task).await.is_err() {
                    // The worker is closing: the entry stays held and close() gives it back.
                    tracing::debug!("worker channel closed while delivering");
                }
            }
            Err((envelope, error)) => {
                tracing::warn!(queue = A::QUEUE, entry = %entry.id, error = %error, "undecodable job dead-lettered");
                let burial = Burial {
                    payload: &raw,
                    reason: &error.to_string(),
                    job_id: envelope.as_ref().map(|e| e.id.as_str()).unwrap_or_default(),
                    attempts: envelope.as_ref().map(|e| e.attempt).unwrap_or(0),
                    entry_id: &entry.id,
                    consumer: &self.consumer,
                };
                bury(&self.queue, &self.keys, &burial).await;
                self.shared.release(&entry.id);
            }
        }
    }
}

/// A text field of a stream entry.
pub(super) fn stream_field(entry: &redis::streams::StreamId, name: &str) -> Option<String> {
    entry
        .map
        .get(name)
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
}

pub(super) async fn ensure_group(
    conn: &mut crate::queue::RedisConnection,
    keys: &QueueKeys,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> =
        conn.xgroup_create_mkstream(&keys.ready, GROUP, "0").await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Keeps this consumer's entries fresh, forgets the ones another consumer took, and gives
/// back entries pending for us that we never received.
async fn heartbeat(queue: Queue, keys: QueueKeys, consumer: String, shared: Arc<Shared>) {
    let every = queue.settings().reclaim_after / 3;
    let mut conn = queue.connection();
    loop {
        tokio::time::sleep(every).await;
        let ids = shared.snapshot();
        if !ids.is_empty() {
            let mut invocation = scripts::REFRESH.key(&keys.ready);
            invocation.arg(GROUP).arg(&consumer);
            for id in &ids {
                invocation.arg(id);
            }
            match invocation.invoke_async::<Vec<String>>(&mut conn).await {
                Ok(lost) => {
                    for id in lost {
                        if shared.release(&id) {
                            tracing::warn!(queue = %keys.ready, entry = %id, "a job this process held was reclaimed by another consumer");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refreshing held jobs failed; retrying next beat")
                }
            }
        }
        if let Err(e) = recover_unreceived(&mut conn, &keys, &consumer, &shared, every).await {
            tracing::debug!(error = %e, "checking for unreceived deliveries failed");
        }
    }
}

/// Entries Redis delivered to this consumer whose reply never arrived (a dropped
/// connection) are pending for us but held by nobody: give them back now rather than wait
/// for a reclaim that would count them as abandoned.
async fn recover_unreceived(
    conn: &mut crate::queue::RedisConnection,
    keys: &QueueKeys,
    consumer: &str,
    shared: &Shared,
    idle: Duration,
) -> redis::RedisResult<()> {
    let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&keys.ready)
        .arg(GROUP)
        .arg("IDLE")
        .arg(idle.as_millis() as u64)
        .arg("-")
        .arg("+")
        .arg(100)
        .arg(consumer)
        .query_async(conn)
        .await?;
    let unreceived: Vec<String> = pending
        .ids
        .into_iter()
        .map(|p| p.id)
        .filter(|id| !shared.holds(id))
        .collect();
    if !unreceived.is_empty() {
        let moved = requeue(conn, keys, consumer, &unreceived, false).await?;
        tracing::warn!(queue = %keys.ready, given_back = moved.len(), "returned deliveries this process never received");
    }
    Ok(())
}

/// Finishes each job by the handler's result. Installed by the backend as its middleware.
pub struct Finisher<A> {
    queue: Queue,
    keys: QueueKeys,
    consumer: String,
    shared: Arc<Shared>,
    _job: PhantomData<fn() -> A>,
}

impl<A> Clone for Finisher<A> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            keys: self.keys.clone(),
            consumer: self.consumer.clone(),
            shared: self.shared.clone(),
            _job: PhantomData,
        }
    }
}

/// The step that ends one delivery.
enum Finish {
    Done,
    /// `outcome` is the `kyc_jobs_total` label: run_again, retried or waited.
    Schedule {
        at_ms: u64,
        envelope: Envelope,
        outcome: &'static str,
    },
    Bury {
        reason: String,
    },
}

impl Finish {
    fn outcome(&self) -> &'static str {
        match self {
            Finish::Done => "done",
            Finish::Schedule { outcome, .. } => outcome,
            Finish::Bury { .. } => "dead",
        }
    }
}

impl<A: Job> Acknowledge<Completion<A>> for Finisher<A> {
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<(), Self::Error>>;

    fn ack(
        &mut self,
        res: &Result<Completion<A>, BoxDynError>,
        ctx: &ExecutionContext,
    ) -> Self::Future {
        let Some(delivery) = ctx.data().get::<Delivery>().cloned() else {
            return futures_util::future::ready(Ok(())).boxed();
        };
        let finish = decide(&delivery, res, self.queue.settings());
        let this = self.clone();
        async move {
            this.apply(&delivery, finish).await;
            Ok(())
        }
        .boxed()
    }
}

/// The retry deadline of a job that becomes due at `from_ms`.
fn deadline_from(from_ms: u64, settings: &QueueSettings) -> u64 {
    from_ms.saturating_add(settings.job_deadline.as_millis() as u64)
}

fn decide<A: Job>(
    delivery: &Delivery,
    res: &Result<Completion<A>, BoxDynError>,
    settings: &QueueSettings,
) -> Finish {
    match res {
        Ok(Completion::Done) => Finish::Done,
        Ok(Completion::RunAgain { at, args }) => match serde_json::value::to_raw_value(args) {
            Ok(raw) => {
                let at_ms = unix_ms(*at);
                Finish::Schedule {
                    at_ms,
                    envelope: Envelope {
                        v: A::VERSION,
                        id: delivery.job_id.clone(),
                        attempt: 0,
                        deadline_ms: deadline_from(at_ms, settings),
                        // The next run stays in the same trace as this one.
                        trace: delivery.envelope.trace,
                        args: raw,
                    },
                    outcome: "run_again",
                }
            }
            Err(e) => Finish::Bury {
                reason: format!("cannot encode the next run: {e}"),
            },
        },
        Err(error) => {
            let retry;
            let job_error = match error.downcast_ref::<JobError>() {
                Some(job_error) => job_error,
                None => {
                    retry = JobError::Retry {
                        reason: error.to_string(),
                        after: None,
                    };
                    &retry
                }
            };
            let finish = decide_failure(delivery, job_error, settings);
            if let (
                JobError::Retry { reason, .. },
                Finish::Schedule {
                    at_ms, envelope, ..
                },
            ) = (job_error, &finish)
            {
                // Every retry says why, with ids only: a reason is an error's text (Redis's,
                // Didit's status and field names), never a record's values.
                tracing::warn!(
                    queue = A::QUEUE,
                    job = %delivery.job_id,
                    attempt = envelope.attempt,
                    retry_in_ms = at_ms.saturating_sub(now_ms()),
                    reason = %reason,
                    "job failed; retrying"
                );
            }
            finish
        }
    }
}

fn decide_failure(delivery: &Delivery, error: &JobError, settings: &QueueSettings) -> Finish {
    let (reason, after, attempt, outcome) = match error {
        JobError::Fatal(reason) => {
            return Finish::Bury {
                reason: reason.clone(),
            }
        }
        JobError::Retry { reason, after } => {
            let attempt = delivery.attempt + 1;
            let after = after.unwrap_or_else(|| retry_delay(attempt, settings));
            (reason, after, attempt, "retried")
        }
        JobError::Wait { reason, after } => (reason, *after, delivery.attempt, "waited"),
    };
    let at_ms = now_ms().saturating_add(after.as_millis().min(u128::from(u64::MAX)) as u64);
    if attempt >= settings.max_attempts {
        Finish::Bury {
            reason: format!("retries exhausted after {attempt} attempts: {reason}"),
        }
    } else if at_ms > delivery.envelope.deadline_ms {
        Finish::Bury {
            reason: format!("retry deadline passed after {attempt} attempts: {reason}"),
        }
    } else {
        let mut envelope = (*delivery.envelope).clone();
        envelope.attempt = attempt;
        Finish::Schedule {
            at_ms,
            envelope,
            outcome,
        }
    }
}

/// Exponential backoff for failed attempts, `retry_min · 2^(attempt-1)` capped at
/// `retry_max`, moved by up to ±20 % so jobs that failed together do not retry in lockstep.
fn retry_delay(attempt: u32, settings: &QueueSettings) -> Duration {
    use rand::Rng;
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    let base = settings
        .retry_min
        .saturating_mul(factor)
        .min(settings.retry_max);
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

impl<A: Job> Finisher<A> {
    /// Applies the finishing step, retrying Redis errors for a while. Every step is
    /// idempotent (it acts only on an entry still pending for us), so a retry after a lost
    /// reply is safe. If Redis stays away the entry is let go: it stays pending and is
    /// reclaimed later (at-least-once).
    async fn apply(&self, delivery: &Delivery, finish: Finish) {
        let mut backoff = Backoff::new();
        let give_up = tokio::time::Instant::now() + self.queue.settings().reclaim_after;
        loop {
            match self.try_apply(delivery, &finish).await {
                Ok(()) => {
                    if let Some(m) = self.queue.metrics() {
                        m.jobs
                            .with_label_values(&[A::QUEUE, finish.outcome()])
                            .inc();
                        m.job_duration
                            .with_label_values(&[A::QUEUE])
                            .observe(delivery.received.elapsed().as_secs_f64());
                    }
                    break;
                }
                Err(e) if tokio::time::Instant::now() < give_up => {
                    tracing::warn!(error = %e, queue = A::QUEUE, "finishing a job failed; retrying");
                    backoff.wait().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, queue = A::QUEUE, entry = %delivery.entry_id, "could not finish a job; it will be reclaimed and run again");
                    break;
                }
            }
        }
        self.shared.release(&delivery.entry_id);
    }

    async fn try_apply(&self, delivery: &Delivery, finish: &Finish) -> redis::RedisResult<()> {
        let mut conn = self.queue.connection();
        match finish {
            // Two commands, not a script: the cheapest finish. Should XDEL be lost after
            // XACK, maintenance trims acknowledged entries (see `maintenance::trim_finished`).
            Finish::Done => {
                redis::pipe()
                    .xack(&self.keys.ready, GROUP, &[&delivery.entry_id])
                    .ignore()
                    .xdel(&self.keys.ready, &[&delivery.entry_id])
                    .ignore()
                    .query_async(&mut conn)
                    .await
            }
            Finish::Schedule {
                at_ms, envelope, ..
            } => {
                let applied: i64 = scripts::RESCHEDULE
                    .key(&self.keys.delayed)
                    .key(&self.keys.payloads)
                    .key(&self.keys.ready)
                    .arg(&envelope.id)
                    .arg(*at_ms)
                    .arg(envelope.encode())
                    .arg(&delivery.entry_id)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .invoke_async(&mut conn)
                    .await?;
                if applied == 0 {
                    tracing::warn!(queue = A::QUEUE, entry = %delivery.entry_id, "another consumer took this job meanwhile; it continues there");
                }
                Ok(())
            }
            Finish::Bury { reason } => {
                tracing::warn!(queue = A::QUEUE, job = %delivery.job_id, %reason, "job dead-lettered");
                let payload = delivery.envelope.encode();
                let burial = Burial {
                    payload: &payload,
                    reason,
                    job_id: &delivery.job_id,
                    attempts: delivery.attempt + 1,
                    entry_id: &delivery.entry_id,
                    consumer: &self.consumer,
                };
                bury_once(&self.queue, &self.keys, &burial).await
            }
        }
    }
}

/// One dead-lettering: the delivery and why it cannot run.
pub(super) struct Burial<'a> {
    /// The stored envelope, or undecodable text as it was.
    pub payload: &'a str,
    pub reason: &'a str,
    pub job_id: &'a str,
    pub attempts: u32,
    pub entry_id: &'a str,
    /// The consumer the entry is pending for.
    pub consumer: &'a str,
}

/// Dead-letters a delivery, retrying Redis errors briefly (the script is idempotent).
pub(super) async fn bury(queue: &Queue, keys: &QueueKeys, burial: &Burial<'_>) {
    let mut backoff = Backoff::new();
    for _ in 0..10 {
        match bury_once(queue, keys, burial).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "dead-lettering failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

async fn bury_once(queue: &Queue, keys: &QueueKeys, b: &Burial<'_>) -> redis::RedisResult<()> {
    let mut conn = queue.connection();
    scripts::BURY
        .key(&keys.dead)
        .key(&keys.ready)
        .arg(b.payload)
        .arg(b.reason)
        .arg(b.job_id)
        .arg(b.attempts)
        .arg(queue.settings().dead_max_len)
        .arg(b.entry_id)
        .arg(GROUP)
        .arg(b.consumer)
        .invoke_async::<i64>(&mut conn)
        .await
        .map(drop)
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
