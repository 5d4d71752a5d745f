//! Operations a KYC operator answers for: cancelling, bounded retention, backpressure.

use std::time::Duration;

use kyc_worker::{domain::StartRequest, producer::ProducerError};
use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{eventually, spawn_app, AppOptions, DEADLINE, TEST_API_TOKEN};

fn request(vendor_data: &str, scenario: &str) -> StartRequest {
    StartRequest {
        vendor_data: vendor_data.into(),
        sandbox_scenario: Some(scenario.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_cancelled_verification_is_no_longer_followed_and_says_so() {
    // Arrange: polling-only, a session that would stay open (the user never finishes).
    let app = spawn_app(AppOptions {
        webhooks: false,
        ..Default::default()
    })
    .await;
    let producer = app.producer().await;
    let id = producer
        .start_kyc(request("u-cancel", "abandon"))
        .await
        .expect("enqueue");
    app.wait_events("kyc.session.created", 1).await;

    // Act
    let out = app.cli(&["cancel", id.as_str()]);

    // Assert
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = app.wait_events("kyc.session.failed", 1).await;
    let data: serde_json::Value = serde_json::from_str(&failed[0]["data"]).expect("data");
    assert_eq!(data["reason"], "cancelled");
    let reads = |stats: &serde_json::Value| stats["requests"]["decision"].as_u64().unwrap_or(0);
    let queue = kyc_worker::queue::Queue::connect(&app.redis.url(), "kyc", Default::default())
        .await
        .expect("queue");
    eventually("no poll left for the session", DEADLINE, || async {
        let s = queue.stats("poll").await.expect("stats");
        (s.ready + s.in_flight + s.scheduled == 0).then_some(())
    })
    .await;
    let after_cancel = reads(&app.sandbox_stats().await);
    let again = app.cli(&["cancel", id.as_str()]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already cancelled"));
    assert_eq!(
        reads(&app.sandbox_stats().await),
        after_cancel,
        "the session is not read any more"
    );
    assert_eq!(
        app.events()
            .await
            .iter()
            .filter(|e| e["type"] == "kyc.session.failed")
            .count(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn every_key_the_fleet_writes_expires_and_redis_returns_to_its_baseline() {
    // Arrange: retention scaled down to seconds.
    let app = spawn_app(AppOptions {
        env: vec![
            ("KYC__EVENTS__RECORD_RETENTION".into(), "2s".into()),
            ("KYC__EVENTS__RETENTION".into(), "1s".into()),
            ("KYC__RATELIMIT__WINDOW".into(), "1s".into()),
            ("KYC__RATELIMIT__MARGIN".into(), "0s".into()),
        ],
        ..Default::default()
    })
    .await;
    let producer = app.producer().await;
    let mut c = app.redis.connection().await;
    producer
        .start_kyc(request("u-warmup", "approve"))
        .await
        .expect("enqueue");
    app.wait_events("kyc.session.decided", 1).await;
    let baseline: Vec<String> = eventually("the warm-up's records expire", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut c).await.ok()?;
            (!keys
                .iter()
                .any(|k| k.contains(":request:") || k.contains(":audit:")))
            .then_some(keys)
        }
    })
    .await;

    // Act
    for i in 0..5 {
        producer
            .start_kyc(request(&format!("u-ret-{i}"), "approve"))
            .await
            .expect("enqueue");
    }
    app.wait_events("kyc.session.decided", 6).await;
    let during: u64 = redis::cmd("DBSIZE")
        .query_async(&mut c)
        .await
        .expect("dbsize");
    assert!(during > baseline.len() as u64);

    // Assert: back to the same keys once retention has passed.
    let mut expected = baseline.clone();
    expected.sort();
    eventually(
        "Redis back at its baseline keys",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            let expected = expected.clone();
            async move {
                let mut keys: Vec<String> =
                    redis::cmd("KEYS").arg("*").query_async(&mut c).await.ok()?;
                keys.sort();
                (keys == expected).then_some(())
            }
        },
    )
    .await;
    let ttl_less: Vec<String> = {
        let mut out = Vec::new();
        for key in &expected {
            let ttl: i64 = c.ttl(key).await.expect("ttl");
            if ttl == -1 {
                out.push(key.clone());
            }
        }
        out
    };
    // What stays without a TTL is bounded by construction: empty queue streams and their
    // groups, the event stream (trimmed by age), the open-sessions index (entries removed
    // when a session settles).
    for key in ttl_less {
        assert!(
            key.ends_with(":ready")
                || key.ends_with(":events")
                || key.ends_with(":sessions:open")
                || key.ends_with(":intake"),
            "{key} has no lifetime"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn producers_are_told_to_back_off_when_too_much_work_waits() {
    // Arrange: a tiny backpressure limit and a worker that is not running (in_process: false).
    let app = spawn_app(AppOptions {
        in_process: false,
        env: vec![("KYC__QUEUE__BACKPRESSURE_LIMIT".into(), "3".into())],
        ..Default::default()
    })
    .await;
    let producer = app.producer().await;
    for i in 0..3 {
        producer
            .start_kyc(request(&format!("u-bp-{i}"), "approve"))
            .await
            .expect("enqueue");
    }

    // Act + Assert: the Rust producer gets a typed error…
    let err = eventually("the producer sees the backlog", DEADLINE, || async {
        match producer.start_kyc(request("u-bp-x", "approve")).await {
            Err(e @ ProducerError::Backpressure { .. }) => Some(e),
            _ => None,
        }
    })
    .await;
    assert!(
        matches!(err, ProducerError::Backpressure { waiting: 3.., .. }),
        "{err}"
    );

    // …and the HTTP intake a 429 with Retry-After, from a process of the fleet.
    let port = crate::helpers::free_port();
    // Workers that cannot reach Didit keep the backlog in place.
    let mut child = app.spawn_fleet_process(&[
        ("KYC__HTTP__PORT", port.to_string()),
        (
            "KYC__DIDIT__BASE_URL",
            format!("http://127.0.0.1:{}", crate::helpers::free_port()),
        ),
    ]);
    let url = format!("http://127.0.0.1:{port}/v1/verifications");
    let response = eventually("a 429 from the HTTP intake", DEADLINE, || {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(TEST_API_TOKEN)
                .json(&json!({"vendor_data": "u-bp-http"}))
                .send()
                .await
                .ok()?;
            (r.status() == 429).then_some(r)
        }
    })
    .await;
    assert!(response.headers().get("retry-after").is_some());
    child.kill().expect("kill");
    child.wait().expect("reap");
}

/// Every string stored in Redis (key names and values), for "no trace left" checks.
async fn everything_in_redis(c: &mut redis::aio::MultiplexedConnection) -> String {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(c)
        .await
        .expect("keys");
    let mut all = String::new();
    for key in keys {
        all.push_str(&key);
        all.push('\n');
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(c)
            .await
            .expect("type");
        let value: redis::Value = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(&key)
                .query_async(c)
                .await
                .expect("get"),
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(c)
                .await
                .expect("hgetall"),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(c)
                .await
                .expect("smembers"),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(c)
                .await
                .expect("zrange"),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(c)
                .await
                .expect("lrange"),
            "stream" => redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(c)
                .await
                .expect("xrange"),
            _ => redis::Value::Nil,
        };
        all.push_str(&format!("{value:?}\n"));
    }
    all
}

#[tokio::test]
async fn erasure_deletes_the_person_at_didit_and_leaves_no_trace_here() {
    // Arrange: two verifications of the person, one of someone else.
    let app = spawn_app(AppOptions::default()).await;
    let producer = app.producer().await;
    let person = "erase-me-7f3a9c";
    producer
        .start_kyc(request(person, "approve"))
        .await
        .expect("enqueue");
    producer
        .start_kyc(request(person, "review_face_match_borderline"))
        .await
        .expect("enqueue");
    producer
        .start_kyc(request("keep-me", "approve"))
        .await
        .expect("enqueue");
    let decided = app.wait_events("kyc.session.decided", 3).await;
    // Didit may reuse one unfinished session for both requests of the same person.
    let mut their_sessions: Vec<String> = decided
        .iter()
        .filter(|e| e["vendor_data"] == person)
        .map(|e| e["session_id"].clone())
        .collect();
    their_sessions.sort();
    their_sessions.dedup();

    // Act
    let out = app.cli(&["erase", "--vendor-data", person]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let erased = app.wait_events("kyc.subject.erased", 1).await;

    // Assert: deleted at Didit…
    let client = didit::DiditClient::new(&app.settings().didit.client_config()).expect("client");
    for sid in &their_sessions {
        let err = client
            .decision(sid.parse().expect("uuid"))
            .await
            .expect_err("deleted");
        assert_eq!(err.status(), Some(404), "{err}");
    }
    // …the event carries a hash, not the value…
    assert_eq!(erased[0]["vendor_data"], "");
    let data: serde_json::Value = serde_json::from_str(&erased[0]["data"]).expect("data");
    assert_eq!(data["sessions_deleted_at_didit"], their_sessions.len());
    assert!(data["subject_hash"].as_str().is_some_and(|h| h.len() == 32));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        data["subject_hash"],
        "erase prints the hash the event carries"
    );
    assert_eq!(
        erased[0]["request_id"],
        format!(
            "erasure-{}",
            data["subject_hash"].as_str().unwrap_or_default()
        )
    );
    // …no trace of the person in Redis, and the other person untouched.
    let mut c = app.redis.connection().await;
    let stored = everything_in_redis(&mut c).await;
    assert!(!stored.contains(person), "the person is still in Redis");
    assert!(stored.contains("keep-me"));
    assert_eq!(
        app.events()
            .await
            .iter()
            .filter(|e| e["vendor_data"] == "keep-me")
            .count(),
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn the_audit_trail_shows_what_happened_and_why_without_personal_data() {
    let app = spawn_app(AppOptions {
        rules: true,
        ..Default::default()
    })
    .await;
    let producer = app.producer().await;
    let id = producer
        .start_kyc(StartRequest {
            vendor_data: "audit-person-5521".into(),
            sandbox_scenario: Some("approve_underage".into()),
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let decided = app.wait_events("kyc.session.decided", 1).await;

    let show = |target: &str| app.cli(&["session", "show", target]);
    let by_request = show(id.as_str());
    assert!(
        by_request.status.success(),
        "{}",
        String::from_utf8_lossy(&by_request.stderr)
    );
    let text = String::from_utf8_lossy(&by_request.stdout).into_owned();
    for step in [
        "enqueued",
        "session_created",
        "webhook_received",
        "decision_read",
        "rules_evaluated",
        "didit_update_status",
        "event_published",
    ] {
        assert!(text.contains(step), "{step} missing from:\n{text}");
    }
    assert!(
        text.contains("under_18"),
        "the rule and the values it read: {text}"
    );
    assert!(
        !text.contains("audit-person-5521"),
        "vendor_data in the audit trail"
    );
    let stamps: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(stamps.len() >= 7, "{text}");
    assert!(
        stamps
            .iter()
            .all(|t| t.len() == "2026-11-26T15:04:05.120Z".len() && t.ends_with('Z')),
        "timestamps of one width: {stamps:?}"
    );
    let by_session = show(&decided[0]["session_id"]);
    assert_eq!(
        String::from_utf8_lossy(&by_session.stdout),
        text,
        "the same trail by session id"
    );
    let unknown = show("nope");
    assert_eq!(unknown.status.code(), Some(1));
    app.stop().await;
}
