//! The retry policy: what becomes of a job whose handler did not finish it.
//!
//! Kept apart from Redis and from apalis so the rules a KYC fleet lives by — how many
//! attempts, until when, how long between them, that waiting for Didit is not failing, and
//! what goes to the dead set — are one pure function, tested on its own. The finisher turns
//! its verdict into one atomic Redis step.

use std::time::{Duration, SystemTime};

use crate::settings::QueueSettings;

/// What a handler reports when it finished without error.
#[derive(Debug, Clone)]
pub enum Completion<A> {
    /// Done: the job leaves the queue.
    Done,
    /// Not yet: run the job again at `at` with `args`. Waiting is not failure, so attempts
    /// are reset and the retry deadline starts again from `at`.
    RunAgain { at: SystemTime, args: A },
}

/// A handler's failure, saying whether it is worth another attempt.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient: try again, after `after` when the cause said so (e.g. `Retry-After`),
    /// else after the queue's exponential backoff. Counts an attempt.
    #[error("{reason}")]
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Transient but not the job's fault (Didit's 429 or 5xx): try again after `after`
    /// without counting an attempt; only the job's deadline bounds it.
    #[error("{reason}")]
    Wait { reason: String, after: Duration },
    /// Permanent: dead-letter now with this reason.
    #[error("{0}")]
    Fatal(String),
}

/// The verdict on a failed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run again at `at_ms` (Unix ms) with `attempt` failed attempts recorded.
    Retry {
        at_ms: u64,
        attempt: u32,
        /// The `kyc_jobs_total` outcome label: `retried` or `waited`.
        outcome: &'static str,
    },
    /// Dead-letter with this reason.
    Bury { reason: String },
}

/// The queue's retry rules (`queue.max_attempts`, `queue.job_deadline`, `queue.retry_min`,
/// `queue.retry_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub job_deadline: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// Jitter factors are kept in this range, so jobs that failed together spread by ±20 %.
pub const JITTER: std::ops::Range<f64> = 0.8..1.2;

impl RetryPolicy {
    pub fn from_settings(settings: &QueueSettings) -> Self {
        Self {
            max_attempts: settings.max_attempts,
            job_deadline: settings.job_deadline,
            retry_min: settings.retry_min,
            retry_max: settings.retry_max,
        }
    }

    /// The retry deadline of a job that becomes due at `from_ms`: past it, a failure is
    /// final. Starts again whenever the job makes progress ("run again", a replay).
    pub fn deadline_from(&self, from_ms: u64) -> u64 {
        from_ms.saturating_add(duration_ms(self.job_deadline))
    }

    /// Backoff before the next try after `attempt` failed attempts: `retry_min · 2^(attempt-1)`
    /// capped at `retry_max`, times `jitter` (clamped to `JITTER`).
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        let base = self.retry_min.saturating_mul(factor).min(self.retry_max);
        base.mul_f64(jitter.clamp(JITTER.start, JITTER.end))
    }

    /// The verdict on a delivery that failed with `error` at `now_ms`, after `attempt` failed
    /// attempts before it, with its retry deadline at `deadline_ms`.
    ///
    /// A fatal error buries at once. A retryable error counts an attempt and waits its own
    /// delay or the backoff; a wait (Didit busy) counts none. Either is buried when the
    /// attempts run out or when the next try would fall after the deadline.
    pub fn after_failure(
        &self,
        attempt: u32,
        deadline_ms: u64,
        error: &JobError,
        now_ms: u64,
        jitter: f64,
    ) -> Verdict {
        let (reason, after, attempt, outcome) = match error {
            JobError::Fatal(reason) => {
                return Verdict::Bury {
                    reason: reason.clone(),
                }
            }
            JobError::Retry { reason, after } => {
                let attempt = attempt.saturating_add(1);
                let after = after.unwrap_or_else(|| self.backoff(attempt, jitter));
                (reason, after, attempt, "retried")
            }
            JobError::Wait { reason, after } => (reason, *after, attempt, "waited"),
        };
        let at_ms = now_ms.saturating_add(duration_ms(after));
        if attempt >= self.max_attempts {
            Verdict::Bury {
                reason: format!("retries exhausted after {attempt} attempts: {reason}"),
            }
        } else if at_ms > deadline_ms {
            Verdict::Bury {
                reason: format!("retry deadline passed after {attempt} attempts: {reason}"),
            }
        } else {
            Verdict::Retry {
                at_ms,
                attempt,
                outcome,
            }
        }
    }
}

/// A jitter factor in [`JITTER`], drawn once per delivery so every question about that
/// delivery's failure gets the same answer.
pub fn jitter() -> f64 {
    use rand::Rng;
    rand::rng().random_range(JITTER)
}

fn duration_ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            job_deadline: Duration::from_secs(3600),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }

    fn retry(after: Option<Duration>) -> JobError {
        JobError::Retry {
            reason: "boom".into(),
            after,
        }
    }

    #[test]
    fn backoff_doubles_from_the_minimum_and_stops_at_the_maximum() {
        let p = policy();
        assert_eq!(p.backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(p.backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(p.backoff(7, 1.0), Duration::from_secs(60));
        assert_eq!(p.backoff(u32::MAX, 1.0), Duration::from_secs(60));
    }

    #[test]
    fn backoff_jitter_stays_within_twenty_percent() {
        let p = policy();
        assert_eq!(p.backoff(2, 0.5), Duration::from_millis(1600));
        assert_eq!(p.backoff(2, 3.0), Duration::from_millis(2400));
        for _ in 0..100 {
            let j = jitter();
            assert!(JITTER.contains(&j));
        }
    }

    #[test]
    fn a_retryable_failure_counts_an_attempt_and_waits_the_backoff() {
        let verdict = policy().after_failure(2, NOW + 3_600_000, &retry(None), NOW, 1.0);
        assert_eq!(
            verdict,
            Verdict::Retry {
                at_ms: NOW + 4_000,
                attempt: 3,
                outcome: "retried"
            }
        );
    }

    #[test]
    fn the_handlers_own_delay_wins_over_the_backoff() {
        let after = Some(Duration::from_secs(42));
        let verdict = policy().after_failure(0, NOW + 3_600_000, &retry(after), NOW, 1.0);
        assert_eq!(
            verdict,
            Verdict::Retry {
                at_ms: NOW + 42_000,
                attempt: 1,
                outcome: "retried"
            }
        );
    }

    #[test]
    fn waiting_is_not_failing_it_counts_no_attempt() {
        let wait = JobError::Wait {
            reason: "429".into(),
            after: Duration::from_secs(30),
        };
        // Even at the last attempt: a busy Didit never uses the job's attempts up.
        let verdict = policy().after_failure(4, NOW + 3_600_000, &wait, NOW, 1.0);
        assert_eq!(
            verdict,
            Verdict::Retry {
                at_ms: NOW + 30_000,
                attempt: 4,
                outcome: "waited"
            }
        );
    }

    #[test]
    fn the_last_attempt_goes_to_the_dead_set() {
        let verdict = policy().after_failure(4, NOW + 3_600_000, &retry(None), NOW, 1.0);
        match verdict {
            Verdict::Bury { reason } => {
                assert!(reason.starts_with("retries exhausted after 5 attempts"));
                assert!(reason.ends_with("boom"));
            }
            other => panic!("expected burial, got {other:?}"),
        }
    }

    #[test]
    fn a_retry_after_the_deadline_goes_to_the_dead_set() {
        let deadline = NOW + 10_000;
        let wait = JobError::Wait {
            reason: "503".into(),
            after: Duration::from_secs(11),
        };
        match policy().after_failure(0, deadline, &wait, NOW, 1.0) {
            Verdict::Bury { reason } => assert!(reason.starts_with("retry deadline passed")),
            other => panic!("expected burial, got {other:?}"),
        }
        // Exactly at the deadline is still allowed.
        let wait = JobError::Wait {
            reason: "503".into(),
            after: Duration::from_secs(10),
        };
        assert!(matches!(
            policy().after_failure(0, deadline, &wait, NOW, 1.0),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn a_fatal_error_is_buried_at_once_with_its_reason() {
        let verdict = policy().after_failure(
            0,
            NOW + 3_600_000,
            &JobError::Fatal("bad request".into()),
            NOW,
            1.0,
        );
        assert_eq!(
            verdict,
            Verdict::Bury {
                reason: "bad request".into()
            }
        );
    }

    #[test]
    fn the_deadline_runs_from_when_the_job_becomes_due() {
        assert_eq!(policy().deadline_from(NOW), NOW + 3_600_000);
        assert_eq!(policy().deadline_from(u64::MAX), u64::MAX);
    }
}
