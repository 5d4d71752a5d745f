//! What operators watch: `/metrics`, liveness and readiness.

use crate::helpers::{eventually, free_port, spawn_app, AppOptions, DEADLINE};
use kyc_worker::domain::StartRequest;
use std::time::Duration;

async fn scrape(url: &str) -> String {
    reqwest::get(url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text")
}

fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_the_flow_with_series_present_from_the_start_and_no_personal_data() {
    // Arrange: metrics on their own internal port.
    let internal = free_port();
    let app = spawn_app(AppOptions {
        env: vec![("KYC__HTTP__INTERNAL_PORT".into(), internal.to_string())],
        ..Default::default()
    })
    .await;
    let metrics_url = format!("http://127.0.0.1:{internal}/metrics");
    let before = scrape(&metrics_url).await;
    for series in [
        r#"kyc_jobs_total{outcome="dead",queue="poll"}"#,
        r#"kyc_decisions_total{decider="rule",status="Declined"}"#,
        r#"kyc_webhooks_total{result="bad_signature"}"#,
        r#"kyc_didit_paused{reason="invalid_key"}"#,
        r#"kyc_queue_depth{queue="start",state="ready"}"#,
        "kyc_sessions_created_total",
        "kyc_worker_up",
    ] {
        assert!(
            value(&before, series).is_some(),
            "{series} missing before any event:\n{before}"
        );
    }
    let public = reqwest::get(app.url("/metrics")).await.expect("get");
    assert_eq!(
        public.status(),
        404,
        "/metrics stays off the public port when an internal one is set"
    );

    // Act
    let producer = app.producer().await;
    producer
        .start_kyc(StartRequest {
            vendor_data: "person-secret-vendor-data".into(),
            sandbox_scenario: Some("approve".into()),
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let decided = app.wait_events("kyc.session.decided", 1).await;

    // Assert
    let after = eventually("the decision is counted", DEADLINE, || async {
        let s = scrape(&metrics_url).await;
        (value(
            &s,
            r#"kyc_decisions_total{decider="didit",status="Approved"}"#,
        ) == Some(1.0))
        .then_some(s)
    })
    .await;
    assert_eq!(value(&after, "kyc_sessions_created_total"), Some(1.0));
    assert!(value(&after, r#"kyc_webhooks_total{result="accepted"}"#).unwrap_or(0.0) >= 1.0);
    assert!(value(&after, r#"kyc_jobs_total{outcome="done",queue="start"}"#).unwrap_or(0.0) >= 1.0);
    assert!(
        value(
            &after,
            r#"kyc_didit_requests_total{endpoint="session_create",status_class="2xx"}"#
        ) == Some(1.0)
    );
    assert!(
        value(
            &after,
            r#"kyc_events_published_total{type="kyc.session.decided"}"#
        ) == Some(1.0)
    );
    assert!(value(&after, "kyc_time_to_decision_seconds_count") == Some(1.0));
    assert!(!after.contains("person-secret-vendor-data"));
    assert!(
        !after.contains(&decided[0]["session_id"]),
        "a session id in a metric"
    );
    assert!(
        !after.contains(&decided[0]["request_id"]),
        "a request id in a metric"
    );
    app.stop().await;
}

#[tokio::test]
async fn readiness_follows_redis_and_liveness_follows_the_workers() {
    let mut app = spawn_app(AppOptions::default()).await;
    assert_eq!(
        reqwest::get(app.url("/readyz"))
            .await
            .expect("get")
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(app.url("/healthz"))
            .await
            .expect("get")
            .status(),
        200
    );

    app.redis.kill();
    eventually("readiness red while Redis is down", DEADLINE, || async {
        let status = reqwest::get(app.url("/readyz")).await.ok()?.status();
        (status == 503).then_some(())
    })
    .await;
    assert_eq!(
        reqwest::get(app.url("/healthz"))
            .await
            .expect("get")
            .status(),
        200,
        "a Redis outage is not a reason to restart the pod"
    );

    app.redis.restart().await;
    eventually("readiness green again", DEADLINE, || async {
        let status = reqwest::get(app.url("/readyz")).await.ok()?.status();
        (status == 200).then_some(())
    })
    .await;
    app.stop().await;
}

/// `kyc_events_consumer_lag{group}` as this scrape shows it.
fn consumer_lag(scrape: &str, group: &str) -> Option<f64> {
    value(
        scrape,
        &format!("kyc_events_consumer_lag{{group=\"{group}\"}}"),
    )
}

#[tokio::test]
async fn the_consumer_lag_counts_unread_events_after_an_erasure_deleted_some() {
    // Arrange: a consumer group that reads nothing, then four people's events, then the
    // erasure of one of them (which deletes their events from the stream).
    let app = spawn_app(AppOptions::default()).await;
    let mut c = app.redis.connection().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("kyc:events")
        .arg("billing")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .expect("create the group");
    let producer = app.producer().await;
    for person in ["lag-a", "lag-b", "lag-c", "lag-erased"] {
        producer
            .start_kyc(StartRequest {
                vendor_data: person.into(),
                sandbox_scenario: Some("approve".into()),
                ..Default::default()
            })
            .await
            .expect("enqueue");
    }
    app.wait_events("kyc.session.decided", 4).await;
    let erase = app.cli(&["erase", "--vendor-data", "lag-erased"]);
    assert!(
        erase.status.success(),
        "{}",
        String::from_utf8_lossy(&erase.stderr)
    );
    app.wait_events("kyc.subject.erased", 1).await;
    let unread: u64 = redis::cmd("XLEN")
        .arg("kyc:events")
        .query_async(&mut c)
        .await
        .expect("xlen");
    let redis_says = |c: redis::aio::MultiplexedConnection| async move {
        let mut c = c;
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("kyc:events")
            .query_async(&mut c)
            .await
            .expect("xinfo groups");
        groups[0]["lag"].clone()
    };
    assert_eq!(
        redis_says(c.clone()).await,
        redis::Value::Nil,
        "Redis knows the lag: this test would not show the count"
    );
    assert!(
        unread >= 7,
        "created and decided events of three people: {unread}"
    );

    // Act: the gauge after the next samples; then the group reads two entries.
    let before_reading = eventually("the lag of every unread event", DEADLINE, || async {
        let lag = consumer_lag(&scrape(&app.url("/metrics")).await, "billing")?;
        (lag == unread as f64).then_some(lag)
    })
    .await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("billing")
        .arg("reader-1")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg("kyc:events")
        .arg(">")
        .query_async(&mut c)
        .await
        .expect("xreadgroup");
    let after_reading = eventually("the lag after two reads", DEADLINE, || async {
        let lag = consumer_lag(&scrape(&app.url("/metrics")).await, "billing")?;
        (lag == (unread - 2) as f64).then_some(lag)
    })
    .await;

    // Assert
    assert_eq!(before_reading, unread as f64);
    assert_eq!(after_reading, (unread - 2) as f64);
    assert_eq!(redis_says(c.clone()).await, redis::Value::Nil);
    app.stop().await;
}

/// The log file of a `kyc-worker run` child, without waiting.
fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of `key=` on a log line (pretty format: `key=value`, space-separated; a quoted
/// value is returned without its quotes).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.split('"').next();
    }
    rest.split(' ').next()
}

#[tokio::test]
async fn the_logs_name_where_the_process_listens_without_colours_or_false_alarms() {
    // Arrange: a `kyc-worker run` child whose stderr is a file, metrics and console on an
    // internal port, dead consumers looked for every half second.
    let app = spawn_app(AppOptions {
        in_process: false,
        ..Default::default()
    })
    .await;
    let internal = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("run.log");
    let _worker = app.spawn_worker(
        &[
            ("KYC__HTTP__INTERNAL_PORT", internal.to_string()),
            ("KYC__LOG__LEVEL", "info".to_owned()),
            ("KYC__QUEUE__RECLAIM_AFTER", "1s".to_owned()),
        ],
        Some(&log),
    );
    let start_line = eventually("the start line", DEADLINE, || async {
        read_log(&log)
            .lines()
            .find(|l| l.contains("kyc-worker running"))
            .map(str::to_owned)
    })
    .await;
    app.producer()
        .await
        .start_kyc(StartRequest {
            vendor_data: "log-reader-1".into(),
            sandbox_scenario: Some("approve".into()),
            ..Default::default()
        })
        .await
        .expect("enqueue");
    app.wait_events("kyc.session.decided", 1).await;

    // Act: a consumer of a process that died after its last job; once maintenance removed
    // it, the process's own consumers (idle since the job, longer) were looked at too.
    let mut c = app.redis.connection().await;
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg("kyc:queue:start:ready")
        .arg("workers")
        .arg("gone-host-zz99zz-start")
        .query_async(&mut c)
        .await
        .expect("a dead process's consumer");
    let text = eventually("the dead consumer removed", DEADLINE, || async {
        let text = read_log(&log);
        text.contains("gone-host-zz99zz-start").then_some(text)
    })
    .await;
    let metrics = scrape(&format!("http://127.0.0.1:{internal}/metrics")).await;

    // Assert
    let consumer = field(&start_line, "consumer").expect("consumer on the start line");
    assert_eq!(
        field(&start_line, "public_port"),
        Some(app.port.to_string().as_str())
    );
    assert_eq!(
        field(&start_line, "internal_port"),
        Some(internal.to_string().as_str())
    );
    assert_eq!(
        field(&start_line, "console"),
        Some(format!("http://127.0.0.1:{internal}/console/").as_str()),
        "{start_line}"
    );
    assert!(
        field(&start_line, "webhooks").is_some_and(|w| w.starts_with("on:")),
        "{start_line}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{text}"
    );
    let removed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("removed a dead consumer"))
        .collect();
    assert!(
        removed.iter().all(|l| !l.contains(consumer)),
        "the process removed its own consumer: {removed:#?}"
    );
    assert!(
        value(&metrics, "kyc_webhook_last_received_timestamp_seconds").is_some_and(|t| t > 0.0),
        "a webhook arrived"
    );
    assert!(!text.contains("no Didit webhook"), "{text}");
}

#[tokio::test]
async fn webhooks_expected_but_never_arriving_are_warned_about_and_exported() {
    // Arrange: the fleet expects webhooks, the sandbox sends none (no --webhook-url), and
    // the first safety-net poll comes after 3 s.
    let app = spawn_app(AppOptions {
        in_process: false,
        drop_webhooks: true,
        env: vec![("KYC__POLL__WEBHOOK_INITIAL".into(), "3s".into())],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("run.log");
    let _worker = app.spawn_worker(&[("KYC__LOG__LEVEL", "info".to_owned())], Some(&log));
    eventually("the process answers", DEADLINE, || async {
        reqwest::get(app.url("/healthz")).await.ok()
    })
    .await;
    let before = scrape(&app.url("/metrics")).await;

    // Act
    app.producer()
        .await
        .start_kyc(StartRequest {
            vendor_data: "no-webhook-1".into(),
            sandbox_scenario: Some("approve".into()),
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let warning = eventually("the warning", Duration::from_secs(30), || async {
        read_log(&log)
            .lines()
            .find(|l| l.contains("WARN") && l.contains("no Didit webhook"))
            .map(str::to_owned)
    })
    .await;
    app.wait_events("kyc.session.decided", 1).await;
    let after = scrape(&app.url("/metrics")).await;

    // Assert
    assert_eq!(value(&before, "kyc_webhooks_expected"), Some(1.0));
    assert_eq!(
        value(&before, "kyc_webhook_last_received_timestamp_seconds"),
        Some(0.0)
    );
    assert_eq!(
        value(&after, "kyc_webhook_last_received_timestamp_seconds"),
        Some(0.0)
    );
    assert!(warning.contains("safety-net poll"), "{warning}");
    assert!(warning.contains("KYC__DIDIT__WEBHOOKS=false"), "{warning}");
    assert_eq!(
        read_log(&log).matches("no Didit webhook").count(),
        1,
        "warned once"
    );
}

#[tokio::test]
async fn a_job_that_retries_logs_one_warning_per_attempt_with_ids_and_no_personal_data() {
    // Arrange: a `kyc-worker run` child whose Didit is a proxy answering session creation
    // with a 200 that is not a session (it echoes the person's name and e-mail where numbers
    // belong): a malformed answer, retried; three attempts, so two retries, then dead.
    let app = spawn_app(AppOptions {
        in_process: false,
        ..Default::default()
    })
    .await;
    let proxy = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/v3/session/"))
        .respond_with(
            wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "session_number": "Ada Retrylace",
                "url": "ada.retrylace@example.com",
            })),
        )
        .mount(&proxy)
        .await;
    // The retry first looks for a session the lost answer may have created: none.
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/v3/sessions/"))
        .respond_with(
            wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "count": 0, "next": null, "previous": null, "results": [],
            })),
        )
        .mount(&proxy)
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("run.log");
    let _worker = app.spawn_worker(
        &[
            ("KYC__HTTP__PORT", free_port().to_string()),
            ("KYC__LOG__LEVEL", "info".to_owned()),
            ("KYC__DIDIT__BASE_URL", format!("{}/", proxy.uri())),
            ("KYC__QUEUE__MAX_ATTEMPTS", "3".to_owned()),
            ("KYC__QUEUE__RETRY_MIN", "100ms".to_owned()),
            ("KYC__QUEUE__RETRY_MAX", "200ms".to_owned()),
        ],
        Some(&log),
    );

    // Act
    app.producer()
        .await
        .start_kyc(StartRequest {
            vendor_data: "retry-person-7731".into(),
            contact_details: Some(kyc_worker::domain::ContactDetails {
                email: Some("ada.retrylace@example.com".into()),
                ..Default::default()
            }),
            expected_details: Some(kyc_worker::domain::ExpectedDetails {
                first_name: Some("Ada".into()),
                last_name: Some("Retrylace".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let settings = app.settings();
    let queue = kyc_worker::queue::Queue::connect(
        &app.redis.url(),
        &settings.redis.prefix,
        settings.queue.clone(),
    )
    .await
    .expect("queue");
    let dead = eventually("the start job dead after 3 attempts", DEADLINE, || async {
        queue
            .dead_list("start", 10)
            .await
            .ok()
            .and_then(|d| d.into_iter().next())
    })
    .await;
    let text = read_log(&log);

    // Assert: one warning per retry (attempts 1 and 2; the third attempt dead-letters),
    // naming the queue, the job, the attempt and why, and nothing of the person.
    let retries: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("job failed; retrying"))
        .collect();
    assert_eq!(retries.len(), 2, "{text}");
    for (line, attempt) in retries.iter().zip(["1", "2"]) {
        assert!(line.contains("WARN"), "{line}");
        assert_eq!(field(line, "queue"), Some("start"), "{line}");
        assert_eq!(field(line, "job"), Some(dead.job_id.as_str()), "{line}");
        assert_eq!(field(line, "attempt"), Some(attempt), "{line}");
        let reason = line.split(" reason=").nth(1).unwrap_or_default();
        assert!(
            reason.starts_with("Didit session_create: unexpected response body"),
            "{line}"
        );
    }
    assert_eq!(dead.attempts, 3);
    for personal in ["retry-person-7731", "Ada", "Retrylace", "example.com"] {
        assert!(!text.contains(personal), "{personal} in the logs:\n{text}");
    }
}
