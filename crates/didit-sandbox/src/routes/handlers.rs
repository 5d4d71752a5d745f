//! One function per Didit endpoint, called with the state locked after auth and rate limits
//! passed. Validation messages are Didit's (DRF's) own wording, field errors are collected
//! and reported together as DRF does.

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine;
use rand::Rng;
use serde_json::{json, Map, Value};
use url::Url;
use uuid::Uuid;

use super::{detail, json_response, not_found, Op, Refusal, Request};
use didit::SessionStatus;

use crate::{
    scenarios::Scenario,
    state::{
        rfc3339, Destination, Inner, NewSession, Workflow, DEFAULT_EXPIRATION_S, MAX_EXPIRATION_S,
    },
    DeleteStatus, SameStatus, DEFAULT_API_KEY, EMAIL_CODE,
};

const LANGUAGES: &[&str] = &[
    "en", "ar", "bg", "bn", "bs", "ca", "cnr", "cs", "da", "de", "el", "es", "et", "fa", "fi",
    "fr", "he", "hi", "hr", "hu", "hy", "id", "it", "ja", "ka", "kk", "ko", "ky", "lt", "lv", "mk",
    "mn", "ms", "nl", "no", "pl", "pt-BR", "pt", "ro", "ru", "sk", "sl", "so", "sq", "sr", "sv",
    "th", "tr", "uk", "uz", "vi", "zh-CN", "zh-TW", "zh",
];

const WORKFLOW_FEATURES: &[&str] = &[
    "OCR",
    "NFC",
    "LIVENESS",
    "FACE_MATCH",
    "PROOF_OF_ADDRESS",
    "QUESTIONNAIRE",
    "DOCUMENT_AI",
    "PHONE_VERIFICATION",
    "EMAIL_VERIFICATION",
    "DATABASE_VALIDATION",
    "AML",
    "IP_ANALYSIS",
    "AGE_ESTIMATION",
    "KYB_REGISTRY",
    "KYB_DOCUMENTS",
    "KYB_KEY_PEOPLE",
];

const WORKFLOW_KEYS: &[&str] = &[
    "workflow_label",
    "is_default",
    "status",
    "features",
    "is_white_label_enabled",
    "is_desktop_allowed",
    "max_retry_attempts",
    "retry_window_days",
    "face_liveness_max_attempts",
    "face_match_max_attempts",
    "session_expiration_time",
];

const WEBHOOK_EVENTS: &[&str] = &[
    "status.updated",
    "data.updated",
    "user.status.updated",
    "user.data.updated",
    "business.status.updated",
    "business.data.updated",
    "activity.created",
    "transaction.created",
    "transaction.status.updated",
    "travel_rule.status.updated",
];

const RESUBMIT_FEATURES: &[&str] = &[
    "OCR",
    "OCR_BACK",
    "NFC",
    "AML",
    "FACE",
    "LIVENESS",
    "FACE_MATCH",
    "IP_ANALYSIS",
    "AGE_ESTIMATION",
    "PROOF_OF_ADDRESS",
    "PHONE_VERIFICATION",
    "EMAIL_VERIFICATION",
    "FACE_SEARCH",
    "DATABASE_VALIDATION",
    "QUESTIONNAIRE",
    "DOCUMENT_AI",
    "KYB_DOCUMENTS",
    "ID_VERIFICATION",
    "POA",
    "PHONE",
    "EMAIL",
    "KYB_REGISTRY",
    "KYB_KEY_PEOPLE",
    "KYB",
];

pub fn call(inner: &mut Inner, op: Op, request: &Request<'_>) -> Response {
    let result = match op {
        Op::CreateSession => create_session(inner, request),
        Op::Decision(id) => Ok(decision(inner, id)),
        Op::ListSessions => Ok(list_sessions(inner, request)),
        Op::UpdateStatus(id) => update_status(inner, id, request),
        Op::BlocklistAdd => blocklist_add(inner, request),
        Op::GeneratePdf(id) => Ok(generate_pdf(inner, id)),
        Op::DeleteSession(id) => Ok(delete_session(inner, id)),
        Op::CreateWorkflow => create_workflow(inner, request),
        Op::ListWorkflows => Ok(list_workflows(inner)),
        Op::GetWorkflow(id) => Ok(inner
            .workflow(id)
            .map_or_else(not_found, |w| json_response(StatusCode::OK, w.to_json()))),
        Op::UpdateWorkflow(id) => update_workflow(inner, id, request),
        Op::CreateDestination => create_destination(inner, request),
        Op::ListDestinations => Ok(json_response(
            StatusCode::OK,
            Value::Array(
                inner
                    .destinations
                    .iter()
                    .map(Destination::to_json)
                    .collect(),
            ),
        )),
        Op::Balance => Ok(json_response(
            StatusCode::OK,
            json!({
                "balance": format!("{:.4}", inner.balance),
                "auto_refill_enabled": false,
                "auto_refill_amount": null,
                "auto_refill_threshold": null,
            }),
        )),
        Op::TopUp => top_up(inner, request),
        Op::Register => register(inner, request),
        Op::VerifyEmail => verify_email(inner, request),
        Op::Stats | Op::Calls | Op::Control => Ok(not_found()),
    };
    result.unwrap_or_else(|refusal| *refusal)
}

/// DRF field errors, collected over a whole body.
#[derive(Default)]
struct FieldErrors(Map<String, Value>);

impl FieldErrors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.insert(field.to_owned(), json!([message.into()]));
    }

    /// A business-rule failure: Didit writes these as a plain string.
    fn add_plain(&mut self, field: &str, message: impl Into<String>) {
        self.0.insert(field.to_owned(), json!(message.into()));
    }

    fn into_result(self) -> Result<(), Refusal> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Box::new(json_response(
                StatusCode::BAD_REQUEST,
                Value::Object(self.0),
            )))
        }
    }
}

fn choice_error(value: &Value) -> String {
    let shown = value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned);
    format!("\"{shown}\" is not a valid choice.")
}

/// An optional string field: absent and `null` are `None`.
fn opt_string(body: &Value, field: &str, errors: &mut FieldErrors) -> Option<String> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.add(field, "Not a valid string.");
            None
        }
    }
}

fn opt_object(body: &Value, field: &str, errors: &mut FieldErrors) -> Value {
    match body.get(field) {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            errors.add(field, "Expected a dictionary of items.");
            Value::Null
        }
    }
}

fn create_session(inner: &mut Inner, request: &Request<'_>) -> Result<Response, Refusal> {
    let body = request.json()?;
    let mut errors = FieldErrors::default();
    let workflow_id = match body.get("workflow_id") {
        None | Some(Value::Null) => {
            errors.add("workflow_id", "This field is required.");
            None
        }
        Some(v) => match v.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(id) => Some(id),
            None => {
                errors.add("workflow_id", "Must be a valid UUID.");
                None
            }
        },
    };
    let vendor_data = opt_string(&body, "vendor_data", &mut errors);
    let callback = opt_string(&body, "callback", &mut errors);
    if callback.as_deref().is_some_and(|c| Url::parse(c).is_err()) {
        errors.add("callback", "Enter a valid URL.");
    }
    if let Some(method) = opt_string(&body, "callback_method", &mut errors) {
        if !["initiator", "completer", "both"].contains(&method.as_str()) {
            errors.add("callback_method", choice_error(&json!(method)));
        }
    }
    let language = opt_string(&body, "language", &mut errors);
    if let Some(lang) = &language {
        if !LANGUAGES.contains(&lang.as_str()) {
            errors.add("language", choice_error(&json!(lang)));
        }
    }
    let scenario = match body.get("sandbox_scenario") {
        None | Some(Value::Null) => Some(Scenario::Approve),
        Some(v) => {
            let parsed = v.as_str().and_then(Scenario::parse);
            if parsed.is_none() {
                errors.add("sandbox_scenario", choice_error(v));
            }
            parsed
        }
    };
    let expected_details = opt_object(&body, "expected_details", &mut errors);
    let contact_details = opt_object(&body, "contact_details", &mut errors);
    if let Some(id) = workflow_id {
        if inner.version_for(id).is_none() {
            errors.add_plain("workflow_id", "Invalid workflow_id.");
        }
    }
    errors.into_result()?;
    let (Some(workflow_id), Some(scenario)) = (workflow_id, scenario) else {
        return Err(Box::new(detail(
            StatusCode::BAD_REQUEST,
            "Invalid request.",
        )));
    };
    if inner.balance <= 0.0 {
        return Err(Box::new(detail(
            StatusCode::BAD_REQUEST,
            "You don't have enough credits to perform this request. Please top up at https://business.didit.me",
        )));
    }
    let (id, _) = inner.create_session(NewSession {
        workflow_id,
        vendor_data,
        metadata: body.get("metadata").cloned().unwrap_or(Value::Null),
        callback,
        language,
        expected_details,
        contact_details,
        scenario,
    });
    let Some(s) = inner.sessions.get(&id) else {
        return Err(Box::new(not_found()));
    };
    Ok(json_response(
        StatusCode::CREATED,
        json!({
            "session_id": s.id,
            "session_number": s.number,
            "session_token": s.token,
            "url": s.url,
            "vendor_data": s.vendor_data,
            "metadata": s.metadata,
            "status": s.status.as_str(),
            "workflow_id": s.workflow_id,
            "workflow_version": s.workflow_version,
            "callback": s.callback,
            "session_kind": "user",
        }),
    ))
}

fn decision(inner: &Inner, id: Uuid) -> Response {
    match inner.sessions.get(&id) {
        Some(session) => json_response(StatusCode::OK, inner.decision_json(session)),
        None => not_found(),
    }
}

fn list_sessions(inner: &Inner, request: &Request<'_>) -> Response {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(request.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let list = |name: &str| -> Option<Vec<&str>> {
        param(name).map(|v| v.split(',').map(str::trim).collect())
    };
    let limit = param("limit")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(50);
    let offset = param("offset")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let vendor = param("vendor_data");
    let workflows = list("workflow_id");
    let statuses = list("status");
    let mut rows: Vec<_> = inner
        .sessions
        .values()
        .filter(|s| vendor.is_none_or(|v| s.vendor_data.as_deref() == Some(v)))
        .filter(|s| {
            workflows
                .as_ref()
                .is_none_or(|w| w.contains(&s.workflow_id.to_string().as_str()))
        })
        .filter(|s| {
            statuses
                .as_ref()
                .is_none_or(|st| st.contains(&s.status.as_str()))
        })
        .collect();
    rows.sort_by_key(|s| std::cmp::Reverse(s.number));
    let count = rows.len();
    let page: Vec<Value> = rows
        .iter()
        .skip(offset)
        .take(limit)
        .map(|s| s.row_json())
        .collect();
    let link = |new_offset: usize| {
        let mut url = Url::parse(&format!("{}/v3/sessions/", request.origin()))
            .unwrap_or_else(|_| Url::parse("http://127.0.0.1/v3/sessions/").expect("valid URL"));
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query.iter().filter(|(k, _)| k != "limit" && k != "offset") {
                pairs.append_pair(k, v);
            }
            pairs.append_pair("limit", &limit.to_string());
            if new_offset > 0 {
                pairs.append_pair("offset", &new_offset.to_string());
            }
        }
        url.to_string()
    };
    let next = (offset.saturating_add(limit) < count).then(|| link(offset.saturating_add(limit)));
    let previous = (offset > 0).then(|| link(offset.saturating_sub(limit)));
    json_response(
        StatusCode::OK,
        json!({"count": count, "next": next, "previous": previous, "results": page}),
    )
}

/// The decision array a resubmittable feature lives in, and the feature Didit names it by.
fn section_of(feature: &str) -> Option<&'static str> {
    Some(match feature {
        "OCR" | "OCR_BACK" | "ID_VERIFICATION" => "id_verifications",
        "LIVENESS" | "FACE" => "liveness_checks",
        "FACE_MATCH" => "face_matches",
        "AML" => "aml_screenings",
        "IP_ANALYSIS" => "ip_analyses",
        _ => return None,
    })
}

fn update_status(inner: &mut Inner, id: Uuid, request: &Request<'_>) -> Result<Response, Refusal> {
    let Some(current) = inner.sessions.get(&id).map(|s| s.status.clone()) else {
        return Err(Box::new(not_found()));
    };
    // Didit checks the current status before it looks at the body.
    if !current.accepts_status_update() {
        return Err(Box::new(detail(
            StatusCode::BAD_REQUEST,
            &format!(
                "Only sessions with status Approved, Declined, In Review, Kyc Expired, Abandoned, Resubmitted can be updated. Current status: {current}"
            ),
        )));
    }
    let body = request.json()?;
    let mut errors = FieldErrors::default();
    let new_status = match body.get("new_status") {
        None | Some(Value::Null) => {
            errors.add("new_status", "This field is required.");
            None
        }
        Some(v) => match v.as_str().map(SessionStatus::parse) {
            Some(
                s
                @ (SessionStatus::Approved | SessionStatus::Declined | SessionStatus::Resubmitted),
            ) => Some(s),
            Some(SessionStatus::Unknown(_)) | None => {
                errors.add("new_status", choice_error(v));
                None
            }
            Some(_) => {
                errors.add(
                    "new_status",
                    "You can only update the status to 'Approved', 'Declined', or 'Resubmitted'.",
                );
                None
            }
        },
    };
    let comment = opt_string(&body, "comment", &mut errors);
    let send_email = match body.get("send_email") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.add("send_email", "Must be a valid boolean.");
            false
        }
    };
    let email_address = opt_string(&body, "email_address", &mut errors);
    if email_address.as_deref().is_some_and(|a| !a.contains('@')) {
        errors.add("email_address", "Enter a valid email address.");
    }
    if send_email && email_address.is_none() {
        errors.add(
            "email_address",
            "Email address is required when send_email is true.",
        );
    }
    // Unknown codes fall back to English, as at Didit.
    let email_language = opt_string(&body, "email_language", &mut errors)
        .filter(|l| LANGUAGES.contains(&l.as_str()))
        .unwrap_or_else(|| "en".to_owned());
    let mut nodes: Option<Vec<Value>> = None;
    match body.get("nodes_to_resubmit") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let mut item_errors = Vec::new();
            let mut picked = Vec::new();
            let mut kyb = Vec::new();
            for item in items {
                let feature = item.get("feature").cloned().unwrap_or(Value::Null);
                let node_id = item.get("node_id").and_then(Value::as_str);
                let mut e = Map::new();
                match feature.as_str() {
                    Some(f) if RESUBMIT_FEATURES.contains(&f) => {
                        if f.starts_with("KYB") {
                            kyb.push(f.to_owned());
                        }
                    }
                    Some(_) => {
                        e.insert("feature".into(), json!([choice_error(&feature)]));
                    }
                    None => {
                        e.insert("feature".into(), json!(["This field is required."]));
                    }
                }
                if node_id.is_none() {
                    e.insert("node_id".into(), json!(["This field is required."]));
                }
                if e.is_empty() {
                    picked.push(json!({
                        "node_id": node_id,
                        "feature": feature,
                        "section": feature.as_str().and_then(section_of),
                    }));
                }
                item_errors.push(Value::Object(e));
            }
            if item_errors
                .iter()
                .any(|e| e.as_object().is_some_and(|m| !m.is_empty()))
            {
                errors
                    .0
                    .insert("nodes_to_resubmit".into(), Value::Array(item_errors));
            } else if !kyb.is_empty() {
                errors.add_plain(
                    "nodes_to_resubmit",
                    format!(
                        "The following features cannot be resubmitted directly: {}. Resubmit the relevant child KYC sessions instead; the parent will recompute automatically.",
                        kyb.join(", ")
                    ),
                );
            } else {
                nodes = Some(picked);
            }
        }
        Some(_) => errors.add("nodes_to_resubmit", "Expected a list of items."),
    }
    errors.into_result()?;
    let Some(new_status) = new_status else {
        return Err(Box::new(detail(
            StatusCode::BAD_REQUEST,
            "Invalid request.",
        )));
    };
    if new_status == current {
        if new_status == SessionStatus::Resubmitted
            || inner.contested.same_status == SameStatus::BadRequest
        {
            return Err(Box::new(json_response(
                StatusCode::BAD_REQUEST,
                json!(["The new status is the same as the current status."]),
            )));
        }
        // Re-approving an approved session (or re-declining) changes nothing, sends nothing.
        return Ok(json_response(StatusCode::OK, json!({"session_id": id})));
    }
    if new_status == SessionStatus::Resubmitted {
        let Some(session) = inner.sessions.get(&id) else {
            return Err(Box::new(not_found()));
        };
        let nodes = nodes.unwrap_or_else(|| {
            [
                ("id_verifications", "OCR"),
                ("liveness_checks", "LIVENESS"),
                ("face_matches", "FACE_MATCH"),
                ("aml_screenings", "AML"),
            ]
            .into_iter()
            .filter_map(|(section, feature)| {
                let item = session.sections.get(section)?.get(0)?;
                let status = item["status"].as_str()?;
                ["Declined", "In Review", "Not Finished", "Expired"]
                    .contains(&status)
                    .then(|| json!({"node_id": item["node_id"], "feature": feature, "section": section}))
            })
            .collect()
        });
        if nodes.is_empty() {
            return Err(Box::new(json_response(
                StatusCode::BAD_REQUEST,
                json!({"nodes_to_resubmit": "No features found that need resubmission. All features are already approved."}),
            )));
        }
        if let Some(session) = inner.sessions.get_mut(&id) {
            session.resubmitted_nodes = nodes;
            // The user redoes the steps and gets them right this time.
            session.scenario = Scenario::Approve;
        }
    }
    let review = json!({
        "user": "API Client",
        "new_status": new_status.as_str(),
        "comment": comment.unwrap_or_default(),
        "created_at": rfc3339(inner.now()),
    });
    if send_email {
        inner.stats.emails.push(json!({
            "session_id": id,
            "status": new_status.as_str(),
            "email_address": email_address,
            "email_language": email_language,
        }));
    }
    inner.set_status(id, new_status, Some(review));
    Ok(json_response(StatusCode::OK, json!({"session_id": id})))
}

fn blocklist_add(inner: &mut Inner, request: &Request<'_>) -> Result<Response, Refusal> {
    let body = request.json()?;
    let mut errors = FieldErrors::default();
    let session_id = match body.get("session_id") {
        None | Some(Value::Null) => {
            errors.add("session_id", "This field is required.");
            None
        }
        Some(v) => {
            let id = v.as_str().and_then(|s| Uuid::parse_str(s).ok());
            if id.is_none() {
                errors.add("session_id", "Must be a valid UUID.");
            }
            id
        }
    };
    let mut flags = Map::new();
    for (field, name) in [
        ("blocklist_face", "face"),
        ("blocklist_document", "document"),
        ("blocklist_phone", "phone"),
        ("blocklist_email", "email"),
    ] {
        match body.get(field) {
            None | Some(Value::Null) => {
                flags.insert(name.into(), json!(false));
            }
            Some(Value::Bool(b)) => {
                flags.insert(name.into(), json!(b));
            }
            Some(_) => errors.add(field, "Must be a valid boolean."),
        }
    }
    errors.into_result()?;
    let Some(session_id) = session_id else {
        return Err(Box::new(detail(
            StatusCode::BAD_REQUEST,
            "Invalid request.",
        )));
    };
    if !flags.values().any(|v| v == &json!(true)) {
        return Err(Box::new(json_response(
            StatusCode::BAD_REQUEST,
            json!({"non_field_errors": ["At least one of blocklist_face, blocklist_document, blocklist_phone or blocklist_email must be true."]}),
        )));
    }
    let Some(session) = inner.sessions.get(&session_id) else {
        return Err(Box::new(not_found()));
    };
    if flags["face"] == json!(true) || flags["document"] == json!(true) {
        if let Some(vendor) = session.vendor_data.clone() {
            inner.blocklisted_vendors.insert(vendor);
        }
    }
    Ok(json_response(
        StatusCode::OK,
        json!({
            "message": "The selected items of the session were added to the blocklist.",
            "session_id": session_id,
            "blocklisted": flags,
        }),
    ))
}

/// Didit's soft delete: later calls for the session answer 404.
fn delete_session(inner: &mut Inner, id: Uuid) -> Response {
    let Some(session) = inner.remove_session(id) else {
        return not_found();
    };
    match inner.contested.delete {
        DeleteStatus::NoContent => StatusCode::NO_CONTENT.into_response(),
        DeleteStatus::Ok => json_response(
            StatusCode::OK,
            json!({
                "session_id": id,
                "session_number": session.number,
                "face_retention_outcome": "none",
                "biometric_template_uuid": null,
            }),
        ),
    }
}

fn generate_pdf(inner: &Inner, id: Uuid) -> Response {
    let Some(session) = inner.sessions.get(&id) else {
        return not_found();
    };
    if !session.status.has_report() {
        return detail(
            StatusCode::FORBIDDEN,
            "You can only generate a PDF for sessions in review, declined, approved or kyc expired",
        );
    }
    let text = format!("Didit sandbox session {id}: {}", session.status);
    let stream = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
    let pdf = format!(
        "%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n\
         2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n\
         3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >> endobj\n\
         4 0 obj << /Length {} >> stream\n{stream}\nendstream endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        stream.len()
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/pdf".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=session_{id}.pdf"),
            ),
        ],
        pdf,
    )
        .into_response()
}

fn create_workflow(inner: &mut Inner, request: &Request<'_>) -> Result<Response, Refusal> {
    let body = request.json()?;
    let mut errors = FieldErrors::default();
    let fields = workflow_fields(inner, &body, &mut errors);
    if body.get("features").is_none_or(Value::is_null) {
        errors.add("features", "This field is required.");
    }
    errors.into_result()?;
    let mut workflow = Workflow::new(
        Uuid::new_v4(),
        &fields.label.unwrap_or_else(|| "ID Verification".to_owned()),
        fields.features.unwrap_or_default(),
        fields.expiration.unwrap_or(DEFAULT_EXPIRATION_S),
        inner.now(),
    );
    workflow.max_retry_attempts = fields.retries.unwrap_or(3);
    let json = workflow.to_json();
    inner.workflows.push(workflow);
    Ok(json_response(StatusCode::CREATED, json))
}

/// The settings a create or update body sets; `None` where it says nothing.
struct WorkflowFields {
    label: Option<String>,
    features: Option<Vec<String>>,
    expiration: Option<u64>,
    retries: Option<u64>,
    status: Option<String>,
}

/// Reads a workflow body against Didit's strict whitelist, collecting field errors.
fn workflow_fields(inner: &Inner, body: &Value, errors: &mut FieldErrors) -> WorkflowFields {
    if let Some(map) = body.as_object() {
        for key in map.keys().filter(|k| !WORKFLOW_KEYS.contains(&k.as_str())) {
            errors.add(key, "This field is not allowed.");
        }
    }
    let label = opt_string(body, "workflow_label", errors);
    if label.as_ref().is_some_and(|l| l.chars().count() > 50) {
        errors.add(
            "workflow_label",
            "Ensure this field has no more than 50 characters.",
        );
    }
    let features = match body.get("features") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.is_empty() => {
            errors.add("features", "Ensure this field has at least 1 elements.");
            None
        }
        Some(Value::Array(items)) => {
            let mut features = Vec::new();
            for item in items {
                match item.get("feature").and_then(Value::as_str) {
                    Some(f) if WORKFLOW_FEATURES.contains(&f) => features.push(f.to_owned()),
                    _ => {
                        let f = item.get("feature").cloned().unwrap_or(Value::Null);
                        errors
                            .0
                            .insert("features".into(), json!([{"feature": [choice_error(&f)]}]));
                    }
                }
            }
            Some(features)
        }
        Some(_) => {
            errors.add("features", "Expected a list of items.");
            None
        }
    };
    let min = inner.min_expiration.as_secs().max(1);
    let expiration = match body.get("session_expiration_time") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(s) if s < min => {
                errors.add(
                    "session_expiration_time",
                    format!("Ensure this value is greater than or equal to {min}."),
                );
                None
            }
            Some(s) if s > MAX_EXPIRATION_S => {
                errors.add(
                    "session_expiration_time",
                    format!("Ensure this value is less than or equal to {MAX_EXPIRATION_S}."),
                );
                None
            }
            Some(s) => Some(s),
            None => {
                errors.add("session_expiration_time", "A valid integer is required.");
                None
            }
        },
    };
    let retries = match body.get("max_retry_attempts") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|n| *n <= 10) {
            Some(n) => Some(n),
            None => {
                errors.add(
                    "max_retry_attempts",
                    "Ensure this value is less than or equal to 10.",
                );
                None
            }
        },
    };
    let status = opt_string(body, "status", errors);
    if let Some(s) = &status {
        if s != "draft" && s != "published" {
            errors.add("status", choice_error(&json!(s)));
        }
    }
    WorkflowFields {
        label,
        features,
        expiration,
        retries,
        status,
    }
}

/// `PATCH /v3/workflows/{settings_uuid}/` on a published version (the sandbox has no
/// drafts): without `status` the version changes in place; with `status: "published"` a
/// new version is published under the same `workflow_id` (new `uuid`, `version` + 1) and
/// returned; `status: "draft"` is refused, as Didit refuses to revert a published version.
fn update_workflow(
    inner: &mut Inner,
    id: Uuid,
    request: &Request<'_>,
) -> Result<Response, Refusal> {
    if inner.workflow(id).is_none() {
        return Err(Box::new(not_found()));
    }
    let body = request.json()?;
    let mut errors = FieldErrors::default();
    let fields = workflow_fields(inner, &body, &mut errors);
    if fields.status.as_deref() == Some("draft") {
        errors.add("status", "Cannot revert a published version to draft.");
    }
    errors.into_result()?;
    let now = inner.now();
    let index = inner
        .workflows
        .iter()
        .position(|w| w.uuid == id)
        .ok_or_else(|| Box::new(not_found()))?;
    if fields.status.as_deref() == Some("published") {
        let next = inner.workflows[index].next_version(now);
        inner.workflows.push(next);
    }
    let target = if fields.status.is_some() {
        inner.workflows.len() - 1
    } else {
        index
    };
    let workflow = &mut inner.workflows[target];
    if let Some(label) = fields.label {
        workflow.label = label;
    }
    if let Some(features) = fields.features {
        workflow.features = features;
    }
    if let Some(expiration) = fields.expiration {
        workflow.session_expiration_s = expiration;
    }
    if let Some(retries) = fields.retries {
        workflow.max_retry_attempts = retries;
    }
    Ok(json_response(StatusCode::OK, workflow.to_json()))
}

fn list_workflows(inner: &Inner) -> Response {
    let results: Vec<Value> = inner
        .workflows
        .iter()
        .rev()
        .map(Workflow::to_json)
        .collect();
    json_response(
        StatusCode::OK,
        json!({"count": results.len(), "next": null, "previous": null, "results": results}),
    )
}

fn create_destination(inner: &mut Inner, request: &Request<'_>) -> Result<Response, Refusal> {
    let body = request.json()?;
    let mut errors = FieldErrors::default();
    let label = opt_string(&body, "label", &mut errors);
    match &label {
        None => errors.add("label", "This field is required."),
        Some(l) if l.chars().count() > 255 => errors.add(
            "label",
            "Ensure this field has no more than 255 characters.",
        ),
        Some(_) => {}
    }
    // Didit refuses private hosts; the sandbox delivers to loopback receivers, so it only
    // asks for an http(s) URL.
    let url = match opt_string(&body, "url", &mut errors) {
        None => {
            errors.add("url", "This field is required.");
            None
        }
        Some(u) => match Url::parse(&u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {
                if inner.destinations.iter().any(|d| d.url == url) {
                    errors.add(
                        "url",
                        "This webhook destination already exists for the application.",
                    );
                }
                Some(url)
            }
            _ => {
                errors.add("url", "Enter a valid URL.");
                None
            }
        },
    };
    let version = opt_string(&body, "webhook_version", &mut errors).unwrap_or_else(|| "v3".into());
    if !["v1", "v2", "v3"].contains(&version.as_str()) {
        errors.add("webhook_version", choice_error(&json!(version)));
    }
    let mut events = Vec::new();
    match body.get("subscribed_events") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.is_empty() => errors.add(
            "subscribed_events",
            "At least one subscribed event is required.",
        ),
        Some(Value::Array(items)) => {
            let unknown: Vec<String> = items
                .iter()
                .filter(|e| !e.as_str().is_some_and(|e| WEBHOOK_EVENTS.contains(&e)))
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                .collect();
            if unknown.is_empty() {
                events = items
                    .iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect();
            } else {
                errors.add(
                    "subscribed_events",
                    format!("Unsupported webhook events: {}", unknown.join(", ")),
                );
            }
        }
        Some(_) => errors.add("subscribed_events", "Expected a list of items."),
    }
    errors.into_result()?;
    let (Some(label), Some(url)) = (label, url) else {
        return Err(Box::new(detail(
            StatusCode::BAD_REQUEST,
            "Invalid request.",
        )));
    };
    let mut key = [0u8; 32];
    rand::rng().fill(&mut key);
    let destination = Destination {
        uuid: Uuid::new_v4(),
        label,
        url,
        webhook_version: version,
        subscribed_events: events,
        secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
        created_at: inner.now(),
    };
    let mut json = destination.to_json();
    if let Value::Object(map) = &mut json {
        for key in [
            "subscribed_events_count",
            "deliveries_count",
            "failed_deliveries_count",
            "average_response_time_ms",
            "error_rate_percentage",
            "last_delivery_at",
        ] {
            map.remove(key);
        }
        map.insert("secret_shared_key".into(), json!(destination.secret));
        map.insert(
            "summary".into(),
            json!({
                "total_deliveries": 0,
                "failed_deliveries": 0,
                "error_rate_percentage": 0,
                "min_response_time_ms": null,
                "avg_response_time_ms": null,
                "max_response_time_ms": null,
                "last_delivery_at": null,
            }),
        );
    }
    inner.destinations.push(destination);
    Ok(json_response(StatusCode::CREATED, json))
}

fn top_up(inner: &mut Inner, request: &Request<'_>) -> Result<Response, Refusal> {
    let body = request.json()?;
    let bare = |message: &str| json_response(StatusCode::BAD_REQUEST, json!([message]));
    let amount = match body.get("amount_in_dollars") {
        None | Some(Value::Null) => return Err(Box::new(bare("amount_in_dollars is required."))),
        Some(v) => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|a: &f64| a.is_finite())
            .ok_or_else(|| bare("amount_in_dollars must be a number."))?,
    };
    if amount < 50.0 {
        return Err(Box::new(bare("Amount must be at least $50.")));
    }
    // Stripe would settle later; the sandbox credits the account at once.
    inner.balance += amount;
    let id = format!("cs_test_{}", Uuid::new_v4().simple());
    Ok(json_response(
        StatusCode::OK,
        json!({
            "checkout_session_id": id,
            "checkout_session_url": format!("https://checkout.stripe.com/c/pay/{id}"),
        }),
    ))
}

fn strong_password(p: &str) -> bool {
    p.chars().count() >= 8
        && p.chars().any(|c| c.is_ascii_uppercase())
        && p.chars().any(|c| c.is_ascii_lowercase())
        && p.chars().any(|c| c.is_ascii_digit())
        && p.chars().any(|c| !c.is_alphanumeric())
}

fn register(inner: &mut Inner, request: &Request<'_>) -> Result<Response, Refusal> {
    let body = request.json()?;
    let mut errors = FieldErrors::default();
    let email = opt_string(&body, "email", &mut errors);
    match &email {
        None => errors.add("email", "This field is required."),
        Some(e) if !e.contains('@') || e.starts_with('@') || e.ends_with('@') => {
            errors.add("email", "Enter a valid email address.")
        }
        Some(e) if inner.registrations.get(e) == Some(&true) => {
            errors.add("email", "A user with this email already exists.")
        }
        Some(_) => {}
    }
    match opt_string(&body, "password", &mut errors) {
        None => errors.add("password", "This field is required."),
        Some(p) if !strong_password(&p) => errors.add(
            "password",
            "Password must be at least 8 characters long and contain an uppercase letter, a lowercase letter, a digit and a special character.",
        ),
        Some(_) => {}
    }
    errors.into_result()?;
    let Some(email) = email else {
        return Err(Box::new(detail(
            StatusCode::BAD_REQUEST,
            "Invalid request.",
        )));
    };
    let domain = email
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if domain == "example.com" || domain.ends_with(".test") {
        // Didit's mailer fails on reserved test domains and the request with it.
        return Err(Box::new(detail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "A server error occurred.",
        )));
    }
    inner.registrations.insert(email.clone(), false);
    Ok(json_response(
        StatusCode::CREATED,
        json!({
            "message": "Registration successful. Please check your email for the verification code.",
            "email": email,
        }),
    ))
}

fn verify_email(inner: &mut Inner, request: &Request<'_>) -> Result<Response, Refusal> {
    let body = request.json()?;
    let mut errors = FieldErrors::default();
    let email = opt_string(&body, "email", &mut errors);
    let code = opt_string(&body, "code", &mut errors);
    if email.is_none() {
        errors.add("email", "This field is required.");
    }
    if code.is_none() {
        errors.add("code", "This field is required.");
    }
    errors.into_result()?;
    let (Some(email), Some(code)) = (email, code) else {
        return Err(Box::new(detail(
            StatusCode::BAD_REQUEST,
            "Invalid request.",
        )));
    };
    if !inner.registrations.contains_key(&email) || code != EMAIL_CODE {
        return Err(Box::new(detail(
            StatusCode::BAD_REQUEST,
            "Invalid or expired verification code.",
        )));
    }
    inner.registrations.insert(email.clone(), true);
    let name = email.split('@').next().unwrap_or("sandbox").to_owned();
    let org = Uuid::new_v5(&Uuid::NAMESPACE_OID, email.as_bytes());
    let app = |kind: &str| {
        json!({
            "uuid": Uuid::new_v5(&org, kind.as_bytes()),
            "name": name,
            "client_id": Uuid::new_v5(&org, kind.as_bytes()).simple().to_string()[..22].to_owned(),
            "api_key": inner.api_key,
            "data_location": "eu",
        })
    };
    let token = |kind: &str| {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"sub": email, "typ": kind, "iss": "didit-sandbox"}).to_string());
        format!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{claims}.sandbox")
    };
    let application = app("live");
    let sandbox_application = app(DEFAULT_API_KEY);
    Ok(json_response(
        StatusCode::OK,
        json!({
            "access_token": token("access"),
            "refresh_token": token("refresh"),
            "expires_in": 86400,
            "organization": {"uuid": org, "name": name},
            "application": application,
            "sandbox_application": sandbox_application,
        }),
    ))
}
