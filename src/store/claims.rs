//! Who owns what, decided inside Redis in one step each:
//!
//! - a request id belongs to the first body accepted under it. [`Store::enqueue_start`]
//!   compares a reused id's body with the recorded one and writes the request record, the
//!   person's index, the first audit step and the StartKyc job in one script, or nothing:
//!   a request whose caller was told it failed (Redis refused a write, OOM) leaves no
//!   record behind, and a person's index only ever names that person's requests;
//! - a request's Didit session is the first one recorded: [`Store::claim_for_adoption`]
//!   lets a webhook give a session only to a request of the same person that has none;
//! - a request's lock belongs to the delivery of the job that took it, not to a clock:
//!   [`Store::lock_request`] hands a lock over at once when its holder's delivery is no
//!   longer pending in the queue (the process died and its job was reclaimed).

use std::{sync::LazyLock, time::Duration};

use redis::Script;
use uuid::Uuid;

use super::{requests::audit_line, Store, StoreResult};
use crate::{domain::RequestId, queue::now_ms};

/// Records an accepted start request and queues its job, unless the id names another body.
/// The first write is the XADD, so a Redis that refuses writes (OOM) refuses the script
/// before anything is written; after it, nothing can fail half-way.
/// KEYS: request record, person's index, audit trail, start queue's ready stream.
/// ARGV: request id, vendor_data, now ms, ttl s, fingerprint, audit line, job envelope.
/// Returns {0} new, {1} the same request again (its job queued again), {2, recorded
/// fingerprint or ''} another body (nothing written).
static ENQUEUE_START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local recorded = redis.call('HGET', KEYS[1], 'fingerprint')
if recorded then
  if recorded ~= ARGV[5] then
    return {2, recorded}
  end
else
  local person = redis.call('HGET', KEYS[1], 'vendor_data')
  if person and person ~= ARGV[2] then
    return {2, ''}
  end
end
local existed = redis.call('EXISTS', KEYS[1])
redis.call('XADD', KEYS[4], '*', 'j', ARGV[7])
if existed == 1 then
  if not recorded then
    redis.call('HSET', KEYS[1], 'fingerprint', ARGV[5])
  end
  return {1, ''}
end
redis.call('HSET', KEYS[1], 'request_id', ARGV[1], 'vendor_data', ARGV[2],
  'enqueued_at_ms', ARGV[3], 'fingerprint', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return {0, ''}
"#,
    )
});

/// Gives a session to a request that has none, for the same person.
/// KEYS: request record. ARGV: session id, vendor_data, ttl s.
/// Returns 1 claimed (or already this session's), 0 the request has another session,
/// -1 the request is another person's.
static CLAIM_FOR_ADOPTION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local session = redis.call('HGET', KEYS[1], 'session_id')
if session then
  if session == ARGV[1] then return 1 end
  return 0
end
local person = redis.call('HGET', KEYS[1], 'vendor_data')
if person and person ~= '' and person ~= ARGV[2] then
  return -1
end
local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], 'session_id', ARGV[1])
if existed == 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"#,
    )
});

/// Takes a request's lock for a delivery of its job. A lock whose holder's delivery is no
/// longer pending in the queue's consumer group was left by a process that died (its job
/// was reclaimed and given back): it is taken over at once instead of waiting for expiry.
/// KEYS: lock, the queue's ready stream. ARGV: holder (entry id), group, ttl ms.
/// Returns 1 when taken (or already this holder's), 0 when a live delivery holds it.
static LOCK_REQUEST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[2], ARGV[2], holder, holder, 1)
  if ok and pending[1] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#,
    )
});

/// Releases a request's lock if this holder still has it.
/// KEYS: lock. ARGV: holder. Returns 1 when released.
static UNLOCK_REQUEST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// What [`Store::enqueue_start`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// A new request: recorded and queued.
    New,
    /// The same request (same id, same body) again: its job was queued again, which is
    /// harmless (the handler finds the session) and lets a caller's retry finish it.
    Again,
    /// The id was accepted before for another body: nothing written. Carries the recorded
    /// fingerprint (`None` for a record written before fingerprints existed).
    Mismatch { recorded: Option<String> },
}

/// What [`Store::claim_for_adoption`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Adoption {
    /// The request had no session (or had this one): it is this session's now.
    Claimed,
    /// The request already follows another session.
    HasSession,
    /// The request is another person's.
    OtherPerson,
}

impl Adoption {
    /// Why an adoption was refused, for the audit trail (PII-free).
    pub(crate) fn refusal(self) -> Option<&'static str> {
        match self {
            Adoption::Claimed => None,
            Adoption::HasSession => Some("the request already has a session"),
            Adoption::OtherPerson => Some("the request belongs to another vendor_data"),
        }
    }
}

/// A request lock held by one delivery of its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestLock {
    key: String,
    holder: String,
}

impl Store {
    /// Records a start request and queues its job (`envelope` on the stream `ready`) in
    /// one step; see the module's notes.
    pub(crate) async fn enqueue_start(
        &self,
        id: &RequestId,
        vendor_data: &str,
        fingerprint: &str,
        ready: &str,
        envelope: &str,
    ) -> StoreResult<Enqueued> {
        let mut c = self.conn.clone();
        let (outcome, recorded): (i64, String) = ENQUEUE_START
            .key(self.request_key(id))
            .key(self.subject_key(vendor_data))
            .key(self.audit_key(id))
            .key(ready)
            .arg(id.as_str())
            .arg(vendor_data)
            .arg(now_ms())
            .arg(self.ttl())
            .arg(fingerprint)
            .arg(audit_line("enqueued", serde_json::json!({})))
            .arg(envelope)
            .invoke_async(&mut c)
            .await?;
        Ok(match outcome {
            0 => Enqueued::New,
            1 => Enqueued::Again,
            _ => Enqueued::Mismatch {
                recorded: (!recorded.is_empty()).then_some(recorded),
            },
        })
    }

    /// Lets a webhook give `session` to `request` (see [`Adoption`]).
    pub(crate) async fn claim_for_adoption(
        &self,
        request: &RequestId,
        session: Uuid,
        vendor_data: &str,
    ) -> StoreResult<Adoption> {
        let mut c = self.conn.clone();
        let claimed: i64 = CLAIM_FOR_ADOPTION
            .key(self.request_key(request))
            .arg(session.to_string())
            .arg(vendor_data)
            .arg(self.ttl())
            .invoke_async(&mut c)
            .await?;
        Ok(match claimed {
            1 => Adoption::Claimed,
            0 => Adoption::HasSession,
            _ => Adoption::OtherPerson,
        })
    }

    /// Takes the per-request lock for the delivery `entry_id` of a job on the stream
    /// `ready`, for at most `ttl` (a backstop: a dead holder's lock is taken over as soon
    /// as its job is reclaimed); `None` when a live delivery holds it.
    pub(crate) async fn lock_request(
        &self,
        id: &RequestId,
        ready: &str,
        entry_id: &str,
        ttl: Duration,
    ) -> StoreResult<Option<RequestLock>> {
        let key = self.lock_key(id);
        let mut c = self.conn.clone();
        let taken: i64 = LOCK_REQUEST
            .key(&key)
            .key(ready)
            .arg(entry_id)
            .arg(crate::queue::keys::GROUP)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut c)
            .await?;
        Ok((taken == 1).then(|| RequestLock {
            key,
            holder: entry_id.to_owned(),
        }))
    }

    /// Releases a lock this delivery holds (a lock taken over meanwhile is left alone).
    pub(crate) async fn unlock_request(&self, lock: &RequestLock) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let _: i64 = UNLOCK_REQUEST
            .key(&lock.key)
            .arg(&lock.holder)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }
}
