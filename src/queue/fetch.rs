//! Fetching: a background task per worker reads the ready stream and hands decoded jobs to
//! the worker, and a heartbeat keeps what this process holds from being taken away.
//!
//! The fetcher blocks in `XREADGROUP` on a connection of its own and hands decoded jobs to
//! the worker through a small channel (so at most `queue.fetch_batch` jobs wait
//! fetched-but-not-started). A job that cannot be decoded is dead-lettered here and never
//! reaches the worker. The heartbeat refreshes every held entry and gives back entries Redis
//! delivered to us but we never received (a reply lost with a dropped connection).

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use apalis_core::task::Task;
use redis::{streams::StreamReadReply, AsyncCommands};
use tokio::sync::mpsc;

use super::{
    backend::{requeue, Backoff, Delivery, Shared},
    envelope::{decode, Job},
    finish::{bury, Burial},
    keys::{QueueKeys, GROUP},
    now_ms, retry, scripts, Queue,
};

/// Reads one queue's ready stream for one worker.
pub(super) struct Fetcher<A: Job> {
    pub(super) queue: Queue,
    pub(super) keys: QueueKeys,
    pub(super) consumer: String,
    pub(super) shared: Arc<Shared>,
    pub(super) tx: mpsc::Sender<Task<A>>,
}

impl<A: Job> Fetcher<A> {
    pub(super) async fn run(self) {
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
            if self.shared.reader_id.load(Ordering::SeqCst) == 0 {
                // Who we are on the server, so closing can end a blocked read at once.
                if let Ok(id) = redis::cmd("CLIENT").arg("ID").query_async::<i64>(c).await {
                    self.shared.reader_id.store(id, Ordering::SeqCst);
                }
            }
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
                    // The reply may have been lost with jobs in it, and the connection may
                    // be a new one: check for unreceived deliveries, learn our id again.
                    self.shared.suspect_unreceived();
                    self.shared.reader_id.store(0, Ordering::SeqCst);
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
