//! The pipeline's edges: webhooks, the fleet-wide rate limiter, intake for any language,
//! the status API and the reconciliation sweep.

use didit::webhook::sign;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kyc_worker::domain::StartRequest;
use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{eventually, spawn_app, AppOptions, TestApp, DEADLINE, TEST_API_TOKEN};

fn request(vendor_data: &str) -> StartRequest {
    StartRequest {
        vendor_data: vendor_data.into(),
        sandbox_scenario: Some("approve".into()),
        ..Default::default()
    }
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Posts a webhook body with the given signature headers.
async fn post_webhook(app: &TestApp, body: &str, headers: &[(&str, String)]) -> u16 {
    let mut req = reqwest::Client::new()
        .post(app.url("/webhooks/didit"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.expect("webhook").status().as_u16()
}

fn signed(body: &str, ts: i64) -> Vec<(&'static str, String)> {
    let s = sign("sandbox-webhook-secret", body.as_bytes(), ts).expect("sign");
    vec![
        ("x-timestamp", ts.to_string()),
        ("x-signature-v2", s.v2),
        ("x-signature", s.raw),
        ("x-signature-simple", s.simple),
    ]
}

fn decision_gets(stats: &serde_json::Value) -> u64 {
    stats["requests"]["decision"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn with_webhooks_a_session_costs_at_most_one_decision_read() {
    let app = spawn_app(AppOptions::default()).await;
    let producer = app.producer().await;
    for i in 0..10 {
        producer
            .start_kyc(request(&format!("u-{i}")))
            .await
            .expect("enqueue");
    }
    app.wait_events("kyc.session.decided", 10).await;
    let stats = app.sandbox_stats().await;
    assert!(
        decision_gets(&stats) <= 10,
        "decision reads: {}",
        decision_gets(&stats)
    );
    app.stop().await;
}

#[tokio::test]
async fn forged_stale_and_replayed_webhooks_change_nothing_and_simple_only_refetches() {
    // Arrange: one decided session.
    let app = spawn_app(AppOptions::default()).await;
    let producer = app.producer().await;
    producer
        .start_kyc(request("u-hooks"))
        .await
        .expect("enqueue");
    let decided = app.wait_events("kyc.session.decided", 1).await;
    let session_id = decided[0]["session_id"].clone();
    // A second later than anything the sandbox sent for this session.
    let ts = now_s() + 2;
    let body =
        json!({"event_id": uuid::Uuid::new_v4(), "session_id": session_id, "status": "Approved",
                      "timestamp": ts, "webhook_type": "status.updated"})
        .to_string();
    let gets_before = decision_gets(&app.sandbox_stats().await);

    // Forged: a signature from another secret.
    let forged = sign("not-the-secret", body.as_bytes(), ts).expect("sign");
    let status = post_webhook(
        &app,
        &body,
        &[
            ("x-timestamp", ts.to_string()),
            ("x-signature-v2", forged.v2),
        ],
    )
    .await;
    assert_eq!(status, 401);
    // Stale: signed, but ten minutes old.
    let old_ts = ts - 600;
    let old_body = body.replace(
        &format!("\"timestamp\":{ts}"),
        &format!("\"timestamp\":{old_ts}"),
    );
    assert_eq!(
        post_webhook(&app, &old_body, &signed(&old_body, old_ts)).await,
        401
    );
    // Missing headers.
    assert_eq!(post_webhook(&app, &body, &[]).await, 401);

    // Valid, then replayed.
    assert_eq!(post_webhook(&app, &body, &signed(&body, ts)).await, 200);
    assert_eq!(post_webhook(&app, &body, &signed(&body, ts)).await, 200);
    eventually("the accepted webhook's read", DEADLINE, || async {
        (decision_gets(&app.sandbox_stats().await) == gets_before + 1).then_some(())
    })
    .await;

    // Simple-only: the status is trusted but the decision is read again.
    let ts2 = ts + 1;
    let body2 = json!({"session_id": session_id, "status": "Approved", "timestamp": ts2, "webhook_type": "status.updated"}).to_string();
    let simple = sign("sandbox-webhook-secret", body2.as_bytes(), ts2)
        .expect("sign")
        .simple;
    assert_eq!(
        post_webhook(
            &app,
            &body2,
            &[
                ("x-timestamp", ts2.to_string()),
                ("x-signature-simple", simple)
            ]
        )
        .await,
        200
    );
    eventually("the simple-only webhook's read", DEADLINE, || async {
        (decision_gets(&app.sandbox_stats().await) == gets_before + 2).then_some(())
    })
    .await;

    let events = app.events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "kyc.session.decided")
            .count(),
        1,
        "no second event"
    );
    app.stop().await;
}

/// The `webhook_received` steps of a session's audit trail, as `session show --json` prints
/// them.
fn webhook_steps(app: &TestApp, session_id: &str) -> Vec<serde_json::Value> {
    let out = app.cli(&["session", "show", "--json", session_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|s| s["step"] == "webhook_received")
        .collect()
}

#[tokio::test]
async fn a_webhook_older_than_the_recorded_change_asks_for_no_read_and_a_newer_one_does() {
    // Arrange: one session decided Approved by its webhook and one read.
    let app = spawn_app(AppOptions::default()).await;
    let producer = app.producer().await;
    producer
        .start_kyc(request("u-ordered"))
        .await
        .expect("enqueue");
    let decided = app.wait_events("kyc.session.decided", 1).await;
    let session_id = decided[0]["session_id"].as_str().to_owned();
    let hook = |status: &str, ts: i64| {
        json!({"event_id": uuid::Uuid::new_v4(), "session_id": session_id, "status": status,
               "timestamp": ts, "webhook_type": "status.updated"})
        .to_string()
    };
    let before = webhook_steps(&app, &session_id).len();

    // Act: a Declined signed a minute before the recorded Approved (inside the signature's
    // tolerance), and the Approved itself again from before it was read.
    let old = now_s() - 60;
    for status in ["Declined", "Approved"] {
        let body = hook(status, old);
        assert_eq!(post_webhook(&app, &body, &signed(&body, old)).await, 200);
    }
    let stale = webhook_steps(&app, &session_id);
    assert_eq!(stale.len(), before + 2, "both audited: {stale:?}");
    assert!(
        stale[before..].iter().all(|s| s["read"] == false),
        "an older change asks for no read: {stale:?}"
    );

    // A newer one is read: Didit still says Approved, so nothing is published.
    let gets = decision_gets(&app.sandbox_stats().await);
    let new = now_s() + 2;
    let body = hook("Declined", new);
    assert_eq!(post_webhook(&app, &body, &signed(&body, new)).await, 200);
    assert_eq!(webhook_steps(&app, &session_id)[before + 2]["read"], true);
    eventually("the newer webhook's read", DEADLINE, || async {
        (decision_gets(&app.sandbox_stats().await) == gets + 1).then_some(())
    })
    .await;
    let events = app.events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "kyc.session.decided")
            .count(),
        1,
        "no second event"
    );
    app.stop().await;
}

#[tokio::test]
async fn two_processes_stay_inside_a_shared_get_budget_while_200_sessions_complete() {
    // Arrange: the sandbox would allow far more; the fleet's budget is 60 GETs a second.
    let app = spawn_app(AppOptions {
        webhooks: false,
        in_process: false,
        complete_after: Duration::from_millis(500),
        sandbox_limits: vec!["get=100000/1s", "create=100000/1s"],
        env: vec![
            ("KYC__RATELIMIT__WINDOW".into(), "1s".into()),
            ("KYC__RATELIMIT__MARGIN".into(), "1s".into()),
            ("KYC__RATELIMIT__GET".into(), "60".into()),
        ],
        ..Default::default()
    })
    .await;
    let spawn_child = || app.spawn_fleet_process(&[]);
    let mut a = spawn_child();
    let mut b = spawn_child();
    let producer = app.producer().await;
    for i in 0..200 {
        producer
            .start_kyc(request(&format!("u-budget-{i}")))
            .await
            .expect("enqueue");
    }

    // Act
    let decided = eventually("200 decided events", Duration::from_secs(90), || async {
        let n = app
            .events()
            .await
            .into_iter()
            .filter(|e| e["type"] == "kyc.session.decided")
            .count();
        (n >= 200).then_some(n)
    })
    .await;

    // Assert
    let stats = app.sandbox_stats().await;
    let peak = stats["rate_limits"]["get"]["peak_in_window"]
        .as_u64()
        .expect("peak");
    assert!(
        peak <= 60,
        "the sandbox saw {peak} GETs in one second (budget 60)"
    );
    assert_eq!(decided, 200);
    for child in [&mut a, &mut b] {
        child.kill().expect("kill");
        child.wait().expect("reap");
    }
}

#[tokio::test]
async fn a_429_from_didit_pauses_that_scope_for_the_whole_fleet() {
    let app = spawn_app(AppOptions {
        webhooks: false,
        sandbox_limits: vec!["get=3/1s"],
        ..Default::default()
    })
    .await;
    let producer = app.producer().await;
    for i in 0..10 {
        producer
            .start_kyc(request(&format!("u-429-{i}")))
            .await
            .expect("enqueue");
    }
    let c = app.redis.connection().await;
    eventually("the get scope is paused fleet-wide", DEADLINE, || {
        let mut c = c.clone();
        async move {
            c.exists::<_, bool>("kyc:ratelimit:get:paused")
                .await
                .ok()
                .filter(|p| *p)
        }
    })
    .await;
    app.wait_events("kyc.session.decided", 10).await;
    let queue = kyc_worker::queue::Queue::connect(&app.redis.url(), "kyc", Default::default())
        .await
        .expect("queue");
    assert_eq!(queue.stats("poll").await.expect("stats").dead, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_intake_stream_starts_sessions_and_rejects_bad_entries_with_a_reason() {
    let app = spawn_app(AppOptions::default()).await;
    let mut c = app.redis.connection().await;
    let _: String = c
        .xadd(
            "kyc:intake",
            "*",
            &[
                ("vendor_data", "u-stream"),
                ("sandbox_scenario", "approve"),
                ("request_id", "stream-1"),
                ("metadata", r#"{"plan":"gold"}"#),
            ],
        )
        .await
        .expect("xadd");
    let _: String = c
        .xadd("kyc:intake", "*", &[("sandbox_scenario", "approve")])
        .await
        .expect("xadd");
    let _: String = c
        .xadd(
            "kyc:intake",
            "*",
            &[("vendor_data", "u-x"), ("metadata", "{not json")],
        )
        .await
        .expect("xadd");

    let decided = app.wait_events("kyc.session.decided", 1).await;
    assert_eq!(decided[0]["request_id"], "stream-1");
    let rejected = eventually("two rejected entries", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let r: redis::streams::StreamRangeReply =
                c.xrange_all("kyc:intake:rejected").await.ok()?;
            (r.ids.len() == 2).then_some(r)
        }
    })
    .await;
    let reasons: Vec<String> = rejected
        .ids
        .iter()
        .map(|e| redis::from_redis_value_ref::<String>(&e.map["reason"]).expect("reason"))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("vendor_data")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("metadata is not JSON")),
        "{reasons:?}"
    );
    let left: u64 = c.xlen("kyc:intake").await.expect("xlen");
    assert_eq!(left, 0, "every entry was acknowledged and removed");
    app.stop().await;
}

#[tokio::test]
async fn the_http_intake_starts_a_session_and_the_status_route_returns_its_link() {
    let app = spawn_app(AppOptions::default()).await;
    let client = reqwest::Client::new();

    let unauthorized = client
        .post(app.url("/v1/verifications"))
        .json(&json!({"vendor_data": "u-http"}))
        .send()
        .await
        .expect("post");
    assert_eq!(unauthorized.status(), 401);
    let bad = client
        .post(app.url("/v1/verifications"))
        .bearer_auth(TEST_API_TOKEN)
        .json(&json!({"sandbox_scenario": "approve"}))
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.expect("json");
    assert_eq!(body["field"], "vendor_data");

    let accepted = client
        .post(app.url("/v1/verifications"))
        .bearer_auth(TEST_API_TOKEN)
        .header("idempotency-key", "http-req-1")
        .json(&json!({"vendor_data": "u-http", "sandbox_scenario": "approve"}))
        .send()
        .await
        .expect("post");
    assert_eq!(accepted.status(), 202);
    let body: serde_json::Value = accepted.json().await.expect("json");
    assert_eq!(body["request_id"], "http-req-1");

    let status = eventually("the verification is decided", DEADLINE, || async {
        let r = client
            .get(app.url("/v1/verifications/http-req-1"))
            .bearer_auth(TEST_API_TOKEN)
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = r.json().await.ok()?;
        (body["status"] == "Approved").then_some(body)
    })
    .await;
    assert!(
        status["url"]
            .as_str()
            .is_some_and(|u| u.starts_with(app.sandbox.base_url().as_str())),
        "{status}"
    );
    assert_eq!(status["decided_by"], "didit");
    let missing = client
        .get(app.url("/v1/verifications/nope"))
        .bearer_auth(TEST_API_TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    let openapi: serde_json::Value = client
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(openapi["paths"]["/v1/verifications"].is_object());
    app.stop().await;
}

#[tokio::test]
async fn a_session_decided_without_a_webhook_is_picked_up_by_the_sweep() {
    // The app expects webhooks (first safety-net poll after 20 s) but every one is lost.
    let app = spawn_app(AppOptions {
        drop_webhooks: true,
        env: vec![("KYC__POLL__SWEEP_INTERVAL".into(), "500ms".into())],
        ..Default::default()
    })
    .await;
    let producer = app.producer().await;
    producer
        .start_kyc(request("u-sweep"))
        .await
        .expect("enqueue");
    let decided = app.wait_events("kyc.session.decided", 1).await;
    assert_eq!(decided[0]["status"], "Approved");
    app.stop().await;
}
