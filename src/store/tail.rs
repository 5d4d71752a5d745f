//! Reading the outcome stream back, for operators and tests (`kyc-worker events tail`).
//!
//! The fleet only appends to the stream; consumers read it with their own groups. An operator
//! wants to look without joining a group (which would hold entries pending for nobody), so
//! these reads are plain `XRANGE`/`XREVRANGE`/`XREAD`. The stream may be split into
//! partitions; every read here names one partition, so no command spans two hash slots, and
//! the caller merges them by entry id.

use redis::Value;

use super::{Store, StoreError, StoreResult};

/// One outcome event as stored: its stream entry id and its fields, in published order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The stream entry id (`<ms>-<seq>`): when the event was published.
    pub id: String,
    /// The stream (partition) it was read from.
    pub stream: String,
    /// `event_id`, `type`, `request_id`, … as the fleet wrote them.
    pub fields: Vec<(String, String)>,
}

impl StoredEvent {
    /// The value of one field, if present.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Milliseconds since the epoch at publication, from the entry id.
    pub fn published_ms(&self) -> u64 {
        entry_ms(&self.id).unwrap_or(0)
    }
}

/// The milliseconds part of a stream entry id (`<ms>` or `<ms>-<seq>`), if it is one.
pub fn entry_ms(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    seq.parse::<u64>().ok()?;
    ms.parse().ok()
}

/// Orders events of several partitions as one stream: by publication time, then sequence.
pub fn merge(mut events: Vec<StoredEvent>) -> Vec<StoredEvent> {
    events.sort_by_key(|e| {
        let (ms, seq) = e.id.split_once('-').unwrap_or((&e.id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    });
    events
}

impl Store {
    /// Up to `count` events of `stream` from entry id `from` on (inclusive), oldest first.
    pub async fn events_from(
        &self,
        stream: &str,
        from: &str,
        count: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(from)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        entries(stream, reply)
    }

    /// The last `count` events of `stream`, oldest first.
    pub async fn last_events(&self, stream: &str, count: usize) -> StoreResult<Vec<StoredEvent>> {
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        let mut events = entries(stream, reply)?;
        events.reverse();
        Ok(events)
    }

    /// Events of `stream` after entry id `after`, waiting up to `block_ms` for the first.
    pub async fn events_after(
        &self,
        stream: &str,
        after: &str,
        block_ms: u64,
    ) -> StoreResult<Vec<StoredEvent>> {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(stream)
            .arg(after)
            .query_async(&mut self.conn.clone())
            .await?;
        match reply {
            Value::Nil => Ok(Vec::new()),
            Value::Array(streams) => {
                let mut events = Vec::new();
                for s in streams {
                    let Value::Array(mut pair) = s else {
                        return Err(malformed("XREAD reply"));
                    };
                    let Some(list) = pair.pop() else {
                        return Err(malformed("XREAD reply"));
                    };
                    events.extend(entries(stream, list)?);
                }
                Ok(events)
            }
            _ => Err(malformed("XREAD reply")),
        }
    }
}

/// A reply of a shape Redis never sends for these commands (or an entry the fleet never
/// writes, with an odd number of fields or non-text values).
fn malformed(part: &'static str) -> StoreError {
    StoreError::Corrupt {
        record: "outcome stream",
        field: part,
    }
}

/// Decodes `[[id, [field, value, …]], …]`.
fn entries(stream: &str, reply: Value) -> StoreResult<Vec<StoredEvent>> {
    let Value::Array(items) = reply else {
        return Err(malformed("range reply"));
    };
    items
        .into_iter()
        .map(|item| {
            let (id, flat): (String, Vec<String>) =
                redis::from_redis_value(item).map_err(|_| malformed("entry"))?;
            let fields = flat
                .chunks_exact(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect();
            Ok(StoredEvent {
                id,
                stream: stream.to_owned(),
                fields,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> StoredEvent {
        StoredEvent {
            id: id.into(),
            stream: "kyc:events".into(),
            fields: vec![("type".into(), "kyc.session.decided".into())],
        }
    }

    #[test]
    fn partitions_merge_by_time_then_sequence() {
        let merged = merge(vec![
            event("20-0"),
            event("3-1"),
            event("3-0"),
            event("100-0"),
        ]);
        let ids: Vec<&str> = merged.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["3-0", "3-1", "20-0", "100-0"]);
    }

    #[test]
    fn entry_ids_give_their_milliseconds() {
        assert_eq!(entry_ms("1700000000000-3"), Some(1_700_000_000_000));
        assert_eq!(entry_ms("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(entry_ms("12-x"), None);
        assert_eq!(entry_ms("abc"), None);
        assert_eq!(event("5-0").field("type"), Some("kyc.session.decided"));
        assert_eq!(event("5-0").field("status"), None);
    }

    #[test]
    fn a_range_reply_keeps_fields_in_order() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"5-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"type".to_vec()),
                Value::BulkString(b"kyc.session.created".to_vec()),
                Value::BulkString(b"request_id".to_vec()),
                Value::BulkString(b"r1".to_vec()),
            ]),
        ])]);
        let events = entries("kyc:events", reply).expect("decoded");
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].fields,
            [
                ("type".to_owned(), "kyc.session.created".to_owned()),
                ("request_id".to_owned(), "r1".to_owned())
            ]
        );
        assert!(entries("kyc:events", Value::Int(3)).is_err());
    }
}
