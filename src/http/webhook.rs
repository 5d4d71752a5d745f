//! `POST /webhooks/didit`: verify, dedupe, and ask for the session's decision step now.
//!
//! Answers fast (Didit gives up after 5 s): the decision itself is read by a PollDecision
//! job moved to the front of the session's slot. Status codes follow Didit's retry policy:
//! Didit retries on 5xx and 404, not on other 4xx, so a refused signature is 401 (and counted)
//! and an unknown session is 200 (retrying cannot help).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::{HeaderMap, StatusCode},
};
use uuid::Uuid;

use super::AppState;
use crate::{
    domain::{lifecycle, RequestId, SessionStatus},
    jobs::PollDecision,
    jobs::REQUEST_ID_METADATA,
};
use didit::webhook::{
    SignatureHeaders, HEADER_SIGNATURE, HEADER_SIGNATURE_SIMPLE, HEADER_SIGNATURE_V2,
    HEADER_TIMESTAMP,
};

pub async fn didit_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (StatusCode, &'static str) {
    let (status, result) = match body {
        Ok(body) => receive(&state, &headers, &body).await,
        // Over the body limit (413) or unreadable: refused before any parsing, still counted.
        Err(rejection) => {
            let status = rejection.status();
            let result = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "malformed"
            };
            tracing::warn!(result, error = %rejection, "webhook refused");
            (status, result)
        }
    };
    state.metrics.webhooks.with_label_values(&[result]).inc();
    (status, result)
}

/// Handles one delivery; the second value is the `kyc_webhooks_total{result}` label, also
/// the response body.
async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> (StatusCode, &'static str) {
    // Not entered until the session is known: its parent is the session's trace.
    let span = tracing::info_span!(
        "webhook",
        otel.name = "POST /webhooks/didit",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/webhooks/didit",
        trace_id = tracing::field::Empty,
    );
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = SignatureHeaders {
        timestamp: header(HEADER_TIMESTAMP),
        v2: header(HEADER_SIGNATURE_V2),
        raw: header(HEADER_SIGNATURE),
        simple: header(HEADER_SIGNATURE_SIMPLE),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let verified = match state.verifier.verify(&signature, body, now) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(result = e.result_label(), error = %e, "webhook refused");
            let status = if e.result_label() == "malformed" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNAUTHORIZED
            };
            return (status, e.result_label());
        }
    };
    // Proof that Didit reaches this fleet: the misconfiguration alert and warning watch it.
    state.metrics.webhook_last_received.set(now as f64);
    let payload = &verified.payload;
    let text = |k: &str| {
        payload
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let Ok(session_id) = Uuid::parse_str(&text("session_id")) else {
        tracing::warn!(result = "malformed", "webhook without a session id");
        return (StatusCode::BAD_REQUEST, "malformed");
    };
    let status = text("status");
    let status_kind = SessionStatus::parse(&status);
    // Only a result (or a resubmission, which restarts the session's clock) needs the
    // decision now; progress like "In Progress" is left to the schedule, so a session costs
    // one decision read.
    if !status_kind.is_final() && status_kind != SessionStatus::Resubmitted {
        tracing::debug!(result = "accepted", session = %session_id, status = %status, "progress webhook noted");
        return (StatusCode::OK, "accepted");
    }
    let event_id = text("event_id");
    // Didit may or may not reuse event_id on a retry: dedupe on both it and the change itself.
    let change_key = format!("{session_id}:{status}:{}", verified.timestamp);
    let event_key = (!event_id.is_empty()).then(|| format!("event:{event_id}"));
    for key in event_key.iter().chain(std::iter::once(&change_key)) {
        match state
            .store
            .first_delivery(key, state.store.dedupe_ttl())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(result = "duplicate", session = %session_id, "webhook already seen");
                return (StatusCode::OK, "duplicate");
            }
            Err(e) => {
                return retry_later(state, &[event_key.as_deref(), Some(&change_key)], e).await
            }
        }
    }
    let forget = [event_key.as_deref(), Some(change_key.as_str())];
    let known = match state.store.session(session_id).await {
        Ok(known) => known,
        Err(e) => return retry_later(state, &forget, e).await,
    };
    // The receipt continues the trace of the verification that created the session, so the
    // decision it triggers lands in that trace too.
    let parent = known.as_ref().and_then(|s| s.trace);
    let receipt = Receipt {
        session_id,
        status: &status,
        forget: &forget,
    };
    crate::telemetry::within(span, parent, follow(state, known, &verified, receipt)).await
}

/// A verified result webhook of a session, as [`follow`] needs it.
struct Receipt<'a> {
    session_id: Uuid,
    status: &'a str,
    /// Its dedupe keys, forgotten when it cannot be processed now.
    forget: &'a [Option<&'a str>],
}

/// Records the webhook on the session's requests (adopting a session without a record when
/// its payload names one of our requests) and moves the session's poll to now.
async fn follow(
    state: &AppState,
    known: Option<crate::store::SessionRecord>,
    verified: &didit::webhook::VerifiedWebhook,
    receipt: Receipt<'_>,
) -> (StatusCode, &'static str) {
    let Receipt {
        session_id,
        status,
        forget,
    } = receipt;
    let scheme = verified.scheme.as_str();
    match known {
        Some(session) => {
            // A webhook counts as of its timestamp: one that names a change older than
            // the recorded one (or the recorded one again), or a session nobody follows,
            // asks for no read.
            let timestamp_ms = u64::try_from(verified.timestamp)
                .unwrap_or(0)
                .saturating_mul(1000);
            let plan = lifecycle::on_webhook(
                &session.lifecycle(),
                SessionStatus::parse(status),
                timestamp_ms,
            );
            let step = serde_json::json!({"session_id": session_id, "status": status, "scheme": scheme, "read": plan.read_now});
            if let Err(e) = state
                .store
                .audit(&session.requests, "webhook_received", step)
                .await
            {
                return retry_later(state, forget, e).await;
            }
            if !plan.read_now {
                tracing::info!(result = "accepted", session = %session_id, status = %status, scheme, "webhook accepted; nothing newer to read");
                return (StatusCode::OK, "accepted");
            }
        }
        None => match adopt(state, session_id, verified).await {
            Ok(Adopted::Yes) => {}
            Ok(Adopted::NotOurs) => {
                tracing::info!(result = "unknown_session", session = %session_id, "webhook for a session we do not follow");
                return (StatusCode::OK, "unknown_session");
            }
            // Counted, audited and answered 200: Didit's retry would be refused the same way.
            Ok(Adopted::Refused) => return (StatusCode::OK, "adoption_refused"),
            Err(e) => return retry_later(state, forget, e).await,
        },
    }
    let job = PollDecision {
        session_id,
        polls: 0,
        urgent: true,
    };
    if let Err(e) = state
        .queue
        .run_now(&PollDecision::slot(session_id), &job)
        .await
    {
        return retry_later(state, forget, e).await;
    }
    tracing::info!(result = "accepted", session = %session_id, status = %status, scheme, "webhook accepted");
    (StatusCode::OK, "accepted")
}

/// What became of a webhook for a session we have no record of.
enum Adopted {
    /// Its request now follows it.
    Yes,
    /// Its metadata names none of our requests.
    NotOurs,
    /// It names one of our requests, but may not take it (see [`adopt`]).
    Refused,
}

/// A session we have no record of (records expired, or the create's answer was lost) whose
/// signed payload names one of our requests in its metadata: record the link so the
/// decision still yields that request's event.
///
/// Limits: the metadata is believed only when the signature covers it (`X-Signature-V2` or
/// `X-Signature`; the Simple signature covers four fields, not the metadata), and a session
/// is given only to a request of the same person that has none — never to one that follows
/// (or was decided in) another session. A refusal changes nothing; it is counted
/// (`kyc_webhooks_total{result="adoption_refused"}`) and audited on the request's trail.
async fn adopt(
    state: &AppState,
    session_id: Uuid,
    verified: &didit::webhook::VerifiedWebhook,
) -> Result<Adopted, crate::store::StoreError> {
    let payload = &verified.payload;
    let request = payload
        .get("metadata")
        .and_then(|m| m.get(REQUEST_ID_METADATA))
        .and_then(|r| r.as_str())
        .and_then(|r| RequestId::parse(r).ok());
    let Some(request) = request else {
        return Ok(Adopted::NotOurs);
    };
    let vendor_data = payload
        .get("vendor_data")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    // The V2 and raw signatures cover the whole body; the Simple one does not.
    let refusal = if !verified.scheme.covers_decision() {
        Some("the signature does not cover the metadata")
    } else {
        state
            .store
            .claim_for_adoption(&request, session_id, vendor_data)
            .await?
            .refusal()
    };
    if let Some(reason) = refusal {
        tracing::warn!(result = "adoption_refused", session = %session_id, reason, scheme = verified.scheme.as_str(), "a webhook for an unknown session names one of our requests; not adopted");
        state
            .store
            .audit(
                std::slice::from_ref(&request),
                "adoption_refused",
                serde_json::json!({"session_id": session_id, "reason": reason, "scheme": verified.scheme.as_str()}),
            )
            .await?;
        return Ok(Adopted::Refused);
    }
    // The session's real deadline is unknown here; the poll's own reads decide its fate.
    let deadline = crate::queue::now_ms() + Duration::from_secs(30 * 24 * 3600).as_millis() as u64;
    let status = SessionStatus::parse(
        payload
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or_default(),
    );
    let session = crate::store::NewSession {
        id: session_id,
        url: "",
        deadline_ms: deadline,
        workflow_version: payload.get("workflow_version").and_then(|v| v.as_i64()),
        status: &status,
        trace: crate::telemetry::current(),
    };
    state
        .store
        .record_session(
            &request,
            vendor_data,
            session,
            false,
            serde_json::json!({"session_id": session_id, "adopted": true}),
        )
        .await?;
    tracing::info!(result = "adopted", session = %session_id, "webhook for a session without a record names one of our requests");
    Ok(Adopted::Yes)
}

/// Forgets the delivery and answers 503, so Didit's retry is processed.
async fn retry_later(
    state: &AppState,
    dedupe_keys: &[Option<&str>],
    error: impl std::fmt::Display,
) -> (StatusCode, &'static str) {
    tracing::error!(error = %error, "cannot process a webhook now; asking Didit to retry");
    for key in dedupe_keys.iter().flatten() {
        let _ = state.store.forget_delivery(key).await;
    }
    (StatusCode::SERVICE_UNAVAILABLE, "error")
}
