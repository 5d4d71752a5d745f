//! StartKyc: one Didit session per request, whatever happens to the process.
//!
//! Didit has no idempotency header, so the request id goes into the session's metadata, the
//! intent is recorded before the create call and the session right after it. A retry whose
//! record has an intent but no session first looks for the session at Didit (by vendor_data,
//! then each candidate's metadata) before creating one — but only once a create sent by an
//! earlier attempt would have timed out (`didit.request_timeout` after the intent), so a
//! create Didit accepted late is found rather than repeated. Lookups are the kind of work
//! that can wait: they use the low-priority share of the read budget. A create Didit
//! certainly did not receive or refused (no connection, 429) clears the intent, so its
//! retry costs no lookup.
//!
//! A per-request lock keeps two deliveries of the same request from racing. It belongs to
//! the delivery that took it: once that delivery's process died and its job was reclaimed,
//! the lock is taken over at once (see `store::claims`), so recovery waits for the
//! reclaim (`queue.reclaim_after`), not for the lock to expire.

use std::time::{Duration, SystemTime};

use apalis::prelude::Data;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::Pipeline;
use crate::{
    domain::{
        ContactDetails, Decider, EventType, ExpectedDetails, FailureReason, OutcomeEvent,
        RequestId, SessionStatus, StartRequest,
    },
    queue::{Completion, Delivery, Job, JobError},
    ratelimit::Priority,
    store::NewSession,
};
use didit::{
    types::{CreateSessionRequest, SessionQuery},
    Endpoint,
};

/// The metadata key that carries our request id through Didit.
pub const REQUEST_ID_METADATA: &str = "kyc_request_id";

/// Job: start one verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StartKyc {
    pub request: StartRequest,
}

impl Job for StartKyc {
    const QUEUE: &'static str = "start";
    const VERSION: u32 = 1;
}

type Outcome = Result<Completion<StartKyc>, JobError>;

pub async fn handle(job: StartKyc, delivery: Data<Delivery>, p: Data<Pipeline>) -> Outcome {
    let trace = delivery.trace();
    crate::telemetry::job(StartKyc::QUEUE, trace, run(job, delivery, p)).await
}

async fn run(job: StartKyc, delivery: Data<Delivery>, p: Data<Pipeline>) -> Outcome {
    let (rid, request) = match job.request.clone().validate_with(&p.settings.intake) {
        Ok(valid) => valid,
        Err(e) => return Err(JobError::Fatal(format!("invalid start request: {e}"))),
    };
    let later = |after: Duration| Completion::RunAgain {
        at: SystemTime::now() + after,
        args: job.clone(),
    };
    if let Some(wait) = p.paused().await? {
        return Ok(later(wait));
    }
    // A backstop only: a dead holder's lock is taken over as soon as its job is reclaimed.
    let lock_ttl = p.settings.didit.request_timeout * 2;
    let ready = p.queue.keys(<StartKyc as Job>::QUEUE).ready;
    let Some(lock) = p
        .store
        .lock_request(&rid, &ready, &delivery.entry_id, lock_ttl)
        .await?
    else {
        return Ok(later(Duration::from_millis(500)));
    };
    let outcome = start(&p, &rid, &request, &delivery).await;
    if let Err(e) = p.store.unlock_request(&lock).await {
        tracing::warn!(error = %e, "could not release a request lock; it is taken over once this delivery ends");
    }
    outcome
}

async fn start(p: &Pipeline, rid: &RequestId, req: &StartRequest, delivery: &Delivery) -> Outcome {
    let vendor_data = req.vendor_data.trim().to_owned();
    let Some(workflow_id) = workflow_of(p, req) else {
        let name = req.workflow.clone().unwrap_or_default();
        p.publish_failed(
            rid,
            None,
            &vendor_data,
            FailureReason::BadRequest,
            &format!("unknown workflow \"{name}\""),
        )
        .await?;
        return Ok(Completion::Done);
    };
    let record = p.store.request(rid).await?;
    if let Some(r) = &record {
        // The producers refuse a reused request id with another body; a job that reached
        // the queue another way must not give this request's record to another person.
        let other_body = r
            .fingerprint
            .as_deref()
            .is_some_and(|f| f != req.fingerprint().encode());
        let other_person = !r.vendor_data.is_empty() && r.vendor_data != vendor_data;
        if other_body || other_person {
            return Err(JobError::Fatal(
                "idempotency_mismatch: the request id already names a different request".into(),
            ));
        }
    }
    if record.as_ref().is_some_and(|r| r.cancelled) {
        tracing::info!("request cancelled before its session was created");
        return Ok(Completion::Done);
    }
    if let Some((sid, url)) = record
        .as_ref()
        .and_then(|r| Some((r.session_id?, r.url.clone()?)))
    {
        // Created before (a duplicate request, or a crash after recording): make sure the
        // link was announced and the session is followed, nothing more.
        let status = record
            .as_ref()
            .and_then(|r| r.created_status.clone())
            .unwrap_or(SessionStatus::NotStarted);
        announce(p, rid, &vendor_data, sid, &url, &status, true).await?;
        return Ok(Completion::Done);
    }
    let found = match record.as_ref().filter(|r| r.intent) {
        Some(r) => {
            // A create an earlier attempt sent may still be under way at Didit: look for
            // it once it would have timed out, not before.
            let lookup_at =
                r.intent_at_ms.unwrap_or(0) + p.settings.didit.request_timeout.as_millis() as u64;
            let now = crate::queue::now_ms();
            if now < lookup_at {
                return Err(JobError::Wait {
                    reason: "a create sent earlier may still be answered".into(),
                    after: Duration::from_millis(lookup_at - now),
                });
            }
            find_session(p, rid, &vendor_data, workflow_id).await?
        }
        None => None,
    };
    let found = match found {
        Some(found) => found,
        None => {
            let indexed = record
                .as_ref()
                .is_some_and(|r| r.vendor_data == vendor_data);
            p.store
                .record_intent(rid, &vendor_data, workflow_id, indexed)
                .await?;
            let request = create_request(rid, req, workflow_id);
            let created = match p
                .call(Endpoint::CreateSession, Priority::High, |d| async move {
                    d.create_session(&request).await
                })
                .await
            {
                Ok(created) => created,
                Err(not_now) => {
                    // The rate limiter held the call back: nothing was sent.
                    p.store.forget_intent(rid).await?;
                    return Err(not_now);
                }
            };
            match created {
                Ok(created) => {
                    p.metrics.sessions_created.inc();
                    Found {
                        id: created.session_id,
                        url: created.url,
                        // Didit answers with the stable id even when a version's was sent.
                        workflow_id: created.workflow_id.unwrap_or(workflow_id),
                        workflow_version: created.workflow_version,
                        status: created.status,
                    }
                }
                Err(e) => return create_failed(p, rid, &vendor_data, e, delivery).await,
            }
        }
    };
    let (sid, url) = (found.id, found.url.clone());
    let session = NewSession {
        id: sid,
        url: &url,
        deadline_ms: p
            .deadline_for(found.workflow_id, found.workflow_version)
            .await,
        workflow_version: found.workflow_version,
        status: &found.status,
        // This job's span: the webhook that ends the wait continues the trace from here.
        trace: crate::telemetry::current(),
    };
    // The intent (this run's or an earlier one's) wrote the request record and its index.
    p.store
        .record_session(rid, &vendor_data, session, true, json!({"session_id": sid}))
        .await?;
    // Didit answered with a new session or one it reuses because it is unfinished: either
    // way it is followed, and the event says the status Didit gave.
    announce(p, rid, &vendor_data, sid, &url, &found.status, false).await?;
    Ok(Completion::Done)
}

/// The session Didit created, reused or that an earlier attempt created.
struct Found {
    id: Uuid,
    url: String,
    workflow_id: Uuid,
    /// Didit's `workflow_version`; unknown for a session found by listing.
    workflow_version: Option<i64>,
    /// `Not Started`, or the status of the unfinished session Didit returned.
    status: SessionStatus,
}

fn workflow_of(p: &Pipeline, req: &StartRequest) -> Option<Uuid> {
    match (&req.workflow, req.workflow_id) {
        (_, Some(id)) => Some(id),
        (Some(name), None) => p.settings.workflows.get(name).copied(),
        (None, None) => Some(p.settings.didit.workflow_id),
    }
}

fn create_request(rid: &RequestId, req: &StartRequest, workflow_id: Uuid) -> CreateSessionRequest {
    let mut metadata = match &req.metadata {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    metadata.insert(REQUEST_ID_METADATA.to_owned(), json!(rid.as_str()));
    CreateSessionRequest {
        workflow_id,
        vendor_data: Some(req.vendor_data.trim().to_owned()),
        callback: req.callback.clone(),
        metadata: Some(Value::Object(metadata)),
        language: req.language.clone(),
        contact_details: req.contact_details.clone().map(Into::into),
        expected_details: req.expected_details.clone().map(Into::into),
        sandbox_scenario: req.sandbox_scenario.clone(),
        ..Default::default()
    }
}

/// The request's contact details as Didit's create call takes them.
impl From<ContactDetails> for didit::types::ContactDetails {
    fn from(c: ContactDetails) -> Self {
        Self {
            email: c.email,
            send_notification_emails: c.send_notification_emails,
            email_lang: c.email_lang,
            phone: c.phone,
        }
    }
}

/// The request's expected details as Didit's create call takes them.
impl From<ExpectedDetails> for didit::types::ExpectedDetails {
    fn from(e: ExpectedDetails) -> Self {
        Self {
            first_name: e.first_name,
            last_name: e.last_name,
            date_of_birth: e.date_of_birth,
            gender: e.gender,
            nationality: e.nationality,
            country: e.country,
            id_country: e.id_country,
            poa_country: e.poa_country,
            address: e.address,
            identification_number: e.identification_number,
            ip_address: e.ip_address,
            expected_document_types: e.expected_document_types,
        }
    }
}

/// Looks for a session an earlier attempt created but did not record.
async fn find_session(
    p: &Pipeline,
    rid: &RequestId,
    vendor_data: &str,
    workflow_id: Uuid,
) -> Result<Option<Found>, JobError> {
    let query = SessionQuery {
        vendor_data: Some(vendor_data.to_owned()),
        workflow_id: Some(workflow_id),
        limit: Some(20),
        ..Default::default()
    };
    let listed = p
        .call(Endpoint::ListSessions, Priority::Low, |d| async move {
            d.list_sessions(&query).await
        })
        .await?;
    let page = match listed {
        Ok(page) => page,
        Err(e) => return Err(p.didit_failure(e).await),
    };
    // List rows carry no metadata: read each candidate's decision for our request id.
    for row in page.results {
        let sid = row.session_id;
        let read = p
            .call(Endpoint::Decision, Priority::Low, |d| async move {
                d.decision(sid).await
            })
            .await?;
        let decision = match read {
            Ok(d) => d,
            Err(e) => return Err(p.didit_failure(e).await),
        };
        let ours = decision
            .metadata
            .as_ref()
            .and_then(|m| m.get(REQUEST_ID_METADATA))
            .and_then(Value::as_str)
            == Some(rid.as_str());
        if ours {
            let url = decision.session_url.or(row.session_url).unwrap_or_default();
            tracing::info!(session = %row.session_id, "found the session an earlier attempt created");
            return Ok(Some(Found {
                id: row.session_id,
                url,
                workflow_id: decision.workflow_id.unwrap_or(workflow_id),
                workflow_version: None,
                status: decision.status,
            }));
        }
    }
    Ok(None)
}

/// Publishes `kyc.session.created`, then makes sure the session is followed.
///
/// In this order so that no poll can decide a session whose created event is not out yet:
/// consumers see `created` before any decision. Both steps are idempotent (the event has
/// one marker, the poll one slot) and run on every delivery, so a crash between them on an
/// earlier run leaves nothing undone: the redelivery publishes nothing new and schedules the
/// poll. With `may_be_settled`, a session our record shows at a result nothing follows is
/// not polled.
async fn announce(
    p: &Pipeline,
    rid: &RequestId,
    vendor_data: &str,
    sid: Uuid,
    url: &str,
    status: &SessionStatus,
    may_be_settled: bool,
) -> Result<(), JobError> {
    let event = OutcomeEvent::new(
        EventType::Created,
        rid.clone(),
        Some(sid),
        vendor_data.to_owned(),
        status.clone().into(),
        &Decider::Didit,
        json!({"url": url}),
    );
    p.publish(&event).await?;
    let settled = may_be_settled
        && p.store
            .session(sid)
            .await?
            .and_then(|s| s.status)
            .is_some_and(|s| s.is_final() && s != SessionStatus::InReview);
    if !settled {
        let delay = p.schedule().interval(0, sid.as_u128());
        p.schedule_poll(sid, 0, delay).await?;
    }
    Ok(())
}

/// A failed create: a request-level refusal ends the request with `kyc.session.failed`;
/// anything else waits or retries, and the last failed attempt announces the failure.
async fn create_failed(
    p: &Pipeline,
    rid: &RequestId,
    vendor_data: &str,
    error: didit::DiditError,
    delivery: &Delivery,
) -> Outcome {
    if error.is_request_error() {
        let reason = if error.is_blocklisted() {
            FailureReason::Blocklisted
        } else {
            FailureReason::BadRequest
        };
        tracing::warn!(error = %error, "Didit refused to create the session");
        p.publish_failed(rid, None, vendor_data, reason, &error.to_string())
            .await?;
        return Ok(Completion::Done);
    }
    // Refused before it was processed (429) or never sent (no connection): nothing was
    // created, so the retry creates again without a lookup.
    if error.was_not_processed() {
        p.store.forget_intent(rid).await?;
    }
    let job_error = p.didit_failure(error).await;
    if delivery.failure_is_final(&job_error, &p.settings.queue) {
        p.publish_failed(
            rid,
            None,
            vendor_data,
            FailureReason::RetriesExhausted,
            &job_error.to_string(),
        )
        .await?;
    }
    Err(job_error)
}
