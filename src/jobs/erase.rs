//! EraseSubject: a person's right to erasure, end to end.
//!
//! Deletes the person's sessions at Didit, every local record, waiting queue and intake
//! entries and outcome events that name them, then publishes `kyc.subject.erased` carrying
//! only a salted hash of the vendor_data. Idempotent: a rerun finds nothing left and says so
//! again. The job itself is the only place the vendor_data lives meanwhile, and it is
//! deleted when the job finishes.

use apalis::prelude::Data;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Pipeline, StartKyc};
use crate::{
    domain::{Decider, EventStatus, EventType, OutcomeEvent, RequestId},
    queue::{Completion, Job, JobError},
    ratelimit::Priority,
};
use didit::{types::SessionQuery, Endpoint};

/// Job: erase everything about one person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseSubject {
    pub vendor_data: String,
}

impl Job for EraseSubject {
    const QUEUE: &'static str = "erase";
    const VERSION: u32 = 1;
}

pub async fn handle(
    job: EraseSubject,
    p: Data<Pipeline>,
) -> Result<Completion<EraseSubject>, JobError> {
    let vendor_data = job.vendor_data.trim();
    if vendor_data.is_empty() {
        return Err(JobError::Fatal("erasure without a vendor_data".into()));
    }
    let subject = p.store.subject_hash(vendor_data);
    // At Didit: every session of this vendor_data, page by page.
    let mut deleted_at_didit = 0;
    loop {
        let query = SessionQuery {
            vendor_data: Some(vendor_data.to_owned()),
            limit: Some(50),
            ..Default::default()
        };
        let page = match p
            .call(Endpoint::ListSessions, Priority::High, |d| async move {
                d.list_sessions(&query).await
            })
            .await?
        {
            Ok(page) => page,
            Err(e) => return Err(p.didit_failure(e).await),
        };
        if page.results.is_empty() {
            break;
        }
        for row in page.results {
            let sid = row.session_id;
            match p
                .call(Endpoint::DeleteSession, Priority::High, |d| async move {
                    d.delete_session(sid).await
                })
                .await?
            {
                Ok(()) => deleted_at_didit += 1,
                // Already gone (a rerun, or deleted meanwhile).
                Err(e) if e.is_not_found() => {}
                Err(e) if e.is_request_error() => return Err(JobError::Fatal(e.to_string())),
                Err(e) => return Err(p.didit_failure(e).await),
            }
        }
    }
    // Here: records, waiting work and events that name the person.
    let (requests, sessions) = p.store.subject(vendor_data).await?;
    for sid in &sessions {
        p.queue
            .unschedule(
                <super::PollDecision as Job>::QUEUE,
                &super::PollDecision::slot(*sid),
            )
            .await?;
    }
    p.store.forget(vendor_data, &requests, &sessions).await?;
    let jobs = p
        .queue
        .purge_jobs(<StartKyc as Job>::QUEUE, |args| {
            args.get("vendor_data").and_then(|v| v.as_str()) == Some(vendor_data)
        })
        .await?;
    let intake = p.store.forget_intake(vendor_data).await?;
    let events = p.store.forget_events(vendor_data).await?;
    tracing::info!(
        subject = %subject,
        deleted_at_didit,
        requests = requests.len(),
        sessions = sessions.len(),
        jobs,
        intake,
        events,
        "subject erased"
    );
    let marker = RequestId::parse(&format!("erasure-{subject}"))
        .map_err(|e| JobError::Fatal(e.to_string()))?;
    let event = OutcomeEvent::new(
        EventType::Erased,
        marker,
        None,
        String::new(),
        EventStatus::Erased,
        &Decider::Fleet,
        json!({
            "subject_hash": subject,
            "sessions_deleted_at_didit": deleted_at_didit,
            "requests_erased": requests.len(),
            "events_removed": events,
        }),
    );
    // A rerun publishes nothing new (same event id): erasure is reported once.
    p.publish(&event).await?;
    Ok(Completion::Done)
}
