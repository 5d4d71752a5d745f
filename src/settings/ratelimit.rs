//! `[ratelimit]`: the fleet's share of Didit's per-key limits (see [`crate::ratelimit`]).

use std::time::Duration;

use serde::Deserialize;

use super::{
    parse::{parse_bool, parse_count, parse_duration_setting, parse_positive_duration},
    SettingsError,
};

/// The fleet's share of Didit's per-key limits (see `ratelimit`).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub window: Duration,
    /// Added to the window: the longest a call may take to reach Didit after admission.
    pub margin: Duration,
    pub get: u32,
    pub write: u32,
    pub create: u32,
    pub pdf: u32,
    /// Share of each window that low-priority calls (safety-net polls) may use.
    pub low_share: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    enabled: String,
    window: String,
    margin: String,
    get: String,
    write: String,
    create: String,
    pdf: String,
    low_share: String,
}

impl RawRateLimit {
    pub(super) fn validate(self) -> Result<RateLimitSettings, SettingsError> {
        let r = &self;
        Ok(RateLimitSettings {
            enabled: parse_bool("ratelimit.enabled", &r.enabled)?,
            window: parse_positive_duration("ratelimit.window", &r.window)?,
            margin: parse_duration_setting("ratelimit.margin", &r.margin)?,
            get: parse_count("ratelimit.get", &r.get)?,
            write: parse_count("ratelimit.write", &r.write)?,
            create: parse_count("ratelimit.create", &r.create)?,
            pdf: parse_count("ratelimit.pdf", &r.pdf)?,
            low_share: r
                .low_share
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| *s > 0.0 && *s <= 1.0)
                .ok_or_else(|| {
                    SettingsError::new(
                        "ratelimit.low_share",
                        format!("expected a fraction in (0, 1], got \"{}\"", r.low_share),
                    )
                })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

    #[test]
    fn the_low_share_is_a_fraction() {
        for value in ["0", "1.5", "half"] {
            let err = load(&[("KYC__RATELIMIT__LOW_SHARE", value)]).expect_err(value);
            assert_eq!(err.key, "KYC__RATELIMIT__LOW_SHARE");
        }
        let s = load(&[("KYC__RATELIMIT__LOW_SHARE", "1")]).expect("valid");
        assert!((s.ratelimit.low_share - 1.0).abs() < f64::EPSILON);
    }
}
