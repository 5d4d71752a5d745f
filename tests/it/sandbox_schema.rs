//! Every sandbox response the client reads, checked against Didit's own OpenAPI document
//! (`tests/fixtures/didit-openapi.json`, a verbatim copy of `reference/didit/openapi.json`).
//! Blocklist and registration are not in that document; their expectations come from
//! `reference/didit-api.md` §6 and §11.

use std::{sync::LazyLock, time::Duration};

use crate::sandbox::{control, start, Raw};
use serde_json::{json, Value};

use crate::helpers::{eventually, openapi_to_json_schema, DEADLINE};

static SPEC: LazyLock<Value> = LazyLock::new(|| {
    let text = include_str!("../fixtures/didit-openapi.json");
    serde_json::from_str(text).expect("the OpenAPI fixture is JSON")
});

/// Asserts `body` is what the document promises for `method path` answering `status`.
fn assert_matches_spec(path: &str, method: &str, status: u16, body: &Value) {
    let schema = &SPEC["paths"][path][method]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "the document has no JSON schema for {method} {path} {status}"
    );
    let schema = openapi_to_json_schema(&SPEC, schema);
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the converted schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match Didit's schema:\n{}\n{body:#}",
        errors.join("\n")
    );
}

const DECISION: &str = "/v3/session/{sessionId}/decision/";

#[tokio::test]
async fn session_responses_match_didits_schemas_at_every_stage() {
    let sandbox = start(Duration::from_millis(300)).await;
    let raw = Raw::new(&sandbox, "sandbox");
    let mut finals = Vec::new();
    for scenario in [
        "approve",
        "decline_document_expired",
        "decline_face_mismatch",
        "decline_liveness",
        "decline_aml_hit",
        "review_face_match_borderline",
        "review_high_scores_warning",
        "review_aml_possible_match",
        "approve_underage",
    ] {
        let (status, created) = raw
            .post(
                "/v3/session/",
                json!({"workflow_id": didit_sandbox::WORKFLOW_ID, "vendor_data": format!("schema-{scenario}"),
                       "metadata": {"request_id": scenario}, "callback": "https://example.com/done",
                       "language": "es", "sandbox_scenario": scenario,
                       "contact_details": {"email": "user@example.org"}}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        assert_matches_spec("/v3/session/", "post", 201, &created);
        let id = created["session_id"].as_str().expect("id").to_owned();
        let (_, first) = raw.get(&format!("/v3/session/{id}/decision/")).await;
        assert_matches_spec(DECISION, "get", 200, &first);
        finals.push(id);
    }
    for id in &finals {
        let path = format!("/v3/session/{id}/decision/");
        let decision = eventually("a final decision", DEADLINE, || async {
            let (_, d) = raw.get(&path).await;
            (!["Not Started", "In Progress"].contains(&d["status"].as_str()?)).then_some(d)
        })
        .await;
        assert_matches_spec(DECISION, "get", 200, &decision);
    }

    let (status, body) = raw
        .patch(
            &format!("/v3/session/{}/update-status/", finals[5]),
            json!({"new_status": "Approved", "comment": "checked by hand"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_matches_spec(
        "/v3/session/{sessionId}/update-status/",
        "patch",
        200,
        &body,
    );
    let (_, reviewed) = raw
        .get(&format!("/v3/session/{}/decision/", finals[5]))
        .await;
    assert_matches_spec(DECISION, "get", 200, &reviewed);

    let (status, list) = raw.get("/v3/sessions/?limit=3&offset=2").await;
    assert_eq!(status, 200);
    assert_matches_spec("/v3/sessions/", "get", 200, &list);
    assert_eq!(list["count"], 9);
    assert!(list["next"].as_str().is_some() && list["previous"].as_str().is_some());

    let pdf = raw
        .get_bytes(&format!("/v3/session/{}/generate-pdf/", finals[0]))
        .await;
    assert_eq!(pdf.0, 200);
    assert_eq!(pdf.1.as_deref(), Some("application/pdf"));
    assert!(pdf.2.starts_with(b"%PDF-1.7"));

    let (status, _) = raw
        .delete(&format!("/v3/session/{}/delete/", finals[0]))
        .await;
    assert_eq!(status, 204);
    let (status, gone) = raw
        .get(&format!("/v3/session/{}/decision/", finals[0]))
        .await;
    assert_eq!(status, 404);
    assert_matches_spec(DECISION, "get", 404, &gone);
}

#[tokio::test]
async fn expired_abandoned_and_error_answers_match_didits_schemas() {
    let sandbox = start(Duration::from_millis(200)).await;
    let raw = Raw::new(&sandbox, "sandbox");
    let (_, created) = raw
        .post(
            "/v3/session/",
            json!({"workflow_id": didit_sandbox::WORKFLOW_ID, "vendor_data": "late", "sandbox_scenario": "abandon"}),
        )
        .await;
    let id = created["session_id"].as_str().expect("id").to_owned();
    let path = format!("/v3/session/{id}/decision/");
    eventually("In Progress", DEADLINE, || async {
        let (_, d) = raw.get(&path).await;
        (d["status"] == "In Progress").then_some(())
    })
    .await;
    let (status, forbidden) = raw.get(&format!("/v3/session/{id}/generate-pdf/")).await;
    assert_eq!(status, 403);
    assert_matches_spec(
        "/v3/session/{sessionId}/generate-pdf/",
        "get",
        403,
        &forbidden,
    );
    control(
        &sandbox,
        json!({"action": "advance_clock", "seconds": 700_000}),
    )
    .await;
    let (_, abandoned) = raw.get(&path).await;
    assert_eq!(abandoned["status"], "Abandoned");
    assert_matches_spec(DECISION, "get", 200, &abandoned);

    let (status, no_key) = Raw::without_key(&sandbox).get(&path).await;
    assert_eq!(status, 403);
    assert_matches_spec(DECISION, "get", 403, &no_key);

    control(&sandbox, json!({"action": "set_limit", "spec": "get=1/1m"})).await;
    raw.get("/v3/billing/balance/").await;
    let (status, limited) = raw.get(&path).await;
    assert_eq!(status, 429);
    assert_matches_spec(DECISION, "get", 429, &limited);
    assert_eq!(
        limited["detail"],
        "GET request rate limit exceeded. You can make up to 1 requests per minute."
    );
}

#[tokio::test]
async fn account_workflow_and_webhook_responses_match_didits_schemas() {
    let sandbox = start(Duration::from_millis(200)).await;
    let raw = Raw::new(&sandbox, "sandbox");

    let (status, workflow) = raw
        .post(
            "/v3/workflows/",
            json!({"workflow_label": "Schema KYC", "features": [{"feature": "OCR"}, {"feature": "LIVENESS"}],
                   "session_expiration_time": 3600}),
        )
        .await;
    assert_eq!(status, 201, "{workflow}");
    assert_matches_spec("/v3/workflows/", "post", 201, &workflow);
    assert_matches_spec(
        "/v3/workflows/",
        "get",
        200,
        &json!({"count": 1, "next": null, "previous": null, "results": [workflow.clone()]}),
    );
    let (status, list) = raw.get("/v3/workflows/").await;
    assert_eq!(status, 200);
    assert_matches_spec("/v3/workflows/", "get", 200, &list);
    assert_eq!(list["count"], 2);
    let (status, one) = raw
        .get(&format!(
            "/v3/workflows/{}/",
            workflow["uuid"].as_str().expect("uuid")
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(one, workflow);

    let (status, destination) = raw
        .post(
            "/v3/webhook/destinations/",
            json!({"label": "schema", "url": "https://hooks.example.org/didit",
                   "webhook_version": "v3", "subscribed_events": ["status.updated"]}),
        )
        .await;
    assert_eq!(status, 201, "{destination}");
    assert_matches_spec("/v3/webhook/destinations/", "post", 201, &destination);
    assert_eq!(
        destination["secret_shared_key"].as_str().map(str::len),
        Some(43)
    );
    let (status, destinations) = raw.get("/v3/webhook/destinations/").await;
    assert_eq!(status, 200);
    assert_matches_spec("/v3/webhook/destinations/", "get", 200, &destinations);
    assert!(destinations[0].get("secret_shared_key").is_none());

    let (status, balance) = raw.get("/v3/billing/balance/").await;
    assert_eq!(status, 200);
    assert_matches_spec("/v3/billing/balance/", "get", 200, &balance);
    assert_eq!(balance["balance"], "1000.0000");
    let (status, top_up) = raw
        .post("/v3/billing/top-up/", json!({"amount_in_dollars": 50}))
        .await;
    assert_eq!(status, 200);
    assert_matches_spec("/v3/billing/top-up/", "post", 200, &top_up);
    let (status, too_small) = raw
        .post("/v3/billing/top-up/", json!({"amount_in_dollars": 5}))
        .await;
    assert_eq!(
        (status, too_small),
        (400, json!(["Amount must be at least $50."]))
    );
}

#[tokio::test]
async fn workflow_versions_and_resubmission_e_mails_match_didits_schemas() {
    let sandbox = start(Duration::from_secs(3600)).await;
    let raw = Raw::new(&sandbox, "sandbox");
    let (status, v1) = raw
        .post(
            "/v3/workflows/",
            json!({"workflow_label": "Versioned", "features": [{"feature": "OCR"}],
                   "session_expiration_time": 3600}),
        )
        .await;
    assert_eq!(status, 201, "{v1}");
    let v1_uuid = v1["uuid"].as_str().expect("uuid").to_owned();
    let stable = v1["workflow_id"].clone();

    // Publishing a published version makes a new one under the same workflow_id.
    let (status, v2) = raw
        .patch(
            &format!("/v3/workflows/{v1_uuid}/"),
            json!({"session_expiration_time": 7200, "status": "published"}),
        )
        .await;
    assert_eq!(status, 200, "{v2}");
    assert_matches_spec("/v3/workflows/{settings_uuid}/", "patch", 200, &v2);
    assert_ne!(v2["uuid"], v1["uuid"]);
    assert_eq!(
        (
            &v2["workflow_id"],
            &v2["version"],
            &v2["session_expiration_time"]
        ),
        (&stable, &json!(2), &json!(7200))
    );
    let v2_uuid = v2["uuid"].as_str().expect("uuid").to_owned();
    // Without a status the version changes in place; a published one never becomes a draft.
    let (status, renamed) = raw
        .patch(
            &format!("/v3/workflows/{v2_uuid}/"),
            json!({"workflow_label": "Versioned KYC"}),
        )
        .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(
        (&renamed["uuid"], &renamed["version"]),
        (&v2["uuid"], &json!(2))
    );
    let (status, refused) = raw
        .patch(
            &format!("/v3/workflows/{v2_uuid}/"),
            json!({"status": "draft"}),
        )
        .await;
    assert_eq!(
        (status, refused),
        (
            400,
            json!({"status": ["Cannot revert a published version to draft."]})
        )
    );
    let (status, unknown) = raw
        .patch(
            &format!("/v3/workflows/{v2_uuid}/"),
            json!({"workflow_type": "kyc"}),
        )
        .await;
    assert_eq!(status, 400, "{unknown}");

    // One row per version, each read by its own id.
    let (status, list) = raw.get("/v3/workflows/").await;
    assert_eq!(status, 200);
    assert_matches_spec("/v3/workflows/", "get", 200, &list);
    let mut versions: Vec<(i64, u64)> = list["results"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|w| w["workflow_id"] == stable)
        .map(|w| {
            (
                w["version"].as_i64().expect("version"),
                w["session_expiration_time"].as_u64().expect("expiration"),
            )
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, [(1, 3600), (2, 7200)]);
    let (_, one) = raw.get(&format!("/v3/workflows/{v1_uuid}/")).await;
    assert_eq!(one["session_expiration_time"], 3600);

    // A session on the stable id runs the latest version; one on a version's id runs that.
    let (status, latest) = raw
        .post(
            "/v3/session/",
            json!({"workflow_id": stable, "vendor_data": "versioned-1",
                   "contact_details": {"email": "person@example.org", "email_lang": "es"}}),
        )
        .await;
    assert_eq!(status, 201, "{latest}");
    assert_matches_spec("/v3/session/", "post", 201, &latest);
    assert_eq!(
        (&latest["workflow_id"], &latest["workflow_version"]),
        (&stable, &json!(2))
    );
    let (status, v3) = raw
        .patch(
            &format!("/v3/workflows/{v2_uuid}/"),
            json!({"status": "published"}),
        )
        .await;
    assert_eq!((status, &v3["version"]), (200, &json!(3)));
    let (_, pinned) = raw
        .post(
            "/v3/session/",
            json!({"workflow_id": v2_uuid, "vendor_data": "versioned-2"}),
        )
        .await;
    assert_eq!(
        (&pinned["workflow_id"], &pinned["workflow_version"]),
        (&stable, &json!(2))
    );

    // update-status asks Didit to e-mail the person, in the language asked for.
    let sid = latest["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    control(
        &sandbox,
        json!({"action": "set_status", "session_id": sid, "status": "Declined"}),
    )
    .await;
    let path = format!("/v3/session/{sid}/update-status/");
    let (status, missing) = raw
        .patch(
            &path,
            json!({"new_status": "Resubmitted", "send_email": true}),
        )
        .await;
    assert_eq!(
        (status, missing),
        (
            400,
            json!({"email_address": ["Email address is required when send_email is true."]})
        )
    );
    let (status, updated) = raw
        .patch(
            &path,
            json!({"new_status": "Resubmitted", "send_email": true,
                   "email_address": "person@example.org", "email_language": "es"}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_matches_spec(
        "/v3/session/{sessionId}/update-status/",
        "patch",
        200,
        &updated,
    );
    let emails = crate::sandbox::stats(&sandbox).await["emails"].clone();
    assert_eq!(
        emails,
        json!([{"session_id": sid, "status": "Resubmitted",
                "email_address": "person@example.org", "email_language": "es"}])
    );
}

/// Not in the OpenAPI document: `reference/didit-api.md` §6.1 (a `message`) and §11.
#[tokio::test]
async fn blocklist_and_registration_answer_as_the_didit_notes_describe() {
    let sandbox = start(Duration::from_millis(100)).await;
    let raw = Raw::new(&sandbox, "sandbox");
    let (_, created) = raw
        .post(
            "/v3/session/",
            json!({"workflow_id": didit_sandbox::WORKFLOW_ID, "vendor_data": "fraudster"}),
        )
        .await;
    let id = created["session_id"].clone();
    let (status, none) = raw
        .post("/v3/blocklist/add/", json!({"session_id": id}))
        .await;
    assert_eq!(status, 400, "at least one flag must be true: {none}");
    let (status, added) = raw
        .post(
            "/v3/blocklist/add/",
            json!({"session_id": id, "blocklist_face": true, "blocklist_document": true}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(added["message"].as_str().is_some_and(|m| !m.is_empty()));

    let auth = Raw::without_key(&sandbox);
    let (status, weak) = auth
        .post(
            "/auth/v2/programmatic/register/",
            json!({"email": "dev@company.org", "password": "short"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(weak["password"][0].as_str().is_some());
    let (status, registered) = auth
        .post(
            "/auth/v2/programmatic/register/",
            json!({"email": "dev@company.org", "password": "MyStr0ng!Pass"}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(registered["email"], "dev@company.org");
    assert!(registered["message"].as_str().is_some());
    let (status, wrong) = auth
        .post(
            "/auth/v2/programmatic/verify-email/",
            json!({"email": "dev@company.org", "code": "000000"}),
        )
        .await;
    assert_eq!(status, 400, "{wrong}");
    let (status, verified) = auth
        .post(
            "/auth/v2/programmatic/verify-email/",
            json!({"email": "dev@company.org", "code": didit_sandbox::EMAIL_CODE}),
        )
        .await;
    assert_eq!(status, 200);
    for key in [
        "access_token",
        "refresh_token",
        "organization",
        "application",
    ] {
        assert!(verified.get(key).is_some(), "{key} missing: {verified}");
    }
    assert_eq!(verified["expires_in"], 86400);
    assert_eq!(verified["application"]["api_key"], "sandbox");
    assert!(verified["sandbox_application"]["api_key"].is_string());
}
