//! Didit v3 wire types: exactly what goes over HTTP, as Didit's OpenAPI document describes
//! it. Responses tolerate unknown fields (Didit adds fields without notice) and keep
//! them in `rest`, so re-serialising a response loses nothing; request types skip
//! `None` fields so Didit applies its own defaults.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::SessionStatus;

/// `POST /v3/session/` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreateSessionRequest {
    /// The workflow to run (required): its stable id, or one version's `uuid`.
    pub workflow_id: Uuid,
    /// Your own id for the person (an opaque id rather than an e-mail: Didit echoes it in
    /// every response and webhook). It groups sessions by user and makes creation
    /// idempotent: an unfinished session of the same `vendor_data` on the workflow's latest
    /// version is returned instead of a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_data: Option<String>,
    /// Where the hosted flow redirects when done; Didit appends
    /// `?verificationSessionId=…&status=…`. Defaults to the workflow's callback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// Which device of a cross-device flow follows `callback`: `initiator` (Didit's default),
    /// `completer` or `both`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_method: Option<String>,
    /// Any JSON (an object is recommended), echoed in the response, the decision and every
    /// webhook; never shown to the person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// The hosted flow's language, ISO 639-1 (`en`, `es`, `pt-BR`, …); an unknown code is
    /// refused with a 400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Contact details that prefill steps and address notification e-mails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_details: Option<ContactDetails>,
    /// What the person is expected to be; a mismatch becomes a warning in the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_details: Option<ExpectedDetails>,
    /// A reference face, base64 (JPEG, PNG, WebP or TIFF, at most 2 MB), for workflows that
    /// match against a known face.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portrait_image: Option<String>,
    /// Sandbox applications only: the outcome to simulate (e.g. `decline_document_expired`).
    /// Refused by live applications.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_scenario: Option<String>,
}

/// `contact_details` of a create-session request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContactDetails {
    /// Prefills the e-mail step, and receives the invitation when
    /// `send_notification_emails` is true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether Didit e-mails the invitation and the review outcome (Didit's default: false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_notification_emails: Option<bool>,
    /// The language of those e-mails (ISO 639-1; `en` when absent or unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_lang: Option<String>,
    /// Prefills the phone step, E.164 (`+14155552671`); silently ignored when unparsable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// `expected_details` of a create-session request: what the documents should say. Didit
/// compares, and a mismatch becomes a warning (which the workflow may decline or review on).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExpectedDetails {
    /// Given name, compared fuzzily.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Family name, compared fuzzily.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// `YYYY-MM-DD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<String>,
    /// `M` or `F`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    /// ISO 3166-1 alpha-3 (`USA`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nationality: Option<String>,
    /// ISO 3166-1 alpha-3; the fallback for `id_country` and `poa_country`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The identity document's issuing country, alpha-3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_country: Option<String>,
    /// The proof-of-address document's country, alpha-3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poa_country: Option<String>,
    /// A postal address; needs `country` or `poa_country`, else Didit answers 400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The document or personal number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identification_number: Option<String>,
    /// The IPv4 or IPv6 address the person is expected to come from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Accepted document types: `P` (passport), `ID`, `DL` (driving licence), `RP` (residence
    /// permit), `HIC`, `TC`, `SSC`; an unknown code is refused with a 400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_document_types: Option<Vec<String>>,
}

/// `201` of `POST /v3/session/` (also when Didit reused an unfinished session).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct CreatedSession {
    /// The session's id, for every later call.
    pub session_id: Uuid,
    /// A sequential number per application, as the console shows it.
    pub session_number: Option<i64>,
    /// The 12-character secret of the hosted link, valid until the session expires. Treat it
    /// as a credential: it opens the person's session.
    pub session_token: Option<String>,
    /// The hosted link the user opens.
    pub url: String,
    /// The request's `vendor_data`, or `None`.
    pub vendor_data: Option<String>,
    /// The request's `metadata`, or `None`.
    pub metadata: Option<Value>,
    /// `Not Started` for a new session; a reused session's current status otherwise.
    pub status: SessionStatus,
    /// The workflow's stable id (even when a version's `uuid` was sent).
    pub workflow_id: Option<Uuid>,
    /// The workflow version the session runs.
    pub workflow_version: Option<i64>,
    /// The redirect target: the request's, or the workflow's default.
    pub callback: Option<String>,
    /// Fields this crate does not type (Didit adds fields without notice).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `GET /v3/session/{id}/decision/`: everything produced so far. Each feature array is
/// `None` until that step ran at least once; items are in the order Didit ran them.
///
/// It carries personal data and short-lived media links (about 60 minutes); its `Debug`
/// shows ids, statuses and scores only.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// The session's id.
    pub session_id: Uuid,
    /// The session's rolled-up status. A feature's own `status` is independent of it: an
    /// `Approved` session may hold an `In Review` step.
    pub status: SessionStatus,
    /// A sequential number per application.
    #[serde(default)]
    pub session_number: Option<i64>,
    /// The hosted link.
    #[serde(default)]
    pub session_url: Option<String>,
    /// `live` or `sandbox`.
    #[serde(default)]
    pub environment: Option<String>,
    /// The workflow's stable id.
    #[serde(default)]
    pub workflow_id: Option<Uuid>,
    /// The workflow's steps by display name (`ID_VERIFICATION`, `LIVENESS`, `FACE_MATCH`, …).
    #[serde(default)]
    pub features: Option<Vec<Value>>,
    /// The `vendor_data` the session was created with.
    #[serde(default)]
    pub vendor_data: Option<String>,
    /// The `metadata` the session was created with.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Identity document steps (document data, images, MRZ).
    #[serde(default)]
    pub id_verifications: Option<Vec<FeatureItem>>,
    /// NFC chip reads of the document.
    #[serde(default)]
    pub nfc_verifications: Option<Vec<FeatureItem>>,
    /// Liveness steps; `score` is 0–100.
    #[serde(default)]
    pub liveness_checks: Option<Vec<FeatureItem>>,
    /// Face-to-document (or reference image) comparisons; `score` is 0–100.
    #[serde(default)]
    pub face_matches: Option<Vec<FeatureItem>>,
    /// Phone number verifications.
    #[serde(default)]
    pub phone_verifications: Option<Vec<FeatureItem>>,
    /// E-mail verifications.
    #[serde(default)]
    pub email_verifications: Option<Vec<FeatureItem>>,
    /// Proof-of-address document checks.
    #[serde(default)]
    pub poa_verifications: Option<Vec<FeatureItem>>,
    /// Anti-money-laundering screenings (sanctions, PEP, adverse media); `score` is 0–100.
    #[serde(default)]
    pub aml_screenings: Option<Vec<FeatureItem>>,
    /// IP and device analyses (VPN, data centre, location).
    #[serde(default)]
    pub ip_analyses: Option<Vec<FeatureItem>>,
    /// Validations against government databases.
    #[serde(default)]
    pub database_validations: Option<Vec<FeatureItem>>,
    /// The review trail: every status change made by a reviewer or through the API.
    #[serde(default)]
    pub reviews: Option<Vec<Review>>,
    /// When the session was created, ISO 8601 UTC.
    #[serde(default)]
    pub created_at: Option<String>,
    /// When the session or its KYC validity expires, ISO 8601 UTC, when set.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Fields this crate does not type (`session_kind`, `contact_details`, newer arrays, …).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One item of a v3 feature array. The fields common to every feature are typed; the rest
/// (PII, presigned media URLs, feature-specific data) stays in `rest`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureItem {
    /// The step's node in the workflow graph (`feature_liveness_1`, …); opaque. Used to
    /// name the steps to resubmit.
    #[serde(default)]
    pub node_id: Option<String>,
    /// The step's status: `Not Finished`, `Approved`, `Declined`, `In Review`, and
    /// `Expired` or `Resub Requested` depending on the feature.
    #[serde(default)]
    pub status: Option<String>,
    /// The step's score, 0–100, for features that have one (liveness, face match, AML).
    #[serde(default)]
    pub score: Option<f64>,
    /// The risks the step raised.
    #[serde(default)]
    pub warnings: Option<Vec<Warning>>,
    /// Everything else the step produced: personal data, presigned media links and
    /// feature-specific fields.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A risk a step raised, from its `warnings`. Its `log_type` tells what the workflow did
/// about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Warning {
    /// The feature that raised it: `ID_VERIFICATION`, `LIVENESS`, `FACEMATCH` (no underscore),
    /// `AML`, `LOCATION` (IP analysis), ….
    #[serde(default)]
    pub feature: Option<String>,
    /// The risk code: `DOCUMENT_EXPIRED`, `LOW_LIVENESS_SCORE`, `POSSIBLE_MATCH_FOUND`, ….
    #[serde(default)]
    pub risk: Option<String>,
    /// `error` (the workflow declines on it), `warning` (review) or `information`.
    #[serde(default)]
    pub log_type: Option<String>,
    /// A one-line English description.
    #[serde(default)]
    pub short_description: Option<String>,
    /// Fields this crate does not type (`long_description`, `additional_data`, `node_id`).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// An entry of a decision's review trail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Review {
    /// Who changed the status: a reviewer's e-mail, `API Client` for an API key, or `Unknown`.
    #[serde(default)]
    pub user: Option<String>,
    /// The status set.
    #[serde(default)]
    pub new_status: Option<String>,
    /// The reviewer's or the API call's comment.
    #[serde(default)]
    pub comment: Option<String>,
    /// When, ISO 8601 UTC.
    #[serde(default)]
    pub created_at: Option<String>,
}

impl Decision {
    /// Every v3 feature array with a short name for it (`liveness`, `face_match`, …), in
    /// Didit's order.
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

/// Paginated envelope of list endpoints (`limit`/`offset` paging, 50 rows by default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Page<T> {
    /// The number of rows matching, over all pages.
    pub count: i64,
    /// The absolute URL of the next page, `None` on the last.
    pub next: Option<String>,
    /// The absolute URL of the previous page, `None` on the first.
    pub previous: Option<String>,
    /// This page's rows.
    pub results: Vec<T>,
}

/// Filters of `GET /v3/sessions/`; `None` leaves a filter out.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SessionQuery {
    /// Only the sessions of this `vendor_data` (exact match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_data: Option<String>,
    /// Only the sessions of this workflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
    /// Only these statuses, comma-separated, spelled as Didit spells them (`Approved,Declined`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Rows per page (Didit's default 50).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Rows to skip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
}

/// A row of `GET /v3/sessions/`. Rows carry no metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionSummary {
    /// The session's id.
    pub session_id: Uuid,
    /// A sequential number per application.
    #[serde(default)]
    pub session_number: Option<i64>,
    /// The hosted link.
    #[serde(default)]
    pub session_url: Option<String>,
    /// The session's status.
    pub status: SessionStatus,
    /// The `vendor_data` the session was created with.
    #[serde(default)]
    pub vendor_data: Option<String>,
    /// When the session was created, ISO 8601 UTC.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Fields this crate does not type (some are personal data: `full_name`, `portrait_image`).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `PATCH /v3/session/{id}/update-status/` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateStatusRequest {
    /// `Approved`, `Declined` or `Resubmitted`; Didit refuses anything else.
    pub new_status: SessionStatus,
    /// A note stored on the session's review trail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// For `Resubmitted`: the steps to redo. When absent, Didit picks every attempted step
    /// that was declined, sent to review, unfinished or expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_to_resubmit: Option<Vec<NodeToResubmit>>,
    /// Whether Didit e-mails the person the outcome (or, for `Resubmitted`, the link and
    /// reasons). Needs `email_address`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_email: Option<bool>,
    /// Where that e-mail goes; required when `send_email` is true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    /// The e-mail's language, ISO 639-1 (Didit's default `en`; an unknown code falls back
    /// to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_language: Option<String>,
}

/// A step to redo, in an update-status request to `Resubmitted`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeToResubmit {
    /// The step's `node_id`, from the decision.
    pub node_id: String,
    /// The feature: `OCR`, `NFC`, `LIVENESS`, `FACE_MATCH`, `PROOF_OF_ADDRESS`, `AML`, …
    pub feature: String,
}

/// `200` of update-status: the id alone; read the decision for the new state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusUpdated {
    /// The session that changed.
    pub session_id: Uuid,
}

/// `POST /v3/blocklist/add/` body; at least one flag must be true.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlocklistAddRequest {
    /// The session whose items are blocklisted (its latest record of each kind).
    pub session_id: Uuid,
    /// Blocklist the face.
    pub blocklist_face: bool,
    /// Blocklist the identity document.
    pub blocklist_document: bool,
    /// Blocklist the phone number.
    pub blocklist_phone: bool,
    /// Blocklist the e-mail address.
    pub blocklist_email: bool,
}

/// `200` of `POST /v3/blocklist/add/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlocklistAdded {
    /// Didit's human-readable confirmation.
    #[serde(default)]
    pub message: Option<String>,
    /// Fields this crate does not type.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `POST /v3/workflows/` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreateWorkflowRequest {
    /// A name of at most 50 characters (Didit's default `ID Verification`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_label: Option<String>,
    /// The steps, in order (required); Didit refuses an impossible order, e.g. `FACE_MATCH`
    /// before `OCR`, or a passive step such as `AML` first.
    pub features: Vec<WorkflowFeature>,
    /// How many times a person may retry (0–10, Didit's default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retry_attempts: Option<u32>,
    /// Seconds before an unfinished session expires (3600–2419200, Didit's default 604800).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_expiration_time: Option<u64>,
}

/// A step of a workflow being created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkflowFeature {
    /// `OCR`, `NFC`, `LIVENESS`, `FACE_MATCH`, `PROOF_OF_ADDRESS`, `PHONE_VERIFICATION`,
    /// `EMAIL_VERIFICATION`, `DATABASE_VALIDATION`, `AML`, `IP_ANALYSIS`, `AGE_ESTIMATION`, ….
    pub feature: String,
    /// The step's settings (thresholds, methods), as Didit documents them per feature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// A workflow version, from create, list or get.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Workflow {
    /// This version's id (also accepted as a `workflow_id`).
    pub uuid: Uuid,
    /// The stable id shared by every version; see [`Workflow::stable_id`].
    #[serde(default)]
    pub workflow_id: Option<Uuid>,
    /// The workflow's name.
    #[serde(default)]
    pub workflow_label: Option<String>,
    /// Feature names joined with `" + "` (`OCR + LIVENESS`). The specification says a
    /// string and Didit's own examples show a list (of names, or of `{"feature": …}`
    /// objects): every form is read, and kept as the joined string.
    #[serde(default, deserialize_with = "features_text")]
    pub features: Option<String>,
    /// Seconds before an unfinished session expires (Didit's default 604800).
    #[serde(default)]
    pub session_expiration_time: Option<u64>,
    /// The version number.
    #[serde(default)]
    pub version: Option<i64>,
    /// `draft` or `published`.
    #[serde(default)]
    pub status: Option<String>,
    /// Fields this crate does not type (prices, retry policy, `workflow_url`, …).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Reads a workflow's `features` as a string, a list of names or a list of
/// `{"feature": …}` objects, into the `" + "`-joined string. A workflow read right after a
/// create must not fail on the form this field takes.
fn features_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    let name = |item: &Value| match item {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("feature").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    Ok(match value {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(name)
                .collect::<Vec<_>>()
                .join(" + "),
        ),
        Some(_) => None,
    })
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
    /// A name, at most 255 characters.
    pub label: String,
    /// Where deliveries go: HTTPS on a public host (Didit refuses private addresses), unique
    /// per application.
    pub url: String,
    /// The payload shape: `v3` (feature arrays) is what this crate reads.
    pub webhook_version: String,
    /// The events to deliver, at least one: `status.updated`, `data.updated`, …; no wildcard.
    pub subscribed_events: Vec<String>,
}

/// A webhook destination, from create or list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookDestination {
    /// The destination's id.
    pub uuid: Uuid,
    /// Its name.
    #[serde(default)]
    pub label: Option<String>,
    /// Where deliveries go.
    pub url: String,
    /// Whether deliveries are sent.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The payload shape (`v1`, `v2` or `v3`).
    #[serde(default)]
    pub webhook_version: Option<String>,
    /// The events delivered.
    #[serde(default)]
    pub subscribed_events: Option<Vec<String>>,
    /// Only in the create response: the HMAC secret of this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_shared_key: Option<String>,
    /// Fields this crate does not type (timestamps, delivery summary).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `GET /v3/billing/balance/`. Amounts are decimal strings in USD.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Balance {
    /// The credit left, e.g. `"1234.5600"`.
    pub balance: String,
    /// Whether Didit tops up automatically below the threshold.
    pub auto_refill_enabled: bool,
    /// The automatic top-up amount; `None` when disabled.
    #[serde(default)]
    pub auto_refill_amount: Option<String>,
    /// The balance that triggers it; `None` when disabled.
    #[serde(default)]
    pub auto_refill_threshold: Option<String>,
}

impl Balance {
    /// Whether the account has credit left (a malformed amount counts as none).
    pub fn has_credit(&self) -> bool {
        self.balance.trim().parse::<f64>().is_ok_and(|b| b > 0.0)
    }
}

/// `POST /v3/billing/top-up/` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopUpRequest {
    /// Whole US dollars, at least 50.
    pub amount_in_dollars: u64,
    /// Where the checkout page returns after payment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_url: Option<String>,
    /// Where it returns when abandoned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_url: Option<String>,
}

/// `200` of a top-up: a checkout to complete; credits arrive once it is paid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopUp {
    /// The payment provider's checkout id.
    pub checkout_session_id: String,
    /// The page where a person pays.
    pub checkout_session_url: String,
}

/// `201` of programmatic registration: a code is e-mailed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registered {
    /// Didit's confirmation text.
    #[serde(default)]
    pub message: Option<String>,
    /// The registered address.
    #[serde(default)]
    pub email: Option<String>,
    /// Fields this crate does not type.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `200` of e-mail verification: the account's applications and their keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifiedAccount {
    /// The live application.
    #[serde(default)]
    pub application: Option<Application>,
    /// The sandbox application (free, mocked sessions), in newer answers.
    #[serde(default)]
    pub sandbox_application: Option<Application>,
    /// Fields this crate does not type (`access_token`, `organization`, …).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// An application of a newly verified account, with its API key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Application {
    /// The application's id.
    #[serde(default)]
    pub uuid: Option<String>,
    /// Its client id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Its API key, for `x-api-key`: keep it secret.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Fields this crate does not type.
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
    fn a_workflow_reads_its_features_as_a_string_or_a_list() {
        let uuid = "a1b2c3d4-5678-90ab-cdef-111111111111";
        for features in [
            serde_json::json!("OCR + LIVENESS"),
            serde_json::json!(["OCR", "LIVENESS"]),
            serde_json::json!([{"feature": "OCR"}, {"feature": "LIVENESS", "config": {}}]),
        ] {
            let w: Workflow =
                serde_json::from_value(serde_json::json!({"uuid": uuid, "features": features}))
                    .expect("workflow");
            assert_eq!(w.features.as_deref(), Some("OCR + LIVENESS"));
        }
        let w: Workflow =
            serde_json::from_value(serde_json::json!({"uuid": uuid})).expect("workflow");
        assert_eq!(w.features, None);
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
