//! `[intake]`: the limits every intake (Rust, HTTP, the intake stream) holds start requests
//! to, so that whatever Didit echoes back in its webhooks stays inside what the webhook
//! route accepts.

use serde::Deserialize;

use super::{parse::parse_count, SettingsError};
use crate::domain::IntakeLimits;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntake {
    max_json_field_bytes: String,
}

impl RawIntake {
    pub(super) fn validate(self) -> Result<IntakeLimits, SettingsError> {
        const KEY: &str = "intake.max_json_field_bytes";
        let max_json_field_bytes: usize = parse_count(KEY, &self.max_json_field_bytes)?;
        if max_json_field_bytes > IntakeLimits::MAX_JSON_FIELD_BYTES {
            return Err(SettingsError::new(
                KEY,
                format!(
                    "must be at most {} (three fields this size must fit in a 1 MiB webhook)",
                    IntakeLimits::MAX_JSON_FIELD_BYTES
                ),
            ));
        }
        Ok(IntakeLimits {
            max_json_field_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use crate::domain::IntakeLimits;

    #[test]
    fn the_json_field_cap_defaults_to_16_kib_and_is_bounded() {
        assert_eq!(load(&[]).expect("defaults").intake, IntakeLimits::default());
        assert_eq!(IntakeLimits::default().max_json_field_bytes, 16 * 1024);
        let s = load(&[("KYC__INTAKE__MAX_JSON_FIELD_BYTES", "262144")]).expect("the highest");
        assert_eq!(s.intake.max_json_field_bytes, 262_144);
        for (value, reason) in [
            ("262145", "at most 262144"),
            ("0", "at least 1"),
            ("big", "whole number"),
        ] {
            let err = load(&[("KYC__INTAKE__MAX_JSON_FIELD_BYTES", value)]).expect_err(value);
            assert_eq!(err.key, "KYC__INTAKE__MAX_JSON_FIELD_BYTES", "{err}");
            assert!(err.reason.contains(reason), "{value}: {err}");
        }
    }
}
