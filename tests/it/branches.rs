//! The branches of a verification past its first decision, through the paths a user takes
//! (the CLI, the HTTP API, the console, Didit's webhooks) against the sandbox: resubmission
//! by a rule, the console or the CLI; a blocklist rule on a session Didit declined;
//! cancelling; a session Didit reuses; the workflow version that sets a deadline.

use std::{collections::HashMap, time::Duration};

use kyc_worker::domain::{ContactDetails, StartRequest};
use redis::AsyncCommands;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, spawn_app, AppOptions, TestApp, DEADLINE, TEST_API_TOKEN};

const ADMIN_TOKEN: &str = "console-admin-token-0123456789";

type Event = HashMap<String, String>;

/// Enqueues a verification; returns its request id.
async fn start(app: &TestApp, request: StartRequest) -> String {
    app.producer()
        .await
        .start_kyc(request)
        .await
        .expect("enqueue")
        .to_string()
}

fn request(vendor_data: &str, scenario: &str) -> StartRequest {
    StartRequest {
        vendor_data: vendor_data.into(),
        sandbox_scenario: Some(scenario.into()),
        ..Default::default()
    }
}

fn with_email(mut r: StartRequest, language: &str) -> StartRequest {
    r.contact_details = Some(ContactDetails {
        email: Some("person@example.org".into()),
        email_lang: Some(language.into()),
        ..Default::default()
    });
    r
}

/// The events of one request, of one type, oldest first.
async fn events_of(app: &TestApp, request: &str, kind: &str) -> Vec<Event> {
    app.events()
        .await
        .into_iter()
        .filter(|e| e["request_id"] == request && e["type"] == kind)
        .collect()
}

/// Waits for the `n`th event of `kind` (with `status`, when given) of a request.
async fn nth_event(app: &TestApp, request: &str, kind: &str, status: &str, n: usize) -> Event {
    eventually(
        &format!("{kind} {status} #{n} of {request}"),
        Duration::from_secs(30),
        || async {
            let found: Vec<Event> = events_of(app, request, kind)
                .await
                .into_iter()
                .filter(|e| status.is_empty() || e["status"] == status)
                .collect();
            found.get(n - 1).cloned()
        },
    )
    .await
}

async fn verification_status(app: &TestApp, request: &str) -> Value {
    reqwest::Client::new()
        .get(app.url(&format!("/v1/verifications/{request}")))
        .bearer_auth(TEST_API_TOKEN)
        .send()
        .await
        .expect("status route")
        .json()
        .await
        .expect("status json")
}

async fn session_field(app: &TestApp, sid: &str, field: &str) -> Option<String> {
    let mut c = app.redis.connection().await;
    c.hget(format!("kyc:session:{sid}"), field)
        .await
        .expect("hget")
}

async fn console_post(app: &TestApp, path: &str, operator: &str, action: &str) -> u16 {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-operator", operator)
        .form(&[("action", action)])
        .send()
        .await
        .expect("console post")
        .status()
        .as_u16()
}

fn rules_file(dir: &tempfile::TempDir, text: &str) -> (String, String) {
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, text).expect("write rules");
    ("KYC__RULES__FILE".into(), path.display().to_string())
}

/// Poll jobs finished so far, whatever their outcome (`kyc_jobs_total{queue="poll"}`).
async fn finished_polls(app: &TestApp) -> f64 {
    let text = app.metrics().await;
    text.lines()
        .filter(|l| l.starts_with("kyc_jobs_total{") && l.contains(r#"queue="poll""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until a poll job has finished since `before` was read: the read a refresh or a
/// webhook asked for has been made, so whatever it would publish has been published.
async fn a_poll_finished_since(app: &TestApp, before: f64) {
    eventually("a poll job finishes", DEADLINE, || async {
        (finished_polls(app).await > before).then_some(())
    })
    .await;
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// The CLI runs as a child process while this runtime serves the sandbox it calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_resubmission_is_announced_emailed_and_a_second_declined_is_a_new_event() {
    let app = spawn_app(AppOptions {
        complete_after: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    let rid = start(
        &app,
        with_email(request("resubmit-cli-1", "decline_face_mismatch"), "fr"),
    )
    .await;
    let first = nth_event(&app, &rid, "kyc.session.decided", "Declined", 1).await;
    let sid = first["session_id"].clone();
    let deadline_before: u64 = session_field(&app, &sid, "deadline_ms")
        .await
        .expect("deadline")
        .parse()
        .expect("ms");
    // An hour passes at Didit before someone resubmits: the expiry window restarts then.
    app.sandbox_control(json!({"action": "advance_clock", "seconds": 3600}))
        .await;

    let out = app.cli(&["didit", "resubmit", &sid, "--comment", "blurry photo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("e-mails the person"),
        "{}",
        text(&out.stdout)
    );
    // The person redoes the steps and fails again.
    app.sandbox_control(
        json!({"action": "set_scenario", "session_id": sid, "scenario": "decline_face_mismatch"}),
    )
    .await;

    let asked = nth_event(
        &app,
        &rid,
        "kyc.session.resubmission_requested",
        "Resubmitted",
        1,
    )
    .await;
    assert_eq!(asked["decided_by"], "didit");
    assert_eq!(asked["previous_status"], "Declined");
    let data: Value = serde_json::from_str(&asked["data"]).expect("data");
    assert_eq!(data["requested_by"], "didit");
    let emails = app.sandbox_stats().await["emails"].clone();
    assert_eq!(
        emails,
        json!([{"session_id": sid, "status": "Resubmitted",
                "email_address": "person@example.org", "email_language": "fr"}])
    );
    let second = nth_event(&app, &rid, "kyc.session.decided", "Declined", 2).await;
    assert_ne!(second["event_id"], first["event_id"]);
    assert_eq!(second["previous_status"], "Resubmitted");
    let deadline_after: u64 = session_field(&app, &sid, "deadline_ms")
        .await
        .expect("deadline")
        .parse()
        .expect("ms");
    assert!(
        deadline_after >= deadline_before + 3_500_000,
        "the deadline follows Didit's restarted window: {deadline_before} → {deadline_after}"
    );
    // Read again (a duplicate webhook, a sweep): nothing new.
    let polls = finished_polls(&app).await;
    let out = app.cli(&["session", "refresh", &rid]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    a_poll_finished_since(&app, polls).await;
    assert_eq!(
        events_of(&app, &rid, "kyc.session.decided").await.len(),
        2,
        "each Declined once"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rule_resubmission_emails_the_person_shows_resubmitted_and_is_decided_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules_file(
        &dir,
        r#"
version = "t-resubmit"

[[rules]]
name = "redo_liveness"
when = 'status == "Declined"'
action = "resubmit"
nodes = ["feature_liveness_1:LIVENESS"]
comment = "the selfie did not match"
on = ["Declined"]
"#,
    );
    let app = spawn_app(AppOptions {
        complete_after: Duration::from_secs(3),
        env: vec![rules],
        ..Default::default()
    })
    .await;
    let rid = start(
        &app,
        with_email(request("resubmit-rule-1", "decline_face_mismatch"), "de"),
    )
    .await;

    let asked = nth_event(
        &app,
        &rid,
        "kyc.session.resubmission_requested",
        "Resubmitted",
        1,
    )
    .await;
    assert_eq!(asked["decided_by"], "rule:redo_liveness");
    let data: Value = serde_json::from_str(&asked["data"]).expect("data");
    assert_eq!(data["emailed"], true);
    assert_eq!(data["reason"], "the selfie did not match");
    assert_eq!(data["nodes"][0]["node_id"], "feature_liveness_1");
    assert_eq!(
        verification_status(&app, &rid).await["status"],
        "Resubmitted"
    );
    let emails = app.sandbox_stats().await["emails"].clone();
    assert_eq!(emails[0]["email_language"], "de");
    assert_eq!(emails[0]["status"], "Resubmitted");
    // The sandbox's person gets it right the second time: Didit approves.
    let approved = nth_event(&app, &rid, "kyc.session.decided", "Approved", 1).await;
    assert_eq!(approved["decided_by"], "didit");
    assert_eq!(approved["previous_status"], "Resubmitted");
    assert_eq!(verification_status(&app, &rid).await["status"], "Approved");
    app.stop().await;
}

#[tokio::test]
async fn a_console_resubmission_is_announced_with_the_operator_and_emailed() {
    let app = spawn_app(AppOptions {
        complete_after: Duration::from_secs(2),
        env: vec![("KYC__HTTP__ADMIN_TOKEN".into(), ADMIN_TOKEN.into())],
        ..Default::default()
    })
    .await;
    let rid = start(
        &app,
        with_email(
            request("resubmit-console-1", "review_face_match_borderline"),
            "es",
        ),
    )
    .await;
    let held = nth_event(&app, &rid, "kyc.session.decided", "In Review", 1).await;
    let sid = held["session_id"].clone();

    let status = console_post(
        &app,
        &format!("/console/reviews/{sid}"),
        "alice",
        "resubmit",
    )
    .await;
    assert_eq!(status, 303);

    let asked = nth_event(
        &app,
        &rid,
        "kyc.session.resubmission_requested",
        "Resubmitted",
        1,
    )
    .await;
    assert_eq!(asked["decided_by"], "operator:alice");
    assert_eq!(asked["previous_status"], "In Review");
    let emails = app.sandbox_stats().await["emails"].clone();
    assert_eq!(emails[0]["email_language"], "es");
    let approved = nth_event(&app, &rid, "kyc.session.decided", "Approved", 1).await;
    assert_eq!(approved["previous_status"], "Resubmitted");
    app.stop().await;
}

#[tokio::test]
async fn a_blocklist_rule_acts_on_a_session_didit_declined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules_file(
        &dir,
        r#"
version = "t-blocklist"

[[rules]]
name = "aml_blocklist"
when = "aml.hits > 0"
action = "blocklist"
blocklist = { face = true, document = true }
comment = "sanctions hit"
on = ["Declined"]
"#,
    );
    let app = spawn_app(AppOptions {
        env: vec![rules],
        ..Default::default()
    })
    .await;
    let rid = start(&app, request("blocklist-aml-1", "decline_aml_hit")).await;

    let declined = nth_event(&app, &rid, "kyc.session.decided", "Declined", 1).await;
    assert_eq!(declined["decided_by"], "rule:aml_blocklist");
    let requests = app.sandbox_stats().await["requests"].clone();
    assert_eq!(requests["blocklist_add"], 1, "{requests}");
    assert!(
        requests.get("update_status").is_none(),
        "Didit declined it already: no update-status: {requests}"
    );
    // The person's next session is declined by Didit's blocklist.
    let again = start(&app, request("blocklist-aml-1", "approve")).await;
    let next = nth_event(&app, &again, "kyc.session.decided", "Declined", 1).await;
    assert_ne!(next["session_id"], declined["session_id"]);
    app.stop().await;
}

// The CLI runs as a child process while this runtime serves the sandbox it calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_keeps_a_settled_outcome_and_a_cancelled_review_leaves_the_queue_quietly() {
    let app = spawn_app(AppOptions {
        env: vec![("KYC__HTTP__ADMIN_TOKEN".into(), ADMIN_TOKEN.into())],
        ..Default::default()
    })
    .await;
    // A decided verification is not rewritten.
    let declined = start(&app, request("cancel-settled-1", "decline_face_mismatch")).await;
    nth_event(&app, &declined, "kyc.session.decided", "Declined", 1).await;
    let out = app.cli(&["cancel", &declined]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already Declined"),
        "{}",
        text(&out.stderr)
    );
    assert!(events_of(&app, &declined, "kyc.session.failed")
        .await
        .is_empty());
    assert_eq!(
        verification_status(&app, &declined).await["status"],
        "Declined"
    );

    // An In Review one is cancelled and leaves the review queue.
    let held = start(
        &app,
        request("cancel-review-1", "review_face_match_borderline"),
    )
    .await;
    let event = nth_event(&app, &held, "kyc.session.decided", "In Review", 1).await;
    let sid = event["session_id"].clone();
    let out = app.cli(&["cancel", &held]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    nth_event(&app, &held, "kyc.session.failed", "failed", 1).await;
    let mut c = app.redis.connection().await;
    let listed: u64 = c.zcard("kyc:reviews").await.expect("zcard");
    assert_eq!(listed, 0);

    // The console refuses to act on it (not "Redis is unreachable") ...
    let status = console_post(&app, &format!("/console/reviews/{sid}"), "bob", "approve").await;
    assert_eq!(status, 409);
    // ... and Didit's webhook for a later change is accepted, not sent back for a retry.
    let count = |text: &str, result: &str| -> u64 {
        let series = format!("kyc_webhooks_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let accepted = count(&app.metrics().await, "accepted");
    app.sandbox_control(json!({"action": "set_status", "session_id": sid, "status": "Approved"}))
        .await;
    eventually("the webhook is accepted", DEADLINE, || async {
        let text = app.metrics().await;
        (count(&text, "accepted") > accepted).then_some(())
    })
    .await;
    assert_eq!(count(&app.metrics().await, "error"), 0);
    // Any read the webhook asked for was queued before it was answered: once the poll
    // queue holds nothing ready or in flight, nothing is on its way.
    eventually("no poll ready or in flight", DEADLINE, || async {
        let out = app.cli(&["queue", "stats", "--json"]);
        let stats: Value = serde_json::from_slice(&out.stdout).ok()?;
        (stats["poll"]["ready"] == 0 && stats["poll"]["in_flight"] == 0).then_some(())
    })
    .await;
    assert!(
        events_of(&app, &held, "kyc.session.decided")
            .await
            .iter()
            .all(|e| e["status"] == "In Review"),
        "a cancelled request hears nothing more"
    );
    assert_eq!(verification_status(&app, &held).await["status"], "failed");
    app.stop().await;
}

#[tokio::test]
async fn a_reused_unfinished_session_is_announced_with_didits_status() {
    let app = spawn_app(AppOptions {
        complete_after: Duration::from_secs(120),
        ..Default::default()
    })
    .await;
    let first = start(&app, request("reused-1", "approve")).await;
    let created = nth_event(&app, &first, "kyc.session.created", "", 1).await;
    assert_eq!(created["status"], "Not Started");
    let sid = created["session_id"].clone();
    app.sandbox_control(
        json!({"action": "set_status", "session_id": sid, "status": "In Progress"}),
    )
    .await;

    let second = start(&app, request("reused-1", "approve")).await;
    let reused = nth_event(&app, &second, "kyc.session.created", "", 1).await;
    assert_eq!(reused["session_id"], sid);
    assert_eq!(reused["status"], "In Progress");
    app.stop().await;
}

#[tokio::test]
async fn deadlines_follow_the_workflow_version_each_session_runs() {
    let app = spawn_app(AppOptions {
        complete_after: Duration::from_secs(120),
        ..Default::default()
    })
    .await;
    let didit = reqwest::Client::new();
    let base = app.sandbox.base_url().to_string();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        didit
            .request(method, format!("{base}{}", path.trim_start_matches('/')))
            .header("x-api-key", "sandbox")
            .json(&body)
    };
    let v1: Value = call(
        reqwest::Method::POST,
        "/v3/workflows/",
        json!({"workflow_label": "Versions", "features": [{"feature": "OCR"}], "session_expiration_time": 3600}),
    )
    .send()
    .await
    .expect("create")
    .json()
    .await
    .expect("json");
    let stable: Uuid = v1["workflow_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let publish = |from: &Value, seconds: u64| {
        call(
            reqwest::Method::PATCH,
            &format!("/v3/workflows/{}/", from["uuid"].as_str().expect("uuid")),
            json!({"session_expiration_time": seconds, "status": "published"}),
        )
        .send()
    };
    let v2: Value = publish(&v1, 7200)
        .await
        .expect("v2")
        .json()
        .await
        .expect("json");
    assert_eq!(v2["version"], 2);

    let grace_ms = 3_600_000;
    let deadline_of = |rid: String| {
        let app = &app;
        async move {
            let created = nth_event(app, &rid, "kyc.session.created", "", 1).await;
            let deadline: u64 = session_field(app, &created["session_id"], "deadline_ms")
                .await
                .expect("deadline")
                .parse()
                .expect("ms");
            let created_at: u64 = session_field(app, &created["session_id"], "created_at_ms")
                .await
                .expect("created")
                .parse()
                .expect("ms");
            deadline.saturating_sub(created_at).saturating_sub(grace_ms)
        }
    };
    let on_stable = |vendor: &str| StartRequest {
        vendor_data: vendor.into(),
        workflow_id: Some(stable),
        ..Default::default()
    };
    let window = start(&app, on_stable("version-a")).await;
    let window = deadline_of(window).await;
    assert!((7_190_000..=7_210_000).contains(&window), "{window} ms");

    // Republished with a longer window: the next session runs version 3 and gets it.
    publish(&v2, 10_800).await.expect("v3");
    let window = start(&app, on_stable("version-b")).await;
    let window = deadline_of(window).await;
    assert!((10_790_000..=10_810_000).contains(&window), "{window} ms");
    // Known versions are not read again.
    let window = start(&app, on_stable("version-c")).await;
    let window = deadline_of(window).await;
    assert!((10_790_000..=10_810_000).contains(&window), "{window} ms");
    let requests = app.sandbox_stats().await["requests"].clone();
    assert_eq!(requests["workflow_list"], 2, "{requests}");
    app.stop().await;
}

// The CLI runs as a child process while this runtime serves the sandbox it calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_didit_cli_saves_the_webhook_secret_and_lists_what_the_account_holds() {
    let app = spawn_app(AppOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("didit.env");
    std::fs::write(&env_file, "KYC__DIDIT__API_KEY=kept\n").expect("env file");
    let env_path = env_file.display().to_string();

    let out = app.cli(&[
        "didit",
        "webhook",
        "--url",
        "https://hooks.example.org/didit",
        "--env-file",
        &env_path,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&env_path),
        "{}",
        text(&out.stdout)
    );
    let saved = std::fs::read_to_string(&env_file).expect("saved");
    assert!(saved.contains("KYC__DIDIT__API_KEY=kept"), "{saved}");
    let secret = saved
        .lines()
        .find_map(|l| l.strip_prefix("KYC__DIDIT__WEBHOOK_SECRET="))
        .expect("the secret is saved");
    assert_eq!(secret.len(), 43);
    assert!(!text(&out.stdout).contains(secret));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&env_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let out = app.cli(&[
        "didit",
        "--json",
        "webhook",
        "--url",
        "https://hooks2.example.org/didit",
        "--env-file",
        &env_path,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json");
    let second = shown["secret_shared_key"]
        .as_str()
        .expect("secret in --json");
    let saved = std::fs::read_to_string(&env_file).expect("saved");
    assert!(saved.contains(&format!("KYC__DIDIT__WEBHOOK_SECRET={second}")));
    assert_eq!(saved.matches("KYC__DIDIT__WEBHOOK_SECRET=").count(), 1);

    let out = app.cli(&["didit", "webhooks", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(
        listed.contains("https://hooks2.example.org/didit"),
        "{listed}"
    );
    assert!(!listed.contains(second));

    let out = app.cli(&["didit", "--json", "workflows", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let workflows: Value = serde_json::from_slice(&out.stdout).expect("json");
    let uuid = workflows["results"][0]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    let out = app.cli(&["didit", "workflows", "show", &uuid]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("expires after"),
        "{}",
        text(&out.stdout)
    );

    let out = app.cli(&[
        "didit",
        "full",
        "--vendor-data",
        "cli-full-1",
        "--scenario",
        "approve",
        "--callback",
        "https://shop.example.org/done",
        "--interval",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Approved"),
        "{}",
        text(&out.stdout)
    );
    let out = app.cli(&[
        "didit",
        "--json",
        "sessions",
        "list",
        "--vendor-data",
        "cli-full-1",
        "--status",
        "Approved",
        "--limit",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sessions: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(sessions["count"], 1, "{sessions}");
    let sid = sessions["results"][0]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let out = app.cli(&["didit", "--json", "decision", &sid]);
    let decision: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(decision["callback"], "https://shop.example.org/done");
    app.stop().await;
}

// The CLI runs as a child process while this runtime serves the sandbox it calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_refresh_reads_a_change_no_webhook_announced() {
    // Didit's webhooks are lost; the safety-net poll is 20 s away.
    let app = spawn_app(AppOptions {
        drop_webhooks: true,
        ..Default::default()
    })
    .await;
    let rid = start(&app, request("refresh-1", "approve")).await;
    let created = nth_event(&app, &rid, "kyc.session.created", "", 1).await;
    let sid = created["session_id"].clone();
    let didit = didit::DiditClient::new(&app.settings().didit.client_config()).expect("client");
    eventually("Didit approves", DEADLINE, || async {
        let d = didit.decision(sid.parse().expect("uuid")).await.ok()?;
        (d.status == didit::SessionStatus::Approved).then_some(())
    })
    .await;

    let out = app.cli(&["session", "refresh", &rid]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let approved = eventually(
        "the refreshed decision",
        Duration::from_secs(10),
        || async { events_of(&app, &rid, "kyc.session.decided").await.pop() },
    )
    .await;
    assert_eq!(approved["status"], "Approved");
    let out = app.cli(&["session", "refresh", "no-such-request"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no request"),
        "{}",
        text(&out.stderr)
    );
    app.stop().await;
}
