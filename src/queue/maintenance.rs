//! Work any process may do for every queue: promote due delayed jobs (see [`super::promote`]),
//! reclaim jobs of dead consumers, remove those consumers. Each step is a bounded script or a
//! bounded command, so several processes doing it at once is safe and cheap.
//!
//! Reclaiming is one process's turn per period (`reclaim_after / 2`), taken with one `SET NX`:
//! the fleet reclaims as often as before, but an idle fleet of many processes does not
//! repeat the same checks once per process.

use std::time::Duration;

use redis::AsyncCommands;
use tokio::task::JoinHandle;

use super::{
    backend::{requeue, Backoff},
    fetch::{ensure_group, stream_field},
    finish::{bury, Burial},
    keys::{QueueKeys, GROUP},
    promote, scripts, Queue,
};

/// Entries examined per `XAUTOCLAIM` call.
const RECLAIM_CHUNK: usize = 100;

/// The maintenance tasks of one process: the promoter and the reclaimer.
#[derive(Debug)]
pub struct Maintenance {
    promoter: JoinHandle<()>,
    reclaimer: JoinHandle<()>,
}

impl Maintenance {
    /// Starts maintenance of `queues` as `consumer` (this process's consumer name).
    pub fn spawn(queue: Queue, queues: Vec<&'static str>, consumer: String) -> Self {
        Self {
            promoter: tokio::spawn(promote::run(queue.clone(), queues.clone())),
            reclaimer: tokio::spawn(run_reclaim(queue, queues, consumer)),
        }
    }

    pub fn stop(self) {
        self.promoter.abort();
        self.reclaimer.abort();
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.promoter.abort();
        self.reclaimer.abort();
    }
}

async fn run_reclaim(queue: Queue, queues: Vec<&'static str>, consumer: String) {
    let every = (queue.settings().reclaim_after / 2).max(Duration::from_millis(100));
    let turn_key = queue.fleet_key("maintenance:turn");
    let mut conn = queue.connection();
    let mut backoff = Backoff::new();
    loop {
        tokio::time::sleep(every).await;
        // The turn lapses a little before the next period, so the holder can take it again.
        let lapse = every
            .saturating_sub(every / 10)
            .max(Duration::from_millis(1));
        let turn: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&turn_key)
            .arg(&consumer)
            .arg("NX")
            .arg("PX")
            .arg(lapse.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        match turn {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "maintenance turn not taken");
                backoff.wait().await;
                continue;
            }
        }
        let mut healthy = true;
        for name in &queues {
            let keys = queue.keys(name);
            if let Err(e) = reclaim(&queue, &mut conn, &keys, &consumer).await {
                tracing::warn!(error = %e, queue = name, "reclaiming abandoned jobs failed");
                healthy = false;
            }
        }
        if healthy {
            backoff.reset();
        } else {
            backoff.wait().await;
        }
    }
}

/// Takes entries idle past `reclaim_after` (their consumer died: live ones refresh theirs),
/// requeues them, or buries those abandoned too often; then removes empty dead consumers.
async fn reclaim(
    queue: &Queue,
    conn: &mut crate::queue::RedisConnection,
    keys: &QueueKeys,
    consumer: &str,
) -> redis::RedisResult<()> {
    let settings = queue.settings();
    let groups: redis::streams::StreamInfoGroupsReply = match conn.xinfo_groups(&keys.ready).await {
        Ok(g) => g,
        // No stream yet: nothing was ever queued here.
        Err(e) if e.to_string().contains("no such key") => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(group) = groups.groups.into_iter().find(|g| g.name == GROUP) else {
        return ensure_group(conn, keys).await;
    };
    if group.pending > 0 {
        reclaim_idle(queue, conn, keys, consumer).await?;
    }
    remove_dead_consumers(conn, keys, consumer, settings.reclaim_after * 2).await?;
    trim_finished(conn, keys, &group.last_delivered_id, group.pending > 0).await
}

/// Requeues entries idle past `reclaim_after`, burying those abandoned too often.
async fn reclaim_idle(
    queue: &Queue,
    conn: &mut crate::queue::RedisConnection,
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
    Ok(())
}

/// Whether `consumer` is this process's: `me` itself (reclaims) or one of its workers
/// (`me-<queue>`). Redis may report a live worker blocked in `XREADGROUP` as idle since
/// its last delivery, so an idle time alone does not prove a consumer dead.
fn is_own_consumer(consumer: &str, me: &str) -> bool {
    consumer == me
        || consumer
            .strip_prefix(me)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Deletes other processes' consumers that hold nothing and have not read for a while
/// (dead processes); each check-and-delete is one script, so a consumer reading meanwhile
/// is never deleted.
async fn remove_dead_consumers(
    conn: &mut crate::queue::RedisConnection,
    keys: &QueueKeys,
    me: &str,
    idle: Duration,
) -> redis::RedisResult<()> {
    let info: redis::streams::StreamInfoConsumersReply =
        conn.xinfo_consumers(&keys.ready, GROUP).await?;
    for c in info.consumers {
        if !is_own_consumer(&c.name, me) && c.pending == 0 && c.idle as u128 > idle.as_millis() {
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
/// has been delivered and acknowledged. `last_delivered` is the group's read position.
async fn trim_finished(
    conn: &mut crate::queue::RedisConnection,
    keys: &QueueKeys,
    last_delivered: &str,
    any_pending: bool,
) -> redis::RedisResult<()> {
    let oldest_pending = if any_pending {
        match conn.xpending(&keys.ready, GROUP).await? {
            redis::streams::StreamPendingReply::Data(d) => Some(d.start_id),
            _ => None,
        }
    } else {
        None
    };
    // Keep the oldest pending entry and everything not yet delivered.
    let after_read = next_id(last_delivered);
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
    fn a_process_never_takes_its_own_workers_for_dead_consumers() {
        assert!(is_own_consumer("web-1-ab12cd", "web-1-ab12cd"));
        assert!(is_own_consumer("web-1-ab12cd-start", "web-1-ab12cd"));
        assert!(!is_own_consumer("web-1-zz99zz-start", "web-1-ab12cd"));
        assert!(!is_own_consumer("web-1-ab12cdx", "web-1-ab12cd"));
    }

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(stream_id_lt("9-5", "10-0"));
        assert!(stream_id_lt("10-1", "10-2"));
        assert!(!stream_id_lt("10-2", "10-2"));
        assert_eq!(next_id("10-2"), "10-3");
        assert_eq!(next_id("0-0"), "0-1");
    }
}
