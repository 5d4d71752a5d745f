//! What operators watch: `/metrics`, liveness and readiness.

use crate::helpers::{eventually, free_port, spawn_app, AppOptions, DEADLINE};
use kyc_worker::domain::StartRequest;

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
