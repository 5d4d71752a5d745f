//! The OpenAPI document (`docs/api/openapi.json`, served at `/v1/openapi.json`) against the
//! routes' real answers: every answer's status is documented for its route, its body matches
//! the documented schema and its documented headers are there; and every documented answer
//! is produced here, so the document cannot promise what the fleet never says.

use std::collections::BTreeSet;

use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::helpers::{
    eventually, openapi_to_json_schema, spawn_app, AppOptions, TestApp, DEADLINE, TEST_API_TOKEN,
};

/// Start requests the backpressure check counts before it refuses (kept small for the test).
const BACKPRESSURE_LIMIT: u64 = 5;

struct Checker {
    spec: Value,
    seen: BTreeSet<(String, String, String)>,
}

impl Checker {
    /// Checks one real answer of `method path` (the document's path template) against the
    /// document, and returns its JSON body.
    async fn check(&mut self, path: &str, method: &str, response: reqwest::Response) -> Value {
        let status = response.status().as_u16().to_string();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a body");
        let mut documented = self.spec["paths"][path][method]["responses"][&status].clone();
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which the document does not list"
        );
        if let Some(reference) = documented["$ref"].as_str() {
            let name = reference
                .strip_prefix("#/components/responses/")
                .expect("a response ref");
            documented = self.spec["components"]["responses"][name].clone();
        }
        if let Some(documented_headers) = documented["headers"].as_object() {
            for (name, header) in documented_headers {
                let header = match header["$ref"].as_str() {
                    Some(r) => {
                        let key = r.strip_prefix("#/components/headers/").expect("a ref");
                        self.spec["components"]["headers"][key].clone()
                    }
                    None => header.clone(),
                };
                let value = headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_else(|| panic!("{method} {path} {status} lacks header {name}"));
                let parsed: Value = serde_json::from_str(value).unwrap_or(json!(value));
                validate(
                    &self.spec,
                    &header["schema"],
                    &parsed,
                    &format!("{method} {path} {status} header {name}"),
                );
            }
        }
        let body = match documented["content"].as_object() {
            Some(content) => {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let media = content_type.split(';').next().unwrap_or_default().trim();
                let schema = &content.get(media).unwrap_or_else(|| {
                    panic!("{method} {path} {status} answered {content_type}, not documented")
                })["schema"];
                let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    panic!("{method} {path} {status}: the body is not JSON ({e})")
                });
                validate(
                    &self.spec,
                    schema,
                    &body,
                    &format!("{method} {path} {status}"),
                );
                body
            }
            None => Value::Null,
        };
        self.seen
            .insert((path.to_owned(), method.to_owned(), status));
        body
    }

    /// Every documented (path, method, status) that was not produced.
    fn unproduced(&self) -> Vec<(String, String, String)> {
        let mut missing = Vec::new();
        for (path, operations) in self.spec["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                for status in operation["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                {
                    let key = (path.clone(), method.clone(), status.clone());
                    if !self.seen.contains(&key) {
                        missing.push(key);
                    }
                }
            }
        }
        missing
    }
}

fn validate(spec: &Value, schema: &Value, instance: &Value, what: &str) {
    let schema = openapi_to_json_schema(spec, schema);
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the converted schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the document:\n{}\n{instance:#}",
        errors.join("\n")
    );
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn post(app: &TestApp, path: &str, token: Option<&str>, body: &str) -> reqwest::RequestBuilder {
    let request = client()
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

fn get(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
    let request = client().get(app.url(path));
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.expect("the fleet answers")
}

#[tokio::test]
async fn every_route_answers_as_the_openapi_document_says() {
    let mut app = spawn_app(AppOptions {
        env: vec![(
            "KYC__QUEUE__BACKPRESSURE_LIMIT".into(),
            BACKPRESSURE_LIMIT.to_string(),
        )],
        ..Default::default()
    })
    .await;
    let token = Some(TEST_API_TOKEN);
    let served = send(get(&app, "/v1/openapi.json", None)).await;
    let spec: Value = serde_json::from_str(include_str!("../../docs/api/openapi.json"))
        .expect("the document is JSON");
    let mut checker = Checker {
        spec: spec.clone(),
        seen: BTreeSet::new(),
    };
    let served = checker.check("/v1/openapi.json", "get", served).await;
    assert_eq!(served, spec, "the served document is the repository's");
    assert!(
        spec["servers"].as_array().is_some_and(|s| !s.is_empty()),
        "the document names its servers"
    );

    // Start a verification and follow it to its decision, checking each answer on the way.
    let verifications = "/v1/verifications";
    let accepted = checker
        .check(
            verifications,
            "post",
            send(post(
                &app,
                verifications,
                token,
                r#"{"vendor_data": "u-1", "sandbox_scenario": "approve"}"#,
            ))
            .await,
        )
        .await;
    let status_url = accepted["status_url"].as_str().expect("a status URL");
    let status_path = "/v1/verifications/{request_id}";
    let mut statuses = BTreeSet::new();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let progress = checker
            .check(status_path, "get", send(get(&app, status_url, token)).await)
            .await;
        let status = progress["status"].as_str().expect("a status").to_owned();
        statuses.insert(status.clone());
        if status == "Approved" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "not decided: {statuses:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A request that cannot be created reads as failed.
    let producer = app.producer().await;
    let failing = producer
        .start_kyc(kyc_worker::domain::StartRequest {
            vendor_data: "u-failed".into(),
            workflow_id: Some(uuid::Uuid::nil()),
            ..Default::default()
        })
        .await
        .expect("queued");
    app.wait_events("kyc.session.failed", 1).await;
    let failed = checker
        .check(
            status_path,
            "get",
            send(get(&app, &format!("/v1/verifications/{failing}"), token)).await,
        )
        .await;
    assert_eq!(failed["status"], "failed");

    for (body, token) in [
        (r#"{"vendor_data": "u-2", "vendor_dta": "x"}"#, token),
        (r#"{"vendor_data": "u-2", "workflow": "premium"}"#, token),
        (r#"{"vendor_data": "u-2"}"#, None),
        (r#"{"vendor_data": "u-2"}"#, Some("wrong")),
    ] {
        checker
            .check(
                verifications,
                "post",
                send(post(&app, verifications, token, body)).await,
            )
            .await;
    }
    checker
        .check(
            status_path,
            "get",
            send(get(&app, "/v1/verifications/unknown-1", token)).await,
        )
        .await;
    checker
        .check(
            status_path,
            "get",
            send(get(&app, "/v1/verifications/unknown-1", None)).await,
        )
        .await;

    // The id of the request above, reused with another body: a 422 problem document.
    let reused = json!({"request_id": accepted["request_id"], "vendor_data": "u-other"});
    let mismatch = checker
        .check(
            verifications,
            "post",
            send(post(&app, verifications, token, &reused.to_string())).await,
        )
        .await;
    assert_eq!(mismatch["status"], 422, "{mismatch}");
    assert_eq!(
        mismatch["differing_fields"],
        json!(["sandbox_scenario", "vendor_data"])
    );

    let erase = "/v1/subjects/erase";
    // Not JSON: 415 on both routes that read a body.
    for path in [verifications, erase] {
        let not_json = client()
            .post(app.url(path))
            .bearer_auth(TEST_API_TOKEN)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("vendor_data=u-1");
        checker.check(path, "post", send(not_json).await).await;
    }
    for (body, token) in [
        (r#"{"vendor_data": "u-1"}"#, token),
        (r#"{"vendor_data": ""}"#, token),
        ("not json", token),
        (r#"{"vendor_data": "u-1"}"#, None),
    ] {
        checker
            .check(erase, "post", send(post(&app, erase, token, body)).await)
            .await;
    }

    // Over the body limit (2 MiB, axum's default): refused before it is read.
    let huge = format!(r#"{{"vendor_data": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    for path in [verifications, erase] {
        checker
            .check(path, "post", send(post(&app, path, token, &huge)).await)
            .await;
    }

    // Backpressure: as many start requests waiting (far in the future) as the limit.
    let mut c = app.redis.connection().await;
    let far = 32_503_680_000_000_u64;
    for i in 0..BACKPRESSURE_LIMIT {
        let _: u64 = c
            .zadd("kyc:queue:start:delayed", format!("filler-{i}"), far)
            .await
            .expect("zadd");
    }
    let refused = eventually("backpressure", DEADLINE, || async {
        let r = send(post(
            &app,
            verifications,
            token,
            r#"{"vendor_data": "u-3"}"#,
        ))
        .await;
        (r.status() == 429).then_some(r)
    })
    .await;
    checker.check(verifications, "post", refused).await;
    let _: u64 = c.del("kyc:queue:start:delayed").await.expect("del");

    // Redis gone: each route says so as documented.
    app.redis.kill();
    let unavailable = |request: reqwest::RequestBuilder| async move {
        eventually("a 503", DEADLINE, || {
            let request = request.try_clone().expect("a plain request");
            async move {
                let r = request.send().await.ok()?;
                (r.status() == 503).then_some(r)
            }
        })
        .await
    };
    let r = unavailable(post(
        &app,
        verifications,
        token,
        r#"{"vendor_data": "u-4"}"#,
    ))
    .await;
    checker.check(verifications, "post", r).await;
    let r = unavailable(get(&app, status_url, token)).await;
    checker.check(status_path, "get", r).await;
    let r = unavailable(post(&app, erase, token, r#"{"vendor_data": "u-4"}"#)).await;
    checker.check(erase, "post", r).await;
    app.redis.spawn().await;

    assert_eq!(
        checker.unproduced(),
        Vec::<(String, String, String)>::new(),
        "documented answers never produced"
    );
    app.stop().await;
}
