//! Hostile input: forged, stale, replayed, oversized and malformed webhooks; garbage on the
//! intake stream and the HTTP intake; arbitrary and truncated JSON fed to the decision parser
//! and the rules. Each gets the right status, is counted under the right label and changes
//! nothing; nothing panics.

use std::time::Duration;

use didit::{types::Decision, webhook::sign};
use hmac::{Hmac, Mac};
use kyc_worker::rules::{view::DecisionView, RuleSet, DEFAULT_RULES};
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
