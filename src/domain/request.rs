//! The start request: what a producer asks for, validated before it is queued.
//!
//! Validation happens at the producer (a clear error to the caller) and again when a worker
//! decodes the job (a bad payload that bypassed the producer goes to the dead set with the
//! same reason), so the rules live here once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
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

    /// 1–128 characters of `[A-Za-z0-9._:-]`, starting with a letter or digit.
    ///
    /// The id travels in URLs (`status_url`), Redis values, Didit's metadata and log lines:
    /// a path separator, `..`, a quote or a control character has no business in any of
    /// them, so the set is closed rather than "anything visible".
    pub fn parse(s: &str) -> Result<Self, RequestError> {
        let safe = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
        let starts_plain = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if s.len() > 128 || !safe || !starts_plain {
            return Err(RequestError::new(
                "request_id",
                "must be 1-128 characters of letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
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

impl StartRequest {
    /// The fields a start request may carry, as producers spell them (JSON keys, intake
    /// stream fields, CSV columns).
    pub const FIELDS: [&'static str; 10] = [
        "request_id",
        "vendor_data",
        "workflow",
        "workflow_id",
        "callback",
        "language",
        "contact_details",
        "expected_details",
        "metadata",
        "sandbox_scenario",
    ];
}

/// Why a start request was refused, as `kyc_intake_rejected_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A field breaks the request's own rules.
    Invalid,
    /// `workflow` names no workflow of the deployment's settings.
    UnknownWorkflow,
    /// `sandbox_scenario` names no scenario of the sandbox the deployment talks to.
    UnknownScenario,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [
        Refusal::Invalid,
        Refusal::UnknownWorkflow,
        Refusal::UnknownScenario,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Invalid => "invalid",
            Refusal::UnknownWorkflow => "unknown_workflow",
            Refusal::UnknownScenario => "unknown_scenario",
        }
    }
}

/// A start request that cannot be accepted, naming the field. The reason names what was
/// expected, never the value given (it may be personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RequestError {
    pub field: &'static str,
    pub reason: String,
    pub refusal: Refusal,
}

impl RequestError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
            refusal: Refusal::Invalid,
        }
    }
}

/// Size limits of a start request, from settings (`intake.max_json_field_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeLimits {
    /// The largest `metadata`, `expected_details` or `contact_details`, each serialised as
    /// JSON. Didit echoes them in every webhook, and the webhook route refuses bodies over
    /// 1 MiB (413, which Didit does not retry): capped here, every webhook fits.
    pub max_json_field_bytes: usize,
}

impl IntakeLimits {
    /// The default cap: 16 KiB per field.
    pub const DEFAULT_JSON_FIELD_BYTES: usize = 16 * 1024;
    /// The highest cap settings may choose: three fields at this size plus Didit's decision
    /// (tens of KiB) stay well inside the webhook route's 1 MiB.
    pub const MAX_JSON_FIELD_BYTES: usize = 256 * 1024;
}

impl Default for IntakeLimits {
    fn default() -> Self {
        Self {
            max_json_field_bytes: Self::DEFAULT_JSON_FIELD_BYTES,
        }
    }
}

/// Checks a vendor_data (the caller's id for a person) and returns it trimmed: required, at
/// most 256 bytes, no control characters (NUL, ANSI escapes) and no bidirectional-text
/// controls (which make a value display as another in the console and in logs).
pub fn validate_vendor_data(vendor_data: &str) -> Result<&str, RequestError> {
    let vendor_data = vendor_data.trim();
    if vendor_data.is_empty() {
        return Err(RequestError::new("vendor_data", "is required"));
    }
    if vendor_data.len() > 256 {
        return Err(RequestError::new(
            "vendor_data",
            "must be at most 256 characters",
        ));
    }
    if vendor_data
        .chars()
        .any(|c| c.is_control() || is_bidi_control(c))
    {
        return Err(RequestError::new(
            "vendor_data",
            "must not contain control characters or bidirectional-text controls",
        ));
    }
    Ok(vendor_data)
}

/// Unicode's bidirectional formatting characters (marks, embeddings, overrides, isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// What a deployment can start: the workflows its settings name and, when it talks to the
/// sandbox, the sandbox's scenarios. A request naming anything else would be queued and fail
/// minutes later in a worker; checked at the door, the producer hears why at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// Sorted, so the expected names read the same every time.
    workflows: Vec<String>,
    /// `Some` only when the target is the sandbox; a real Didit account decides for itself.
    scenarios: Option<Vec<String>>,
}

impl Admission {
    pub fn new(
        workflows: impl IntoIterator<Item = String>,
        sandbox_scenarios: Option<Vec<String>>,
    ) -> Self {
        let mut workflows: Vec<String> = workflows.into_iter().collect();
        workflows.sort();
        Self {
            workflows,
            scenarios: sandbox_scenarios,
        }
    }

    /// Refuses a request naming a workflow or a sandbox scenario this deployment lacks.
    pub fn check(&self, request: &StartRequest) -> Result<(), RequestError> {
        match self.refusals(request) {
            refusals if refusals.is_empty() => Ok(()),
            refusals => Err(first_problem(refusals)),
        }
    }

    /// Every reason [`Admission::check`] would give.
    pub fn refusals(&self, request: &StartRequest) -> Vec<RequestError> {
        let mut refusals = Vec::new();
        if let Some(name) = &request.workflow {
            if !self.workflows.contains(name) {
                let reason = if self.workflows.is_empty() {
                    "not a workflow of this deployment: its settings name none ([workflows]); \
                     give workflow_id or leave both out for the default workflow"
                        .to_owned()
                } else {
                    format!(
                        "not a workflow of this deployment; expected {} ([workflows] in settings)",
                        one_of(&self.workflows)
                    )
                };
                refusals.push(RequestError {
                    field: "workflow",
                    reason,
                    refusal: Refusal::UnknownWorkflow,
                });
            }
        }
        if let (Some(scenario), Some(known)) = (&request.sandbox_scenario, &self.scenarios) {
            if !known.contains(scenario) {
                refusals.push(RequestError {
                    field: "sandbox_scenario",
                    reason: format!("not a sandbox scenario; expected {}", one_of(known)),
                    refusal: Refusal::UnknownScenario,
                });
            }
        }
        refusals
    }
}

/// `` `a` `` or `` one of `a`, `b`, … `` (serde's wording, which `redact_values` keeps).
fn one_of(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

impl StartRequest {
    /// Checks the request with the default [`IntakeLimits`] and fills in a generated request
    /// id when it has none; the first problem found when there are several.
    pub fn validate(self) -> Result<(RequestId, StartRequest), RequestError> {
        self.validate_with(&IntakeLimits::default())
    }

    /// As [`StartRequest::validate`], with the deployment's limits.
    pub fn validate_with(
        self,
        limits: &IntakeLimits,
    ) -> Result<(RequestId, StartRequest), RequestError> {
        self.validate_all(limits).map_err(first_problem)
    }

    /// As [`StartRequest::validate_with`], but names every field at fault (a batch lists
    /// them all at once).
    pub fn validate_all(
        mut self,
        limits: &IntakeLimits,
    ) -> Result<(RequestId, StartRequest), Vec<RequestError>> {
        let mut errors = Vec::new();
        let id = match self.request_id.as_deref() {
            Some(id) => RequestId::parse(id).map_err(|e| errors.push(e)).ok(),
            None => Some(RequestId::generate()),
        };
        if let Err(e) = validate_vendor_data(&self.vendor_data) {
            errors.push(e);
        }
        errors.extend(self.oversized(limits));
        if self.workflow.is_some() && self.workflow_id.is_some() {
            errors.push(RequestError::new(
                "workflow",
                "give either workflow or workflow_id, not both",
            ));
        }
        if let Some(callback) = &self.callback {
            if let Err(e) = url::Url::parse(callback) {
                errors.push(RequestError::new("callback", format!("not a URL: {e}")));
            }
        }
        if let Some(language) = &self.language {
            let ok = (2..=5).contains(&language.len())
                && language
                    .chars()
                    .all(|c| c.is_ascii_alphabetic() || c == '-');
            if !ok {
                errors.push(RequestError::new(
                    "language",
                    "expected an ISO 639-1 code such as en or pt-BR",
                ));
            }
        }
        if let Some(metadata) = &self.metadata {
            if !metadata.is_object() {
                errors.push(RequestError::new("metadata", "must be a JSON object"));
            }
        }
        match id {
            Some(id) if errors.is_empty() => {
                self.request_id = Some(id.as_str().to_owned());
                Ok((id, self))
            }
            _ => Err(errors),
        }
    }

    /// The JSON fields larger than the limits allow, each named.
    fn oversized(&self, limits: &IntakeLimits) -> Vec<RequestError> {
        let sizes = [
            ("metadata", json_size(&self.metadata)),
            ("expected_details", json_size(&self.expected_details)),
            ("contact_details", json_size(&self.contact_details)),
        ];
        sizes
            .into_iter()
            .filter(|(_, size)| *size > limits.max_json_field_bytes)
            .map(|(field, size)| {
                RequestError::new(
                    field,
                    format!(
                        "is {size} bytes as JSON; at most {} are accepted (Didit echoes it in every webhook)",
                        limits.max_json_field_bytes
                    ),
                )
            })
            .collect()
    }

    /// What identifies this request's content, apart from its id: a digest per field that
    /// is set. The same request sent again has the same fingerprint; a request id reused
    /// for another body does not, and [`RequestFingerprint::differing`] names the fields.
    pub fn fingerprint(&self) -> RequestFingerprint {
        let mut fields = BTreeMap::new();
        let mut add = |name: &'static str, value: Option<Value>| {
            if let Some(value) = value.filter(|v| !v.is_null()) {
                let mut canonical = String::new();
                write_canonical(&value, &mut canonical);
                let digest = Sha256::digest(canonical.as_bytes());
                fields.insert(name, hex::encode(&digest[..12]));
            }
        };
        add("vendor_data", Some(Value::from(self.vendor_data.trim())));
        add("workflow", self.workflow.clone().map(Value::from));
        add(
            "workflow_id",
            self.workflow_id.map(|w| Value::from(w.to_string())),
        );
        add("callback", self.callback.clone().map(Value::from));
        add("language", self.language.clone().map(Value::from));
        add("contact_details", to_value(&self.contact_details));
        add("expected_details", to_value(&self.expected_details));
        add("metadata", self.metadata.clone());
        add(
            "sandbox_scenario",
            self.sandbox_scenario.clone().map(Value::from),
        );
        RequestFingerprint(fields)
    }
}

fn to_value<T: Serialize>(value: &Option<T>) -> Option<Value> {
    value.as_ref().and_then(|v| serde_json::to_value(v).ok())
}

fn json_size<T: Serialize>(value: &Option<T>) -> usize {
    value
        .as_ref()
        .and_then(|v| serde_json::to_vec(v).ok())
        .map_or(0, |v| v.len())
}

/// Compact JSON with object keys sorted at every level, so two bodies that differ only in
/// key order fingerprint alike.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Per-field digests of a start request's content (no values: it is stored in the
/// request record and compared when the request id comes again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFingerprint(BTreeMap<&'static str, String>);

impl RequestFingerprint {
    /// The stored form: a JSON object, keys sorted, so equal fingerprints are equal text.
    pub fn encode(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    /// The fields in which a recorded fingerprint differs from this one. A record written
    /// before fingerprints existed (`None`) can only have differed in its vendor_data.
    pub fn differing(&self, recorded: Option<&str>) -> Vec<&'static str> {
        let Some(recorded) = recorded else {
            return vec!["vendor_data"];
        };
        let recorded: BTreeMap<String, String> = serde_json::from_str(recorded).unwrap_or_default();
        let mut names: Vec<&'static str> = self
            .0
            .iter()
            .filter(|(name, digest)| recorded.get(**name) != Some(*digest))
            .map(|(name, _)| *name)
            .collect();
        // Every field but the id itself may be covered.
        for name in recorded.keys() {
            if let Some(known) = StartRequest::FIELDS
                .iter()
                .find(|f| **f == name && **f != "request_id")
            {
                if !self.0.contains_key(known) {
                    names.push(known);
                }
            }
        }
        names.sort_unstable();
        names
    }
}

/// The first of a non-empty list of problems (every caller passes one).
pub fn first_problem(errors: Vec<RequestError>) -> RequestError {
    errors
        .into_iter()
        .next()
        .unwrap_or_else(|| RequestError::new("request", "is invalid"))
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
    fn request_ids_are_limited_to_a_safe_set() {
        for ok in [
            "r-1",
            "chaos-req-0001",
            "intake-1700000000000-0",
            "a.b:c_d",
            "7",
        ] {
            assert!(RequestId::parse(ok).is_ok(), "{ok}");
        }
        let too_long = "a".repeat(129);
        for bad in [
            "",
            "../../x",
            "..",
            ".hidden",
            "a/b",
            "a?b",
            "a%2e",
            "quote\"",
            "tab\t",
            too_long.as_str(),
        ] {
            assert_eq!(
                RequestId::parse(bad).expect_err(bad).field,
                "request_id",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn vendor_data_with_control_or_bidi_characters_is_refused() {
        for bad in [
            "a\0b",
            "\u{1b}[31mred",
            "user\u{202E}evil",
            "x\u{2066}y",
            "a\u{85}b",
        ] {
            assert_eq!(
                validate_vendor_data(bad).expect_err(bad).field,
                "vendor_data"
            );
        }
        assert_eq!(validate_vendor_data("  José-1 ").expect("plain"), "José-1");
    }

    #[test]
    fn json_fields_over_the_cap_are_refused_by_name() {
        let limits = IntakeLimits {
            max_json_field_bytes: 64,
        };
        let big = Value::from("x".repeat(100));
        let metadata = StartRequest {
            vendor_data: "u".into(),
            metadata: Some(serde_json::json!({ "k": big })),
            ..Default::default()
        };
        assert_eq!(
            metadata
                .clone()
                .validate_with(&limits)
                .expect_err("big")
                .field,
            "metadata"
        );
        assert!(metadata.validate().is_ok(), "16 KiB by default");
        let expected = StartRequest {
            vendor_data: "u".into(),
            expected_details: Some(ExpectedDetails {
                first_name: Some("x".repeat(100)),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            expected.validate_with(&limits).expect_err("big").field,
            "expected_details"
        );
        let contact = StartRequest {
            vendor_data: "u".into(),
            contact_details: Some(ContactDetails {
                email: Some(format!("{}@example.com", "x".repeat(100))),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            contact.validate_with(&limits).expect_err("big").field,
            "contact_details"
        );
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
    fn validate_all_names_every_field_at_fault() {
        let errors = StartRequest {
            request_id: Some("has space".into()),
            language: Some("english!".into()),
            metadata: Some(Value::from(3)),
            ..Default::default()
        }
        .validate_all(&IntakeLimits::default())
        .expect_err("four problems");
        let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["request_id", "vendor_data", "language", "metadata"]
        );
    }

    #[test]
    fn fingerprints_name_the_fields_that_differ_and_ignore_key_order() {
        let alice = StartRequest {
            request_id: Some("idem-1".into()),
            vendor_data: "alice".into(),
            metadata: Some(serde_json::json!({"a": 1, "b": [1, {"y": 2, "x": 1}]})),
            ..Default::default()
        };
        let same = StartRequest {
            request_id: None,
            vendor_data: " alice ".into(),
            metadata: Some(serde_json::json!({"b": [1, {"x": 1, "y": 2}], "a": 1})),
            ..Default::default()
        };
        let recorded = alice.fingerprint().encode();
        assert_eq!(same.fingerprint().encode(), recorded);
        assert!(same.fingerprint().differing(Some(&recorded)).is_empty());
        let bob = StartRequest {
            vendor_data: "bob".into(),
            sandbox_scenario: Some("approve".into()),
            ..alice.clone()
        };
        assert_ne!(bob.fingerprint().encode(), recorded);
        assert_eq!(
            bob.fingerprint().differing(Some(&recorded)),
            vec!["sandbox_scenario", "vendor_data"]
        );
        let no_metadata = StartRequest {
            metadata: None,
            ..alice
        };
        assert_eq!(
            no_metadata.fingerprint().differing(Some(&recorded)),
            vec!["metadata"]
        );
        assert_eq!(bob.fingerprint().differing(None), vec!["vendor_data"]);
    }

    #[test]
    fn the_field_list_is_the_one_serde_reads() {
        let full = StartRequest {
            request_id: Some("r".into()),
            vendor_data: "u".into(),
            workflow: Some("w".into()),
            workflow_id: Some(Uuid::nil()),
            callback: Some("https://example.com".into()),
            language: Some("en".into()),
            contact_details: Some(Default::default()),
            expected_details: Some(Default::default()),
            metadata: Some(Value::Object(Default::default())),
            sandbox_scenario: Some("approve".into()),
        };
        let json = serde_json::to_value(&full).expect("serialises");
        let keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = StartRequest::FIELDS.to_vec();
        fields.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, fields);
    }

    #[test]
    fn admission_refuses_unknown_workflows_and_sandbox_scenarios_naming_the_expected() {
        let sandbox = Admission::new(
            ["premium".to_owned(), "basic".to_owned()],
            Some(vec!["approve".to_owned(), "expire".to_owned()]),
        );
        let asking = |workflow: Option<&str>, scenario: Option<&str>| StartRequest {
            vendor_data: "u".into(),
            workflow: workflow.map(Into::into),
            sandbox_scenario: scenario.map(Into::into),
            ..Default::default()
        };
        assert_eq!(
            sandbox.check(&asking(Some("premium"), Some("expire"))),
            Ok(())
        );
        let e = sandbox
            .check(&asking(Some("gold"), None))
            .expect_err("unknown workflow");
        assert_eq!((e.field, e.refusal), ("workflow", Refusal::UnknownWorkflow));
        assert!(e.reason.contains("one of `basic`, `premium`"), "{e}");
        assert!(!e.reason.contains("gold"), "the value is not repeated: {e}");
        let e = sandbox
            .check(&asking(None, Some("approve_everyone")))
            .expect_err("unknown scenario");
        assert_eq!(
            (e.field, e.refusal),
            ("sandbox_scenario", Refusal::UnknownScenario)
        );
        assert!(e.reason.contains("`approve`, `expire`"), "{e}");

        // Against Didit itself the scenario is Didit's business; no workflows named: any
        // name is refused, and the reason says there are none.
        let didit = Admission::new([], None);
        assert_eq!(didit.check(&asking(None, Some("anything"))), Ok(()));
        let e = didit
            .check(&asking(Some("premium"), None))
            .expect_err("no workflows");
        assert!(e.reason.contains("name none"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<StartRequest>(r#"{"vendor_data":"u","vendor_dta":"x"}"#)
            .expect_err("typo");
        assert!(err.to_string().contains("vendor_dta"));
    }
}
