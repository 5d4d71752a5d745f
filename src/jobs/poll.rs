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

use super::{context::decision_summary, decide, Pipeline};
use crate::{
    domain::{
        lifecycle::{self, Input, NextPoll},
        EventType, FailureReason,
    },
    queue::{now_ms, Completion, Delivery, Job, JobError},
    ratelimit::Priority,
    store::{HoldChange, ReadRecord, ReadRecorded, SessionRecord},
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
    // A read counts as of the moment it was sent: an older change never overwrites a newer one.
    let sent_at_ms = now_ms();
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
    let now = now_ms();
    let before = session.lifecycle();
    let limits = decide::limits(&p);
    let input = Input::DecisionRead {
        status: decision.status.clone(),
        sent_at_ms,
        now_ms: now,
        expires_at_ms: expires_at_ms(&decision),
    };
    let mut plan = lifecycle::step(&before, input, &limits);
    let mut data = decision_summary(&decision);
    data["url"] = json!(decision.session_url);
    let mut evaluation = None;
    if plan.evaluate_rules {
        let (verdict, evaluated) = decide::evaluate(&p, &decision, &mut data);
        let next = lifecycle::step(
            &plan.record,
            Input::RulesEvaluated {
                verdict,
                now_ms: now,
            },
            &limits,
        );
        plan = plan.then(next);
        evaluation = Some(evaluated);
    }
    if plan.restart_deadline {
        // Didit restarted the session's expiry window (a resubmission).
        if let Some(workflow) = decision.workflow_id {
            plan.record.deadline_ms = p.deadline_for(workflow, session.workflow_version).await;
        }
    }
    if plan
        .audit
        .iter()
        .any(|a| matches!(a, lifecycle::Audit::StaleRead { .. }))
    {
        // Sent before the recorded change: what it says is older, and is not recorded.
        tracing::debug!(session = %sid, "decision read older than the recorded change");
        return next(&p, &session, plan.next_poll, &job, again).await;
    }
    // The read itself: the status Didit gave, the read count, the change round.
    let status = decision.status.clone();
    let change = json!({"session_id": sid, "status": status.as_str(), "urgent": job.urgent});
    let hold = match (&before.hold, &plan.record.hold) {
        (None, Some(hold)) => HoldChange::Set {
            status: &hold.status,
            rule: &hold.rule,
        },
        (Some(_), None) => HoldChange::Clear,
        _ => HoldChange::Keep,
    };
    let finish = plan.next_poll.is_none();
    let rules_run = !p.rules.rules.is_empty() || !p.rules.workflows.is_empty();
    // Without a Didit call, the plan's events travel in the read's script; with one, they
    // are published once the call was made.
    let events = if plan.calls.is_empty() {
        let asked = decide::Asked::by(evaluation.as_ref(), false);
        decide::events(&p, sid, &session, &plan, &data, &asked).await?
    } else {
        Vec::new()
    };
    let read = ReadRecord {
        status: &status,
        sent_at_ms,
        change,
        hold,
        deadline_ms: (plan.record.deadline_ms != session.deadline_ms)
            .then_some(plan.record.deadline_ms),
        finish,
        rules: (evaluation.is_some() && rules_run).then(|| data["rules"].clone()),
    };
    let Some(recorded) = p.store.record_read(sid, &session, read, &events).await? else {
        // Another read recorded a newer change meanwhile.
        tracing::debug!(session = %sid, "decision read older than the recorded change");
        return next(&p, &session, plan.next_poll, &job, again).await;
    };
    for (event, new) in events.iter().zip(&recorded.published) {
        p.published(event, *new);
    }
    let ReadRecorded {
        fetches,
        round,
        changed,
        ..
    } = recorded;
    let previous_status = session.status.clone();
    let mut session = session;
    if changed {
        if session.rule_status.as_ref() != Some(&status) {
            session.rule_status = None;
        }
        session.status = Some(status.clone());
        session.round = round;
    }
    if EventType::for_status(&status).is_some()
        && previous_status
            .as_ref()
            .is_none_or(|s| EventType::for_status(s).is_none())
    {
        let elapsed_ms = now.saturating_sub(session.created_at_ms);
        p.metrics
            .time_to_decision
            .observe(elapsed_ms as f64 / 1000.0);
        p.metrics.decision_fetches.observe(fetches as f64);
    }
    let read = decide::Read {
        session: &session,
        decision: &decision,
        data,
        evaluation: evaluation.as_ref(),
    };
    if !plan.calls.is_empty() {
        decide::carry_out(&p, sid, &plan, read).await?;
    }
    if finish {
        // Finished when the read was recorded.
        return Ok(Completion::Done);
    }
    next(&p, &session, plan.next_poll, &job, again).await
}

/// The poll's completion from the plan's next poll: run again on the schedule (from its
/// start after a new run of the flow), at the review interval, or finish the session.
async fn next(
    p: &Pipeline,
    session: &SessionRecord,
    poll: Option<NextPoll>,
    job: &PollDecision,
    again: impl Fn(Duration, u32) -> Completion<PollDecision>,
) -> Outcome {
    let sid = job.session_id;
    Ok(match poll {
        None => {
            p.store.finish_session(sid, session).await?;
            Completion::Done
        }
        Some(NextPoll::Schedule { restart: true }) => {
            again(p.schedule().interval(0, sid.as_u128()), 1)
        }
        Some(NextPoll::Schedule { restart: false }) => again(
            p.schedule().interval(job.polls, sid.as_u128()),
            job.polls + 1,
        ),
        Some(NextPoll::Review) => again(p.settings.poll.review_interval, job.polls + 1),
    })
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
