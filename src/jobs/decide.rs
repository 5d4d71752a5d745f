//! The decision step: what happens when Didit reaches a result by itself.
//!
//! The operator's rules run on that result and may confirm it, overturn it through
//! `update-status`, hold it for a person, ask for a resubmission or blocklist. Rules never
//! run on the echo of our own `update-status` (the session record remembers what a rule
//! set), and a rule's review hold is released only by a newer change at Didit, not by
//! reading the same status again. Every outcome is published once per (request, session,
//! change round, status) with the rules that matched, the values they read and the rule-set
//! version. A blocklist rule acts on a session Didit already declined too: declining is
//! only half of what it asks. A resubmission is announced as its own event, and Didit
//! e-mails the person the link when the request gave an address.

use serde_json::{json, Value};
use uuid::Uuid;

use super::Pipeline;
use crate::{
    domain::{Decider, SessionStatus},
    queue::JobError,
    ratelimit::Priority,
    rules::{Action, Evaluation},
    store::SessionRecord,
};
use didit::{
    types::{BlocklistAddRequest, Decision, UpdateStatusRequest},
    Endpoint,
};

/// What the poll does after the decision step.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// The session reached a result nothing follows.
    Settled,
    /// Keep reading slowly (In Review at Didit, or held by a rule).
    Watch,
    /// The session runs again at Didit (a resubmission): follow it on the poll schedule.
    Follow,
}

pub async fn decide(
    p: &Pipeline,
    sid: Uuid,
    session: &SessionRecord,
    decision: &Decision,
    mut data: Value,
) -> Result<After, JobError> {
    let status = decision.status.clone();
    if session.rule_status.as_ref() == Some(&status) {
        // The echo of a rule's own update: already published when the rule acted.
        return Ok(after_result(&status));
    }
    if let Some(held) = &session.hold_status {
        if held == &status {
            return Ok(After::Watch);
        }
        p.store.clear_hold(sid).await?;
    }
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
    if !p.rules.rules.is_empty() || !p.rules.workflows.is_empty() {
        p.store
            .audit(&session.requests, "rules_evaluated", data["rules"].clone())
            .await?;
    }
    let (Some(action), Some(rule)) = (
        &evaluation.outcome.action,
        &evaluation.outcome.decided_by_rule,
    ) else {
        p.publish_status(sid, session, &status, &Decider::Didit, data)
            .await?;
        return Ok(after_result(&status));
    };
    let target = action.status().unwrap_or_else(|| status.clone());
    let blocklist = matches!(action, Action::Blocklist { .. });
    if p.settings.rules.dry_run
        || (target == status && !blocklist)
        || matches!(action, Action::None)
    {
        // Dry run, or the rule agrees with Didit: Didit's decision stands.
        p.publish_status(sid, session, &status, &Decider::Didit, data)
            .await?;
        return Ok(after_result(&status));
    }
    let decider = Decider::Rule(rule.clone());
    let comment = format!(
        "rule:{rule}: {}",
        evaluation.outcome.comment.clone().unwrap_or_default()
    );
    match action {
        Action::Review => {
            // Didit cannot be set to In Review: a local hold, released by a person or a newer change.
            p.store.set_hold(sid, &status, rule).await?;
            p.publish_status(sid, session, &SessionStatus::InReview, &decider, data)
                .await?;
            Ok(After::Watch)
        }
        Action::Resubmit { nodes } => {
            let count = p.store.count_resubmit(sid).await?;
            if count > p.settings.rules.max_resubmits {
                p.store.set_hold(sid, &status, rule).await?;
                data["rules"]["resubmits_exhausted"] = json!(true);
                p.publish_status(sid, session, &SessionStatus::InReview, &decider, data)
                    .await?;
                return Ok(After::Watch);
            }
            let mut request = UpdateStatusRequest {
                new_status: SessionStatus::Resubmitted,
                comment: Some(comment),
                nodes_to_resubmit: (!nodes.is_empty()).then(|| nodes.clone()),
                send_email: None,
                email_address: None,
                email_language: None,
            };
            let emailed = email_the_person(&mut request, decision);
            // Recorded before the call: should the echo arrive first, it is no change.
            let round = p.store.record_resubmission(sid, &decider.label()).await?;
            update_status(p, sid, &request).await?;
            let resubmitted = SessionRecord {
                round,
                status: Some(SessionStatus::Resubmitted),
                ..session.clone()
            };
            let data = json!({
                "nodes": nodes,
                "reason": evaluation.outcome.comment,
                "requested_by": decider.label(),
                "emailed": emailed,
                "rules": data["rules"],
            });
            p.publish_resubmission(sid, &resubmitted, &decider, data)
                .await?;
            Ok(After::Follow)
        }
        &Action::Blocklist {
            face,
            document,
            phone,
            email,
        } => {
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
            if target == status {
                // Didit declined it already: the decline stands, the rule added the blocklist.
                p.publish_status(sid, session, &status, &decider, data)
                    .await?;
                return Ok(after_result(&status));
            }
            set_and_publish(p, sid, session, &target, rule, comment, &decider, data).await
        }
        Action::Approve | Action::Decline => {
            set_and_publish(p, sid, session, &target, rule, comment, &decider, data).await
        }
        Action::None => Ok(after_result(&status)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn set_and_publish(
    p: &Pipeline,
    sid: Uuid,
    session: &SessionRecord,
    target: &SessionStatus,
    rule: &str,
    comment: String,
    decider: &Decider,
    data: Value,
) -> Result<After, JobError> {
    let request = UpdateStatusRequest {
        new_status: target.clone(),
        comment: Some(comment),
        nodes_to_resubmit: None,
        send_email: None,
        email_address: None,
        email_language: None,
    };
    // Recorded before the call: should the echo arrive first, it is still recognised.
    p.store.set_rule_status(sid, target, rule).await?;
    update_status(p, sid, &request).await?;
    p.store
        .audit(
            &session.requests,
            "didit_update_status",
            json!({"session_id": sid, "new_status": target.as_str(), "rule": rule}),
        )
        .await?;
    p.publish_status(sid, session, target, decider, data)
        .await?;
    Ok(after_result(target))
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

fn after_result(status: &SessionStatus) -> After {
    if status == &SessionStatus::InReview {
        After::Watch
    } else {
        After::Settled
    }
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
