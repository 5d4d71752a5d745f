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

use redis::AsyncCommands;

use super::{Store, StoreResult};
use crate::queue::RedisConnection;

/// The consumer group the delivery bridge reads the outcome stream with.
pub(crate) const DELIVERY_GROUP: &str = "subscribers";

/// One entry of the outcome stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutcomeEntry {
    pub(crate) entry_id: String,
    pub(crate) fields: HashMap<String, String>,
}

impl OutcomeEntry {
    /// When the event was published (the entry id's ms).
    pub(crate) fn published_ms(&self) -> u64 {
        crate::queue::entry_ms(&self.entry_id)
    }

    pub(crate) fn field(&self, name: &str) -> &str {
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
pub(crate) struct EventReader {
    conn: RedisConnection,
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
    /// `conn` must be a connection of the reader's own (`Connector::connect`), not a clone
    /// of the shared one: its reads block for up to a second.
    pub(crate) fn new(
        conn: RedisConnection,
        prefix: &str,
        consumer: String,
        reclaim_after: Duration,
    ) -> Self {
        Self {
            conn,
            stream: format!("{prefix}:events"),
            consumer,
            reclaim_after,
            last_reclaim: None,
        }
    }

    /// Creates the group at the stream's end when it does not exist: subscribers receive
    /// the events published from then on (`subscribers replay` sends older ones).
    pub(crate) async fn ensure_group(&mut self) -> StoreResult<()> {
        let created: redis::RedisResult<()> = self
            .conn
            .xgroup_create_mkstream(&self.stream, DELIVERY_GROUP, "$")
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// The next entries: those a dead reader left pending for `reclaim_after` first, then
    /// new ones (waiting at most `block`).
    pub(crate) async fn next_batch(
        &mut self,
        count: usize,
        block: Duration,
    ) -> StoreResult<Vec<OutcomeEntry>> {
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
            Err(e) => return Err(e.into()),
        }
        Ok(entries)
    }

    /// Acknowledges entries whose deliveries are enqueued (the stream itself is left as it
    /// is: other readers and `events tail` use it).
    pub(crate) async fn ack(&mut self, ids: &[String]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.conn
            .xack::<_, _, _, i64>(&self.stream, DELIVERY_GROUP, ids)
            .await?;
        Ok(())
    }
}

/// Why and since when a subscriber is disabled.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Disabled {
    pub(crate) at_ms: u64,
    pub(crate) reason: String,
}

/// A subscriber's delivery state as `subscribers list` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct SubscriberState {
    pub(crate) disabled: Option<Disabled>,
    pub(crate) last_success_ms: Option<u64>,
    pub(crate) last_failure_ms: Option<u64>,
    /// The last failure's kind (`HTTP 503`, `timeout`, …), never the answer's body.
    pub(crate) last_failure: Option<String>,
    /// Set at the first failure after a success; cleared by the next success.
    pub(crate) failing_since_ms: Option<u64>,
    /// Deliveries not yet delivered, dead or dropped.
    pub(crate) pending: u64,
    /// Publication time of the oldest of them.
    pub(crate) oldest_pending_ms: Option<u64>,
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
    pub(crate) async fn disabled_subscribers(&self) -> StoreResult<HashMap<String, Disabled>> {
        let mut c = self.conn.clone();
        let all: HashMap<String, String> = c.hgetall(self.disabled_key()).await?;
        Ok(all
            .into_iter()
            .filter_map(|(name, raw)| serde_json::from_str(&raw).ok().map(|d| (name, d)))
            .collect())
    }

    /// Disables a subscriber (kept until `subscribers enable`); `false` when it already was.
    pub(crate) async fn disable_subscriber(&self, name: &str, reason: &str) -> StoreResult<bool> {
        let entry = Disabled {
            at_ms: crate::queue::now_ms(),
            reason: reason.to_owned(),
        };
        let raw = serde_json::to_string(&entry).unwrap_or_default();
        let mut c = self.conn.clone();
        Ok(c.hset_nx(self.disabled_key(), name, raw).await?)
    }

    /// Enables a disabled subscriber; `false` when it was not disabled.
    pub(crate) async fn enable_subscriber(&self, name: &str) -> StoreResult<bool> {
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
    pub(crate) async fn add_pending(&self, name: &str, items: &[(String, u64)]) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        self.pending_into(&mut pipe, name, items);
        self.run(&pipe).await
    }

    /// A delivery arrived: the subscriber is healthy and the event no longer waits.
    pub(crate) async fn record_delivered(&self, name: &str, event_id: &str) -> StoreResult<()> {
        let key = self.subscriber_key(name);
        let mut pipe = redis::pipe();
        pipe.hset(&key, "last_success_ms", crate::queue::now_ms())
            .ignore()
            .hdel(&key, "failing_since_ms")
            .ignore()
            .zrem(self.pending_key(name), event_id)
            .ignore();
        self.run(&pipe).await
    }

    /// An attempt failed (`what` is its kind, never the answer's body).
    pub(crate) async fn record_failed(&self, name: &str, what: &str) -> StoreResult<()> {
        let key = self.subscriber_key(name);
        let now = crate::queue::now_ms();
        let mut pipe = redis::pipe();
        pipe.hset(&key, "last_failure_ms", now)
            .ignore()
            .hset(&key, "last_failure", what)
            .ignore()
            .hset_nx(&key, "failing_since_ms", now)
            .ignore();
        self.run(&pipe).await
    }

    /// Deliveries that will not be attempted again (dead, dropped or erased).
    pub(crate) async fn forget_pending(&self, name: &str, event_ids: &[String]) -> StoreResult<()> {
        if event_ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        c.zrem::<_, _, ()>(self.pending_key(name), event_ids)
            .await?;
        Ok(())
    }

    /// The publication time of the oldest delivery still waiting for `name`.
    pub(crate) async fn oldest_pending_ms(&self, name: &str) -> StoreResult<Option<u64>> {
        let mut c = self.conn.clone();
        let first: Vec<(String, f64)> = c.zrange_withscores(self.pending_key(name), 0, 0).await?;
        Ok(first.first().map(|(_, ms)| *ms as u64))
    }

    pub(crate) async fn subscriber_state(&self, name: &str) -> StoreResult<SubscriberState> {
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
    pub(crate) async fn events_since(&self, since_ms: u64) -> StoreResult<Vec<OutcomeEntry>> {
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
    pub(crate) async fn event_by_id(&self, event_id: &str) -> StoreResult<Option<OutcomeEntry>> {
        Ok(self
            .events_since(0)
            .await?
            .into_iter()
            .find(|e| e.field("event_id") == event_id))
    }
}
