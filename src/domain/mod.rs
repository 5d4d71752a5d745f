//! Domain types: what a verification is, independent of Redis, HTTP or Didit's wire format.
//! Nothing here does I/O.

mod event;
mod request;
mod schedule;
mod status;

pub use event::{event_id, Decider, EventType, FailureReason, OutcomeEvent};
pub use request::{RequestError, RequestId, StartRequest};
pub use schedule::PollSchedule;
pub use status::SessionStatus;

/// Why Didit calls are paused for the whole fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountPause {
    /// 401: the key is wrong, revoked or expired.
    InvalidKey,
    /// 403 where the key must have access.
    Forbidden,
    /// Not enough credits.
    NoCredits,
}

impl AccountPause {
    pub const ALL: [AccountPause; 3] = [
        AccountPause::InvalidKey,
        AccountPause::Forbidden,
        AccountPause::NoCredits,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountPause::InvalidKey => "invalid_key",
            AccountPause::Forbidden => "forbidden",
            AccountPause::NoCredits => "no_credits",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}
