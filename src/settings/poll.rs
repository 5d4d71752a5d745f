//! `[poll]`: when the fleet reads a session from Didit instead of waiting for a webhook, and
//! how long it keeps reading.

use std::time::Duration;

use serde::Deserialize;

use super::{
    parse::{parse_duration_setting, parse_positive_duration},
    SettingsError,
};
use crate::domain::PollSchedule;

#[derive(Debug, Clone, PartialEq)]
pub struct PollSettings {
    /// Webhooks are configured: polls are only a safety net.
    pub with_webhooks: PollSchedule,
    /// No webhooks: polls are how decisions are seen.
    pub polling_only: PollSchedule,
    /// Added to the workflow's session expiration before we give up on a session.
    pub expiry_grace: Duration,
    /// How often a session In Review is re-read, and for how long.
    pub review_interval: Duration,
    pub review_horizon: Duration,
    /// How often work waiting on a paused account checks again.
    pub pause_recheck: Duration,
    /// How often open and In Review sessions are re-read whatever else happened (Didit
    /// drops a webhook after three failed tries; reviews are decided days later).
    pub sweep_interval: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPoll {
    webhook_initial: String,
    webhook_max: String,
    polling_initial: String,
    polling_max: String,
    multiplier: String,
    jitter: String,
    expiry_grace: String,
    review_interval: String,
    review_horizon: String,
    pause_recheck: String,
    sweep_interval: String,
}

impl RawPoll {
    pub(super) fn validate(self) -> Result<PollSettings, SettingsError> {
        let p = &self;
        let multiplier: f64 = p
            .multiplier
            .trim()
            .parse()
            .ok()
            .filter(|m: &f64| *m >= 1.0)
            .ok_or_else(|| {
                SettingsError::new(
                    "poll.multiplier",
                    format!("expected a number >= 1, got \"{}\"", p.multiplier),
                )
            })?;
        let jitter: f64 = p
            .jitter
            .trim()
            .parse()
            .ok()
            .filter(|j: &f64| (0.0..1.0).contains(j))
            .ok_or_else(|| {
                SettingsError::new(
                    "poll.jitter",
                    format!("expected a fraction in [0, 1), got \"{}\"", p.jitter),
                )
            })?;
        let schedule = |initial: &str,
                        ikey: &str,
                        max: &str,
                        mkey: &str|
         -> Result<PollSchedule, SettingsError> {
            Ok(PollSchedule {
                initial: parse_positive_duration(ikey, initial)?,
                max: parse_positive_duration(mkey, max)?,
                multiplier,
                jitter,
            })
        };
        Ok(PollSettings {
            with_webhooks: schedule(
                &p.webhook_initial,
                "poll.webhook_initial",
                &p.webhook_max,
                "poll.webhook_max",
            )?,
            polling_only: schedule(
                &p.polling_initial,
                "poll.polling_initial",
                &p.polling_max,
                "poll.polling_max",
            )?,
            expiry_grace: parse_duration_setting("poll.expiry_grace", &p.expiry_grace)?,
            review_interval: parse_positive_duration("poll.review_interval", &p.review_interval)?,
            review_horizon: parse_duration_setting("poll.review_horizon", &p.review_horizon)?,
            pause_recheck: parse_positive_duration("poll.pause_recheck", &p.pause_recheck)?,
            sweep_interval: parse_positive_duration("poll.sweep_interval", &p.sweep_interval)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

    #[test]
    fn the_multiplier_and_jitter_are_bounded() {
        let cases = [
            ("KYC__POLL__MULTIPLIER", "0.5", ">= 1"),
            ("KYC__POLL__JITTER", "1", "[0, 1)"),
            ("KYC__POLL__WEBHOOK_INITIAL", "0s", "longer than zero"),
        ];
        for (var, value, reason) in cases {
            let err = load(&[(var, value)]).expect_err(var);
            assert_eq!(err.key, var, "{err}");
            assert!(err.reason.contains(reason), "{var}={value}: {err}");
        }
    }
}
