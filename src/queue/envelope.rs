//! What a job looks like in Redis: a versioned envelope around the job's own arguments.
//!
//! The envelope carries what the queue needs to decide without decoding the arguments:
//! the job id (stable across retries, so a delayed retry replaces rather than duplicates),
//! the attempt count, and the retry deadline. `v` is the job type's schema version: a worker
//! that meets a version it does not know dead-letters the job instead of guessing. `tp` is
//! the trace the job belongs to (a W3C `traceparent`, taken from the work that queued it), so
//! its run continues that trace in whichever process takes it — unless the job type keeps
//! its trace elsewhere ([`Job::CARRIES_TRACE`]).

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::value::RawValue;

/// A job type the queue can carry.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The queue's name; keys are `<prefix>:queue:<QUEUE>:…`.
    const QUEUE: &'static str;
    /// Bumped whenever the serialised form changes incompatibly.
    const VERSION: u32;
    /// Whether the envelope carries the trace the job was queued in. A job type whose trace
    /// is kept beside what it waits for says no, so that trace is stored once (a poll's is
    /// its session record's, which the run reads anyway).
    const CARRIES_TRACE: bool = true;
}

/// The stored form of one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub id: String,
    /// Failed attempts so far (a "not yet" re-run does not count).
    #[serde(default)]
    pub attempt: u32,
    /// Unix ms after which a failing job is dead-lettered instead of retried.
    pub deadline_ms: u64,
    /// The trace this job continues; absent outside any trace.
    #[serde(default, rename = "tp", skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::telemetry::TraceParent>,
    pub args: Box<RawValue>,
}

impl Envelope {
    /// A new job in the current trace (the one `telemetry::current` names), when its type
    /// carries its trace.
    pub fn new<A: Job>(id: String, args: &A, deadline_ms: u64) -> Result<Self, serde_json::Error> {
        Ok(Self {
            v: A::VERSION,
            id,
            attempt: 0,
            deadline_ms,
            trace: if A::CARRIES_TRACE {
                crate::telemetry::current()
            } else {
                None
            },
            args: serde_json::value::to_raw_value(args)?,
        })
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("an envelope of raw JSON always serialises")
    }
}

/// Why a stored job cannot be run by this build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a job envelope: {0}")]
    Envelope(String),
    #[error("unknown schema version {found} for queue {queue} (this build knows {known})")]
    Version {
        queue: &'static str,
        found: u32,
        known: u32,
    },
    #[error("arguments do not match the {queue} job: {reason}")]
    Args { queue: &'static str, reason: String },
}

/// A job that cannot be run: its envelope when that much was readable (boxed: the failure
/// path is rare, the success path hot), and why.
pub type Undecodable = (Option<Box<Envelope>>, DecodeError);

/// Decodes a stored job; the envelope is returned even when the arguments fail, so the
/// dead-letter entry can name the job.
pub fn decode<A: Job>(raw: &str) -> Result<(Envelope, A), Undecodable> {
    // serde quotes the values it fails on; a producer's payload may carry personal data.
    let redacted = |e: serde_json::Error| crate::telemetry::redact_values(&e.to_string());
    let envelope: Envelope =
        serde_json::from_str(raw).map_err(|e| (None, DecodeError::Envelope(redacted(e))))?;
    if envelope.v != A::VERSION {
        let err = DecodeError::Version {
            queue: A::QUEUE,
            found: envelope.v,
            known: A::VERSION,
        };
        return Err((Some(Box::new(envelope)), err));
    }
    match serde_json::from_str::<A>(envelope.args.get()) {
        Ok(args) => Ok((envelope, args)),
        Err(e) => {
            let err = DecodeError::Args {
                queue: A::QUEUE,
                reason: redacted(e),
            };
            Err((Some(Box::new(envelope)), err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Ping {
        n: u32,
    }
    impl Job for Ping {
        const QUEUE: &'static str = "ping";
        const VERSION: u32 = 2;
    }

    #[test]
    fn an_envelope_round_trips() {
        let e = Envelope::new("j1".into(), &Ping { n: 7 }, 99).expect("encode");
        let (back, args) = decode::<Ping>(&e.encode()).expect("decode");
        assert_eq!(args, Ping { n: 7 });
        assert_eq!(
            (back.id.as_str(), back.attempt, back.deadline_ms),
            ("j1", 0, 99)
        );
    }

    #[tokio::test]
    async fn a_job_queued_in_a_trace_carries_its_traceparent_and_none_otherwise() {
        let outside = Envelope::new("j1".into(), &Ping { n: 1 }, 9).expect("encode");
        assert!(!outside.encode().contains("\"tp\""), "{}", outside.encode());
        let caller = crate::telemetry::TraceParent::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .expect("valid");
        let inside = crate::telemetry::within(
            tracing::info_span!("test", trace_id = tracing::field::Empty),
            Some(caller),
            async { Envelope::new("j2".into(), &Ping { n: 2 }, 9).expect("encode") },
        )
        .await;
        let (back, _) = decode::<Ping>(&inside.encode()).expect("decode");
        assert_eq!(back.trace, Some(caller));
        assert!(inside.encode().contains(&format!("\"tp\":\"{caller}\"")));
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Wait {
        n: u32,
    }
    impl Job for Wait {
        const QUEUE: &'static str = "wait";
        const VERSION: u32 = 1;
        const CARRIES_TRACE: bool = false;
    }

    #[tokio::test]
    async fn a_job_type_that_keeps_its_trace_elsewhere_carries_none_even_in_a_trace() {
        let caller = crate::telemetry::TraceParent::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .expect("valid");
        let inside = crate::telemetry::within(
            tracing::info_span!("test", trace_id = tracing::field::Empty),
            Some(caller),
            async { Envelope::new("j3".into(), &Wait { n: 3 }, 9).expect("encode") },
        )
        .await;
        assert_eq!(inside.trace, None);
        assert!(!inside.encode().contains("\"tp\""), "{}", inside.encode());
    }

    #[test]
    fn garbage_wrong_versions_and_wrong_args_are_told_apart() {
        assert!(matches!(
            decode::<Ping>("{nope"),
            Err((None, DecodeError::Envelope(_)))
        ));
        let old = r#"{"v":1,"id":"j","deadline_ms":0,"args":{"n":1}}"#;
        assert!(matches!(
            decode::<Ping>(old),
            Err((
                Some(_),
                DecodeError::Version {
                    found: 1,
                    known: 2,
                    ..
                }
            ))
        ));
        let bad = r#"{"v":2,"id":"j","deadline_ms":0,"args":{"n":"x"}}"#;
        assert!(matches!(
            decode::<Ping>(bad),
            Err((Some(_), DecodeError::Args { .. }))
        ));
    }
}
