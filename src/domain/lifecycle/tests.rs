//! Every row of Didit's status table (§4.2 of the API reference), our own rule hold and its
//! release, the echo of our own update-status, and the properties the lifecycle promises.

use proptest::prelude::*;

use super::*;
use SessionStatus::{
    Abandoned, Approved, Declined, Expired, InProgress, InReview, KycExpired, NotStarted,
    Resubmitted,
};

const LIMITS: Limits = Limits {
    max_resubmits: 2,
    review_horizon_ms: 1_000_000,
    expiry_grace_ms: 100,
};

/// When the test session was created, and its deadline.
const T0: u64 = 10_000;
const DEADLINE: u64 = 500_000;

fn rid(s: &str) -> RequestId {
    RequestId::parse(s).expect("request id")
}

/// A session created for request `r-1` at `T0`, then read at `status` (rules agreeing).
fn at(status: SessionStatus) -> Session {
    let mut s = created();
    if status != NotStarted {
        s = drive(&s, read(status, T0 + 10), None).record;
    }
    s
}

fn created() -> Session {
    step(
        &Session::default(),
        Input::Created {
            request: rid("r-1"),
            status: NotStarted,
            now_ms: T0,
            deadline_ms: DEADLINE,
        },
        &LIMITS,
    )
    .record
}

fn read(status: SessionStatus, sent_at_ms: u64) -> Input {
    Input::DecisionRead {
        status,
        sent_at_ms,
        now_ms: sent_at_ms + 5,
        expires_at_ms: None,
    }
}

/// One input, then the rules' verdict when the plan asks for it (`Stands` by default),
/// applied together as the executors do.
fn drive(record: &Session, input: Input, verdict: Option<Verdict>) -> Plan {
    let now_ms = match &input {
        Input::DecisionRead { now_ms, .. } => *now_ms,
        _ => record.as_of_ms + 1,
    };
    let plan = step(record, input, &LIMITS);
    if !plan.evaluate_rules {
        return plan;
    }
    let verdict = Input::RulesEvaluated {
        verdict: verdict.unwrap_or(Verdict::Stands),
        now_ms,
    };
    let next = step(&plan.record, verdict, &LIMITS);
    plan.then(next)
}

/// The events of a plan as (type, status, decided_by).
fn events(plan: &Plan) -> Vec<(EventType, String, String)> {
    plan.events
        .iter()
        .map(|e| (e.kind, e.status.to_string(), e.decided_by.label()))
        .collect()
}

fn ev(kind: EventType, status: &str, by: &str) -> (EventType, String, String) {
    (kind, status.to_owned(), by.to_owned())
}

use EventType::{Decided, Expired as ExpiredEvent, ResubmissionRequested};

const SCHEDULE: Option<NextPoll> = Some(NextPoll::Schedule { restart: false });
const RESTART: Option<NextPoll> = Some(NextPoll::Schedule { restart: true });
const REVIEW: Option<NextPoll> = Some(NextPoll::Review);

/// One row: from a status Didit had, Didit reports another; what the fleet does.
struct Row {
    from: SessionStatus,
    to: SessionStatus,
    events: Vec<(EventType, String, String)>,
    phase: Phase,
    next: Option<NextPoll>,
}

fn row(
    from: SessionStatus,
    to: SessionStatus,
    event: Option<(EventType, &str)>,
    phase: Phase,
    next: Option<NextPoll>,
) -> Row {
    Row {
        from,
        to,
        events: event
            .map(|(k, s)| vec![ev(k, s, "didit")])
            .into_iter()
            .flatten()
            .collect(),
        phase,
        next,
    }
}

#[test]
fn every_row_of_didits_status_table_is_followed_as_didit_reports_it() {
    use Phase::{Open, Settled, Watching};
    let rows = [
        // Not Started → In Progress, Expired
        row(NotStarted, InProgress, None, Open, SCHEDULE),
        row(
            NotStarted,
            Expired,
            Some((ExpiredEvent, "Expired")),
            Settled,
            None,
        ),
        // In Progress → Approved, Declined, In Review, Abandoned, Expired
        row(
            InProgress,
            Approved,
            Some((Decided, "Approved")),
            Settled,
            None,
        ),
        row(
            InProgress,
            Declined,
            Some((Decided, "Declined")),
            Settled,
            None,
        ),
        row(
            InProgress,
            InReview,
            Some((Decided, "In Review")),
            Watching,
            REVIEW,
        ),
        row(
            InProgress,
            Abandoned,
            Some((ExpiredEvent, "Abandoned")),
            Settled,
            None,
        ),
        row(
            InProgress,
            Expired,
            Some((ExpiredEvent, "Expired")),
            Settled,
            None,
        ),
        // Approved → Kyc Expired; a reviewer or update-status: Declined, Resubmitted
        row(
            Approved,
            KycExpired,
            Some((Decided, "Kyc Expired")),
            Settled,
            None,
        ),
        row(
            Approved,
            Declined,
            Some((Decided, "Declined")),
            Settled,
            None,
        ),
        row(
            Approved,
            Resubmitted,
            Some((ResubmissionRequested, "Resubmitted")),
            Open,
            RESTART,
        ),
        // Declined → Resubmitted; a reviewer or update-status: Approved
        row(
            Declined,
            Resubmitted,
            Some((ResubmissionRequested, "Resubmitted")),
            Open,
            RESTART,
        ),
        row(
            Declined,
            Approved,
            Some((Decided, "Approved")),
            Settled,
            None,
        ),
        // In Review → Approved, Declined, Resubmitted (Didit's staff)
        row(
            InReview,
            Approved,
            Some((Decided, "Approved")),
            Settled,
            None,
        ),
        row(
            InReview,
            Declined,
            Some((Decided, "Declined")),
            Settled,
            None,
        ),
        row(
            InReview,
            Resubmitted,
            Some((ResubmissionRequested, "Resubmitted")),
            Open,
            RESTART,
        ),
        // Abandoned, Kyc Expired → Resubmitted
        row(
            Abandoned,
            Resubmitted,
            Some((ResubmissionRequested, "Resubmitted")),
            Open,
            RESTART,
        ),
        row(
            KycExpired,
            Resubmitted,
            Some((ResubmissionRequested, "Resubmitted")),
            Open,
            RESTART,
        ),
        // Resubmitted → In Progress → …; a backend-only resubmit re-finalises at once
        row(Resubmitted, InProgress, None, Open, SCHEDULE),
        row(
            Resubmitted,
            Approved,
            Some((Decided, "Approved")),
            Settled,
            None,
        ),
        row(
            Resubmitted,
            Declined,
            Some((Decided, "Declined")),
            Settled,
            None,
        ),
        row(
            Resubmitted,
            InReview,
            Some((Decided, "In Review")),
            Watching,
            REVIEW,
        ),
    ];
    for r in rows {
        let name = format!("{} → {}", r.from, r.to);
        let before = if r.from == KycExpired {
            // Kyc Expired follows Approved.
            drive(&at(Approved), read(KycExpired, T0 + 15), None).record
        } else {
            at(r.from.clone())
        };
        let plan = drive(&before, read(r.to.clone(), T0 + 20), None);
        assert_eq!(events(&plan), r.events, "{name}: events");
        assert_eq!(plan.record.status, Some(r.to.clone()), "{name}: status");
        assert_eq!(
            plan.record.round,
            before.round + 1,
            "{name}: a change moves the round"
        );
        assert_eq!(plan.record.phase, r.phase, "{name}: phase");
        assert_eq!(plan.next_poll, r.next, "{name}: next poll");
        assert!(
            plan.calls.is_empty(),
            "{name}: Didit's own change needs no call"
        );
        assert_eq!(
            plan.restart_deadline,
            r.to == Resubmitted,
            "{name}: a resubmission restarts Didit's expiry window"
        );
        let again = drive(&plan.record, read(r.to.clone(), T0 + 30), None);
        assert!(
            again.events.is_empty(),
            "{name}: the same change read twice is one event"
        );
        assert_eq!(
            again.record.round, plan.record.round,
            "{name}: no new round"
        );
    }
}

#[test]
fn a_new_session_announces_its_link_and_a_reused_one_its_second_request_only() {
    let plan = step(
        &Session::default(),
        Input::Created {
            request: rid("r-1"),
            status: NotStarted,
            now_ms: T0,
            deadline_ms: DEADLINE,
        },
        &LIMITS,
    );
    assert_eq!(
        events(&plan),
        vec![ev(EventType::Created, "Not Started", "didit")]
    );
    assert_eq!(plan.events[0].only, Some(rid("r-1")));
    assert_eq!(plan.next_poll, RESTART);
    assert_eq!(
        (plan.record.created_at_ms, plan.record.deadline_ms),
        (T0, DEADLINE)
    );

    let reused = step(
        &plan.record,
        Input::Created {
            request: rid("r-2"),
            status: InProgress,
            now_ms: T0 + 50,
            deadline_ms: DEADLINE + 50,
        },
        &LIMITS,
    );
    assert_eq!(reused.events.len(), 1);
    assert_eq!(reused.events[0].only, Some(rid("r-2")));
    assert_eq!(reused.record.requests, vec![rid("r-1"), rid("r-2")]);
    assert_eq!(
        (reused.record.created_at_ms, reused.record.deadline_ms),
        (T0, DEADLINE),
        "a reused session keeps the first request's clock"
    );

    let redelivered = step(
        &reused.record,
        Input::Created {
            request: rid("r-2"),
            status: InProgress,
            now_ms: T0 + 60,
            deadline_ms: DEADLINE,
        },
        &LIMITS,
    );
    assert!(redelivered.is_noop(&reused.record));
    assert_eq!(redelivered.next_poll, SCHEDULE);
}

#[test]
fn a_rule_hold_watches_the_session_until_a_newer_change_releases_it() {
    let hold = Verdict::Hold { rule: "aml".into() };
    let held = drive(&at(InProgress), read(Declined, T0 + 20), Some(hold));
    assert_eq!(events(&held), vec![ev(Decided, "In Review", "rule:aml")]);
    assert_eq!(held.record.phase, Phase::Watching);
    assert_eq!(held.next_poll, REVIEW);
    assert_eq!(
        held.record.hold,
        Some(Hold {
            status: Declined,
            rule: "aml".into()
        })
    );

    // The same status again: still held, nothing new, no rules.
    let same = drive(&held.record, read(Declined, T0 + 30), None);
    assert!(!same.evaluate_rules && same.events.is_empty());
    assert_eq!(same.next_poll, REVIEW);

    // Didit's staff approve: the hold ends and the approval is published.
    let released = drive(&same.record, read(Approved, T0 + 40), None);
    assert_eq!(released.record.hold, None);
    assert_eq!(events(&released), vec![ev(Decided, "Approved", "didit")]);
    assert_eq!(released.record.phase, Phase::Settled);
    assert_eq!(released.next_poll, None);
}

#[test]
fn an_operator_releases_a_rule_hold_and_decides_a_review() {
    let held = drive(
        &at(InProgress),
        read(Declined, T0 + 20),
        Some(Verdict::Hold { rule: "aml".into() }),
    )
    .record;
    for (status, event) in [(Approved, "Approved"), (Declined, "Declined")] {
        let plan = step(
            &held,
            Input::Operator {
                status: status.clone(),
                name: "ana".into(),
                now_ms: T0 + 30,
            },
            &LIMITS,
        );
        assert_eq!(events(&plan), vec![ev(Decided, event, "operator:ana")]);
        assert_eq!(
            plan.calls,
            vec![DiditCall::UpdateStatus {
                status: status.clone(),
                by: Decider::Operator("ana".into())
            }]
        );
        assert_eq!(plan.record.hold, None);
        assert_eq!(plan.record.phase, Phase::Settled);
        assert_eq!(plan.next_poll, None);
        // The echo of our own update-status is no change: no event, no rules.
        let echo = drive(&plan.record, read(status, T0 + 40), None);
        assert!(echo.is_noop(&plan.record), "{event}: the echo is no change");
    }

    // Didit's own In Review, decided by our operator; and a resubmission from the console.
    let review = at(InReview);
    let approved = step(
        &review,
        Input::Operator {
            status: Approved,
            name: "ana".into(),
            now_ms: T0 + 30,
        },
        &LIMITS,
    );
    assert_eq!(
        events(&approved),
        vec![ev(Decided, "Approved", "operator:ana")]
    );
    let resubmitted = step(
        &review,
        Input::Operator {
            status: Resubmitted,
            name: "ana".into(),
            now_ms: T0 + 30,
        },
        &LIMITS,
    );
    assert_eq!(
        events(&resubmitted),
        vec![ev(ResubmissionRequested, "Resubmitted", "operator:ana")]
    );
    assert_eq!(resubmitted.next_poll, RESTART);
    assert!(resubmitted.restart_deadline);
}

#[test]
fn an_operator_cannot_decide_a_session_that_is_not_in_review() {
    for record in [at(Approved), at(InProgress)] {
        let plan = step(
            &record,
            Input::Operator {
                status: Declined,
                name: "ana".into(),
                now_ms: T0 + 30,
            },
            &LIMITS,
        );
        assert!(matches!(plan.refused, Some(Refusal::NotInReview { .. })));
        assert!(plan.is_noop(&record) && plan.calls.is_empty());
    }
}

#[test]
fn a_rule_that_overturns_didit_sets_the_status_and_its_echo_is_no_change() {
    let set = Verdict::Set {
        status: Declined,
        rule: "sanctions".into(),
    };
    let plan = drive(&at(InProgress), read(Approved, T0 + 20), Some(set));
    assert_eq!(
        events(&plan),
        vec![ev(Decided, "Declined", "rule:sanctions")]
    );
    assert_eq!(
        plan.calls,
        vec![DiditCall::UpdateStatus {
            status: Declined,
            by: Decider::Rule("sanctions".into())
        }]
    );
    assert_eq!(plan.record.status, Some(Declined));
    let echo = drive(&plan.record, read(Declined, T0 + 40), None);
    assert!(echo.is_noop(&plan.record));
    // A rule that agrees with Didit leaves Didit's decision standing.
    let agrees = Verdict::Set {
        status: Approved,
        rule: "fine".into(),
    };
    let plan = drive(&at(InProgress), read(Approved, T0 + 20), Some(agrees));
    assert_eq!(events(&plan), vec![ev(Decided, "Approved", "didit")]);
    assert!(plan.calls.is_empty());
}

#[test]
fn a_blocklist_rule_acts_on_a_session_didit_declined_without_an_update() {
    let block = Verdict::Blocklist {
        status: Declined,
        rule: "fraud".into(),
    };
    let plan = drive(
        &at(InProgress),
        read(Declined, T0 + 20),
        Some(block.clone()),
    );
    assert_eq!(
        plan.calls,
        vec![DiditCall::Blocklist {
            rule: "fraud".into()
        }]
    );
    assert_eq!(events(&plan), vec![ev(Decided, "Declined", "rule:fraud")]);
    let plan = drive(&at(InProgress), read(Approved, T0 + 20), Some(block));
    assert_eq!(
        plan.calls.len(),
        2,
        "blocklist, then update-status: {:?}",
        plan.calls
    );
    assert_eq!(events(&plan), vec![ev(Decided, "Declined", "rule:fraud")]);
}

#[test]
fn a_rule_resubmission_is_announced_followed_and_held_once_exhausted() {
    let resubmit = || {
        Some(Verdict::Resubmit {
            rule: "blurry".into(),
        })
    };
    let mut record = at(InProgress);
    let mut t = T0 + 20;
    for n in 1..=LIMITS.max_resubmits {
        let plan = drive(&record, read(Declined, t), resubmit());
        assert_eq!(
            events(&plan),
            vec![ev(ResubmissionRequested, "Resubmitted", "rule:blurry")],
            "resubmission {n}"
        );
        assert_eq!(plan.record.resubmits, n);
        assert_eq!(plan.next_poll, RESTART);
        let echo = drive(&plan.record, read(Resubmitted, t + 5), None);
        assert!(
            echo.events.is_empty() && !echo.evaluate_rules,
            "the echo is no change"
        );
        record = drive(&echo.record, read(InProgress, t + 10), None).record;
        t += 100;
    }
    let plan = drive(&record, read(Declined, t), resubmit());
    assert_eq!(plan.why(), vec![Why::ResubmitsExhausted]);
    assert_eq!(events(&plan), vec![ev(Decided, "In Review", "rule:blurry")]);
    assert!(plan.calls.is_empty());
    assert_eq!(plan.next_poll, REVIEW);
}

impl Plan {
    fn why(&self) -> Vec<Why> {
        self.events.iter().map(|e| e.why.clone()).collect()
    }
}

#[test]
fn the_fleet_gives_an_open_session_up_at_its_deadline() {
    let record = at(InProgress);
    let plan = drive(&record, read(InProgress, DEADLINE + 1), None);
    assert_eq!(
        events(&plan),
        vec![ev(ExpiredEvent, "Expired", "kyc-worker")]
    );
    assert_eq!(
        plan.why(),
        vec![Why::Deadline {
            last_status: Some(InProgress)
        }]
    );
    assert_eq!((plan.record.phase, plan.next_poll), (Phase::Settled, None));
    // The sweep finds it the same way, and not before its time.
    let early = step(
        &record,
        Input::DeadlineReached { now_ms: DEADLINE },
        &LIMITS,
    );
    assert!(early.is_noop(&record));
    assert_eq!(early.next_poll, SCHEDULE);
    let late = step(
        &record,
        Input::DeadlineReached {
            now_ms: DEADLINE + 1,
        },
        &LIMITS,
    );
    assert_eq!(events(&late), events(&plan));
    // Didit's expires_at moves the deadline.
    let extended = step(
        &record,
        Input::DecisionRead {
            status: InProgress,
            sent_at_ms: DEADLINE + 1,
            now_ms: DEADLINE + 2,
            expires_at_ms: Some(DEADLINE * 2),
        },
        &LIMITS,
    );
    assert!(extended.events.is_empty());
    assert_eq!(
        extended.record.deadline_ms,
        DEADLINE * 2 + LIMITS.expiry_grace_ms
    );
}

#[test]
fn a_review_nobody_decides_is_watched_until_the_horizon_then_left() {
    let record = at(InReview);
    let horizon = T0 + LIMITS.review_horizon_ms;
    let before = drive(&record, read(InReview, horizon - 10), None);
    assert_eq!(before.next_poll, REVIEW);
    let after = drive(&record, read(InReview, horizon), None);
    assert!(after.events.is_empty());
    assert_eq!(
        (after.record.phase, after.next_poll),
        (Phase::Settled, None)
    );
}

#[test]
fn a_read_sent_before_the_recorded_change_changes_nothing() {
    let approved = drive(&at(InProgress), read(Approved, T0 + 100), None).record;
    let stale = drive(&approved, read(InProgress, T0 + 50), None);
    assert_eq!(stale.record.status, Some(Approved));
    assert_eq!(stale.record.round, approved.round);
    assert!(stale.events.is_empty());
    assert_eq!(stale.audit, vec![Audit::StaleRead { status: InProgress }]);
}

#[test]
fn webhooks_ask_for_a_read_only_when_they_may_name_a_newer_result() {
    let open = at(InProgress);
    let hook = |status: SessionStatus, timestamp_ms: u64| Input::WebhookReceived {
        status,
        timestamp_ms,
    };
    let progress = step(&open, hook(InProgress, T0 + 100), &LIMITS);
    assert!(!progress.read_now && progress.is_noop(&open));
    let result = step(&open, hook(Approved, T0 + 100), &LIMITS);
    assert!(result.read_now);
    assert_eq!(result.next_poll, SCHEDULE);
    // A settled session is read again (staff may overturn it), yet stays without a poll.
    let settled = drive(&open, read(Approved, T0 + 100), None).record;
    let overturn = step(&settled, hook(Declined, T0 + 200), &LIMITS);
    assert!(overturn.read_now);
    assert_eq!(overturn.next_poll, None);
    // The same result, not newer than what was read: known already.
    let known = step(&settled, hook(Approved, T0 + 90), &LIMITS);
    assert!(!known.read_now);
    // A change much older than the recorded one: no read.
    let older = step(&settled, hook(Declined, 1), &LIMITS);
    assert!(!older.read_now);
    assert_eq!(older.audit, vec![Audit::StaleWebhook { status: Declined }]);
}

#[test]
fn cancel_ends_an_open_verification_and_keeps_a_settled_outcome() {
    let open = at(InProgress);
    let plan = step(
        &open,
        Input::Cancel {
            request: rid("r-1"),
        },
        &LIMITS,
    );
    assert_eq!(
        events(&plan),
        vec![ev(EventType::Failed, "failed", "kyc-worker")]
    );
    assert_eq!(
        (plan.record.phase, plan.next_poll),
        (Phase::Cancelled, None)
    );
    // Didit's later webhooks and reads change nothing for it.
    let hook = Input::WebhookReceived {
        status: Approved,
        timestamp_ms: T0 + 500,
    };
    let later = step(&plan.record, hook, &LIMITS);
    assert!(!later.read_now && later.is_noop(&plan.record));
    let read_later = drive(&plan.record, read(Approved, T0 + 500), None);
    assert!(read_later.is_noop(&plan.record));
    assert_eq!(read_later.next_poll, None);
    // Cancelled twice: refused, nothing published.
    let twice = step(
        &plan.record,
        Input::Cancel {
            request: rid("r-1"),
        },
        &LIMITS,
    );
    assert_eq!(twice.refused, Some(Refusal::NotFollowed));

    let settled = at(Approved);
    let refused = step(
        &settled,
        Input::Cancel {
            request: rid("r-1"),
        },
        &LIMITS,
    );
    assert_eq!(
        refused.refused,
        Some(Refusal::Settled {
            status: Some(Approved)
        })
    );
    assert!(refused.is_noop(&settled));

    // A review is cancelled; a session serving another request keeps following it.
    let review = at(InReview);
    assert_eq!(
        step(
            &review,
            Input::Cancel {
                request: rid("r-1")
            },
            &LIMITS
        )
        .record
        .phase,
        Phase::Cancelled
    );
    let shared = step(
        &open,
        Input::Created {
            request: rid("r-2"),
            status: InProgress,
            now_ms: T0 + 20,
            deadline_ms: DEADLINE,
        },
        &LIMITS,
    )
    .record;
    let one = step(
        &shared,
        Input::Cancel {
            request: rid("r-1"),
        },
        &LIMITS,
    );
    assert_eq!(one.record.phase, Phase::Open);
    assert_eq!(one.next_poll, SCHEDULE);
    assert_eq!(one.record.requests, vec![rid("r-2")]);
}

#[test]
fn an_erased_session_is_forgotten_and_never_followed_again() {
    let plan = step(&at(InReview), Input::Erase, &LIMITS);
    assert!(plan.forget);
    assert_eq!((plan.record.phase, plan.next_poll), (Phase::Erased, None));
    assert!(plan.record.requests.is_empty() && plan.record.status.is_none());
    let late = drive(&plan.record, read(Approved, T0 + 500), None);
    assert!(late.events.is_empty() && late.next_poll.is_none());
}

/// The events a run published, with rounds, for the sequence tests.
fn run(record: Session, inputs: Vec<(Input, Option<Verdict>)>) -> (Session, Vec<Emit>) {
    let mut record = record;
    let mut all = Vec::new();
    for (input, verdict) in inputs {
        let plan = drive(&record, input, verdict);
        all.extend(plan.events);
        record = plan.record;
    }
    (record, all)
}

#[test]
fn declined_resubmitted_declined_publishes_all_three_with_their_own_ids() {
    let (_, published) = run(
        at(InProgress),
        vec![
            (read(Declined, T0 + 20), None),
            (read(Resubmitted, T0 + 30), None),
            (read(InProgress, T0 + 40), None),
            (read(Declined, T0 + 50), None),
            (read(Declined, T0 + 60), None),
        ],
    );
    let seen: Vec<_> = published
        .iter()
        .map(|e| (e.kind, e.status.to_string(), e.first))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Decided, "Declined".into(), true),
            (ResubmissionRequested, "Resubmitted".into(), true),
            (Decided, "Declined".into(), false),
        ]
    );
    assert!(published[0].round < published[1].round && published[1].round < published[2].round);
}

#[test]
fn approved_declined_approved_publishes_all_three_with_their_own_ids() {
    let (_, published) = run(
        at(InProgress),
        vec![
            (read(Approved, T0 + 20), None),
            (read(Declined, T0 + 30), None),
            (read(Approved, T0 + 40), None),
            (read(Approved, T0 + 50), None),
        ],
    );
    let seen: Vec<_> = published
        .iter()
        .map(|e| (e.status.to_string(), e.first))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("Approved".into(), true),
            ("Declined".into(), true),
            ("Approved".into(), false),
        ]
    );
}

fn status() -> impl Strategy<Value = SessionStatus> {
    prop::sample::select(vec![
        NotStarted,
        InProgress,
        Approved,
        Declined,
        InReview,
        Resubmitted,
        Expired,
        Abandoned,
        KycExpired,
    ])
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        4 => Just(Verdict::Stands),
        1 => Just(Verdict::Hold { rule: "hold".into() }),
        1 => prop::sample::select(vec![Approved, Declined])
            .prop_map(|status| Verdict::Set { status, rule: "set".into() }),
        1 => Just(Verdict::Blocklist { status: Declined, rule: "block".into() }),
        1 => Just(Verdict::Resubmit { rule: "again".into() }),
    ]
}

/// One thing that may happen, with a clock step and how late a read's answer is.
#[derive(Debug, Clone)]
enum Event {
    Read(SessionStatus, u64),
    Webhook(SessionStatus, u64),
    Operator(SessionStatus),
    Resubmission,
    Sweep,
    Cancel,
}

fn happening() -> impl Strategy<Value = (u64, Event, Verdict)> {
    let event = prop_oneof![
        6 => (status(), 0u64..300).prop_map(|(s, lag)| Event::Read(s, lag)),
        2 => (status(), 0u64..5_000).prop_map(|(s, lag)| Event::Webhook(s, lag)),
        1 => prop::sample::select(vec![Approved, Declined, Resubmitted]).prop_map(Event::Operator),
        1 => Just(Event::Resubmission),
        1 => Just(Event::Sweep),
        1 => Just(Event::Cancel),
    ];
    (1u64..200_000, event, verdict())
}

fn input(now: u64, event: &Event) -> Input {
    match event {
        Event::Read(s, lag) => Input::DecisionRead {
            status: s.clone(),
            sent_at_ms: now.saturating_sub(*lag),
            now_ms: now,
            expires_at_ms: None,
        },
        Event::Webhook(s, lag) => Input::WebhookReceived {
            status: s.clone(),
            timestamp_ms: now.saturating_sub(*lag),
        },
        Event::Operator(s) => Input::Operator {
            status: s.clone(),
            name: "op".into(),
            now_ms: now,
        },
        Event::Resubmission => Input::Resubmission {
            by: Decider::Operator("cli".into()),
            now_ms: now,
        },
        Event::Sweep => Input::DeadlineReached { now_ms: now },
        Event::Cancel => Input::Cancel {
            request: rid("r-1"),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_lifecycle_keeps_its_promises_whatever_happens(
        happenings in prop::collection::vec(happening(), 1..40)
    ) {
        let mut record = created();
        let mut now = T0;
        let mut published = std::collections::HashSet::new();
        for (dt, event, verdict) in happenings {
            now += dt;
            let before = record.clone();
            let plan = step(&record, input(now, &event), &LIMITS);
            let plan = if plan.evaluate_rules {
                let next = step(&plan.record, Input::RulesEvaluated { verdict, now_ms: now }, &LIMITS);
                plan.then(next)
            } else {
                plan
            };
            prop_assert!(!plan.evaluate_rules, "a verdict settles the rules");
            // Every non-final state has a next poll; a final state has none.
            prop_assert_eq!(plan.next_poll.is_some(), !plan.record.phase.is_final());
            // No event twice for one (request, session, round, status).
            for e in &plan.events {
                let key = (e.only.clone(), e.round, e.kind.as_str(), e.status.clone());
                prop_assert!(published.insert(key), "published twice: {:?}", e);
            }
            // Rounds only move on, and every change of status moves them.
            prop_assert!(plan.record.round >= before.round);
            if plan.record.status != before.status {
                prop_assert!(plan.record.round > before.round);
            }
            prop_assert!(plan.record.as_of_ms >= before.as_of_ms);
            // No older change wins.
            if let Event::Read(status, lag) = &event {
                let sent = now.saturating_sub(*lag);
                if sent < before.as_of_ms && before.status.as_ref() != Some(status) {
                    prop_assert_eq!(&plan.record.status, &before.status);
                    prop_assert_eq!(plan.record.round, before.round);
                    prop_assert!(plan.events.is_empty());
                }
            }
            record = plan.record;
        }
    }

    #[test]
    fn repeated_outcomes_each_publish_whatever_is_read_twice_between_them(
        first in prop::sample::select(vec![Declined, Approved]),
        repeats in prop::collection::vec(0usize..3, 3),
        hooks in prop::collection::vec(any::<bool>(), 3),
    ) {
        // Declined → Resubmitted → Declined, or Approved → Declined → Approved, with
        // duplicate reads and webhooks in between.
        let middle = if first == Declined { Resubmitted } else { Declined };
        let path = [first.clone(), middle, first];
        let mut record = at(InProgress);
        let mut now = T0 + 100;
        let mut statuses = Vec::new();
        for ((status, n), hook) in path.iter().zip(repeats).zip(hooks) {
            for _ in 0..=n {
                now += 10;
                if hook {
                    let plan = step(&record, Input::WebhookReceived { status: status.clone(), timestamp_ms: now }, &LIMITS);
                    prop_assert!(plan.events.is_empty());
                    record = plan.record;
                }
                now += 10;
                let plan = drive(&record, read(status.clone(), now), None);
                statuses.extend(plan.events.iter().map(|e| e.status.to_string()));
                record = plan.record;
            }
        }
        let expected: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        prop_assert_eq!(statuses, expected);
    }
}
