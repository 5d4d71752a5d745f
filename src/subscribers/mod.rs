//! Outcome events sent to subscriber services over HTTP, as Standard Webhooks.
//!
//! Most services would rather receive an HTTP call than read a Redis stream. Every delivery
//! is signed to the Standard Webhooks specification, so a consumer verifies it with an
//! existing library in its own language, and the scheme's `webhook-id` (our stable
//! `event_id`) lets it drop the duplicates at-least-once delivery brings.
//!
//! - `guard`: which addresses a subscriber URL may reach, checked at connect time (the
//!   policy and the signing itself are pure: `domain::is_forbidden`, `domain::SigningKey`).
//! - [`SubscriberClient`]: one subscriber's HTTP client: no redirects, a timeout, at most
//!   64 KiB of the answer read and none of it logged.
//! - [`payload`]: the JSON body a subscriber receives for one event.
//!
//! Queuing, retries and the circuit are the pipeline's (`jobs::deliver`); the state kept in
//! Redis is the store's.

mod guard;

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::{json, Value};

use crate::{
    domain::{check_literal, rfc3339, signature_header, Refused},
    settings::Subscriber,
};

/// The most of a subscriber's answer that is read (then dropped unread).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx: delivered.
    Delivered(u16),
    /// 410 Gone: the subscriber asks not to be called again.
    Gone,
    /// Anything else: the status or the transport problem, without the answer's body.
    Failed(String),
    /// The target resolves to an address the policy forbids.
    Refused(String),
}

/// The HTTP side of one subscriber.
#[derive(Debug, Clone)]
pub struct SubscriberClient {
    pub subscriber: Arc<Subscriber>,
    http: reqwest::Client,
}

impl SubscriberClient {
    pub fn new(subscriber: Subscriber, timeout: Duration) -> reqwest::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("kyc-worker/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(8);
        if !subscriber.allow_private {
            builder = builder.dns_resolver(guard::GuardedResolver::shared());
        }
        Ok(Self {
            subscriber: Arc::new(subscriber),
            http: builder.build()?,
        })
    }

    /// Sends one delivery, signed now with every active key. `webhook_id` must be stable
    /// across retries (receivers dedupe on it); `timestamp` is this attempt's, in Unix
    /// seconds, so a retry hours after the event still passes a receiver's tolerance.
    pub async fn send(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> Answer {
        let s = &self.subscriber;
        if !s.allow_private {
            if let Err(refused) = check_literal(&s.url) {
                return Answer::Refused(refused.0);
            }
        }
        let signature = signature_header(&s.keys, webhook_id, timestamp, body);
        let sent = self
            .http
            .post(s.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_vec())
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return transport_failure(&e),
        };
        let status = response.status().as_u16();
        // Read a bounded part so the connection can be reused; never keep or log it.
        let mut read = 0usize;
        while read < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        match status {
            200..=299 => Answer::Delivered(status),
            410 => Answer::Gone,
            _ => Answer::Failed(format!("HTTP {status}")),
        }
    }
}

/// Names a transport failure by kind (the URL stays out: it may carry a token).
fn transport_failure(e: &reqwest::Error) -> Answer {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Answer::Refused(refused.0.clone());
        }
        source = cause.source();
    }
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    Answer::Failed(kind.to_owned())
}

/// The JSON body of one event: `type`, `timestamp` (the event's time, RFC 3339) and `data`
/// (the event's fields with `event_id`; `data.data` is the event's own `data` object).
/// `fields` are the stream entry's; `event_ms` is when the event was published.
pub fn payload(fields: &HashMap<String, String>, event_ms: u64) -> Result<Value, String> {
    let text = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
    let kind = text("type");
    if kind.is_empty() || text("event_id").is_empty() {
        return Err("an event without type or event_id".into());
    }
    // Empty on the stream means "none": null in JSON.
    let optional = |name: &str| match text(name) {
        "" => Value::Null,
        v => Value::from(v),
    };
    let data: Value = match text("data") {
        "" => json!({}),
        raw => serde_json::from_str(raw).map_err(|_| "the event's data is not JSON")?,
    };
    Ok(json!({
        "type": kind,
        "timestamp": rfc3339(event_ms),
        "data": {
            "event_id": text("event_id"),
            "session_id": optional("session_id"),
            "request_id": text("request_id"),
            "vendor_data": text("vendor_data"),
            "status": text("status"),
            "previous_status": optional("previous_status"),
            "decided_by": text("decided_by"),
            "data": data,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_type_event_time_and_the_event_fields() {
        let fields: HashMap<String, String> = [
            ("event_id", "e-1"),
            ("type", "kyc.session.decided"),
            ("session_id", "s-1"),
            ("request_id", "r-1"),
            ("vendor_data", "u-1"),
            ("status", "Approved"),
            ("previous_status", ""),
            ("decided_by", "didit"),
            ("data", r#"{"score":0.9}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let body = payload(&fields, 1_614_265_330_123).expect("body");
        assert_eq!(body["type"], "kyc.session.decided");
        assert_eq!(body["timestamp"], "2021-02-25T15:02:10.123Z");
        assert_eq!(body["data"]["event_id"], "e-1");
        assert_eq!(body["data"]["previous_status"], Value::Null);
        assert_eq!(body["data"]["data"]["score"], 0.9);
        let mut broken = fields.clone();
        broken.remove("event_id");
        assert!(payload(&broken, 0).is_err());
    }
}
