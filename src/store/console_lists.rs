//! The console's lists: recent verifications from the outcome stream, the review queue a
//! page at a time, and what an operator's queued action on a review is waiting for.
//!
//! The outcome stream already is a time-ordered record of every verification's changes,
//! trimmed by age and cleaned by erasures, so the sessions list reads it instead of keeping
//! an index of its own: each request is shown once, at its latest event (the one whose
//! status and decider its request record still holds).

use std::collections::HashMap;

use redis::AsyncCommands;
use serde_json::Value;

use super::{ReviewItem, Store};
use crate::domain::RequestId;

/// The review hash's field holding the operator action queued on it, until it runs.
const PENDING_FIELD: &str = "pending";

/// One entry of the outcome stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// The stream entry id (`<ms>-<seq>`): its position, and when it was published.
    pub entry_id: String,
    pub fields: HashMap<String, String>,
}

impl StreamEvent {
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map(String::as_str).unwrap_or("")
    }
}

/// What a request's record says now, to tell its latest event from older ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestState {
    pub last_status: Option<String>,
    pub decided_by: Option<String>,
}

impl StreamEvent {
    /// Whether this event is the one that set the request's current state.
    pub fn is_current(&self, state: &RequestState) -> bool {
        if self.field("type") == crate::domain::EventType::Created.as_str() {
            return state.last_status.is_none();
        }
        state.last_status.as_deref() == Some(self.field("status"))
            && state.decided_by.as_deref() == Some(self.field("decided_by"))
    }
}

impl Store {
    /// Outcome events newest first: strictly older than the entry `before` (from the
    /// newest when `None`), published at or after `since_ms`, at most `count`, merged over
    /// every stream of the outcome stream.
    pub(crate) async fn events_newest_first(
        &self,
        before: Option<&str>,
        since_ms: u64,
        count: usize,
    ) -> super::StoreResult<Vec<StreamEvent>> {
        let mut c = self.conn.clone();
        let end = before.map_or_else(|| "+".to_owned(), |b| format!("({b}"));
        let mut events = Vec::new();
        for stream in self.event_streams() {
            let reply: redis::streams::StreamRangeReply = c
                .xrevrange_count(&stream, &end, since_ms.to_string(), count)
                .await?;
            events.extend(reply.ids.into_iter().map(|entry| {
                StreamEvent {
                    fields: entry
                        .map
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                redis::from_redis_value_ref::<String>(v).unwrap_or_default(),
                            )
                        })
                        .collect(),
                    entry_id: entry.id,
                }
            }));
        }
        events.sort_by_key(|e| std::cmp::Reverse(stream_id_key(&e.entry_id)));
        events.truncate(count);
        Ok(events)
    }

    /// The current state of each request (`None`: no record any more), in one round trip.
    pub(crate) async fn request_states(
        &self,
        ids: &[RequestId],
    ) -> super::StoreResult<Vec<Option<RequestState>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.request_key(id))
                .arg("request_id")
                .arg("vendor_data")
                .arg("last_status")
                .arg("decided_by");
        }
        let mut c = self.conn.clone();
        let rows: Vec<[Option<String>; 4]> = pipe.query_async(&mut c).await?;
        Ok(rows
            .into_iter()
            .map(|[request_id, vendor_data, last_status, decided_by]| {
                (request_id.is_some() || vendor_data.is_some()).then(|| RequestState {
                    last_status: last_status.filter(|s| !s.is_empty()),
                    decided_by,
                })
            })
            .collect())
    }

    /// Sessions held In Review, oldest first: `limit` of them after the first `offset`.
    /// Entries whose session record expired or moved on are dropped from the index as they
    /// are met.
    pub(crate) async fn reviews_page(
        &self,
        offset: usize,
        limit: usize,
    ) -> super::StoreResult<Vec<ReviewItem>> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = c
            .zrange(
                self.reviews_key(),
                offset as isize,
                (offset + limit).saturating_sub(1) as isize,
            )
            .await?;
        let mut items = Vec::with_capacity(ids.len());
        for raw in ids {
            let held = match raw.parse() {
                Ok(id) => self.review(id).await?,
                Err(_) => None,
            };
            match held {
                Some(item) => items.push(item),
                None => {
                    let _: () = c.zrem(self.reviews_key(), &raw).await?;
                }
            }
        }
        Ok(items)
    }

    /// Notes the operator action queued on a held session (action, operator, job id), so
    /// the review queue shows it pending until the job has run. The note goes with the
    /// session's review entry (and its expiry, should the entry have left meanwhile).
    pub(crate) async fn mark_review_pending(
        &self,
        id: uuid::Uuid,
        pending: &Value,
    ) -> super::StoreResult<()> {
        let key = self.review_key(id);
        let mut c = self.conn.clone();
        redis::pipe()
            .hset(&key, PENDING_FIELD, pending.to_string())
            .ignore()
            .expire(&key, self.ttl())
            .ignore()
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// The action queued on a held session, if any.
    pub(crate) async fn review_pending(&self, id: uuid::Uuid) -> super::StoreResult<Option<Value>> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c.hget(self.review_key(id), PENDING_FIELD).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }
}

/// A stream entry id as a sortable pair.
fn stream_id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, status: &str, decided_by: &str) -> StreamEvent {
        StreamEvent {
            entry_id: "1-0".into(),
            fields: [
                ("type", kind),
                ("status", status),
                ("decided_by", decided_by),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }
    }

    #[test]
    fn a_request_is_shown_at_the_event_that_set_its_state() {
        let decided = RequestState {
            last_status: Some("Approved".into()),
            decided_by: Some("operator:alice".into()),
        };
        assert!(event("kyc.session.decided", "Approved", "operator:alice").is_current(&decided));
        assert!(!event("kyc.session.decided", "In Review", "didit").is_current(&decided));
        assert!(!event("kyc.session.created", "Not Started", "didit").is_current(&decided));
        assert!(event("kyc.session.created", "Not Started", "didit")
            .is_current(&RequestState::default()));
    }

    #[test]
    fn stream_ids_sort_by_time_then_sequence() {
        assert!(stream_id_key("1700000000001-0") > stream_id_key("1700000000000-9"));
        assert!(stream_id_key("5-10") > stream_id_key("5-9"));
    }
}
