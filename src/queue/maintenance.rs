//! Work any process may do for every queue: promote due delayed jobs, reclaim jobs of dead
//! consumers, remove those consumers. Each step is a bounded script or a bounded command, so
//! several processes doing it at once is safe and cheap.

use std::time::Duration;

use redis::{aio::ConnectionManager, AsyncCommands};
use tokio::task::JoinHandle;

use super::{
    backend::{bury, ensure_group, Backoff},
    keys::{QueueKeys, GROUP},
    now_ms, scripts, Queue,
};

/// Due jobs promoted per script call: bounded so one call never holds Redis for long.
const PROMOTE_CHUNK: usize = 1000;
/// Entries examined per `XAUTOCLAIM` call.
const RECLAIM_CHUNK: usize = 100;

/// The maintenance loop of one process.
#[derive(Debug)]
pub struct Maintenance {
    handle: JoinHandle<()>,
}

impl Maintenance {
    /// Starts maintenance of `queues` as `consumer` (this process's consumer name).
    pub fn spawn(queue: Queue, queues: Vec<&'static str>, consumer: String) -> Self {
        Self {
            handle: tokio::spawn(run(queue, queues, consumer)),
        }
    }

    pub fn stop(self) {
        self.handle.abort();
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn run(queue: Queue, queues: Vec<&'static str>, consumer: String) {
    let settings = queue.settings().clone();
    let reclaim_every = (settings.reclaim_after / 2).max(Duration::from_millis(100));
    let mut last_reclaim = tokio::time::Instant::now();
    let mut conn = queue.connection();
    let mut backoff = Backoff::new();
    loop {
        let mut healthy = true;
        for name in &queues {
            let keys = queue.keys(name);
            if let Err(e) = promote_due(&mut conn, &keys).await {
                tracing::warn!(error = %e, queue = name, "promoting delayed jobs failed");
                healthy = false;
            }
        }
        if last_reclaim.elapsed() >= reclaim_every {
            last_reclaim = tokio::time::Instant::now();
            for name in &queues {
                let keys = queue.keys(name);
                if let Err(e) = reclaim(&queue, &mut conn, &keys, &consumer).await {
                    tracing::warn!(error = %e, queue = name, "reclaiming abandoned jobs failed");
                    healthy = false;
                }
            }
        }
        if healthy {
            backoff.reset();
            tokio::time::sleep(settings.promote_interval).await;
        } else {
            backoff.wait().await;
        }
    }
}

/// Moves every due delayed job to the ready stream, a chunk at a time.
pub(super) async fn promote_due(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
) -> redis::RedisResult<usize> {
    let mut total = 0;
    loop {
        let moved: usize = scripts::PROMOTE
            .key(&keys.delayed)
            .key(&keys.payloads)
            .key(&keys.ready)
            .arg(now_ms())
            .arg(PROMOTE_CHUNK)
            .invoke_async(conn)
            .await?;
        total += moved;
        if moved < PROMOTE_CHUNK {
            return Ok(total);
        }
    }
}

/// Takes entries idle past `reclaim_after` (their consumer died: live ones refresh theirs),
/// requeues them, or buries those abandoned too often; then removes empty dead consumers.
async fn reclaim(
    queue: &Queue,
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    consumer: &str,
) -> redis::RedisResult<()> {
    let settings = queue.settings();
    let min_idle = settings.reclaim_after.as_millis() as u64;
    let mut cursor = "0-0".to_owned();
    for _ in 0..100 {
        let reply: redis::RedisResult<redis::streams::StreamAutoClaimReply> =
            redis::cmd("XAUTOCLAIM")
                .arg(&keys.ready)
                .arg(GROUP)
                .arg(consumer)
                .arg(min_idle)
                .arg(&cursor)
                .arg("COUNT")
                .arg(RECLAIM_CHUNK)
                .query_async(conn)
                .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) if e.code() == Some("NOGROUP") => return ensure_group(conn, keys).await,
            Err(e) => return Err(e),
        };
        let mut requeue = Vec::new();
        for entry in reply.claimed {
            let field = |name: &str| -> Option<String> {
                entry
                    .map
                    .get(name)
                    .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            };
            let abandoned: u32 = field("d").and_then(|d| d.parse().ok()).unwrap_or(0) + 1;
            if abandoned >= settings.max_deliveries {
                let payload = field("j").unwrap_or_default();
                let envelope = serde_json::from_str::<super::Envelope>(&payload).ok();
                let reason =
                    format!("abandoned {abandoned} times: the process running it died each time");
                tracing::warn!(queue = %keys.ready, entry = %entry.id, "poison job dead-lettered");
                bury(
                    queue,
                    keys,
                    &payload,
                    &reason,
                    envelope.as_ref().map(|e| e.id.as_str()).unwrap_or_default(),
                    envelope.as_ref().map(|e| e.attempt).unwrap_or(0),
                    Some(&entry.id),
                )
                .await;
            } else {
                requeue.push(entry.id);
            }
        }
        if !requeue.is_empty() {
            let mut invocation = scripts::REQUEUE.key(&keys.ready);
            invocation.arg(GROUP).arg(1).arg(consumer);
            for id in &requeue {
                invocation.arg(id);
            }
            let moved: Vec<String> = invocation.invoke_async(conn).await?;
            tracing::info!(queue = %keys.ready, reclaimed = moved.len(), "requeued jobs of a dead consumer");
        }
        cursor = reply.next_stream_id;
        if cursor == "0-0" {
            break;
        }
    }
    remove_dead_consumers(conn, keys, consumer, settings.reclaim_after * 2).await
}

/// Deletes consumers that hold nothing and have not read for a while (dead processes).
async fn remove_dead_consumers(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    me: &str,
    idle: Duration,
) -> redis::RedisResult<()> {
    let info: redis::streams::StreamInfoConsumersReply =
        conn.xinfo_consumers(&keys.ready, GROUP).await?;
    for c in info.consumers {
        if c.name != me && c.pending == 0 && c.idle as u128 > idle.as_millis() {
            let _: i64 = conn.xgroup_delconsumer(&keys.ready, GROUP, &c.name).await?;
            tracing::info!(queue = %keys.ready, consumer = %c.name, "removed a dead consumer");
        }
    }
    Ok(())
}
