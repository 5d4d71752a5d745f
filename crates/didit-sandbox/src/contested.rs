//! The answers on which Didit's sources disagree (its spec, docs and observed traffic), each
//! selectable so that the fleet's tests can exercise both branches rather than only the one
//! the sandbox happened to pick.
//!
//! Each choice is named by the HTTP status it answers with, as the `--wrong-key-status`,
//! `--same-status` and `--delete-status` flags and the matching control actions spell it.

use std::{fmt, str::FromStr};

/// What a request with a wrong or revoked `x-api-key` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WrongKeyStatus {
    /// `401 {"detail": "Invalid API Key."}` (the documented answer).
    #[default]
    Unauthorized,
    /// `403` with the same body (observed from July 2026).
    Forbidden,
}

/// What `update-status` to the status the session already has answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameStatus {
    /// `200 {"session_id": ...}`, nothing changes and no webhook is sent (newer docs).
    #[default]
    NoOp,
    /// `400 ["The new status is the same as the current status."]` (older docs).
    BadRequest,
}

/// What a successful `DELETE /v3/session/{id}/delete/` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeleteStatus {
    /// `204` with an empty body (July 2026 spec).
    #[default]
    NoContent,
    /// `200` with the face-retention summary (August 2026 change).
    Ok,
}

/// The three choices together, as `SandboxConfig` and the sandbox state hold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Contested {
    /// The answer to a wrong or revoked API key (`--wrong-key-status`).
    pub wrong_key: WrongKeyStatus,
    /// The answer to update-status to the current status (`--same-status`).
    pub same_status: SameStatus,
    /// The answer to a successful delete (`--delete-status`).
    pub delete: DeleteStatus,
}

/// Maps the status codes of one choice to its variants, for parsing and printing.
trait ByStatus: Sized + Copy + PartialEq + 'static {
    const CHOICES: &'static [(u16, Self)];
    const FLAG: &'static str;

    fn from_code(code: u16) -> Result<Self, String> {
        Self::CHOICES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let allowed: Vec<String> =
                    Self::CHOICES.iter().map(|(c, _)| c.to_string()).collect();
                format!(
                    "{} must be {}, got {code}",
                    Self::FLAG,
                    allowed.join(" or ")
                )
            })
    }

    fn code(self) -> u16 {
        Self::CHOICES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or(0, |(c, _)| *c)
    }
}

impl ByStatus for WrongKeyStatus {
    const CHOICES: &'static [(u16, Self)] = &[(401, Self::Unauthorized), (403, Self::Forbidden)];
    const FLAG: &'static str = "the wrong-key status";
}

impl ByStatus for SameStatus {
    const CHOICES: &'static [(u16, Self)] = &[(200, Self::NoOp), (400, Self::BadRequest)];
    const FLAG: &'static str = "the same-status answer";
}

impl ByStatus for DeleteStatus {
    const CHOICES: &'static [(u16, Self)] = &[(204, Self::NoContent), (200, Self::Ok)];
    const FLAG: &'static str = "the delete status";
}

macro_rules! by_status_conversions {
    ($($t:ty),*) => {$(
        impl $t {
            /// The variant answering with `code`, or why there is none.
            pub fn from_code(code: u16) -> Result<Self, String> {
                <Self as ByStatus>::from_code(code)
            }

            /// The HTTP status this choice answers with.
            pub fn code(self) -> u16 {
                <Self as ByStatus>::code(self)
            }
        }

        impl FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let code = s
                    .parse::<u16>()
                    .map_err(|_| format!("\"{s}\" is not an HTTP status"))?;
                Self::from_code(code)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.code())
            }
        }
    )*};
}

by_status_conversions!(WrongKeyStatus, SameStatus, DeleteStatus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_from_their_status_and_print_back() {
        assert_eq!("403".parse(), Ok(WrongKeyStatus::Forbidden));
        assert_eq!("400".parse(), Ok(SameStatus::BadRequest));
        assert_eq!("200".parse(), Ok(DeleteStatus::Ok));
        assert_eq!(WrongKeyStatus::default().to_string(), "401");
        assert_eq!(SameStatus::default().to_string(), "200");
        assert_eq!(DeleteStatus::default().to_string(), "204");
        assert!("402".parse::<WrongKeyStatus>().is_err());
        assert!("x".parse::<DeleteStatus>().is_err());
    }
}
