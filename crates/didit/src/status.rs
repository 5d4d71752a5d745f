//! The ten session statuses Didit reports, and which of Didit's rules each one obeys.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Didit session status, spelled exactly as Didit spells it on the wire (`"Kyc Expired"`
/// has one capital K). A value Didit adds later is kept as `Unknown` rather than failing
/// the whole decision: the session is then treated as still moving.
///
/// ```
/// use didit::SessionStatus;
///
/// let status = SessionStatus::parse("Kyc Expired");
/// assert_eq!(status, SessionStatus::KycExpired);
/// assert!(status.is_final());
/// assert_eq!(status.to_string(), "Kyc Expired");
///
/// // A spelling Didit does not use is kept, not refused.
/// let other = SessionStatus::parse("KYC Expired");
/// assert_eq!(other, SessionStatus::Unknown("KYC Expired".to_owned()));
/// assert!(!other.is_final());
///
/// // Serde uses the same spelling.
/// let json: SessionStatus = serde_json::from_str("\"In Review\"").expect("json");
/// assert_eq!(json, SessionStatus::InReview);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    /// `Not Started`: created; the person has not opened the link yet.
    NotStarted,
    /// `In Progress`: the person is going through the hosted flow.
    InProgress,
    /// `Approved`: every check passed. Final, though a reviewer or `update-status` may
    /// overturn it, and it becomes `Kyc Expired` when the document's validity lapses.
    Approved,
    /// `Declined`: one or more checks failed. Final, though it may be resubmitted or
    /// overturned.
    Declined,
    /// `In Review`: flagged for a person to decide. Final for the automatic flow; the
    /// review's outcome arrives later as a new status.
    InReview,
    /// `Awaiting User`: business verification (KYB) only, waiting for the key people's own
    /// sessions.
    AwaitingUser,
    /// `Resubmitted`: the person was asked to redo some steps, with the same link.
    Resubmitted,
    /// `Expired`: the session timed out before the person opened the link. Final.
    Expired,
    /// `Abandoned`: the person started but did not finish in time. Final, but it may be
    /// resubmitted through the API.
    Abandoned,
    /// `Kyc Expired` (one capital K): an approved session whose document validity lapsed.
    /// Final.
    KycExpired,
    /// A status this crate does not know, kept as Didit spelled it. Not final, so a caller
    /// keeps waiting rather than acting on a status it cannot interpret.
    Unknown(String),
}

impl SessionStatus {
    /// Every status Didit documents, in its order.
    pub const ALL: [SessionStatus; 10] = [
        SessionStatus::NotStarted,
        SessionStatus::InProgress,
        SessionStatus::Approved,
        SessionStatus::Declined,
        SessionStatus::InReview,
        SessionStatus::AwaitingUser,
        SessionStatus::Resubmitted,
        SessionStatus::Expired,
        SessionStatus::Abandoned,
        SessionStatus::KycExpired,
    ];

    /// Didit's spelling on the wire (`"Not Started"`, `"Kyc Expired"`, …); for `Unknown`,
    /// the text it was parsed from.
    pub fn as_str(&self) -> &str {
        match self {
            SessionStatus::NotStarted => "Not Started",
            SessionStatus::InProgress => "In Progress",
            SessionStatus::Approved => "Approved",
            SessionStatus::Declined => "Declined",
            SessionStatus::InReview => "In Review",
            SessionStatus::AwaitingUser => "Awaiting User",
            SessionStatus::Resubmitted => "Resubmitted",
            SessionStatus::Expired => "Expired",
            SessionStatus::Abandoned => "Abandoned",
            SessionStatus::KycExpired => "Kyc Expired",
            SessionStatus::Unknown(s) => s,
        }
    }

    /// Parses Didit's spelling; anything else becomes `Unknown`.
    pub fn parse(s: &str) -> SessionStatus {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .unwrap_or_else(|| SessionStatus::Unknown(s.to_owned()))
    }

    /// Didit's terminal statuses: the automatic flow has reached a result. In Review is one
    /// of them (a person decides later, which is a new change of status).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            SessionStatus::Approved
                | SessionStatus::Declined
                | SessionStatus::InReview
                | SessionStatus::Expired
                | SessionStatus::Abandoned
                | SessionStatus::KycExpired
        )
    }

    /// Statuses from which `update-status` is accepted.
    pub fn accepts_status_update(&self) -> bool {
        matches!(
            self,
            SessionStatus::Approved
                | SessionStatus::Declined
                | SessionStatus::InReview
                | SessionStatus::KycExpired
                | SessionStatus::Abandoned
                | SessionStatus::Resubmitted
        )
    }

    /// Statuses under which a PDF report can be generated.
    pub fn has_report(&self) -> bool {
        matches!(
            self,
            SessionStatus::Approved
                | SessionStatus::Declined
                | SessionStatus::InReview
                | SessionStatus::KycExpired
        )
    }

    /// Unfinished statuses: Didit reuses such a session for the same vendor_data.
    pub fn is_reusable(&self) -> bool {
        matches!(
            self,
            SessionStatus::NotStarted
                | SessionStatus::InProgress
                | SessionStatus::Resubmitted
                | SessionStatus::AwaitingUser
        )
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SessionStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SessionStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(SessionStatus::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_didits_spelling() {
        for status in SessionStatus::ALL {
            let json = serde_json::to_string(&status).expect("serialize");
            assert_eq!(
                serde_json::from_str::<SessionStatus>(&json).expect("parse"),
                status
            );
        }
        assert_eq!(
            SessionStatus::parse("Kyc Expired"),
            SessionStatus::KycExpired
        );
    }

    #[test]
    fn an_unknown_status_is_kept_and_not_final() {
        let s = SessionStatus::parse("KYC Expired");
        assert_eq!(s, SessionStatus::Unknown("KYC Expired".into()));
        assert!(!s.is_final());
        assert_eq!(
            serde_json::to_string(&s).expect("serialize"),
            "\"KYC Expired\""
        );
    }

    #[test]
    fn six_statuses_are_final() {
        let finals: Vec<_> = SessionStatus::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(finals.len(), 6);
        assert!(!SessionStatus::Resubmitted.is_final());
    }
}
