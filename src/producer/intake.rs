//! The intake stream: producers in any language start verifications with
//! `XADD <prefix>:intake * vendor_data u-1 request_id r-1 …` (fields as the start request;
//! JSON-valued fields — `contact_details`, `expected_details`, `metadata` — as JSON strings;
//! an optional `traceparent` field continues the producer's trace).
//!
//! Entries are read through a consumer group, so several processes share the stream and a
//! dead reader's entries are reclaimed. A valid entry becomes a StartKyc job; an invalid one
//! is acknowledged and recorded on `<prefix>:intake:rejected` with its reason. An entry
//! without a request id gets one derived from its stream id, so a re-read after a crash
//! (between enqueue and acknowledgement) cannot start a second verification.

use std::time::Duration;

use redis::{streams::StreamId, AsyncCommands};
use serde_json::{Map, Value};

use super::{Producer, ProducerError};
use crate::{domain::StartRequest, store::StoreError, telemetry::TraceParent};

const GROUP: &str = "workers";
/// Rejected entries kept for inspection.
const REJECTED_MAX_LEN: usize = 10_000;
/// Entries taken per read.
const READ_COUNT: usize = 100;
const JSON_FIELDS: [&str; 3] = ["contact_details", "expected_details", "metadata"];

/// Reads the intake stream until the task is aborted.
pub async fn read_intake(
    producer: Producer,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    connector: crate::queue::Connector,
    prefix: String,
    consumer: String,
    reclaim_after: Duration,
    fetch_block: Duration,
) {
    let stream = format!("{prefix}:intake");
    let rejected = format!("{prefix}:intake:rejected");
    // A connection of its own: its blocking reads must not hold up the shared one.
    let mut conn = connector.connect();
    let mut last_reclaim = tokio::time::Instant::now();
    // Whether the last read found entries: only a stream in use is checked for backpressure
    // before each read, so an idle one costs one blocking read per `queue.fetch_block`. At
    // the switch from idle to busy one read (at most `READ_COUNT` entries) goes unchecked.
    let mut busy = true;
    loop {
        let c = &mut conn;
        // Backpressure: while too much work waits, leave the stream unread (producers see
        // it grow) instead of turning it into more queued work.
        if let Err(ProducerError::Backpressure {
            retry_after,
            waiting,
        }) = if busy {
            producer.check_capacity().await
        } else {
            Ok(())
        } {
            tracing::warn!(waiting, "intake stream paused: the fleet is behind");
            tokio::time::sleep(retry_after).await;
            continue;
        }
        let mut entries = Vec::new();
        if last_reclaim.elapsed() >= reclaim_after {
            last_reclaim = tokio::time::Instant::now();
            let claimed: redis::RedisResult<redis::streams::StreamAutoClaimReply> =
                redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg(reclaim_after.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(100)
                    .query_async(c)
                    .await;
            if let Ok(reply) = claimed {
                entries.extend(reply.claimed);
            }
        }
        let options = redis::streams::StreamReadOptions::default()
            .group(GROUP, &consumer)
            .count(READ_COUNT)
            .block(fetch_block.as_millis() as usize);
        let read: redis::RedisResult<redis::streams::StreamReadReply> =
            c.xread_options(&[&stream], &[">"], &options).await;
        match read {
            Ok(reply) => {
                entries.extend(reply.keys.into_iter().flat_map(|k| k.ids));
                busy = !entries.is_empty();
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                let _: redis::RedisResult<()> = c.xgroup_create_mkstream(&stream, GROUP, "0").await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "intake: reading failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        for entry in entries {
            if let Err(e) = take(&producer, &metrics, c, &stream, &rejected, entry).await {
                // Left pending: reclaimed and retried after `reclaim_after`.
                tracing::warn!(error = %e, "intake: could not take an entry; it will be retried");
            }
        }
    }
}

async fn take(
    producer: &Producer,
    metrics: &crate::metrics::Metrics,
    c: &mut crate::queue::RedisConnection,
    stream: &str,
    rejected: &str,
    entry: StreamId,
) -> Result<(), ProducerError> {
    let refusal = match parse_entry(&entry) {
        Ok((request, parent)) => {
            let span = tracing::info_span!(
                "intake",
                otel.name = "process intake",
                otel.kind = "consumer",
                messaging.operation.type = "process",
                messaging.destination.name = "intake",
                trace_id = tracing::field::Empty,
            );
            match crate::telemetry::within(span, parent, producer.start_kyc(request)).await {
                Ok(_) => None,
                Err(ProducerError::Invalid(e)) => Some((e.refusal.as_str(), e.to_string())),
                // The reason starts with `idempotency_mismatch:` and names the fields.
                Err(e @ ProducerError::IdempotencyMismatch { .. }) => {
                    Some(("idempotency_mismatch", e.to_string()))
                }
                Err(other) => return Err(other),
            }
        }
        Err(reason) => Some(("malformed", reason)),
    };
    if let Some((kind, reason)) = refusal {
        metrics
            .intake_rejected
            .with_label_values(&["intake_stream", kind])
            .inc();
        reject(c, rejected, &entry.id, &reason)
            .await
            .map_err(StoreError::from)?;
    }
    redis::pipe()
        .xack(stream, GROUP, &[&entry.id])
        .ignore()
        .xdel(stream, &[&entry.id])
        .ignore()
        .query_async::<()>(c)
        .await
        .map_err(StoreError::from)?;
    Ok(())
}

async fn reject(
    c: &mut crate::queue::RedisConnection,
    rejected: &str,
    entry_id: &str,
    reason: &str,
) -> redis::RedisResult<()> {
    tracing::info!(source = "intake_stream", reason = %reason, entry = %entry_id, "intake entry rejected");
    redis::cmd("XADD")
        .arg(rejected)
        .arg("MAXLEN")
        .arg("~")
        .arg(REJECTED_MAX_LEN)
        .arg("*")
        .arg("entry_id")
        .arg(entry_id)
        .arg("reason")
        .arg(reason)
        .query_async::<String>(c)
        .await
        .map(drop)
}

/// Turns an entry's fields into a start request (not yet validated) and the trace it
/// continues (its `traceparent` field; a malformed one is ignored, as W3C asks). Reasons name
/// fields and what was expected, never a value; a field that is not a start request's is named
/// only as `redact_values` allows (it is the sender's text).
fn parse_entry(entry: &StreamId) -> Result<(StartRequest, Option<TraceParent>), String> {
    let mut object = Map::new();
    let mut parent = None;
    for (name, value) in &entry.map {
        if name == crate::telemetry::TRACEPARENT {
            // Not a start request's field; an unreadable one is ignored like a malformed one.
            parent = redis::from_redis_value_ref::<String>(value)
                .ok()
                .and_then(|text| TraceParent::parse(&text).ok());
            continue;
        }
        if !StartRequest::FIELDS.contains(&name.as_str()) {
            // Whatever its value, serde refuses it below as an unknown field, naming the
            // expected ones.
            object.insert(name.clone(), Value::Null);
            continue;
        }
        let text: String =
            redis::from_redis_value_ref(value).map_err(|_| format!("field {name} is not text"))?;
        let value = if JSON_FIELDS.contains(&name.as_str()) {
            serde_json::from_str(&text).map_err(|_| format!("field {name} is not JSON"))?
        } else {
            Value::from(text)
        };
        object.insert(name.clone(), value);
    }
    object
        .entry("request_id")
        .or_insert_with(|| Value::from(format!("intake-{}", entry.id)));
    let request = serde_json::from_value(Value::Object(object)).map_err(|e| {
        format!(
            "not a start request: {}",
            crate::telemetry::redact_values(&e.to_string())
        )
    })?;
    Ok((request, parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &[u8])]) -> StreamId {
        StreamId {
            id: "1-0".to_owned(),
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
            map: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), redis::Value::BulkString(v.to_vec())))
                .collect(),
        }
    }

    #[test]
    fn an_unknown_field_is_named_with_the_expected_ones_and_no_value() {
        let reason = parse_entry(&entry(&[("vendor_data", b"u-1"), ("vendor_dta", b"Jane")]))
            .expect_err("unknown field");
        assert!(
            reason.starts_with("not a start request: unknown field `vendor_dta`, expected one of `request_id`, `vendor_data`"),
            "{reason}"
        );
        assert!(!reason.contains("Jane"), "{reason}");
        // Not a name: not repeated; a value that is not text does not change that.
        let reason = parse_entry(&entry(&[("vendor_data", b"u-1"), ("Jane Doe", &[0xff])]))
            .expect_err("unknown field");
        assert!(
            reason.starts_with("not a start request: an unknown field, expected one of"),
            "{reason}"
        );
    }
}
