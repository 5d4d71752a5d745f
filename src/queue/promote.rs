//! Promotion of delayed jobs at their due time, without polling.
//!
//! A fixed tick made every delayed job up to one tick late and cost several Redis commands
//! per tick and queue even when nothing was scheduled. Instead every process keeps a timer
//! per queue set to the earliest due time it knows, and learns of changes on the queue's
//! wake channel (Redis pub/sub): [`scripts::SCHEDULE`] and [`scripts::RESCHEDULE`] announce a
//! job that becomes the earliest, [`scripts::PROMOTE`] announces what is earliest after it
//! moved jobs. A channel reaches every process, so when one dies the others still wake for
//! its jobs; the promotion itself is one atomic script, so a process dying mid-way leaves
//! every job either moved or still scheduled, and two processes promoting at once move each
//! job once.
//!
//! Each process fires a little after the due time (a random spread of up to
//! [`SPREAD_MS`]), so in a fleet usually one process promotes and its announcement cancels
//! the others' timers, rather than every process running the script for every due time.
//!
//! A wake-up can only be lost with the subscription itself, so the promoter pings it twice
//! per `queue.wake_bound`; when it breaks, the promoter subscribes again and re-reads every
//! queue's earliest due time.

use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt;
use tokio::time::Instant;

use super::{backend::Backoff, keys::QueueKeys, now_ms, scripts, ConnectError, Queue};

/// Due jobs promoted per script call: bounded so one call never holds Redis for long.
pub(super) const PROMOTE_CHUNK: usize = 1000;
/// Upper bound of the random delay after a due time before this process promotes.
pub const SPREAD_MS: u64 = 5;

/// What one promotion call reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Promoted {
    pub moved: usize,
    /// Earliest due time still scheduled (Unix ms, Redis's clock).
    pub next_due_ms: Option<u64>,
    /// Redis's clock when the call ran (Unix ms).
    pub redis_now_ms: u64,
}

/// Runs one promotion call (at most [`PROMOTE_CHUNK`] jobs).
pub(super) async fn promote_once(
    conn: &mut super::RedisConnection,
    keys: &QueueKeys,
) -> redis::RedisResult<Promoted> {
    let (moved, next, now): (usize, i64, u64) = scripts::PROMOTE
        .key(&keys.delayed)
        .key(&keys.payloads)
        .key(&keys.ready)
        .arg(PROMOTE_CHUNK)
        .arg(&keys.wake)
        .invoke_async(conn)
        .await?;
    Ok(Promoted {
        moved,
        next_due_ms: u64::try_from(next).ok(),
        redis_now_ms: now,
    })
}

/// A wake-up message: `s:<ms>` a job was scheduled at least this early, `n:<ms>` after a
/// promotion this is the earliest left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Scheduled(u64),
    Next(u64),
}

fn parse_wake(payload: &str) -> Option<Wake> {
    let (kind, ms) = payload.split_once(':')?;
    let ms = ms.parse().ok()?;
    match kind {
        "s" => Some(Wake::Scheduled(ms)),
        "n" => Some(Wake::Next(ms)),
        _ => None,
    }
}

/// The per-queue timers of one process.
struct Timers {
    /// When to promote each queue (by index), `None` when nothing is scheduled.
    at: Vec<Option<Instant>>,
    /// Redis's clock minus ours, in ms, from the last promotion reply: due times are on
    /// Redis's clock.
    skew_ms: i64,
}

impl Timers {
    /// The local instant of a due time on Redis's clock, plus this process's spread.
    fn instant_of(&self, due_ms: u64) -> Instant {
        use rand::Rng;
        let redis_now = now_ms() as i64 + self.skew_ms;
        let wait = (due_ms as i64 - redis_now).max(0) as u64;
        let spread = rand::rng().random_range(0..=SPREAD_MS);
        Instant::now() + Duration::from_millis(wait + spread)
    }

    fn next(&self) -> Option<(usize, Instant)> {
        self.at
            .iter()
            .enumerate()
            .filter_map(|(i, at)| at.map(|at| (i, at)))
            .min_by_key(|(_, at)| *at)
    }
}

/// Promotes `queues` on time until the task is aborted.
pub(super) async fn run(queue: Queue, queues: Vec<&'static str>) {
    let keys: Vec<QueueKeys> = queues.iter().map(|q| queue.keys(q)).collect();
    let by_channel: HashMap<String, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.wake.clone(), i))
        .collect();
    let ping_every = queue.settings().wake_bound / 2;
    let mut conn = queue.connection();
    let mut backoff = Backoff::new();
    loop {
        let pubsub = match subscribe(&queue, &keys).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to wake-ups; retrying");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        let (mut sink, mut messages) = pubsub.split();
        // Subscribed first, then every queue is checked: nothing scheduled in between is
        // missed.
        let mut timers = Timers {
            at: vec![Some(Instant::now()); keys.len()],
            skew_ms: 0,
        };
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = timers.next();
            let sleep_until = next
                .map(|(_, at)| at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let (Some(&i), Ok(payload)) = (
                        by_channel.get(message.get_channel_name()),
                        message.get_payload::<String>(),
                    ) else {
                        continue;
                    };
                    match parse_wake(&payload) {
                        Some(Wake::Scheduled(due)) => {
                            let at = timers.instant_of(due);
                            timers.at[i] = Some(timers.at[i].map_or(at, |t| t.min(at)));
                        }
                        Some(Wake::Next(due)) => timers.at[i] = Some(timers.instant_of(due)),
                        None => {}
                    }
                }
                _ = tokio::time::sleep_until(sleep_until), if next.is_some() => {
                    let Some((i, _)) = next else { continue };
                    match promote_once(&mut conn, &keys[i]).await {
                        Ok(p) => {
                            timers.skew_ms = p.redis_now_ms as i64 - now_ms() as i64;
                            timers.at[i] = if p.moved >= PROMOTE_CHUNK {
                                Some(Instant::now())
                            } else {
                                p.next_due_ms.map(|due| timers.instant_of(due))
                            };
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, queue = queues[i], "promoting delayed jobs failed; retrying");
                            timers.at[i] = Some(Instant::now() + Duration::from_millis(500));
                        }
                    }
                }
                _ = ping.tick() => {
                    // In subscribed mode the reply is an array (`pong`, ""), so it is taken
                    // as a plain value: any reply in time proves the subscription alive.
                    let pong = tokio::time::timeout(ping_every, sink.ping::<redis::Value>()).await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "wake-up subscription lost; subscribing again");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("wake-up subscription silent; subscribing again");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Why the wake-up subscription could not be made; always retried (a setting error was
/// already refused at start, when the process first reached Redis).
#[derive(Debug, thiserror::Error)]
enum SubscribeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Subscribes to every queue's wake channel on a connection of its own, made by the
/// process's connector (TLS, credentials, the master the sentinels name now: after a
/// failover the next subscription goes to the new master).
async fn subscribe(
    queue: &Queue,
    keys: &[QueueKeys],
) -> Result<redis::aio::PubSub, SubscribeError> {
    let mut pubsub = queue.connector().pubsub().await?;
    let channels: Vec<&str> = keys.iter().map(|k| k.wake.as_str()).collect();
    pubsub.subscribe(channels).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_messages_are_parsed_and_garbage_is_ignored() {
        assert_eq!(parse_wake("s:1700"), Some(Wake::Scheduled(1700)));
        assert_eq!(parse_wake("n:42"), Some(Wake::Next(42)));
        assert_eq!(parse_wake("x:42"), None);
        assert_eq!(parse_wake("s:soon"), None);
        assert_eq!(parse_wake("1700"), None);
    }

    #[tokio::test]
    async fn a_due_time_becomes_a_timer_within_the_spread() {
        let timers = Timers {
            at: vec![None],
            skew_ms: 0,
        };
        let before = Instant::now();
        let at = timers.instant_of(now_ms() + 200);
        assert!(at >= before + Duration::from_millis(190));
        assert!(at <= Instant::now() + Duration::from_millis(200 + SPREAD_MS + 5));
        // A due time in the past fires at once (plus the spread).
        let at = timers.instant_of(0);
        assert!(at <= Instant::now() + Duration::from_millis(SPREAD_MS + 1));
    }
}
