//! The request record, the audit trail and a person's index (the per-request lock and
//! the atomic intake are in `claims`).
//!
//! A request record exists before its Didit session does (the intent), so a retried start
//! finds out whether a session may already exist instead of creating a second one. The
//! audit trail tells an operator what happened to a request without any personal data;
//! the person's index is what erasure walks.

use redis::AsyncCommands;
use serde_json::Value;
use uuid::Uuid;

use super::{digest, field, sessions::NewSession, Store, StoreResult};
use crate::{
    domain::{EventStatus, RequestId, SessionStatus},
    queue::now_ms,
};

/// A request's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestRecord {
    pub vendor_data: String,
    pub workflow_id: Option<Uuid>,
    /// Set once Didit answered the create call (or a lookup found the session).
    pub session_id: Option<Uuid>,
    pub url: Option<String>,
    /// The session's status when Didit created it, or returned it as an unfinished session
    /// of the same person (what `kyc.session.created` says).
    pub created_status: Option<SessionStatus>,
    /// The status of the last event published for it (the next one's `previous_status`).
    pub last_status: Option<EventStatus>,
    pub decided_by: Option<String>,
    pub enqueued_at_ms: Option<u64>,
    pub created_at_ms: Option<u64>,
    pub updated_at_ms: Option<u64>,
    /// The intent was recorded: a session may exist at Didit without being recorded here.
    pub intent: bool,
    /// An operator cancelled the request: nothing follows it any more.
    pub cancelled: bool,
    /// When the intent was recorded (Unix ms): a create sent then may still be answered.
    pub intent_at_ms: Option<u64>,
    /// The request's content as first accepted ([`crate::domain::RequestFingerprint`]).
    pub fingerprint: Option<String>,
}

/// The longest audit trail kept per request (older steps are dropped first).
pub(super) const AUDIT_MAX: isize = 500;

pub(super) fn audit_line(step: &str, fields: Value) -> String {
    let mut entry = serde_json::json!({"at_ms": now_ms(), "step": step});
    if let (Some(e), Value::Object(f)) = (entry.as_object_mut(), fields) {
        e.extend(f);
    }
    entry.to_string()
}

impl Store {
    pub(super) fn request_key(&self, id: &RequestId) -> String {
        format!("{}:request:{}", self.prefix, digest(&[id.as_str()]))
    }

    pub(super) fn lock_key(&self, id: &RequestId) -> String {
        format!("{}:lock", self.request_key(id))
    }

    pub(super) fn audit_key(&self, id: &RequestId) -> String {
        format!("{}:audit:{}", self.prefix, digest(&[id.as_str()]))
    }

    /// The salted hash of a vendor_data: the only form of it that appears in a key name
    /// or in `kyc.subject.erased`.
    pub(crate) fn subject_hash(&self, vendor_data: &str) -> String {
        use secrecy::ExposeSecret;
        digest(&[self.settings.subject_salt.expose_secret(), vendor_data])
    }

    /// The person's index: a hash whose fields are their request ids (a small hash is the
    /// most compact container Redis has for a few short strings).
    pub(super) fn subject_key(&self, vendor_data: &str) -> String {
        format!("{}:subject:{}", self.prefix, self.subject_hash(vendor_data))
    }

    /// Adds a request to its person's index, giving both the records' lifetime.
    fn index_request(&self, pipe: &mut redis::Pipeline, id: &RequestId, vendor_data: &str) {
        let key = self.request_key(id);
        pipe.expire(&key, self.ttl())
            .ignore()
            .hset(self.subject_key(vendor_data), id.as_str(), 1)
            .ignore()
            .expire(self.subject_key(vendor_data), self.ttl())
            .ignore();
    }

    pub(crate) async fn request(&self, id: &RequestId) -> StoreResult<Option<RequestRecord>> {
        const RECORD: &str = "request";
        let mut c = self.conn.clone();
        let map: std::collections::HashMap<String, String> =
            c.hgetall(self.request_key(id)).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some(RequestRecord {
            vendor_data: map.get("vendor_data").cloned().unwrap_or_default(),
            workflow_id: field(&map, RECORD, "workflow_id")?,
            session_id: field(&map, RECORD, "session_id")?,
            url: map.get("url").cloned(),
            created_status: map.get("created_status").map(|s| SessionStatus::parse(s)),
            last_status: map.get("last_status").and_then(|s| EventStatus::parse(s)),
            decided_by: map.get("decided_by").cloned(),
            enqueued_at_ms: field(&map, RECORD, "enqueued_at_ms")?,
            created_at_ms: field(&map, RECORD, "created_at_ms")?,
            updated_at_ms: field(&map, RECORD, "updated_at_ms")?,
            intent: map.contains_key("intent_at_ms"),
            cancelled: map.contains_key("cancelled_at_ms"),
            intent_at_ms: field(&map, RECORD, "intent_at_ms")?,
            fingerprint: map.get("fingerprint").cloned(),
        }))
    }

    /// Records that a session is about to be created for this request.
    ///
    /// `indexed` says the record already exists for this vendor_data (the producer wrote
    /// it, with its lifetime and the person's index): then only the new fields are written.
    pub(crate) async fn record_intent(
        &self,
        id: &RequestId,
        vendor_data: &str,
        workflow_id: Uuid,
        indexed: bool,
    ) -> StoreResult<()> {
        let key = self.request_key(id);
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
            self.index_request(&mut pipe, id, vendor_data);
            self.start_trail(&mut pipe, id, "intent", serde_json::json!({}));
        }
        self.run(&pipe).await
    }

    /// Forgets a request's intent: its create certainly did not reach Didit (or Didit
    /// refused it unprocessed), so the next attempt creates without looking first.
    pub(crate) async fn forget_intent(&self, id: &RequestId) -> StoreResult<()> {
        let mut c = self.conn.clone();
        c.hdel::<_, _, ()>(self.request_key(id), "intent_at_ms")
            .await?;
        Ok(())
    }

    /// Records the session Didit created (or reused) for this request, and the reverse map
    /// (the session record's `r:<request id>` fields), with the audit step `step`.
    ///
    /// `recorded` says the request record was written moments ago (the intent), with its
    /// lifetime and the person's index: then neither is written again.
    pub(crate) async fn record_session(
        &self,
        id: &RequestId,
        vendor_data: &str,
        session: NewSession<'_>,
        recorded: bool,
        step: Value,
    ) -> StoreResult<()> {
        let key = self.request_key(id);
        let now = now_ms().to_string();
        let mut pipe = redis::pipe();
        pipe.hset_multiple(
            &key,
            &[
                ("request_id", id.as_str().to_owned()),
                ("vendor_data", vendor_data.to_owned()),
                ("session_id", session.id.to_string()),
                ("url", session.url.to_owned()),
                ("created_status", session.status.as_str().to_owned()),
                ("created_at_ms", now.clone()),
            ],
        )
        .ignore();
        if !recorded {
            self.index_request(&mut pipe, id, vendor_data);
        }
        self.open_session(&mut pipe, id, vendor_data, session, &now);
        if recorded {
            self.audit_into(&mut pipe, std::slice::from_ref(id), "session_created", step);
        } else {
            self.start_trail(&mut pipe, id, "session_created", step);
        }
        self.run(&pipe).await
    }

    /// Marks a request cancelled, in its record and in its session's; `false` when it was
    /// already.
    pub(crate) async fn cancel_request(
        &self,
        id: &RequestId,
        session: Option<Uuid>,
    ) -> StoreResult<bool> {
        let key = self.request_key(id);
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.hset_nx(&key, "cancelled_at_ms", now_ms())
            .expire(&key, self.ttl())
            .ignore();
        if let Some(sid) = session {
            self.unfollow(&mut pipe, sid, id);
        }
        let (set,): (bool,) = pipe.query_async(&mut c).await?;
        Ok(set)
    }

    /// Appends one step to the PII-free audit trail of each request (kept as long as the
    /// records). `fields` must carry no personal data.
    ///
    /// Steps are written on changes (a new status, a webhook, an event), never per routine
    /// poll, so a trail stays short; the publish script, which every outcome passes, keeps
    /// it to the last `AUDIT_MAX` steps whatever happens.
    pub(crate) async fn audit(
        &self,
        requests: &[RequestId],
        step: &str,
        fields: Value,
    ) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        self.audit_into(&mut pipe, requests, step, fields);
        self.run(&pipe).await
    }

    /// Adds an audit step to a pipeline, so it travels with the write it describes.
    ///
    /// A trail is started (with its lifetime) where the request record is
    /// ([`Store::start_trail`]); later steps only append to a trail that exists, so a
    /// request whose records expired or were erased never gets one back.
    pub(super) fn audit_into(
        &self,
        pipe: &mut redis::Pipeline,
        requests: &[RequestId],
        step: &str,
        fields: Value,
    ) {
        let line = audit_line(step, fields);
        for id in requests {
            pipe.rpush_exists(self.audit_key(id), &line).ignore();
        }
    }

    /// Starts (or appends to) a request's trail, giving it the records' lifetime.
    fn start_trail(&self, pipe: &mut redis::Pipeline, id: &RequestId, step: &str, fields: Value) {
        let key = self.audit_key(id);
        pipe.rpush(&key, audit_line(step, fields))
            .ignore()
            .expire(&key, self.ttl())
            .ignore();
    }

    /// The audit trail of a request, oldest first.
    pub async fn audit_trail(&self, id: &RequestId) -> StoreResult<Vec<Value>> {
        let mut c = self.conn.clone();
        let lines: Vec<String> = c.lrange(self.audit_key(id), 0, -1).await?;
        Ok(lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Request ids recorded for a person (by vendor_data), and their sessions.
    pub(crate) async fn subject(
        &self,
        vendor_data: &str,
    ) -> StoreResult<(Vec<RequestId>, Vec<Uuid>)> {
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
    pub(crate) async fn forget(
        &self,
        vendor_data: &str,
        requests: &[RequestId],
        sessions: &[Uuid],
    ) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        for r in requests {
            pipe.del(self.request_key(r)).ignore();
            pipe.del(self.lock_key(r)).ignore();
            pipe.del(self.audit_key(r)).ignore();
        }
        for s in sessions {
            self.forget_session(&mut pipe, *s);
            self.forget_review(&mut pipe, *s);
        }
        pipe.del(self.subject_key(vendor_data)).ignore();
        self.run(&pipe).await
    }
}
