//! Outcome events: what the fleet tells the rest of the company, one per decision.
//!
//! The event id is deterministic, so a consumer that sees the same decision twice
//! (at-least-once delivery) sees the same id: a UUIDv5 of request, session, change round,
//! type and status. A session can reach the same status twice (Declined, resubmitted,
//! Declined again), and each is its own event: the change round (how many times the
//! session's recorded status changed) tells them apart. The first time a session reaches a
//! status keeps the id of round 0, the UUIDv5 of request, session, type and status alone, so
//! ids published before rounds existed do not move.

use serde::{Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

use super::{RequestId, SessionStatus};

/// Namespace of event ids (a fixed random UUID; changing it changes every id).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1e_4c2a_9b3f_4e57_8a10_2f6c_9d4b_7e21);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Created,
    Decided,
    Expired,
    Failed,
    /// Someone (a rule, an operator, Didit's console or API) sent the session back to the
    /// person to redo steps.
    ResubmissionRequested,
    /// A person was erased; carries a salted hash of their vendor_data, never the value.
    Erased,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::Created,
        EventType::Decided,
        EventType::Expired,
        EventType::Failed,
        EventType::ResubmissionRequested,
    ];

    /// The `type` field of the stream entry.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "kyc.session.created",
            EventType::Decided => "kyc.session.decided",
            EventType::Expired => "kyc.session.expired",
            EventType::Failed => "kyc.session.failed",
            EventType::ResubmissionRequested => "kyc.session.resubmission_requested",
            EventType::Erased => "kyc.subject.erased",
        }
    }

    /// Whether events of this type move the request's last known status (and so carry a
    /// `previous_status`): every one but `kyc.session.created`, which only hands out the link.
    pub fn tracks_status(self) -> bool {
        self != EventType::Created
    }

    /// The event a session status produces, if any.
    pub fn for_status(status: &SessionStatus) -> Option<EventType> {
        match status {
            SessionStatus::Approved
            | SessionStatus::Declined
            | SessionStatus::InReview
            | SessionStatus::KycExpired => Some(EventType::Decided),
            SessionStatus::Expired | SessionStatus::Abandoned => Some(EventType::Expired),
            _ => None,
        }
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The `status` (and `previous_status`) of an event: Didit's status of the session, or the
/// fleet's own word for an outcome Didit has no status for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventStatus {
    Session(SessionStatus),
    /// `kyc.session.failed`: the session could not be created or followed.
    Failed,
    /// `kyc.subject.erased`: the person's records are gone.
    Erased,
}

impl EventStatus {
    /// The word on the wire: Didit's spelling of a session status, else `failed`/`erased`.
    pub fn as_str(&self) -> &str {
        match self {
            EventStatus::Session(status) => status.as_str(),
            EventStatus::Failed => "failed",
            EventStatus::Erased => "erased",
        }
    }

    /// Reads a stored status word (a `status`/`previous_status` field, a request record's
    /// last status); empty is none.
    pub fn parse(s: &str) -> Option<EventStatus> {
        match s {
            "" => None,
            "failed" => Some(EventStatus::Failed),
            "erased" => Some(EventStatus::Erased),
            other => Some(EventStatus::Session(SessionStatus::parse(other))),
        }
    }
}

impl From<SessionStatus> for EventStatus {
    fn from(status: SessionStatus) -> Self {
        EventStatus::Session(status)
    }
}

impl std::fmt::Display for EventStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Who decided: Didit itself, one of our rules, or a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    Didit,
    Rule(String),
    Operator(String),
    /// Our own deadline or failure handling.
    Fleet,
}

impl Decider {
    pub fn label(&self) -> String {
        match self {
            Decider::Didit => "didit".to_owned(),
            Decider::Rule(name) => format!("rule:{name}"),
            Decider::Operator(name) => format!("operator:{name}"),
            Decider::Fleet => "kyc-worker".to_owned(),
        }
    }
}

/// Why a verification failed (`data.reason` of `kyc.session.failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    BadRequest,
    Blocklisted,
    RetriesExhausted,
    Cancelled,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::BadRequest => "bad_request",
            FailureReason::Blocklisted => "blocklisted",
            FailureReason::RetriesExhausted => "retries_exhausted",
            FailureReason::Cancelled => "cancelled",
        }
    }
}

/// One event for the `<prefix>:events` stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeEvent {
    /// The id when this is the first time the session reached `status` (round 0's); see
    /// [`OutcomeEvent::repeat_id`] for a repeat.
    pub event_id: Uuid,
    /// The session's change round this event belongs to (0 for events published once per
    /// request, such as `kyc.session.created`); not a stream field.
    #[serde(skip)]
    pub round: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub session_id: Option<Uuid>,
    pub request_id: RequestId,
    pub vendor_data: String,
    /// Didit's status, or the fleet's word for a failure or an erasure.
    pub status: EventStatus,
    pub decided_by: String,
    pub data: Value,
}

impl OutcomeEvent {
    pub fn new(
        kind: EventType,
        request_id: RequestId,
        session_id: Option<Uuid>,
        vendor_data: String,
        status: EventStatus,
        decided_by: &Decider,
        data: Value,
    ) -> Self {
        Self {
            event_id: event_id(&request_id, session_id, 0, kind, &status),
            round: 0,
            kind,
            session_id,
            request_id,
            vendor_data,
            status,
            decided_by: decided_by.label(),
            data,
        }
    }
}

impl OutcomeEvent {
    /// The same event in the session's change round `round` (a status the session may
    /// reach again, after a resubmission or an overturn).
    pub fn in_round(mut self, round: u64) -> Self {
        self.round = round;
        self
    }

    /// The id this event carries when the session reached its status before, in an
    /// earlier round: the UUIDv5 that includes the round.
    pub fn repeat_id(&self) -> Uuid {
        event_id(
            &self.request_id,
            self.session_id,
            self.round,
            self.kind,
            &self.status,
        )
    }
}

/// The deterministic id of the event for (request, session, change round, type, status);
/// round 0 is the UUIDv5 of (request, session, type, status) without a round.
pub fn event_id(
    request: &RequestId,
    session: Option<Uuid>,
    round: u64,
    kind: EventType,
    status: &EventStatus,
) -> Uuid {
    let session = session.map(|s| s.to_string()).unwrap_or_default();
    let mut name = format!(
        "{}\u{1f}{session}\u{1f}{}\u{1f}{}",
        request.as_str(),
        kind.as_str(),
        status.as_str()
    );
    if round > 0 {
        name = format!("{name}\u{1f}{round}");
    }
    Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes())
}

/// Unix ms as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPROVED: EventStatus = EventStatus::Session(SessionStatus::Approved);

    #[test]
    fn event_ids_are_stable_and_distinct_per_status() {
        let r = RequestId::parse("r-1").expect("id");
        let s = Some(Uuid::nil());
        // Pinned: consumers deduplicate on these ids, so typing the fields must not move them.
        assert_eq!(
            event_id(&r, s, 0, EventType::Decided, &APPROVED).to_string(),
            "63218b7b-a070-5d61-b198-b2d767d49a06"
        );
        assert_eq!(
            event_id(&r, None, 0, EventType::Failed, &EventStatus::Failed).to_string(),
            "d164c6a6-b5fb-521b-a18a-e4cc37e8e463"
        );
        assert_ne!(
            event_id(&r, s, 0, EventType::Decided, &APPROVED),
            event_id(
                &r,
                s,
                0,
                EventType::Decided,
                &SessionStatus::InReview.into()
            )
        );
        let other = RequestId::parse("r-2").expect("id");
        assert_ne!(
            event_id(&r, s, 0, EventType::Decided, &APPROVED),
            event_id(&other, s, 0, EventType::Decided, &APPROVED)
        );
    }

    #[test]
    fn a_repeat_in_a_later_round_has_its_own_id_and_round_0_keeps_the_original() {
        let r = RequestId::parse("r-1").expect("id");
        let declined: EventStatus = SessionStatus::Declined.into();
        let event = OutcomeEvent::new(
            EventType::Decided,
            r.clone(),
            Some(Uuid::nil()),
            "user-1".into(),
            declined.clone(),
            &Decider::Didit,
            Value::Null,
        );
        assert_eq!(event.clone().in_round(0).repeat_id(), event.event_id);
        let again = event.clone().in_round(4);
        assert_eq!(again.event_id, event.event_id, "the first-time id stays");
        assert_ne!(again.repeat_id(), event.event_id);
        assert_ne!(again.repeat_id(), event.clone().in_round(5).repeat_id());
        assert_eq!(
            again.repeat_id(),
            event_id(&r, Some(Uuid::nil()), 4, EventType::Decided, &declined)
        );
    }

    #[test]
    fn status_words_read_back_as_what_they_were() {
        let statuses = SessionStatus::ALL
            .into_iter()
            .map(EventStatus::from)
            .chain([EventStatus::Failed, EventStatus::Erased]);
        for status in statuses {
            assert_eq!(EventStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(EventStatus::parse(""), None);
        assert_eq!(
            EventStatus::parse("Kyc Expired"),
            Some(SessionStatus::KycExpired.into())
        );
    }

    #[test]
    fn an_event_serialises_with_the_wire_words() {
        let event = OutcomeEvent::new(
            EventType::Decided,
            RequestId::parse("r-1").expect("id"),
            Some(Uuid::nil()),
            "user-1".into(),
            SessionStatus::InReview.into(),
            &Decider::Rule("aml".into()),
            Value::Null,
        );
        let json = serde_json::to_value(&event).expect("json");
        assert_eq!(json["type"], "kyc.session.decided");
        assert_eq!(json["status"], "In Review");
        assert_eq!(json["decided_by"], "rule:aml");
    }

    #[test]
    fn statuses_map_to_event_types() {
        assert_eq!(
            EventType::for_status(&SessionStatus::InReview),
            Some(EventType::Decided)
        );
        assert_eq!(
            EventType::for_status(&SessionStatus::Abandoned),
            Some(EventType::Expired)
        );
        assert_eq!(EventType::for_status(&SessionStatus::InProgress), None);
    }
}
