//! The Didit sandbox over real HTTP: scenarios through the real `DiditClient`, signed
//! webhooks, rate limits, injected faults and the error classes the fleet relies on, and the
//! `kyc-worker sandbox` binary driving `kyc-worker didit full`.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use didit::{
    types::{CreateSessionRequest, Decision, UpdateStatusRequest},
    webhook::{SignatureHeaders, SignatureScheme, WebhookVerifier},
    AccountPause, DiditClient, ErrorClass,
};
use didit_sandbox::{
    Contested, DeleteStatus, SameStatus, Sandbox, SandboxConfig, SandboxHandle, WrongKeyStatus,
    WORKFLOW_ID,
};
use kyc_worker::{
    domain::SessionStatus,
    settings::{Settings, Sources},
};
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, free_port, kyc_worker_binary, ChildGuard, DEADLINE};

// ---- shared with sandbox_schema.rs ----

pub async fn start(complete_after: Duration) -> SandboxHandle {
    start_with(SandboxConfig::for_tests(complete_after)).await
}

pub async fn start_with(config: SandboxConfig) -> SandboxHandle {
    Sandbox::start(config).await.expect("the sandbox starts")
}

/// Posts one control action and asserts it was accepted.
pub async fn control(sandbox: &SandboxHandle, action: Value) {
    let (status, body) = control_answer(sandbox, &action).await;
    assert_eq!(status, 200, "control {action} refused: {body}");
}

/// Posts one control action; its status and JSON body.
async fn control_answer(sandbox: &SandboxHandle, action: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}sandbox/control", sandbox.base_url()))
        .json(action)
        .send()
        .await
        .expect("control answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("control answers JSON"))
}

pub async fn stats(sandbox: &SandboxHandle) -> Value {
    reqwest::get(format!("{}sandbox/stats", sandbox.base_url()))
        .await
        .expect("stats answer")
        .json()
        .await
        .expect("stats are JSON")
}

/// Plain HTTP calls, for what the typed client hides (status codes, headers, raw bodies).
pub struct Raw {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Raw {
    pub fn new(sandbox: &SandboxHandle, key: &str) -> Self {
        Self {
            key: Some(key.to_owned()),
            ..Self::without_key(sandbox)
        }
    }

    pub fn without_key(sandbox: &SandboxHandle) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
            base: sandbox.base_url().as_str().trim_end_matches('/').to_owned(),
            key: None,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            request = request.header("x-api-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("the sandbox answers")
    }

    async fn json(response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::json(self.send(reqwest::Method::GET, path, None).await).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        Self::json(self.send(reqwest::Method::POST, path, Some(body)).await).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        Self::json(self.send(reqwest::Method::PATCH, path, Some(body)).await).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Self::json(self.send(reqwest::Method::DELETE, path, None).await).await
    }

    /// Status, content type and bytes.
    pub async fn get_bytes(&self, path: &str) -> (u16, Option<String>, Vec<u8>) {
        let response = self.send(reqwest::Method::GET, path, None).await;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.expect("a body").to_vec();
        (status, content_type, bytes)
    }
}

// ---- helpers of this file ----

fn client(sandbox: &SandboxHandle, key: &str) -> DiditClient {
    let env = HashMap::from([
        (
            "KYC__DIDIT__BASE_URL".to_owned(),
            sandbox.base_url().to_string(),
        ),
        (
            "KYC__DIDIT__AUTH_BASE_URL".to_owned(),
            sandbox.auth_base_url().to_string(),
        ),
        ("KYC__DIDIT__API_KEY".to_owned(), key.to_owned()),
    ]);
    let settings = Settings::load_from(&Sources {
        config_dir: Some(PathBuf::from("/nonexistent")),
        env: Some(env),
    })
    .expect("settings for the sandbox");
    DiditClient::new(&settings.didit.client_config()).expect("a client")
}

fn session(vendor_data: &str, scenario: &str) -> CreateSessionRequest {
    CreateSessionRequest {
        workflow_id: WORKFLOW_ID,
        vendor_data: Some(vendor_data.to_owned()),
        metadata: Some(json!({"request_id": vendor_data})),
        sandbox_scenario: Some(scenario.to_owned()),
        ..Default::default()
    }
}

async fn final_decision(client: &DiditClient, id: Uuid) -> Decision {
    eventually("a final decision", DEADLINE, || async {
        client
            .decision(id)
            .await
            .ok()
            .filter(|d| d.status.is_final())
    })
    .await
}

/// What a webhook receiver got: (headers, body) per delivery.
#[derive(Clone, Default)]
struct Inbox {
    deliveries: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    /// Answer 503 to this many deliveries first.
    fail_first: Arc<AtomicUsize>,
}

impl Inbox {
    async fn serve(fail_first: usize) -> (Inbox, url::Url) {
        let inbox = Inbox::default();
        inbox.fail_first.store(fail_first, Ordering::SeqCst);
        let app = axum::Router::new()
            .route(
                "/hook",
                post(
                    |State(inbox): State<Inbox>, headers: HeaderMap, body: Bytes| async move {
                        let failing = inbox
                            .fail_first
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if failing {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        inbox
                            .deliveries
                            .lock()
                            .expect("inbox")
                            .push((headers, body));
                        StatusCode::OK
                    },
                ),
            )
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = url::Url::parse(&format!("http://{addr}/hook")).expect("receiver url");
        (inbox, url)
    }

    fn snapshot(&self) -> Vec<(HeaderMap, Bytes)> {
        self.deliveries.lock().expect("inbox").clone()
    }
}

/// Verifies one delivery as the fleet will; returns its payload.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Value {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verifier = WebhookVerifier::new(
        vec![SecretString::from(secret.to_owned())],
        Duration::from_secs(300),
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let verified = verifier
        .verify(
            &SignatureHeaders {
                timestamp: get("x-timestamp"),
                v2: get("x-signature-v2"),
                raw: get("x-signature"),
                simple: get("x-signature-simple"),
            },
            body,
            now,
        )
        .expect("the delivery verifies");
    assert_eq!(verified.scheme, SignatureScheme::V2);
    // Each signature must hold on its own, not just the first one tried.
    for (drop_v2, drop_raw) in [(true, false), (true, true)] {
        verifier
            .verify(
                &SignatureHeaders {
                    timestamp: get("x-timestamp"),
                    v2: if drop_v2 { None } else { get("x-signature-v2") },
                    raw: if drop_raw { None } else { get("x-signature") },
                    simple: get("x-signature-simple"),
                },
                body,
                now,
            )
            .expect("every signature verifies");
    }
    assert_eq!(
        get("user-agent"),
        Some("DiditWebhook/2.0 +https://didit.me")
    );
    assert_eq!(get("content-type"), Some("application/json"));
    verified.payload
}

// ---- tests ----

#[tokio::test]
async fn each_scenario_reaches_its_status_through_the_real_client() {
    let sandbox = start(Duration::from_millis(200)).await;
    let client = client(&sandbox, "sandbox");
    let cases = [
        ("approve", SessionStatus::Approved),
        ("decline_document_expired", SessionStatus::Declined),
        ("decline_face_mismatch", SessionStatus::Declined),
        ("decline_liveness", SessionStatus::Declined),
        ("decline_aml_hit", SessionStatus::Declined),
        ("review_face_match_borderline", SessionStatus::InReview),
        ("review_high_scores_warning", SessionStatus::InReview),
        ("review_aml_possible_match", SessionStatus::InReview),
        ("approve_underage", SessionStatus::Approved),
    ];
    let mut created = Vec::new();
    for (scenario, _) in &cases {
        let s = client
            .create_session(&session(&format!("user-{scenario}"), scenario))
            .await
            .expect("create");
        assert_eq!(s.status, SessionStatus::NotStarted);
        let link = format!("{}session/", sandbox.base_url());
        assert!(s.url.starts_with(&link), "{} is not a sandbox link", s.url);
        created.push(s.session_id);
    }
    for ((scenario, status), id) in cases.iter().zip(created) {
        let d = final_decision(&client, id).await;
        assert_eq!(&d.status, status, "{scenario}");
        assert_eq!(
            d.metadata,
            Some(json!({"request_id": format!("user-{scenario}")}))
        );
        let id_check = &d.id_verifications.as_ref().expect("id section")[0];
        for field in [
            "document_type",
            "issuing_state",
            "nationality",
            "date_of_birth",
            "age",
            "expiration_date",
            "first_name",
            "last_name",
        ] {
            assert!(!id_check.rest[field].is_null(), "{scenario}: {field}");
        }
        let warnings = |items: &Option<Vec<didit::types::FeatureItem>>| -> Vec<(String, String)> {
            items
                .iter()
                .flatten()
                .flat_map(|i| i.warnings.iter().flatten())
                .map(|w| {
                    (
                        w.risk.clone().unwrap_or_default(),
                        w.log_type.clone().unwrap_or_default(),
                    )
                })
                .collect()
        };
        match *scenario {
            "decline_document_expired" => {
                assert_eq!(
                    warnings(&d.id_verifications),
                    [("DOCUMENT_EXPIRED".into(), "error".into())]
                );
            }
            "decline_face_mismatch" => {
                assert!(d.face_matches.as_ref().expect("face")[0].score < Some(40.0));
            }
            "decline_liveness" => {
                assert_eq!(warnings(&d.liveness_checks)[0].0, "LOW_LIVENESS_SCORE");
                assert!(
                    d.face_matches.is_none(),
                    "no face match without a live face"
                );
            }
            "decline_aml_hit" | "review_aml_possible_match" => {
                let aml = &d.aml_screenings.as_ref().expect("aml")[0];
                assert_eq!(aml.rest["total_hits"], 1);
                assert_eq!(warnings(&d.aml_screenings)[0].0, "POSSIBLE_MATCH_FOUND");
            }
            "review_face_match_borderline" => {
                assert_eq!(
                    warnings(&d.face_matches),
                    [("LOW_FACE_MATCH_SIMILARITY".into(), "warning".into())]
                );
            }
            "review_high_scores_warning" => {
                assert!(d.face_matches.as_ref().expect("face")[0].score >= Some(90.0));
                assert!(d.liveness_checks.as_ref().expect("liveness")[0].score >= Some(90.0));
                let all: Vec<_> = [
                    &d.id_verifications,
                    &d.liveness_checks,
                    &d.face_matches,
                    &d.aml_screenings,
                    &d.ip_analyses,
                ]
                .into_iter()
                .flat_map(warnings)
                .collect();
                assert!(
                    !all.is_empty() && all.iter().all(|(_, level)| level == "warning"),
                    "{all:?}"
                );
            }
            "approve_underage" => {
                assert!(id_check.rest["age"].as_i64() < Some(18));
            }
            _ => {
                assert!(warnings(&d.id_verifications).is_empty());
                assert_eq!(
                    d.ip_analyses.as_ref().expect("ip")[0].rest["is_vpn_or_tor"],
                    false
                );
            }
        }
    }
}

#[tokio::test]
async fn unfinished_sessions_expire_or_are_abandoned_at_the_workflow_expiry() {
    let mut config = SandboxConfig::for_tests(Duration::from_millis(100));
    config.min_expiration = Duration::from_secs(1);
    let sandbox = start_with(config).await;
    let raw = Raw::new(&sandbox, "sandbox");
    let (status, workflow) = raw
        .post(
            "/v3/workflows/",
            json!({"workflow_label": "short", "features": [{"feature": "OCR"}, {"feature": "IP_ANALYSIS"}], "session_expiration_time": 1}),
        )
        .await;
    assert_eq!(status, 201, "{workflow}");
    let workflow_id: Uuid = workflow["uuid"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("uuid");
    let client = client(&sandbox, "sandbox");
    let mut ids = Vec::new();
    for scenario in ["expire", "abandon"] {
        let mut request = session(scenario, scenario);
        request.workflow_id = workflow_id;
        ids.push(
            client
                .create_session(&request)
                .await
                .expect("create")
                .session_id,
        );
    }
    let expired = final_decision(&client, ids[0]).await;
    assert_eq!(expired.status, SessionStatus::Expired);
    assert!(expired.ip_analyses.is_none(), "the link was never opened");
    let abandoned = final_decision(&client, ids[1]).await;
    assert_eq!(abandoned.status, SessionStatus::Abandoned);
    assert!(abandoned.ip_analyses.is_some());
    assert!(abandoned.liveness_checks.is_none());

    let (status, refused) = raw
        .post(
            "/v3/workflows/",
            json!({"features": [{"feature": "OCR"}], "session_expiration_time": 0}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        refused["session_expiration_time"][0],
        "Ensure this value is greater than or equal to 1."
    );
}

#[tokio::test]
async fn webhooks_are_signed_like_didits_in_order_and_retried() {
    let (inbox, url) = Inbox::serve(1).await;
    let mut config = SandboxConfig::for_tests(Duration::from_millis(150));
    config.webhook_url = Some(url);
    let sandbox = start_with(config).await;
    let client = client(&sandbox, "sandbox");
    let (extra_inbox, extra_url) = Inbox::serve(0).await;
    let destination = client
        .create_webhook_destination(&didit::types::CreateWebhookDestination {
            label: "second".into(),
            url: extra_url.to_string(),
            webhook_version: "v3".into(),
            subscribed_events: vec!["status.updated".into()],
        })
        .await
        .expect("destination");
    let destination_secret = destination.secret_shared_key.expect("a secret");

    let created = client
        .create_session(&session("hooked", "review_face_match_borderline"))
        .await
        .expect("create");
    let deliveries = eventually("two deliveries", DEADLINE, || async {
        let d = inbox.snapshot();
        (d.len() >= 2).then_some(d)
    })
    .await;
    let payloads: Vec<Value> = deliveries
        .iter()
        .map(|(h, b)| verify("sandbox-webhook-secret", h, b))
        .collect();
    let statuses: Vec<&str> = payloads
        .iter()
        .filter_map(|p| p["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["In Progress", "In Review"],
        "one webhook per change, in order"
    );
    let review = &payloads[1];
    assert_eq!(review["session_id"], json!(created.session_id));
    assert_eq!(review["webhook_type"], "status.updated");
    assert_eq!(review["environment"], "sandbox");
    assert_eq!(review["vendor_data"], "hooked");
    assert_eq!(review["metadata"], json!({"request_id": "hooked"}));
    assert_eq!(review["workflow_id"], json!(WORKFLOW_ID));
    assert_eq!(review["decision"]["status"], "In Review");
    assert!(payloads[0].get("decision").is_none());
    assert_ne!(payloads[0]["event_id"], payloads[1]["event_id"]);
    let body = String::from_utf8(deliveries[1].1.to_vec()).expect("utf-8");
    assert!(
        body.is_ascii() && body.contains("Espa\\u00f1ola"),
        "ASCII-escaped wire body"
    );

    let extra = eventually("the destination's deliveries", DEADLINE, || async {
        let d = extra_inbox.snapshot();
        (d.len() >= 2).then_some(d)
    })
    .await;
    verify(&destination_secret, &extra[1].0, &extra[1].1);

    // An operator approves: a review entry and one more webhook; repeating it is a no-op.
    let approve = UpdateStatusRequest {
        new_status: SessionStatus::Approved,
        comment: Some("looks fine".into()),
        nodes_to_resubmit: None,
        send_email: None,
        email_address: None,
        email_language: None,
    };
    client
        .update_status(created.session_id, &approve)
        .await
        .expect("approve");
    client
        .update_status(created.session_id, &approve)
        .await
        .expect("same status is a no-op");
    let d = client.decision(created.session_id).await.expect("decision");
    let reviews = d.reviews.expect("reviews");
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0].user.as_deref(), Some("API Client"));
    assert_eq!(reviews[0].new_status.as_deref(), Some("Approved"));
    let all = eventually("the approval webhook", DEADLINE, || async {
        let d = inbox.snapshot();
        (d.len() >= 3).then_some(d)
    })
    .await;
    assert_eq!(
        verify("sandbox-webhook-secret", &all[2].0, &all[2].1)["status"],
        "Approved"
    );
    let s = stats(&sandbox).await;
    assert_eq!(
        s["webhooks"]["failed"], 1,
        "the first attempt got a 503 and was retried: {s}"
    );
    assert_eq!(s["webhooks"]["dropped"], 0);
    assert_eq!(inbox.snapshot().len(), 3, "the no-op sent nothing");
}

#[tokio::test]
async fn update_status_rules_and_resubmission_follow_didit() {
    let sandbox = start(Duration::from_millis(150)).await;
    let raw = Raw::new(&sandbox, "sandbox");
    let client = client(&sandbox, "sandbox");
    let s = client
        .create_session(&session("resubmit-me", "decline_document_expired"))
        .await
        .expect("create");
    let path = format!("/v3/session/{}/update-status/", s.session_id);
    let (status, early) = raw.patch(&path, json!({"new_status": "Approved"})).await;
    assert_eq!(status, 400);
    assert!(early["detail"]
        .as_str()
        .is_some_and(|d| d.starts_with("Only sessions with status Approved, Declined, In Review, Kyc Expired, Abandoned, Resubmitted can be updated. Current status: ")));
    assert_eq!(
        final_decision(&client, s.session_id).await.status,
        SessionStatus::Declined
    );
    let (status, bad) = raw.patch(&path, json!({"new_status": "In Review"})).await;
    assert_eq!(
        (status, &bad["new_status"][0]),
        (
            400,
            &json!("You can only update the status to 'Approved', 'Declined', or 'Resubmitted'.")
        )
    );
    let (status, _) = raw.patch(&path, json!({"new_status": "Resubmitted", "nodes_to_resubmit": [{"node_id": "feature_ocr_1", "feature": "OCR"}]})).await;
    assert_eq!(status, 200);
    let (status, same) = raw.patch(&path, json!({"new_status": "Resubmitted"})).await;
    assert_eq!(
        (status, same),
        (
            400,
            json!(["The new status is the same as the current status."])
        )
    );
    let redone = final_decision(&client, s.session_id).await;
    assert_eq!(
        redone.status,
        SessionStatus::Approved,
        "the user redid the document step"
    );
    assert_eq!(redone.reviews.map(|r| r.len()), Some(1));
}

#[tokio::test]
async fn protocol_details_match_didit() {
    let sandbox = start(Duration::from_secs(30)).await;
    let raw = Raw::new(&sandbox, "sandbox");
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("{}v3/sessions?vendor_data=x", sandbox.base_url()))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 301);
    assert_eq!(
        response.headers()["location"],
        "/v3/sessions/?vendor_data=x"
    );

    let (status, first) = raw
        .post(
            "/v3/session/",
            json!({"workflow_id": WORKFLOW_ID, "vendor_data": "same", "metadata": {"v": 1}}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, again) = raw
        .post(
            "/v3/session/",
            json!({"workflow_id": WORKFLOW_ID, "vendor_data": "same", "metadata": {"v": 2}}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        again["session_id"], first["session_id"],
        "an unfinished session is reused"
    );
    assert_eq!(again["metadata"], json!({"v": 2}));
    let id = first["session_id"].as_str().expect("id").to_owned();

    let html = raw
        .get_bytes(&format!("/v3/session/{}/decision/", id.to_uppercase()))
        .await;
    assert_eq!(html.0, 404);
    assert!(html.1.is_some_and(|t| t.starts_with("text/html")));
    let (status, unknown) = Raw::without_key(&sandbox)
        .get(&format!("/v3/session/{}/decision/", Uuid::new_v4()))
        .await;
    assert_eq!((status, unknown), (404, json!({"detail": "Not found."})));
    let (status, no_key) = Raw::without_key(&sandbox)
        .get(&format!("/v3/session/{id}/decision/"))
        .await;
    assert_eq!(
        (status, no_key),
        (
            403,
            json!({"detail": "Authentication credentials were not provided or are invalid."})
        )
    );
    let (status, _) = Raw::new(&sandbox, "wrong")
        .get(&format!("/v3/session/{id}/decision/"))
        .await;
    assert_eq!(status, 401);
    let (status, body) = raw
        .post(
            "/v3/session/",
            json!({"workflow_id": WORKFLOW_ID, "sandbox_scenario": "x"}),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"sandbox_scenario": ["\"x\" is not a valid choice."]})
        )
    );
    let (status, body) = raw
        .post("/v3/session/", json!({"vendor_data": "no-workflow"}))
        .await;
    assert_eq!(
        (status, body),
        (400, json!({"workflow_id": ["This field is required."]}))
    );
    let (status, body) = raw
        .post("/v3/session/", json!({"workflow_id": Uuid::new_v4()}))
        .await;
    assert_eq!(
        (status, body),
        (400, json!({"workflow_id": "Invalid workflow_id."}))
    );

    control(
        &sandbox,
        json!({"action": "set_status", "session_id": id, "status": "In Review"}),
    )
    .await;
    let (_, d) = raw.get(&format!("/v3/session/{id}/decision/")).await;
    assert_eq!(d["status"], "In Review");
    assert!(
        d["face_matches"].is_array(),
        "a decision status comes with data"
    );
}

#[tokio::test]
async fn a_tight_limit_gives_429_with_didits_headers_and_the_client_retries_later() {
    let mut config = SandboxConfig::for_tests(Duration::from_millis(100));
    config.limits = vec!["get=5/2s".parse().expect("limit")];
    let sandbox = start_with(config).await;
    let client = client(&sandbox, "sandbox");
    let id = client
        .create_session(&session("busy", "approve"))
        .await
        .expect("create")
        .session_id;
    let http = reqwest::Client::new();
    let url = format!("{}v3/session/{id}/decision/", sandbox.base_url());
    let mut limited = None;
    for _ in 0..10 {
        let response = http
            .get(&url)
            .header("x-api-key", "sandbox")
            .send()
            .await
            .expect("answer");
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("a 429 within 10 calls of a 5-call budget");
    let header = |name: &str| limited.headers()[name].to_str().expect("ascii").to_owned();
    assert!(header("retry-after").parse::<u64>().expect("seconds") >= 1);
    assert_eq!(header("x-ratelimit-limit"), "5");
    assert_eq!(header("x-ratelimit-remaining"), "0");
    assert!(header("x-ratelimit-reset").parse::<u64>().is_ok());
    let body: Value = limited.json().await.expect("json");
    assert_eq!(
        body["detail"],
        "GET request rate limit exceeded. You can make up to 5 requests per 2000 ms."
    );

    let error = client.decision(id).await.expect_err("still limited");
    match error.class() {
        ErrorClass::Retryable {
            retry_after: Some(wait),
        } => assert!(wait >= Duration::from_secs(1)),
        other => panic!("expected retryable with Retry-After, got {other:?}"),
    }
    let s = stats(&sandbox).await;
    assert_eq!(
        s["rate_limits"]["get"]["peak_in_window"], 5,
        "no window exceeded the budget: {s}"
    );
    assert!(s["responses"]["decision"]["429"].as_u64() >= Some(2));
}

#[tokio::test]
async fn account_and_request_errors_are_classified_over_real_http() {
    let sandbox = start(Duration::from_millis(100)).await;
    let client = client(&sandbox, "sandbox");
    let id = client
        .create_session(&session("classes", "abandon"))
        .await
        .expect("create")
        .session_id;

    let pdf = client.generate_pdf(id).await.expect_err("not final yet");
    assert_eq!(
        (pdf.status(), pdf.class()),
        (Some(403), ErrorClass::Request)
    );

    control(&sandbox, json!({"action": "revoke_api_key"})).await;
    let revoked = client.decision(id).await.expect_err("revoked");
    assert_eq!(revoked.status(), Some(401));
    assert_eq!(
        revoked.class(),
        ErrorClass::Account(AccountPause::InvalidKey)
    );
    control(&sandbox, json!({"action": "restore_api_key"})).await;

    control(&sandbox, json!({"action": "set_credits", "balance": 0})).await;
    let broke = client
        .create_session(&session("classes-2", "approve"))
        .await
        .expect_err("no credits");
    assert_eq!(broke.class(), ErrorClass::Account(AccountPause::NoCredits));
    assert!(!client.balance().await.expect("balance").has_credit());
    control(
        &sandbox,
        json!({"action": "set_credits", "balance": "1000.0000"}),
    )
    .await;
    client
        .create_session(&session("classes-2", "approve"))
        .await
        .expect("credits are back");

    control(
        &sandbox,
        json!({"action": "fail_next", "endpoint": "decision", "count": 1, "status": 503}),
    )
    .await;
    let outage = client.decision(id).await.expect_err("injected");
    assert_eq!(outage.status(), Some(503));
    assert!(outage.is_retryable());
    client
        .decision(id)
        .await
        .expect("only the next call failed");
    let s = stats(&sandbox).await;
    assert_eq!(s["injected_errors"], 1);
    assert_eq!(s["sessions_created"], 2);
}

#[tokio::test]
async fn the_cli_sandbox_serves_didit_full_and_a_wrong_key_fails_cleanly() {
    let port = free_port();
    let _sandbox = ChildGuard(
        Command::new(kyc_worker_binary())
            .args([
                "sandbox",
                "--port",
                &port.to_string(),
                "--api-key",
                "k",
                "--complete-after-ms",
                "300",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sandbox starts"),
    );
    eventually("the sandbox port", DEADLINE, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let link = format!("open: {base}/session/");
    let ok = tokio::task::spawn_blocking(move || {
        Command::new(kyc_worker_binary())
            .args([
                "didit",
                "full",
                "--vendor-data",
                "user-1",
                "--interval",
                "1",
                "--timeout",
                "20",
            ])
            .env_remove("RUST_LOG")
            .env("KYC_ENV", "ci-none")
            .env("KYC__DIDIT__BASE_URL", &base)
            .env("KYC__DIDIT__API_KEY", "k")
            .output()
            .expect("didit full runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains(&link), "{stdout}");
    assert!(stdout.contains(": Approved"), "{stdout}");

    let base = format!("http://127.0.0.1:{port}");
    let wrong = tokio::task::spawn_blocking(move || {
        Command::new(kyc_worker_binary())
            .args(["didit", "full", "--vendor-data", "user-1"])
            .env_remove("RUST_LOG")
            .env("KYC_ENV", "ci-none")
            .env("KYC__DIDIT__BASE_URL", &base)
            .env("KYC__DIDIT__API_KEY", "not-the-key")
            .output()
            .expect("didit full runs")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one clear line: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("401"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_contested_answers_follow_the_configured_branch() {
    let mut config = SandboxConfig::for_tests(Duration::from_millis(100));
    config.contested = Contested {
        wrong_key: WrongKeyStatus::Forbidden,
        same_status: SameStatus::BadRequest,
        delete: DeleteStatus::Ok,
    };
    let sandbox = start_with(config).await;
    let raw = Raw::new(&sandbox, "sandbox");
    let wrong = Raw::new(&sandbox, "wrong");
    let client = client(&sandbox, "sandbox");

    // §15.1, July 2026: a wrong key is refused with 403 and the 401 body.
    let (status, body) = wrong.get("/v3/sessions/").await;
    assert_eq!((status, body), (403, json!({"detail": "Invalid API Key."})));

    // §15.6, older docs: the same status again is a 400 bare array, and changes nothing.
    let id = client
        .create_session(&session("contested", "approve"))
        .await
        .expect("create")
        .session_id;
    assert_eq!(
        final_decision(&client, id).await.status,
        SessionStatus::Approved
    );
    let (status, same) = raw
        .patch(
            &format!("/v3/session/{id}/update-status/"),
            json!({"new_status": "Approved"}),
        )
        .await;
    assert_eq!(
        (status, same),
        (
            400,
            json!(["The new status is the same as the current status."])
        )
    );
    let d = client.decision(id).await.expect("decision");
    assert_eq!(d.reviews.map_or(0, |r| r.len()), 0, "no review was added");

    // §15.10, August 2026: delete answers 200 with a summary, which the client accepts.
    let (status, deleted) = raw.delete(&format!("/v3/session/{id}/delete/")).await;
    assert_eq!(status, 200);
    assert_eq!(deleted["session_id"], json!(id));
    assert_eq!(deleted["face_retention_outcome"], "none");
    let (status, _) = raw.get(&format!("/v3/session/{id}/decision/")).await;
    assert_eq!(status, 404);
    let other = client
        .create_session(&session("contested-2", "approve"))
        .await
        .expect("create")
        .session_id;
    client
        .delete_session(other)
        .await
        .expect("the client takes a 200 delete as success");

    // The control actions switch each choice back to the default.
    for (action, status) in [
        ("set_wrong_key_status", 401),
        ("set_same_status", 200),
        ("set_delete_status", 204),
    ] {
        control(&sandbox, json!({"action": action, "status": status})).await;
    }
    let (status, _) = wrong.get("/v3/sessions/").await;
    assert_eq!(status, 401);
    let id = client
        .create_session(&session("defaults", "approve"))
        .await
        .expect("create")
        .session_id;
    final_decision(&client, id).await;
    let (status, noop) = raw
        .patch(
            &format!("/v3/session/{id}/update-status/"),
            json!({"new_status": "Approved"}),
        )
        .await;
    assert_eq!((status, noop), (200, json!({"session_id": id})));
    let (status, empty) = raw.delete(&format!("/v3/session/{id}/delete/")).await;
    assert_eq!((status, empty), (204, Value::Null));
    let (status, refused) = control_answer(
        &sandbox,
        &json!({"action": "set_wrong_key_status", "status": 402}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("401 or 403")),
        "{refused}"
    );
}

#[tokio::test]
async fn control_values_that_would_overflow_are_refused_and_the_sandbox_keeps_running() {
    let sandbox = start(Duration::from_millis(100)).await;
    for action in [
        json!({"action": "advance_clock", "seconds": u64::MAX}),
        json!({"action": "advance_clock", "seconds": 200_u64 * 366 * 86_400}),
        json!({"action": "set_limit", "spec": "get=1/999999999999999999m"}),
        json!({"action": "set_limit", "spec": "get=1/999999999999999999s"}),
        json!({"action": "set_limit", "scope": "get", "limit": 1, "window_ms": u64::MAX}),
        json!({"action": "set_limit", "scope": "get", "limit": 1, "window_ms": 0}),
    ] {
        let (status, body) = control_answer(&sandbox, &action).await;
        assert_eq!(status, 400, "{action} answered {body}");
        assert!(
            body["detail"].is_string(),
            "{action}: DRF-style body {body}"
        );
    }
    // The ticker and the clock still work: a session completes, and a long jump is fine.
    control(
        &sandbox,
        json!({"action": "advance_clock", "seconds": 86_400}),
    )
    .await;
    let client = client(&sandbox, "sandbox");
    let id = client
        .create_session(&session("after-refusals", "approve"))
        .await
        .expect("create")
        .session_id;
    assert_eq!(
        final_decision(&client, id).await.status,
        SessionStatus::Approved
    );
    let raw = Raw::new(&sandbox, "sandbox");
    let (status, _) = raw
        .get("/v3/sessions/?limit=18446744073709551615&offset=1")
        .await;
    assert_eq!(status, 200, "an overflowing page still answers");
    let (status, _) = raw
        .post("/v3/billing/top-up/", json!({"amount_in_dollars": "inf"}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_session_link_from_the_sandbox_opens_a_page_of_the_sandbox() {
    // Arrange
    let app = crate::helpers::spawn_app(crate::helpers::AppOptions::default()).await;
    let out = app.cli(&[
        "enqueue",
        "--vendor-data",
        "link-user-1",
        "--sandbox-scenario",
        "approve",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = app.wait_events("kyc.session.created", 1).await;
    let data: serde_json::Value = serde_json::from_str(&created[0]["data"]).expect("data");
    let link = data["url"].as_str().expect("a link").to_owned();

    // Act
    let page = reqwest::get(&link).await.expect("the link opens");
    let status = page.status();
    let text = page.text().await.expect("page");
    let unknown = reqwest::get(format!("{}session/notatoken", app.sandbox.base_url()))
        .await
        .expect("unknown link")
        .status();

    // Assert
    assert!(
        link.starts_with(&format!("{}session/", app.sandbox.base_url())),
        "{link}"
    );
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(&created[0]["session_id"]), "{text}");
    assert!(text.contains("approve"), "{text}");
    assert_eq!(unknown, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn a_create_answered_late_or_cut_off_is_stored_and_listed_and_an_outage_answers_its_status() {
    let sandbox = start(Duration::from_secs(60)).await;
    let mut config = {
        let env = HashMap::from([
            (
                "KYC__DIDIT__BASE_URL".to_owned(),
                sandbox.base_url().to_string(),
            ),
            ("KYC__DIDIT__API_KEY".to_owned(), "sandbox".to_owned()),
        ]);
        Settings::load_from(&Sources {
            config_dir: Some(PathBuf::from("/nonexistent")),
            env: Some(env),
        })
        .expect("settings for the sandbox")
        .didit
        .client_config()
    };
    config.request_timeout = Duration::from_millis(300);
    let client = DiditClient::new(&config).expect("a client");

    // A create answered after the client's timeout: the client sees a timeout, Didit has
    // the session and lists it.
    control(
        &sandbox,
        json!({"action": "answer_creates_late", "count": 1, "ms": 1500}),
    )
    .await;
    let slow = client
        .create_session(&session("late-1", "approve"))
        .await
        .expect_err("answered after the timeout");
    assert!(slow.is_retryable() && !slow.was_not_processed(), "{slow:?}");
    // A create whose connection breaks after the session was stored.
    control(
        &sandbox,
        json!({"action": "answer_creates_late", "count": 1, "reset": true}),
    )
    .await;
    let cut = client
        .create_session(&session("late-2", "approve"))
        .await
        .expect_err("connection broken");
    assert!(
        matches!(cut.kind, didit::DiditErrorKind::Transport(_)) && !cut.was_not_processed(),
        "{cut:?}"
    );
    for person in ["late-1", "late-2"] {
        let page = client
            .list_sessions(&didit::types::SessionQuery {
                vendor_data: Some(person.to_owned()),
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(page.results.len(), 1, "{person}'s session is listed");
    }
    // The fault covered one create each: the next is answered at once.
    client
        .create_session(&session("late-3", "approve"))
        .await
        .expect("answered in time");

    // An outage: every call answers the chosen status, with `Retry-After` when asked.
    control(
        &sandbox,
        json!({"action": "set_error_rate", "rate": 1.0, "status": 429, "retry_after_s": 2}),
    )
    .await;
    let throttled = client
        .list_sessions(&Default::default())
        .await
        .expect_err("throttled");
    assert_eq!(throttled.status(), Some(429));
    assert_eq!(throttled.retry_after(), Some(Duration::from_secs(2)));
    control(&sandbox, json!({"action": "set_error_rate", "rate": 1.0})).await;
    let down = client
        .list_sessions(&Default::default())
        .await
        .expect_err("down");
    assert_eq!((down.status(), down.retry_after()), (Some(500), None));
    control(&sandbox, json!({"action": "set_error_rate", "rate": 0.0})).await;

    // The call log has every call, in arrival order, with the person it concerned.
    let log: Value = reqwest::get(format!("{}sandbox/calls", sandbox.base_url()))
        .await
        .expect("calls")
        .json()
        .await
        .expect("calls json");
    let calls = log["calls"].as_array().expect("calls");
    let seen: Vec<(&str, u64, Option<&str>)> = calls
        .iter()
        .map(|c| {
            (
                c["endpoint"].as_str().unwrap_or_default(),
                c["status"].as_u64().unwrap_or_default(),
                c["vendor_data"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("session_create", 201, Some("late-1")),
            ("session_create", 201, Some("late-2")),
            ("session_list", 200, Some("late-1")),
            ("session_list", 200, Some("late-2")),
            ("session_create", 201, Some("late-3")),
            ("session_list", 429, None),
            ("session_list", 500, None),
        ]
    );
    let times: Vec<u64> = calls
        .iter()
        .filter_map(|c| c["received_ms"].as_u64())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(stats(&sandbox).await["sessions_created"], 3);

    // A late answer needs either a delay or a reset; an outage a 429 or 5xx status.
    for bad in [
        json!({"action": "answer_creates_late", "count": 1}),
        json!({"action": "answer_creates_late", "count": 1, "ms": 10, "reset": true}),
        json!({"action": "set_error_rate", "rate": 1.0, "status": 404}),
        json!({"action": "set_error_rate", "rate": 1.0, "retry_after_s": 0}),
    ] {
        let (status, body) = control_answer(&sandbox, &bad).await;
        assert_eq!(status, 400, "{bad} accepted: {body}");
    }
}

#[tokio::test]
async fn a_seeded_session_is_read_under_its_id_with_its_status_and_played_on_when_not_started() {
    let sandbox = start(Duration::from_millis(200)).await;
    let client = client(&sandbox, "sandbox");
    let (held, waiting) = (Uuid::new_v4(), Uuid::new_v4());
    control(
        &sandbox,
        json!({"action": "seed_session", "session_id": held, "vendor_data": "seeded-held",
               "scenario": "approve_underage", "status": "Approved"}),
    )
    .await;
    control(
        &sandbox,
        json!({"action": "seed_session", "session_id": waiting, "vendor_data": "seeded-waiting"}),
    )
    .await;

    let decision = client.decision(held).await.expect("the seeded session");
    assert_eq!(decision.status, SessionStatus::Approved);
    assert_eq!(decision.vendor_data.as_deref(), Some("seeded-held"));
    assert_eq!(
        final_decision(&client, waiting).await.status,
        SessionStatus::Approved,
        "a Not Started seed is played on by the simulated user"
    );
    let (status, body) = control_answer(
        &sandbox,
        &json!({"action": "seed_session", "session_id": held}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("exists already")),
        "{body}"
    );
    // Seeds are taken as they were, even two unfinished ones of one vendor_data (a create
    // would reuse the first).
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    for id in [first, second] {
        control(
            &sandbox,
            json!({"action": "seed_session", "session_id": id, "vendor_data": "seeded-twice",
                   "scenario": "expire"}),
        )
        .await;
    }
    for id in [first, second] {
        assert_eq!(
            client.decision(id).await.expect("seeded").status,
            SessionStatus::NotStarted
        );
    }
}
