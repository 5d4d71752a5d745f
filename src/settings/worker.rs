//! `[worker]`: how much one process runs at once and how long it drains on shutdown.

use std::time::Duration;

use serde::Deserialize;

use super::{
    parse::{parse_count, parse_duration_setting},
    SettingsError,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub shutdown_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorker {
    concurrency: String,
    shutdown_timeout: String,
}

impl RawWorker {
    pub(super) fn validate(self) -> Result<WorkerSettings, SettingsError> {
        Ok(WorkerSettings {
            concurrency: parse_count("worker.concurrency", &self.concurrency)?,
            shutdown_timeout: parse_duration_setting(
                "worker.shutdown_timeout",
                &self.shutdown_timeout,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

    #[test]
    fn concurrency_is_a_whole_number_of_at_least_one() {
        assert_eq!(load(&[]).expect("defaults").worker.concurrency, 64);
        for (value, reason) in [("0", "at least 1"), ("many", "whole number")] {
            let err = load(&[("KYC__WORKER__CONCURRENCY", value)]).expect_err(value);
            assert_eq!(err.key, "KYC__WORKER__CONCURRENCY");
            assert!(err.reason.contains(reason), "{err}");
        }
    }
}
