//! Didit webhook signatures: how Didit signs a delivery, and how to check one.
//!
//! Didit sends three HMAC-SHA256 signatures (lower-case hex, key = the destination's secret
//! as UTF-8) and `X-Timestamp` (Unix seconds):
//! - `X-Signature-V2` over a canonical re-serialisation of the body: keys sorted, compact,
//!   non-ASCII unescaped, floats with an integral value shortened (`95.0` → `95`). It survives
//!   middleware that re-encodes JSON, so it is checked first.
//! - `X-Signature` over the raw bytes as sent (Python `json.dumps(sort_keys=True)`, ASCII
//!   escaped); valid only on the exact bytes received.
//! - `X-Signature-Simple` over `"{timestamp}:{session_id}:{status}:{webhook_type}"`. It does
//!   not cover `decision`: a caller trusting only this one must re-fetch the decision.
//!
//! Didit publishes no test vector; the unit tests here pin the algorithm to vectors computed
//! from Didit's documented algorithm (a Unicode body with a whole-valued float among them).
//! An emulator signs with [`sign`], so a change here is seen by both sides.
//!
//! Verifying a delivery in a web handler: pass the raw body bytes as received (before any
//! JSON parsing) and the four headers, then act on [`VerifiedWebhook::payload`]. Answer 2xx
//! within Didit's 5-second delivery timeout, and deduplicate on the payload's `event_id`:
//! Didit retries a delivery answered with a 5xx or 404 (after about 1 and then 4 minutes).
//!
//! ```
//! use std::time::Duration;
//! use didit::webhook::{self, SignatureHeaders, SignatureScheme, WebhookVerifier};
//!
//! let secret = "whsec_example";
//! let body = br#"{"session_id":"11111111-2222-3333-4444-555555555555","status":"Approved","timestamp":1767225600,"webhook_type":"status.updated"}"#;
//! let now = 1_767_225_600;
//! // What Didit would send (an emulator or a test produces it with `sign`).
//! let sent = webhook::sign(secret, body, now).expect("a JSON body");
//!
//! let verifier = WebhookVerifier::new(vec![secret.to_owned().into()], Duration::from_secs(300));
//! let timestamp = now.to_string();
//! let headers = SignatureHeaders {
//!     timestamp: Some(&timestamp),
//!     v2: Some(&sent.v2),
//!     raw: Some(&sent.raw),
//!     simple: Some(&sent.simple),
//! };
//! let delivery = verifier.verify(&headers, body, now).expect("authentic");
//! assert_eq!(delivery.scheme, SignatureScheme::V2);
//! assert_eq!(delivery.payload["status"], "Approved");
//!
//! // A changed status matches none of the three signatures.
//! let forged = br#"{"session_id":"11111111-2222-3333-4444-555555555555","status":"Declined","timestamp":1767225600,"webhook_type":"status.updated"}"#;
//! assert_eq!(
//!     verifier.verify(&headers, forged, now).expect_err("forged"),
//!     webhook::WebhookError::BadSignature,
//! );
//! ```

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// `X-Signature`: HMAC-SHA256 of the raw body bytes, lower-case hex (see
/// [`SignatureScheme::Raw`]). Header names are lower case, as HTTP libraries normalise them.
pub const HEADER_SIGNATURE: &str = "x-signature";
/// `X-Signature-V2`: HMAC-SHA256 of the canonical JSON of the body (see
/// [`SignatureScheme::V2`]).
pub const HEADER_SIGNATURE_V2: &str = "x-signature-v2";
/// `X-Signature-Simple`: HMAC-SHA256 of `"{timestamp}:{session_id}:{status}:{webhook_type}"`
/// (see [`SignatureScheme::Simple`]).
pub const HEADER_SIGNATURE_SIMPLE: &str = "x-signature-simple";
/// `X-Timestamp`: when Didit sent the delivery, in Unix seconds.
pub const HEADER_TIMESTAMP: &str = "x-timestamp";

/// Which header proved the delivery authentic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// `X-Signature-V2`, over the canonical JSON (sorted keys, compact, Unicode unescaped,
    /// whole floats as integers). Survives a re-encoded body; covers all of it.
    V2,
    /// `X-Signature`, over the exact bytes received. Covers all of the body, but only while
    /// nothing re-encoded it.
    Raw,
    /// `X-Signature-Simple`, over the timestamp, session id, status and event type only.
    /// Does not cover `decision`: re-read the decision from the API before trusting it.
    Simple,
}

impl SignatureScheme {
    /// Whether the signature covers the `decision` object in the body.
    pub fn covers_decision(self) -> bool {
        !matches!(self, SignatureScheme::Simple)
    }

    /// A stable name for logs and metric labels: `v2`, `v1` (the raw-body signature, Didit's
    /// first) or `simple`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureScheme::V2 => "v2",
            SignatureScheme::Raw => "v1",
            SignatureScheme::Simple => "simple",
        }
    }
}

/// Why a delivery was refused (or, from [`sign`], could not be signed). A receiver answers
/// each with a 4xx; [`WebhookError::result_label`] groups them for a metric.
///
/// Didit does not retry a 401 or 400, so a refused delivery is lost unless replayed from
/// Didit's console: log and count refusals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// A required header is absent: `X-Timestamp`, or every signature header (then
    /// `X-Signature-V2` is named).
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// `X-Timestamp` is not an integer.
    #[error("X-Timestamp is not Unix seconds")]
    BadTimestamp,
    /// `X-Timestamp` is further from the receiver's clock than the tolerance, in either
    /// direction: a replay, or a clock to fix.
    #[error("X-Timestamp is {skew_s} s away from our clock (tolerance {tolerance_s} s)")]
    Stale {
        /// The receiver's clock minus `X-Timestamp`, in seconds (negative: from the future).
        skew_s: i64,
        /// The tolerance the verifier was built with, in seconds.
        tolerance_s: u64,
    },
    /// The body is not JSON, or not a JSON object. Holds the parser's explanation.
    #[error("body is not a JSON object: {0}")]
    Malformed(String),
    /// No signature header matches the body under any configured secret (or it is not hex).
    #[error("no signature header matches any configured secret")]
    BadSignature,
    /// The body's signed `timestamp` differs from `X-Timestamp`: an old signed body sent
    /// again with a fresh header.
    #[error("the body's timestamp differs from X-Timestamp")]
    TimestampMismatch,
}

impl WebhookError {
    /// A coarse reason for a metric label: `bad_signature` (missing header or no match),
    /// `stale` (timestamp unreadable, too old or mismatched) or `malformed` (body).
    pub fn result_label(&self) -> &'static str {
        match self {
            WebhookError::MissingHeader(_) | WebhookError::BadSignature => "bad_signature",
            WebhookError::BadTimestamp
            | WebhookError::Stale { .. }
            | WebhookError::TimestampMismatch => "stale",
            WebhookError::Malformed(_) => "malformed",
        }
    }
}

/// The signature headers of one delivery, as received (any may be absent). Borrowed from
/// the request, whatever the web framework; header names are [`HEADER_TIMESTAMP`] and the
/// other `HEADER_*` constants.
#[derive(Debug, Clone, Default)]
pub struct SignatureHeaders<'a> {
    /// `X-Timestamp`: Unix seconds when Didit sent the delivery. Required.
    pub timestamp: Option<&'a str>,
    /// `X-Signature-V2`, checked first.
    pub v2: Option<&'a str>,
    /// `X-Signature`, checked when V2 is absent or does not match.
    pub raw: Option<&'a str>,
    /// `X-Signature-Simple`, the last resort.
    pub simple: Option<&'a str>,
}

/// A delivery that passed verification.
#[derive(Debug, Clone)]
pub struct VerifiedWebhook {
    /// The signature that matched. When it is [`SignatureScheme::Simple`], the body's
    /// `decision` is not authenticated.
    pub scheme: SignatureScheme,
    /// `X-Timestamp`, in Unix seconds.
    pub timestamp: i64,
    /// The parsed body: `event_id`, `webhook_type` (`status.updated`, `data.updated`, …),
    /// `session_id`, `status`, `vendor_data`, `metadata`, and for final statuses `decision`
    /// (the same object as the decision endpoint's).
    pub payload: Value,
}

/// Checks deliveries against the current secret and those kept during a rotation.
#[derive(Debug, Clone)]
pub struct WebhookVerifier {
    secrets: Vec<SecretString>,
    tolerance: Duration,
}

impl WebhookVerifier {
    /// A verifier accepting a signature made with any of `secrets` (the destination's
    /// `secret_shared_key`, used as its UTF-8 bytes; list the previous one too while
    /// rotating), and an `X-Timestamp` at most `tolerance` from the receiver's clock
    /// (Didit recommends 300 s).
    pub fn new(secrets: Vec<SecretString>, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }

    /// Verifies one delivery received at `now` (Unix seconds).
    ///
    /// Order: timestamp first (cheap, and a stale replay is refused even with a valid
    /// signature), then V2, raw, Simple, each against every secret, each compared in
    /// constant time.
    pub fn verify(
        &self,
        headers: &SignatureHeaders<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<VerifiedWebhook, WebhookError> {
        let timestamp_text = headers
            .timestamp
            .ok_or(WebhookError::MissingHeader("X-Timestamp"))?;
        let timestamp: i64 = timestamp_text
            .trim()
            .parse()
            .map_err(|_| WebhookError::BadTimestamp)?;
        let skew = now.saturating_sub(timestamp);
        let tolerance_s = self.tolerance.as_secs();
        if skew.unsigned_abs() > tolerance_s {
            return Err(WebhookError::Stale {
                skew_s: skew,
                tolerance_s,
            });
        }
        if headers.v2.is_none() && headers.raw.is_none() && headers.simple.is_none() {
            return Err(WebhookError::MissingHeader("X-Signature-V2"));
        }
        let payload: Value =
            serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
        if !payload.is_object() {
            return Err(WebhookError::Malformed("expected an object".to_owned()));
        }
        // X-Timestamp is not covered by V2 or the raw signature; the body's `timestamp` is.
        // Requiring them equal stops an old signed body being replayed with a fresh header.
        if let Some(signed) = payload.get("timestamp") {
            if signed.as_i64() != Some(timestamp) {
                return Err(WebhookError::TimestampMismatch);
            }
        }

        let scheme = if let Some(sig) = headers.v2 {
            let canonical = canonical_json(&payload);
            self.any_secret_signs(canonical.as_bytes(), sig)
                .then_some(SignatureScheme::V2)
        } else {
            None
        }
        .or_else(|| {
            headers
                .raw
                .filter(|sig| self.any_secret_signs(body, sig))
                .map(|_| SignatureScheme::Raw)
        })
        .or_else(|| {
            let sig = headers.simple?;
            let message = simple_message(timestamp_text.trim(), &payload);
            self.any_secret_signs(message.as_bytes(), sig)
                .then_some(SignatureScheme::Simple)
        })
        .ok_or(WebhookError::BadSignature)?;

        Ok(VerifiedWebhook {
            scheme,
            timestamp,
            payload,
        })
    }

    fn any_secret_signs(&self, message: &[u8], signature_hex: &str) -> bool {
        let Ok(expected) = hex::decode(signature_hex.trim()) else {
            return false;
        };
        // Every secret is tried even after a match, so timing does not reveal which one.
        self.secrets.iter().fold(false, |found, secret| {
            let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(message);
            mac.verify_slice(&expected).is_ok() | found
        })
    }
}

/// The three signatures Didit attaches to a delivery of `body` at `timestamp`, each
/// lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// The value of `X-Signature-V2`.
    pub v2: String,
    /// The value of `X-Signature`.
    pub raw: String,
    /// The value of `X-Signature-Simple`.
    pub simple: String,
}

/// Signs a delivery as Didit does: for emulators and for tests of a receiver. `body` must be
/// the exact bytes that will be sent (Didit's own are [`didit_wire_body`]), and its
/// `timestamp` field, when present, should equal `timestamp`, which goes in `X-Timestamp`.
/// Fails only when `body` is not JSON.
pub fn sign(secret: &str, body: &[u8], timestamp: i64) -> Result<Signatures, WebhookError> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    Ok(Signatures {
        v2: hmac_hex(secret, canonical_json(&payload).as_bytes()),
        raw: hmac_hex(secret, body),
        simple: hmac_hex(
            secret,
            simple_message(&timestamp.to_string(), &payload).as_bytes(),
        ),
    })
}

/// Serialises a payload the way Didit's sender does before signing the raw body: sorted
/// keys, compact, non-ASCII escaped as `\uXXXX` (Python's `ensure_ascii=True`).
pub fn didit_wire_body(payload: &Value) -> String {
    let mut out = String::new();
    for c in canonical_value_string(payload).chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The canonical form signed by `X-Signature-V2`: keys sorted, no whitespace, non-ASCII
/// characters unescaped, and floats with an integral value written as integers (`95.0` →
/// `95`), as Python's `json.dumps(sort_keys=True, separators=(",", ":"),
/// ensure_ascii=False)` does after Didit's float shortening.
///
/// ```
/// let payload = serde_json::json!({"score": 95.0, "name": "José", "a": 1});
/// assert_eq!(didit::webhook::canonical_json(&payload), r#"{"a":1,"name":"José","score":95}"#);
/// ```
pub fn canonical_json(payload: &Value) -> String {
    canonical_value_string(&shorten_floats(payload))
}

fn canonical_value_string(value: &Value) -> String {
    // serde_json's Map is a BTreeMap here (the `preserve_order` feature is off in this
    // crate's graph; the unit tests fail if it is turned on), so keys come out sorted.
    value.to_string()
}

/// Rewrites floats with an integral value as integers, recursively (Python's canonical form).
fn shorten_floats(value: &Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(shorten_floats).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), shorten_floats(v)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

fn simple_message(timestamp: &str, payload: &Value) -> String {
    let field = |name: &str| {
        payload
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    format!(
        "{timestamp}:{}:{}:{}",
        field("session_id"),
        field("status"),
        field("webhook_type")
    )
}

fn hmac_hex(secret: &str, message: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "whsec_test_emulator_secret_0123456789abcdef";
    const ASCII_BODY: &str = r#"{"created_at":1767225600,"session_id":"11111111-2222-3333-4444-555555555555","status":"In Review","timestamp":1767225600,"vendor_data":"user-123","webhook_type":"status.updated"}"#;
    const UNICODE_BODY: &str = r#"{"application_id":"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee","created_at":1767225600,"decision":{"face_matches":[{"node_id":"feature_face_match","score":89.92,"status":"Approved","warnings":[]}],"id_verifications":[{"first_name":"Jos\u00e9","last_name":"M\u00fcller","node_id":"feature_ocr","status":"Approved","warnings":[]}],"liveness_checks":[{"method":"PASSIVE","node_id":"feature_liveness","score":95.0,"status":"Approved","warnings":[]}],"session_id":"11111111-2222-3333-4444-555555555555","status":"Approved"},"environment":"sandbox","event_id":"9b2f6c1e-1111-4a2b-9c3d-000000000001","metadata":{"account_id":"ABC123"},"session_id":"11111111-2222-3333-4444-555555555555","status":"Approved","timestamp":1767225600,"vendor_data":"user-123","webhook_type":"status.updated","workflow_id":"33333333-4444-5555-6666-777777777777","workflow_version":3}"#;
    const NOW: i64 = 1_767_225_600;

    fn verifier(secrets: &[&str]) -> WebhookVerifier {
        WebhookVerifier::new(
            secrets
                .iter()
                .map(|s| SecretString::from(s.to_string()))
                .collect(),
            Duration::from_secs(300),
        )
    }

    #[test]
    fn ascii_vector_from_the_reference_matches() {
        let sigs = sign(SECRET, ASCII_BODY.as_bytes(), NOW).expect("sign");
        let expected = "4b14823e615a0f3499302c0da2a1065c78155f450edd5663859acc646da07e80";
        assert_eq!(sigs.raw, expected);
        assert_eq!(sigs.v2, expected);
    }

    #[test]
    fn unicode_and_float_vector_from_the_reference_matches() {
        let sigs = sign(SECRET, UNICODE_BODY.as_bytes(), NOW).expect("sign");
        assert_eq!(
            sigs.raw,
            "a139b61fd48104ca679da33d209f1ca29e378600b61ecd90950b55444b4f73a4"
        );
        assert_eq!(
            sigs.v2,
            "972e126dd2e7d28cea3bbd83b3936f4620544057850d5111479eb99142781f03"
        );
        assert_eq!(
            sigs.simple,
            "8a7c11532e41f66e1b950335437b183c6f94586d3ba17145366a1a0c4f91f987"
        );
    }

    #[test]
    fn the_wire_body_reproduces_didits_raw_bytes() {
        let payload: Value = serde_json::from_str(UNICODE_BODY).expect("json");
        // serde_json keeps 95.0 as a float, so the raw form prints it as Python does.
        assert_eq!(didit_wire_body(&payload), UNICODE_BODY);
    }

    fn headers<'a>(ts: &'a str, s: &'a Signatures) -> SignatureHeaders<'a> {
        SignatureHeaders {
            timestamp: Some(ts),
            v2: Some(&s.v2),
            raw: Some(&s.raw),
            simple: Some(&s.simple),
        }
    }

    #[test]
    fn v2_is_preferred_and_survives_re_encoding() {
        let sigs = sign(SECRET, UNICODE_BODY.as_bytes(), NOW).expect("sign");
        let reencoded =
            serde_json::to_vec_pretty(&serde_json::from_str::<Value>(UNICODE_BODY).expect("json"))
                .expect("encode");
        let ts = NOW.to_string();
        let ok = verifier(&[SECRET])
            .verify(&headers(&ts, &sigs), &reencoded, NOW)
            .expect("valid");
        assert_eq!(ok.scheme, SignatureScheme::V2);
        assert!(ok.scheme.covers_decision());
    }

    #[test]
    fn raw_signature_is_the_fallback_and_simple_the_last_resort() {
        let sigs = sign(SECRET, UNICODE_BODY.as_bytes(), NOW).expect("sign");
        let ts = NOW.to_string();
        let mut h = headers(&ts, &sigs);
        h.v2 = Some("00");
        let ok = verifier(&[SECRET])
            .verify(&h, UNICODE_BODY.as_bytes(), NOW)
            .expect("raw");
        assert_eq!(ok.scheme, SignatureScheme::Raw);
        h.raw = None;
        let ok = verifier(&[SECRET])
            .verify(&h, UNICODE_BODY.as_bytes(), NOW)
            .expect("simple");
        assert_eq!(ok.scheme, SignatureScheme::Simple);
        assert!(!ok.scheme.covers_decision());
    }

    #[test]
    fn a_previous_secret_is_accepted_during_rotation() {
        let sigs = sign("old-secret", ASCII_BODY.as_bytes(), NOW).expect("sign");
        let ts = NOW.to_string();
        verifier(&["new-secret", "old-secret"])
            .verify(&headers(&ts, &sigs), ASCII_BODY.as_bytes(), NOW)
            .expect("old secret still valid");
        let err = verifier(&["new-secret"])
            .verify(&headers(&ts, &sigs), ASCII_BODY.as_bytes(), NOW)
            .expect_err("old secret retired");
        assert_eq!(err, WebhookError::BadSignature);
    }

    #[test]
    fn an_old_signed_body_with_a_fresh_header_is_refused() {
        let sigs = sign(SECRET, ASCII_BODY.as_bytes(), NOW).expect("sign");
        let later = (NOW + 3600).to_string();
        let err = verifier(&[SECRET])
            .verify(&headers(&later, &sigs), ASCII_BODY.as_bytes(), NOW + 3600)
            .expect_err("replay");
        assert_eq!(err, WebhookError::TimestampMismatch);
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let sigs = sign(SECRET, ASCII_BODY.as_bytes(), NOW).expect("sign");
        let ts = NOW.to_string();
        let tampered = ASCII_BODY.replace("In Review", "Approved");
        let mut h = headers(&ts, &sigs);
        h.simple = None;
        let err = verifier(&[SECRET])
            .verify(&h, tampered.as_bytes(), NOW)
            .expect_err("tampered");
        assert_eq!(err, WebhookError::BadSignature);
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_stale_both_ways() {
        let sigs = sign(SECRET, ASCII_BODY.as_bytes(), NOW).expect("sign");
        let ts = NOW.to_string();
        let v = verifier(&[SECRET]);
        v.verify(&headers(&ts, &sigs), ASCII_BODY.as_bytes(), NOW + 300)
            .expect("edge ok");
        let late = v
            .verify(&headers(&ts, &sigs), ASCII_BODY.as_bytes(), NOW + 301)
            .expect_err("late");
        assert!(matches!(late, WebhookError::Stale { skew_s: 301, .. }));
        let early = v
            .verify(&headers(&ts, &sigs), ASCII_BODY.as_bytes(), NOW - 301)
            .expect_err("future");
        assert!(matches!(early, WebhookError::Stale { skew_s: -301, .. }));
    }

    #[test]
    fn missing_or_garbage_headers_and_bodies_get_specific_errors() {
        let v = verifier(&[SECRET]);
        let none = SignatureHeaders::default();
        assert_eq!(
            v.verify(&none, b"{}", NOW).expect_err("no ts"),
            WebhookError::MissingHeader("X-Timestamp")
        );
        let ts = NOW.to_string();
        let only_ts = SignatureHeaders {
            timestamp: Some(&ts),
            ..Default::default()
        };
        assert!(matches!(
            v.verify(&only_ts, b"{}", NOW),
            Err(WebhookError::MissingHeader(_))
        ));
        let bad_ts = SignatureHeaders {
            timestamp: Some("yesterday"),
            v2: Some("ab"),
            ..Default::default()
        };
        assert_eq!(
            v.verify(&bad_ts, b"{}", NOW).expect_err("ts"),
            WebhookError::BadTimestamp
        );
        let sig = SignatureHeaders {
            timestamp: Some(&ts),
            v2: Some("not-hex"),
            ..Default::default()
        };
        assert!(matches!(
            v.verify(&sig, b"{not json", NOW),
            Err(WebhookError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&sig, b"[1,2]", NOW),
            Err(WebhookError::Malformed(_))
        ));
        assert_eq!(
            v.verify(&sig, b"{}", NOW).expect_err("hex"),
            WebhookError::BadSignature
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            (-1.0e6f64..1.0e6).prop_map(Value::from),
            (-1000i32..1000).prop_map(|i| Value::from(f64::from(i))),
            "[a-zA-Zéü日本 ]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_é]{1,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Writes an object with its keys in reverse order and generous whitespace.
    fn scramble(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let fields: Vec<String> = map
                    .iter()
                    .rev()
                    .map(|(k, v)| format!("\n  {} :  {}", Value::from(k.as_str()), scramble(v)))
                    .collect();
                format!("{{ {} }}", fields.join(" ,"))
            }
            Value::Array(items) => format!(
                "[ {} ]",
                items.iter().map(scramble).collect::<Vec<_>>().join(" , ")
            ),
            other => other.to_string(),
        }
    }

    proptest! {
        #[test]
        fn canonical_form_is_stable_under_key_order_and_whitespace(value in arb_json()) {
            let reparsed: Value = serde_json::from_str(&scramble(&value)).expect("scrambled json parses");
            prop_assert_eq!(canonical_json(&reparsed), canonical_json(&value));
        }

        #[test]
        fn whatever_we_sign_we_verify(value in arb_json(), ts in 1_700_000_000i64..1_900_000_000) {
            let body = didit_wire_body(&serde_json::json!({"session_id": "s", "status": "Approved", "data": value}));
            let sigs = sign(SECRET, body.as_bytes(), ts).expect("sign");
            let tss = ts.to_string();
            let ok = verifier(&[SECRET]).verify(&headers(&tss, &sigs), body.as_bytes(), ts).expect("verify");
            prop_assert_eq!(ok.scheme, SignatureScheme::V2);
        }
    }
}
