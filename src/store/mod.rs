//! What the fleet remembers about verifications in Redis, outside the job queue.
//!
//! Jobs are durable in the queue, but a job alone cannot tell whether Didit already created
//! its session, which requests a session answers, or whether an outcome was announced: those
//! facts live here, one file per concern.
//!
//! - `requests`: the request record, one per request id, what was asked and how far it
//!   got. Written before the Didit call (the intent) and right after it (the session), so a
//!   retry never creates a second session; each request's audit trail, written in the same
//!   round trip as the change it describes; a person's index, for erasure;
//! - `sessions`: the session record: which requests a Didit session answers (Didit reuses
//!   an unfinished session for the same vendor_data), its last status and its deadline; and
//!   the sweep of open sessions;
//! - `events`: the `<prefix>:events` stream and each request's "published" markers,
//!   written together by one script;
//! - `pause`: the fleet-wide pause of Didit calls;
//! - `claims`: what is decided inside Redis in one step: a request id's first body (the
//!   record and the job written together), a webhook's adoption of a session, the
//!   per-request lock that belongs to a delivery;
//! - `logins`: failed console logins per client address (the login throttle);
//! - `dedupe`: webhook deliveries already seen;
//! - `console`: what the operator console reads beside those (review queue, heartbeats,
//!   the console's own log);
//! - `subscribers`: the delivery bridge's reading of the outcome stream, each subscriber's
//!   delivery state, the disabled set and the pending index behind the delivery lag;
//! - `tail`: the outcome stream read back for operators, partition by partition.
//!
//! Request ids may be the caller's own identifiers, so key names carry a hash of them,
//! never the id itself; nothing here puts personal data in a key name.

mod claims;
mod console;
mod console_lists;
mod dedupe;
mod events;
mod lag;
mod logins;
mod pause;
mod requests;
mod sessions;
mod subscribers;
mod tail;

pub use tail::{merge as merge_events, StoredEvent};

use crate::queue::RedisConnection;
use sha2::{Digest, Sha256};

use crate::settings::EventSettings;

pub(crate) use claims::Enqueued;
pub(crate) use console::ReviewItem;
pub(crate) use console_lists::StreamEvent;
pub(crate) use sessions::{HoldChange, NewSession, ReadRecord, ReadRecorded, SessionRecord};
pub(crate) use subscribers::{EventReader, OutcomeEntry, SubscriberState};

/// A store operation that failed, and whether trying it again can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis was unreachable, timed out or refused the command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A record holds a value the fleet never writes there: reading it again reads the same.
    #[error("corrupt {record} record: field {field}")]
    Corrupt {
        record: &'static str,
        field: &'static str,
    },
}

impl StoreError {
    /// `true` when the same call may succeed later (Redis I/O, a timeout, a server busy
    /// loading); `false` for a corrupt record or a key of a type the fleet never writes.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            StoreError::Redis(e) => {
                e.kind() != redis::ErrorKind::UnexpectedReturnType && e.code() != Some("WRONGTYPE")
            }
            StoreError::Corrupt { .. } => false,
        }
    }

    /// `true` when Redis did not answer at all (refused, dropped, timed out), as opposed
    /// to answering with an error (out of memory, read-only).
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
            }
            StoreError::Corrupt { .. } => false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    conn: RedisConnection,
    prefix: String,
    settings: EventSettings,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The 128-bit hash that stands for caller-chosen strings in key names.
fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Reads an optional field of a record: absent is `None`, present but unreadable is a
/// corrupt record (the fleet never writes such a value).
fn field<T: std::str::FromStr>(
    map: &std::collections::HashMap<String, String>,
    record: &'static str,
    field: &'static str,
) -> StoreResult<Option<T>> {
    map.get(field)
        .map(|v| v.parse().map_err(|_| StoreError::Corrupt { record, field }))
        .transpose()
}

impl Store {
    pub fn new(conn: RedisConnection, prefix: &str, settings: EventSettings) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            settings,
        }
    }

    /// How long every record lives, in seconds (Redis `EXPIRE`).
    fn ttl(&self) -> i64 {
        self.settings.record_retention.as_secs() as i64
    }

    /// Readiness: Redis answers *and* accepts writes. A Redis out of memory under
    /// `noeviction` (or a replica after a failover) still answers PING but refuses every
    /// intake, so it must turn the pod unready.
    pub(crate) async fn writable(&self) -> StoreResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("SET")
            .arg(format!("{}:readiness", self.prefix))
            .arg(crate::queue::now_ms())
            .arg("PX")
            .arg(60_000)
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// Runs a pipeline whose replies are all ignored. An empty pipeline (an audit step for
    /// a session whose requests were all cancelled, say) sends nothing: Redis would refuse
    /// it as an empty command.
    async fn run(&self, pipe: &redis::Pipeline) -> StoreResult<()> {
        if pipe.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_io_is_retryable_and_a_corrupt_record_is_not() {
        let io = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(StoreError::from(io).is_retryable());
        let mismatch =
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "not a hash"));
        assert!(!StoreError::from(mismatch).is_retryable());
        let corrupt = StoreError::Corrupt {
            record: "request",
            field: "session_id",
        };
        assert!(!corrupt.is_retryable());
        assert_eq!(
            corrupt.to_string(),
            "corrupt request record: field session_id"
        );
    }

    #[test]
    fn a_field_that_does_not_parse_is_corrupt_and_an_absent_one_is_none() {
        let map: std::collections::HashMap<String, String> =
            [("deadline_ms".to_owned(), "soon".to_owned())].into();
        assert!(matches!(
            field::<u64>(&map, "session", "deadline_ms"),
            Err(StoreError::Corrupt {
                record: "session",
                field: "deadline_ms"
            })
        ));
        assert!(matches!(
            field::<u64>(&map, "session", "created_at_ms"),
            Ok(None)
        ));
    }
}
