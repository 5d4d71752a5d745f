//! Table-driven tests over decision fixtures shaped like Didit's (reference §3.4) and the
//! sandbox's scenarios.

use serde_json::{json, Value};
use time::{macros::datetime, OffsetDateTime};

use super::*;
use didit_sandbox::scenarios::{self, Scenario, Subject};

const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

fn default_pack() -> RuleSet {
    RuleSet::parse(DEFAULT_RULES).expect("the default pack is valid")
}

/// A clean adult Spanish decision in `status`; `patch` replaces whole top-level sections.
fn decision(status: &str, patch: Value) -> Decision {
    let mut base = json!({
        "session_id": "11111111-2222-3333-4444-555555555555",
        "status": status,
        "features": ["ID_VERIFICATION", "LIVENESS", "FACE_MATCH", "AML", "IP_ANALYSIS"],
        "metadata": {"user_type": "premium", "account_id": "ABC123"},
        "id_verifications": [{
            "node_id": "feature_ocr_1", "status": "Approved", "document_type": "Identity Card",
            "date_of_birth": "1980-01-01", "age": 46, "expiration_date": "2031-06-02",
            "issuing_state": "ESP", "issuing_state_name": "Spain", "nationality": "ESP",
            "warnings": [{"feature": "ID_VERIFICATION", "risk": "QR_NOT_DETECTED",
                          "log_type": "information", "node_id": "feature_ocr_1"}]
        }],
        "liveness_checks": [{"node_id": "feature_liveness_1", "status": "Approved", "score": 96.2, "warnings": []}],
        "face_matches": [{"node_id": "feature_face_match_1", "status": "Approved", "score": 95.1, "warnings": []}],
        "aml_screenings": [{"node_id": "feature_aml_1", "status": "Approved", "total_hits": 0, "hits": [],
                            "score": 0, "warnings": []}],
        "ip_analyses": [{"node_id": "feature_ip_1", "status": "Approved", "ip_country": "Spain",
                         "ip_country_code": "ES", "is_vpn_or_tor": false, "warnings": []}],
    });
    for (key, value) in patch.as_object().into_iter().flatten() {
        base[key] = value.clone();
    }
    serde_json::from_value(base).expect("decision fixture")
}

fn id_item(fields: Value) -> Value {
    let mut item = json!({
        "node_id": "feature_ocr_1", "status": "Approved", "document_type": "Identity Card",
        "date_of_birth": "1980-01-01", "expiration_date": "2031-06-02",
        "issuing_state": "ESP", "nationality": "ESP", "warnings": []
    });
    for (key, value) in fields.as_object().into_iter().flatten() {
        item[key] = value.clone();
    }
    json!([item])
}

fn sandbox_decision(scenario: Scenario) -> Decision {
    let outcome = scenarios::outcome(
        scenario,
        &Subject {
            session_id: uuid::Uuid::nil(),
            today: NOW.date(),
            blocklisted: false,
        },
    );
    let mut value = json!({
        "session_id": uuid::Uuid::nil(),
        "status": outcome.status.as_str(),
    });
    for (key, section) in outcome.sections {
        value[key] = section;
    }
    serde_json::from_value(value).expect("sandbox decision")
}

/// A case: its name, the decision, the deciding rule, its action, the comment.
type Case = (
    &'static str,
    Decision,
    Option<&'static str>,
    Option<Action>,
    &'static str,
);

/// `(name, action lines)` of each rule of a file.
type Actions<'a> = &'a [(&'a str, &'a str)];

fn decided_by(e: &Evaluation) -> Option<&str> {
    e.outcome.decided_by_rule.as_deref()
}

#[test]
fn each_default_rule_decides_its_case() {
    let pack = default_pack();
    let cases: Vec<Case> = vec![
        (
            "clean approval stands",
            decision("Approved", json!({})),
            None,
            None,
            "",
        ),
        (
            "under 18",
            decision(
                "Approved",
                json!({"id_verifications": id_item(json!({"date_of_birth": "2009-03-02"}))}),
            ),
            Some("under_18"),
            Some(Action::Decline),
            "under 18 (16)",
        ),
        (
            "18 today is not under 18",
            decision(
                "Approved",
                json!({"id_verifications": id_item(json!({"date_of_birth": "2008-03-01"}))}),
            ),
            None,
            None,
            "",
        ),
        (
            "expired document",
            decision(
                "Approved",
                json!({"id_verifications": id_item(json!({"expiration_date": "2026-02-28"}))}),
            ),
            Some("document_expired"),
            Some(Action::Decline),
            "document expired on 2026-02-28",
        ),
        (
            "sanctioned issuing country, spelled as a name",
            decision(
                "Approved",
                json!({
                    "id_verifications": id_item(json!({"issuing_state": null, "issuing_state_name": "Iran, Islamic Republic of"})),
                    "ip_analyses": [{"ip_country_code": "IR"}],
                }),
            ),
            Some("sanctioned_issuing_country"),
            Some(Action::Decline),
            "document issued by a sanctioned country (IRN)",
        ),
        (
            "AML hit",
            decision(
                "Approved",
                json!({"aml_screenings": [{"total_hits": 1, "score": 98,
                "hits": [{"match_score": 98, "score": 0.73, "datasets": ["PEP"]}]}]}),
            ),
            Some("aml_hit"),
            Some(Action::Review),
            "AML screening found 1 possible match(es), highest score 98.0",
        ),
        (
            "In Review with strong biometrics and only warnings",
            decision(
                "In Review",
                json!({"id_verifications": id_item(json!({"warnings": [
                {"feature": "ID_VERIFICATION", "risk": "POSSIBLE_DUPLICATED_USER", "log_type": "warning"}]}))}),
            ),
            Some("strong_biometrics_approve"),
            Some(Action::Approve),
            "face match 95.1 and liveness 96.2, no error-level warning",
        ),
        (
            "IP country differs from the document's",
            decision(
                "Approved",
                json!({"ip_analyses": [{"ip_country_code": "FR", "is_vpn_or_tor": false}]}),
            ),
            Some("ip_country_differs"),
            Some(Action::Review),
            "IP in FRA, document from ESP",
        ),
    ];
    for (name, d, rule, action, comment) in cases {
        let e = pack.evaluate(None, &d, NOW);
        assert_eq!(decided_by(&e), rule, "{name}: {e:#?}");
        assert_eq!(e.outcome.action, action, "{name}");
        assert_eq!(
            e.outcome.comment.as_deref().unwrap_or(""),
            comment,
            "{name}"
        );
        assert_eq!(e.version, "2026-03-01.1");
    }
}

#[test]
fn strong_biometrics_do_not_approve_with_an_error_warning_or_a_low_score() {
    let pack = default_pack();
    for (name, patch) in [
        (
            "error warning",
            json!({"id_verifications": id_item(json!({"warnings": [
                {"feature": "ID_VERIFICATION", "risk": "DATA_INCONSISTENT", "log_type": "error"}]}))}),
        ),
        (
            "face match 89.9",
            json!({"face_matches": [{"score": 89.9}]}),
        ),
        ("no liveness", json!({"liveness_checks": null})),
    ] {
        let e = pack.evaluate(None, &decision("In Review", patch), NOW);
        assert_eq!(decided_by(&e), None, "{name}: {e:#?}");
        assert_eq!(
            e.outcome.status(&SessionStatus::InReview),
            SessionStatus::InReview
        );
    }
}

#[test]
fn the_strongest_action_wins_and_every_match_is_recorded() {
    // Under 18 (decline), AML hit (review), different IP country (review), strong scores in
    // review (approve): decline wins, all four are recorded in file order.
    let d = decision(
        "In Review",
        json!({
            "id_verifications": id_item(json!({"date_of_birth": "2010-01-01"})),
            "aml_screenings": [{"total_hits": 2, "hits": [{"match_score": 70}, {"match_score": 88}]}],
            "ip_analyses": [{"ip_country": "France"}],
        }),
    );
    let e = default_pack().evaluate(None, &d, NOW);
    let matched: Vec<&str> = e.matches.iter().map(|m| m.rule.as_str()).collect();
    assert_eq!(
        matched,
        [
            "under_18",
            "aml_hit",
            "strong_biometrics_approve",
            "ip_country_differs"
        ]
    );
    assert_eq!(decided_by(&e), Some("under_18"));
    assert_eq!(e.outcome.action, Some(Action::Decline));
    assert_eq!(
        e.outcome.status(&SessionStatus::InReview),
        SessionStatus::Declined
    );
    assert_eq!(e.matches[1].values_read["aml.hits"], json!(2));
    assert_eq!(e.matches[1].values_read["aml.max_score"], json!(88.0));
}

#[test]
fn precedence_is_blocklist_decline_review_resubmit_approve_and_first_among_equals() {
    let file = |actions: Actions| {
        let mut text = String::from("version = \"t\"\n");
        for (name, action) in actions {
            text.push_str(&format!(
                "[[rules]]\nname = \"{name}\"\nwhen = \"true\"\n{action}\n"
            ));
        }
        RuleSet::parse(&text).expect("valid")
    };
    let approve = "action = \"approve\"";
    let review = "action = \"review\"";
    let decline = "action = \"decline\"";
    let resubmit = "action = \"resubmit\"\nnodes = [\"feature_ocr:OCR\"]";
    let blocklist = "action = \"blocklist\"\nblocklist = { face = true }";
    let none = "action = \"none\"";
    let cases: &[(Actions, Option<&str>)] = &[
        (&[("a", approve), ("b", resubmit)], Some("b")),
        (&[("a", resubmit), ("b", review)], Some("b")),
        (&[("a", decline), ("b", review)], Some("a")),
        (&[("a", decline), ("b", blocklist)], Some("b")),
        (&[("a", review), ("b", review)], Some("a")),
        (&[("a", none), ("b", approve)], Some("b")),
        (&[("a", none)], None),
    ];
    let d = decision("Approved", json!({}));
    for (actions, winner) in cases {
        let e = file(actions).evaluate(None, &d, NOW);
        assert_eq!(decided_by(&e), *winner, "{actions:?}");
        assert_eq!(e.matches.len(), actions.len());
    }
    let e = file(&[("r", resubmit)]).evaluate(None, &d, NOW);
    assert_eq!(
        e.outcome.action,
        Some(Action::Resubmit {
            nodes: vec![NodeToResubmit {
                node_id: "feature_ocr".into(),
                feature: "OCR".into()
            }]
        })
    );
    assert_eq!(
        e.outcome.status(&SessionStatus::Approved),
        SessionStatus::Resubmitted
    );
}

#[test]
fn a_missing_section_does_not_match_and_says_why() {
    let pack = default_pack();
    let d = decision(
        "In Review",
        json!({"face_matches": null, "aml_screenings": null, "ip_analyses": null, "id_verifications": null}),
    );
    let e = pack.evaluate(None, &d, NOW);
    assert_eq!(decided_by(&e), None, "{e:#?}");
    let reason = |rule: &str| {
        e.not_matched
            .iter()
            .find(|n| n.rule == rule)
            .map(|n| n.reason.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        reason("strong_biometrics_approve"),
        "scores.face_match is absent (no face match in this decision)"
    );
    assert_eq!(
        reason("aml_hit"),
        "aml is absent (no AML screening in this decision)"
    );
    assert_eq!(
        reason("under_18"),
        "age is absent (no date of birth in this decision)"
    );
    assert_eq!(
        reason("ip_country_differs"),
        "document is absent (no ID verification in this decision)"
    );
    let values = &e.not_matched[0].values_read;
    assert_eq!(values.get("age"), Some(&Value::Null));
}

#[test]
fn a_has_guard_lets_a_rule_handle_absence_itself() {
    let rules = RuleSet::parse(
        r#"
version = "t"
[[rules]]
name = "no_face_match"
when = "!has(scores.face_match) || scores.face_match < 50.0"
action = "review"
"#,
    )
    .expect("valid");
    let e = rules.evaluate(
        None,
        &decision("Approved", json!({"face_matches": null})),
        NOW,
    );
    assert_eq!(decided_by(&e), Some("no_face_match"));
    let e = rules.evaluate(None, &decision("Approved", json!({})), NOW);
    assert_eq!(decided_by(&e), None);
}

#[test]
fn several_items_per_feature_take_the_latest_document_and_score() {
    let d = decision(
        "In Review",
        json!({
            "id_verifications": [
                {"document_type": "Passport", "date_of_birth": "1980-01-01", "expiration_date": "2020-01-01", "issuing_state": "IRN"},
                {"document_type": "Identity Card", "date_of_birth": "1980-01-01", "expiration_date": "2031-01-01", "issuing_state": "ESP"}
            ],
            "face_matches": [{"score": 97.0}, {"score": 91.0}, {"score": 99.0}],
            "liveness_checks": [{"score": 99.0}, {"score": 80.0}],
        }),
    );
    let e = default_pack().evaluate(None, &d, NOW);
    // The resubmitted document is valid and Spanish; the latest liveness, 80, blocks
    // approval although an earlier attempt scored 99.
    assert_eq!(decided_by(&e), None, "{e:#?}");
    let strong = e
        .not_matched
        .iter()
        .find(|n| n.rule == "strong_biometrics_approve")
        .expect("recorded");
    assert_eq!(strong.values_read["scores.face_match"], json!(99.0));
    assert_eq!(strong.values_read["scores.liveness"], json!(80.0));
}

#[test]
fn countries_compare_across_spellings() {
    let pack = default_pack();
    for (issuing, ip_code, ip_name, differs) in [
        (json!("ESP"), json!("ES"), json!(null), false),
        (json!("ESP"), json!(null), json!("Spain"), false),
        (json!("D"), json!("DE"), json!(null), false),
        (json!("GBR"), json!(null), json!("United Kingdom"), false),
        (json!("ESP"), json!("PT"), json!("Portugal"), true),
    ] {
        let d = decision(
            "Approved",
            json!({
                "id_verifications": id_item(json!({"issuing_state": issuing})),
                "ip_analyses": [{"ip_country_code": ip_code, "ip_country": ip_name}],
            }),
        );
        let e = pack.evaluate(None, &d, NOW);
        assert_eq!(
            decided_by(&e) == Some("ip_country_differs"),
            differs,
            "{issuing} vs {ip_code}/{ip_name}: {e:#?}"
        );
    }
}

#[test]
fn shadow_rules_are_recorded_but_never_win_and_disabled_rules_are_skipped() {
    let rules = RuleSet::parse(
        r#"
version = "t"
[[rules]]
name = "try_decline"
when = "age < 100"
action = "decline"
shadow = true
[[rules]]
name = "off"
when = "true"
action = "decline"
enabled = false
[[rules]]
name = "approve_all"
when = "true"
action = "approve"
"#,
    )
    .expect("valid");
    let e = rules.evaluate(None, &decision("In Review", json!({})), NOW);
    assert_eq!(decided_by(&e), Some("approve_all"));
    assert!(e
        .matches
        .iter()
        .any(|m| m.rule == "try_decline" && m.shadow));
    assert_eq!(e.matches.len(), 2);
    assert_eq!(e.not_matched.len(), 1);
    assert_eq!(e.not_matched[0].rule, "off");
    assert_eq!(e.not_matched[0].reason, "disabled");
}

#[test]
fn rules_apply_only_to_the_statuses_in_on() {
    let pack = default_pack();
    let underage = json!({"id_verifications": id_item(json!({"date_of_birth": "2012-01-01"}))});
    let e = pack.evaluate(None, &decision("Declined", underage.clone()), NOW);
    assert_eq!(decided_by(&e), None);
    assert!(e.matches.is_empty());
    assert!(e.not_matched[0]
        .reason
        .starts_with("applies on Approved, In Review, the decision is Declined"));
    assert_eq!(
        e.outcome.status(&SessionStatus::Declined),
        SessionStatus::Declined
    );
    // The approve rule is on In Review only: an Approved decision is left as it is.
    let e = pack.evaluate(None, &decision("Approved", json!({})), NOW);
    assert!(e.matches.is_empty());
}

#[test]
fn a_workflow_list_replaces_the_default_one() {
    let rules = RuleSet::parse(
        r#"
version = "t"
[[rules]]
name = "default_rule"
when = "true"
action = "review"
[[workflows.premium.rules]]
name = "premium_rule"
when = "metadata.user_type == 'premium'"
action = "approve"
"#,
    )
    .expect("valid");
    let d = decision("In Review", json!({}));
    let e = rules.evaluate(Some("premium"), &d, NOW);
    assert_eq!(e.workflow.as_deref(), Some("premium"));
    assert_eq!(decided_by(&e), Some("premium_rule"));
    assert_eq!(
        e.matches[0].values_read["metadata.user_type"],
        json!("premium")
    );
    let e = rules.evaluate(Some("basic"), &d, NOW);
    assert_eq!(e.workflow, None);
    assert_eq!(decided_by(&e), Some("default_rule"));
}

#[test]
fn the_sandbox_high_scores_review_is_approved_by_the_default_pack() {
    let e = default_pack().evaluate(
        None,
        &sandbox_decision(Scenario::ReviewHighScoresWarning),
        NOW,
    );
    assert_eq!(e.status, "In Review");
    assert_eq!(decided_by(&e), Some("strong_biometrics_approve"), "{e:#?}");
    assert_eq!(
        e.outcome.status(&SessionStatus::InReview),
        SessionStatus::Approved
    );
    assert_eq!(e.matches.len(), 1);
}

#[test]
fn the_sandbox_underage_approval_is_declined_by_the_under_18_rule() {
    let e = default_pack().evaluate(None, &sandbox_decision(Scenario::ApproveUnderage), NOW);
    assert_eq!(e.status, "Approved");
    assert_eq!(decided_by(&e), Some("under_18"), "{e:#?}");
    assert_eq!(e.outcome.comment.as_deref(), Some("under 18 (16)"));
    assert_eq!(e.matches[0].values_read["age"], json!(16));
}

#[test]
fn the_other_sandbox_scenarios_meet_the_default_pack_as_expected() {
    let pack = default_pack();
    for (scenario, rule) in [
        (Scenario::Approve, None),
        (Scenario::DeclineDocumentExpired, None),
        (Scenario::DeclineAmlHit, None),
        (Scenario::ReviewAmlPossibleMatch, Some("aml_hit")),
        (Scenario::ReviewFaceMatchBorderline, None),
    ] {
        let e = pack.evaluate(None, &sandbox_decision(scenario), NOW);
        assert_eq!(decided_by(&e), rule, "{}: {e:#?}", scenario.as_str());
    }
}

#[test]
fn invalid_rules_are_refused_naming_the_rule() {
    let rule = |body: &str| format!("version = \"t\"\n[[rules]]\nname = \"bad_one\"\n{body}\n");
    let cases = [
        ("when = \"age <\"\naction = \"decline\"", "does not compile"),
        (
            "when = \"document.colour == 'red'\"\naction = \"decline\"",
            "unknown field \"document.colour\"",
        ),
        (
            "when = \"agee < 18\"\naction = \"decline\"",
            "unknown field \"agee\"",
        ),
        (
            "when = \"warnings.exists(w, w.level == 'error')\"\naction = \"review\"",
            "unknown field \"w.level\"",
        ),
        (
            "when = \"document.issuing_country in lists.embargoed\"\naction = \"decline\"",
            "unknown list",
        ),
        (
            "when = \"age + 1\"\naction = \"decline\"",
            "not true or false",
        ),
        (
            "when = \"age < 'eighteen'\"\naction = \"decline\"",
            "type error",
        ),
        (
            "when = \"frobnicate(age)\"\naction = \"decline\"",
            "unknown function",
        ),
        (
            "when = \"true\"\naction = \"ban\"",
            "unknown action \"ban\"",
        ),
        (
            "when = \"true\"\naction = \"resubmit\"",
            "resubmit needs nodes",
        ),
        (
            "when = \"true\"\naction = \"resubmit\"\nnodes = [\"ocr\"]",
            "<node_id>:<FEATURE>",
        ),
        ("when = \"true\"\naction = \"blocklist\"", "blocklist needs"),
        (
            "when = \"true\"\naction = \"approve\"\non = [\"Approvd\"]",
            "unknown status \"Approvd\"",
        ),
        (
            "when = \"true\"\naction = \"approve\"\ncomment = \"{scores.face}\"",
            "comment names unknown field",
        ),
        (
            "when = \"true\"\naction = \"approve\"\nshadoww = true",
            "shadoww",
        ),
    ];
    for (body, reason) in cases {
        let err = RuleSet::parse(&rule(body)).expect_err(body);
        let text = err.to_string();
        assert!(text.starts_with("rule \"bad_one\": "), "{body}: {text}");
        assert!(text.contains(reason), "{body}: {text}");
    }
}

#[test]
fn file_level_problems_are_refused() {
    for (text, reason) in [
        ("[[rules]]\nname = \"a\"\nwhen = \"true\"\naction = \"approve\"\n", "version is missing"),
        ("version = \"t\"\nrulez = []\n", "unknown key \"rulez\""),
        ("version = \"t\"\n[[rules]]\nname = \"a\"\nwhen = \"true\"\naction = \"approve\"\n[[rules]]\nname = \"a\"\nwhen = \"true\"\naction = \"review\"\n", "duplicate name"),
        ("version = [", "not valid TOML"),
    ] {
        let err = RuleSet::parse(text).expect_err(text);
        assert!(err.to_string().contains(reason), "{text}: {err}");
    }
}

#[test]
fn an_empty_file_is_no_rules() {
    let rules = RuleSet::parse("# nothing yet\n").expect("valid");
    let e = rules.evaluate(None, &decision("Approved", json!({})), NOW);
    assert!(e.matches.is_empty() && e.not_matched.is_empty());
    assert_eq!(e.outcome.action, None);
    assert!(RuleSet::empty().rules.is_empty());
}

#[test]
fn settings_choose_the_embedded_pack_none_or_a_file() {
    let settings = |source| RulesSettings {
        source,
        dry_run: false,
        max_resubmits: 1,
    };
    let embedded = RuleSet::from_settings(&settings(RulesSource::Embedded)).expect("embedded");
    assert_eq!(embedded.rules.len(), 6);
    let none = RuleSet::from_settings(&settings(RulesSource::Disabled)).expect("disabled");
    assert!(none.rules.is_empty());
    let err = RuleSet::from_settings(&settings(RulesSource::File(
        "/nonexistent/rules.toml".into(),
    )))
    .expect_err("missing file");
    assert!(matches!(err, RuleError::Read { .. }), "{err}");
}

#[test]
fn an_evaluation_round_trips_through_json_for_the_outcome_event() {
    let e = default_pack().evaluate(None, &sandbox_decision(Scenario::ApproveUnderage), NOW);
    let text = serde_json::to_string(&e).expect("serialise");
    let back: Evaluation = serde_json::from_str(&text).expect("deserialise");
    assert_eq!(back, e);
    let value: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(value["outcome"]["action"]["type"], "decline");
    assert_eq!(value["matches"][0]["values_read"]["age"], 16);
}

#[test]
fn a_rule_set_can_be_shared_across_worker_tasks() {
    fn shareable<T: Send + Sync>() {}
    shareable::<RuleSet>();
}
