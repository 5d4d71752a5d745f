//! Hostile input: forged, stale, replayed, oversized and malformed webhooks; garbage on the
//! intake stream and the HTTP intake; arbitrary and truncated JSON fed to the decision parser
//! and the rules. Each gets the right status, is counted under the right label and changes
//! nothing; nothing panics.

use std::time::Duration;

use didit::{types::Decision, webhook::sign};
use hmac::{Hmac, Mac};
use kyc_worker::{
    domain::StartRequest,
    producer::ProducerError,
    rules::{view::DecisionView, RuleSet, DEFAULT_RULES},
};
use proptest::prelude::*;
use redis::AsyncCommands;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::helpers::{eventually, spawn_app, AppOptions, TestApp, DEADLINE, TEST_API_TOKEN};

const SECRET: &str = "sandbox-webhook-secret";

fn now_s() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) async fn scrape(app: &TestApp) -> String {
    reqwest::get(app.url("/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text")
}

/// The value of one series in a scrape (0 when absent).
pub(crate) fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Every `name{…}` series of a scrape with its value.
fn series(scrape: &str, name: &str) -> Vec<(String, f64)> {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            Some((s.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Nothing reached the queues, the event stream or Didit.
pub(crate) async fn assert_nothing_enqueued(app: &TestApp, what: &str) {
    let mut c = app.redis.connection().await;
    let events: u64 = c.xlen("kyc:events").await.expect("xlen");
    assert_eq!(events, 0, "{what}: an event was published");
    let queue = kyc_worker::queue::Queue::connect(&app.redis.url(), "kyc", Default::default())
        .await
        .expect("queue");
    for q in ["start", "poll"] {
        let s = queue.stats(q).await.expect("stats");
        assert_eq!(
            (s.ready, s.in_flight, s.scheduled, s.dead),
            (0, 0, 0, 0),
            "{what}: something was enqueued on {q}"
        );
    }
    assert_eq!(
        app.sandbox_stats().await["sessions_created"],
        0,
        "{what}: Didit was called"
    );
}

fn raw_hmac(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn signed_v2(body: &str, ts: i64) -> Vec<(&'static str, String)> {
    let s = sign(SECRET, body.as_bytes(), ts).expect("sign");
    vec![("x-timestamp", ts.to_string()), ("x-signature-v2", s.v2)]
}

fn payload(session_id: &str, status: &str, ts: i64) -> String {
    json!({"event_id": uuid::Uuid::new_v4().to_string(), "session_id": session_id,
           "status": status, "timestamp": ts, "webhook_type": "status.updated"})
    .to_string()
}

/// An intake stream entry's fields.
type StreamFields = Vec<(&'static str, Vec<u8>)>;
/// (case, body, Idempotency-Key, rejection reason label, field named in the answer).
type HttpCase = (
    &'static str,
    Vec<u8>,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
);

/// One hostile delivery and what it must get.
struct Case {
    name: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    status: u16,
    result: &'static str,
}

#[tokio::test]
async fn hostile_webhooks_get_the_right_status_are_counted_and_change_nothing() {
    let app = spawn_app(AppOptions::default()).await;
    let client = reqwest::Client::new();
    let ts = now_s();
    let unknown = uuid::Uuid::new_v4().to_string();
    let good = payload(&unknown, "Approved", ts);
    let stale = payload(&unknown, "Approved", ts - 3600);
    let future = payload(&unknown, "Approved", ts + 3600);
    let not_json = b"{\"session_id\": \"x\", oops".to_vec();
    let not_a_uuid = payload("not-a-uuid", "Approved", ts);
    let array = "[1,2,3]";
    let mut huge = vec![b' '; 1024 * 1024 + 1];
    huge[0] = b'{';
    let cases = vec![
        Case {
            name: "wrong signature",
            body: good.clone().into_bytes(),
            headers: vec![
                ("x-timestamp", ts.to_string()),
                ("x-signature-v2", "0".repeat(64)),
                ("x-signature", "f".repeat(64)),
            ],
            status: 401,
            result: "bad_signature",
        },
        Case {
            name: "signed with another secret",
            body: good.clone().into_bytes(),
            headers: {
                let s = sign("someone-elses-secret", good.as_bytes(), ts).expect("sign");
                vec![("x-timestamp", ts.to_string()), ("x-signature-v2", s.v2)]
            },
            status: 401,
            result: "bad_signature",
        },
        Case {
            name: "no headers at all",
            body: good.clone().into_bytes(),
            headers: vec![],
            status: 401,
            result: "bad_signature",
        },
        Case {
            name: "a signature but no X-Timestamp",
            body: good.clone().into_bytes(),
            headers: signed_v2(&good, ts).into_iter().skip(1).collect(),
            status: 401,
            result: "bad_signature",
        },
        Case {
            name: "X-Timestamp but no signature",
            body: good.clone().into_bytes(),
            headers: vec![("x-timestamp", ts.to_string())],
            status: 401,
            result: "bad_signature",
        },
        Case {
            name: "stale timestamp (1 h old), correctly signed",
            body: stale.clone().into_bytes(),
            headers: signed_v2(&stale, ts - 3600),
            status: 401,
            result: "stale",
        },
        Case {
            name: "future timestamp (1 h ahead), correctly signed",
            body: future.clone().into_bytes(),
            headers: signed_v2(&future, ts + 3600),
            status: 401,
            result: "stale",
        },
        Case {
            name: "X-Timestamp not a number",
            body: good.clone().into_bytes(),
            headers: vec![
                ("x-timestamp", "yesterday".into()),
                ("x-signature-v2", signed_v2(&good, ts)[1].1.clone()),
            ],
            status: 401,
            result: "stale",
        },
        Case {
            name: "X-Timestamp differs from the signed body's timestamp",
            body: good.clone().into_bytes(),
            headers: vec![
                ("x-timestamp", (ts - 10).to_string()),
                ("x-signature-v2", signed_v2(&good, ts)[1].1.clone()),
            ],
            status: 401,
            result: "stale",
        },
        Case {
            name: "invalid JSON body with a valid raw signature",
            body: not_json.clone(),
            headers: vec![
                ("x-timestamp", ts.to_string()),
                ("x-signature", raw_hmac(&not_json)),
            ],
            status: 400,
            result: "malformed",
        },
        Case {
            name: "a JSON array with a valid raw signature",
            body: array.as_bytes().to_vec(),
            headers: vec![
                ("x-timestamp", ts.to_string()),
                ("x-signature", raw_hmac(array.as_bytes())),
            ],
            status: 400,
            result: "malformed",
        },
        Case {
            name: "session_id not a UUID, correctly signed",
            body: not_a_uuid.clone().into_bytes(),
            headers: signed_v2(&not_a_uuid, ts),
            status: 400,
            result: "malformed",
        },
        Case {
            name: "body over 1 MiB",
            body: huge,
            headers: vec![
                ("x-timestamp", ts.to_string()),
                ("x-signature-v2", "0".repeat(64)),
            ],
            status: 413,
            result: "too_large",
        },
        Case {
            name: "unknown session, correctly signed",
            body: good.clone().into_bytes(),
            headers: signed_v2(&good, ts),
            status: 200,
            result: "unknown_session",
        },
        Case {
            name: "the same delivery replayed",
            body: good.clone().into_bytes(),
            headers: signed_v2(&good, ts),
            status: 200,
            result: "duplicate",
        },
    ];

    for case in cases {
        let before = scrape(&app).await;
        let mut request = client
            .post(app.url("/webhooks/didit"))
            .header("content-type", "application/json")
            .body(case.body.clone());
        for (k, v) in &case.headers {
            request = request.header(*k, v);
        }
        let status = request.send().await.expect("webhook").status().as_u16();
        assert_eq!(status, case.status, "{}", case.name);
        let after = scrape(&app).await;
        for (s, v) in series(&after, "kyc_webhooks_total") {
            let delta = v - value(&before, &s);
            let expected = if s == format!("kyc_webhooks_total{{result=\"{}\"}}", case.result) {
                1.0
            } else {
                0.0
            };
            assert_eq!(delta, expected, "{}: {s} moved by {delta}", case.name);
        }
        assert!(
            after.contains(&format!("kyc_webhooks_total{{result=\"{}\"}}", case.result)),
            "{}: no series for result {}",
            case.name,
            case.result
        );
        assert_nothing_enqueued(&app, case.name).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn hostile_intake_stream_entries_are_rejected_with_a_reason_and_counted() {
    let app = spawn_app(AppOptions::default()).await;
    let mut c = app.redis.connection().await;
    let long = "v".repeat(300);
    // (fields, kyc_intake_rejected_total reason, what the recorded reason must mention)
    let bad: Vec<(StreamFields, &str, &str)> = vec![
        (
            vec![("sandbox_scenario", b"approve".to_vec())],
            "invalid",
            "vendor_data",
        ),
        (
            vec![("vendor_data", b"   ".to_vec())],
            "invalid",
            "vendor_data",
        ),
        (
            vec![("vendor_data", long.clone().into_bytes())],
            "invalid",
            "vendor_data",
        ),
        (
            vec![
                ("vendor_data", b"u-1".to_vec()),
                ("metadata", b"{not json".to_vec()),
            ],
            "malformed",
            "metadata is not JSON",
        ),
        (
            vec![
                ("vendor_data", b"u-2".to_vec()),
                ("expected_details", b"[1, 2".to_vec()),
            ],
            "malformed",
            "expected_details is not JSON",
        ),
        (
            vec![
                ("vendor_data", b"u-3".to_vec()),
                ("metadata", b"[1, 2]".to_vec()),
            ],
            "invalid",
            "metadata",
        ),
        (
            vec![("vendor_data", vec![0xff, 0xfe, 0x00, 0x80])],
            "malformed",
            "vendor_data is not text",
        ),
        (
            vec![
                ("vendor_data", b"u-4".to_vec()),
                ("request_id", "ordre numéro 1".as_bytes().to_vec()),
            ],
            "invalid",
            "request_id",
        ),
        (
            vec![
                ("vendor_data", b"u-5".to_vec()),
                ("language", b"not a language".to_vec()),
            ],
            "invalid",
            "language",
        ),
    ];
    let before = scrape(&app).await;
    let mut ids = Vec::new();
    for (fields, _, _) in &bad {
        let id: String = c.xadd("kyc:intake", "*", fields).await.expect("xadd");
        ids.push(id);
    }

    let rejected = eventually("every bad entry rejected", DEADLINE, || {
        let mut c = c.clone();
        let n = bad.len();
        async move {
            let r: redis::streams::StreamRangeReply =
                c.xrange_all("kyc:intake:rejected").await.ok()?;
            (r.ids.len() == n).then_some(r)
        }
    })
    .await;
    let reason_of = |entry: &str| -> String {
        rejected
            .ids
            .iter()
            .find(|e| {
                redis::from_redis_value_ref::<String>(&e.map["entry_id"]).ok()
                    == Some(entry.to_owned())
            })
            .map(|e| redis::from_redis_value_ref::<String>(&e.map["reason"]).expect("reason"))
            .unwrap_or_else(|| panic!("entry {entry} was not rejected"))
    };
    for ((fields, _, needle), id) in bad.iter().zip(&ids) {
        let reason = reason_of(id);
        assert!(
            reason.contains(needle),
            "entry {fields:?}: reason {reason:?} lacks {needle:?}"
        );
        assert!(
            !reason.contains(&long),
            "the reason echoes the value: {reason}"
        );
    }
    let after = eventually("rejections counted", DEADLINE, || async {
        let s = scrape(&app).await;
        let total: f64 = ["invalid", "malformed"]
            .iter()
            .map(|r| {
                value(
                    &s,
                    &format!(
                        "kyc_intake_rejected_total{{reason=\"{r}\",source=\"intake_stream\"}}"
                    ),
                )
            })
            .sum();
        (total as usize >= bad.len()).then_some(s)
    })
    .await;
    for kind in ["invalid", "malformed"] {
        let series =
            format!("kyc_intake_rejected_total{{reason=\"{kind}\",source=\"intake_stream\"}}");
        let expected = bad.iter().filter(|(_, k, _)| *k == kind).count() as f64;
        assert_eq!(
            value(&after, &series) - value(&before, &series),
            expected,
            "{series}"
        );
    }
    let left: u64 = c.xlen("kyc:intake").await.expect("xlen");
    assert_eq!(left, 0, "every entry was acknowledged and removed");
    assert_nothing_enqueued(&app, "intake stream garbage").await;
    app.stop().await;
}

#[tokio::test]
async fn hostile_http_intake_bodies_are_rejected_with_a_reason_and_counted() {
    let app = spawn_app(AppOptions::default()).await;
    let client = reqwest::Client::new();
    let cases: Vec<HttpCase> = vec![
        (
            "not JSON",
            b"vendor_data=u-1".to_vec(),
            None,
            "malformed",
            None,
        ),
        ("a JSON array", b"[]".to_vec(), None, "malformed", None),
        (
            "truncated JSON",
            br#"{"vendor_data": "u-"#.to_vec(),
            None,
            "malformed",
            None,
        ),
        ("binary", vec![0xff, 0x00, 0xfe], None, "malformed", None),
        (
            "vendor_data of the wrong type",
            br#"{"vendor_data": 42}"#.to_vec(),
            None,
            "malformed",
            None,
        ),
        (
            "empty vendor_data",
            br#"{"vendor_data": ""}"#.to_vec(),
            None,
            "invalid",
            Some("vendor_data"),
        ),
        (
            "metadata not an object",
            br#"{"vendor_data": "u-1", "metadata": "x"}"#.to_vec(),
            None,
            "invalid",
            Some("metadata"),
        ),
        (
            "callback not a URL",
            br#"{"vendor_data": "u-1", "callback": "::"}"#.to_vec(),
            None,
            "invalid",
            Some("callback"),
        ),
        (
            "Idempotency-Key differs from request_id",
            br#"{"vendor_data": "u-1", "request_id": "a-1"}"#.to_vec(),
            Some("b-2"),
            "invalid",
            Some("request_id"),
        ),
        (
            "Idempotency-Key with a space",
            br#"{"vendor_data": "u-1"}"#.to_vec(),
            Some("order 1"),
            "invalid",
            Some("request_id"),
        ),
    ];
    for (name, body, key, reason, field) in cases {
        let before = scrape(&app).await;
        let mut request = client
            .post(app.url("/v1/verifications"))
            .bearer_auth(TEST_API_TOKEN)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.expect("post");
        assert_eq!(response.status(), 400, "{name}");
        let answer: Value = response.json().await.expect("json error body");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{name}: no reason in {answer}"
        );
        assert_eq!(answer["field"].as_str(), field, "{name}: {answer}");
        let after = scrape(&app).await;
        for kind in ["invalid", "malformed"] {
            let series = format!("kyc_intake_rejected_total{{reason=\"{kind}\",source=\"http\"}}");
            let delta = value(&after, &series) - value(&before, &series);
            assert_eq!(
                delta,
                f64::from(u8::from(kind == reason)),
                "{name}: {series} moved by {delta}"
            );
        }
    }
    assert_nothing_enqueued(&app, "HTTP intake garbage").await;
    app.stop().await;
}

/// Real decisions from the sandbox, one per scenario, with every section filled.
fn sandbox_decisions() -> Vec<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sandbox = didit_sandbox::Sandbox::start(didit_sandbox::SandboxConfig::for_tests(
            Duration::from_secs(3600),
        ))
        .await
        .expect("sandbox");
        let base = sandbox.base_url().to_string();
        let client = reqwest::Client::new();
        let mut decisions = Vec::new();
        for scenario in didit_sandbox::Scenario::ALL {
            let created: Value = client
                .post(format!("{base}v3/session/"))
                .header("x-api-key", "sandbox")
                .json(
                    &json!({"workflow_id": "5f0c9a52-2b8e-4d3c-9a61-7e4b8d2c1f30",
                              "vendor_data": format!("prop-{}", scenario.as_str()),
                              "sandbox_scenario": scenario.as_str()}),
                )
                .send()
                .await
                .expect("create")
                .json()
                .await
                .expect("create json");
            let id = created["session_id"]
                .as_str()
                .expect("session_id")
                .to_owned();
            client
                .post(format!("{base}sandbox/control"))
                .json(&json!({"action": "complete_session", "session_id": id}))
                .send()
                .await
                .expect("complete");
            let decision: Value = client
                .get(format!("{base}v3/session/{id}/decision/"))
                .header("x-api-key", "sandbox")
                .send()
                .await
                .expect("decision")
                .json()
                .await
                .expect("decision json");
            decisions.push(decision);
        }
        decisions.push(
            serde_json::from_str(include_str!("../fixtures/decision-in-review.json"))
                .expect("fixture"),
        );
        decisions
    })
}

/// Feeds bytes to the parser and, when they parse, to the view and the default rules.
fn digest(bytes: &[u8], now: OffsetDateTime) {
    static RULES: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
    let rules = RULES.get_or_init(|| RuleSet::parse(DEFAULT_RULES).expect("default rules"));
    if let Ok(decision) = serde_json::from_slice::<Decision>(bytes) {
        let view = DecisionView::new(&decision, now);
        let _ = view.to_json();
        let _ = rules.evaluate(None, &decision, now);
        let _ = rules.evaluate(Some("no-such-workflow"), &decision, now);
    }
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("1990-05-15"),
            Just("0000-00-00"),
            Just("9999-12-31"),
            Just("2024-02-30"),
            Just("Approved"),
            Just("In Review"),
            Just("ESP"),
            Just(""),
            Just("-1e309"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path to a value inside `v`.
fn paths(v: &Value, here: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let mut p = here.clone();
                p.push(k.clone());
                paths(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let mut p = here.clone();
                p.push(i.to_string());
                paths(child, p, out);
            }
        }
        _ => {}
    }
}

fn replace_at(v: &mut Value, path: &[String], new: Value) {
    match path.split_first() {
        None => *v = new,
        Some((head, rest)) => {
            let child = match v {
                Value::Object(m) => m.get_mut(head),
                Value::Array(a) => head.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                _ => None,
            };
            if let Some(child) = child {
                replace_at(child, rest, new);
            }
        }
    }
}

#[test]
fn hostile_json_never_panics_the_decision_parser_the_view_or_the_rules() {
    let decisions = sandbox_decisions();
    let now = OffsetDateTime::now_utc();
    let far = [
        now,
        OffsetDateTime::UNIX_EPOCH,
        OffsetDateTime::from_unix_timestamp(253_402_300_799).expect("year 9999"),
    ];

    // Every truncation of every real decision, at every byte.
    for d in &decisions {
        let bytes = serde_json::to_vec(d).expect("bytes");
        for cut in 0..=bytes.len() {
            for t in far {
                digest(&bytes[..cut], t);
            }
        }
        for t in far {
            digest(&bytes, t);
        }
    }

    let config = ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config.clone());
    // Arbitrary bytes and arbitrary JSON.
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
            digest(&bytes, now);
            Ok(())
        })
        .expect("arbitrary bytes");
    runner
        .run(&any_json(), |v| {
            digest(&serde_json::to_vec(&v).expect("bytes"), now);
            Ok(())
        })
        .expect("arbitrary JSON");

    // Real decisions with one value anywhere replaced by anything, at any time.
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1024,
        ..config
    });
    runner
        .run(
            &(
                0..decisions.len(),
                any::<prop::sample::Index>(),
                any_json(),
                -62_000_000_000i64..253_402_300_799,
            ),
            |(which, at, new, ts)| {
                let mut d = decisions[which].clone();
                let mut all = Vec::new();
                paths(&d, Vec::new(), &mut all);
                let path = at.get(&all).clone();
                replace_at(&mut d, &path, new);
                let bytes = serde_json::to_vec(&d).expect("bytes");
                let t = OffsetDateTime::from_unix_timestamp(ts).unwrap_or(now);
                digest(&bytes, t);
                Ok(())
            },
        )
        .expect("mutated decisions");
}

/// A store over the app's Redis, to read what the routes left behind.
async fn store(app: &TestApp) -> kyc_worker::store::Store {
    let conn = kyc_worker::queue::connect(&app.redis.url())
        .await
        .expect("redis");
    kyc_worker::store::Store::new(conn, "kyc", app.settings().events)
}

/// `GET /v1/verifications/{id}`: status and body.
async fn verification(app: &TestApp, request_id: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(app.url(&format!("/v1/verifications/{request_id}")))
        .bearer_auth(TEST_API_TOKEN)
        .send()
        .await
        .expect("status route");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The reasons recorded on `kyc:intake:rejected`.
async fn rejected_reasons(app: &TestApp) -> Vec<String> {
    let mut c = app.redis.connection().await;
    let r: redis::streams::StreamRangeReply =
        c.xrange_all("kyc:intake:rejected").await.expect("xrange");
    r.ids
        .iter()
        .filter_map(|e| redis::from_redis_value_ref::<String>(&e.map["reason"]).ok())
        .collect()
}

#[tokio::test]
async fn hostile_a_reused_idempotency_key_is_refused_on_every_intake_and_erasure_stays_with_its_person(
) {
    // Arrange
    let app = spawn_app(AppOptions::default()).await;
    let client = reqwest::Client::new();
    let post = |vendor_data: &str| {
        client
            .post(app.url("/v1/verifications"))
            .bearer_auth(TEST_API_TOKEN)
            .header("idempotency-key", "idem-dup-1")
            .json(&json!({"vendor_data": vendor_data, "sandbox_scenario": "approve"}))
            .send()
    };
    let producer = app.producer().await;
    let reused = |vendor_data: &str, metadata: Option<Value>| StartRequest {
        request_id: Some("idem-dup-1".into()),
        vendor_data: vendor_data.into(),
        sandbox_scenario: Some("approve".into()),
        metadata,
        ..Default::default()
    };

    // Act: alice, then bob, then alice again, under one key, over HTTP…
    let alice = post("alice-idem").await.expect("alice");
    let (alice_status, alice_answer) = (alice.status().as_u16(), alice.json::<Value>().await);
    let bob = post("bob-idem").await.expect("bob");
    let (bob_status, bob_answer) = (bob.status().as_u16(), bob.json::<Value>().await);
    let again = post("alice-idem").await.expect("alice again");
    let (again_status, again_answer) = (again.status().as_u16(), again.json::<Value>().await);
    // …through the Rust producer (another person; the same person with other metadata)…
    let from_rust = producer.start_kyc(reused("bob-idem", None)).await;
    let other_metadata = producer
        .start_kyc(reused("alice-idem", Some(json!({"order": 7}))))
        .await;
    let same_from_rust = producer.start_kyc(reused("alice-idem", None)).await;
    // …and on the intake stream.
    let mut c = app.redis.connection().await;
    let _: String = c
        .xadd(
            "kyc:intake",
            "*",
            &[("request_id", "idem-dup-1"), ("vendor_data", "bob-idem")],
        )
        .await
        .expect("xadd");
    let reasons = eventually("the stream entry rejected", DEADLINE, || async {
        let reasons = rejected_reasons(&app).await;
        (!reasons.is_empty()).then_some(reasons)
    })
    .await;
    app.wait_events("kyc.session.created", 1).await;
    // Bob's erasure must not touch alice's request.
    let erase = client
        .post(app.url("/v1/subjects/erase"))
        .bearer_auth(TEST_API_TOKEN)
        .json(&json!({"vendor_data": "bob-idem"}))
        .send()
        .await
        .expect("erase");
    assert_eq!(erase.status(), 202);
    app.wait_events("kyc.subject.erased", 1).await;

    // Assert
    assert_eq!(alice_status, 202);
    assert_eq!(again_status, 202);
    let alice_answer = alice_answer.expect("json");
    assert_eq!(
        again_answer.expect("json"),
        alice_answer,
        "the original answer"
    );
    assert_eq!(alice_answer["request_id"], "idem-dup-1");
    assert_eq!(bob_status, 422);
    let bob_answer = bob_answer.expect("json");
    assert_eq!(bob_answer["reason"], "idempotency_mismatch", "{bob_answer}");
    assert_eq!(bob_answer["field"], "request_id", "{bob_answer}");
    assert!(
        bob_answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("vendor_data") && !e.contains("bob-idem")),
        "names the field, not the value: {bob_answer}"
    );
    assert!(
        matches!(
            from_rust,
            Err(ProducerError::IdempotencyMismatch { ref fields }) if fields == &["vendor_data"]
        ),
        "{from_rust:?}"
    );
    assert!(
        matches!(
            other_metadata,
            Err(ProducerError::IdempotencyMismatch { ref fields }) if fields == &["metadata"]
        ),
        "{other_metadata:?}"
    );
    assert_eq!(same_from_rust.expect("same body").as_str(), "idem-dup-1");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with("idempotency_mismatch"),
        "{reasons:?}"
    );
    let (status, record) = verification(&app, "idem-dup-1").await;
    assert_eq!(
        status, 200,
        "bob's erasure deleted alice's request: {record}"
    );
    // Bob's index is gone with his erasure; the one left is alice's, naming her request.
    assert_eq!(
        person_indexes(&app).await,
        vec![vec!["idem-dup-1".to_owned()]]
    );
    let events = app.events().await;
    assert!(events
        .iter()
        .any(|e| e["type"] == "kyc.session.created" && e["vendor_data"] == "alice-idem"));
    assert!(
        !events.iter().any(|e| e["vendor_data"] == "bob-idem"),
        "nothing was started for bob"
    );
    let metrics = scrape(&app).await;
    for source in ["http", "intake_stream"] {
        assert_eq!(
            value(
                &metrics,
                &format!(
                    "kyc_intake_rejected_total{{reason=\"idempotency_mismatch\",source=\"{source}\"}}"
                )
            ),
            1.0,
            "{source}"
        );
    }
    app.stop().await;
}

/// A Didit-shaped webhook body for a session we never created, naming `request_id`.
fn foreign_session_webhook(request_id: &str, vendor_data: &str, status: &str, ts: i64) -> String {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "session_id": uuid::Uuid::new_v4().to_string(),
        "status": status,
        "webhook_type": "status.updated",
        "timestamp": ts,
        "vendor_data": vendor_data,
        "metadata": {"kyc_request_id": request_id},
    })
    .to_string()
}

#[tokio::test]
async fn hostile_a_webhook_cannot_give_a_decided_request_another_session_nor_adopt_on_a_simple_signature(
) {
    // Arrange: a request decided Approved.
    let app = spawn_app(AppOptions::default()).await;
    app.producer()
        .await
        .start_kyc(StartRequest {
            request_id: Some("adopt-decided".into()),
            vendor_data: "adopt-user".into(),
            sandbox_scenario: Some("approve".into()),
            ..Default::default()
        })
        .await
        .expect("enqueue");
    app.wait_events("kyc.session.decided", 1).await;
    let (_, before) = verification(&app, "adopt-decided").await;
    let reads_before = app.sandbox_stats().await["requests"]["decision"].clone();
    let client = reqwest::Client::new();
    let send = |body: String, headers: Vec<(&'static str, String)>| {
        let mut request = client
            .post(app.url("/webhooks/didit"))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send()
    };
    let ts = now_s();

    // Act: a correctly signed (V2) webhook of another session naming the decided request…
    let takeover = foreign_session_webhook("adopt-decided", "adopt-user", "Declined", ts);
    let takeover = send(takeover.clone(), signed_v2(&takeover, ts))
        .await
        .expect("takeover");
    let takeover = (
        takeover.status().as_u16(),
        takeover.text().await.expect("text"),
    );
    // …and a Simple-signed one naming a request that has no session yet.
    let ghost = foreign_session_webhook("adopt-ghost", "ghost-user", "Approved", ts);
    let simple = sign(SECRET, ghost.as_bytes(), ts).expect("sign").simple;
    let ghost = send(
        ghost,
        vec![
            ("x-timestamp", ts.to_string()),
            ("x-signature-simple", simple),
        ],
    )
    .await
    .expect("ghost");
    let ghost = (ghost.status().as_u16(), ghost.text().await.expect("text"));

    // Assert
    assert_eq!(takeover, (200, "adoption_refused".to_owned()));
    assert_eq!(ghost, (200, "adoption_refused".to_owned()));
    let (status, after) = verification(&app, "adopt-decided").await;
    assert_eq!(status, 200);
    assert_eq!(after["status"], "Approved", "{after}");
    assert_eq!(after["session_id"], before["session_id"]);
    assert!(
        after["url"].as_str().is_some_and(|u| !u.is_empty()),
        "{after}"
    );
    assert_eq!(verification(&app, "adopt-ghost").await.0, 404);
    let events = app.events().await;
    assert!(
        !events.iter().any(|e| e["type"] == "kyc.session.failed"),
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["request_id"] == "adopt-decided")
            .count(),
        2,
        "created and decided only: {events:?}"
    );
    assert_eq!(
        app.sandbox_stats().await["requests"]["decision"],
        reads_before,
        "the refused sessions were never read"
    );
    let metrics = scrape(&app).await;
    assert_eq!(
        value(&metrics, "kyc_webhooks_total{result=\"adoption_refused\"}"),
        2.0
    );
    let trail = store(&app)
        .await
        .audit_trail(&kyc_worker::domain::RequestId::parse("adopt-decided").expect("id"))
        .await
        .expect("trail");
    assert!(
        trail.iter().any(|s| s["step"] == "adoption_refused"),
        "{trail:?}"
    );
    assert_nothing_started_for(&app, &["ghost-user"], &["adopt-decided"]).await;
    app.stop().await;
}

/// No event names these people, and the people's indexes name only the `started`
/// requests (an index is keyed by a salted hash: it cannot be looked up by person here).
async fn assert_nothing_started_for(app: &TestApp, vendor_data: &[&str], started: &[&str]) {
    let events = app.events().await;
    for person in vendor_data {
        assert!(
            !events.iter().any(|e| e["vendor_data"] == *person),
            "{person}"
        );
    }
    let mut indexed: Vec<String> = person_indexes(app).await.into_iter().flatten().collect();
    indexed.sort();
    assert_eq!(indexed, started, "{vendor_data:?}");
}

/// The request ids of every person's index (`kyc:subject:*`), each sorted.
async fn person_indexes(app: &TestApp) -> Vec<Vec<String>> {
    let mut c = app.redis.connection().await;
    let keys: Vec<String> = c.keys("kyc:subject:*").await.expect("keys");
    let mut indexes = Vec::new();
    for key in keys {
        let mut requests: Vec<String> = c.hkeys(&key).await.expect("hkeys");
        requests.sort();
        indexes.push(requests);
    }
    indexes
}

#[tokio::test]
async fn hostile_oversized_metadata_is_refused_at_every_intake_and_a_request_at_the_cap_is_decided_by_its_webhook(
) {
    // Arrange: the cap is 16 KiB per JSON field by default.
    let app = spawn_app(AppOptions::default()).await;
    let cap = kyc_worker::domain::IntakeLimits::DEFAULT_JSON_FIELD_BYTES;
    // `{"blob":"…"}` is 11 bytes around the text.
    let at_cap = json!({"blob": "m".repeat(cap - 11)});
    assert_eq!(serde_json::to_vec(&at_cap).expect("json").len(), cap);
    let over = json!({"blob": "m".repeat(cap - 10)});
    let client = reqwest::Client::new();
    let post = |body: Value| {
        client
            .post(app.url("/v1/verifications"))
            .bearer_auth(TEST_API_TOKEN)
            .json(&body)
            .send()
    };

    // Act
    let http = post(json!({"vendor_data": "big-1", "metadata": over}))
        .await
        .expect("post");
    let (http_status, http_answer) = (http.status().as_u16(), http.json::<Value>().await);
    let rust = app
        .producer()
        .await
        .start_kyc(StartRequest {
            vendor_data: "big-2".into(),
            expected_details: Some(kyc_worker::domain::ExpectedDetails {
                first_name: Some("n".repeat(cap)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let mut c = app.redis.connection().await;
    let _: String = c
        .xadd(
            "kyc:intake",
            "*",
            &[
                ("vendor_data", "big-3".to_owned()),
                ("metadata", over.to_string()),
            ],
        )
        .await
        .expect("xadd");
    let reasons = eventually("the stream entry rejected", DEADLINE, || async {
        let reasons = rejected_reasons(&app).await;
        (!reasons.is_empty()).then_some(reasons)
    })
    .await;
    let accepted = post(json!({
        "vendor_data": "big-ok", "request_id": "big-ok",
        "sandbox_scenario": "approve", "metadata": at_cap,
    }))
    .await
    .expect("post");

    // Assert: refused by name; the one at the cap is decided by its webhook, before the
    // safety-net poll (20 s in tests) could have done it.
    assert_eq!(http_status, 400);
    assert_eq!(http_answer.expect("json")["field"], "metadata");
    assert!(
        matches!(&rust, Err(ProducerError::Invalid(e)) if e.field == "expected_details"),
        "{rust:?}"
    );
    assert!(
        reasons[0].contains("metadata") && !reasons[0].contains("mmmm"),
        "{reasons:?}"
    );
    assert_eq!(accepted.status(), 202);
    let decided = eventually(
        "the request at the cap decided",
        Duration::from_secs(15),
        || async {
            app.events()
                .await
                .into_iter()
                .find(|e| e["type"] == "kyc.session.decided" && e["request_id"] == "big-ok")
        },
    )
    .await;
    assert_eq!(decided["status"], "Approved");
    let metrics = scrape(&app).await;
    assert_eq!(
        value(&metrics, "kyc_webhooks_total{result=\"too_large\"}"),
        0.0
    );
    assert!(value(&metrics, "kyc_webhooks_total{result=\"accepted\"}") >= 1.0);
    assert_nothing_started_for(&app, &["big-1", "big-2", "big-3"], &["big-ok"]).await;
    app.stop().await;
}

#[tokio::test]
async fn hostile_a_full_redis_refuses_the_intake_leaves_nothing_behind_and_turns_readiness_red() {
    // Arrange: Redis out of memory under noeviction refuses every write.
    let app = spawn_app(AppOptions::default()).await;
    let mut c = app.redis.connection().await;
    let ready = || async {
        reqwest::get(app.url("/readyz"))
            .await
            .expect("readyz")
            .status()
            .as_u16()
    };
    assert_eq!(ready().await, 200);
    let config = |key: &'static str, value: &'static str| {
        let mut c = c.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg(key)
                .arg(value)
                .query_async::<()>(&mut c)
                .await
                .expect("config set")
        }
    };
    config("maxmemory-policy", "noeviction").await;
    config("maxmemory", "1").await;
    let client = reqwest::Client::new();

    // Act: 14 start requests while Redis refuses writes.
    let mut statuses = Vec::new();
    for i in 0..14 {
        let response = client
            .post(app.url("/v1/verifications"))
            .bearer_auth(TEST_API_TOKEN)
            .header("idempotency-key", format!("oom-{i}"))
            .json(&json!({"vendor_data": format!("oom-user-{i}")}))
            .send()
            .await
            .expect("post");
        statuses.push(response.status().as_u16());
    }
    let red = ready().await;
    config("maxmemory", "0").await;

    // Assert: every caller was told to retry, nothing was left at `queued`, and readiness
    // followed Redis's refusal, then its recovery.
    assert_eq!(statuses, vec![503; 14]);
    assert_eq!(red, 503, "readiness while Redis refuses writes");
    for i in 0..14 {
        let (status, body) = verification(&app, &format!("oom-{i}")).await;
        assert_eq!(status, 404, "oom-{i} left behind: {body}");
    }
    let queued: u64 = c.xlen("kyc:queue:start:ready").await.expect("xlen");
    assert_eq!(queued, 0, "a job without its record");
    eventually("readiness green again", DEADLINE, || async {
        (ready().await == 200).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn hostile_a_login_flood_is_throttled_per_client_counted_and_kept_out_of_the_action_log() {
    // Arrange: the console behind a trusted proxy (this test, on 127.0.0.1).
    const ADMIN: &str = "console-admin-token-0123456789";
    let app = spawn_app(AppOptions {
        env: vec![
            ("KYC__HTTP__ADMIN_TOKEN".into(), ADMIN.into()),
            ("KYC__HTTP__TRUSTED_PROXIES".into(), "127.0.0.1".into()),
        ],
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let login = |token: &str, client_ip: &str, origin: Option<String>| {
        let mut request = client
            .post(app.url("/console/login"))
            .header("x-forwarded-for", client_ip)
            .form(&[("token", token), ("operator", "alice")]);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    // A real operator action first.
    let real = login(ADMIN, "198.51.100.1", None).await.expect("login");
    assert_eq!(real.status(), 303, "the operator logs in");

    // Act: a flood of wrong tokens from one client, then one from another client, and a
    // login from the right host and port but another scheme.
    let mut flood = Vec::new();
    for _ in 0..40 {
        let response = login("wrong-wrong-wrong-wrong", "203.0.113.5", None)
            .await
            .expect("flood");
        flood.push((
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
        ));
    }
    let other = login("wrong-wrong-wrong-wrong", "203.0.113.6", None)
        .await
        .expect("other client");
    let other_scheme = login(
        ADMIN,
        "198.51.100.1",
        Some(format!("https://127.0.0.1:{}", app.port)),
    )
    .await
    .expect("https origin");

    // Assert
    // Failed logins allowed per client and window (docs/console.md).
    let allowed = 10;
    assert!(flood[..allowed].iter().all(|(s, _)| *s == 401), "{flood:?}");
    assert!(
        flood[allowed..]
            .iter()
            .all(|(s, wait)| *s == 429 && wait.is_some_and(|w| w >= 1)),
        "{flood:?}"
    );
    assert_eq!(other.status(), 401, "another client is not throttled");
    assert_eq!(
        other_scheme.status(),
        403,
        "an https origin is another origin"
    );
    let metrics = scrape(&app).await;
    let failures = |reason: &str| {
        value(
            &metrics,
            &format!("kyc_console_login_failures_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(failures("wrong_token"), (allowed + 1) as f64);
    assert_eq!(failures("throttled"), (40 - allowed) as f64);
    let mut c = app.redis.connection().await;
    let log: Vec<String> = c.lrange("kyc:console:audit", 0, -1).await.expect("log");
    let log: Vec<Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON entry"))
        .collect();
    assert_eq!(log.len(), 1, "only the operator's login is logged: {log:?}");
    assert_eq!(log[0]["action"], "login");
    assert_eq!(log[0]["operator"], "alice");
    app.stop().await;
}

#[tokio::test]
async fn hostile_unsafe_ids_control_characters_and_non_json_bodies_are_refused() {
    let app = spawn_app(AppOptions::default()).await;
    let client = reqwest::Client::new();
    let start = |body: Value, key: Option<&str>| {
        let mut request = client
            .post(app.url("/v1/verifications"))
            .bearer_auth(TEST_API_TOKEN)
            .json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    let mut refused = Vec::new();
    for (name, body, key, field) in [
        (
            "path in request_id",
            json!({"vendor_data": "u-1", "request_id": "../../x"}),
            None,
            "request_id",
        ),
        (
            "path in Idempotency-Key",
            json!({"vendor_data": "u-1"}),
            Some("../../x"),
            "request_id",
        ),
        (
            "NUL in vendor_data",
            json!({"vendor_data": "u\u{0}1"}),
            None,
            "vendor_data",
        ),
        (
            "ANSI escape in vendor_data",
            json!({"vendor_data": "\u{1b}[2Ju-1"}),
            None,
            "vendor_data",
        ),
        (
            "bidi override in vendor_data",
            json!({"vendor_data": "u-1\u{202E}gpj.exe"}),
            None,
            "vendor_data",
        ),
    ] {
        let response = start(body, key).await.expect("post");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("json");
        refused.push((
            name,
            status,
            answer["field"].as_str().map(str::to_owned),
            field,
        ));
    }
    let text = client
        .post(app.url("/v1/verifications"))
        .bearer_auth(TEST_API_TOKEN)
        .header("content-type", "text/plain")
        .body(r#"{"vendor_data": "u-1"}"#)
        .send()
        .await
        .expect("text/plain");
    let erase = |token: Option<&str>, body: &str| {
        let mut request = client
            .post(app.url("/v1/subjects/erase"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let erase_unauthenticated_garbage = erase(None, "{not json").await.expect("erase");
    let erase_long = erase(
        Some(TEST_API_TOKEN),
        &json!({"vendor_data": "v".repeat(300)}).to_string(),
    )
    .await
    .expect("erase");
    let erase_escape = erase(
        Some(TEST_API_TOKEN),
        &json!({"vendor_data": "\u{1b}[31mred"}).to_string(),
    )
    .await
    .expect("erase");
    let accepted = start(json!({"vendor_data": "u-ok"}), Some("order.2024-01:7"))
        .await
        .expect("post");
    let accepted: Value = accepted.json().await.expect("json");

    for (name, status, field, expected) in refused {
        assert_eq!(status, 400, "{name}");
        assert_eq!(field.as_deref(), Some(expected), "{name}");
    }
    assert_eq!(text.status(), 415);
    assert_eq!(
        erase_unauthenticated_garbage.status(),
        401,
        "auth before parsing"
    );
    assert_eq!(erase_long.status(), 400);
    assert_eq!(erase_escape.status(), 400);
    assert_eq!(
        accepted["status_url"], "/v1/verifications/order.2024-01:7",
        "{accepted}"
    );
    let metrics = scrape(&app).await;
    assert_eq!(
        value(
            &metrics,
            "kyc_intake_rejected_total{reason=\"content_type\",source=\"http\"}"
        ),
        1.0
    );
    let queue = kyc_worker::queue::Queue::connect(&app.redis.url(), "kyc", Default::default())
        .await
        .expect("queue");
    let erase_stats = queue.stats("erase").await.expect("stats");
    assert_eq!(
        (erase_stats.ready, erase_stats.in_flight, erase_stats.dead),
        (0, 0, 0),
        "no refused erasure was queued"
    );
    app.stop().await;
}
