//! `[queue]`: delivery, retry and dead-letter limits of the durable job queue. The checks
//! across keys keep a blocked read from looking like a dead worker.

use std::time::Duration;

use serde::Deserialize;

use super::{
    parse::{parse_count, parse_positive_duration},
    SettingsError,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    pub reclaim_after: Duration,
    pub max_deliveries: u32,
    pub max_attempts: u32,
    pub job_deadline: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub fetch_batch: usize,
    pub fetch_block: Duration,
    /// Longest a lost wake-up (a broken subscription) can delay a delayed job: the promoter
    /// checks its subscription twice per period.
    pub wake_bound: Duration,
    pub dead_max_len: u64,
    /// Start requests waiting (ready + scheduled) past which producers are told to back off.
    pub backpressure_limit: u64,
}

impl Default for QueueSettings {
    /// The values of `config/default.toml`.
    fn default() -> Self {
        Self {
            reclaim_after: Duration::from_secs(30),
            max_deliveries: 5,
            max_attempts: 25,
            job_deadline: Duration::from_secs(24 * 3600),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            fetch_batch: 32,
            fetch_block: Duration::from_secs(5),
            wake_bound: Duration::from_secs(1),
            dead_max_len: 100_000,
            backpressure_limit: 100_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    reclaim_after: String,
    max_deliveries: String,
    max_attempts: String,
    job_deadline: String,
    retry_min: String,
    retry_max: String,
    fetch_batch: String,
    fetch_block: String,
    wake_bound: String,
    dead_max_len: String,
    backpressure_limit: String,
}

impl RawQueue {
    pub(super) fn validate(self) -> Result<QueueSettings, SettingsError> {
        let q = &self;
        let queue = QueueSettings {
            reclaim_after: parse_positive_duration("queue.reclaim_after", &q.reclaim_after)?,
            max_deliveries: parse_count("queue.max_deliveries", &q.max_deliveries)?,
            max_attempts: parse_count("queue.max_attempts", &q.max_attempts)?,
            job_deadline: parse_positive_duration("queue.job_deadline", &q.job_deadline)?,
            retry_min: parse_positive_duration("queue.retry_min", &q.retry_min)?,
            retry_max: parse_positive_duration("queue.retry_max", &q.retry_max)?,
            fetch_batch: parse_count("queue.fetch_batch", &q.fetch_batch)?,
            fetch_block: parse_positive_duration("queue.fetch_block", &q.fetch_block)?,
            wake_bound: parse_positive_duration("queue.wake_bound", &q.wake_bound)?,
            dead_max_len: parse_count("queue.dead_max_len", &q.dead_max_len)?,
            backpressure_limit: parse_count("queue.backpressure_limit", &q.backpressure_limit)?,
        };
        if queue.fetch_block >= Duration::from_secs(10) {
            return Err(SettingsError::new(
                "queue.fetch_block",
                "must be shorter than 10s (the Redis reply timeout)",
            ));
        }
        if queue.reclaim_after < queue.fetch_block * 2 {
            return Err(SettingsError::new(
                "queue.reclaim_after",
                "must be at least twice queue.fetch_block (a blocked read must not look like a dead worker)",
            ));
        }
        if queue.retry_max < queue.retry_min {
            return Err(SettingsError::new(
                "queue.retry_max",
                "must not be shorter than queue.retry_min",
            ));
        }
        Ok(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use super::QueueSettings;

    #[test]
    fn the_default_impl_matches_the_default_file() {
        assert_eq!(load(&[]).expect("defaults").queue, QueueSettings::default());
    }

    #[test]
    fn keys_that_depend_on_each_other_are_checked_together() {
        let cases = [
            (
                "KYC__QUEUE__JOB_DEADLINE",
                "99999999d",
                "KYC__QUEUE__JOB_DEADLINE",
                "3650d",
            ),
            (
                "KYC__QUEUE__FETCH_BLOCK",
                "10s",
                "KYC__QUEUE__FETCH_BLOCK",
                "shorter than 10s",
            ),
            (
                "KYC__QUEUE__RECLAIM_AFTER",
                "1s",
                "KYC__QUEUE__RECLAIM_AFTER",
                "twice",
            ),
            (
                "KYC__QUEUE__RETRY_MIN",
                "10m",
                "KYC__QUEUE__RETRY_MAX",
                "retry_min",
            ),
        ];
        for (var, value, key, reason) in cases {
            let err = load(&[(var, value)]).expect_err(var);
            assert_eq!(err.key, key, "{var}={value}: {err}");
            assert!(err.reason.contains(reason), "{var}={value}: {err}");
        }
    }
}
