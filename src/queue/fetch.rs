//! Fetching: one reader per process reads the ready streams of all its queues with a single
//! blocking `XREADGROUP` and hands decoded jobs to each queue's worker; a heartbeat per
//! worker keeps what it holds from being taken away.
//!
//! Why one read for every queue: a read per queue made an idle process's Redis traffic grow
//! with the number of queues (one blocking read per queue per `queue.fetch_block`). The
//! [`Reader`] blocks on one connection of its own, as the process's consumer on every
//! stream, and dispatches what it gets to the right worker's channel.
//!
//! Backpressure: each worker takes jobs through a small channel (at most `queue.fetch_batch`
//! fetched but not started). A queue is part of the read only while its worker has room for
//! at least half a batch, and the read asks for no more entries per stream than the
//! emptiest of those workers has room for, so dispatching never waits and a full worker
//! never holds up the others: when a left-out worker has room again, or a worker joins or
//! leaves, the blocked read is ended with `CLIENT UNBLOCK` and issued again with the new
//! set. A job that cannot be decoded is dead-lettered here and never reaches the worker.
//! The heartbeat refreshes every held entry and gives back entries Redis delivered to us
//! but we never received (a reply lost with a dropped connection).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use apalis_core::task::Task;
use futures_util::future::BoxFuture;
use redis::{
    streams::{StreamId, StreamReadReply},
    AsyncCommands,
};
use tokio::sync::{mpsc, Notify};

use super::{
    backend::{requeue, Backoff, Delivery, Shared},
    envelope::{decode, Job},
    finish::{bury, Burial},
    keys::{QueueKeys, GROUP},
    now_ms, retry, scripts, Queue,
};

/// A process's readers by consumer name, shared by the clones of a [`Queue`]. Normally one:
/// every worker of a process reads as the process's consumer.
pub(super) type Readers = Arc<Mutex<HashMap<String, Vec<Arc<Reader>>>>>;

/// Every critical section on these locks is a push, a retain or a clone: a panic cannot
/// leave them half-updated, so a poisoned lock still holds consistent data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One queue's place in a reader: its stream, its worker's room, where its jobs go.
pub(super) trait Lane: Send + Sync {
    fn keys(&self) -> &QueueKeys;
    fn shared(&self) -> &Shared;
    /// Jobs the worker can take now without waiting.
    fn room(&self) -> usize;
    /// Resolves once the worker has room for `n` jobs, or is gone.
    fn room_for(&self, n: usize) -> BoxFuture<'_, ()>;
    /// Whether the worker stopped taking jobs (closing, or its channel is closed).
    fn gone(&self) -> bool;
    /// Hands one entry to the worker, or dead-letters it.
    fn deliver(&self, entry: StreamId) -> BoxFuture<'_, ()>;
}

/// The lane of a worker of jobs `A`.
pub(super) struct Feed<A: Job> {
    pub(super) queue: Queue,
    pub(super) keys: QueueKeys,
    pub(super) consumer: String,
    pub(super) shared: Arc<Shared>,
    pub(super) tx: mpsc::Sender<Task<A>>,
}

impl<A: Job> Lane for Feed<A> {
    fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn room(&self) -> usize {
        self.tx.capacity()
    }

    fn room_for(&self, n: usize) -> BoxFuture<'_, ()> {
        let n = n.clamp(1, self.tx.max_capacity());
        Box::pin(async move {
            // The permits go back at once: only the reader sends, and it asks Redis for no
            // more than there is room for.
            drop(self.tx.reserve_many(n).await);
        })
    }

    fn gone(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst) || self.tx.is_closed()
    }

    fn deliver(&self, entry: StreamId) -> BoxFuture<'_, ()> {
        Box::pin(self.deliver_entry(entry))
    }
}

impl<A: Job> Feed<A> {
    async fn deliver_entry(&self, entry: StreamId) {
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
                    envelope.deadline_ms = retry::RetryPolicy::from_settings(self.queue.settings())
                        .deadline_from(now_ms());
                }
                let delivery = Delivery {
                    entry_id: entry.id.clone(),
                    job_id: envelope.id.clone(),
                    attempt: envelope.attempt,
                    abandoned,
                    envelope: Arc::new(envelope),
                    received: std::time::Instant::now(),
                    jitter: retry::jitter(),
                };
                let mut task = Task::new(args);
                task.inject_data(delivery);
                // Never waits: the read asked for no more than the channel had room for,
                // and only the reader sends.
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

/// Reads the ready streams of every queue of one consumer with one blocking `XREADGROUP`
/// on a connection of its own (a blocking read must not hold up the shared one). Runs
/// while it has lanes; at most one lane per stream.
pub(super) struct Reader {
    queue: Queue,
    consumer: String,
    state: Mutex<ReaderState>,
    /// A lane joined or is leaving: end the blocked read and read again.
    changed: Notify,
    /// Lanes were removed (or the reader stopped).
    detached: Notify,
    /// The read connection's id on the server (0 when unknown), so a blocked read can be
    /// ended with `CLIENT UNBLOCK` instead of waiting up to `queue.fetch_block`.
    reader_id: AtomicI64,
}

struct ReaderState {
    lanes: Vec<Arc<dyn Lane>>,
    /// Set once, when the reader has no lane left or its task ended: it takes no new lane.
    stopped: bool,
}

/// Marks its reader stopped however its task ends (the loop returns, or the runtime
/// drops the task).
struct StopOnDrop(Arc<Reader>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.stopped = true;
        state.lanes.clear();
        self.0.detached.notify_waiters();
    }
}

/// Adds `lane` to the reader of `consumer` (starting one if it has none, or if its reader
/// already serves that stream); the lane is read from the next read on.
pub(super) fn attach(queue: &Queue, consumer: &str, lane: Arc<dyn Lane>) -> Arc<Reader> {
    let mut readers = lock(queue.readers());
    let list = readers.entry(consumer.to_owned()).or_default();
    list.retain(|r| !lock(&r.state).stopped);
    for reader in list.iter() {
        let mut state = lock(&reader.state);
        if !state
            .lanes
            .iter()
            .any(|l| l.keys().ready == lane.keys().ready)
        {
            state.lanes.push(lane);
            drop(state);
            reader.changed.notify_one();
            return reader.clone();
        }
    }
    let reader = Arc::new(Reader {
        queue: queue.clone(),
        consumer: consumer.to_owned(),
        state: Mutex::new(ReaderState {
            lanes: vec![lane],
            stopped: false,
        }),
        changed: Notify::new(),
        detached: Notify::new(),
        reader_id: AtomicI64::new(0),
    });
    list.push(reader.clone());
    tokio::spawn(reader.clone().run());
    reader
}

impl Reader {
    /// Wakes the reader to look at its lanes again (one joined, or one is going).
    pub(super) fn wake(&self) {
        self.changed.notify_one();
    }

    /// Returns once the lane sharing `shared` is no longer read: no read in flight can
    /// deliver to it any more. Its worker must already be marked closing.
    pub(super) async fn detach(&self, shared: &Shared) {
        while self.serves(shared) {
            let detached = self.detached.notified();
            self.wake();
            // The wake-up may come between the check and the wait: look again soon.
            let _ = tokio::time::timeout(Duration::from_millis(200), detached).await;
        }
    }

    fn serves(&self, shared: &Shared) -> bool {
        lock(&self.state)
            .lanes
            .iter()
            .any(|l| std::ptr::eq(l.shared(), shared))
    }

    /// The lanes to serve now, without those whose worker is gone; `None` (and stopped)
    /// when none is left.
    fn lanes(&self) -> Option<Vec<Arc<dyn Lane>>> {
        let mut state = lock(&self.state);
        let before = state.lanes.len();
        state.lanes.retain(|l| !l.gone());
        if state.lanes.len() != before {
            self.detached.notify_waiters();
        }
        if state.lanes.is_empty() {
            state.stopped = true;
            return None;
        }
        Some(state.lanes.clone())
    }

    async fn run(self: Arc<Self>) {
        let _stop = StopOnDrop(self.clone());
        let mut conn = self.queue.connector().connect();
        let mut backoff = Backoff::new();
        let settings = self.queue.settings();
        // A worker with less room than half a batch still has half a batch to start: it
        // waits out of the read until it has room again, so reads stay batched.
        let half = settings.fetch_batch.max(1).div_ceil(2);
        let block = settings.fetch_block.as_millis() as usize;
        while let Some(lanes) = self.lanes() {
            let (open, full): (Vec<_>, Vec<_>) = lanes.into_iter().partition(|l| l.room() >= half);
            if open.is_empty() {
                self.room_or_change(&full, half).await;
                continue;
            }
            // Per stream, so no worker gets more than it has room for.
            let count = open.iter().map(|l| l.room()).min().unwrap_or(half);
            if self.reader_id.load(Ordering::SeqCst) == 0 {
                // Who we are on the server, so a blocked read can be ended at once.
                let mut whoami = redis::cmd("CLIENT");
                whoami.arg("ID");
                if let Ok(id) = whoami.query_async::<i64>(&mut conn).await {
                    self.reader_id.store(id, Ordering::SeqCst);
                }
            }
            let streams: Vec<&str> = open.iter().map(|l| l.keys().ready.as_str()).collect();
            let ids = vec![">"; streams.len()];
            let options = redis::streams::StreamReadOptions::default()
                .group(GROUP, &self.consumer)
                .count(count)
                .block(block);
            let reply = {
                let read = conn.xread_options::<_, _, StreamReadReply>(&streams, &ids, &options);
                tokio::pin!(read);
                tokio::select! {
                    reply = &mut read => reply,
                    () = self.room_or_change(&full, half) => self.interrupt(read).await,
                }
            };
            match reply {
                Ok(reply) => {
                    backoff.reset();
                    for stream in reply.keys {
                        let Some(lane) = open.iter().find(|l| l.keys().ready == stream.key) else {
                            continue;
                        };
                        for entry in stream.ids {
                            lane.deliver(entry).await;
                        }
                    }
                }
                Err(e) if e.code() == Some("NOGROUP") => {
                    for lane in &open {
                        if let Err(e) = ensure_group(&mut conn, lane.keys()).await {
                            tracing::warn!(error = %e, "cannot create consumer group; retrying");
                            backoff.wait().await;
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, queues = open.len(), "reading jobs failed; retrying");
                    // The reply may have been lost with jobs in it, and the connection may
                    // be a new one: check for unreceived deliveries, learn our id again.
                    for lane in &open {
                        lane.shared().suspect_unreceived();
                    }
                    self.reader_id.store(0, Ordering::SeqCst);
                    backoff.wait().await;
                }
            }
        }
    }

    /// Resolves when a left-out worker has room for `n` again, or a lane joined or is
    /// leaving.
    async fn room_or_change(&self, full: &[Arc<dyn Lane>], n: usize) {
        let room = async {
            if full.is_empty() {
                std::future::pending::<()>().await;
            } else {
                futures_util::future::select_all(full.iter().map(|l| l.room_for(n))).await;
            }
        };
        tokio::select! {
            () = room => {}
            () = self.changed.notified() => {}
        }
    }

    /// Ends the blocked read with `CLIENT UNBLOCK` (as a timeout: it returns what it has)
    /// and returns its reply; asks again until it ends, in case the read had not reached
    /// the server yet.
    async fn interrupt<T>(&self, mut read: std::pin::Pin<&mut impl Future<Output = T>>) -> T {
        let mut control = self.queue.connection();
        loop {
            let id = self.reader_id.load(Ordering::SeqCst);
            if id > 0 {
                let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("UNBLOCK")
                    .arg(id)
                    .query_async(&mut control)
                    .await;
            }
            if let Ok(reply) = tokio::time::timeout(Duration::from_millis(200), &mut read).await {
                return reply;
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
    conn: &mut super::RedisConnection,
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
/// back entries pending for us that we never received. Idle (nothing held, no failed read)
/// it sends nothing.
pub(super) async fn heartbeat(
    queue: Queue,
    keys: QueueKeys,
    consumer: String,
    shared: Arc<Shared>,
) {
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
        if shared.unreceived_check_due() {
            match recover_unreceived(&mut conn, &keys, &consumer, &shared, every).await {
                Ok(()) => shared.unreceived_checked(),
                Err(e) => tracing::debug!(error = %e, "checking for unreceived deliveries failed"),
            }
        }
    }
}

/// Entries Redis delivered to this consumer whose reply never arrived (a dropped
/// connection) are pending for us but held by nobody: give them back now rather than wait
/// for a reclaim that would count them as abandoned.
async fn recover_unreceived(
    conn: &mut super::RedisConnection,
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
