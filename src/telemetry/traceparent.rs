//! The W3C `traceparent`: the one piece of trace context the fleet carries.
//!
//! It rides in job envelopes and beside a waiting session in Redis, so it is kept in its
//! compact binary form here and written as the 55-character header text in storage
//! (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`); `tracestate` is not carried.

use std::fmt;

#[cfg(feature = "otel")]
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// One span's position in one trace, as W3C Trace Context writes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Why a `traceparent` was not accepted (it is then ignored, as W3C asks: the work starts
/// a trace of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("not of the form 00-<32 hex>-<16 hex>-<2 hex>")]
    Shape,
    #[error("version ff is not allowed")]
    Version,
    #[error("the trace id or parent id is all zeros")]
    Zero,
}

fn hex_bytes<const N: usize>(text: &str) -> Result<[u8; N], TraceParentError> {
    // Lower case only: W3C forbids upper-case hex in this header.
    if text.len() != N * 2 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(TraceParentError::Shape);
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| TraceParentError::Shape)?;
    Ok(out)
}

impl TraceParent {
    /// Parses a `traceparent` header value. Version 00 must be exactly 55 characters; a
    /// later version may append fields, which are ignored.
    pub fn parse(text: &str) -> Result<Self, TraceParentError> {
        let text = text.trim();
        let mut parts = text.splitn(5, '-');
        let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TraceParentError::Shape);
        };
        let [version] = hex_bytes::<1>(version)?;
        if version == 0xff {
            return Err(TraceParentError::Version);
        }
        let flags = flags.get(..2).ok_or(TraceParentError::Shape)?;
        if version == 0 && text.len() != TRACEPARENT_LEN {
            return Err(TraceParentError::Shape);
        }
        if version != 0 && text.len() > TRACEPARENT_LEN && text.as_bytes()[TRACEPARENT_LEN] != b'-'
        {
            return Err(TraceParentError::Shape);
        }
        let trace_id = hex_bytes::<16>(trace)?;
        let parent_id = hex_bytes::<8>(parent)?;
        let [flags] = hex_bytes::<1>(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return Err(TraceParentError::Zero);
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The trace's id as 32 lower-case hex characters, as trace backends show it.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// Whether the caller recorded this trace (the `sampled` flag).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The position of a span the tracer knows; `None` for an invalid (empty) context.
    #[cfg(feature = "otel")]
    pub fn from_span_context(span: &SpanContext) -> Option<Self> {
        span.is_valid().then(|| Self {
            trace_id: span.trace_id().to_bytes(),
            parent_id: span.span_id().to_bytes(),
            flags: span.trace_flags().to_u8(),
        })
    }

    /// The span context a child continues from: remote, since it came through Redis or
    /// HTTP.
    #[cfg(feature = "otel")]
    pub fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.parent_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        )
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl std::str::FromStr for TraceParent {
    type Err = TraceParentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for TraceParent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_round_trips_in_55_bytes() {
        let tp = TraceParent::parse(SAMPLE).expect("valid");
        assert_eq!(tp.to_string(), SAMPLE);
        assert_eq!(tp.to_string().len(), TRACEPARENT_LEN);
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(tp.sampled());
        let json = serde_json::to_string(&tp).expect("serialise");
        assert_eq!(json, format!("\"{SAMPLE}\""));
        assert_eq!(
            serde_json::from_str::<TraceParent>(&json).expect("back"),
            tp
        );
        #[cfg(feature = "otel")]
        assert_eq!(TraceParent::from_span_context(&tp.span_context()), Some(tp));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let cases = [
            ("", TraceParentError::Shape),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                TraceParentError::Shape,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceParentError::Shape,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceParentError::Zero,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceParentError::Zero,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Version,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                TraceParentError::Shape,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                TraceParentError::Shape,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(TraceParent::parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let tp = TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what")
            .expect("future version");
        assert!(!tp.sampled());
        assert_eq!(
            tp.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }
}
