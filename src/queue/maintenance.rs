//! Work any process may do for every queue: promote due delayed jobs, reclaim jobs of dead
//! consumers, remove those consumers. Each step is a bounded script or a bounded command, so
//! several processes doing it at once is safe and cheap.

use std::time::Duration;

use redis::{aio::ConnectionManager, AsyncCommands};
use tokio::task::JoinHandle;

use super::{
    backend::{requeue, Backoff},
    fetch::{ensure_group, stream_field},
    finish::{bury, Burial},
    keys::{QueueKeys, GROUP},
    scripts, Queue,
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
        let mut abandoned_ids = Vec::new();
        for entry in reply.claimed {
            let abandoned: u32 = stream_field(&entry, "d")
                .and_then(|d| d.parse().ok())
                .unwrap_or(0)
                + 1;
            if abandoned >= settings.max_deliveries {
                let payload = stream_field(&entry, "j").unwrap_or_default();
                let envelope = serde_json::from_str::<super::Envelope>(&payload).ok();
                let reason =
                    format!("abandoned {abandoned} times: the process running it died each time");
                tracing::warn!(queue = %keys.ready, entry = %entry.id, "poison job dead-lettered");
                let burial = Burial {
                    payload: &payload,
                    reason: &reason,
                    job_id: envelope.as_ref().map(|e| e.id.as_str()).unwrap_or_default(),
                    attempts: envelope.as_ref().map(|e| e.attempt).unwrap_or(0),
                    entry_id: &entry.id,
                    consumer,
                };
                bury(queue, keys, &burial).await;
            } else {
                abandoned_ids.push(entry.id);
            }
        }
        if !abandoned_ids.is_empty() {
            let moved = requeue(conn, keys, consumer, &abandoned_ids, true).await?;
            tracing::info!(queue = %keys.ready, reclaimed = moved.len(), "requeued jobs of a dead consumer");
        }
        cursor = reply.next_stream_id;
        if cursor == "0-0" {
            break;
        }
    }
    remove_dead_consumers(conn, keys, consumer, settings.reclaim_after * 2).await?;
    trim_finished(conn, keys).await
}

/// Deletes consumers that hold nothing and have not read for a while (dead processes);
/// each check-and-delete is one script, so a consumer reading meanwhile is never deleted.
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
            let removed: i64 = scripts::FORGET_CONSUMER
                .key(&keys.ready)
                .arg(GROUP)
                .arg(idle.as_millis() as u64)
                .arg(&c.name)
                .invoke_async(conn)
                .await?;
            if removed == 1 {
                tracing::info!(queue = %keys.ready, consumer = %c.name, "removed a dead consumer");
            }
        }
    }
    Ok(())
}

/// Trims entries that are acknowledged but still in the stream (an `XDEL` lost after its
/// `XACK`): everything before both the oldest pending entry and the group's read position
/// has been delivered and acknowledged.
async fn trim_finished(conn: &mut ConnectionManager, keys: &QueueKeys) -> redis::RedisResult<()> {
    let groups: redis::streams::StreamInfoGroupsReply = conn.xinfo_groups(&keys.ready).await?;
    let Some(group) = groups.groups.into_iter().find(|g| g.name == GROUP) else {
        return Ok(());
    };
    let pending: redis::streams::StreamPendingReply = conn.xpending(&keys.ready, GROUP).await?;
    let oldest_pending = match &pending {
        redis::streams::StreamPendingReply::Data(d) => Some(d.start_id.clone()),
        _ => None,
    };
    // Keep the oldest pending entry and everything not yet delivered.
    let after_read = next_id(&group.last_delivered_id);
    let limit = match oldest_pending {
        Some(p) if stream_id_lt(&p, &after_read) => p,
        _ => after_read,
    };
    let _: i64 = redis::cmd("XTRIM")
        .arg(&keys.ready)
        .arg("MINID")
        .arg(limit)
        .query_async(conn)
        .await?;
    Ok(())
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn stream_id_lt(a: &str, b: &str) -> bool {
    parse_id(a) < parse_id(b)
}

/// The smallest id after `id` (MINID keeps entries >= it).
fn next_id(id: &str) -> String {
    let (ms, seq) = parse_id(id);
    match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms.saturating_add(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(stream_id_lt("9-5", "10-0"));
        assert!(stream_id_lt("10-1", "10-2"));
        assert!(!stream_id_lt("10-2", "10-2"));
        assert_eq!(next_id("10-2"), "10-3");
        assert_eq!(next_id("0-0"), "0-1");
    }
}
