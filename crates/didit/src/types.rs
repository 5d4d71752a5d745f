//! Didit v3 wire types: exactly what goes over HTTP, as `reference/didit/openapi.json`
//! describes it. Responses tolerate unknown fields (Didit adds fields without notice) and keep
//! them in `rest`, so `--json` output and later readers lose nothing; request types skip
//! `None` fields so Didit applies its own defaults.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::SessionStatus;

/// `POST /v3/session/` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreateSessionRequest {
    pub workflow_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_details: Option<ContactDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_details: Option<ExpectedDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portrait_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_scenario: Option<String>,
}

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

/// `201` of `POST /v3/session/` (also when Didit reused an unfinished session).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct CreatedSession {
    pub session_id: Uuid,
    pub session_number: Option<i64>,
    pub session_token: Option<String>,
    /// The hosted link the user opens.
    pub url: String,
    pub vendor_data: Option<String>,
    pub metadata: Option<Value>,
    pub status: SessionStatus,
    pub workflow_id: Option<Uuid>,
    pub workflow_version: Option<i64>,
    pub callback: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `GET /v3/session/{id}/decision/`: everything produced so far. Each feature array is
/// `None` until that step ran at least once; items are in the order Didit ran them.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    pub session_id: Uuid,
    pub status: SessionStatus,
    #[serde(default)]
    pub session_number: Option<i64>,
    #[serde(default)]
    pub session_url: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub workflow_id: Option<Uuid>,
    #[serde(default)]
    pub features: Option<Vec<Value>>,
    #[serde(default)]
    pub vendor_data: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub id_verifications: Option<Vec<FeatureItem>>,
    #[serde(default)]
    pub nfc_verifications: Option<Vec<FeatureItem>>,
    #[serde(default)]
    pub liveness_checks: Option<Vec<FeatureItem>>,
    #[serde(default)]
    pub face_matches: Option<Vec<FeatureItem>>,
    #[serde(default)]
    pub phone_verifications: Option<Vec<FeatureItem>>,
    #[serde(default)]
    pub email_verifications: Option<Vec<FeatureItem>>,
    #[serde(default)]
    pub poa_verifications: Option<Vec<FeatureItem>>,
    #[serde(default)]
    pub aml_screenings: Option<Vec<FeatureItem>>,
    #[serde(default)]
    pub ip_analyses: Option<Vec<FeatureItem>>,
    #[serde(default)]
    pub database_validations: Option<Vec<FeatureItem>>,
    #[serde(default)]
    pub reviews: Option<Vec<Review>>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One item of a v3 feature array. The fields the fleet reads are typed; the rest (PII,
/// presigned media URLs, feature-specific data) stays in `rest`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureItem {
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub score: Option<f64>,
    #[serde(default)]
    pub warnings: Option<Vec<Warning>>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Warning {
    #[serde(default)]
    pub feature: Option<String>,
    #[serde(default)]
    pub risk: Option<String>,
    /// `error` (the workflow declines on it), `warning` (review) or `information`.
    #[serde(default)]
    pub log_type: Option<String>,
    #[serde(default)]
    pub short_description: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Review {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub new_status: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

impl Decision {
    /// Every v3 feature array with the name the fleet uses for it, in Didit's order.
    pub fn sections(&self) -> [(&'static str, &Option<Vec<FeatureItem>>); 10] {
        [
            ("id_verification", &self.id_verifications),
            ("nfc", &self.nfc_verifications),
            ("liveness", &self.liveness_checks),
            ("face_match", &self.face_matches),
            ("phone", &self.phone_verifications),
            ("email", &self.email_verifications),
            ("poa", &self.poa_verifications),
            ("aml", &self.aml_screenings),
            ("ip_analysis", &self.ip_analyses),
            ("database_validation", &self.database_validations),
        ]
    }
}

// Decisions and sessions carry personal data, presigned media URLs and the session token:
// their `Debug` shows ids, statuses and scores only, so a stray `{:?}` in a log leaks nothing.
impl std::fmt::Debug for CreatedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedSession")
            .field("session_id", &self.session_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decision")
            .field("session_id", &self.session_id)
            .field("status", &self.status)
            .field("liveness_checks", &self.liveness_checks)
            .field("face_matches", &self.face_matches)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for FeatureItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureItem")
            .field("node_id", &self.node_id)
            .field("status", &self.status)
            .field("score", &self.score)
            .finish_non_exhaustive()
    }
}

/// Paginated envelope of list endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Page<T> {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<T>,
}

/// Filters of `GET /v3/sessions/`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SessionQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
}

/// A row of `GET /v3/sessions/`. Rows carry no metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionSummary {
    pub session_id: Uuid,
    #[serde(default)]
    pub session_number: Option<i64>,
    #[serde(default)]
    pub session_url: Option<String>,
    pub status: SessionStatus,
    #[serde(default)]
    pub vendor_data: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `PATCH /v3/session/{id}/update-status/` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateStatusRequest {
    /// `Approved`, `Declined` or `Resubmitted`; Didit refuses anything else.
    pub new_status: SessionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_to_resubmit: Option<Vec<NodeToResubmit>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_email: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeToResubmit {
    pub node_id: String,
    pub feature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusUpdated {
    pub session_id: Uuid,
}

/// `POST /v3/blocklist/add/` body; at least one flag must be true.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlocklistAddRequest {
    pub session_id: Uuid,
    pub blocklist_face: bool,
    pub blocklist_document: bool,
    pub blocklist_phone: bool,
    pub blocklist_email: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlocklistAdded {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `POST /v3/workflows/` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreateWorkflowRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_label: Option<String>,
    pub features: Vec<WorkflowFeature>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retry_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_expiration_time: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkflowFeature {
    pub feature: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// A workflow version, from create, list or get.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Workflow {
    pub uuid: Uuid,
    #[serde(default)]
    pub workflow_id: Option<Uuid>,
    #[serde(default)]
    pub workflow_label: Option<String>,
    /// Feature names joined with `" + "`.
    #[serde(default)]
    pub features: Option<String>,
    /// Seconds before an unfinished session expires (Didit's default 604800).
    #[serde(default)]
    pub session_expiration_time: Option<u64>,
    #[serde(default)]
    pub version: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl Workflow {
    /// The stable id sessions are created with (equals `uuid` for a first version).
    pub fn stable_id(&self) -> Uuid {
        self.workflow_id.unwrap_or(self.uuid)
    }
}

/// `POST /v3/webhook/destinations/` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateWebhookDestination {
    pub label: String,
    pub url: String,
    pub webhook_version: String,
    pub subscribed_events: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookDestination {
    pub uuid: Uuid,
    #[serde(default)]
    pub label: Option<String>,
    pub url: String,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub webhook_version: Option<String>,
    #[serde(default)]
    pub subscribed_events: Option<Vec<String>>,
    /// Only in the create response: the HMAC secret of this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_shared_key: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `GET /v3/billing/balance/`. Amounts are decimal strings in USD.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Balance {
    pub balance: String,
    pub auto_refill_enabled: bool,
    #[serde(default)]
    pub auto_refill_amount: Option<String>,
    #[serde(default)]
    pub auto_refill_threshold: Option<String>,
}

impl Balance {
    /// Whether the account has credit left (a malformed amount counts as none).
    pub fn has_credit(&self) -> bool {
        self.balance.trim().parse::<f64>().is_ok_and(|b| b > 0.0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopUpRequest {
    pub amount_in_dollars: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopUp {
    pub checkout_session_id: String,
    pub checkout_session_url: String,
}

/// `201` of programmatic registration: a code is e-mailed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registered {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `200` of e-mail verification: the account's applications and their keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifiedAccount {
    #[serde(default)]
    pub application: Option<Application>,
    #[serde(default)]
    pub sandbox_application: Option<Application>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Application {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_with_null_arrays_and_unknown_fields_parses() {
        let d: Decision = serde_json::from_value(serde_json::json!({
            "session_id": "11111111-2222-3333-4444-555555555555",
            "status": "In Progress",
            "id_verifications": null,
            "liveness_checks": [{"node_id": "feature_liveness_1", "status": "Approved", "score": 95.0,
                                 "warnings": [], "brand_new_field": {"x": 1}}],
            "something_didit_added": true
        }))
        .expect("decision");
        assert_eq!(d.status, SessionStatus::InProgress);
        assert!(d.id_verifications.is_none());
        let liveness = d.liveness_checks.expect("liveness");
        assert_eq!(liveness[0].score, Some(95.0));
        assert!(liveness[0].rest.contains_key("brand_new_field"));
        assert!(d.rest.contains_key("something_didit_added"));
    }

    #[test]
    fn requests_leave_out_what_is_not_set() {
        let req = CreateSessionRequest {
            workflow_id: Uuid::nil(),
            vendor_data: Some("u-1".into()),
            ..Default::default()
        };
        let json = serde_json::to_value(&req).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"workflow_id": Uuid::nil(), "vendor_data": "u-1"})
        );
    }
}
