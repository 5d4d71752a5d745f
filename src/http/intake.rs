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
    domain::{validate_vendor_data, RequestId, StartRequest},
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

/// The problem type of a 422: where the served OpenAPI document describes it.
const IDEMPOTENCY_MISMATCH_TYPE: &str = "/v1/openapi.json#/components/schemas/IdempotencyMismatch";

/// `POST /v1/verifications`. A 429 (backpressure) carries `Retry-After`; a 422 (a request
/// id reused with another body) is an `application/problem+json` document.
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (status, reply) = accept(&state, &headers, body).await;
    match status {
        StatusCode::TOO_MANY_REQUESTS => {
            let retry_after = crate::producer::BACKPRESSURE_RETRY.as_secs().to_string();
            (
                status,
                [(axum::http::header::RETRY_AFTER, retry_after)],
                reply,
            )
                .into_response()
        }
        StatusCode::UNPROCESSABLE_ENTITY => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
            reply,
        )
            .into_response(),
        _ => (status, reply).into_response(),
    }
}

/// A `content-type` that is not JSON (`application/json` or `…+json`); absent is JSON.
fn not_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .map(|v| {
            let essence = v
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            essence != "application/json" && !essence.ends_with("+json")
        })
        .unwrap_or(false)
}

async fn accept(state: &AppState, headers: &HeaderMap, body: axum::body::Bytes) -> Reply {
    if let Err(reply) = authorized(state, headers) {
        return reply;
    }
    if not_json(headers) {
        rejected(state, "content_type", None);
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (content-type: application/json)",
            None,
        );
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
            rejected(state, e.refusal.as_str(), Some(e.field));
            return error(StatusCode::BAD_REQUEST, &e.to_string(), Some(e.field));
        }
        Err(ProducerError::IdempotencyMismatch { fields }) => {
            let message = ProducerError::IdempotencyMismatch {
                fields: fields.clone(),
            }
            .to_string();
            rejected(state, "idempotency_mismatch", Some("request_id"));
            // An RFC 9457 problem (served as `application/problem+json` by `start`) that
            // also carries the `error` and `field` of every other refusal.
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "type": IDEMPOTENCY_MISMATCH_TYPE,
                    "title": "request id reused with another body",
                    "status": StatusCode::UNPROCESSABLE_ENTITY.as_u16(),
                    "detail": message,
                    "error": message,
                    "field": "request_id",
                    "reason": "idempotency_mismatch",
                    "differing_fields": fields,
                })),
            );
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
    // `RequestId`'s character set (`[A-Za-z0-9._:-]`, no leading dot) is one plain path
    // segment as it is: nothing to escape.
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
        (Some(status), _) => status.to_string(),
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

/// `POST /v1/subjects/erase` `{"vendor_data": "…"}`: queues an erasure (202). The body is
/// read by hand, as in `start`, so every refusal is the documented JSON error (axum's
/// extractor would answer a missing content type or bad JSON in plain text, before the
/// bearer token is even checked); the vendor_data follows the intake's rules.
pub async fn erase(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Reply {
    if let Err(reply) = authorized(&state, &headers) {
        return reply;
    }
    if not_json(&headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (content-type: application/json)",
            None,
        );
    }
    let body = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let vendor_data = match body
        .get("vendor_data")
        .and_then(Value::as_str)
        .map(validate_vendor_data)
    {
        Some(Ok(vendor_data)) => vendor_data,
        // The intake's rules: required, at most 256 bytes, no control characters.
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &e.to_string(), Some(e.field)),
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "vendor_data: is required (a JSON object with a non-empty string vendor_data)",
                Some("vendor_data"),
            )
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SessionStatus;

    fn document() -> Value {
        serde_json::from_str(OPENAPI).expect("the OpenAPI document is JSON")
    }

    #[test]
    fn the_document_lists_every_start_request_field() {
        let doc = document();
        let mut documented: Vec<&str> = doc["components"]["schemas"]["StartRequest"]["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .collect();
        documented.sort_unstable();
        let mut fields = StartRequest::FIELDS.to_vec();
        fields.sort_unstable();
        assert_eq!(documented, fields);
    }

    #[test]
    fn the_422_problem_type_points_at_its_schema_in_the_served_document() {
        let doc = document();
        let pointer = IDEMPOTENCY_MISMATCH_TYPE
            .strip_prefix("/v1/openapi.json#")
            .expect("the served document's path");
        assert!(doc.pointer(pointer).is_some_and(Value::is_object));
        assert_eq!(
            doc["paths"]["/v1/verifications"]["post"]["responses"]["422"]["content"]
                ["application/problem+json"]["schema"]["$ref"],
            format!("#{pointer}")
        );
    }

    #[test]
    fn the_document_lists_every_status_a_verification_can_report() {
        let doc = document();
        let documented: Vec<&str> = doc["components"]["schemas"]["Verification"]["properties"]
            ["status"]["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut reported = vec!["queued", "created", "failed"];
        reported.extend(SessionStatus::ALL.iter().map(SessionStatus::as_str));
        for status in &reported {
            assert!(documented.contains(status), "{status} is not documented");
        }
        assert_eq!(documented.len(), reported.len(), "{documented:?}");
    }
}
