//! `kyc-worker rules check|explain`: what an operator sees before deploying a rules file.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use crate::helpers::kyc_worker_binary;

fn kyc_worker(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(kyc_worker_binary());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("KYC__RULES__FILE")
        .env("KYC_ENV", "ci-none");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run kyc-worker")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo_file(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

const BROKEN: &str = r#"
version = "t"

[[rules]]
name = "fine"
when = "age < 18"
action = "decline"

[[rules]]
name = "typo_in_field"
when = "scores.face_matc >= 90.0"
action = "approve"
"#;

#[test]
fn check_accepts_the_default_pack() {
    for args in [vec!["rules", "check"], vec!["rules", "check", "--fields"]] {
        let out = kyc_worker(&args, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.starts_with("ok: the embedded default pack"),
            "{stdout}"
        );
    }
    let file = repo_file("config/rules.toml");
    let out = kyc_worker(&["rules", "check", &file], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("6 rules in the default list"));
}

#[test]
fn check_counts_one_rule_as_one_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        "version = \"one\"\n\n[[rules]]\nname = \"only\"\nwhen = \"age >= 18\"\naction = \"approve\"\n\n\
         [[workflows.kyb.rules]]\nname = \"also_one\"\nwhen = \"age >= 21\"\naction = \"review\"\n",
    )
    .expect("write");

    let out = kyc_worker(&["rules", "check", &path.display().to_string()], &[]);

    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("version \"one\", 1 rule in the default list"),
        "{stdout}"
    );
    assert!(stdout.contains("kyb (1 rule)"), "{stdout}");
    assert!(!stdout.contains("1 rules"), "{stdout}");
}

#[test]
fn check_rejects_a_broken_file_by_the_rule_name_with_exit_code_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, BROKEN).expect("write");
    let path = path.display().to_string();

    let out = kyc_worker(&["rules", "check", &path], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rule \"typo_in_field\": unknown field \"scores.face_matc\""),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // The same file named by the settings fails the same way.
    let out = kyc_worker(&["rules", "check"], &[("KYC__RULES__FILE", &path)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("typo_in_field"));

    let out = kyc_worker(&["rules", "check", "/nonexistent/rules.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read rules file"));
}

#[test]
fn explain_prints_every_rule_the_values_it_read_and_the_outcome() {
    let decision = repo_file("tests/fixtures/decision-in-review.json");
    let out = kyc_worker(
        &[
            "rules",
            "explain",
            "--decision",
            &decision,
            "--now",
            "2026-03-01T12:00:00Z",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for expected in [
        "version \"2026-03-01.1\"",
        "Didit status In Review",
        "no     under_18: condition is false",
        "read: age = 46",
        "MATCH  aml_hit -> review",
        "read: aml.hits = 1, aml.max_score = 98.0",
        "no     strong_biometrics_approve: condition is false",
        "scores.face_match = 65.43",
        "outcome: review by rule aml_hit",
    ] {
        assert!(stdout.contains(expected), "lacks {expected:?}:\n{stdout}");
    }
    for rule in [
        "under_18",
        "document_expired",
        "sanctioned_issuing_country",
        "aml_hit",
        "strong_biometrics_approve",
        "ip_country_differs",
    ] {
        assert!(stdout.contains(rule), "lacks {rule}:\n{stdout}");
    }
    // No personal data of the decision is printed.
    assert!(!stdout.contains("1980-01-01"), "{stdout}");
}

#[test]
fn explain_json_is_the_evaluation_the_outcome_event_carries() {
    let decision = repo_file("tests/fixtures/decision-in-review.json");
    let rules = repo_file("config/rules.toml");
    let out = kyc_worker(
        &[
            "rules",
            "explain",
            "--decision",
            &decision,
            "--rules",
            &rules,
            "--now",
            "2026-03-01T12:00:00Z",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(value["version"], "2026-03-01.1");
    assert_eq!(value["outcome"]["decided_by_rule"], "aml_hit");
    assert_eq!(value["outcome"]["action"]["type"], "review");
    assert_eq!(value["matches"][0]["values_read"]["aml.hits"], 1);
}

#[test]
fn explain_refuses_a_broken_rules_file_or_decision_with_exit_code_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, BROKEN).expect("write");
    let decision = repo_file("tests/fixtures/decision-in-review.json");
    let out = kyc_worker(
        &[
            "rules",
            "explain",
            "--decision",
            &decision,
            "--rules",
            &rules.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("typo_in_field"));

    let not_json = dir.path().join("decision.json");
    std::fs::write(&not_json, "{").expect("write");
    let out = kyc_worker(
        &[
            "rules",
            "explain",
            "--decision",
            &not_json.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--decision"));
}

/// End to end with the sandbox: the default pack overturns Didit where it should.
mod pipeline {
    use didit::DiditClient;
    use kyc_worker::domain::StartRequest;

    use crate::helpers::{spawn_app, AppOptions};

    async fn run(
        scenario: &str,
    ) -> (
        crate::helpers::TestApp,
        std::collections::HashMap<String, String>,
    ) {
        let app = spawn_app(AppOptions {
            rules: true,
            ..Default::default()
        })
        .await;
        let producer = app.producer().await;
        producer
            .start_kyc(StartRequest {
                vendor_data: format!("u-{scenario}"),
                sandbox_scenario: Some(scenario.into()),
                ..Default::default()
            })
            .await
            .expect("enqueue");
        let decided = app.wait_events("kyc.session.decided", 1).await;
        (app, decided[0].clone())
    }

    #[tokio::test]
    async fn a_review_with_strong_scores_ends_approved_by_a_rule_with_its_comment_at_didit() {
        let (app, event) = run("review_high_scores_warning").await;
        assert_eq!(event["status"], "Approved", "{event:?}");
        assert_eq!(event["decided_by"], "rule:strong_biometrics_approve");
        let data: serde_json::Value = serde_json::from_str(&event["data"]).expect("data");
        assert!(data["rules"]["version"].is_string(), "{data}");
        assert!(
            data["rules"]["matched"]
                .as_array()
                .is_some_and(|m| !m.is_empty()),
            "{data}"
        );

        // Didit holds the rule's status and comment; the echo did not produce a second event.
        let client = DiditClient::new(&app.settings().didit.client_config()).expect("client");
        let decision = client
            .decision(event["session_id"].parse().expect("uuid"))
            .await
            .expect("decision");
        assert_eq!(decision.status, kyc_worker::domain::SessionStatus::Approved);
        let review = decision
            .reviews
            .iter()
            .flatten()
            .last()
            .expect("a review entry");
        assert!(
            review
                .comment
                .as_deref()
                .is_some_and(|c| c.starts_with("rule:strong_biometrics_approve")),
            "{review:?}"
        );
        let queue = kyc_worker::queue::Queue::connect(&app.redis.url(), "kyc", Default::default())
            .await
            .expect("queue");
        crate::helpers::eventually("the echo was read", crate::helpers::DEADLINE, || async {
            let s = queue.stats("poll").await.expect("stats");
            (s.ready + s.in_flight + s.scheduled == 0).then_some(())
        })
        .await;
        let decided = app
            .events()
            .await
            .into_iter()
            .filter(|e| e["type"] == "kyc.session.decided")
            .count();
        assert_eq!(decided, 1);
        app.stop().await;
    }

    #[tokio::test]
    async fn an_underage_person_approved_by_didit_is_declined_by_the_under_18_rule() {
        let (app, event) = run("approve_underage").await;
        assert_eq!(event["status"], "Declined", "{event:?}");
        assert_eq!(event["decided_by"], "rule:under_18");
        app.stop().await;
    }
}
