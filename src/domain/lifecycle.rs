//! The session lifecycle as a pure state machine.
//!
//! What happens to a Didit session (a decision read, a webhook, the rules' verdict, an
//! operator's click, a resubmission, a cancel, the deadline, an erasure) is decided here, in
//! one function from the session's record and one input to a [`Plan`]: the record's next
//! state, the events to publish, the Didit calls to make, the audit steps and the next poll.
//! Nothing here does I/O, so every row of Didit's status table and every promise about
//! events is tested without Redis or Didit; the jobs load the record, call [`step`], make the
//! calls the plan names and apply it.
//!
//! Invariants the tests hold this module to:
//! - **Repeated outcomes are real changes.** The record keeps a change round, moved on
//!   whenever the recorded status changes; at most one event is planned per (session, round,
//!   type, status), so Declined, Resubmitted, Declined publishes three events and a second
//!   read of the same change publishes nothing.
//! - **No older change wins.** A decision read counts as of the moment it was sent, a
//!   webhook as of its timestamp; a read sent before the recorded change, naming another
//!   status, changes nothing.
//! - **A session is followed until it settles.** Every plan whose session is still open
//!   (on the poll schedule, or watched while a person reviews it) names its next poll; a
//!   settled, cancelled or erased session has none.

use super::{Decider, EventStatus, EventType, RequestId, SessionStatus};

/// How far behind the recorded change a webhook may be and still ask for a read: Didit's
/// clock and ours differ a little, and a read costs less than a missed change of a settled
/// session (which no poll follows any more).
pub const CLOCK_ALLOWANCE_MS: u64 = 2_000;

/// Where a session stands for the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Followed on the poll schedule: not started, in progress, resubmitted.
    #[default]
    Open,
    /// Followed slowly until the review horizon: In Review at Didit, or held by a rule.
    Watching,
    /// At a result nothing follows: no poll, though a webhook still asks for a read.
    Settled,
    /// Every request it served was cancelled.
    Cancelled,
    /// The person it verifies was erased.
    Erased,
}

impl Phase {
    /// `true` when no poll follows the session any more.
    pub fn is_final(self) -> bool {
        !matches!(self, Phase::Open | Phase::Watching)
    }
}

/// A rule's hold: the session is In Review for us while Didit's status stays `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub status: SessionStatus,
    pub rule: String,
}

/// Which session events were published, as bits of [`slot`]: ever (which picks the event id:
/// round 0's the first time, the id with the round on a repeat) and in the current round
/// (which makes a second publication of the same change a no-op).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    pub ever: u16,
    pub round: u16,
}

/// What the fleet knows of one Didit session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Session {
    /// The requests it answers that are still followed.
    pub requests: Vec<RequestId>,
    /// The requests it answered until they were cancelled.
    pub cancelled: Vec<RequestId>,
    /// Didit's status as last recorded (or the status the fleet set at Didit).
    pub status: Option<SessionStatus>,
    /// How many times `status` changed.
    pub round: u64,
    /// Unix ms the recorded status was true at: when the read that saw it was sent, or
    /// when the fleet asked Didit for it.
    pub as_of_ms: u64,
    pub phase: Phase,
    pub hold: Option<Hold>,
    /// Resubmissions the rules asked for.
    pub resubmits: u32,
    pub created_at_ms: u64,
    /// Unix ms after which an open session is given up.
    pub deadline_ms: u64,
    pub published: Published,
}

/// The settings the machine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Resubmissions a rule may ask for before the session is held for a person instead.
    pub max_resubmits: u32,
    /// How long after its creation a session In Review is still watched.
    pub review_horizon_ms: u64,
    /// Added to Didit's `expires_at` to make the deadline.
    pub expiry_grace_ms: u64,
}

/// What the rules made of a result (dry runs and rules that agree with Didit: `Stands`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Didit's status stands.
    Stands,
    /// A rule holds the session for a person.
    Hold { rule: String },
    /// A rule sets another status at Didit.
    Set { status: SessionStatus, rule: String },
    /// A rule blocklists the person, then `status` stands (Didit's own, or the one it sets).
    Blocklist { status: SessionStatus, rule: String },
    /// A rule sends the session back to the person.
    Resubmit { rule: String },
}

/// One thing that happened to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Didit created the session for `request`, or returned an unfinished one it reuses.
    Created {
        request: RequestId,
        status: SessionStatus,
        now_ms: u64,
        deadline_ms: u64,
    },
    /// A decision read: `status` was true when the read was sent at `sent_at_ms`.
    DecisionRead {
        status: SessionStatus,
        sent_at_ms: u64,
        now_ms: u64,
        /// Didit's `expires_at` for this run of the flow, when the decision gave it.
        expires_at_ms: Option<u64>,
    },
    /// A verified webhook naming `status`, signed at `timestamp_ms`.
    WebhookReceived {
        status: SessionStatus,
        timestamp_ms: u64,
    },
    /// The rules ran on the recorded result (after a plan that asked for them).
    RulesEvaluated { verdict: Verdict, now_ms: u64 },
    /// A person decided a session held In Review: Approved, Declined or Resubmitted.
    Operator {
        status: SessionStatus,
        name: String,
        now_ms: u64,
    },
    /// The fleet sends the session back to the person (the command line, a rule's retry).
    Resubmission { by: Decider, now_ms: u64 },
    /// A request stops being followed.
    Cancel { request: RequestId },
    /// The sweep found the session at `now_ms`.
    DeadlineReached { now_ms: u64 },
    /// The person was erased.
    Erase,
}

/// Why an event is published: which `data` the executor gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// `kyc.session.created` with the link.
    Created,
    /// Didit's decision (summary and, when they ran, the rules).
    Decision,
    /// A rule held the session after asking for every resubmission it may.
    ResubmitsExhausted,
    /// A resubmission, with who asked.
    Resubmission,
    /// An operator's decision.
    Operator,
    /// The fleet's deadline passed with the session at `last_status`.
    Deadline { last_status: Option<SessionStatus> },
    /// The request was cancelled.
    Cancelled,
}

/// An event the plan publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub kind: EventType,
    pub status: EventStatus,
    pub decided_by: Decider,
    pub round: u64,
    /// The first time the session published this type and status (round 0's event id).
    pub first: bool,
    /// One request only (created, cancelled); `None`: every request the session answers.
    pub only: Option<RequestId>,
    pub why: Why,
}

/// A call to Didit the plan needs before it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiditCall {
    /// `update-status` to `status`, asked for by `by`.
    UpdateStatus { status: SessionStatus, by: Decider },
    /// `blocklist/add` for a rule.
    Blocklist { rule: String },
}

/// A step of the requests' audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audit {
    DecisionRead {
        status: SessionStatus,
    },
    /// A read sent before the recorded change, naming another status: ignored.
    StaleRead {
        status: SessionStatus,
    },
    WebhookReceived {
        status: SessionStatus,
    },
    /// A webhook older than the recorded change: no read.
    StaleWebhook {
        status: SessionStatus,
    },
    RulesEvaluated,
    UpdateStatus {
        status: SessionStatus,
        by: Decider,
    },
    Blocklist {
        rule: String,
    },
    Cancelled {
        request: RequestId,
    },
}

/// When the session is read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextPoll {
    /// On the poll schedule: from its start (a new run of the flow) or its next step.
    Schedule { restart: bool },
    /// At the review interval.
    Review,
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An operator may decide only a session held In Review.
    NotInReview { status: Option<SessionStatus> },
    /// The verification reached its outcome; it stands.
    Settled { status: Option<SessionStatus> },
    /// The request is not (or no longer) followed by this session.
    NotFollowed,
}

/// What to do about one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The record as it is once the plan is applied.
    pub record: Session,
    pub events: Vec<Emit>,
    pub calls: Vec<DiditCall>,
    pub audit: Vec<Audit>,
    /// `None` exactly when the record's phase is final.
    pub next_poll: Option<NextPoll>,
    /// Read the decision now, before the next poll (a webhook named a change).
    pub read_now: bool,
    /// Evaluate the rules on the recorded result and feed [`Input::RulesEvaluated`].
    pub evaluate_rules: bool,
    /// Didit restarted the session's expiry window: recompute the deadline.
    pub restart_deadline: bool,
    /// Forget the session's records (an erasure).
    pub forget: bool,
    pub refused: Option<Refusal>,
}

impl Plan {
    fn new(record: &Session) -> Self {
        let mut plan = Plan {
            record: record.clone(),
            events: Vec::new(),
            calls: Vec::new(),
            audit: Vec::new(),
            next_poll: None,
            read_now: false,
            evaluate_rules: false,
            restart_deadline: false,
            forget: false,
            refused: None,
        };
        plan.follow(false);
        plan
    }

    /// `true` when applying the plan changes nothing and publishes nothing.
    pub fn is_noop(&self, before: &Session) -> bool {
        self.record == *before
            && self.events.is_empty()
            && self.calls.is_empty()
            && self.audit.is_empty()
            && !self.forget
    }

    /// This plan followed by `next`, a plan made from this one's record (the rules' verdict
    /// after the read that asked for them): applied together, as one.
    pub fn then(mut self, next: Plan) -> Plan {
        self.events.extend(next.events);
        self.calls.extend(next.calls);
        self.audit.extend(next.audit);
        Plan {
            record: next.record,
            events: self.events,
            calls: self.calls,
            audit: self.audit,
            next_poll: next.next_poll,
            read_now: self.read_now || next.read_now,
            evaluate_rules: next.evaluate_rules,
            restart_deadline: self.restart_deadline || next.restart_deadline,
            forget: self.forget || next.forget,
            refused: next.refused.or(self.refused),
        }
    }

    /// Sets the next poll from the record's phase; `restart` after a new run of the flow.
    fn follow(&mut self, restart: bool) {
        self.next_poll = match self.record.phase {
            Phase::Open => Some(NextPoll::Schedule { restart }),
            Phase::Watching => Some(NextPoll::Review),
            Phase::Settled | Phase::Cancelled | Phase::Erased => None,
        };
    }

    /// Records Didit's (or our) new status: a change moves the round on.
    fn record_status(&mut self, status: &SessionStatus, as_of_ms: u64) {
        let r = &mut self.record;
        if r.status.as_ref() != Some(status) {
            r.status = Some(status.clone());
            r.round += 1;
            r.published.round = 0;
        }
        r.as_of_ms = r.as_of_ms.max(as_of_ms);
    }

    /// Plans an event for every request, unless this round published it.
    fn emit(&mut self, kind: EventType, status: EventStatus, decided_by: Decider, why: Why) {
        let bit = slot(kind, &status).map_or(0, |s| 1u16 << s);
        let published = &mut self.record.published;
        if published.round & bit != 0 {
            return;
        }
        let first = published.ever & bit == 0;
        published.round |= bit;
        published.ever |= bit;
        self.events.push(Emit {
            kind,
            status,
            decided_by,
            round: self.record.round,
            first,
            only: None,
            why,
        });
    }

    /// Plans the event a result produces and settles or watches the session.
    fn result(&mut self, status: &SessionStatus, decided_by: Decider, why: Why) {
        if let Some(kind) = EventType::for_status(status) {
            self.emit(kind, status.clone().into(), decided_by, why);
        }
        self.record.phase = if *status == SessionStatus::InReview {
            Phase::Watching
        } else {
            Phase::Settled
        };
        self.follow(false);
    }

    /// The fleet sends the session back to the person.
    fn resubmit(&mut self, by: Decider, now_ms: u64) {
        let status = SessionStatus::Resubmitted;
        self.calls.push(DiditCall::UpdateStatus {
            status: status.clone(),
            by: by.clone(),
        });
        self.audit.push(Audit::UpdateStatus {
            status: status.clone(),
            by: by.clone(),
        });
        self.record_status(&status, now_ms);
        self.record.hold = None;
        self.emit(
            EventType::ResubmissionRequested,
            status.into(),
            by,
            Why::Resubmission,
        );
        self.record.phase = Phase::Open;
        self.restart_deadline = true;
        self.follow(true);
    }

    /// The fleet sets `status` at Didit for `by` and publishes it.
    fn set(&mut self, status: &SessionStatus, by: Decider, why: Why, now_ms: u64) {
        self.calls.push(DiditCall::UpdateStatus {
            status: status.clone(),
            by: by.clone(),
        });
        self.audit.push(Audit::UpdateStatus {
            status: status.clone(),
            by: by.clone(),
        });
        self.record_status(status, now_ms);
        self.record.hold = None;
        self.result(status, by, why);
    }

    /// Gives an open session up: its deadline passed.
    fn expire(&mut self) {
        let last_status = self.record.status.clone();
        self.emit(
            EventType::Expired,
            SessionStatus::Expired.into(),
            Decider::Fleet,
            Why::Deadline { last_status },
        );
        self.record.phase = Phase::Settled;
        self.follow(false);
    }

    /// Stops watching a review nobody decided within the horizon.
    fn watch_or_settle(&mut self, now_ms: u64, limits: &Limits) {
        let horizon = self
            .record
            .created_at_ms
            .saturating_add(limits.review_horizon_ms);
        if now_ms >= horizon {
            self.record.phase = Phase::Settled;
        }
        self.follow(false);
    }
}

/// The bit of a session event in [`Published`]; `None` for per-request events (created,
/// failed, erased), whose "already published" marker is the request's own.
pub fn slot(kind: EventType, status: &EventStatus) -> Option<u8> {
    let EventStatus::Session(status) = status else {
        return None;
    };
    let s = match (kind, status) {
        (EventType::Decided, SessionStatus::Approved) => 0,
        (EventType::Decided, SessionStatus::Declined) => 1,
        (EventType::Decided, SessionStatus::InReview) => 2,
        (EventType::Decided, SessionStatus::KycExpired) => 3,
        (EventType::Expired, SessionStatus::Expired) => 4,
        (EventType::Expired, SessionStatus::Abandoned) => 5,
        (EventType::ResubmissionRequested, SessionStatus::Resubmitted) => 6,
        _ => return None,
    };
    Some(s)
}

/// What to do about `input` for a session whose record is `record`.
pub fn step(record: &Session, input: Input, limits: &Limits) -> Plan {
    let mut plan = Plan::new(record);
    if record.phase == Phase::Erased {
        // Nothing of the person is kept or followed; a late job finds nothing to do.
        plan.record.phase = Phase::Erased;
        plan.follow(false);
        return plan;
    }
    match input {
        Input::Created {
            request,
            status,
            now_ms,
            deadline_ms,
        } => created(&mut plan, request, status, now_ms, deadline_ms),
        Input::DecisionRead {
            status,
            sent_at_ms,
            now_ms,
            expires_at_ms,
        } => read(&mut plan, status, sent_at_ms, now_ms, expires_at_ms, limits),
        Input::WebhookReceived {
            status,
            timestamp_ms,
        } => return on_webhook(record, status, timestamp_ms),
        Input::RulesEvaluated { verdict, now_ms } => verdict_of(&mut plan, verdict, now_ms, limits),
        Input::Operator {
            status,
            name,
            now_ms,
        } => operator(&mut plan, status, name, now_ms),
        Input::Resubmission { by, now_ms } => {
            if plan.record.phase == Phase::Cancelled {
                plan.refused = Some(Refusal::NotFollowed);
            } else {
                plan.resubmit(by, now_ms);
            }
        }
        Input::Cancel { request } => cancel(&mut plan, request),
        Input::DeadlineReached { now_ms } => match plan.record.phase {
            Phase::Open if now_ms > plan.record.deadline_ms => plan.expire(),
            Phase::Watching => plan.watch_or_settle(now_ms, limits),
            _ => {}
        },
        Input::Erase => {
            plan.record = Session {
                phase: Phase::Erased,
                ..Session::default()
            };
            plan.forget = true;
            plan.follow(false);
        }
    }
    plan
}

fn created(
    plan: &mut Plan,
    request: RequestId,
    status: SessionStatus,
    now_ms: u64,
    deadline_ms: u64,
) {
    let r = &mut plan.record;
    if r.requests.contains(&request) {
        // A redelivery of the start: announced when it was recorded.
        return;
    }
    if r.requests.is_empty() && r.cancelled.is_empty() && r.status.is_none() {
        // A new session: its clock starts now; a reused one keeps the first request's.
        r.created_at_ms = now_ms;
        r.deadline_ms = deadline_ms;
        r.status = Some(status.clone());
        r.as_of_ms = now_ms;
    }
    r.requests.push(request.clone());
    if r.phase == Phase::Cancelled {
        r.phase = Phase::Open;
    }
    plan.events.push(Emit {
        kind: EventType::Created,
        status: status.into(),
        decided_by: Decider::Didit,
        round: 0,
        first: true,
        only: Some(request),
        why: Why::Created,
    });
    plan.follow(true);
}

fn read(
    plan: &mut Plan,
    status: SessionStatus,
    sent_at_ms: u64,
    now_ms: u64,
    expires_at_ms: Option<u64>,
    limits: &Limits,
) {
    if plan.record.phase == Phase::Cancelled {
        return;
    }
    let changed = plan.record.status.as_ref() != Some(&status);
    if changed && sent_at_ms < plan.record.as_of_ms {
        // Sent before the recorded change: what it says is older.
        plan.audit.push(Audit::StaleRead { status });
        return;
    }
    if let Some(expires) = expires_at_ms {
        // Didit's own expiry for this run of the flow wins.
        plan.record.deadline_ms = expires.saturating_add(limits.expiry_grace_ms);
    }
    if changed {
        plan.audit.push(Audit::DecisionRead {
            status: status.clone(),
        });
        plan.record_status(&status, sent_at_ms);
        if plan
            .record
            .hold
            .as_ref()
            .is_some_and(|h| h.status != status)
        {
            // Didit moved on: a rule's hold ends with the status it held.
            plan.record.hold = None;
        }
    }
    if EventType::for_status(&status).is_some() {
        if changed || plan.record.phase == Phase::Open {
            // Being decided: open until the rules' verdict settles or watches it.
            plan.record.phase = Phase::Open;
            plan.audit.push(Audit::RulesEvaluated);
            plan.evaluate_rules = true;
            plan.follow(false);
            return;
        }
        if plan.record.phase == Phase::Watching {
            plan.watch_or_settle(now_ms, limits);
        }
        return;
    }
    let mut restart = false;
    if changed {
        // A settled or watched session running again at Didit starts a new run of the flow.
        restart = plan.record.phase != Phase::Open || status == SessionStatus::Resubmitted;
        if status == SessionStatus::Resubmitted {
            // Not the fleet's own (that was recorded when it asked): someone at Didit did.
            plan.emit(
                EventType::ResubmissionRequested,
                status.clone().into(),
                Decider::Didit,
                Why::Resubmission,
            );
            plan.restart_deadline = expires_at_ms.is_none();
        }
        plan.record.phase = Phase::Open;
    }
    if plan.record.phase == Phase::Open
        && !plan.restart_deadline
        && now_ms > plan.record.deadline_ms
    {
        plan.expire();
        return;
    }
    plan.follow(restart);
}

/// What a verified webhook asks for (as [`step`] with [`Input::WebhookReceived`]; it needs
/// no settings, so the webhook route can ask before it enqueues a read).
pub fn on_webhook(record: &Session, status: SessionStatus, timestamp_ms: u64) -> Plan {
    let mut plan = Plan::new(record);
    if record.phase != Phase::Erased {
        webhook(&mut plan, status, timestamp_ms);
    }
    plan
}

fn webhook(plan: &mut Plan, status: SessionStatus, timestamp_ms: u64) {
    if plan.record.phase == Phase::Cancelled {
        // Accepted without an event: nobody follows the session.
        return;
    }
    if !status.is_final() && status != SessionStatus::Resubmitted {
        // Progress is left to the schedule: a session costs one decision read.
        return;
    }
    let known =
        plan.record.status.as_ref() == Some(&status) && timestamp_ms <= plan.record.as_of_ms;
    let older = timestamp_ms.saturating_add(CLOCK_ALLOWANCE_MS) < plan.record.as_of_ms;
    if known || older {
        plan.audit.push(Audit::StaleWebhook { status });
        return;
    }
    plan.audit.push(Audit::WebhookReceived { status });
    plan.read_now = true;
}

fn verdict_of(plan: &mut Plan, verdict: Verdict, now_ms: u64, limits: &Limits) {
    let Some(status) = plan.record.status.clone() else {
        return;
    };
    if EventType::for_status(&status).is_none() || plan.record.phase != Phase::Open {
        // Only a result being decided takes a verdict.
        return;
    }
    match verdict {
        Verdict::Stands => plan.result(&status, Decider::Didit, Why::Decision),
        Verdict::Set { status: target, .. } if target == status => {
            plan.result(&status, Decider::Didit, Why::Decision)
        }
        Verdict::Set {
            status: target,
            rule,
        } => plan.set(&target, Decider::Rule(rule), Why::Decision, now_ms),
        Verdict::Hold { rule } => hold(plan, status, rule, Why::Decision),
        Verdict::Blocklist {
            status: target,
            rule,
        } => {
            plan.calls.push(DiditCall::Blocklist { rule: rule.clone() });
            plan.audit.push(Audit::Blocklist { rule: rule.clone() });
            if target == status {
                // Didit declined already: the decline stands, the rule added the blocklist.
                plan.result(&status, Decider::Rule(rule), Why::Decision);
            } else {
                plan.set(&target, Decider::Rule(rule), Why::Decision, now_ms);
            }
        }
        Verdict::Resubmit { rule } => {
            if plan.record.resubmits >= limits.max_resubmits {
                hold(plan, status, rule, Why::ResubmitsExhausted);
            } else {
                plan.record.resubmits += 1;
                plan.resubmit(Decider::Rule(rule), now_ms);
            }
        }
    }
}

/// Didit cannot be set to In Review: a rule's hold is ours, released by a person or a newer
/// change at Didit.
fn hold(plan: &mut Plan, status: SessionStatus, rule: String, why: Why) {
    plan.record.hold = Some(Hold {
        status,
        rule: rule.clone(),
    });
    plan.emit(
        EventType::Decided,
        SessionStatus::InReview.into(),
        Decider::Rule(rule),
        why,
    );
    plan.record.phase = Phase::Watching;
    plan.follow(false);
}

fn operator(plan: &mut Plan, status: SessionStatus, name: String, now_ms: u64) {
    let in_review =
        plan.record.hold.is_some() || plan.record.status == Some(SessionStatus::InReview);
    if !in_review || matches!(plan.record.phase, Phase::Cancelled | Phase::Open) {
        // A person's decision applies only to the review they saw.
        plan.refused = Some(Refusal::NotInReview {
            status: plan.record.status.clone(),
        });
        return;
    }
    let by = Decider::Operator(name);
    match status {
        SessionStatus::Resubmitted => plan.resubmit(by, now_ms),
        SessionStatus::Approved | SessionStatus::Declined => {
            plan.set(&status, by, Why::Operator, now_ms)
        }
        _ => {
            plan.refused = Some(Refusal::NotInReview {
                status: plan.record.status.clone(),
            })
        }
    }
}

fn cancel(plan: &mut Plan, request: RequestId) {
    let r = &mut plan.record;
    let Some(at) = r.requests.iter().position(|q| *q == request) else {
        plan.refused = Some(Refusal::NotFollowed);
        return;
    };
    if r.phase == Phase::Settled {
        plan.refused = Some(Refusal::Settled {
            status: r.status.clone(),
        });
        return;
    }
    r.requests.remove(at);
    r.cancelled.push(request.clone());
    if r.requests.is_empty() {
        r.phase = Phase::Cancelled;
        r.hold = None;
    }
    plan.audit.push(Audit::Cancelled {
        request: request.clone(),
    });
    plan.events.push(Emit {
        kind: EventType::Failed,
        status: EventStatus::Failed,
        decided_by: Decider::Fleet,
        round: 0,
        first: true,
        only: Some(request),
        why: Why::Cancelled,
    });
    plan.follow(false);
}

#[cfg(test)]
mod tests;
