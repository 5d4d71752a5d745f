//! PollDecision: reads a session's decision until Didit reaches one.
//!
//! Each session has one poll slot (the job id `poll:<session>`), so a duplicate delivery or
//! a webhook that asks for an immediate read never forks the chain. Waiting is not failure:
//! "not yet" re-runs on the poll schedule without using an attempt. The deadline is the
//! workflow's expiration plus grace, recomputed when Didit restarts the window after a
//! resubmission.

use std::time::{Duration, SystemTime};

use apalis::prelude::Data;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{
    context::decision_summary,
    decide::{decide, After},
    Pipeline,
};
use crate::{
    domain::{Decider, EventType, FailureReason, OutcomeEvent, SessionStatus},
    queue::{now_ms, Completion, Delivery, Job, JobError},
    ratelimit::Priority,
    store::SessionRecord,
};
use didit::Endpoint;

/// Job: read the decision of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollDecision {
    pub session_id: Uuid,
    /// Polls so far that found the session unfinished (drives the interval).
    pub polls: u32,
    /// Asked for by a webhook or a person: goes before safety-net polls for Didit budget.
    #[serde(default)]
    pub urgent: bool,
}

impl Job for PollDecision {
    const QUEUE: &'static str = "poll";
    const VERSION: u32 = 1;
}

impl PollDecision {
    /// The session's one slot in the delayed set.
    pub fn slot(session_id: Uuid) -> String {
        format!("poll:{session_id}")
    }
}

type Outcome = Result<Completion<PollDecision>, JobError>;

pub async fn handle(job: PollDecision, delivery: Data<Delivery>, p: Data<Pipeline>) -> Outcome {
    let trace = delivery.trace();
    crate::telemetry::job(PollDecision::QUEUE, trace, run(job, delivery, p)).await
}

async fn run(job: PollDecision, delivery: Data<Delivery>, p: Data<Pipeline>) -> Outcome {
    let again = |after: Duration, polls: u32| Completion::RunAgain {
        at: SystemTime::now() + after,
        args: PollDecision {
            session_id: job.session_id,
            polls,
            urgent: false,
        },
    };
    if let Some(wait) = p.paused().await? {
        return Ok(again(wait, job.polls));
    }
    let sid = job.session_id;
    let Some(session) = p.store.session(sid).await? else {
        tracing::info!(session = %sid, "no record of this session any more; not following it");
        return Ok(Completion::Done);
    };
    // Cancelled requests are not followed any more; a session serving none is left alone.
    if session.requests.is_empty() {
        p.store.finish_session(sid, &session).await?;
        return Ok(Completion::Done);
    }
    let priority = if job.urgent {
        Priority::High
    } else {
        Priority::Low
    };
    let read = p
        .call(Endpoint::Decision, priority, |d| async move {
            d.decision(sid).await
        })
        .await?;
    let decision = match read {
        Ok(d) => d,
        Err(e) if e.is_request_error() => {
            // Deleted at Didit, or never ours: nothing will ever be decided.
            fail_all(&p, sid, &session, FailureReason::BadRequest, &e.to_string()).await?;
            p.store.finish_session(sid, &session).await?;
            return Ok(Completion::Done);
        }
        Err(e) => {
            let error = p.didit_failure(e).await;
            if delivery.failure_is_final(&error, &p.settings.queue) {
                fail_all(
                    &p,
                    sid,
                    &session,
                    FailureReason::RetriesExhausted,
                    &error.to_string(),
                )
                .await?;
            }
            return Err(error);
        }
    };
    let change = (session.status.as_ref() != Some(&decision.status)).then(
        || json!({"session_id": sid, "status": decision.status.as_str(), "urgent": job.urgent}),
    );
    let fetches = p
        .store
        .record_read(sid, &session.requests, &decision.status, change)
        .await?;
    let status = decision.status.clone();
    let now = now_ms();
    if EventType::for_status(&status).is_some() {
        let first_result = session
            .status
            .as_ref()
            .is_none_or(|s| EventType::for_status(s).is_none());
        if first_result {
            let elapsed_ms = now.saturating_sub(session.created_at_ms);
            p.metrics
                .time_to_decision
                .observe(elapsed_ms as f64 / 1000.0);
            p.metrics.decision_fetches.observe(fetches as f64);
        }
        let mut data = decision_summary(&decision);
        data["url"] = json!(decision.session_url);
        match decide(&p, sid, &session, &decision, data).await? {
            After::Settled => {
                p.store.finish_session(sid, &session).await?;
                return Ok(Completion::Done);
            }
            After::Follow => return Ok(again(p.schedule().interval(0, sid.as_u128()), 1)),
            After::Watch => {
                let horizon =
                    session.created_at_ms + p.settings.poll.review_horizon.as_millis() as u64;
                if now < horizon {
                    // A person decides later; keep reading slowly so that decision has its event.
                    return Ok(again(p.settings.poll.review_interval, job.polls + 1));
                }
                p.store.finish_session(sid, &session).await?;
                return Ok(Completion::Done);
            }
        }
    }
    let mut deadline = session.deadline_ms;
    if status == SessionStatus::Resubmitted
        && session.status.as_ref() != Some(&SessionStatus::Resubmitted)
    {
        if let Some(workflow) = decision.workflow_id {
            deadline = p.deadline_for(workflow).await;
            p.store.set_session_deadline(sid, deadline).await?;
        }
    }
    if now > deadline {
        for rid in &session.requests {
            let vendor_data = p.vendor_data(&session, rid).await?;
            let event = OutcomeEvent::new(
                EventType::Expired,
                rid.clone(),
                Some(sid),
                vendor_data,
                SessionStatus::Expired.into(),
                &Decider::Fleet,
                json!({"reason": "deadline", "last_status": status.as_str()}),
            );
            p.publish(&event).await?;
        }
        p.store.finish_session(sid, &session).await?;
        return Ok(Completion::Done);
    }
    Ok(again(
        p.schedule().interval(job.polls, sid.as_u128()),
        job.polls + 1,
    ))
}

/// Publishes `kyc.session.failed` for every request a session serves.
async fn fail_all(
    p: &Pipeline,
    sid: Uuid,
    session: &SessionRecord,
    reason: FailureReason,
    detail: &str,
) -> Result<(), JobError> {
    for rid in &session.requests {
        let vendor_data = p.vendor_data(session, rid).await?;
        p.publish_failed(rid, Some(sid), &vendor_data, reason, detail)
            .await?;
    }
    Ok(())
}
