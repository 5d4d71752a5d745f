//! The session record and the sweep of open sessions.
//!
//! Didit reuses an unfinished session for the same vendor_data, so one session may answer
//! several requests: the session record is the reverse map (its `r:<request id>` fields)
//! that a webhook or a poll follows to every request it decides, with what the rules did to
//! it. Open sessions are also listed by when they were last looked at, so a sweep finds the
//! ones whose polls were lost.

use std::{sync::LazyLock, time::Duration};

use redis::{AsyncCommands, Script};
use uuid::Uuid;

use super::{
    console::LISTED_FIELD, events::PUBLISH_FN, field, requests::audit_line, Store, StoreError,
    StoreResult,
};
use crate::{
    domain::{lifecycle, EventType, OutcomeEvent, RequestId, SessionStatus},
    queue::now_ms,
};

/// What the fleet knows of one Didit session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SessionRecord {
    /// The requests it answers that are still followed (not cancelled).
    pub requests: Vec<RequestId>,
    /// The requests it answered until they were cancelled.
    pub cancelled: Vec<RequestId>,
    /// The person it verifies (Didit reuses a session only for the same vendor_data).
    pub vendor_data: Option<String>,
    /// Didit's status at the last decision read (or the resubmission the fleet asked for).
    pub status: Option<SessionStatus>,
    /// The change round: how many times `status` changed. An event belongs to the round it
    /// was published in, so a status reached again (Declined, resubmitted, Declined) is a
    /// new event while a second read of the same change is not.
    pub round: u64,
    /// The workflow version the session was created on (Didit's `workflow_version`), whose
    /// expiration applies; `None` when unknown (a session found or adopted, not created).
    pub workflow_version: Option<i64>,
    /// Unix ms after which an unfinished session is given up.
    pub deadline_ms: u64,
    pub created_at_ms: u64,
    /// Unix ms the recorded status was true at (when the read that saw it was sent, or when
    /// the fleet asked Didit for it); 0 when a record written before it was kept says nothing.
    pub as_of_ms: u64,
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

impl SessionRecord {
    /// The record as the lifecycle reads it ([`lifecycle::step`]). The status the fleet set
    /// at Didit (a rule's or an operator's `update-status`, a resubmission) is the session's
    /// status, so its echo is no change. A result Didit reached by itself stays open to the
    /// decision step on every read, as before the state machine: its events are published
    /// once by the store's "already published" markers, so a read after a crash between
    /// recording the status and publishing still publishes. A record written before it
    /// kept the time of its status (`as_of_ms` 0) orders nothing.
    pub(crate) fn lifecycle(&self) -> lifecycle::Session {
        let status = self.rule_status.clone().or_else(|| self.status.clone());
        let hold = self.hold_status.clone().map(|status| lifecycle::Hold {
            status,
            rule: self.rule_name.clone().unwrap_or_default(),
        });
        let phase = match &status {
            _ if self.requests.is_empty() && !self.cancelled.is_empty() => {
                lifecycle::Phase::Cancelled
            }
            _ if hold.is_some() => lifecycle::Phase::Watching,
            Some(SessionStatus::InReview) => lifecycle::Phase::Watching,
            Some(s) if self.rule_status.is_some() && EventType::for_status(s).is_some() => {
                lifecycle::Phase::Settled
            }
            _ => lifecycle::Phase::Open,
        };
        lifecycle::Session {
            requests: self.requests.clone(),
            cancelled: self.cancelled.clone(),
            status,
            round: self.round,
            as_of_ms: self.as_of_ms,
            phase,
            hold,
            resubmits: self.resubmits,
            created_at_ms: self.created_at_ms,
            deadline_ms: self.deadline_ms,
            published: lifecycle::Published::default(),
        }
    }
}

/// A decision read as [`Store::record_read`] records it, with what its plan changes in the
/// session record.
#[derive(Debug)]
pub(crate) struct ReadRecord<'a> {
    pub status: &'a SessionStatus,
    /// When the read was sent (Unix ms).
    pub sent_at_ms: u64,
    /// The `decision_read` audit step's fields, written when the status changed.
    pub change: serde_json::Value,
    pub hold: HoldChange<'a>,
    /// A new deadline (Unix ms).
    pub deadline_ms: Option<u64>,
    /// Nothing follows the session any more: stop sweeping it, drop its trace context.
    pub finish: bool,
    /// The `rules_evaluated` audit step's fields, when the rules ran.
    pub rules: Option<serde_json::Value>,
}

/// What [`Store::record_read`] recorded.
#[derive(Debug)]
pub(crate) struct ReadRecorded {
    /// Reads of the session so far.
    pub fetches: u64,
    /// The change round now.
    pub round: u64,
    /// Whether the status changed.
    pub changed: bool,
    /// For each event, whether it was new.
    pub published: Vec<bool>,
}

/// What a read's plan does to a rule's hold.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HoldChange<'a> {
    Keep,
    Set {
        status: &'a SessionStatus,
        rule: &'a str,
    },
    Clear,
}

/// A session Didit created (or reused), as [`Store::record_session`] records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewSession<'a> {
    pub id: Uuid,
    pub url: &'a str,
    /// Unix ms after which the session is given up unless Didit finished it.
    pub deadline_ms: u64,
    /// The workflow version Didit created it on, when the create response said.
    pub workflow_version: Option<i64>,
    /// Its status when Didit answered: `Not Started`, or a reused session's own.
    pub status: &'a SessionStatus,
    /// The trace the session belongs to, kept while it waits (the first request's, when
    /// Didit reuses the session).
    pub trace: Option<crate::telemetry::TraceParent>,
}

/// Records a decision read, what its plan changes in the session record, and its events
/// (see [`Store::record_read`]).
/// KEYS: session record, open sessions, events stream, the audit trail of each request it
/// serves, then each event's request record and audit trail.
/// ARGV: status, sent at (Unix ms), record ttl s, the `decision_read` audit line, hold
/// (`set`, `clear` or empty), held status, rule, deadline ms (empty: kept), finish (`1`),
/// session id, how many audit trails, how many events, the `rules_evaluated` audit line
/// (empty: none), then each event's [`PUBLISH_FN`] arguments.
static RECORD_READ: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PUBLISH_FN}\n{RECORD_READ_BODY}")));

const RECORD_READ_BODY: &str = r#"
local key = KEYS[1]
local current = redis.call('HGET', key, 'status')
local ours = redis.call('HGET', key, 'rule_status')
local known = ours or current
local as_of = tonumber(redis.call('HGET', key, 'as_of_ms') or '0')
local sent = tonumber(ARGV[2])
if known ~= ARGV[1] and sent < as_of then
  return {0, tonumber(redis.call('HGET', key, 'round') or '0'), -1}
end
local trails = tonumber(ARGV[11])
local fetches = redis.call('HINCRBY', key, 'fetches', 1)
local round
local changed = 0
if current ~= ARGV[1] then
  changed = 1
  round = redis.call('HINCRBY', key, 'round', 1)
  if ours and ours ~= ARGV[1] then
    redis.call('HDEL', key, 'rule_status', 'rule_name')
  end
  if sent > as_of then
    redis.call('HSET', key, 'as_of_ms', ARGV[2])
  end
  for i = 4, 3 + trails do
    redis.call('RPUSHX', KEYS[i], ARGV[4])
  end
else
  round = tonumber(redis.call('HGET', key, 'round') or '0')
end
if ARGV[13] ~= '' then
  for i = 4, 3 + trails do
    redis.call('RPUSHX', KEYS[i], ARGV[13])
  end
end
redis.call('HSET', key, 'status', ARGV[1])
if ARGV[5] == 'set' then
  redis.call('HSET', key, 'hold_status', ARGV[6], 'rule_name', ARGV[7])
elseif ARGV[5] == 'clear' then
  redis.call('HDEL', key, 'hold_status')
end
if ARGV[8] ~= '' then
  redis.call('HSET', key, 'deadline_ms', ARGV[8])
end
if ARGV[9] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[10])
  redis.call('HDEL', key, 'tp')
end
redis.call('EXPIRE', key, ARGV[3])
local result = {fetches, round, changed}
for e = 0, tonumber(ARGV[12]) - 1 do
  local A = {}
  for j = 1, 18 do
    A[j] = ARGV[13 + e * 18 + j]
  end
  local k = 3 + trails + e * 2
  result[#result + 1] = publish(KEYS[k + 1], KEYS[3], KEYS[k + 2], A)
end
return result
"#;

/// The session record's field holding when its status was true (Unix ms).
const AS_OF_FIELD: &str = "as_of_ms";

/// The session record's field holding its trace context (a `traceparent`).
const TRACE_FIELD: &str = "tp";

impl Store {
    pub(super) fn session_key(&self, id: Uuid) -> String {
        format!("{}:session:{id}", self.prefix)
    }

    fn open_sessions_key(&self) -> String {
        format!("{}:sessions:open", self.prefix)
    }

    /// Adds a request to a session's record (created if new) and lists the session as open.
    /// Didit reuses an unfinished session only for the same person: the first request's
    /// creation time and deadline stay.
    pub(super) fn open_session(
        &self,
        pipe: &mut redis::Pipeline,
        request: &RequestId,
        vendor_data: &str,
        session: NewSession<'_>,
        now: &str,
    ) {
        let key = self.session_key(session.id);
        pipe.hset_multiple(
            &key,
            &[
                (format!("r:{}", request.as_str()).as_str(), "1"),
                ("vendor_data", vendor_data),
            ],
        )
        .ignore()
        .hset_nx(&key, "created_at_ms", now)
        .ignore()
        .hset_nx(&key, "deadline_ms", session.deadline_ms)
        .ignore();
        if let Some(version) = session.workflow_version {
            pipe.hset_nx(&key, "workflow_version", version).ignore();
        }
        if let Some(trace) = session.trace {
            pipe.hset_nx(&key, TRACE_FIELD, trace.to_string()).ignore();
        }
        pipe.expire(&key, self.ttl())
            .ignore()
            .zadd(self.open_sessions_key(), session.id.to_string(), now)
            .ignore();
    }

    /// Marks a request as no longer followed in its session's record.
    pub(super) fn unfollow(&self, pipe: &mut redis::Pipeline, session: Uuid, request: &RequestId) {
        let key = self.session_key(session);
        pipe.hset(&key, format!("r:{}", request.as_str()), 0)
            .ignore()
            .expire(&key, self.ttl())
            .ignore();
    }

    /// Adds the removal of a session's record to an erasure's pipeline.
    pub(super) fn forget_session(&self, pipe: &mut redis::Pipeline, id: Uuid) {
        pipe.del(self.session_key(id)).ignore();
        pipe.zrem(self.open_sessions_key(), id.to_string()).ignore();
    }

    pub(crate) async fn session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>> {
        const RECORD: &str = "session";
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
            round: field(&map, RECORD, "round")?.unwrap_or(0),
            workflow_version: field(&map, RECORD, "workflow_version")?,
            deadline_ms: field(&map, RECORD, "deadline_ms")?.unwrap_or(u64::MAX),
            rule_status: map.get("rule_status").map(|s| SessionStatus::parse(s)),
            rule_name: map.get("rule_name").cloned(),
            hold_status: map.get("hold_status").map(|s| SessionStatus::parse(s)),
            resubmits: field(&map, RECORD, "resubmits")?.unwrap_or(0),
            created_at_ms: field(&map, RECORD, "created_at_ms")?.unwrap_or(0),
            as_of_ms: field(&map, RECORD, AS_OF_FIELD)?.unwrap_or(0),
            listed_for_review: map.contains_key(LISTED_FIELD),
            trace: map.get(TRACE_FIELD).and_then(|t| t.parse().ok()),
        }))
    }

    /// Sets fields of a session record, keeping its lifetime bounded: a write after the
    /// record expired must not leave a key without a TTL behind.
    async fn update_session(&self, id: Uuid, fields: &[(&str, String)]) -> StoreResult<()> {
        let key = self.session_key(id);
        let mut pipe = redis::pipe();
        pipe.hset_multiple(&key, fields)
            .ignore()
            .expire(&key, self.ttl())
            .ignore();
        self.run(&pipe).await
    }

    /// Records one decision read of a session, sent at `sent_at_ms`, with what its plan
    /// changes in the session record and the events it publishes, in one script. A status
    /// other than the recorded one is a change, true as of when the read was sent: the
    /// change round moves on, the step `decision_read` (`change`) is audited, and the status
    /// a rule or an operator set is forgotten once Didit moved past it (a later return to
    /// that status is not its echo). A read sent before the recorded change that names
    /// another status is older: nothing is written or published, and `None` is returned.
    /// Otherwise returns the reads so far, the change round now, whether the status changed
    /// and, for each event, whether it was new.
    pub(crate) async fn record_read(
        &self,
        id: Uuid,
        session: &SessionRecord,
        read: ReadRecord<'_>,
        events: &[OutcomeEvent],
    ) -> StoreResult<Option<ReadRecorded>> {
        let mut invocation = RECORD_READ.prepare_invoke();
        invocation
            .key(self.session_key(id))
            .key(self.open_sessions_key())
            .key(self.events_key());
        for request in &session.requests {
            invocation.key(self.audit_key(request));
        }
        for event in events {
            invocation
                .key(self.request_key(&event.request_id))
                .key(self.audit_key(&event.request_id));
        }
        let (hold, held, rule) = match read.hold {
            HoldChange::Keep => ("", "", ""),
            HoldChange::Set { status, rule } => ("set", status.as_str(), rule),
            HoldChange::Clear => ("clear", "", ""),
        };
        invocation
            .arg(read.status.as_str())
            .arg(read.sent_at_ms)
            .arg(self.ttl())
            .arg(audit_line("decision_read", read.change))
            .arg(hold)
            .arg(held)
            .arg(rule)
            .arg(read.deadline_ms.map(|d| d.to_string()).unwrap_or_default())
            .arg(if read.finish { "1" } else { "" })
            .arg(id.to_string())
            .arg(session.requests.len())
            .arg(events.len())
            .arg(
                read.rules
                    .map(|r| audit_line("rules_evaluated", r))
                    .unwrap_or_default(),
            );
        for event in events {
            for arg in self.publish_args(event) {
                invocation.arg(arg);
            }
        }
        let mut c = self.conn.clone();
        let reply: Vec<i64> = invocation.invoke_async(&mut c).await?;
        let [fetches, round, outcome, published @ ..] = reply.as_slice() else {
            return Err(StoreError::Corrupt {
                record: "session",
                field: "fetches",
            });
        };
        Ok((*outcome >= 0).then(|| ReadRecorded {
            fetches: u64::try_from(*fetches).unwrap_or(0),
            round: u64::try_from(*round).unwrap_or(0),
            changed: *outcome == 1,
            published: published.iter().map(|p| *p == 1).collect(),
        }))
    }

    /// Records a resubmission the fleet asked for (a rule or an operator) as the session's
    /// status before Didit's echo is read: the change round moves on, and the echo is the
    /// same status, not a change. Returns the change round now.
    pub(crate) async fn record_resubmission(&self, id: Uuid, by: &str) -> StoreResult<u64> {
        let key = self.session_key(id);
        let mut c = self.conn.clone();
        let (round,): (u64,) = redis::pipe()
            .hincr(&key, "round", 1)
            .hset_multiple(
                &key,
                &[
                    ("status", SessionStatus::Resubmitted.as_str()),
                    ("rule_status", SessionStatus::Resubmitted.as_str()),
                    ("rule_name", by),
                    (AS_OF_FIELD, &now_ms().to_string()),
                ],
            )
            .ignore()
            .expire(&key, self.ttl())
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(round)
    }

    /// Records that a rule set `status` at Didit, so the echo is recognised, and that the
    /// session is in it as of now (a read sent earlier is older).
    pub(crate) async fn set_rule_status(
        &self,
        id: Uuid,
        status: &SessionStatus,
        rule: &str,
    ) -> StoreResult<()> {
        self.update_session(
            id,
            &[
                ("rule_status", status.as_str().to_owned()),
                ("rule_name", rule.to_owned()),
                (AS_OF_FIELD, now_ms().to_string()),
            ],
        )
        .await
    }

    /// Releases a rule's hold (Didit moved on).
    pub(crate) async fn clear_hold(&self, id: Uuid) -> StoreResult<()> {
        let mut c = self.conn.clone();
        c.hdel::<_, _, ()>(self.session_key(id), "hold_status")
            .await?;
        Ok(())
    }

    /// Counts a resubmission a rule asked for; returns the count.
    pub(crate) async fn count_resubmit(&self, id: Uuid) -> StoreResult<u32> {
        let key = self.session_key(id);
        let mut c = self.conn.clone();
        let (n,): (u32,) = redis::pipe()
            .hincr(&key, "resubmits", 1)
            .expire(&key, self.ttl())
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(n)
    }

    /// Stops sweeping a session (it reached a status nothing follows).
    pub(crate) async fn close_session(&self, id: Uuid) -> StoreResult<()> {
        let mut c = self.conn.clone();
        c.zrem::<_, _, ()>(self.open_sessions_key(), id.to_string())
            .await?;
        Ok(())
    }

    /// Closes a session (as [`Store::close_session`]) and drops the trace context kept for
    /// its wait, when it has one, in the same round trip.
    pub(crate) async fn finish_session(
        &self,
        id: Uuid,
        session: &SessionRecord,
    ) -> StoreResult<()> {
        if session.trace.is_none() {
            return self.close_session(id).await;
        }
        let mut pipe = redis::pipe();
        pipe.zrem(self.open_sessions_key(), id.to_string())
            .ignore()
            .hdel(self.session_key(id), TRACE_FIELD)
            .ignore();
        self.run(&pipe).await
    }

    /// Open sessions not looked at for `every` (oldest first, at most `limit`); each is
    /// marked as looked at now. The score of an open session is when it was last swept
    /// (or created).
    pub(crate) async fn sessions_to_sweep(
        &self,
        limit: usize,
        every: Duration,
    ) -> StoreResult<Vec<Uuid>> {
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
        self.run(&pipe).await?;
        Ok(due.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Takes the fleet-wide sweep turn for `every`; `false` when another process has it.
    pub(crate) async fn take_sweep_turn(&self, every: Duration) -> StoreResult<bool> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> RequestId {
        RequestId::parse(s).expect("request id")
    }

    fn record(status: SessionStatus) -> SessionRecord {
        SessionRecord {
            requests: vec![rid("r-1")],
            status: Some(status),
            round: 3,
            as_of_ms: 42,
            ..SessionRecord::default()
        }
    }

    #[test]
    fn the_lifecycle_reads_the_stored_record_as_the_executors_need_it() {
        use lifecycle::Phase;
        // A result Didit reached by itself stays open to the decision step (its events are
        // deduplicated by the store), so a crash before publishing is recovered by a read.
        let didit = record(SessionStatus::Approved).lifecycle();
        assert_eq!(didit.phase, Phase::Open);
        assert_eq!((didit.round, didit.as_of_ms), (3, 42));
        // The status a rule set is the session's: its echo is no change, and it is settled.
        let ours = SessionRecord {
            rule_status: Some(SessionStatus::Declined),
            rule_name: Some("aml".into()),
            ..record(SessionStatus::Approved)
        }
        .lifecycle();
        assert_eq!(ours.status, Some(SessionStatus::Declined));
        assert_eq!(ours.phase, Phase::Settled);
        // A rule's hold and Didit's own review are watched.
        let held = SessionRecord {
            hold_status: Some(SessionStatus::Declined),
            rule_name: Some("aml".into()),
            ..record(SessionStatus::Declined)
        }
        .lifecycle();
        assert_eq!(held.phase, Phase::Watching);
        assert_eq!(
            held.hold,
            Some(lifecycle::Hold {
                status: SessionStatus::Declined,
                rule: "aml".into()
            })
        );
        assert_eq!(
            record(SessionStatus::InReview).lifecycle().phase,
            Phase::Watching
        );
        // Progress is followed; a session whose requests were all cancelled is not.
        assert_eq!(
            record(SessionStatus::InProgress).lifecycle().phase,
            Phase::Open
        );
        let cancelled = SessionRecord {
            requests: Vec::new(),
            cancelled: vec![rid("r-1")],
            ..record(SessionStatus::InProgress)
        }
        .lifecycle();
        assert_eq!(cancelled.phase, Phase::Cancelled);
        // A fleet resubmission in flight is open: its echo is no change.
        let resubmitted = SessionRecord {
            rule_status: Some(SessionStatus::Resubmitted),
            ..record(SessionStatus::Resubmitted)
        }
        .lifecycle();
        assert_eq!(resubmitted.phase, Phase::Open);
    }
}
