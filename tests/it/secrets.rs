//! Secrets and personal data stay where DESIGN.md allows them: a full flow with a recognisable
//! API key, webhook secret and intake token, expected details and metadata full of personal
//! data, and the sandbox's decisions (names, dates of birth, document numbers, presigned media
//! URLs) — then every log line (JSON and pretty, debug level), `/metrics`, the event stream and
//! every Redis key name are searched for them. Media URLs and secrets must not be stored in
//! any Redis value either.

use std::{collections::HashMap, path::Path, time::Duration};

use kyc_worker::domain::{ExpectedDetails, StartRequest};
use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{eventually, spawn_app, AppOptions, TestApp, DEADLINE, TEST_API_TOKEN};

const API_KEY: &str = "kyc-TESTAPIKEY-7f3a9c2e51d04b";
const WEBHOOK_SECRET: &str = "whsec-TESTSECRET-b81e44aa09c3";

/// Never in logs, metrics, events, key names or any stored value.
const SECRETS: [&str; 3] = [API_KEY, WEBHOOK_SECRET, TEST_API_TOKEN];
/// Didit's presigned media links (ID images): never stored or published.
const MEDIA: [&str; 3] = [
    "sandbox-media.didit.invalid",
    "X-Amz-Signature",
    "X-Amz-Expires",
];
/// The caller's personal data (expected details, metadata).
const CALLER_PII: [&str; 6] = [
    "Zebulon",
    "Quixotewright",
    "1971-03-09",
    "ZX4455667",
    "Secretstreet",
    "zebulon.q@privacy.example",
];
/// What the sandbox's decisions say about the person (docs/sandbox.md, Scenarios).
const DECISION_PII: [&str; 7] = [
    "Carmen",
    "Espa\u{f1}ola",
    "Espa\\u00f1ola",
    "1990-05-15",
    "CAA000000",
    "99999999R",
    "Calle Mayor",
];

fn request(i: usize, scenario: &str) -> StartRequest {
    StartRequest {
        request_id: Some(format!("pii-req-{i}")),
        vendor_data: format!("pii-subject-{i}"),
        sandbox_scenario: Some(scenario.into()),
        expected_details: Some(expected()),
        metadata: Some(json!({"customer_email": "zebulon.q@privacy.example", "plan": "gold"})),
        ..Default::default()
    }
}

fn expected() -> ExpectedDetails {
    ExpectedDetails {
        first_name: Some("Zebulon".into()),
        last_name: Some("Quixotewright".into()),
        date_of_birth: Some("1971-03-09".into()),
        identification_number: Some("ZX4455667".into()),
        address: Some("42 Secretstreet, Nowhere".into()),
        ..Default::default()
    }
}

/// Where a forbidden string was found: (place, needle, a few characters around it).
fn leaks(place: &str, haystack: &str, needles: &[&str], found: &mut Vec<String>) {
    for needle in needles {
        if let Some(at) = haystack.find(needle) {
            let start = haystack[..at]
                .char_indices()
                .rev()
                .nth(80)
                .map_or(0, |(i, _)| i);
            let end = (at + needle.len() + 80).min(haystack.len());
            let end = (end..=haystack.len())
                .find(|i| haystack.is_char_boundary(*i))
                .unwrap_or(haystack.len());
            found.push(format!(
                "{place}: {needle:?} in …{}…",
                &haystack[start..end]
            ));
        }
    }
}

/// One `kyc-worker run` on the app's port (so it receives the sandbox's webhooks) with the
/// given log format; requests `first..first+4` (producer, HTTP intake, intake stream) run to
/// their decision; returns its log output and a `/metrics` scrape.
async fn run_flow(app: &TestApp, format: &str, log: &Path, first: usize) -> (String, String) {
    let mut child = app.spawn_worker(
        &[
            ("KYC__LOG__FORMAT", format.to_owned()),
            ("KYC__LOG__LEVEL", "debug".to_owned()),
        ],
        Some(log),
    );
    eventually("the worker answers /readyz", DEADLINE, || async {
        reqwest::get(app.url("/readyz"))
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    let producer = app.producer().await;
    producer
        .start_kyc(request(first, "approve"))
        .await
        .expect("enqueue");
    producer
        .start_kyc(request(first + 1, "review_aml_possible_match"))
        .await
        .expect("enqueue");
    let http = reqwest::Client::new()
        .post(app.url("/v1/verifications"))
        .bearer_auth(TEST_API_TOKEN)
        .json(&request(first + 2, "decline_aml_hit"))
        .send()
        .await
        .expect("http intake");
    assert_eq!(http.status(), 202);
    let mut c = app.redis.connection().await;
    let stream_request = request(first + 3, "approve_underage");
    let _: String = c
        .xadd(
            "kyc:intake",
            "*",
            &[
                ("request_id", format!("pii-req-{}", first + 3)),
                ("vendor_data", stream_request.vendor_data.clone()),
                ("sandbox_scenario", "approve_underage".to_owned()),
                (
                    "expected_details",
                    serde_json::to_string(&expected()).expect("json"),
                ),
                (
                    "metadata",
                    serde_json::to_string(&stream_request.metadata).expect("json"),
                ),
            ],
        )
        .await
        .expect("xadd");
    eventually(
        "the four requests decided",
        Duration::from_secs(30),
        || async {
            let events = app.events().await;
            let done = (first..first + 4).all(|i| {
                events.iter().any(|e| {
                    e["type"] == "kyc.session.decided" && e["request_id"] == format!("pii-req-{i}")
                })
            });
            done.then_some(())
        },
    )
    .await;
    // A refused webhook and a garbage intake entry log too.
    let _ = reqwest::Client::new()
        .post(app.url("/webhooks/didit"))
        .header("x-timestamp", "1")
        .header("x-signature-v2", "00")
        .body(r#"{"first_name":"Zebulon"}"#)
        .send()
        .await
        .expect("webhook");
    let metrics = app.metrics().await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    eventually("the worker exits", DEADLINE, || {
        let exited = child.try_wait().expect("try_wait");
        async move { exited }
    })
    .await;
    let logs = std::fs::read_to_string(log).expect("worker log");
    (logs, metrics)
}

/// Every key of the database with its value rendered as text (lossy).
async fn dump_redis(app: &TestApp) -> HashMap<String, String> {
    let mut c = app.redis.connection().await;
    let keys: Vec<String> = c.keys("*").await.expect("keys");
    let mut out = HashMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut c)
            .await
            .expect("type");
        let value: redis::Value = match kind.as_str() {
            "string" => c.get(&key).await,
            "hash" => c.hgetall(&key).await,
            "list" => c.lrange(&key, 0, -1).await,
            "set" => c.smembers(&key).await,
            "zset" => c.zrange_withscores(&key, 0, -1).await,
            "stream" => {
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut c)
                    .await
            }
            _ => Ok(redis::Value::Nil),
        }
        .expect("read value");
        out.insert(key, render(&value));
    }
    out
}

fn render(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().map(render).collect::<Vec<_>>().join(" ")
        }
        redis::Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{} {}", render(k), render(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn secrets_pii_and_media_urls_stay_out_of_logs_metrics_events_and_key_names() {
    // Arrange: the sandbox and the fleet share a recognisable key and webhook secret; the
    // default rule pack runs, so the rules' reads of the decision are exercised too.
    let app = spawn_app(AppOptions {
        in_process: false,
        rules: true,
        api_key: Some(API_KEY.into()),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");

    // Act: one run with JSON logs, one with pretty logs, both at debug level.
    let (json_logs, json_metrics) = run_flow(&app, "json", &dir.path().join("json.log"), 0).await;
    let (pretty_logs, pretty_metrics) =
        run_flow(&app, "pretty", &dir.path().join("pretty.log"), 10).await;
    let events = app.events().await;
    let redis = dump_redis(&app).await;

    // Assert: the captures are real.
    assert!(
        json_logs.lines().count() > 10 && pretty_logs.lines().count() > 10,
        "too few log lines:\n{json_logs}\n{pretty_logs}"
    );
    for line in json_logs.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "a JSON-format log line is not JSON: {line}"
        );
    }
    assert!(
        json_logs.contains("DEBUG") || json_logs.contains("\"level\":\"debug\""),
        "no debug lines captured"
    );
    assert!(
        json_logs.contains("event published") && pretty_logs.contains("webhook accepted"),
        "the flow's log lines are missing"
    );
    assert!(
        events
            .iter()
            .any(|e| format!("{e:?}").contains("pii-subject-")),
        "the event scan sees no content"
    );
    assert!(
        events
            .iter()
            .filter(|e| e["type"] == "kyc.session.decided")
            .count()
            >= 8,
        "{events:?}"
    );

    let mut found = Vec::new();
    let everything: Vec<&str> = SECRETS
        .iter()
        .chain(&MEDIA)
        .chain(&CALLER_PII)
        .chain(&DECISION_PII)
        .copied()
        .collect();
    leaks("JSON logs", &json_logs, &everything, &mut found);
    leaks("pretty logs", &pretty_logs, &everything, &mut found);
    // Metrics are labelled by queue, endpoint, status and rule: no subject either.
    let mut metric_needles = everything.clone();
    metric_needles.extend(["pii-subject-", "pii-req-"]);
    leaks(
        "/metrics (json run)",
        &json_metrics,
        &metric_needles,
        &mut found,
    );
    leaks(
        "/metrics (pretty run)",
        &pretty_metrics,
        &metric_needles,
        &mut found,
    );
    // Events carry vendor_data and request_id by design, never the rest.
    for e in &events {
        let text = format!("{e:?}");
        let place = format!("event {} of {}", e["type"], e["request_id"]);
        let needles: Vec<&str> = SECRETS
            .iter()
            .chain(&MEDIA)
            .chain(&CALLER_PII[..5])
            .chain(&DECISION_PII)
            .copied()
            .collect();
        leaks(&place, &text, &needles, &mut found);
    }
    // Key names: no personal data, no subject; values: no secrets, no media links.
    for (key, value) in &redis {
        let mut key_needles = everything.clone();
        key_needles.push("pii-subject-");
        leaks(
            &format!("Redis key name {key:?}"),
            key,
            &key_needles,
            &mut found,
        );
        let value_needles: Vec<&str> = SECRETS.iter().chain(&MEDIA).copied().collect();
        leaks(
            &format!("Redis value of {key}"),
            value,
            &value_needles,
            &mut found,
        );
    }
    eprintln!(
        "[secrets] log lines: json={} pretty={}; events={}; redis keys={}; metrics lines={}",
        json_logs.lines().count(),
        pretty_logs.lines().count(),
        events.len(),
        redis.len(),
        json_metrics.lines().count()
    );
    assert!(
        found.is_empty(),
        "{} leaks:\n{}",
        found.len(),
        found.join("\n")
    );
}
