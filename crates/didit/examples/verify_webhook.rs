//! Verifies a Didit webhook delivery with `didit::webhook`, self-contained: it signs a sample
//! body as Didit would (`didit::webhook::sign`), then checks it the way an HTTP handler does,
//! once per signature header, and refuses a tampered copy.
//!
//! ```text
//! cargo run -p didit --example verify_webhook
//! ```

use std::{
    collections::HashMap,
    error::Error,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use didit::webhook::{
    self, SignatureHeaders, WebhookVerifier, HEADER_SIGNATURE, HEADER_SIGNATURE_SIMPLE,
    HEADER_SIGNATURE_V2, HEADER_TIMESTAMP,
};
use serde_json::json;

/// The destination's `secret_shared_key`, as `POST /v3/webhook/destinations/` returned it.
const SECRET: &str = "whsec_example_secret_do_not_use";

fn main() -> Result<(), Box<dyn Error>> {
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;

    // A `status.updated` delivery as Didit serialises it: sorted keys, compact, non-ASCII
    // escaped; the body's `timestamp` equals `X-Timestamp`.
    let payload = json!({
        "event_id": "9b2f6c1e-1111-4a2b-9c3d-000000000001",
        "webhook_type": "status.updated",
        "timestamp": now,
        "created_at": now,
        "session_id": "11111111-2222-3333-4444-555555555555",
        "status": "Approved",
        "vendor_data": "example-user-1",
        "decision": {
            "session_id": "11111111-2222-3333-4444-555555555555",
            "status": "Approved",
            "liveness_checks": [{"node_id": "feature_liveness", "status": "Approved", "score": 95.0}],
            "id_verifications": [{"node_id": "feature_ocr", "status": "Approved", "first_name": "José"}]
        }
    });
    let body = webhook::didit_wire_body(&payload);
    let signatures = webhook::sign(SECRET, body.as_bytes(), now)?;

    // The request's headers, as a web framework hands them over (names lower-cased).
    let timestamp = now.to_string();
    let request_headers: HashMap<&str, &str> = HashMap::from([
        (HEADER_TIMESTAMP, timestamp.as_str()),
        (HEADER_SIGNATURE_V2, signatures.v2.as_str()),
        (HEADER_SIGNATURE, signatures.raw.as_str()),
        (HEADER_SIGNATURE_SIMPLE, signatures.simple.as_str()),
    ]);
    let all = SignatureHeaders {
        timestamp: request_headers.get(HEADER_TIMESTAMP).copied(),
        v2: request_headers.get(HEADER_SIGNATURE_V2).copied(),
        raw: request_headers.get(HEADER_SIGNATURE).copied(),
        simple: request_headers.get(HEADER_SIGNATURE_SIMPLE).copied(),
    };

    // The current secret; during a rotation, list the previous one as well.
    let verifier = WebhookVerifier::new(vec![SECRET.to_owned().into()], Duration::from_secs(300));

    // Each signature header on its own: V2 is preferred, the raw-body signature is next,
    // Simple is the last resort.
    let only = [
        (
            "X-Signature-V2",
            SignatureHeaders {
                raw: None,
                simple: None,
                ..all.clone()
            },
        ),
        (
            "X-Signature",
            SignatureHeaders {
                v2: None,
                simple: None,
                ..all.clone()
            },
        ),
        (
            "X-Signature-Simple",
            SignatureHeaders {
                v2: None,
                raw: None,
                ..all.clone()
            },
        ),
    ];
    for (header, headers) in only {
        let delivery = verifier.verify(&headers, body.as_bytes(), now)?;
        report(
            &format!("only {header}"),
            &format!(
                "accepted as {} (decision covered: {}); session {} is {}",
                delivery.scheme.as_str(),
                delivery.scheme.covers_decision(),
                delivery.payload["session_id"],
                delivery.payload["status"],
            ),
        );
    }

    // A body re-encoded by middleware (pretty-printed, Unicode unescaped) still passes V2.
    let reencoded = serde_json::to_string_pretty(&payload)?;
    let delivery = verifier.verify(&all, reencoded.as_bytes(), now)?;
    report(
        "re-encoded body",
        &format!("accepted as {}", delivery.scheme.as_str()),
    );

    // A tampered decision: V2 and the raw signature fail. Simple still matches, since it
    // covers only the timestamp, session, status and event type, so a receiver that accepts
    // Simple must re-read the decision from the API before trusting it.
    let tampered = body.replace("\"score\":95.0", "\"score\":99.0");
    let delivery = verifier.verify(&all, tampered.as_bytes(), now)?;
    report(
        "tampered decision",
        &format!(
            "accepted as {} only (decision covered: {}): re-read the decision",
            delivery.scheme.as_str(),
            delivery.scheme.covers_decision()
        ),
    );
    let without_simple = SignatureHeaders {
        simple: None,
        ..all.clone()
    };
    match verifier.verify(&without_simple, tampered.as_bytes(), now) {
        Ok(_) => return Err("a tampered body passed V2 or the raw signature".into()),
        Err(refused) => report(
            "tampered, no Simple",
            &format!("refused: {refused} ({})", refused.result_label()),
        ),
    }

    // A replay outside the tolerance is refused before any signature is checked.
    match verifier.verify(&all, body.as_bytes(), now + 3600) {
        Ok(_) => return Err("a delivery an hour old passed".into()),
        Err(refused) => report("an hour later", &format!("refused: {refused}")),
    }
    Ok(())
}

/// One line of the walkthrough: the case, then what the verifier said.
fn report(case: &str, outcome: &str) {
    println!("{case:<24} {outcome}");
}
