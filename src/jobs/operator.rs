//! OperatorAction: a person's decision on a session held In Review, carried out at Didit.
//!
//! The session lifecycle plans it ([`lifecycle::step`] with an operator's decision): the
//! `update-status` call, the events, the hold released and whether the session is followed
//! again; this job carries the plan out.
//!
//! The console only enqueues this job (HTTP handlers never call Didit), so an operator's
//! click shares the fleet's rate limit and survives a Didit outage like every other call.
//! The status it sets is recorded before the call, so Didit's echo is recognised and never
//! runs the rules again; the decision is published as `kyc.session.decided` with
//! `decided_by = operator:<name>` and the previous status the request record holds. A
//! resubmission is announced as `kyc.session.resubmission_requested`, and Didit e-mails
//! the person the link when the request gave an address (read from the decision, which
//! echoes the request's contact details).

use apalis::prelude::Data;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{
    decide::{self, email_the_person, update_status},
    Pipeline,
};
use crate::{
    domain::{
        lifecycle::{self, DiditCall, Input, NextPoll, Refusal, Why},
        Decider, SessionStatus,
    },
    queue::{now_ms, Completion, Delivery, Job, JobError},
    ratelimit::Priority,
    store::SessionRecord,
};
use didit::{types::UpdateStatusRequest, Endpoint};

/// What an operator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorDecision {
    Approve,
    Decline,
    Resubmit,
}

impl OperatorDecision {
    pub const ALL: [OperatorDecision; 3] = [
        OperatorDecision::Approve,
        OperatorDecision::Decline,
        OperatorDecision::Resubmit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperatorDecision::Approve => "approve",
            OperatorDecision::Decline => "decline",
            OperatorDecision::Resubmit => "resubmit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// The status this decision sets at Didit.
    pub fn status(self) -> SessionStatus {
        match self {
            OperatorDecision::Approve => SessionStatus::Approved,
            OperatorDecision::Decline => SessionStatus::Declined,
            OperatorDecision::Resubmit => SessionStatus::Resubmitted,
        }
    }
}

/// Job: carry out an operator's decision on one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAction {
    pub session_id: Uuid,
    pub action: OperatorDecision,
    /// Who decided (validated by the console: short, `[A-Za-z0-9._@-]`).
    pub operator: String,
    /// The operator's comment, sent to Didit only (never published or audited).
    #[serde(default)]
    pub note: Option<String>,
}

impl Job for OperatorAction {
    const QUEUE: &'static str = "operator";
    const VERSION: u32 = 1;
}

pub async fn handle(
    job: OperatorAction,
    delivery: Data<Delivery>,
    p: Data<Pipeline>,
) -> Result<Completion<OperatorAction>, JobError> {
    crate::telemetry::job(OperatorAction::QUEUE, delivery.trace(), run(job, p)).await
}

async fn run(
    job: OperatorAction,
    p: Data<Pipeline>,
) -> Result<Completion<OperatorAction>, JobError> {
    if let Some(wait) = p.paused().await? {
        return Err(JobError::Wait {
            reason: "Didit calls paused".into(),
            after: wait,
        });
    }
    let sid = job.session_id;
    let Some(session) = p.store.session(sid).await? else {
        return Err(JobError::Fatal(format!("no record of session {sid}")));
    };
    // Held by Didit or by a rule: listed in the review queue until a later status is
    // published (another operator's decision leaves it at once).
    if !session.listed_for_review {
        // Decided meanwhile (another operator, Didit's staff, a replay of an old action):
        // a person's decision applies only to the review they saw.
        let now = session.status.as_ref().map_or("unknown", |s| s.as_str());
        return Err(JobError::Fatal(format!(
            "session {sid} is no longer In Review (now {now})"
        )));
    }
    let target = job.action.status();
    let decider = Decider::Operator(job.operator.clone());
    let input = Input::Operator {
        status: target.clone(),
        name: job.operator.clone(),
        now_ms: now_ms(),
    };
    // Still listed means nothing after the review was published. A status recorded with no
    // event after it is the intent of an earlier attempt whose update Didit refused (this
    // job replayed from the dead set, or another operator's failed action): the review
    // still stands, so the person's decision applies to it.
    let before = SessionRecord {
        rule_status: None,
        ..session.clone()
    }
    .lifecycle();
    let plan = lifecycle::step(&before, input, &decide::limits(&p));
    if let Some(refusal) = &plan.refused {
        let now = match refusal {
            Refusal::NotInReview { status } | Refusal::Settled { status } => {
                status.as_ref().map_or("unknown", |s| s.as_str())
            }
            Refusal::NotFollowed => "cancelled",
        };
        return Err(JobError::Fatal(format!(
            "session {sid} is no longer In Review (now {now})"
        )));
    }
    let comment = match job.note.as_deref().map(str::trim) {
        Some(note) if !note.is_empty() => format!("{}: {note}", decider.label()),
        _ => decider.label(),
    };
    let mut emailed = false;
    for call in &plan.calls {
        let DiditCall::UpdateStatus { status, by } = call else {
            continue;
        };
        let mut request = UpdateStatusRequest {
            new_status: status.clone(),
            comment: Some(comment.clone()),
            nodes_to_resubmit: None,
            send_email: None,
            email_address: None,
            email_language: None,
        };
        if *status == SessionStatus::Resubmitted {
            // Didit e-mails the link only when asked, to the address the decision echoes.
            let read = p
                .call(Endpoint::Decision, Priority::High, |d| async move {
                    d.decision(sid).await
                })
                .await?;
            match read {
                Ok(decision) => emailed = email_the_person(&mut request, &decision),
                Err(e) => return Err(p.didit_failure(e).await),
            }
            // Recorded before the call: the echo is then no change of status.
            p.store.record_resubmission(sid, &by.label()).await?;
        } else {
            // Recorded before the call: should the echo arrive first, it is still recognised.
            p.store.set_rule_status(sid, status, &by.label()).await?;
        }
        update_status(&p, sid, &request).await?;
    }
    if before.hold.is_some() && plan.record.hold.is_none() {
        p.store.clear_hold(sid).await?;
    }
    p.store
        .audit(
            &session.requests,
            "didit_update_status",
            json!({"session_id": sid, "new_status": target.as_str(), "operator": job.operator}),
        )
        .await?;
    for emit in &plan.events {
        let in_round = SessionRecord {
            round: emit.round,
            ..session.clone()
        };
        if emit.why == Why::Resubmission {
            // The person goes through the flow again: out of the review queue.
            p.store
                .track_review(sid, &session, &target, &decider.label(), &json!({}))
                .await?;
            let data = json!({
                "nodes": null,
                // The operator's note goes to Didit only.
                "reason": null,
                "requested_by": decider.label(),
                "emailed": emailed,
            });
            p.publish_resubmission(sid, &in_round, &decider, data)
                .await?;
        } else {
            let data = json!({"operator": {"name": job.operator, "action": job.action.as_str()}});
            p.publish_status(sid, &in_round, &target, &decider, data)
                .await?;
        }
    }
    if plan.next_poll == Some(NextPoll::Schedule { restart: true }) {
        // Followed on the poll schedule from its start. A decision needs no poll of its
        // own: the review's next poll (or the echo's) reads the status just set, recognises
        // it and stops following the session, as after a rule's update.
        p.schedule_poll(sid, 1, p.schedule().interval(0, sid.as_u128()))
            .await?;
    }
    Ok(Completion::Done)
}
