//! Work any process may do for every queue: promote due delayed jobs (see [`super::promote`]),
//! reclaim jobs of dead consumers, remove those consumers. Each step is a bounded script or a
//! bounded command, so several processes doing it at once is safe and cheap.
//!
//! Reclaiming is one process's turn at a time, taken with one `SET NX`, and a pass is made
//! when it is needed rather than on a fixed period: each pass reads, from `XINFO CONSUMERS`,
//! how long every other consumer holding entries has been silent, and schedules the next
//! pass for the moment the first of them would cross `reclaim_after` (at most
//! `reclaim_after` away when nobody holds anything). The turn key then lives until that
//! moment, so the other processes sleep until it expires instead of polling.
//!
//! Why that bounds recovery: an entry of a consumer that dies at `k` was last touched at or
//! before `k`, and so was the consumer; the consumer's silence is its idle time. A pass
//! comes at most `reclaim_after` after the previous one, so one comes before `k +
//! reclaim_after`; that pass (or an earlier one) sees the dead consumer's idle time and
//! schedules the next for `k + reclaim_after` (plus [`CROSSING_MARGIN`]), when every one of
//! its entries has crossed: the last job of a killed process is requeued within
//! `reclaim_after` and a fraction of a second, and a live worker takes it at once. An idle
//! fleet makes one pass per `reclaim_after`, and each other process one failed `SET NX`
//! and one `PTTL` per pass.

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
/// The shortest gap between two passes, whatever the consumers' idle times say.
const PASS_FLOOR: Duration = Duration::from_secs(1);
/// How long a turn is held while its pass runs; the holder then sets it to the next pass.
/// A pass that outlives it may overlap another: harmless, every step is bounded and safe
/// to repeat.
const PASS_LEASE: Duration = Duration::from_secs(10);
/// After the moment a dead consumer's entries reach `reclaim_after`, so they have.
const CROSSING_MARGIN: Duration = Duration::from_millis(250);
/// Spread of the processes' attempts at an expired turn.
const TURN_JITTER_MS: u64 = 100;

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
    let reclaim_after = queue.settings().reclaim_after;
    let turn_key = queue.fleet_key("maintenance:turn");
    let mut conn = queue.connection();
    let mut backoff = Backoff::new();
    let mut wait = turn_jitter();
    loop {
        tokio::time::sleep(wait).await;
        let turn: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&turn_key)
            .arg(&consumer)
            .arg("NX")
            .arg("PX")
            .arg(PASS_LEASE.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        match turn {
            Ok(Some(_)) => {}
            Ok(None) => {
                // Another process holds the turn until the next pass is due: sleep until then.
                let left: redis::RedisResult<i64> = conn.pttl(&turn_key).await;
                wait = match left {
                    Ok(ms) if ms >= 0 => Duration::from_millis(ms as u64),
                    // Expired meanwhile (-2), or a turn without expiry (-1, set by hand).
                    Ok(-2) => Duration::ZERO,
                    Ok(_) => reclaim_after,
                    Err(e) => {
                        tracing::warn!(error = %e, "maintenance turn not read");
                        backoff.wait().await;
                        Duration::ZERO
                    }
                } + turn_jitter();
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "maintenance turn not taken");
                backoff.wait().await;
                wait = turn_jitter();
                continue;
            }
        }
        let mut next = reclaim_after;
        let mut healthy = true;
        for name in &queues {
            let keys = queue.keys(name);
            match reclaim(&queue, &mut conn, &keys, &consumer).await {
                Ok(due) => next = next.min(due),
                Err(e) => {
                    tracing::warn!(error = %e, queue = name, "reclaiming abandoned jobs failed");
                    healthy = false;
                }
            }
        }
        if healthy {
            backoff.reset();
        } else {
            backoff.wait().await;
            next = PASS_FLOOR;
        }
        let next = next.max(PASS_FLOOR);
        // Hold the turn until the next pass is due; the others sleep until it expires.
        let held: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&turn_key)
            .arg(&consumer)
            .arg("PX")
            .arg(next.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        if let Err(e) = held {
            tracing::debug!(error = %e, "next maintenance turn not recorded");
        }
        wait = next + turn_jitter();
    }
}

fn turn_jitter() -> Duration {
    use rand::Rng;
    Duration::from_millis(rand::rng().random_range(0..TURN_JITTER_MS))
}

/// Takes entries idle past `reclaim_after` (their consumer died: live ones refresh theirs),
/// requeues them, or buries those abandoned too often; then removes empty dead consumers.
/// Returns how soon this queue needs the next pass.
async fn reclaim(
    queue: &Queue,
    conn: &mut crate::queue::RedisConnection,
    keys: &QueueKeys,
    consumer: &str,
) -> redis::RedisResult<Duration> {
    let settings = queue.settings();
    let groups: redis::streams::StreamInfoGroupsReply = match conn.xinfo_groups(&keys.ready).await {
        Ok(g) => g,
        // No stream yet: nothing was ever queued here.
        Err(e) if e.to_string().contains("no such key") => return Ok(settings.reclaim_after),
        Err(e) => return Err(e),
    };
    let Some(group) = groups.groups.into_iter().find(|g| g.name == GROUP) else {
        ensure_group(conn, keys).await?;
        return Ok(settings.reclaim_after);
    };
    if group.pending > 0 {
        reclaim_idle(queue, conn, keys, consumer).await?;
    }
    let next = check_consumers(conn, keys, consumer, settings.reclaim_after).await?;
    trim_finished(conn, keys, &group.last_delivered_id, group.pending > 0).await?;
    Ok(next)
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

/// Deletes other processes' consumers that hold nothing and have not read for
/// `2 × reclaim_after` (dead processes; each check-and-delete is one script, so a consumer
/// reading meanwhile is never deleted), and returns how soon the next pass is needed: when
/// the first entry another consumer holds may cross `reclaim_after` (its consumer's idle
/// time is a lower bound of its entries': a consumer is touched whenever one of its entries
/// is), or when an empty one may turn out dead. This process's own consumer (its workers
/// and its reclaims) is alive, whatever idle time Redis reports.
async fn check_consumers(
    conn: &mut crate::queue::RedisConnection,
    keys: &QueueKeys,
    me: &str,
    reclaim_after: Duration,
) -> redis::RedisResult<Duration> {
    let idle = reclaim_after * 2;
    let info: redis::streams::StreamInfoConsumersReply =
        conn.xinfo_consumers(&keys.ready, GROUP).await?;
    let mut next = reclaim_after;
    for c in info.consumers {
        if c.name == me {
            continue;
        }
        let silent = Duration::from_millis(c.idle as u64);
        if c.pending > 0 {
            next = next.min(reclaim_after.saturating_sub(silent) + CROSSING_MARGIN);
            continue;
        }
        if silent <= idle {
            next = next.min(idle - silent + CROSSING_MARGIN);
        } else {
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
    Ok(next)
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
    fn stream_ids_compare_numerically() {
        assert!(stream_id_lt("9-5", "10-0"));
        assert!(stream_id_lt("10-1", "10-2"));
        assert!(!stream_id_lt("10-2", "10-2"));
        assert_eq!(next_id("10-2"), "10-3");
        assert_eq!(next_id("0-0"), "0-1");
    }
}
