//! The apalis backend over our Redis queue: feeds a worker, finishes its jobs.
//!
//! A background fetcher reads the ready stream with a blocking `XREADGROUP` on a connection of
//! its own and hands decoded jobs to the worker through a small channel (so at most
//! `queue.fetch_batch` jobs wait fetched-but-not-started). A job that cannot be decoded is
//! dead-lettered there and never reaches the worker. A heartbeat keeps every entry this
//! process holds fresh. Completion is an [`Acknowledge`] layer the backend installs itself,
//! so every handler's result (including errors from panics and timeouts) ends in exactly one
//! atomic Redis step: finish, reschedule or bury.

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
use redis::{aio::ConnectionManager, streams::StreamReadReply, AsyncCommands};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    envelope::{decode, Envelope, Job},
    keys::{QueueKeys, GROUP},
    now_ms, scripts, unix_ms, Queue,
};

/// What a handler reports when it finished without error.
#[derive(Debug, Clone)]
pub enum Completion<A> {
    /// Done: the job leaves the queue.
    Done,
    /// Not yet: run the job again at `at` with `args`. Waiting is not failure, so attempts
    /// are reset and the retry deadline starts again.
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
}

impl Delivery {
    /// Unix ms after which a failing job is dead-lettered instead of retried.
    pub fn deadline_ms(&self) -> u64 {
        self.envelope.deadline_ms
    }

    /// Whether failing now with `error` would dead-letter the job (so the handler can tell
    /// the world first).
    pub fn failure_is_final(
        &self,
        error: &JobError,
        settings: &crate::settings::QueueSettings,
    ) -> bool {
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
    fn hold(&self, id: &str) {
        self.held
            .lock()
            .expect("held-set lock is never poisoned")
            .insert(id.to_owned());
    }
    fn release(&self, id: &str) -> bool {
        self.held
            .lock()
            .expect("held-set lock is never poisoned")
            .remove(id)
    }
    fn holds(&self, id: &str) -> bool {
        self.held
            .lock()
            .expect("held-set lock is never poisoned")
            .contains(id)
    }
    fn snapshot(&self) -> Vec<String> {
        self.held
            .lock()
            .expect("held-set lock is never poisoned")
            .iter()
            .cloned()
            .collect()
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
        if self.rx.is_some() {
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
        let mut invocation = scripts::REQUEUE.key(&keys.ready);
        invocation.arg(GROUP).arg(0).arg(consumer);
        for id in &ids {
            invocation.arg(id);
        }
        match invocation.invoke_async::<Vec<String>>(&mut conn).await {
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
    let pending: redis::RedisResult<redis::streams::StreamPendingReply> =
        conn.xpending(&keys.ready, GROUP).await;
    let none_pending_for_us = match pending {
        Ok(redis::streams::StreamPendingReply::Data(d)) => {
            !d.consumers.iter().any(|c| c.name == consumer)
        }
        Ok(_) => true,
        Err(_) => false,
    };
    if none_pending_for_us {
        let _: redis::RedisResult<i64> =
            conn.xgroup_delconsumer(&keys.ready, GROUP, consumer).await;
    }
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
        let mut conn: Option<ConnectionManager> = None;
        let mut backoff = Backoff::new();
        while !self.shared.closing.load(Ordering::SeqCst) {
            // Wait for room, then ask for as many jobs as there is room for.
            let Ok(permit) = self.tx.reserve().await else {
                return;
            };
            drop(permit);
            let count = self.tx.capacity().max(1);
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match super::connect(self.queue.redis_url()).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::warn!(error = %e, queue = A::QUEUE, "cannot connect to redis; retrying");
                        backoff.wait().await;
                        continue;
                    }
                },
            };
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
        let field = |name: &str| -> Option<String> {
            entry
                .map
                .get(name)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        };
        let raw = field("j").unwrap_or_default();
        let abandoned: u32 = field("d").and_then(|d| d.parse().ok()).unwrap_or(0);
        self.shared.hold(&entry.id);
        match decode::<A>(&raw) {
            Ok((envelope, args)) => {
                let delivery = Delivery {
                    entry_id: entry.id.clone(),
                    job_id: envelope.id.clone(),
                    attempt: envelope.attempt,
                    abandoned,
                    envelope: Arc::new(envelope),
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
                let job_id = envelope.as_ref().map(|e| e.id.clone()).unwrap_or_default();
                let attempts = envelope.as_ref().map(|e| e.attempt).unwrap_or(0);
                bury(
                    &self.queue,
                    &self.keys,
                    &raw,
                    &error.to_string(),
                    &job_id,
                    attempts,
                    Some(&entry.id),
                )
                .await;
                self.shared.release(&entry.id);
            }
        }
    }
}

pub(super) async fn ensure_group(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> =
        conn.xgroup_create_mkstream(&keys.ready, GROUP, "0").await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Keeps this consumer's entries fresh; forgets the ones another consumer took.
async fn heartbeat(queue: Queue, keys: QueueKeys, consumer: String, shared: Arc<Shared>) {
    let every = queue.settings().reclaim_after / 3;
    let mut conn = queue.connection();
    loop {
        tokio::time::sleep(every).await;
        let ids = shared.snapshot();
        if ids.is_empty() {
            continue;
        }
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
            Err(e) => tracing::warn!(error = %e, "refreshing held jobs failed; retrying next beat"),
        }
    }
}

/// Finishes each job by the handler's result. Installed by the backend as its middleware.
pub struct Finisher<A> {
    queue: Queue,
    keys: QueueKeys,
    shared: Arc<Shared>,
    _job: PhantomData<fn() -> A>,
}

impl<A> Clone for Finisher<A> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            keys: self.keys.clone(),
            shared: self.shared.clone(),
            _job: PhantomData,
        }
    }
}

/// The step that ends one delivery.
enum Finish {
    Done,
    Schedule { at_ms: u64, envelope: Envelope },
    Bury { reason: String },
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

fn decide<A: Job>(
    delivery: &Delivery,
    res: &Result<Completion<A>, BoxDynError>,
    settings: &crate::settings::QueueSettings,
) -> Finish {
    let now = now_ms();
    match res {
        Ok(Completion::Done) => Finish::Done,
        Ok(Completion::RunAgain { at, args }) => match serde_json::value::to_raw_value(args) {
            Ok(raw) => Finish::Schedule {
                at_ms: unix_ms(*at),
                envelope: Envelope {
                    v: A::VERSION,
                    id: delivery.job_id.clone(),
                    attempt: 0,
                    deadline_ms: now + settings.job_deadline.as_millis() as u64,
                    args: raw,
                },
            },
            Err(e) => Finish::Bury {
                reason: format!("cannot encode the next run: {e}"),
            },
        },
        Err(error) => match error.downcast_ref::<JobError>() {
            Some(job_error) => decide_failure(delivery, job_error, settings),
            None => decide_failure(
                delivery,
                &JobError::Retry {
                    reason: error.to_string(),
                    after: None,
                },
                settings,
            ),
        },
    }
}

fn decide_failure(
    delivery: &Delivery,
    error: &JobError,
    settings: &crate::settings::QueueSettings,
) -> Finish {
    let (reason, after, attempt) = match error {
        JobError::Fatal(reason) => {
            return Finish::Bury {
                reason: reason.clone(),
            }
        }
        JobError::Retry { reason, after } => {
            let attempt = delivery.attempt + 1;
            (
                reason,
                after.unwrap_or_else(|| retry_delay(attempt, settings)),
                attempt,
            )
        }
        JobError::Wait { reason, after } => (reason, *after, delivery.attempt),
    };
    let at_ms = now_ms() + after.as_millis() as u64;
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
        Finish::Schedule { at_ms, envelope }
    }
}

/// Exponential backoff for failed attempts: `retry_min · 2^(attempt-1)`, capped.
fn retry_delay(attempt: u32, settings: &crate::settings::QueueSettings) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    settings
        .retry_min
        .saturating_mul(factor)
        .min(settings.retry_max)
}

impl<A: Job> Finisher<A> {
    /// Applies the finishing step, retrying Redis errors for a while. If Redis stays away
    /// the entry is let go: it stays pending and is reclaimed later (at-least-once).
    async fn apply(&self, delivery: &Delivery, finish: Finish) {
        let mut backoff = Backoff::new();
        let give_up = tokio::time::Instant::now() + self.queue.settings().reclaim_after;
        loop {
            let result = self.try_apply(delivery, &finish).await;
            match result {
                Ok(()) => break,
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
            Finish::Done => {
                redis::pipe()
                    .xack(&self.keys.ready, GROUP, &[&delivery.entry_id])
                    .ignore()
                    .xdel(&self.keys.ready, &[&delivery.entry_id])
                    .ignore()
                    .query_async(&mut conn)
                    .await
            }
            Finish::Schedule { at_ms, envelope } => scripts::SCHEDULE
                .key(&self.keys.delayed)
                .key(&self.keys.payloads)
                .key(&self.keys.ready)
                .arg(&envelope.id)
                .arg(*at_ms)
                .arg(envelope.encode())
                .arg(&delivery.entry_id)
                .arg(GROUP)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(drop),
            Finish::Bury { reason } => {
                tracing::warn!(queue = A::QUEUE, job = %delivery.job_id, %reason, "job dead-lettered");
                bury_once(
                    &self.queue,
                    &self.keys,
                    &delivery.envelope.encode(),
                    reason,
                    &delivery.job_id,
                    delivery.attempt + 1,
                    Some(&delivery.entry_id),
                )
                .await
            }
        }
    }
}

/// Dead-letters a job, retrying Redis errors briefly; logs if it cannot.
pub(super) async fn bury(
    queue: &Queue,
    keys: &QueueKeys,
    payload: &str,
    reason: &str,
    job_id: &str,
    attempts: u32,
    entry: Option<&str>,
) {
    let mut backoff = Backoff::new();
    for _ in 0..10 {
        match bury_once(queue, keys, payload, reason, job_id, attempts, entry).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "dead-lettering failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

async fn bury_once(
    queue: &Queue,
    keys: &QueueKeys,
    payload: &str,
    reason: &str,
    job_id: &str,
    attempts: u32,
    entry: Option<&str>,
) -> redis::RedisResult<()> {
    let mut conn = queue.connection();
    let mut invocation = scripts::BURY.key(&keys.dead);
    invocation
        .key(&keys.ready)
        .arg(payload)
        .arg(reason)
        .arg(job_id)
        .arg(attempts)
        .arg(queue.settings().dead_max_len);
    if let Some(entry) = entry {
        invocation.arg(entry).arg(GROUP);
    }
    invocation.invoke_async::<i64>(&mut conn).await.map(drop)
}

/// Capped exponential backoff for Redis errors: 100 ms doubling to 5 s.
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
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }
}
