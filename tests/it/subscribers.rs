//! Subscriber webhooks end to end: the fleet delivers outcome events to local receivers that
//! verify every delivery with an independent Standard Webhooks implementation (the
//! `standardwebhooks` crate), never with our own signing code.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use kyc_worker::domain::StartRequest;
use serde_json::Value;

use crate::helpers::{eventually, spawn_app, AppOptions, TestApp};

/// The specification's example secret, and a second one for rotations.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const OTHER_SECRET: &str = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk=";

/// How a receiver answers.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Ok,
    /// 503 for the first `n` attempts of each webhook-id, then 200.
    FailFirst(usize),
    /// Always this status.
    Status(u16),
    /// Holds each request this long, then 200.
    Slow(Duration),
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    /// `webhook-timestamp`.
    timestamp: i64,
    /// When it arrived, Unix seconds.
    arrived: f64,
    body: Value,
    /// Which of the receiver's secrets verified it (standardwebhooks crate).
    verified: Vec<bool>,
    /// The answer's status, set once answered.
    answered: Option<u16>,
}

#[derive(Clone)]
struct Receiver {
    port: u16,
    log: Arc<Mutex<Vec<Received>>>,
    mode: Arc<Mutex<Mode>>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

impl Receiver {
    /// Starts a receiver on loopback that verifies with each of `secrets`.
    async fn start(mode: Mode, secrets: &[&str]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let receiver = Receiver {
            port,
            log: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
        };
        let hooks: Arc<Vec<standardwebhooks::Webhook>> = Arc::new(
            secrets
                .iter()
                .map(|s| standardwebhooks::Webhook::new(s).expect("secret"))
                .collect(),
        );
        let state = (receiver.clone(), hooks);
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        receiver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }

    fn log(&self) -> Vec<Received> {
        self.log.lock().expect("log").clone()
    }

    /// Webhook ids answered with a 2xx.
    fn delivered(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
            .map(|r| r.id)
            .collect()
    }
}

async fn receive(
    State((receiver, hooks)): State<(Receiver, Arc<Vec<standardwebhooks::Webhook>>)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let text = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = text("webhook-id");
    let verified = hooks
        .iter()
        .map(|h| h.verify(&body, &headers).is_ok())
        .collect();
    let index = {
        let mut log = receiver.log.lock().expect("log");
        log.push(Received {
            id: id.clone(),
            timestamp: text("webhook-timestamp").parse().unwrap_or(0),
            arrived: unix_now(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            verified,
            answered: None,
        });
        log.len() - 1
    };
    let mode = *receiver.mode.lock().expect("mode");
    let status = match mode {
        Mode::Ok => 200,
        Mode::Status(s) => s,
        Mode::FailFirst(n) => {
            let seen = receiver
                .log
                .lock()
                .expect("log")
                .iter()
                .filter(|r| r.id == id)
                .count();
            if seen <= n {
                503
            } else {
                200
            }
        }
        Mode::Slow(hold) => {
            tokio::time::sleep(hold).await;
            200
        }
    };
    receiver.log.lock().expect("log")[index].answered = Some(status);
    StatusCode::from_u16(status).expect("status")
}

/// `KYC__SUBSCRIBERS` for loopback receivers.
fn subscribers_env(subscribers: &[Value]) -> (String, String) {
    (
        "KYC__SUBSCRIBERS".to_owned(),
        Value::Array(subscribers.to_vec()).to_string(),
    )
}

fn local_subscriber(name: &str, receiver: &Receiver) -> Value {
    serde_json::json!({
        "name": name,
        "url": receiver.url(),
        "secret": SECRET,
        "allow_private": true,
        "allow_insecure": true,
    })
}

async fn app_with(subscribers: &[Value], extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![subscribers_env(subscribers)];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    spawn_app(AppOptions {
        env,
        ..AppOptions::default()
    })
    .await
}

async fn start(app: &TestApp, request_id: &str, scenario: &str) {
    start_on(app, request_id, scenario, None).await;
}

async fn start_on(app: &TestApp, request_id: &str, scenario: &str, workflow: Option<uuid::Uuid>) {
    app.producer()
        .await
        .start_kyc(StartRequest {
            request_id: Some(request_id.to_owned()),
            vendor_data: format!("user-{request_id}"),
            sandbox_scenario: Some(scenario.to_owned()),
            workflow_id: workflow,
            ..Default::default()
        })
        .await
        .expect("enqueue");
}

/// A sandbox workflow whose sessions expire after two seconds.
async fn short_workflow(app: &TestApp) -> uuid::Uuid {
    let client = didit::DiditClient::new(&app.settings().didit.client_config()).expect("client");
    client
        .create_workflow(&didit::types::CreateWorkflowRequest {
            workflow_label: Some("short".into()),
            features: vec![didit::types::WorkflowFeature {
                feature: "OCR".into(),
                config: None,
            }],
            max_retry_attempts: None,
            session_expiration_time: Some(2),
        })
        .await
        .expect("workflow")
        .stable_id()
}

/// Every event id on the outcome stream.
async fn event_ids(app: &TestApp) -> Vec<String> {
    app.events()
        .await
        .into_iter()
        .map(|e| e["event_id"].clone())
        .collect()
}

/// Unix ms as RFC 3339 (UTC, milliseconds), formatted here rather than by the fleet's code.
fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("a time in range")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// The value of a metric series on `/metrics`.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits until the deliver queue has nothing waiting, scheduled or running.
async fn deliveries_settled(app: &TestApp) {
    let settings = app.settings();
    let queue = kyc_worker::queue::Queue::connect(
        settings.redis.url(),
        &settings.redis.prefix,
        settings.queue.clone(),
    )
    .await
    .expect("queue");
    eventually(
        "the deliver queue to settle",
        Duration::from_secs(30),
        || {
            let queue = queue.clone();
            async move {
                let s = queue.stats("deliver").await.ok()?;
                (s.ready == 0 && s.scheduled == 0 && s.in_flight == 0).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn every_event_type_is_delivered_and_verifies_with_the_standard_webhooks_crate() {
    let receiver = Receiver::start(Mode::Ok, &[SECRET]).await;
    let app = app_with(&[local_subscriber("all", &receiver)], &[]).await;
    start(&app, "types-approve", "approve").await;
    let short = short_workflow(&app).await;
    start_on(&app, "types-expire", "expire", Some(short)).await;
    app.wait_events("kyc.session.decided", 1).await;
    app.wait_events("kyc.session.expired", 1).await;
    start(&app, "types-cancel", "review_face_match_borderline").await;
    app.wait_events("kyc.session.created", 3).await;
    let cancelled = app.cli(&["cancel", "types-cancel"]);
    assert!(cancelled.status.success(), "{cancelled:?}");
    let erased = app.cli(&["erase", "--vendor-data", "user-types-approve"]);
    assert!(erased.status.success(), "{erased:?}");
    app.wait_events("kyc.subject.erased", 1).await;
    app.wait_events("kyc.session.failed", 1).await;

    let ids = event_ids(&app).await;
    eventually("every event delivered", Duration::from_secs(30), || {
        let delivered = receiver.delivered();
        let ids = ids.clone();
        async move { ids.iter().all(|id| delivered.contains(id)).then_some(()) }
    })
    .await;
    let log = receiver.log();
    let mut types: Vec<String> = log
        .iter()
        .map(|r| r.body["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    types.sort();
    types.dedup();
    assert_eq!(
        types,
        [
            "kyc.session.created",
            "kyc.session.decided",
            "kyc.session.expired",
            "kyc.session.failed",
            "kyc.subject.erased"
        ]
    );
    for r in &log {
        assert_eq!(r.verified, [true], "{} did not verify", r.id);
        assert_eq!(
            r.body["data"]["event_id"],
            r.id.as_str(),
            "webhook-id = event_id"
        );
        let published = r.body["timestamp"].as_str().expect("timestamp");
        time::OffsetDateTime::parse(published, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339 timestamp");
    }
    assert!(
        metric(
            &app,
            "kyc_deliveries_total{outcome=\"delivered\",subscriber=\"all\"}"
        )
        .await
            >= ids.len() as f64
    );
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_of_an_old_event_and_its_retry_are_signed_at_each_attempt() {
    let receiver = Receiver::start(Mode::FailFirst(1), &[SECRET]).await;
    let app = app_with(
        &[local_subscriber("late", &receiver)],
        &[("KYC__DELIVERY__RETRY_SCHEDULE", "2s")],
    )
    .await;
    // The bridge's group exists before the test writes to the stream (the fleet's own
    // events are published by workers that start after it).
    let mut c = app.redis.connection().await;
    eventually(
        "the delivery bridge's group",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            async move {
                let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg("kyc:events")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                groups
                    .groups
                    .iter()
                    .any(|g| g.name == "subscribers")
                    .then_some(())
            }
        },
    )
    .await;
    // An event published ten minutes ago: twice a receiver's 5-minute tolerance.
    let ten_minutes_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        - 600_000;
    let _: String = redis::cmd("XADD")
        .arg("kyc:events")
        .arg(format!("{ten_minutes_ago}-0"))
        .arg(&[
            ("event_id", "old-event-1"),
            ("type", "kyc.session.decided"),
            ("session_id", ""),
            ("request_id", "r-old"),
            ("vendor_data", "u-old"),
            ("status", "Approved"),
            ("previous_status", ""),
            ("decided_by", "didit"),
            ("data", "{}"),
        ])
        .query_async(&mut c)
        .await
        .expect("xadd");
    eventually("the retry delivered", Duration::from_secs(20), || async {
        (receiver.delivered().len() == 1).then_some(())
    })
    .await;
    let log = receiver.log();
    assert_eq!(log.len(), 2, "one failure, one success: {log:?}");
    for r in &log {
        assert_eq!(r.id, "old-event-1");
        assert_eq!(r.verified, [true], "the attempt verifies within 5 minutes");
        assert!(
            (r.arrived - r.timestamp as f64).abs() < 2.0,
            "signed at the attempt, not at the event"
        );
        assert_eq!(
            r.body["timestamp"].as_str(),
            Some(rfc3339(ten_minutes_ago).as_str())
        );
    }
    assert!(
        log[1].timestamp > log[0].timestamp,
        "the retry is signed anew"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_each_event_exactly_once_more() {
    let receiver = Receiver::start(Mode::FailFirst(3), &[SECRET]).await;
    let app = app_with(
        &[local_subscriber("flaky", &receiver)],
        &[
            (
                "KYC__DELIVERY__RETRY_SCHEDULE",
                "200ms,200ms,200ms,200ms,200ms",
            ),
            ("KYC__DELIVERY__CIRCUIT_AFTER", "1000"),
        ],
    )
    .await;
    for i in 0..3 {
        start(&app, &format!("flaky-{i}"), "approve").await;
    }
    app.wait_events("kyc.session.decided", 3).await;
    let ids = event_ids(&app).await;
    assert_eq!(ids.len(), 6);
    eventually("every event delivered", Duration::from_secs(30), || {
        let delivered = receiver.delivered();
        let ids = ids.clone();
        async move { ids.iter().all(|id| delivered.contains(id)).then_some(()) }
    })
    .await;
    deliveries_settled(&app).await;
    let log = receiver.log();
    for id in &ids {
        let attempts: Vec<&Received> = log.iter().filter(|r| &r.id == id).collect();
        let statuses: Vec<Option<u16>> = attempts.iter().map(|r| r.answered).collect();
        assert_eq!(
            statuses,
            [Some(503), Some(503), Some(503), Some(200)],
            "{id}: three failures, then exactly one success"
        );
        assert!(attempts.iter().all(|r| r.verified == [true]));
    }
    app.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_hangs_never_delays_another() {
    let down = Receiver::start(Mode::Slow(Duration::from_secs(60)), &[SECRET]).await;
    let up = Receiver::start(Mode::Ok, &[SECRET]).await;
    let app = app_with(
        &[local_subscriber("down", &down), local_subscriber("up", &up)],
        &[
            ("KYC__DELIVERY__TIMEOUT", "2s"),
            ("KYC__DELIVERY__CONCURRENCY", "4"),
            ("KYC__DELIVERY__PER_SUBSCRIBER", "2"),
            ("KYC__DELIVERY__CIRCUIT_AFTER", "2"),
            ("KYC__DELIVERY__RETRY_SCHEDULE", "1s,1s,1s,1s,1s,1s,1s,1s"),
        ],
    )
    .await;
    for i in 0..8 {
        start(&app, &format!("iso-{i}"), "approve").await;
    }
    app.wait_events("kyc.session.decided", 8).await;
    let events = app.events().await;
    eventually("up receives everything", Duration::from_secs(20), || {
        let delivered = up.delivered();
        let ids: Vec<String> = events.iter().map(|e| e["event_id"].clone()).collect();
        async move { ids.iter().all(|id| delivered.contains(id)).then_some(()) }
    })
    .await;
    // On time: each event reached `up` within 2 s of its publication, though every
    // delivery to `down` hangs until its 2 s timeout.
    let log = up.log();
    let mut worst: f64 = 0.0;
    let mut c = app.redis.connection().await;
    let stream: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("kyc:events")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("xrange");
    for entry in stream.ids {
        let published = entry
            .id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<f64>().ok())
            .expect("ms")
            / 1000.0;
        let id: String = entry.get("event_id").expect("event_id");
        let first = log
            .iter()
            .filter(|r| r.id == id)
            .map(|r| r.arrived)
            .fold(f64::MAX, f64::min);
        worst = worst.max(first - published);
    }
    assert!(
        worst < 2.0,
        "a delivery to up waited {worst:.2}s behind down"
    );
    assert!(down.delivered().is_empty(), "down never answered");
    eventually(
        "down's attempts time out",
        Duration::from_secs(10),
        || async {
            let series = "kyc_deliveries_total{outcome=\"failed\",subscriber=\"down\"}";
            (metric(&app, series).await >= 1.0).then_some(())
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_410_disables_the_subscriber_until_an_operator_enables_it() {
    let receiver = Receiver::start(Mode::Status(410), &[SECRET]).await;
    let app = app_with(&[local_subscriber("gone", &receiver)], &[]).await;
    start(&app, "gone-1", "approve").await;
    app.wait_events("kyc.session.decided", 1).await;
    eventually(
        "the subscriber disabled",
        Duration::from_secs(20),
        || async {
            let out = app.cli(&["subscribers", "list", "--json"]);
            let list: Value = serde_json::from_slice(&out.stdout).ok()?;
            list[0]["state"]["disabled"]["reason"]
                .as_str()
                .filter(|r| r.contains("410"))
                .map(drop)
        },
    )
    .await;
    deliveries_settled(&app).await;
    let calls = receiver.log().len();
    assert_eq!(calls, 1, "nothing more after the 410");
    assert_eq!(
        metric(
            &app,
            "kyc_deliveries_total{outcome=\"disabled\",subscriber=\"gone\"}"
        )
        .await,
        1.0
    );
    let listed = app.cli(&["subscribers", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("disabled (410 Gone"), "{text}");
    assert!(
        text.contains("[REDACTED]") && !text.contains("MfKQ9r8"),
        "{text}"
    );

    // Events while disabled are not sent; after `enable`, new ones are.
    start(&app, "gone-2", "approve").await;
    app.wait_events("kyc.session.decided", 2).await;
    deliveries_settled(&app).await;
    assert_eq!(receiver.log().len(), 1);
    receiver.set_mode(Mode::Ok);
    let enabled = app.cli(&["subscribers", "enable", "gone"]);
    assert!(enabled.status.success(), "{enabled:?}");
    start(&app, "gone-3", "approve").await;
    app.wait_events("kyc.session.decided", 3).await;
    eventually("deliveries resume", Duration::from_secs(20), || async {
        (!receiver.delivered().is_empty()).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_target_that_resolves_to_a_private_address_is_refused_at_connect_time() {
    let receiver = Receiver::start(Mode::Ok, &[SECRET]).await;
    // A name, so the settings accept it; it resolves to loopback, which the resolver drops.
    let subscriber = serde_json::json!({
        "name": "private",
        "url": format!("http://localhost:{}/hook", receiver.port),
        "secret": SECRET,
        "allow_insecure": true,
    });
    let app = app_with(&[subscriber], &[("KYC__DELIVERY__RETRY_SCHEDULE", "30s")]).await;
    start(&app, "private-1", "approve").await;
    eventually("the attempt refused", Duration::from_secs(20), || async {
        let n = metric(
            &app,
            "kyc_deliveries_total{outcome=\"refused\",subscriber=\"private\"}",
        )
        .await;
        (n >= 1.0).then_some(())
    })
    .await;
    assert!(
        receiver.log().is_empty(),
        "no request reached the private address"
    );
    let out = app.cli(&["subscribers", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    let failure = list[0]["state"]["last_failure"]
        .as_str()
        .unwrap_or_default();
    assert!(failure.contains("private"), "{failure}");

    // An IP literal is refused when the settings are read: exit 2, naming the subscriber.
    let mut env = app.settings_env.clone();
    env.insert(
        "KYC__SUBSCRIBERS".into(),
        format!(
            r#"[{{"name":"meta","url":"https://169.254.169.254/latest","secret":"{SECRET}"}}]"#
        ),
    );
    let refused = std::process::Command::new(crate::helpers::kyc_worker_binary())
        .args(["subscribers", "list"])
        .env_clear()
        .env("KYC_ENV", "none")
        .envs(env)
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("KYC__SUBSCRIBERS") && stderr.contains("\"meta\""),
        "{stderr}"
    );
    assert!(!stderr.contains("MfKQ9r8"), "{stderr}");
    app.stop().await;
}

#[tokio::test]
async fn during_a_rotation_receivers_knowing_either_secret_accept_and_replays_keep_the_id() {
    // The receiver verifies separately with the new, the old and an unrelated secret.
    let receiver = Receiver::start(Mode::Ok, &[SECRET, OLD_SECRET, OTHER_SECRET]).await;
    let subscriber = serde_json::json!({
        "name": "rotating",
        "url": receiver.url(),
        "secret": SECRET,
        "previous_secrets": [OLD_SECRET],
        "types": ["kyc.session.decided"],
        "allow_private": true,
        "allow_insecure": true,
    });
    let app = app_with(&[subscriber], &[]).await;
    start(&app, "rotate-1", "approve").await;
    let decided = app.wait_events("kyc.session.decided", 1).await;
    let id = decided[0]["event_id"].clone();
    eventually("delivered", Duration::from_secs(20), || async {
        (receiver.delivered().len() == 1).then_some(())
    })
    .await;
    let log = receiver.log();
    assert_eq!(log.len(), 1, "only the type it asked for: {log:?}");
    assert_eq!(log[0].verified, [true, true, false]);

    let replayed = app.cli(&["subscribers", "replay", "rotating", "--event-id", &id]);
    assert!(replayed.status.success(), "{replayed:?}");
    let since = app.cli(&["subscribers", "replay", "rotating", "--since", "1h"]);
    assert!(
        String::from_utf8_lossy(&since.stdout).starts_with("1 deliveries"),
        "{since:?}"
    );
    eventually(
        "both replays delivered",
        Duration::from_secs(20),
        || async { (receiver.delivered().len() == 3).then_some(()) },
    )
    .await;
    assert!(receiver.log().iter().all(|r| r.id == id), "same webhook-id");
    app.stop().await;
}

#[tokio::test]
async fn erasing_a_person_deletes_their_waiting_and_dead_deliveries() {
    let receiver = Receiver::start(Mode::Status(500), &[SECRET]).await;
    let app = app_with(
        &[local_subscriber("failing", &receiver)],
        &[("KYC__DELIVERY__RETRY_SCHEDULE", "1h")],
    )
    .await;
    start(&app, "erase-me", "approve").await;
    app.wait_events("kyc.session.decided", 1).await;
    eventually(
        "both deliveries attempted",
        Duration::from_secs(20),
        || async { (receiver.log().len() >= 2).then_some(()) },
    )
    .await;
    let mut c = app.redis.connection().await;
    let payloads = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            let all: HashMap<String, String> = redis::cmd("HGETALL")
                .arg("kyc:queue:deliver:payloads")
                .query_async(&mut c)
                .await
                .expect("payloads");
            all.values().filter(|p| p.contains("user-erase-me")).count()
        }
    };
    eventually(
        "deliveries waiting for their retry",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            async move {
                let mut c = c;
                (payloads(&mut c).await == 2).then_some(())
            }
        },
    )
    .await;
    let out = app.cli(&["erase", "--vendor-data", "user-erase-me"]);
    assert!(out.status.success(), "{out:?}");
    app.wait_events("kyc.subject.erased", 1).await;
    assert_eq!(
        payloads(&mut c).await,
        0,
        "no waiting delivery names the person"
    );
    let pending: u64 = redis::cmd("ZCARD")
        .arg("kyc:subscriber:failing:pending")
        .query_async(&mut c)
        .await
        .expect("zcard");
    assert!(pending <= 1, "only the erasure event may wait: {pending}");
    app.stop().await;
}

#[tokio::test]
async fn a_worker_sigkilled_mid_delivery_loses_no_delivery() {
    // Every answer takes a second, so deliveries are in flight when the worker dies.
    let receiver = Receiver::start(Mode::Slow(Duration::from_secs(1)), &[SECRET]).await;
    let app = spawn_app(AppOptions {
        in_process: false,
        env: vec![
            subscribers_env(&[local_subscriber("steady", &receiver)]),
            ("KYC__DELIVERY__CIRCUIT_AFTER".into(), "1000".into()),
        ],
        ..AppOptions::default()
    })
    .await;
    for i in 0..6 {
        start(&app, &format!("kill-{i}"), "approve").await;
    }
    let mut first = app.spawn_fleet_process(&[]);
    let in_flight = eventually("a delivery in flight", Duration::from_secs(30), || async {
        receiver
            .log()
            .into_iter()
            .find(|r| r.answered.is_none())
            .map(|r| r.id)
    })
    .await;
    let _ = first.kill();
    let _ = first.wait();
    let killed_at = unix_now();
    let _second = app.spawn_fleet_process(&[]);

    app.wait_events("kyc.session.decided", 6).await;
    let ids = event_ids(&app).await;
    assert_eq!(ids.len(), 12);
    eventually("every event delivered", Duration::from_secs(40), || {
        let delivered = receiver.delivered();
        let ids = ids.clone();
        async move { ids.iter().all(|id| delivered.contains(id)).then_some(()) }
    })
    .await;
    let resent = receiver
        .log()
        .iter()
        .any(|r| r.id == in_flight && r.arrived > killed_at && r.answered == Some(200));
    assert!(resent, "the delivery in flight at the kill was sent again");
}

#[tokio::test]
async fn a_delivery_that_runs_out_of_retries_is_on_the_console_s_dead_set_and_replays() {
    let receiver = Receiver::start(Mode::Status(500), &[SECRET]).await;
    let app = app_with(
        &[local_subscriber("dying", &receiver)],
        &[("KYC__DELIVERY__RETRY_SCHEDULE", "100ms")],
    )
    .await;
    start(&app, "dead-1", "approve").await;
    let created = app.wait_events("kyc.session.created", 1).await;
    let id = created[0]["event_id"].clone();
    let job = format!("{id}:dying");
    let page = eventually(
        "the dead delivery on the console",
        DEADLINE_DEAD,
        || async {
            let page = reqwest::get(app.url("/console/dead"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            page.contains(&job).then_some(page)
        },
    )
    .await;
    assert!(
        page.contains("id=\"dead-deliver\""),
        "the deliver queue's section"
    );
    assert!(
        page.contains("failed after 2 attempts: HTTP 500"),
        "the reason is shown"
    );
    assert!(!page.contains("user-dead-1"), "the person stays masked");
    assert_eq!(
        receiver.log().iter().filter(|r| r.id == id).count(),
        2,
        "at once, then one retry"
    );

    // Replaying from the dead set sends it once more, with the same webhook-id.
    receiver.set_mode(Mode::Ok);
    let replayed = app.cli(&["queue", "dead", "replay", "--queue", "deliver", "--all"]);
    assert!(replayed.status.success(), "{replayed:?}");
    eventually("the replay delivered", Duration::from_secs(20), || async {
        receiver.delivered().contains(&id).then_some(())
    })
    .await;
    app.stop().await;
}

const DEADLINE_DEAD: Duration = Duration::from_secs(20);
