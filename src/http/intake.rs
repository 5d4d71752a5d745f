//! `POST /v1/verifications` and `GET /v1/verifications/{request_id}`: the HTTP intake, so a
//! service in any language can start a verification and get the link without reading the
//! event stream. Bearer-token protected; validates and enqueues, never calls Didit.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::AppState;
use crate::{
    domain::{RequestId, StartRequest},
    producer::ProducerError,
};

/// The OpenAPI document of these routes, kept in the repository.
pub const OPENAPI: &str = include_str!("../../docs/api/openapi.json");

type Reply = (StatusCode, Json<Value>);

fn error(status: StatusCode, message: &str, field: Option<&str>) -> Reply {
    (status, Json(json!({"error": message, "field": field})))
}

/// Logs and counts a refused intake request (`kyc_intake_rejected_total{source="http"}`).
fn rejected(state: &AppState, reason: &'static str, field: Option<&str>) {
    tracing::info!(source = "http", reason, field, "intake request rejected");
    state
        .metrics
        .intake_rejected
        .with_label_values(&["http", reason])
        .inc();
}

fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), Reply> {
    let Some(token) = state.api_token.as_ref() else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "the HTTP intake is off: set KYC__HTTP__API_TOKEN",
            None,
        ));
    };
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
            None,
        ))
    }
}

/// `POST /v1/verifications`. A 429 (backpressure) carries `Retry-After`.
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // A malformed traceparent is ignored, as W3C asks: the verification starts its own trace.
    let parent = headers
        .get(crate::telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::telemetry::TraceParent::parse(v).ok());
    let span = tracing::info_span!(
        "intake",
        otel.name = "POST /v1/verifications",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/verifications",
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let (status, reply) =
        crate::telemetry::within(span.clone(), parent, accept(&state, &headers, body)).await;
    span.record("http.response.status_code", status.as_u16());
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = crate::producer::BACKPRESSURE_RETRY.as_secs().to_string();
        return (
            status,
            [(axum::http::header::RETRY_AFTER, retry_after)],
            reply,
        )
            .into_response();
    }
    (status, reply).into_response()
}

async fn accept(state: &AppState, headers: &HeaderMap, body: axum::body::Bytes) -> Reply {
    if let Err(reply) = authorized(state, headers) {
        return reply;
    }
    // An object only: serde would also fill the struct from a JSON array, by position.
    let parsed = serde_json::from_slice::<Value>(&body).and_then(|v| match v {
        Value::Object(_) => serde_json::from_value::<StartRequest>(v),
        _ => Err(<serde_json::Error as serde::de::Error>::custom(
            "expected a JSON object",
        )),
    });
    let mut request = match parsed {
        Ok(r) => r,
        Err(e) => {
            let message = format!(
                "not a start request: {}",
                crate::telemetry::redact_values(&e.to_string())
            );
            rejected(state, "malformed", None);
            return error(StatusCode::BAD_REQUEST, &message, None);
        }
    };
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        match &request.request_id {
            Some(id) if id != key => {
                rejected(state, "invalid", Some("request_id"));
                return error(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key differs from request_id",
                    Some("request_id"),
                );
            }
            _ => request.request_id = Some(key.to_owned()),
        }
    }
    let id = match state.producer.start_kyc(request).await {
        Ok(id) => id,
        Err(ProducerError::Invalid(e)) => {
            rejected(state, "invalid", Some(e.field));
            return error(StatusCode::BAD_REQUEST, &e.to_string(), Some(e.field));
        }
        Err(ProducerError::Backpressure { .. }) => {
            state
                .metrics
                .intake_rejected
                .with_label_values(&["http", "backpressure"])
                .inc();
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "the fleet is behind; retry later",
                None,
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot enqueue an HTTP intake request");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot enqueue now; retry",
                None,
            );
        }
    };
    (
        StatusCode::ACCEPTED,
        Json(
            json!({"request_id": id.as_str(), "status_url": format!("/v1/verifications/{}", id.as_str())}),
        ),
    )
}

pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Reply {
    if let Err(reply) = authorized(&state, &headers) {
        return reply;
    }
    let Ok(id) = RequestId::parse(&request_id) else {
        return error(StatusCode::NOT_FOUND, "unknown request", None);
    };
    let record = match state.store.request(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => return error(StatusCode::NOT_FOUND, "unknown request", None),
        Err(e) => {
            tracing::error!(error = %e, "cannot read a request record");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read now; retry",
                None,
            );
        }
    };
    let status = match (&record.last_status, record.session_id) {
        (Some(status), _) => status.clone(),
        (None, Some(_)) => "created".to_owned(),
        (None, None) => "queued".to_owned(),
    };
    let at = |ms: Option<u64>| -> Value {
        ms.and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
            .and_then(|t| t.format(&Rfc3339).ok())
            .map(Value::from)
            .unwrap_or(Value::Null)
    };
    (
        StatusCode::OK,
        Json(json!({
            "request_id": id.as_str(),
            "status": status,
            "session_id": record.session_id,
            "url": record.url,
            "decided_by": record.decided_by,
            "enqueued_at": at(record.enqueued_at_ms),
            "created_at": at(record.created_at_ms),
            "updated_at": at(record.updated_at_ms),
        })),
    )
}

pub async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// `POST /v1/subjects/erase` `{"vendor_data": "…"}`: queues an erasure (202).
pub async fn erase(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Reply {
    if let Err(reply) = authorized(&state, &headers) {
        return reply;
    }
    let Some(vendor_data) = body
        .get("vendor_data")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "vendor_data is required",
            Some("vendor_data"),
        );
    };
    let job = crate::jobs::EraseSubject {
        vendor_data: vendor_data.to_owned(),
    };
    match state.queue.push(&job).await {
        Ok(_) => (StatusCode::ACCEPTED, Json(json!({"queued": true}))),
        Err(e) => {
            tracing::error!(error = %e, "cannot queue an erasure");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot queue now; retry",
                None,
            )
        }
    }
}
