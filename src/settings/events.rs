//! `[events]`: how long outcome events and the fleet's memory of them are kept, and the salt
//! that keeps an erased subject's hash unguessable.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::{parse::parse_positive_duration, SettingsError};

/// The subject-hash salt of the embedded defaults; refused for a real Didit base URL.
pub const SANDBOX_SUBJECT_SALT: &str = "sandbox-subject-salt-not-secret";

#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Events older than this are trimmed from the stream.
    pub retention: Duration,
    /// Salt of the subject hash (`kyc.subject.erased` carries the hash, never the value).
    pub subject_salt: SecretString,
    /// How long the fleet remembers what it published, and which request a session serves.
    pub record_retention: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    retention: String,
    subject_salt: String,
    record_retention: String,
}

impl RawEvents {
    /// `sandbox`: Didit is the local sandbox, where the well-known salt is acceptable.
    pub(super) fn validate(self, sandbox: bool) -> Result<EventSettings, SettingsError> {
        Ok(EventSettings {
            retention: parse_positive_duration("events.retention", &self.retention)?,
            subject_salt: {
                let salt = self.subject_salt.trim();
                if salt.len() < 16 || (!sandbox && salt == SANDBOX_SUBJECT_SALT) {
                    return Err(SettingsError::new(
                        "events.subject_salt",
                        "set a random value of at least 16 characters (it keeps erased subjects' hashes unguessable)",
                    ));
                }
                SecretString::from(salt.to_owned())
            },
            record_retention: parse_positive_duration(
                "events.record_retention",
                &self.record_retention,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

    #[test]
    fn a_short_salt_is_refused_even_for_the_sandbox() {
        let err = load(&[("KYC__EVENTS__SUBJECT_SALT", "short")]).expect_err("short");
        assert_eq!(err.key, "KYC__EVENTS__SUBJECT_SALT");
    }
}
