//! When to look at a session again: the poll schedule and the session's deadline.
//!
//! With webhooks the poll is a safety net (first after ~15 min, capped at 1 h); polling-only
//! it is the primary signal (5 s growing to 60 s). The interval is a pure function of the
//! poll count and the session id (our own seeded jitter instead of `backoff`'s random one),
//! so tests and replays are exact.

use std::time::Duration;

use backoff::backoff::Backoff;

/// One schedule's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollSchedule {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// ± this fraction of the interval, seeded by the session.
    pub jitter: f64,
}

impl PollSchedule {
    /// The wait before poll number `polls` (0-based) of session `seed`.
    pub fn interval(&self, polls: u32, seed: u128) -> Duration {
        let mut b = backoff::ExponentialBackoff {
            current_interval: self.initial,
            initial_interval: self.initial,
            randomization_factor: 0.0,
            multiplier: self.multiplier,
            max_interval: self.max,
            max_elapsed_time: None,
            ..Default::default()
        };
        let mut interval = self.initial;
        for _ in 0..=polls.min(64) {
            interval = b.next_backoff().unwrap_or(self.max);
        }
        let unit = jitter_unit(seed, polls);
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        interval
            .mul_f64(factor.max(0.0))
            .min(self.max.mul_f64(1.0 + self.jitter))
    }
}

/// A wait spread after its floor: `floor` plus up to half of it more (at most 10 s more),
/// by `unit` in [0, 1). Jobs that were told to wait for the same instant (a 429's
/// `Retry-After`, a full rate-limit window) come back spread out instead of all at once,
/// and never before the floor.
pub fn spread(floor: Duration, unit: f64) -> Duration {
    let extra = (floor / 2).min(Duration::from_secs(10));
    floor + extra.mul_f64(unit.clamp(0.0, 1.0))
}

/// A deterministic number in [0, 1) from the session and the poll count (splitmix64).
fn jitter_unit(seed: u128, polls: u32) -> f64 {
    let mut z = (seed as u64)
        ^ ((seed >> 64) as u64)
        ^ u64::from(polls).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_wait_is_never_shorter_than_its_floor_and_at_most_10_s_longer() {
        let floor = Duration::from_secs(30);
        assert_eq!(spread(floor, 0.0), floor);
        assert_eq!(spread(floor, 0.999_999).as_secs(), 39);
        assert_eq!(
            spread(Duration::from_millis(200), 1.0),
            Duration::from_millis(300)
        );
        assert_eq!(
            spread(Duration::from_secs(600), 1.0),
            Duration::from_secs(610)
        );
    }

    fn polling_only() -> PollSchedule {
        PollSchedule {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(60),
            multiplier: 1.5,
            jitter: 0.0,
        }
    }

    #[test]
    fn intervals_grow_to_the_cap() {
        let s = polling_only();
        assert_eq!(s.interval(0, 1), Duration::from_secs(5));
        assert_eq!(s.interval(1, 1), Duration::from_millis(7500));
        assert_eq!(s.interval(2, 1), Duration::from_millis(11250));
        assert_eq!(s.interval(30, 1), Duration::from_secs(60));
    }

    #[test]
    fn jitter_is_bounded_and_reproducible() {
        let s = PollSchedule {
            jitter: 0.1,
            ..polling_only()
        };
        for polls in 0..50 {
            let a = s.interval(polls, 42);
            assert_eq!(a, s.interval(polls, 42));
            let base = polling_only().interval(polls, 42);
            assert!(
                a >= base.mul_f64(0.9) && a <= base.mul_f64(1.1),
                "{polls}: {a:?} vs {base:?}"
            );
        }
        assert_ne!(s.interval(3, 1), s.interval(3, 2));
    }
}
