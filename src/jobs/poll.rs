//! PollDecision: reads a session's decision until Didit reaches one.
//!
//! Each session has one poll slot (the job id `poll:<session>`), so a duplicate delivery or
//! a webhook that asks for an immediate read never forks the chain. Waiting is not failure:
//! "not yet" re-runs on the poll schedule without using an attempt. The deadline is the
//! session's expiry plus grace: the decision's `expires_at` when Didit gives it, else the
//! expiration of the workflow version the session runs, recomputed when Didit restarts the
//! window after a resubmission. A resubmission the fleet did not ask for (Didit's console,
//! the API from elsewhere) is announced when it is read.

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
    /// A waiting session keeps its trace context once, in its record (see `handle`).
    const CARRIES_TRACE: bool = false;
}

impl PollDecision {
    /// The session's one slot in the delayed set.
    pub fn slot(session_id: Uuid) -> String {
        format!("poll:{session_id}")
    }
}

type Outcome = Result<Completion<PollDecision>, JobError>;

/// Reads the session record first: the poll continues the trace kept there (an envelope
/// queued by an earlier build may still carry one of its own, which wins).
pub async fn handle(job: PollDecision, delivery: Data<Delivery>, p: Data<Pipeline>) -> Outcome {
    let session = p.store.session(job.session_id).await?;
    let trace = delivery
        .trace()
        .or_else(|| session.as_ref().and_then(|s| s.trace));
    crate::telemetry::job(PollDecision::QUEUE, trace, run(job, session, delivery, p)).await
}

async fn run(
    job: PollDecision,
    session: Option<SessionRecord>,
    delivery: Data<Delivery>,
    p: Data<Pipeline>,
) -> Outcome {
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
    let Some(session) = session else {
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
    let changed = session.status.as_ref() != Some(&decision.status);
    let change =
        json!({"session_id": sid, "status": decision.status.as_str(), "urgent": job.urgent});
    let (fetches, round) = p
        .store
        .record_read(sid, &session, &decision.status, change)
        .await?;
    let status = decision.status.clone();
    let previous_status = session.status.clone();
    let mut session = session;
    if changed {
        // As the record now says: a new round, and a status set by a rule or an operator
        // forgotten once Didit moved past it.
        if session.rule_status.as_ref() != Some(&status) {
            session.rule_status = None;
        }
        session.status = Some(status.clone());
        session.round = round;
    }
    let now = now_ms();
    if EventType::for_status(&status).is_some() {
        let first_result = previous_status
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
    if status == SessionStatus::Resubmitted && changed {
        // Not the fleet's own (that was recorded before the call, so it is no change here):
        // someone at Didit asked; the nodes and reason are Didit's to show.
        let data = json!({"nodes": null, "reason": null, "requested_by": Decider::Didit.label()});
        p.publish_resubmission(sid, &session, &Decider::Didit, data)
            .await?;
    }
    let mut deadline = session.deadline_ms;
    if let Some(expires) = expires_at_ms(&decision) {
        // Didit's own expiry for this run of the flow wins.
        let from_didit = expires + p.settings.poll.expiry_grace.as_millis() as u64;
        if from_didit != deadline {
            deadline = from_didit;
            p.store.set_session_deadline(sid, deadline).await?;
        }
    } else if status == SessionStatus::Resubmitted && changed {
        if let Some(workflow) = decision.workflow_id {
            deadline = p.deadline_for(workflow, session.workflow_version).await;
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
            )
            .in_round(session.round);
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

/// When an unfinished session expires at Didit, from the decision's `expires_at` (Unix ms).
fn expires_at_ms(decision: &didit::types::Decision) -> Option<u64> {
    let text = decision.expires_at.as_deref()?;
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
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
