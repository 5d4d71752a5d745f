//! The start request: what a producer asks for, validated before it is queued.
//!
//! Validation happens at the producer (a clear error to the caller) and again when a worker
//! decodes the job (a bad payload that bypassed the producer goes to the dead set with the
//! same reason), so the rules live here once.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The caller's idempotency key for one verification. Generated when absent. It may be the
/// caller's own id, so the fleet never puts it in a Redis key name (see `records`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(String);

impl RequestId {
    pub fn generate() -> Self {
        Self(Uuid::new_v4().to_string())
    }

    /// 1–128 visible ASCII characters.
    pub fn parse(s: &str) -> Result<Self, RequestError> {
        if s.is_empty() || s.len() > 128 || !s.chars().all(|c| c.is_ascii_graphic()) {
            return Err(RequestError::new(
                "request_id",
                "must be 1-128 visible ASCII characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// "Start KYC for this user", as producers send it. Version 1 of the job schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The caller's id for the person; Didit groups sessions by it. Required.
    #[serde(default)]
    pub vendor_data: String,
    /// A workflow named in settings (`[workflows]`), or…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// …a Didit workflow id. Neither: `didit.workflow_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_details: Option<ContactDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_details: Option<ExpectedDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_scenario: Option<String>,
}

/// How Didit may reach the person (`contact_details`): the same shape as Didit's own field,
/// so a request passes through unchanged, but owned here so the request's wire format does
/// not move when the SDK's types do.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContactDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_notification_emails: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_lang: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// What the caller already knows about the person (`expected_details`), for Didit to
/// compare with what the documents say. Same shape as Didit's field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExpectedDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nationality: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poa_country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identification_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_document_types: Option<Vec<String>>,
}

/// A start request that cannot be accepted, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RequestError {
    pub field: &'static str,
    pub reason: String,
}

impl RequestError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl StartRequest {
    /// Checks the request and fills in a generated request id when it has none.
    pub fn validate(mut self) -> Result<(RequestId, StartRequest), RequestError> {
        let id = match self.request_id.as_deref() {
            Some(id) => RequestId::parse(id)?,
            None => RequestId::generate(),
        };
        self.request_id = Some(id.as_str().to_owned());
        let vendor_data = self.vendor_data.trim();
        if vendor_data.is_empty() {
            return Err(RequestError::new("vendor_data", "is required"));
        }
        if vendor_data.len() > 256 {
            return Err(RequestError::new(
                "vendor_data",
                "must be at most 256 characters",
            ));
        }
        if self.workflow.is_some() && self.workflow_id.is_some() {
            return Err(RequestError::new(
                "workflow",
                "give either workflow or workflow_id, not both",
            ));
        }
        if let Some(callback) = &self.callback {
            url::Url::parse(callback)
                .map_err(|e| RequestError::new("callback", format!("not a URL: {e}")))?;
        }
        if let Some(language) = &self.language {
            let ok = (2..=5).contains(&language.len())
                && language
                    .chars()
                    .all(|c| c.is_ascii_alphabetic() || c == '-');
            if !ok {
                return Err(RequestError::new(
                    "language",
                    "expected an ISO 639-1 code such as en or pt-BR",
                ));
            }
        }
        if let Some(metadata) = &self.metadata {
            if !metadata.is_object() {
                return Err(RequestError::new("metadata", "must be a JSON object"));
            }
        }
        Ok((id, self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_generated_when_absent() {
        let (id, req) = StartRequest {
            vendor_data: "u-1".into(),
            ..Default::default()
        }
        .validate()
        .expect("valid");
        assert_eq!(req.request_id.as_deref(), Some(id.as_str()));
        assert!(Uuid::parse_str(id.as_str()).is_ok());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (StartRequest::default(), "vendor_data"),
            (
                StartRequest {
                    vendor_data: "u".into(),
                    request_id: Some("has space".into()),
                    ..Default::default()
                },
                "request_id",
            ),
            (
                StartRequest {
                    vendor_data: "u".into(),
                    callback: Some("nope".into()),
                    ..Default::default()
                },
                "callback",
            ),
            (
                StartRequest {
                    vendor_data: "u".into(),
                    metadata: Some(Value::from(3)),
                    ..Default::default()
                },
                "metadata",
            ),
            (
                StartRequest {
                    vendor_data: "u".into(),
                    workflow: Some("a".into()),
                    workflow_id: Some(Uuid::nil()),
                    ..Default::default()
                },
                "workflow",
            ),
            (
                StartRequest {
                    vendor_data: "u".into(),
                    language: Some("english!".into()),
                    ..Default::default()
                },
                "language",
            ),
        ];
        for (req, field) in cases {
            assert_eq!(req.validate().expect_err(field).field, field);
        }
    }

    #[test]
    fn details_keep_their_wire_shape() {
        let raw = serde_json::json!({
            "vendor_data": "u",
            "contact_details": {"email": "a@example.org", "send_notification_emails": true},
            "expected_details": {"first_name": "Ana", "expected_document_types": ["passport"]}
        });
        let req: StartRequest = serde_json::from_value(raw.clone()).expect("request");
        assert_eq!(
            req.expected_details
                .as_ref()
                .and_then(|d| d.first_name.as_deref()),
            Some("Ana")
        );
        assert_eq!(serde_json::to_value(&req).expect("json"), raw);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<StartRequest>(r#"{"vendor_data":"u","vendor_dta":"x"}"#)
            .expect_err("typo");
        assert!(err.to_string().contains("vendor_dta"));
    }
}
