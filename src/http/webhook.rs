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
    domain::{RequestId, SessionStatus},
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
        scheme: verified.scheme.as_str(),
        forget: &forget,
    };
    crate::telemetry::within(span, parent, follow(state, known, payload, receipt)).await
}

/// A verified result webhook of a session, as [`follow`] needs it.
struct Receipt<'a> {
    session_id: Uuid,
    status: &'a str,
    scheme: &'static str,
    /// Its dedupe keys, forgotten when it cannot be processed now.
    forget: &'a [Option<&'a str>],
}

/// Records the webhook on the session's requests (adopting a session without a record when
/// its payload names one of our requests) and moves the session's poll to now.
async fn follow(
    state: &AppState,
    known: Option<crate::store::SessionRecord>,
    payload: &serde_json::Value,
    receipt: Receipt<'_>,
) -> (StatusCode, &'static str) {
    let Receipt {
        session_id,
        status,
        scheme,
        forget,
    } = receipt;
    match known {
        Some(session) => {
            let step =
                serde_json::json!({"session_id": session_id, "status": status, "scheme": scheme});
            if let Err(e) = state
                .store
                .audit(&session.requests, "webhook_received", step)
                .await
            {
                return retry_later(state, forget, e).await;
            }
        }
        None => match adopt(state, session_id, payload).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(result = "unknown_session", session = %session_id, "webhook for a session we do not follow");
                return (StatusCode::OK, "unknown_session");
            }
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

/// A session we have no record of (records expired, or created by another system) whose
/// signed payload names one of our requests in its metadata: record the link so the
/// decision still yields that request's event. Returns whether it was ours.
async fn adopt(
    state: &AppState,
    session_id: Uuid,
    payload: &serde_json::Value,
) -> redis::RedisResult<bool> {
    let request = payload
        .get("metadata")
        .and_then(|m| m.get(REQUEST_ID_METADATA))
        .and_then(|r| r.as_str())
        .and_then(|r| RequestId::parse(r).ok());
    let Some(request) = request else {
        return Ok(false);
    };
    let vendor_data = payload
        .get("vendor_data")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    // The session's real deadline is unknown here; the poll's own reads decide its fate.
    let deadline = crate::queue::now_ms() + Duration::from_secs(30 * 24 * 3600).as_millis() as u64;
    let session = crate::store::NewSession {
        id: session_id,
        url: "",
        deadline_ms: deadline,
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
    Ok(true)
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
