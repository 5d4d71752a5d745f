//! The outcome stream: `<prefix>:events`, published once per decision.
//!
//! Delivery to consumers is at-least-once, but the fleet must not announce the same
//! decision twice on its own (a webhook and a poll seeing it together): a "published"
//! marker in the request record and the stream entry are written by one script, so either
//! both exist or neither does.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use super::{
    digest,
    requests::{audit_line, AUDIT_MAX},
    Store, StoreResult,
};
use crate::{domain::OutcomeEvent, queue::now_ms};

/// How many stream entries an erasure reads per round trip.
const ERASE_PAGE: usize = 1000;

/// Publishes an event unless this (request, session, change round, type, status) was
/// published before, with its audit step. The "published" markers are fields of the request
/// record, so they live and die with the record: one per round (the round-0 one is the
/// marker of the time before rounds, so old records keep their meaning) and one that says
/// the status was published in some round, which picks the event id: round 0's the first
/// time, the id with the round on a repeat.
///
/// A Lua function, `publish(record, events, audit, A)`, so a script that records a change
/// publishes its events in the same step; [`PUBLISH`] calls it alone. `record`, `events`,
/// `audit`: the request record, the events stream, the request's audit trail. `A`:
/// first-time event_id, type, session_id, request_id, vendor_data, status, decided_by, data,
/// record ttl s, trim minid ms, track status (0/1), now ms, round marker field, audit line,
/// audit max, repeat event_id, "seen" marker field, round-0 marker field.
pub(super) const PUBLISH_FN: &str = r#"
local function publish(record, events, audit, A)
  if redis.call('HEXISTS', record, A[13]) == 1 then
    return 0
  end
  local id = A[1]
  if A[13] ~= A[18] and (redis.call('HEXISTS', record, A[17]) == 1
      or redis.call('HEXISTS', record, A[18]) == 1) then
    id = A[16]
  end
  redis.call('HSET', record, A[13], id, A[17], '1')
  local previous = ''
  if A[11] == '1' then
    previous = redis.call('HGET', record, 'last_status') or ''
    redis.call('HSET', record, 'last_status', A[6], 'decided_by', A[7], 'updated_at_ms', A[12])
  end
  redis.call('EXPIRE', record, A[9])
  redis.call('XADD', events, 'MINID', '~', A[10], '*',
    'event_id', id, 'type', A[2], 'session_id', A[3], 'request_id', A[4],
    'vendor_data', A[5], 'status', A[6], 'previous_status', previous,
    'decided_by', A[7], 'data', A[8])
  local steps = redis.call('RPUSH', audit, A[14])
  local max = tonumber(A[15])
  if steps > max then
    redis.call('LTRIM', audit, -max, -1)
  end
  if steps == 1 or A[11] == '1' then
    redis.call('EXPIRE', audit, A[9])
  end
  return 1
end
"#;

static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PUBLISH_FN}\nreturn publish(KEYS[1], KEYS[2], KEYS[3], ARGV)"
    ))
});

/// The ids of stream entries whose `vendor_data` is this person's.
fn naming(entries: &[redis::streams::StreamId], vendor_data: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|e| {
            e.map
                .get("vendor_data")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .is_some_and(|v| v == vendor_data)
        })
        .map(|e| e.id.clone())
        .collect()
}

impl Store {
    pub(crate) fn events_key(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// Publishes an event once per (request, session, change round, type, status) and
    /// records the step in the request's audit trail; `true` if it was new.
    pub(crate) async fn publish(&self, event: &OutcomeEvent) -> StoreResult<bool> {
        let mut invocation = PUBLISH.prepare_invoke();
        invocation
            .key(self.request_key(&event.request_id))
            .key(self.events_key())
            .key(self.audit_key(&event.request_id));
        for arg in self.publish_args(event) {
            invocation.arg(arg);
        }
        let mut c = self.conn.clone();
        let published: i64 = invocation.invoke_async(&mut c).await?;
        Ok(published == 1)
    }

    /// The arguments of [`PUBLISH_FN`] for one event (its keys are the request record, the
    /// events stream and the request's audit trail).
    pub(super) fn publish_args(&self, event: &OutcomeEvent) -> [String; 18] {
        let session = event.session_id.map(|s| s.to_string()).unwrap_or_default();
        let parts = [
            event.request_id.as_str(),
            &session,
            event.kind.as_str(),
            event.status.as_str(),
        ];
        let first_marker = format!("p:{}", digest(&parts));
        let round = event.round.to_string();
        let marker = if event.round == 0 {
            first_marker.clone()
        } else {
            format!("p:{}", digest(&[&parts[..], &[round.as_str()]].concat()))
        };
        let seen = format!("s:{}", digest(&parts));
        // The event id is derived from the other fields (UUIDv5), so it is not repeated.
        let step = audit_line(
            "event_published",
            serde_json::json!({"type": event.kind.as_str(), "status": event.status.as_str(), "decided_by": event.decided_by}),
        );
        let tracks_status = event.kind.tracks_status();
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
        [
            event.event_id.to_string(),
            event.kind.as_str().to_owned(),
            session,
            event.request_id.as_str().to_owned(),
            event.vendor_data.clone(),
            event.status.as_str().to_owned(),
            event.decided_by.clone(),
            data,
            self.ttl().to_string(),
            minid.to_string(),
            if tracks_status { "1" } else { "0" }.to_owned(),
            now_ms().to_string(),
            marker,
            step,
            AUDIT_MAX.to_string(),
            event.repeat_id().to_string(),
            seen,
            first_marker,
        ]
    }

    /// Removes outcome events that name this person (their `vendor_data`); returns how many.
    pub(crate) async fn forget_events(&self, vendor_data: &str) -> StoreResult<usize> {
        let mut c = self.conn.clone();
        let mut removed = 0;
        let mut start = "-".to_owned();
        loop {
            let page: redis::streams::StreamRangeReply = c
                .xrange_count(self.events_key(), &start, "+", ERASE_PAGE)
                .await?;
            let Some(last) = page.ids.last().map(|e| e.id.clone()) else {
                break;
            };
            let ids = naming(&page.ids, vendor_data);
            if !ids.is_empty() {
                let n: usize = c.xdel(self.events_key(), &ids).await?;
                removed += n;
            }
            if page.ids.len() < ERASE_PAGE {
                break;
            }
            start = format!("({last}");
        }
        Ok(removed)
    }

    /// Removes unread intake-stream entries that name this person; returns how many.
    pub(crate) async fn forget_intake(&self, vendor_data: &str) -> StoreResult<usize> {
        let key = format!("{}:intake", self.prefix);
        let mut c = self.conn.clone();
        let all: redis::streams::StreamRangeReply = c.xrange_all(&key).await?;
        let ids = naming(&all.ids, vendor_data);
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(c.xdel(&key, &ids).await?)
    }
}
