//! Redis key names of one queue. Every key starts with the deployment's prefix; names carry
//! queue names only, never ids or personal data.

/// The consumer group every worker of a queue reads through.
pub const GROUP: &str = "workers";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// Stream of jobs ready to run (entries are deleted once finished).
    pub ready: String,
    /// Sorted set: job id → due time in Unix ms.
    pub delayed: String,
    /// Hash: job id → envelope, for delayed jobs.
    pub payloads: String,
    /// Stream of dead jobs with their reason.
    pub dead: String,
    /// Pub/sub channel on which scripts announce a new earliest due time of `delayed`, so
    /// every promoter sleeps until exactly then (a channel, not a key: it holds nothing).
    pub wake: String,
}

impl QueueKeys {
    pub fn new(prefix: &str, queue: &str) -> Self {
        let base = format!("{prefix}:queue:{queue}");
        Self {
            ready: format!("{base}:ready"),
            delayed: format!("{base}:delayed"),
            payloads: format!("{base}:payloads"),
            dead: format!("{base}:dead"),
            wake: format!("{base}:wake"),
        }
    }
}
