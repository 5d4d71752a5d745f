//! Domain types: what a verification is, independent of Redis, HTTP or Didit's wire format,
//! and the rules an outcome's delivery to a subscriber follows (its Standard Webhooks
//! signature, the addresses a subscriber URL may name). Nothing here does I/O.

mod address;
mod egress;
mod event;
pub mod lifecycle;
mod request;
mod schedule;
mod signature;

pub use address::TrustedProxies;
/// Didit's vocabulary, owned by the SDK: the ten session statuses, and why an account's calls
/// are paused.
pub use didit::{AccountPause, SessionStatus};
pub use event::{event_id, rfc3339, Decider, EventStatus, EventType, FailureReason, OutcomeEvent};
pub use request::{
    first_problem, validate_vendor_data, Admission, ContactDetails, ExpectedDetails, IntakeLimits,
    Refusal, RequestError, RequestFingerprint, RequestId, StartRequest,
};
pub use schedule::{spread, PollSchedule};
pub use signature::{KeyError, SigningKey};

pub(crate) use egress::{check_literal, is_forbidden, Refused};
pub(crate) use signature::signature_header;
