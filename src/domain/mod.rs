//! Domain types: what a verification is, independent of Redis, HTTP or Didit's wire format.
//! Nothing here does I/O.

mod address;
mod event;
mod request;
mod schedule;

pub use address::TrustedProxies;
/// Didit's vocabulary, owned by the SDK: the ten session statuses, and why an account's calls
/// are paused.
pub use didit::{AccountPause, SessionStatus};
pub use event::{event_id, Decider, EventStatus, EventType, FailureReason, OutcomeEvent};
pub use request::{
    first_problem, validate_vendor_data, Admission, ContactDetails, ExpectedDetails, IntakeLimits,
    Refusal, RequestError, RequestFingerprint, RequestId, StartRequest,
};
pub use schedule::{spread, PollSchedule};
