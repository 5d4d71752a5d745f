//! What a new producer meets, on each path a producer takes (HTTP, the intake stream, the
//! CLI, the Rust `Producer`): errors that name the field and what was expected without
//! repeating a value, a CSV batch read as CSV, and refusals at the door for a workflow or a
//! sandbox scenario the deployment does not have.

use std::collections::HashMap;

use kyc_worker::{
    domain::{Refusal, StartRequest},
    producer::ProducerError,
};
use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::{
    helpers::{eventually, spawn_app, AppOptions, TestApp, DEADLINE, TEST_API_TOKEN},
    hostile::{assert_nothing_enqueued, scrape, value},
};

/// The start request's fields, as every "expected one of" must list them.
const EXPECTED_FIELDS: &str = "expected one of `request_id`, `vendor_data`, `workflow`, \
    `workflow_id`, `callback`, `language`, `contact_details`, `expected_details`, `metadata`, \
    `sandbox_scenario`";

async fn post(app: &TestApp, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(app.url("/v1/verifications"))
        .bearer_auth(TEST_API_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// Adds an intake stream entry and waits for its rejection; returns the recorded reason.
async fn rejected_reason(app: &TestApp, fields: &[(&str, &str)]) -> String {
    let mut c = app.redis.connection().await;
    let id: String = c.xadd("kyc:intake", "*", fields).await.expect("xadd");
    eventually("the entry is rejected", DEADLINE, || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let r: redis::streams::StreamRangeReply =
                c.xrange_all("kyc:intake:rejected").await.ok()?;
            r.ids.iter().find_map(|e| {
                let entry: String = redis::from_redis_value_ref(&e.map["entry_id"]).ok()?;
                (entry == id)
                    .then(|| redis::from_redis_value_ref::<String>(&e.map["reason"]).ok())
                    .flatten()
            })
        }
    })
    .await
}

/// The start jobs waiting on the queue, as their arguments (the start requests).
async fn queued_requests(app: &TestApp) -> Vec<Value> {
    let mut c = app.redis.connection().await;
    let r: redis::streams::StreamRangeReply =
        c.xrange_all("kyc:queue:start:ready").await.expect("xrange");
    r.ids
        .iter()
        .map(|e| {
            let raw: String = redis::from_redis_value_ref(&e.map["j"]).expect("an envelope");
            let envelope: Value = serde_json::from_str(&raw).expect("JSON envelope");
            envelope["args"].clone()
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn errors_name_the_field_and_the_expected_ones_but_never_a_value_on_every_path() {
    let app = spawn_app(AppOptions::default()).await;

    // HTTP: a typo in a field name is named, with the fields a start request has.
    let (status, answer) = post(&app, json!({"vendor_data": "Jane Doe", "vendor_dta": "x"})).await;
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().expect("a reason");
    assert!(
        error.starts_with("not a start request: unknown field `vendor_dta`, ")
            && error.contains(EXPECTED_FIELDS),
        "{error}"
    );
    assert!(!error.contains("Jane"), "{error}");
    // An unknown "field" that is not a name is not repeated; a wrong value is masked.
    let (_, answer) = post(&app, json!({"vendor_data": "u-1", "Jane <Doe>": 1})).await;
    let error = answer["error"].as_str().expect("a reason");
    assert!(
        error.starts_with("not a start request: an unknown field, ")
            && error.contains(EXPECTED_FIELDS),
        "{error}"
    );
    let (_, answer) = post(
        &app,
        json!({"vendor_data": "u-1", "workflow_id": "Jane Doe"}),
    )
    .await;
    let error = answer["error"].as_str().expect("a reason");
    assert!(!error.contains("Jane"), "{error}");

    // The intake stream: the rejected entry's reason says the same.
    let reason = rejected_reason(&app, &[("vendor_data", "Jane Doe"), ("vendr", "x")]).await;
    assert!(
        reason.starts_with("not a start request: unknown field `vendr`, ")
            && reason.contains(EXPECTED_FIELDS),
        "{reason}"
    );
    assert!(!reason.contains("Jane"), "{reason}");
    let reason = rejected_reason(&app, &[("vendor_data", "u-2"), ("Jane Doe", "x")]).await;
    assert!(
        reason.starts_with("not a start request: an unknown field, "),
        "{reason}"
    );

    // The dead set (a job written to the queue without a producer): the reason names the
    // field, and so does `queue dead list`.
    let mut c = app.redis.connection().await;
    let _: String = c
        .xadd(
            "kyc:queue:start:ready",
            "*",
            &[(
                "j",
                r#"{"v":1,"id":"raw-1","deadline_ms":99999999999999,"args":{"vendor_data":"Jane Doe","vendr":"x"}}"#,
            )],
        )
        .await
        .expect("xadd");
    let queue = kyc_worker::queue::Queue::connect(&app.redis.url(), "kyc", Default::default())
        .await
        .expect("queue");
    let dead = eventually("the raw job is dead", DEADLINE, || async {
        let d = queue.dead_list("start", 10).await.ok()?;
        d.into_iter().next()
    })
    .await;
    assert!(
        dead.reason.contains("unknown field `vendr`, ") && dead.reason.contains(EXPECTED_FIELDS),
        "{}",
        dead.reason
    );
    assert!(!dead.reason.contains("Jane"), "{}", dead.reason);
    let listed = app.cli(&["queue", "dead", "list"]);
    let stdout = text(&listed.stdout);
    assert!(stdout.contains("unknown field `vendr`"), "{stdout}");
    assert!(!stdout.contains("Jane"), "{stdout}");

    // The CLI: a CSV column that is not a field is named, with the expected ones.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("people.csv");
    std::fs::write(&file, "vendor_data,vendr\nJane Doe,x\n").expect("write");
    let out = app.cli(&["enqueue", "--from-csv", file.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unknown field `vendr`, ") && stderr.contains(EXPECTED_FIELDS),
        "{stderr}"
    );
    assert!(!stderr.contains("Jane"), "{stderr}");

    // Rust: the error names the field and what was expected, not the value.
    let producer = app.producer().await;
    let refused = producer
        .start_kyc(StartRequest {
            vendor_data: "u-3".into(),
            language: Some("Jane Doe".into()),
            ..Default::default()
        })
        .await;
    match refused {
        Err(ProducerError::Invalid(e)) => {
            assert_eq!(e.field, "language");
            assert!(e.to_string().contains("expected an ISO 639-1 code"), "{e}");
            assert!(!e.to_string().contains("Jane"), "{e}");
        }
        other => panic!("expected a refusal naming language, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test]
async fn a_workflow_or_a_sandbox_scenario_the_deployment_lacks_is_refused_at_the_door() {
    let app = spawn_app(AppOptions {
        env: vec![(
            "KYC__WORKFLOWS__BASIC".into(),
            didit_sandbox::WORKFLOW_ID.to_string(),
        )],
        ..Default::default()
    })
    .await;
    let before = scrape(&app).await;

    // HTTP: 400 naming the field and what this deployment has.
    let (status, answer) = post(&app, json!({"vendor_data": "u-1", "workflow": "premium"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "workflow");
    let error = answer["error"].as_str().expect("a reason");
    assert!(error.contains("expected `basic`"), "{error}");
    let (status, answer) = post(
        &app,
        json!({"vendor_data": "u-1", "sandbox_scenario": "approve_everyone"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "sandbox_scenario");
    let error = answer["error"].as_str().expect("a reason");
    assert!(
        error.contains("`approve`") && error.contains("`decline_aml_hit`"),
        "{error}"
    );

    // The intake stream: rejected with the reason.
    let reason = rejected_reason(&app, &[("vendor_data", "u-2"), ("workflow", "premium")]).await;
    assert!(
        reason.starts_with("workflow: not a workflow of this deployment; expected `basic`"),
        "{reason}"
    );
    let reason = rejected_reason(
        &app,
        &[("vendor_data", "u-2"), ("sandbox_scenario", "nope")],
    )
    .await;
    assert!(
        reason.starts_with("sandbox_scenario: not a sandbox scenario; expected one of"),
        "{reason}"
    );

    // The CLI: exit 2 with the reason.
    for args in [
        ["--workflow", "premium"],
        ["--sandbox-scenario", "approve_everyone"],
    ] {
        let out = app.cli(&["enqueue", "--vendor-data", "u-3", args[0], args[1]]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        let field = args[0].trim_start_matches("--").replace('-', "_");
        assert!(stderr.contains(&format!("{field}: not a")), "{stderr}");
    }

    // Rust: ProducerError::Invalid, saying which refusal.
    let producer = app.producer().await;
    let refused = producer
        .start_kyc(StartRequest {
            vendor_data: "u-4".into(),
            workflow: Some("premium".into()),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(&refused, Err(ProducerError::Invalid(e)) if e.refusal == Refusal::UnknownWorkflow),
        "{refused:?}"
    );

    // Counted by source and reason; nothing was queued, Didit never called.
    let after = eventually("the refusals are counted", DEADLINE, || async {
        let s = scrape(&app).await;
        let stream = value(
            &s,
            r#"kyc_intake_rejected_total{reason="unknown_scenario",source="intake_stream"}"#,
        );
        (stream >= 1.0).then_some(s)
    })
    .await;
    for (source, reason) in [
        ("http", "unknown_workflow"),
        ("http", "unknown_scenario"),
        ("intake_stream", "unknown_workflow"),
        ("intake_stream", "unknown_scenario"),
    ] {
        let series =
            format!("kyc_intake_rejected_total{{reason=\"{reason}\",source=\"{source}\"}}");
        assert!(before.contains(&series), "{series} exists from the start");
        assert_eq!(
            value(&after, &series) - value(&before, &series),
            1.0,
            "{series}"
        );
    }
    assert_nothing_enqueued(&app, "refused at the door").await;

    // What the deployment has is accepted.
    let (status, answer) = post(
        &app,
        json!({"vendor_data": "u-5", "workflow": "basic", "sandbox_scenario": "approve"}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn enqueue_from_csv_reads_real_csv_refuses_a_bad_file_whole_and_reports_each_id() {
    let app = spawn_app(AppOptions {
        in_process: false,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();

    // Quoted commas, quotes and newlines (in a JSON cell: a vendor_data may not hold
    // control characters), a byte order mark, a blank line.
    let good = path("good.csv");
    std::fs::write(
        &good,
        "\u{feff}vendor_data,request_id,metadata\r\n\
         \"Smith, John\",q1,\"{\"\"team\"\": \"\"a,b\"\"}\"\r\n\
         \r\n\
         two,q2,\"{\n\"\"lines\"\": 2\n}\"\r\n",
    )
    .expect("write");
    let out = app.cli(&["enqueue", "--from-csv", &good]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(text(&out.stdout), "row,request_id\n2,q1\n3,q2\n");
    assert!(stderr.contains("enqueued 2 verification(s)"), "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains("ETA"),
        "no progress bar is drawn when stderr is not a terminal: {stderr:?}"
    );
    let queued: HashMap<String, Value> = queued_requests(&app)
        .await
        .into_iter()
        .map(|r| (r["request_id"].as_str().expect("an id").to_owned(), r))
        .collect();
    assert_eq!(queued.len(), 2);
    assert_eq!(queued["q1"]["vendor_data"], "Smith, John");
    assert_eq!(queued["q1"]["metadata"], json!({"team": "a,b"}));
    assert_eq!(queued["q2"]["vendor_data"], "two");
    assert_eq!(queued["q2"]["metadata"], json!({"lines": 2}));

    // One invalid row: nothing is queued, every bad row and field is named.
    let bad = path("bad.csv");
    std::fs::write(
        &bad,
        "vendor_data,request_id,workflow_id,sandbox_scenario\n\
         u-ok,r-ok,,approve\n\
         ,r-2,,\n\
         u-3,r-3,Jane Doe,approve_everyone\n",
    )
    .expect("write");
    let out = app.cli(&["enqueue", "--from-csv", &bad]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for named in [
        "2 invalid row(s), nothing was enqueued",
        "row 3 (line 3): vendor_data: is required",
        "row 4 (line 4): workflow_id: ",
        "row 4 (line 4): sandbox_scenario: not a sandbox scenario",
    ] {
        assert!(stderr.contains(named), "lacks {named:?}: {stderr}");
    }
    assert!(!stderr.contains("Jane"), "{stderr}");
    assert_eq!(queued_requests(&app).await.len(), 2, "nothing more queued");

    // --skip-invalid queues the valid rows, lists the others; --out writes the ids.
    let ids = path("ids.csv");
    let out = app.cli(&[
        "enqueue",
        "--from-csv",
        &bad,
        "--skip-invalid",
        "--out",
        &ids,
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        std::fs::read_to_string(&ids).expect("ids"),
        "row,request_id\n2,r-ok\n"
    );
    assert!(
        stderr.contains("skipped row 3 (line 3): vendor_data"),
        "{stderr}"
    );
    assert!(
        stderr.contains("enqueued 1 verification(s), skipped 2 invalid row(s)"),
        "{stderr}"
    );
    let queued = queued_requests(&app).await;
    assert_eq!(queued.len(), 3);
    assert!(queued.iter().any(|r| r["request_id"] == "r-ok"));
}
