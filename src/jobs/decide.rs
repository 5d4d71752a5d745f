//! The decision step: what happens when Didit reaches a result by itself, carried out.
//!
//! What to do is decided by the session lifecycle ([`lifecycle::step`]): the read and the
//! rules' verdict make one plan, and this module only carries it out: the Didit calls it
//! names (`update-status`, `blocklist/add`), the record's changes, the events and the audit
//! steps. The operator's rules may confirm Didit's result, overturn it through
//! `update-status`, hold it for a person, ask for a resubmission or blocklist. Rules never
//! run on the echo of our own `update-status` (the session record remembers what a rule
//! set, and the lifecycle reads it as the session's status), and a rule's review hold is
//! released only by a newer change at Didit, not by reading the same status again. Every
//! outcome is published once per (request, session, change round, status) with the rules
//! that matched, the values they read and the rule-set version. A blocklist rule acts on a
//! session Didit already declined too: declining is only half of what it asks. A
//! resubmission is announced as its own event, and Didit e-mails the person the link when
//! the request gave an address.

use serde_json::{json, Value};
use uuid::Uuid;

use super::Pipeline;
use crate::{
    domain::{
        lifecycle::{self, DiditCall, Emit, Plan, Verdict, Why},
        Decider, EventStatus, OutcomeEvent, SessionStatus,
    },
    queue::JobError,
    ratelimit::Priority,
    rules::{Action, Evaluation},
    store::SessionRecord,
};
use didit::{
    types::{BlocklistAddRequest, Decision, UpdateStatusRequest},
    Endpoint,
};

/// The lifecycle's settings, from the fleet's.
pub(super) fn limits(p: &Pipeline) -> lifecycle::Limits {
    lifecycle::Limits {
        max_resubmits: p.settings.rules.max_resubmits,
        review_horizon_ms: p.settings.poll.review_horizon.as_millis() as u64,
        expiry_grace_ms: p.settings.poll.expiry_grace.as_millis() as u64,
    }
}

/// Runs the rules on a decision the plan asks them for: counts the matches, adds the rules
/// part to the events' `data` (which [`carry_out`] audits), and returns the verdict.
pub(super) fn evaluate(
    p: &Pipeline,
    decision: &Decision,
    data: &mut Value,
) -> (Verdict, Evaluation) {
    let workflow = workflow_name(p, decision.workflow_id);
    let evaluation = p.rules.evaluate(
        workflow.as_deref(),
        decision,
        time::OffsetDateTime::now_utc(),
    );
    for m in &evaluation.matches {
        p.metrics
            .rule_matches
            .with_label_values(&[&m.rule, m.action.name()])
            .inc();
    }
    data["rules"] = rules_data(&evaluation, p.settings.rules.dry_run);
    (verdict(p, decision, &evaluation), evaluation)
}

/// What the rules' outcome means for the lifecycle: a dry run, a rule that agrees with
/// Didit or records its match only lets Didit's decision stand.
fn verdict(p: &Pipeline, decision: &Decision, evaluation: &Evaluation) -> Verdict {
    let (Some(action), Some(rule)) = (
        &evaluation.outcome.action,
        &evaluation.outcome.decided_by_rule,
    ) else {
        return Verdict::Stands;
    };
    let status = decision.status.clone();
    let target = action.status().unwrap_or_else(|| status.clone());
    let blocklist = matches!(action, Action::Blocklist { .. });
    if p.settings.rules.dry_run || (target == status && !blocklist) || *action == Action::None {
        return Verdict::Stands;
    }
    let rule = rule.clone();
    match action {
        Action::Review => Verdict::Hold { rule },
        Action::Resubmit { .. } => Verdict::Resubmit { rule },
        Action::Blocklist { .. } => Verdict::Blocklist {
            status: target,
            rule,
        },
        Action::Approve | Action::Decline | Action::None => Verdict::Set {
            status: target,
            rule,
        },
    }
}

/// What [`carry_out`] needs besides the plan.
pub(super) struct Read<'a> {
    pub session: &'a SessionRecord,
    pub decision: &'a Decision,
    /// The events' `data` for a decision (its summary, the link, the rules).
    pub data: Value,
    pub evaluation: Option<&'a Evaluation>,
}

/// Carries out a decision read's plan that calls Didit, after the read was recorded (with
/// the rule's hold, the deadline, the end of the session and the rules' audit step, in
/// one script): the Didit calls first (each recorded before it is made, so its echo is
/// recognised should it arrive first), then the events, each published once by the store.
/// A plan without a call publishes its events in the read's script.
pub(super) async fn carry_out(
    p: &Pipeline,
    sid: Uuid,
    plan: &Plan,
    read: Read<'_>,
) -> Result<(), JobError> {
    let Read {
        session,
        decision,
        data,
        evaluation,
    } = read;
    let comment = evaluation.map(|e| e.outcome.comment.clone().unwrap_or_default());
    let mut emailed = false;
    for call in &plan.calls {
        match call {
            DiditCall::UpdateStatus { status, by } => {
                let mut request = UpdateStatusRequest {
                    new_status: status.clone(),
                    comment: Some(format!(
                        "{}: {}",
                        by.label(),
                        comment.clone().unwrap_or_default()
                    )),
                    nodes_to_resubmit: None,
                    send_email: None,
                    email_address: None,
                    email_language: None,
                };
                if *status == SessionStatus::Resubmitted {
                    if let Some(Action::Resubmit { nodes }) =
                        evaluation.and_then(|e| e.outcome.action.as_ref())
                    {
                        request.nodes_to_resubmit = (!nodes.is_empty()).then(|| nodes.clone());
                    }
                    emailed = email_the_person(&mut request, decision);
                    p.store.count_resubmit(sid).await?;
                    // Recorded before the call: should the echo arrive first, it is no change.
                    p.store.record_resubmission(sid, &by.label()).await?;
                    update_status(p, sid, &request).await?;
                } else {
                    // Recorded before the call: should the echo arrive first, it is still
                    // recognised.
                    p.store.set_rule_status(sid, status, &rule_of(by)).await?;
                    update_status(p, sid, &request).await?;
                    p.store
                        .audit(
                            &session.requests,
                            "didit_update_status",
                            json!({"session_id": sid, "new_status": status.as_str(), "rule": rule_of(by)}),
                        )
                        .await?;
                }
            }
            DiditCall::Blocklist { rule } => blocklist(p, sid, session, evaluation, rule).await?,
        }
    }
    let asked = Asked::by(evaluation, emailed);
    for event in events(p, sid, session, plan, &data, &asked).await? {
        p.publish(&event).await?;
    }
    Ok(())
}

/// A rule's name as the record keeps it (the decider's label for an operator).
fn rule_of(by: &Decider) -> String {
    match by {
        Decider::Rule(rule) => rule.clone(),
        other => other.label(),
    }
}

/// Adds the session's person to Didit's blocklist, as the winning rule asks.
async fn blocklist(
    p: &Pipeline,
    sid: Uuid,
    session: &SessionRecord,
    evaluation: Option<&Evaluation>,
    rule: &str,
) -> Result<(), JobError> {
    let Some(&Action::Blocklist {
        face,
        document,
        phone,
        email,
    }) = evaluation.and_then(|e| e.outcome.action.as_ref())
    else {
        return Ok(());
    };
    let request = BlocklistAddRequest {
        session_id: sid,
        blocklist_face: face,
        blocklist_document: document,
        blocklist_phone: phone,
        blocklist_email: email,
    };
    let added = p
        .call(Endpoint::BlocklistAdd, Priority::High, |d| async move {
            d.blocklist_add(&request).await
        })
        .await?;
    if let Err(e) = added {
        return Err(p.didit_failure(e).await);
    }
    p.store
        .audit(
            &session.requests,
            "didit_blocklist",
            json!({"session_id": sid, "face": face, "document": document, "phone": phone, "email": email, "rule": rule}),
        )
        .await?;
    Ok(())
}

/// What a rule's resubmission asked for, for its announcement.
pub(super) struct Asked {
    pub nodes: Value,
    pub reason: Option<String>,
    pub emailed: bool,
}

impl Asked {
    /// What the winning rule asked for (nothing when no rule asked for a resubmission).
    pub fn by(evaluation: Option<&Evaluation>, emailed: bool) -> Self {
        Asked {
            nodes: match evaluation.and_then(|e| e.outcome.action.as_ref()) {
                Some(Action::Resubmit { nodes }) => json!(nodes),
                _ => Value::Null,
            },
            reason: evaluation.and_then(|e| e.outcome.comment.clone()),
            emailed,
        }
    }
}

/// The events a plan publishes, to the requests the session answers, with the `data` each
/// one's reason gives; a status's events keep the review queue in step.
pub(super) async fn events(
    p: &Pipeline,
    sid: Uuid,
    session: &SessionRecord,
    plan: &Plan,
    data: &Value,
    asked: &Asked,
) -> Result<Vec<OutcomeEvent>, JobError> {
    let mut events = Vec::new();
    for emit in &plan.events {
        events.extend(events_of(p, sid, session, emit, data, asked).await?);
    }
    Ok(events)
}

async fn events_of(
    p: &Pipeline,
    sid: Uuid,
    session: &SessionRecord,
    emit: &Emit,
    data: &Value,
    asked: &Asked,
) -> Result<Vec<OutcomeEvent>, JobError> {
    let in_round = SessionRecord {
        round: emit.round,
        ..session.clone()
    };
    let EventStatus::Session(status) = &emit.status else {
        return Ok(Vec::new());
    };
    let data = match &emit.why {
        Why::Resubmission if emit.decided_by == Decider::Didit => {
            // Someone at Didit asked; the nodes and reason are Didit's to show.
            json!({"nodes": null, "reason": null, "requested_by": Decider::Didit.label()})
        }
        Why::Resubmission => json!({
            "nodes": asked.nodes,
            "reason": asked.reason,
            "requested_by": emit.decided_by.label(),
            "emailed": asked.emailed,
            "rules": data["rules"],
        }),
        Why::Deadline { last_status } => {
            let last = last_status.as_ref().map_or("", |s| s.as_str());
            json!({"reason": "deadline", "last_status": last})
        }
        Why::ResubmitsExhausted => {
            let mut data = data.clone();
            data["rules"]["resubmits_exhausted"] = json!(true);
            data
        }
        Why::Decision | Why::Operator | Why::Created | Why::Cancelled => data.clone(),
    };
    if matches!(emit.why, Why::Resubmission | Why::Deadline { .. }) {
        p.events_to_all(sid, &in_round, emit.kind, status, &emit.decided_by, data)
            .await
    } else {
        p.status_events(sid, &in_round, status, &emit.decided_by, data)
            .await
    }
}

/// `update-status`, treating "already in that status" as done (never re-PATCH a status).
pub(super) async fn update_status(
    p: &Pipeline,
    sid: Uuid,
    request: &UpdateStatusRequest,
) -> Result<(), JobError> {
    let request = request.clone();
    let answer = p
        .call(Endpoint::UpdateStatus, Priority::High, |d| async move {
            d.update_status(sid, &request).await
        })
        .await?;
    match answer {
        Ok(_) => Ok(()),
        Err(e) if e.is_status_unchanged() => Ok(()),
        Err(e) => Err(p.didit_failure(e).await),
    }
}

/// Asks Didit to e-mail the person the resubmission (the link and the reasons) when the
/// request gave an address: `contact_details.email`, which the decision echoes, in the
/// request's `email_lang`. Returns whether it asked. The address goes to Didit only; it is
/// never logged, stored or published.
pub fn email_the_person(request: &mut UpdateStatusRequest, decision: &Decision) -> bool {
    let contact = decision.rest.get("contact_details");
    let text = |key: &str| {
        contact
            .and_then(|c| c.get(key))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let Some(address) = text("email") else {
        return false;
    };
    request.send_email = Some(true);
    request.email_address = Some(address);
    request.email_language = text("email_lang");
    true
}

/// The named workflow (settings `[workflows]`) a session runs on, for per-workflow rules.
fn workflow_name(p: &Pipeline, workflow_id: Option<Uuid>) -> Option<String> {
    let id = workflow_id?;
    p.settings
        .workflows
        .iter()
        .find(|(_, w)| **w == id)
        .map(|(name, _)| name.clone())
}

/// The rules part of an event's `data`: version, every match with the values it read.
fn rules_data(evaluation: &Evaluation, dry_run: bool) -> Value {
    let matched: Vec<Value> = evaluation
        .matches
        .iter()
        .map(|m| json!({"rule": m.rule, "action": m.action.name(), "shadow": m.shadow, "values": m.values_read, "comment": m.comment}))
        .collect();
    json!({
        "version": evaluation.version,
        "matched": matched,
        "decided_by_rule": evaluation.outcome.decided_by_rule,
        "dry_run": dry_run,
    })
}
