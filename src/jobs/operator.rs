//! OperatorAction: a person's decision on a session held In Review, carried out at Didit.
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
    decide::{email_the_person, update_status},
    Pipeline,
};
use crate::{
    domain::{Decider, SessionStatus},
    queue::{Completion, Job, JobError},
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
    let comment = match job.note.as_deref().map(str::trim) {
        Some(note) if !note.is_empty() => format!("{}: {note}", decider.label()),
        _ => decider.label(),
    };
    let mut request = UpdateStatusRequest {
        new_status: target.clone(),
        comment: Some(comment),
        nodes_to_resubmit: None,
        send_email: None,
        email_address: None,
        email_language: None,
    };
    let mut round = session.round;
    let mut emailed = false;
    if job.action == OperatorDecision::Resubmit {
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
        round = p.store.record_resubmission(sid, &decider.label()).await?;
    } else {
        // Recorded before the call: should the echo arrive first, it is still recognised.
        p.store
            .set_rule_status(sid, &target, &decider.label())
            .await?;
    }
    update_status(&p, sid, &request).await?;
    if session.hold_status.is_some() {
        p.store.clear_hold(sid).await?;
    }
    p.store
        .audit(
            &session.requests,
            "didit_update_status",
            json!({"session_id": sid, "new_status": target.as_str(), "operator": job.operator}),
        )
        .await?;
    if job.action == OperatorDecision::Resubmit {
        // The person goes through the flow again: follow the session on the poll schedule.
        p.store
            .track_review(sid, &session, &target, &decider.label(), &json!({}))
            .await?;
        let resubmitted = SessionRecord {
            round,
            status: Some(SessionStatus::Resubmitted),
            ..session.clone()
        };
        let data = json!({
            "nodes": null,
            // The operator's note goes to Didit only.
            "reason": null,
            "requested_by": decider.label(),
            "emailed": emailed,
        });
        p.publish_resubmission(sid, &resubmitted, &decider, data)
            .await?;
        p.schedule_poll(sid, 1, p.schedule().interval(0, sid.as_u128()))
            .await?;
        return Ok(Completion::Done);
    }
    let data = json!({"operator": {"name": job.operator, "action": job.action.as_str()}});
    // The review's next poll (or the echo's) reads the status just set, recognises it and
    // stops following the session, as after a rule's update.
    p.publish_status(sid, &session, &target, &decider, data)
        .await?;
    Ok(Completion::Done)
}
