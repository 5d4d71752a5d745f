//! What the fleet remembers about verifications in Redis, outside the job queue.
//!
//! - the request record: one per request id, what was asked and how far it got. Written
//!   before the Didit call (the intent) and right after it (the session), so a retry never
//!   creates a second session;
//! - the session record: which requests a Didit session answers (Didit reuses an unfinished
//!   session for the same vendor_data), its last status and its deadline;
//! - the `<prefix>:events` stream and each request's "published" markers, written together
//!   by one script;
//! - each request's audit trail, written in the same round trip as the change it describes;
//! - the fleet-wide pause of Didit calls.
//!
//! Request ids may be the caller's own identifiers, so key names carry a hash of them,
//! never the id itself; nothing here puts personal data in a key name.

mod review;

use std::{sync::LazyLock, time::Duration};

use redis::{AsyncCommands, Script};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    domain::{AccountPause, OutcomeEvent, RequestId, SessionStatus},
    queue::now_ms,
    settings::EventSettings,
};

pub use review::ReviewItem;

/// Publishes an event unless this (request, session, type, status) was published before,
/// with its audit step. The "published" marker is a field of the request record, so it
/// lives and dies with the record.
/// KEYS: request record, events, audit trail. ARGV: event_id, type, session_id, request_id,
/// vendor_data, status, decided_by, data, record ttl s, trim minid ms, track status (0/1),
/// now ms, marker field, audit line, audit max.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HSETNX', KEYS[1], ARGV[13], ARGV[1]) == 0 then
  return 0
end
local previous = ''
if ARGV[11] == '1' then
  previous = redis.call('HGET', KEYS[1], 'last_status') or ''
  redis.call('HSET', KEYS[1], 'last_status', ARGV[6], 'decided_by', ARGV[7], 'updated_at_ms', ARGV[12])
end
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[10], '*',
  'event_id', ARGV[1], 'type', ARGV[2], 'session_id', ARGV[3], 'request_id', ARGV[4],
  'vendor_data', ARGV[5], 'status', ARGV[6], 'previous_status', previous,
  'decided_by', ARGV[7], 'data', ARGV[8])
local steps = redis.call('RPUSH', KEYS[3], ARGV[14])
local max = tonumber(ARGV[15])
if steps > max then
  redis.call('LTRIM', KEYS[3], -max, -1)
end
if steps == 1 or ARGV[11] == '1' then
  redis.call('EXPIRE', KEYS[3], ARGV[9])
end
return 1
"#,
    )
});

/// A request's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestRecord {
    pub vendor_data: String,
    pub workflow_id: Option<Uuid>,
    /// Set once Didit answered the create call (or a lookup found the session).
    pub session_id: Option<Uuid>,
    pub url: Option<String>,
    pub last_status: Option<String>,
    pub decided_by: Option<String>,
    pub enqueued_at_ms: Option<u64>,
    pub created_at_ms: Option<u64>,
    pub updated_at_ms: Option<u64>,
    /// The intent was recorded: a session may exist at Didit without being recorded here.
    pub intent: bool,
    /// An operator cancelled the request: nothing follows it any more.
    pub cancelled: bool,
}

/// What the fleet knows of one Didit session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRecord {
    /// The requests it answers that are still followed (not cancelled).
    pub requests: Vec<RequestId>,
    /// The requests it answered until they were cancelled.
    pub cancelled: Vec<RequestId>,
    /// The person it verifies (Didit reuses a session only for the same vendor_data).
    pub vendor_data: Option<String>,
    /// Didit's status at the last decision read.
    pub status: Option<SessionStatus>,
    /// Unix ms after which an unfinished session is given up.
    pub deadline_ms: u64,
    pub created_at_ms: u64,
    /// The status a rule set at Didit (its echo must not run the rules again) and the rule.
    pub rule_status: Option<SessionStatus>,
    pub rule_name: Option<String>,
    /// Didit's status when a rule held the session for review; a newer change releases it.
    pub hold_status: Option<SessionStatus>,
    /// Resubmissions rules asked for.
    pub resubmits: u32,
    /// Listed in the review queue (the console's); see [`Store::track_review`].
    pub listed_for_review: bool,
    /// The trace of the verification that created it, for the webhook that ends its wait
    /// (55 bytes while the session waits; dropped by [`Store::finish_session`]).
    pub trace: Option<crate::telemetry::TraceParent>,
}

#[derive(Clone)]
pub struct Store {
    conn: crate::queue::RedisConnection,
    prefix: String,
    settings: EventSettings,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The session record's field holding its trace context (a `traceparent`).
const TRACE_FIELD: &str = "tp";

/// The longest audit trail kept per request (older steps are dropped first).
const AUDIT_MAX: isize = 500;

fn audit_line(step: &str, fields: serde_json::Value) -> String {
    let mut entry = serde_json::json!({"at_ms": now_ms(), "step": step});
    if let (Some(e), serde_json::Value::Object(f)) = (entry.as_object_mut(), fields) {
        e.extend(f);
    }
    entry.to_string()
}

/// A session Didit created (or reused), as [`Store::record_session`] records it.
#[derive(Debug, Clone, Copy)]
pub struct NewSession<'a> {
    pub id: Uuid,
    pub url: &'a str,
    /// Unix ms after which the session is given up unless Didit finished it.
    pub deadline_ms: u64,
    /// The trace the session belongs to, kept while it waits (the first request's, when
    /// Didit reuses the session).
    pub trace: Option<crate::telemetry::TraceParent>,
}

fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    hex::encode(&h.finalize()[..16])
}

impl Store {
    pub fn new(conn: crate::queue::RedisConnection, prefix: &str, settings: EventSettings) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            settings,
        }
    }

    pub fn events_key(&self) -> String {
        format!("{}:events", self.prefix)
    }

    fn request_key(&self, id: &RequestId) -> String {
        format!("{}:request:{}", self.prefix, digest(&[id.as_str()]))
    }

    fn session_key(&self, id: Uuid) -> String {
        format!("{}:session:{id}", self.prefix)
    }

    fn pause_key(&self) -> String {
        format!("{}:didit:paused", self.prefix)
    }

    /// The salted hash of a vendor_data: the only form of it that appears in a key name
    /// or in `kyc.subject.erased`.
    pub fn subject_hash(&self, vendor_data: &str) -> String {
        use secrecy::ExposeSecret;
        digest(&[self.settings.subject_salt.expose_secret(), vendor_data])
    }

    /// The person's index: a hash whose fields are their request ids (a small hash is the
    /// most compact container Redis has for a few short strings).
    fn subject_key(&self, vendor_data: &str) -> String {
        format!("{}:subject:{}", self.prefix, self.subject_hash(vendor_data))
    }

    fn ttl(&self) -> i64 {
        self.settings.record_retention.as_secs() as i64
    }

    pub async fn request(&self, id: &RequestId) -> redis::RedisResult<Option<RequestRecord>> {
        let mut c = self.conn.clone();
        let map: std::collections::HashMap<String, String> =
            c.hgetall(self.request_key(id)).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some(RequestRecord {
            vendor_data: map.get("vendor_data").cloned().unwrap_or_default(),
            workflow_id: map.get("workflow_id").and_then(|w| w.parse().ok()),
            session_id: map.get("session_id").and_then(|s| s.parse().ok()),
            url: map.get("url").cloned(),
            last_status: map.get("last_status").cloned().filter(|s| !s.is_empty()),
            decided_by: map.get("decided_by").cloned(),
            enqueued_at_ms: map.get("enqueued_at_ms").and_then(|s| s.parse().ok()),
            created_at_ms: map.get("created_at_ms").and_then(|s| s.parse().ok()),
            updated_at_ms: map.get("updated_at_ms").and_then(|s| s.parse().ok()),
            intent: map.contains_key("intent_at_ms"),
            cancelled: map.contains_key("cancelled_at_ms"),
        }))
    }

    /// Records that a request was accepted, so its status can be read before a worker
    /// takes it, and its first audit step. Never overwrites what a worker recorded. Runs
    /// before the job is queued: a failure after it leaves a record the caller's retry of
    /// the same request id completes.
    pub async fn record_enqueued(
        &self,
        id: &RequestId,
        vendor_data: &str,
    ) -> redis::RedisResult<()> {
        let key = self.request_key(id);
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.hset_nx(&key, "request_id", id.as_str())
            .ignore()
            .hset_nx(&key, "vendor_data", vendor_data)
            .ignore()
            .hset_nx(&key, "enqueued_at_ms", now_ms())
            .ignore()
            .expire(&key, self.ttl())
            .ignore()
            .hset(self.subject_key(vendor_data), id.as_str(), 1)
            .ignore()
            .expire(self.subject_key(vendor_data), self.ttl())
            .ignore();
        self.start_trail(&mut pipe, id, "enqueued", serde_json::json!({}));
        pipe.query_async(&mut c).await
    }

    fn open_sessions_key(&self) -> String {
        format!("{}:sessions:open", self.prefix)
    }

    /// Stops sweeping a session (it reached a status nothing follows).
    pub async fn close_session(&self, id: Uuid) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        c.zrem(self.open_sessions_key(), id.to_string()).await
    }

    /// Closes a session (as [`Store::close_session`]) and drops the trace context kept for
    /// its wait, when it has one, in the same round trip.
    pub async fn finish_session(
        &self,
        id: Uuid,
        session: &SessionRecord,
    ) -> redis::RedisResult<()> {
        if session.trace.is_none() {
            return self.close_session(id).await;
        }
        let mut c = self.conn.clone();
        redis::pipe()
            .zrem(self.open_sessions_key(), id.to_string())
            .ignore()
            .hdel(self.session_key(id), TRACE_FIELD)
            .ignore()
            .query_async(&mut c)
            .await
    }

    /// Open sessions not looked at for `every` (oldest first, at most `limit`); each is
    /// marked as looked at now. The score of an open session is when it was last swept
    /// (or created).
    pub async fn sessions_to_sweep(
        &self,
        limit: usize,
        every: Duration,
    ) -> redis::RedisResult<Vec<Uuid>> {
        let mut c = self.conn.clone();
        let now = now_ms();
        let before = now.saturating_sub(every.as_millis() as u64);
        let due: Vec<String> = c
            .zrangebyscore_limit(self.open_sessions_key(), "-inf", before, 0, limit as isize)
            .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &due {
            pipe.zadd(self.open_sessions_key(), id, now).ignore();
        }
        let _: () = pipe.query_async(&mut c).await?;
        Ok(due.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Takes the fleet-wide sweep turn for `every`; `false` when another process has it.
    pub async fn take_sweep_turn(&self, every: Duration) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}:sweep:turn", self.prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(every.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    }

    /// Request ids recorded for a person (by vendor_data), and their sessions.
    pub async fn subject(
        &self,
        vendor_data: &str,
    ) -> redis::RedisResult<(Vec<RequestId>, Vec<Uuid>)> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = c.hkeys(self.subject_key(vendor_data)).await?;
        let requests: Vec<RequestId> = ids
            .iter()
            .filter_map(|r| RequestId::parse(r).ok())
            .collect();
        let mut sessions = Vec::new();
        for r in &requests {
            if let Some(sid) = self.request(r).await?.and_then(|r| r.session_id) {
                sessions.push(sid);
            }
        }
        Ok((requests, sessions))
    }

    /// Deletes every local record of these requests and sessions and the person's index.
    pub async fn forget(
        &self,
        vendor_data: &str,
        requests: &[RequestId],
        sessions: &[Uuid],
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for r in requests {
            pipe.del(self.request_key(r)).ignore();
            pipe.del(format!("{}:lock", self.request_key(r))).ignore();
            pipe.del(self.audit_key(r)).ignore();
        }
        for s in sessions {
            pipe.del(self.session_key(*s)).ignore();
            pipe.zrem(self.open_sessions_key(), s.to_string()).ignore();
            self.forget_review(&mut pipe, *s);
        }
        pipe.del(self.subject_key(vendor_data)).ignore();
        let mut c = self.conn.clone();
        pipe.query_async(&mut c).await
    }

    /// Removes outcome events that name this person (their `vendor_data`); returns how many.
    pub async fn forget_events(&self, vendor_data: &str) -> redis::RedisResult<usize> {
        let mut c = self.conn.clone();
        let mut removed = 0;
        let mut start = "-".to_owned();
        loop {
            let page: redis::streams::StreamRangeReply =
                c.xrange_count(self.events_key(), &start, "+", 1000).await?;
            let Some(last) = page.ids.last().map(|e| e.id.clone()) else {
                break;
            };
            let ids: Vec<String> = page
                .ids
                .iter()
                .filter(|e| {
                    e.map
                        .get("vendor_data")
                        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                        .is_some_and(|v| v == vendor_data)
                })
                .map(|e| e.id.clone())
                .collect();
            if !ids.is_empty() {
                let n: usize = c.xdel(self.events_key(), &ids).await?;
                removed += n;
            }
            if page.ids.len() < 1000 {
                break;
            }
            start = format!("({last}");
        }
        Ok(removed)
    }

    /// Removes unread intake-stream entries that name this person; returns how many.
    pub async fn forget_intake(&self, vendor_data: &str) -> redis::RedisResult<usize> {
        let key = format!("{}:intake", self.prefix);
        let mut c = self.conn.clone();
        let all: redis::streams::StreamRangeReply = c.xrange_all(&key).await?;
        let ids: Vec<String> = all
            .ids
            .iter()
            .filter(|e| {
                e.map
                    .get("vendor_data")
                    .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                    .is_some_and(|v| v == vendor_data)
            })
            .map(|e| e.id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        c.xdel(&key, &ids).await
    }

    fn audit_key(&self, id: &RequestId) -> String {
        format!("{}:audit:{}", self.prefix, digest(&[id.as_str()]))
    }

    /// Appends one step to the PII-free audit trail of each request (kept as long as the
    /// records). `fields` must carry no personal data.
    ///
    /// Steps are written on changes (a new status, a webhook, an event), never per routine
    /// poll, so a trail stays short; the publish script, which every outcome passes, keeps
    /// it to the last `AUDIT_MAX` steps whatever happens.
    pub async fn audit(
        &self,
        requests: &[RequestId],
        step: &str,
        fields: serde_json::Value,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        self.audit_into(&mut pipe, requests, step, fields);
        let mut c = self.conn.clone();
        pipe.query_async(&mut c).await
    }

    /// Adds an audit step to a pipeline, so it travels with the write it describes.
    ///
    /// A trail is started (with its lifetime) where the request record is
    /// ([`Store::start_trail`]); later steps only append to a trail that exists, so a
    /// request whose records expired or were erased never gets one back.
    fn audit_into(
        &self,
        pipe: &mut redis::Pipeline,
        requests: &[RequestId],
        step: &str,
        fields: serde_json::Value,
    ) {
        let line = audit_line(step, fields);
        for id in requests {
            pipe.rpush_exists(self.audit_key(id), &line).ignore();
        }
    }

    /// Starts (or appends to) a request's trail, giving it the records' lifetime.
    fn start_trail(
        &self,
        pipe: &mut redis::Pipeline,
        id: &RequestId,
        step: &str,
        fields: serde_json::Value,
    ) {
        let key = self.audit_key(id);
        pipe.rpush(&key, audit_line(step, fields))
            .ignore()
            .expire(&key, self.ttl())
            .ignore();
    }

    /// Records one decision read of a session: the status Didit gave, the read count and,
    /// when it found a change, the step `decision_read`; returns the reads so far.
    pub async fn record_read(
        &self,
        id: Uuid,
        requests: &[RequestId],
        status: &SessionStatus,
        change: Option<serde_json::Value>,
    ) -> redis::RedisResult<u64> {
        let key = self.session_key(id);
        let mut pipe = redis::pipe();
        pipe.hincr(&key, "fetches", 1)
            .hset(&key, "status", status.as_str())
            .ignore()
            .expire(&key, self.ttl())
            .ignore();
        if let Some(fields) = change {
            self.audit_into(&mut pipe, requests, "decision_read", fields);
        }
        let mut c = self.conn.clone();
        let (n,): (u64,) = pipe.query_async(&mut c).await?;
        Ok(n)
    }

    /// The audit trail of a request, oldest first.
    pub async fn audit_trail(&self, id: &RequestId) -> redis::RedisResult<Vec<serde_json::Value>> {
        let mut c = self.conn.clone();
        let lines: Vec<String> = c.lrange(self.audit_key(id), 0, -1).await?;
        Ok(lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Marks a request cancelled, in its record and in its session's; `false` when it was
    /// already.
    pub async fn cancel_request(
        &self,
        id: &RequestId,
        session: Option<Uuid>,
    ) -> redis::RedisResult<bool> {
        let key = self.request_key(id);
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.hset_nx(&key, "cancelled_at_ms", now_ms())
            .expire(&key, self.ttl())
            .ignore();
        if let Some(sid) = session {
            let skey = self.session_key(sid);
            pipe.hset(&skey, format!("r:{}", id.as_str()), 0)
                .ignore()
                .expire(&skey, self.ttl())
                .ignore();
        }
        let (set,): (bool,) = pipe.query_async(&mut c).await?;
        Ok(set)
    }

    /// How long a webhook delivery id is remembered: Didit retries within minutes, and no
    /// key outlives the record retention.
    pub fn dedupe_ttl(&self) -> Duration {
        Duration::from_secs(24 * 3600).min(self.settings.record_retention)
    }

    /// Records that a session is about to be created for this request.
    ///
    /// `indexed` says the record already exists for this vendor_data (the producer wrote
    /// it, with its lifetime and the person's index): then only the new fields are written.
    pub async fn record_intent(
        &self,
        id: &RequestId,
        vendor_data: &str,
        workflow_id: Uuid,
        indexed: bool,
    ) -> redis::RedisResult<()> {
        let key = self.request_key(id);
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.hset_multiple(
            &key,
            &[
                ("request_id", id.as_str().to_owned()),
                ("vendor_data", vendor_data.to_owned()),
                ("workflow_id", workflow_id.to_string()),
                ("intent_at_ms", now_ms().to_string()),
            ],
        )
        .ignore();
        if !indexed {
            pipe.expire(&key, self.ttl())
                .ignore()
                .hset(self.subject_key(vendor_data), id.as_str(), 1)
                .ignore()
                .expire(self.subject_key(vendor_data), self.ttl())
                .ignore();
            self.start_trail(&mut pipe, id, "intent", serde_json::json!({}));
        }
        pipe.query_async(&mut c).await
    }

    /// Records the session Didit created (or reused) for this request, and the reverse map
    /// (the session record's `r:<request id>` fields), with the audit step `step`.
    ///
    /// `recorded` says the request record was written moments ago (the intent), with its
    /// lifetime and the person's index: then neither is written again.
    pub async fn record_session(
        &self,
        id: &RequestId,
        vendor_data: &str,
        session: NewSession<'_>,
        recorded: bool,
        step: serde_json::Value,
    ) -> redis::RedisResult<()> {
        let key = self.request_key(id);
        let skey = self.session_key(session.id);
        let now = now_ms().to_string();
        let mut pipe = redis::pipe();
        pipe.hset_multiple(
            &key,
            &[
                ("request_id", id.as_str().to_owned()),
                ("vendor_data", vendor_data.to_owned()),
                ("session_id", session.id.to_string()),
                ("url", session.url.to_owned()),
                ("created_at_ms", now.clone()),
            ],
        )
        .ignore();
        if !recorded {
            pipe.expire(&key, self.ttl())
                .ignore()
                .hset(self.subject_key(vendor_data), id.as_str(), 1)
                .ignore()
                .expire(self.subject_key(vendor_data), self.ttl())
                .ignore();
        }
        // Didit reuses an unfinished session only for the same person: the first request's
        // creation time and deadline stay.
        pipe.hset_multiple(
            &skey,
            &[
                (format!("r:{}", id.as_str()).as_str(), "1"),
                ("vendor_data", vendor_data),
            ],
        )
        .ignore()
        .hset_nx(&skey, "created_at_ms", &now)
        .ignore()
        .hset_nx(&skey, "deadline_ms", session.deadline_ms)
        .ignore();
        if let Some(trace) = session.trace {
            pipe.hset_nx(&skey, TRACE_FIELD, trace.to_string()).ignore();
        }
        pipe.expire(&skey, self.ttl())
            .ignore()
            .zadd(self.open_sessions_key(), session.id.to_string(), &now)
            .ignore();
        if recorded {
            self.audit_into(&mut pipe, std::slice::from_ref(id), "session_created", step);
        } else {
            self.start_trail(&mut pipe, id, "session_created", step);
        }
        let mut c = self.conn.clone();
        pipe.query_async(&mut c).await
    }

    pub async fn session(&self, id: Uuid) -> redis::RedisResult<Option<SessionRecord>> {
        let mut c = self.conn.clone();
        let map: std::collections::HashMap<String, String> =
            c.hgetall(self.session_key(id)).await?;
        if map.is_empty() {
            return Ok(None);
        }
        // `r:<request id>` is 1 while the request is followed, 0 once it was cancelled.
        let (mut requests, mut cancelled) = (Vec::new(), Vec::new());
        for (field, value) in &map {
            let Some(rid) = field
                .strip_prefix("r:")
                .and_then(|r| RequestId::parse(r).ok())
            else {
                continue;
            };
            if value == "0" {
                cancelled.push(rid);
            } else {
                requests.push(rid);
            }
        }
        requests.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        cancelled.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(Some(SessionRecord {
            requests,
            cancelled,
            vendor_data: map.get("vendor_data").cloned(),
            status: map.get("status").map(|s| SessionStatus::parse(s)),
            deadline_ms: map
                .get("deadline_ms")
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX),
            rule_status: map.get("rule_status").map(|s| SessionStatus::parse(s)),
            rule_name: map.get("rule_name").cloned(),
            hold_status: map.get("hold_status").map(|s| SessionStatus::parse(s)),
            resubmits: map
                .get("resubmits")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            created_at_ms: map
                .get("created_at_ms")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            listed_for_review: map.contains_key(review::LISTED_FIELD),
            trace: map.get(TRACE_FIELD).and_then(|t| t.parse().ok()),
        }))
    }

    /// Sets fields of a session record, keeping its lifetime bounded: a write after the
    /// record expired must not leave a key without a TTL behind.
    async fn update_session(&self, id: Uuid, fields: &[(&str, String)]) -> redis::RedisResult<()> {
        let key = self.session_key(id);
        let mut c = self.conn.clone();
        redis::pipe()
            .hset_multiple(&key, fields)
            .ignore()
            .expire(&key, self.ttl())
            .ignore()
            .query_async(&mut c)
            .await
    }

    /// Adds 1 to a counter of a session record (bounded lifetime as above); returns it.
    async fn count_in_session(&self, id: Uuid, field: &str) -> redis::RedisResult<u64> {
        let key = self.session_key(id);
        let mut c = self.conn.clone();
        let (n,): (u64,) = redis::pipe()
            .hincr(&key, field, 1)
            .expire(&key, self.ttl())
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(n)
    }

    /// Records that a rule set `status` at Didit, so the echo is recognised.
    pub async fn set_rule_status(
        &self,
        id: Uuid,
        status: &SessionStatus,
        rule: &str,
    ) -> redis::RedisResult<()> {
        self.update_session(
            id,
            &[
                ("rule_status", status.as_str().to_owned()),
                ("rule_name", rule.to_owned()),
            ],
        )
        .await
    }

    /// Holds a session for review by a rule while Didit's status stays `status`.
    pub async fn set_hold(
        &self,
        id: Uuid,
        status: &SessionStatus,
        rule: &str,
    ) -> redis::RedisResult<()> {
        self.update_session(
            id,
            &[
                ("hold_status", status.as_str().to_owned()),
                ("rule_name", rule.to_owned()),
            ],
        )
        .await
    }

    /// Releases a rule's hold (Didit moved on).
    pub async fn clear_hold(&self, id: Uuid) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        c.hdel(self.session_key(id), "hold_status").await
    }

    /// Counts a resubmission a rule asked for; returns the count.
    pub async fn count_resubmit(&self, id: Uuid) -> redis::RedisResult<u32> {
        self.count_in_session(id, "resubmits")
            .await
            .map(|n| n as u32)
    }

    pub async fn set_session_deadline(&self, id: Uuid, deadline_ms: u64) -> redis::RedisResult<()> {
        self.update_session(id, &[("deadline_ms", deadline_ms.to_string())])
            .await
    }

    /// Publishes an event once per (request, session, type, status) and records the step in
    /// the request's audit trail; `true` if it was new.
    pub async fn publish(&self, event: &OutcomeEvent) -> redis::RedisResult<bool> {
        let session = event.session_id.map(|s| s.to_string()).unwrap_or_default();
        let marker = format!(
            "p:{}",
            digest(&[
                event.request_id.as_str(),
                &session,
                event.kind,
                &event.status
            ])
        );
        // The event id is derived from the other fields (UUIDv5), so it is not repeated.
        let step = audit_line(
            "event_published",
            serde_json::json!({"type": event.kind, "status": event.status, "decided_by": event.decided_by}),
        );
        let tracks_status = event.kind != crate::domain::EventType::Created.as_str();
        let minid = now_ms().saturating_sub(self.settings.retention.as_millis() as u64);
        // The trace the work that publishes belongs to, so a consumer can open it.
        let data = match crate::telemetry::current() {
            Some(trace) if event.data.is_object() => {
                let mut data = event.data.clone();
                data["trace_id"] = serde_json::Value::from(trace.trace_id());
                data.to_string()
            }
            _ => event.data.to_string(),
        };
        let mut c = self.conn.clone();
        let published: i64 = PUBLISH
            .key(self.request_key(&event.request_id))
            .key(self.events_key())
            .key(self.audit_key(&event.request_id))
            .arg(event.event_id.to_string())
            .arg(event.kind)
            .arg(&session)
            .arg(event.request_id.as_str())
            .arg(&event.vendor_data)
            .arg(&event.status)
            .arg(&event.decided_by)
            .arg(data)
            .arg(self.ttl())
            .arg(minid)
            .arg(if tracks_status { "1" } else { "0" })
            .arg(now_ms())
            .arg(marker)
            .arg(step)
            .arg(AUDIT_MAX)
            .invoke_async(&mut c)
            .await?;
        Ok(published == 1)
    }

    /// The current fleet-wide pause of Didit calls, if any.
    pub async fn pause(&self) -> redis::RedisResult<Option<AccountPause>> {
        let mut c = self.conn.clone();
        let reason: Option<String> = c.get(self.pause_key()).await?;
        Ok(reason.and_then(|r| AccountPause::parse(&r)))
    }

    /// Pauses Didit calls for the whole fleet until [`Store::resume`].
    pub async fn set_pause(&self, pause: AccountPause) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        c.set_nx(self.pause_key(), pause.as_str()).await
    }

    pub async fn resume(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        c.del(self.pause_key()).await
    }

    /// Takes the per-request lock for `ttl` (released by [`Store::unlock_request`], or by
    /// expiry when its holder died); `false` when another delivery of the same request
    /// holds it.
    pub async fn lock_request(&self, id: &RequestId, ttl: Duration) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}:lock", self.request_key(id)))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    }

    pub async fn unlock_request(&self, id: &RequestId) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        c.del(format!("{}:lock", self.request_key(id))).await
    }

    /// Remembers a webhook delivery id; `false` when it was seen before.
    pub async fn first_delivery(&self, key: &str, ttl: Duration) -> redis::RedisResult<bool> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}:webhook:{}", self.prefix, digest(&[key])))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    }

    /// Forgets a delivery id so a retry of it is processed.
    pub async fn forget_delivery(&self, key: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        c.del(format!("{}:webhook:{}", self.prefix, digest(&[key])))
            .await
    }

    /// Unread events per consumer group of the outcome stream (Redis 7's `lag`; a group
    /// whose lag Redis cannot compute counts every entry after its position).
    pub async fn event_consumer_lag(&self) -> redis::RedisResult<Vec<(String, u64)>> {
        let mut c = self.conn.clone();
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.events_key())
            .query_async(&mut c)
            .await?;
        let mut lags = Vec::new();
        if let redis::Value::Array(groups) = groups {
            for group in groups {
                let fields: std::collections::HashMap<String, redis::Value> =
                    match redis::from_redis_value(group) {
                        Ok(f) => f,
                        Err(_) => continue,
                    };
                let name: Option<String> = fields
                    .get("name")
                    .and_then(|v| redis::from_redis_value_ref(v).ok());
                let lag: Option<u64> = fields
                    .get("lag")
                    .and_then(|v| redis::from_redis_value_ref(v).ok());
                if let Some(name) = name {
                    lags.push((name, lag.unwrap_or(0)));
                }
            }
        }
        Ok(lags)
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(drop)
    }
}
