//! Outcome events: what the fleet tells the rest of the company, one per decision.
//!
//! The event id is deterministic (UUIDv5 of request, session, type and status), so a
//! consumer that sees the same decision twice (at-least-once delivery) sees the same id.

use serde::Serialize;
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
    /// A person was erased; carries a salted hash of their vendor_data, never the value.
    Erased,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::Created,
        EventType::Decided,
        EventType::Expired,
        EventType::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "kyc.session.created",
            EventType::Decided => "kyc.session.decided",
            EventType::Expired => "kyc.session.expired",
            EventType::Failed => "kyc.session.failed",
            EventType::Erased => "kyc.subject.erased",
        }
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
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub session_id: Option<Uuid>,
    pub request_id: RequestId,
    pub vendor_data: String,
    /// Didit's status, or the failure's status word (`failed`).
    pub status: String,
    pub decided_by: String,
    pub data: Value,
}

impl OutcomeEvent {
    pub fn new(
        kind: EventType,
        request_id: RequestId,
        session_id: Option<Uuid>,
        vendor_data: String,
        status: &str,
        decided_by: &Decider,
        data: Value,
    ) -> Self {
        Self {
            event_id: event_id(&request_id, session_id, kind, status),
            kind: kind.as_str(),
            session_id,
            request_id,
            vendor_data,
            status: status.to_owned(),
            decided_by: decided_by.label(),
            data,
        }
    }
}

/// The deterministic id of the event for (request, session, type, status).
pub fn event_id(request: &RequestId, session: Option<Uuid>, kind: EventType, status: &str) -> Uuid {
    let session = session.map(|s| s.to_string()).unwrap_or_default();
    let name = format!(
        "{}\u{1f}{session}\u{1f}{}\u{1f}{status}",
        request.as_str(),
        kind.as_str()
    );
    Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_and_distinct_per_status() {
        let r = RequestId::parse("r-1").expect("id");
        let s = Some(Uuid::nil());
        assert_eq!(
            event_id(&r, s, EventType::Decided, "Approved"),
            event_id(&r, s, EventType::Decided, "Approved")
        );
        assert_ne!(
            event_id(&r, s, EventType::Decided, "Approved"),
            event_id(&r, s, EventType::Decided, "In Review")
        );
        let other = RequestId::parse("r-2").expect("id");
        assert_ne!(
            event_id(&r, s, EventType::Decided, "Approved"),
            event_id(&other, s, EventType::Decided, "Approved")
        );
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
