//! The pipeline end to end: start request → Didit session (the sandbox over HTTP) → decision
//! → exactly one event per decision, with workers in this process or as child processes.

use didit::DiditClient;
use std::{collections::HashMap, time::Duration};

use kyc_worker::domain::StartRequest;
use redis::AsyncCommands;

use crate::helpers::{eventually, spawn_app, AppOptions, TestApp, DEADLINE};

fn request(vendor_data: &str, scenario: &str) -> StartRequest {
    StartRequest {
        vendor_data: vendor_data.into(),
        sandbox_scenario: Some(scenario.into()),
        ..Default::default()
    }
}

/// A workflow whose sessions expire after `seconds` (the sandbox allows less than Didit's 1 h).
async fn short_workflow(app: &TestApp, seconds: u64) -> uuid::Uuid {
    let client = DiditClient::new(&app.settings().didit.client_config()).expect("client");
    let w = client
        .create_workflow(&didit::types::CreateWorkflowRequest {
            workflow_label: Some("short".into()),
            features: vec![didit::types::WorkflowFeature {
                feature: "OCR".into(),
                config: None,
            }],
            max_retry_attempts: None,
            session_expiration_time: Some(seconds),
        })
        .await
        .expect("workflow");
    w.stable_id()
}

fn by_request(events: &[HashMap<String, String>]) -> HashMap<String, Vec<HashMap<String, String>>> {
    let mut map: HashMap<String, Vec<HashMap<String, String>>> = HashMap::new();
    for e in events {
        map.entry(e["request_id"].clone())
            .or_default()
            .push(e.clone());
    }
    map
}

async fn run_scenarios(app: &TestApp) {
    let producer = app.producer().await;
    let short = short_workflow(app, 2).await;
    let cases = [
        (
            "u-approve",
            "approve",
            None,
            "kyc.session.decided",
            "Approved",
        ),
        (
            "u-decline",
            "decline_document_expired",
            None,
            "kyc.session.decided",
            "Declined",
        ),
        (
            "u-review",
            "review_face_match_borderline",
            None,
            "kyc.session.decided",
            "In Review",
        ),
        (
            "u-abandon",
            "abandon",
            Some(short),
            "kyc.session.expired",
            "Abandoned",
        ),
        (
            "u-expire",
            "expire",
            Some(short),
            "kyc.session.expired",
            "Expired",
        ),
    ];
    let mut ids = HashMap::new();
    for (vendor, scenario, workflow, _, _) in &cases {
        let mut req = request(vendor, scenario);
        req.workflow_id = *workflow;
        ids.insert(
            producer.start_kyc(req).await.expect("enqueue").to_string(),
            *vendor,
        );
    }

    let created = app.wait_events("kyc.session.created", 5).await;
    let link = format!("{}session/", app.sandbox.base_url());
    assert!(created.iter().all(|e| {
        let data: serde_json::Value = serde_json::from_str(&e["data"]).expect("data");
        data["url"].as_str().is_some_and(|u| u.starts_with(&link))
    }));
    eventually(
        "every request has its outcome",
        Duration::from_secs(30),
        || async {
            let events = by_request(&app.events().await);
            let done = cases.iter().all(|(vendor, _, _, kind, status)| {
                let id = ids
                    .iter()
                    .find(|(_, v)| *v == vendor)
                    .map(|(id, _)| id.clone())
                    .unwrap_or_default();
                events.get(&id).is_some_and(|es| {
                    es.iter()
                        .any(|e| e["type"] == *kind && e["status"] == *status)
                })
            });
            done.then_some(())
        },
    )
    .await;
    let decided = app
        .events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "kyc.session.decided")
        .count();
    assert_eq!(decided, 3, "one decided event per decided request");
    for e in app.events().await {
        assert!(
            !e["event_id"].is_empty() && !e["vendor_data"].is_empty(),
            "{e:?}"
        );
        if e["type"] == "kyc.session.decided" {
            assert_eq!(e["decided_by"], "didit");
            let data: serde_json::Value = serde_json::from_str(&e["data"]).expect("data");
            assert!(data["scores"].is_object(), "{data}");
            assert!(
                !e["data"].contains("first_name") && !e["data"].contains("portrait"),
                "PII or media in an event: {}",
                e["data"]
            );
        }
    }
}

#[tokio::test]
async fn with_webhooks_every_scenario_ends_in_its_event() {
    let app = spawn_app(AppOptions::default()).await;
    run_scenarios(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn polling_only_every_scenario_ends_in_its_event() {
    let app = spawn_app(AppOptions {
        webhooks: false,
        ..Default::default()
    })
    .await;
    run_scenarios(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn the_same_request_enqueued_three_times_makes_one_session_and_one_decided_event() {
    let app = spawn_app(AppOptions::default()).await;
    let producer = app.producer().await;
    for _ in 0..3 {
        let mut req = request("u-same", "approve");
        req.request_id = Some("req-same-1".into());
        producer.start_kyc(req).await.expect("enqueue");
    }

    app.wait_events("kyc.session.decided", 1).await;
    // All three deliveries have finished (none waits for the lock or holds a retry).
    let queue = kyc_worker::queue::Queue::connect(&app.redis.url(), "kyc", Default::default())
        .await
        .expect("queue");
    eventually("every start job finished", DEADLINE, || async {
        let s = queue.stats("start").await.expect("stats");
        (s.ready + s.in_flight + s.scheduled == 0).then_some(())
    })
    .await;

    let events = app.events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "kyc.session.created")
            .count(),
        1
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "kyc.session.decided")
            .count(),
        1
    );
    assert_eq!(app.sandbox_stats().await["sessions_created"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_job_goes_to_the_dead_set_while_the_others_complete() {
    let app = spawn_app(AppOptions::default()).await;
    let mut c = app.redis.connection().await;
    let _: String = c
        .xadd(
            "kyc:queue:start:ready",
            "*",
            &[(
                "j",
                r#"{"v":1,"id":"x","deadline_ms":99999999999999,"args":{"vendor_data":""}}"#,
            )],
        )
        .await
        .expect("xadd");
    let _: String = c
        .xadd("kyc:queue:start:ready", "*", &[("j", "not json at all")])
        .await
        .expect("xadd");
    let producer = app.producer().await;
    for i in 0..3 {
        producer
            .start_kyc(request(&format!("u-{i}"), "approve"))
            .await
            .expect("enqueue");
    }

    app.wait_events("kyc.session.decided", 3).await;
    let queue = kyc_worker::queue::Queue::connect(&app.redis.url(), "kyc", Default::default())
        .await
        .expect("queue");
    let dead = eventually("two dead jobs", DEADLINE, || async {
        let d = queue.dead_list("start", 10).await.expect("dead");
        (d.len() == 2).then_some(d)
    })
    .await;
    assert!(
        dead.iter()
            .any(|d| d.reason.contains("vendor_data: is required")),
        "{dead:?}"
    );
    assert!(
        dead.iter().any(|d| d.reason.contains("not a job envelope")),
        "{dead:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_key_pauses_the_fleet_without_losing_work_and_resumes() {
    // Arrange
    let app = spawn_app(AppOptions {
        complete_after: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    app.sandbox_control(serde_json::json!({"action": "revoke_api_key"}))
        .await;
    let producer = app.producer().await;

    // Act: work arrives while the key is revoked.
    for i in 0..3 {
        producer
            .start_kyc(request(&format!("u-paused-{i}"), "approve"))
            .await
            .expect("enqueue");
    }
    let mut c = app.redis.connection().await;
    let reason = eventually("the fleet pauses", DEADLINE, || {
        let mut c = c.clone();
        async move {
            c.get::<_, Option<String>>("kyc:didit:paused")
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    assert_eq!(reason, "invalid_key");

    // A webhook is still answered while paused (unknown session: 200, nothing enqueued).
    let body = r#"{"session_id":"11111111-2222-3333-4444-555555555555","status":"Approved","webhook_type":"status.updated","timestamp":1}"#;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let body = body.replace("\"timestamp\":1", &format!("\"timestamp\":{ts}"));
    let sigs = didit::webhook::sign("sandbox-webhook-secret", body.as_bytes(), ts).expect("sign");
    let response = reqwest::Client::new()
        .post(app.url("/webhooks/didit"))
        .header("x-timestamp", ts.to_string())
        .header("x-signature-v2", sigs.v2)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("webhook");
    assert_eq!(response.status(), 200);

    // Assert: nothing dead-lettered while paused; restoring the key resumes everything.
    let queue = kyc_worker::queue::Queue::connect(&app.redis.url(), "kyc", Default::default())
        .await
        .expect("queue");
    assert_eq!(queue.stats("start").await.expect("stats").dead, 0);
    app.sandbox_control(serde_json::json!({"action": "restore_api_key"}))
        .await;
    app.wait_events("kyc.session.decided", 3).await;
    let paused: Option<String> = c.get("kyc:didit:paused").await.expect("get");
    assert_eq!(paused, None);
    assert_eq!(queue.stats("start").await.expect("stats").dead, 0);
    assert_eq!(queue.stats("poll").await.expect("stats").dead, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_worker_process_killed_mid_flight_loses_and_doubles_nothing() {
    // Arrange: the fleet runs as a child process, polling-only so it holds work in flight.
    let app = spawn_app(AppOptions {
        webhooks: false,
        complete_after: Duration::from_millis(1500),
        in_process: false,
        ..Default::default()
    })
    .await;
    let spawn_child = || app.spawn_fleet_process(&[]);
    let mut child = spawn_child();
    let producer = app.producer().await;
    let n = 20;
    for i in 0..n {
        producer
            .start_kyc(request(&format!("u-kill-{i}"), "approve"))
            .await
            .expect("enqueue");
    }

    // Act: SIGKILL once some sessions exist, then start a fresh process.
    app.wait_events("kyc.session.created", 5).await;
    child.kill().expect("kill");
    child.wait().expect("reap");
    let mut second = spawn_child();

    // Assert
    let decided = app.wait_events("kyc.session.decided", n).await;
    let per_request = by_request(&decided);
    assert_eq!(per_request.len(), n, "every request decided");
    assert!(
        per_request.values().all(|es| es.len() == 1),
        "a request got two decided events"
    );
    assert_eq!(
        app.sandbox_stats().await["sessions_created"],
        n as u64,
        "one Didit session per request"
    );
    second.kill().expect("kill");
    second.wait().expect("reap");
}

#[tokio::test]
async fn sigterm_drains_and_exits_0_and_nothing_is_lost() {
    // Arrange: work in flight in a child process.
    let app = spawn_app(AppOptions {
        webhooks: false,
        complete_after: Duration::from_millis(800),
        in_process: false,
        ..Default::default()
    })
    .await;
    let spawn_child = || app.spawn_fleet_process(&[]);
    let mut child = spawn_child();
    let producer = app.producer().await;
    let n = 10;
    for i in 0..n {
        producer
            .start_kyc(request(&format!("u-term-{i}"), "approve"))
            .await
            .expect("enqueue");
    }
    app.wait_events("kyc.session.created", 3).await;

    // Act: SIGTERM, as Kubernetes sends it.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = eventually("the process exits", DEADLINE, || {
        let exited = child.try_wait().expect("try_wait");
        async move { exited }
    })
    .await;

    // Assert: a clean exit, and a new process finishes everything.
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    let mut next = spawn_child();
    let decided = app.wait_events("kyc.session.decided", n).await;
    assert_eq!(by_request(&decided).len(), n);
    assert!(by_request(&decided).values().all(|es| es.len() == 1));
    next.kill().expect("kill");
    next.wait().expect("reap");
}

#[tokio::test]
async fn enqueue_from_csv_starts_one_verification_per_row_and_names_a_bad_row() {
    let app = spawn_app(AppOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("people.csv");
    std::fs::write(&good, "vendor_data,request_id,sandbox_scenario\nu-csv-1,csv-1,approve\nu-csv-2,csv-2,decline_liveness\n").expect("write");

    let out = app.cli(&["enqueue", "--from-csv", good.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each row's request id on stdout as CSV (rows numbered as a spreadsheet does, the
    // header being row 1), the count on stderr.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2,csv-1") && stdout.contains("3,csv-2"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("enqueued 2"));
    let decided = app.wait_events("kyc.session.decided", 2).await;
    let ids: std::collections::HashSet<String> =
        decided.iter().map(|e| e["request_id"].clone()).collect();
    assert_eq!(
        ids,
        ["csv-1".to_owned(), "csv-2".to_owned()]
            .into_iter()
            .collect()
    );

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "vendor_data,request_id\nu-ok,csv-3\n,csv-4\n").expect("write");
    let out = app.cli(&["enqueue", "--from-csv", bad.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}
