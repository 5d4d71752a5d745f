//! What the fleet keeps in Redis about subscribers: the delivery bridge's reading of the
//! outcome stream, each subscriber's delivery state, the disabled set and the pending index
//! behind `kyc_delivery_lag_seconds`.
//!
//! Keys (subscriber names are operator-chosen labels, never personal data):
//! - `<prefix>:events`, consumer group `subscribers`: every event is read once by the
//!   bridge, which turns it into delivery jobs and then acknowledges it;
//! - `<prefix>:subscribers:disabled`: hash name → JSON `{at_ms, reason}` (a 410 put it there);
//! - `<prefix>:subscriber:<name>`: hash of the last success, last failure and since when it
//!   has been failing;
//! - `<prefix>:subscriber:<name>:pending`: sorted set event_id → event time (ms) of
//!   deliveries not yet delivered, dead or dropped.

use std::{collections::HashMap, time::Duration};

use redis::{aio::ConnectionManager, AsyncCommands};

use super::Store;

/// The consumer group the delivery bridge reads the outcome stream with.
pub const DELIVERY_GROUP: &str = "subscribers";

/// One entry of the outcome stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeEntry {
    pub entry_id: String,
    pub fields: HashMap<String, String>,
}

impl OutcomeEntry {
    /// When the event was published (the entry id's ms).
    pub fn published_ms(&self) -> u64 {
        crate::queue::entry_ms(&self.entry_id)
    }

    pub fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn from_stream(entry: redis::streams::StreamId) -> Self {
        let fields = entry
            .map
            .iter()
            .filter_map(|(k, v)| {
                redis::from_redis_value_ref::<String>(v)
                    .ok()
                    .map(|v| (k.clone(), v))
            })
            .collect();
        Self {
            entry_id: entry.id,
            fields,
        }
    }
}

/// Reads the outcome stream through the `subscribers` group on a connection of its own
/// (a blocking read must not hold up the shared one).
pub struct EventReader {
    conn: ConnectionManager,
    stream: String,
    consumer: String,
    reclaim_after: Duration,
    last_reclaim: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .finish()
    }
}

impl EventReader {
    pub async fn connect(
        url: &str,
        prefix: &str,
        consumer: String,
        reclaim_after: Duration,
    ) -> redis::RedisResult<Self> {
        Ok(Self {
            conn: crate::queue::connect(url).await?,
            stream: format!("{prefix}:events"),
            consumer,
            reclaim_after,
            last_reclaim: None,
        })
    }

    /// Creates the group at the stream's end when it does not exist: subscribers receive
    /// the events published from then on (`subscribers replay` sends older ones).
    pub async fn ensure_group(&mut self) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = self
            .conn
            .xgroup_create_mkstream(&self.stream, DELIVERY_GROUP, "$")
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// The next entries: those a dead reader left pending for `reclaim_after` first, then
    /// new ones (waiting at most `block`).
    pub async fn next_batch(
        &mut self,
        count: usize,
        block: Duration,
    ) -> redis::RedisResult<Vec<OutcomeEntry>> {
        let mut entries = Vec::new();
        let due = self
            .last_reclaim
            .is_none_or(|at| at.elapsed() >= self.reclaim_after);
        if due {
            self.last_reclaim = Some(tokio::time::Instant::now());
            let claimed: redis::RedisResult<redis::streams::StreamAutoClaimReply> =
                redis::cmd("XAUTOCLAIM")
                    .arg(&self.stream)
                    .arg(DELIVERY_GROUP)
                    .arg(&self.consumer)
                    .arg(self.reclaim_after.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut self.conn)
                    .await;
            if let Ok(reply) = claimed {
                entries.extend(reply.claimed.into_iter().map(OutcomeEntry::from_stream));
            }
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
        let options = redis::streams::StreamReadOptions::default()
            .group(DELIVERY_GROUP, &self.consumer)
            .count(count)
            .block(block.as_millis() as usize);
        let read: redis::RedisResult<redis::streams::StreamReadReply> = self
            .conn
            .xread_options(&[&self.stream], &[">"], &options)
            .await;
        match read {
            Ok(reply) => entries.extend(
                reply
                    .keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .map(OutcomeEntry::from_stream),
            ),
            Err(e) if e.code() == Some("NOGROUP") => self.ensure_group().await?,
            Err(e) => return Err(e),
        }
        Ok(entries)
    }

    /// Acknowledges entries whose deliveries are enqueued (the stream itself is left as it
    /// is: other readers and `events tail` use it).
    pub async fn ack(&mut self, ids: &[String]) -> redis::RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.conn
            .xack::<_, _, _, i64>(&self.stream, DELIVERY_GROUP, ids)
            .await
            .map(drop)
    }

    /// Leaves the group (on a graceful stop), so `XINFO` lists only live readers.
    pub async fn leave(&mut self) -> redis::RedisResult<()> {
        let pending: redis::streams::StreamPendingCountReply = self
            .conn
            .xpending_consumer_count(&self.stream, DELIVERY_GROUP, "-", "+", 1, &self.consumer)
            .await?;
        if pending.ids.is_empty() {
            let _: i64 = self
                .conn
                .xgroup_delconsumer(&self.stream, DELIVERY_GROUP, &self.consumer)
                .await?;
        }
        Ok(())
    }
}

/// Why and since when a subscriber is disabled.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Disabled {
    pub at_ms: u64,
    pub reason: String,
}

/// A subscriber's delivery state as `subscribers list` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SubscriberState {
    pub disabled: Option<Disabled>,
    pub last_success_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
    /// The last failure's kind (`HTTP 503`, `timeout`, …), never the answer's body.
    pub last_failure: Option<String>,
    /// Set at the first failure after a success; cleared by the next success.
    pub failing_since_ms: Option<u64>,
    /// Deliveries not yet delivered, dead or dropped.
    pub pending: u64,
    /// Publication time of the oldest of them.
    pub oldest_pending_ms: Option<u64>,
}

/// The replies of [`Store::subscriber_state`]'s pipeline: state hash, disabled entry,
/// pending count, oldest pending.
type StateReply = (
    HashMap<String, String>,
    Option<String>,
    u64,
    Vec<(String, f64)>,
);

impl Store {
    fn disabled_key(&self) -> String {
        format!("{}:subscribers:disabled", self.prefix)
    }

    fn subscriber_key(&self, name: &str) -> String {
        format!("{}:subscriber:{name}", self.prefix)
    }

    fn pending_key(&self, name: &str) -> String {
        format!("{}:subscriber:{name}:pending", self.prefix)
    }

    /// The disabled subscribers.
    pub async fn disabled_subscribers(&self) -> redis::RedisResult<HashMap<String, Disabled>> {
        let mut c = self.conn.clone();
        let all: HashMap<String, String> = c.hgetall(self.disabled_key()).await?;
        Ok(all
            .into_iter()
            .filter_map(|(name, raw)| serde_json::from_str(&raw).ok().map(|d| (name, d)))
            .collect())
    }

    /// Disables a subscriber (kept until `subscribers enable`); `false` when it already was.
    pub async fn disable_subscriber(&self, name: &str, reason: &str) -> redis::RedisResult<bool> {
        let entry = Disabled {
            at_ms: crate::queue::now_ms(),
            reason: reason.to_owned(),
        };
        let raw = serde_json::to_string(&entry).unwrap_or_default();
        let mut c = self.conn.clone();
        c.hset_nx(self.disabled_key(), name, raw).await
    }

    /// Enables a disabled subscriber; `false` when it was not disabled.
    pub async fn enable_subscriber(&self, name: &str) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let removed: i64 = c.hdel(self.disabled_key(), name).await?;
        Ok(removed == 1)
    }

    /// Records deliveries as waiting (score: the event's publication time), with the
    /// pipeline that enqueues them.
    pub(crate) fn pending_into(
        &self,
        pipe: &mut redis::Pipeline,
        name: &str,
        items: &[(String, u64)],
    ) {
        if items.is_empty() {
            return;
        }
        let members: Vec<(u64, &str)> = items.iter().map(|(id, ms)| (*ms, id.as_str())).collect();
        pipe.cmd("ZADD")
            .arg(self.pending_key(name))
            .arg("NX")
            .arg(&members)
            .ignore();
    }

    /// Records deliveries as waiting on their own round trip.
    pub async fn add_pending(&self, name: &str, items: &[(String, u64)]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        self.pending_into(&mut pipe, name, items);
        let mut c = self.conn.clone();
        pipe.query_async(&mut c).await
    }

    /// A delivery arrived: the subscriber is healthy and the event no longer waits.
    pub async fn record_delivered(&self, name: &str, event_id: &str) -> redis::RedisResult<()> {
        let key = self.subscriber_key(name);
        let mut c = self.conn.clone();
        redis::pipe()
            .hset(&key, "last_success_ms", crate::queue::now_ms())
            .ignore()
            .hdel(&key, "failing_since_ms")
            .ignore()
            .zrem(self.pending_key(name), event_id)
            .ignore()
            .query_async(&mut c)
            .await
    }

    /// An attempt failed (`what` is its kind, never the answer's body).
    pub async fn record_failed(&self, name: &str, what: &str) -> redis::RedisResult<()> {
        let key = self.subscriber_key(name);
        let now = crate::queue::now_ms();
        let mut c = self.conn.clone();
        redis::pipe()
            .hset(&key, "last_failure_ms", now)
            .ignore()
            .hset(&key, "last_failure", what)
            .ignore()
            .hset_nx(&key, "failing_since_ms", now)
            .ignore()
            .query_async(&mut c)
            .await
    }

    /// Deliveries that will not be attempted again (dead, dropped or erased).
    pub async fn forget_pending(&self, name: &str, event_ids: &[String]) -> redis::RedisResult<()> {
        if event_ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        c.zrem(self.pending_key(name), event_ids).await
    }

    /// The publication time of the oldest delivery still waiting for `name`.
    pub async fn oldest_pending_ms(&self, name: &str) -> redis::RedisResult<Option<u64>> {
        let mut c = self.conn.clone();
        let first: Vec<(String, f64)> = c.zrange_withscores(self.pending_key(name), 0, 0).await?;
        Ok(first.first().map(|(_, ms)| *ms as u64))
    }

    pub async fn subscriber_state(&self, name: &str) -> redis::RedisResult<SubscriberState> {
        let mut c = self.conn.clone();
        let (fields, disabled, pending, first): StateReply = redis::pipe()
            .hgetall(self.subscriber_key(name))
            .hget(self.disabled_key(), name)
            .zcard(self.pending_key(name))
            .zrange_withscores(self.pending_key(name), 0, 0)
            .query_async(&mut c)
            .await?;
        let ms = |k: &str| fields.get(k).and_then(|v| v.parse().ok());
        Ok(SubscriberState {
            disabled: disabled.and_then(|d| serde_json::from_str(&d).ok()),
            last_success_ms: ms("last_success_ms"),
            last_failure_ms: ms("last_failure_ms"),
            last_failure: fields.get("last_failure").cloned(),
            failing_since_ms: ms("failing_since_ms"),
            pending,
            oldest_pending_ms: first.first().map(|(_, ms)| *ms as u64),
        })
    }

    /// Outcome events published since `since_ms`, oldest first (for `subscribers replay`).
    pub async fn events_since(&self, since_ms: u64) -> redis::RedisResult<Vec<OutcomeEntry>> {
        let mut c = self.conn.clone();
        let mut out = Vec::new();
        let mut start = since_ms.to_string();
        loop {
            let page: redis::streams::StreamRangeReply =
                c.xrange_count(self.events_key(), &start, "+", 1000).await?;
            let Some(last) = page.ids.last().map(|e| e.id.clone()) else {
                break;
            };
            let n = page.ids.len();
            out.extend(page.ids.into_iter().map(OutcomeEntry::from_stream));
            if n < 1000 {
                break;
            }
            start = format!("({last}");
        }
        Ok(out)
    }

    /// The outcome event with this `event_id`, if still on the stream (a scan: an
    /// operator's command, not a hot path).
    pub async fn event_by_id(&self, event_id: &str) -> redis::RedisResult<Option<OutcomeEntry>> {
        Ok(self
            .events_since(0)
            .await?
            .into_iter()
            .find(|e| e.field("event_id") == event_id))
    }
}
