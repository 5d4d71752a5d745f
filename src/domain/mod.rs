//! Domain types: what a verification is, independent of Redis, HTTP or Didit's wire format,
//! and the rules an outcome's delivery to a subscriber follows (its Standard Webhooks
//! signature, the addresses a subscriber URL may name). Nothing here does I/O.

mod address;
mod event;
mod request;
mod schedule;
mod signature;

/// Didit's vocabulary, owned by the SDK: the ten session statuses, and why an account's calls
/// are paused.
pub use didit::{AccountPause, SessionStatus};
pub use event::{event_id, Decider, EventStatus, EventType, FailureReason, OutcomeEvent};
pub use request::{
    first_problem, Admission, ContactDetails, ExpectedDetails, Refusal, RequestError, RequestId,
    StartRequest,
};
pub use schedule::PollSchedule;
pub use signature::{KeyError, SigningKey};

pub(crate) use address::{check_literal, is_forbidden, Refused};
pub(crate) use signature::signature_header;
