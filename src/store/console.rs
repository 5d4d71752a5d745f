//! What the operator console reads and writes beside the pipeline's records.
//!
//! Operators need to list the sessions waiting for a person, see which fleet processes are
//! alive and what other operators did; none of that is in the request or session records.
//!
//! - `<prefix>:reviews`: a sorted set of session ids held In Review (by Didit or a rule),
//!   scored by when they were held; an entry leaves when a later status is published, and
//!   the set lives as long as the records do;
//! - `<prefix>:review:<session>`: the PII-free summary shown next to it (decider, scores,
//!   warning codes, matched rules), deleted with the entry;
//! - `<prefix>:process:<uuid>`: one heartbeat per running fleet process (a random id, never
//!   a host name), expiring when the process stops refreshing it;
//! - `<prefix>:console:audit`: the last 1,000 console actions, for actions that name no
//!   request (dead-set replays and purges) as well as those that do.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use uuid::Uuid;

use super::{sessions::SessionRecord, Store, StoreResult};
use crate::{
    domain::{RequestId, SessionStatus},
    queue::now_ms,
};

/// The session record's field that says the session is in the review index.
pub(super) const LISTED_FIELD: &str = "review";

/// How many console actions the shared log keeps.
const CONSOLE_LOG_LENGTH: isize = 1000;

/// A session held In Review, as the review queue shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReviewItem {
    pub session_id: Uuid,
    /// Unix ms when it was held.
    pub since_ms: u64,
    pub decided_by: String,
    /// The PII-free decision summary of the held event (scores, warnings, rules).
    pub data: Value,
    pub requests: Vec<RequestId>,
}

impl Store {
    pub(super) fn reviews_key(&self) -> String {
        format!("{}:reviews", self.prefix)
    }

    pub(super) fn review_key(&self, id: Uuid) -> String {
        format!("{}:review:{id}", self.prefix)
    }

    fn process_key(&self, id: Uuid) -> String {
        format!("{}:process:{id}", self.prefix)
    }

    fn console_log_key(&self) -> String {
        format!("{}:console:audit", self.prefix)
    }

    /// Adds the removal of a session's review entry to an erasure's pipeline.
    pub(super) fn forget_review(&self, pipe: &mut redis::Pipeline, id: Uuid) {
        pipe.zrem(self.reviews_key(), id.to_string()).ignore();
        pipe.del(self.review_key(id)).ignore();
    }

    /// Keeps the review index in step with a published status: In Review enters it (with
    /// its summary), any other status leaves it. The session record remembers that it is
    /// listed, so a session never held costs nothing here.
    pub(crate) async fn track_review(
        &self,
        id: Uuid,
        session: &SessionRecord,
        status: &SessionStatus,
        decided_by: &str,
        data: &Value,
    ) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        if status == &SessionStatus::InReview {
            let key = self.review_key(id);
            let now = now_ms();
            pipe.hset(self.session_key(id), LISTED_FIELD, 1)
                .ignore()
                .zadd(self.reviews_key(), id.to_string(), now)
                .ignore()
                .expire(self.reviews_key(), self.ttl())
                .ignore()
                .hset_multiple(
                    &key,
                    &[
                        ("since_ms", now.to_string()),
                        ("decided_by", decided_by.to_owned()),
                        ("data", data.to_string()),
                    ],
                )
                .ignore()
                .expire(&key, self.ttl())
                .ignore();
        } else if session.listed_for_review {
            self.forget_review(&mut pipe, id);
            pipe.hdel(self.session_key(id), LISTED_FIELD).ignore();
        } else {
            return Ok(());
        }
        self.run(&pipe).await
    }

    /// Takes a session out of the review queue (nothing follows it any more: its requests
    /// were cancelled).
    pub(crate) async fn unlist_review(&self, id: Uuid) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        self.forget_review(&mut pipe, id);
        pipe.hdel(self.session_key(id), LISTED_FIELD).ignore();
        self.run(&pipe).await
    }

    /// One session of the review queue, when it is still held In Review.
    pub(crate) async fn review(&self, id: Uuid) -> StoreResult<Option<ReviewItem>> {
        let Some(session) = self.session(id).await? else {
            return Ok(None);
        };
        if !session.listed_for_review {
            return Ok(None);
        }
        let mut c = self.conn.clone();
        let map: std::collections::HashMap<String, String> = c.hgetall(self.review_key(id)).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some(ReviewItem {
            session_id: id,
            since_ms: map
                .get("since_ms")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            decided_by: map.get("decided_by").cloned().unwrap_or_default(),
            data: map
                .get("data")
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null),
            requests: session.requests,
        }))
    }

    /// How many sessions the review index holds (an upper bound: stale entries are dropped
    /// only when listed).
    pub(crate) async fn review_count(&self) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        Ok(c.zcard(self.reviews_key()).await?)
    }

    /// Says this process is alive for `ttl`.
    pub(crate) async fn heartbeat(&self, process: Uuid, ttl: Duration) -> StoreResult<()> {
        let mut c = self.conn.clone();
        c.set_ex::<_, _, ()>(self.process_key(process), now_ms(), ttl.as_secs().max(1))
            .await?;
        Ok(())
    }

    /// Removes this process's heartbeat (it is stopping).
    pub(crate) async fn forget_process(&self, process: Uuid) -> StoreResult<()> {
        let mut c = self.conn.clone();
        c.del::<_, ()>(self.process_key(process)).await?;
        Ok(())
    }

    /// How many fleet processes refreshed their heartbeat lately (a `SCAN`: console only).
    pub(crate) async fn processes_alive(&self) -> StoreResult<usize> {
        let mut c = self.conn.clone();
        let pattern = format!("{}:process:*", self.prefix);
        let mut keys: redis::AsyncIter<'_, String> = c.scan_match(&pattern).await?;
        let mut n = 0;
        while let Some(key) = futures_util::StreamExt::next(&mut keys).await {
            key?;
            n += 1;
        }
        Ok(n)
    }

    /// Appends one console action to the shared log (no personal data in `entry`).
    pub(crate) async fn console_log(&self, mut entry: Value) -> StoreResult<()> {
        entry["at_ms"] = now_ms().into();
        let key = self.console_log_key();
        let mut pipe = redis::pipe();
        pipe.lpush(&key, entry.to_string())
            .ignore()
            .ltrim(&key, 0, CONSOLE_LOG_LENGTH - 1)
            .ignore()
            .expire(&key, self.ttl())
            .ignore();
        self.run(&pipe).await
    }

    /// The newest `n` console actions, newest first.
    pub(crate) async fn console_log_recent(&self, n: usize) -> StoreResult<Vec<Value>> {
        let mut c = self.conn.clone();
        let lines: Vec<String> = c
            .lrange(self.console_log_key(), 0, n.saturating_sub(1) as isize)
            .await?;
        Ok(lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}
