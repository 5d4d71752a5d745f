//! The decision as rule conditions see it.
//!
//! A Didit decision is large, nested, full of personal data and spells one fact several ways
//! (countries as "ES", "ESP" or "Spain"; one score per attempt). Conditions read a small,
//! fixed set of fields computed here instead, so a rule stays short, a typo in a field name is
//! caught when the rules are loaded, and no condition can reach a name, an address or a media
//! link. Building the view does no I/O; "now" is a parameter so ages and expiry are exact.
//!
//! A section the decision does not have is absent, not zero: there is no `scores.face_match`
//! when no face match ran, and [`explain_absent`] says why.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::{macros::format_description, Date, OffsetDateTime};

use super::country;
use didit::types::{Decision, FeatureItem};

/// What conditions read, computed from one decision at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionView {
    /// Didit's status, spelled as Didit spells it (`"In Review"`).
    pub status: String,
    /// The features that produced data (`ID_VERIFICATION`, `LIVENESS`, `FACE_MATCH`, …).
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentView>,
    /// Whole years from the document's date of birth to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<i64>,
    pub scores: ScoresView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aml: Option<AmlView>,
    /// Every warning of every item of every feature.
    pub warnings: Vec<WarningView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpView>,
    pub expected: ExpectedView,
    /// The session's metadata as the producer sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// From the latest ID verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentView {
    /// Didit's display name: `"Identity Card"`, `"Passport"`, `"Driver's License"`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub document_type: Option<String>,
    /// ISO alpha-3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuing_country: Option<String>,
    /// ISO alpha-3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nationality: Option<String>,
    /// `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_date: Option<String>,
    /// Days from now to the expiry date; negative once expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_to_expiry: Option<i64>,
}

/// Scores (0–100): the latest attempt's, which is the person's current standing (an
/// earlier attempt they redid no longer speaks for them), and the lowest across attempts
/// under its own name, for rules that care about any weak attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoresView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_match: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_match_lowest: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_lowest: Option<f64>,
}

/// From the latest AML screening.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AmlView {
    pub hits: i64,
    /// The highest `match_score` (0–100) of the hits; 0 without hits.
    pub max_score: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarningView {
    /// E.g. `DOCUMENT_EXPIRED`; empty when Didit sent none.
    pub risk: String,
    /// E.g. `ID_VERIFICATION`.
    pub feature: String,
    /// `error`, `warning` or `information`.
    pub log_type: String,
}

/// From the latest IP analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpView {
    /// ISO alpha-3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_vpn_or_tor: Option<bool>,
}

/// How the decision compares with the `expected_details` the session was created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedView {
    /// A warning says something differs from what was provided.
    pub mismatch: bool,
}

/// One field a condition may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub path: &'static str,
    pub kind: &'static str,
    /// Why the field can be missing; `None` when it is always there.
    pub absent_when: Option<&'static str>,
}

const fn field(path: &'static str, kind: &'static str, absent: Option<&'static str>) -> Field {
    Field {
        path,
        kind,
        absent_when: absent,
    }
}

/// Every field a condition may name. `metadata` is open: any path below it is accepted.
pub const FIELDS: &[Field] = &[
    field("status", "string", None),
    field("features", "list of strings", None),
    field(
        "document",
        "map",
        Some("no ID verification in this decision"),
    ),
    field(
        "document.type",
        "string",
        Some("the document type was not read"),
    ),
    field(
        "document.issuing_country",
        "string (ISO alpha-3)",
        Some("the issuing country was not read"),
    ),
    field(
        "document.nationality",
        "string (ISO alpha-3)",
        Some("the nationality was not read"),
    ),
    field(
        "document.expiry_date",
        "string (YYYY-MM-DD)",
        Some("the document has no expiry date"),
    ),
    field(
        "document.days_to_expiry",
        "int (negative once expired)",
        Some("the document has no expiry date"),
    ),
    field("age", "int", Some("no date of birth in this decision")),
    field("scores", "map", None),
    field(
        "scores.face_match",
        "double (the latest attempt's)",
        Some("no face match in this decision"),
    ),
    field(
        "scores.liveness",
        "double (the latest attempt's)",
        Some("no liveness check in this decision"),
    ),
    field(
        "scores.face_match_lowest",
        "double (lowest across attempts)",
        Some("no face match in this decision"),
    ),
    field(
        "scores.liveness_lowest",
        "double (lowest across attempts)",
        Some("no liveness check in this decision"),
    ),
    field("aml", "map", Some("no AML screening in this decision")),
    field("aml.hits", "int", Some("no AML screening in this decision")),
    field(
        "aml.max_score",
        "double (0-100)",
        Some("no AML screening in this decision"),
    ),
    field("warnings", "list of {risk, feature, log_type}", None),
    field("ip", "map", Some("no IP analysis in this decision")),
    field(
        "ip.country",
        "string (ISO alpha-3)",
        Some("the IP's country is unknown"),
    ),
    field(
        "ip.is_vpn_or_tor",
        "bool",
        Some("the IP analysis did not say"),
    ),
    field("expected", "map", None),
    field("expected.mismatch", "bool", None),
    field(
        "metadata",
        "any (the session's metadata)",
        Some("the session has no metadata"),
    ),
];

/// The fields of one element of `warnings`.
pub const WARNING_FIELDS: &[&str] = &["risk", "feature", "log_type"];

/// Whether a condition may read `path`.
pub fn is_known(path: &str) -> bool {
    path == "metadata" || path.starts_with("metadata.") || FIELDS.iter().any(|f| f.path == path)
}

/// Why `path` is absent, naming the outermost missing part: `"scores.face_match is absent (no
/// face match in this decision)"`.
pub fn explain_absent(view: &Value, path: &str) -> String {
    let mut prefix = String::new();
    for part in path.split('.') {
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(part);
        if lookup(view, &prefix).is_none() {
            let reason = FIELDS
                .iter()
                .find(|f| f.path == prefix)
                .and_then(|f| f.absent_when)
                .unwrap_or("not in this decision");
            return format!("{prefix} is absent ({reason})");
        }
    }
    format!("{path} is absent")
}

/// The value at a dotted path; `null` counts as absent.
pub fn lookup<'a>(view: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(view, |value, part| value.get(part))
        .filter(|value| !value.is_null())
}

impl DecisionView {
    /// Builds the view of `decision` as of `now`.
    pub fn new(decision: &Decision, now: OffsetDateTime) -> Self {
        let today = now.date();
        let id = latest(&decision.id_verifications);
        let warnings: Vec<WarningView> = feature_arrays(decision)
            .into_iter()
            .flat_map(|(_, items)| items.iter().flatten())
            .flat_map(|item| item.warnings.iter().flatten())
            .map(|w| WarningView {
                risk: w.risk.clone().unwrap_or_default(),
                feature: w.feature.clone().unwrap_or_default(),
                log_type: w.log_type.clone().unwrap_or_default(),
            })
            .collect();
        let mismatch = warnings.iter().any(|w| {
            w.risk.ends_with("_MISMATCH_WITH_PROVIDED") || w.risk == "NAME_MISMATCH_WITH_PROVIDED"
        });
        DecisionView {
            status: decision.status.as_str().to_owned(),
            features: feature_arrays(decision)
                .into_iter()
                .filter(|(_, items)| items.is_some())
                .map(|(name, _)| name.to_owned())
                .collect(),
            document: id.map(|item| document(item, today)),
            age: id
                .and_then(|item| text(item, "date_of_birth"))
                .and_then(parse_date)
                .map(|born| age_on(born, today)),
            scores: ScoresView {
                face_match: latest_score(&decision.face_matches),
                liveness: latest_score(&decision.liveness_checks),
                face_match_lowest: lowest_score(&decision.face_matches),
                liveness_lowest: lowest_score(&decision.liveness_checks),
            },
            aml: latest(&decision.aml_screenings).map(aml),
            warnings,
            ip: latest(&decision.ip_analyses).map(|item| IpView {
                country: text(item, "ip_country_code")
                    .or_else(|| text(item, "ip_country"))
                    .and_then(normalise_country),
                is_vpn_or_tor: item.rest.get("is_vpn_or_tor").and_then(Value::as_bool),
            }),
            expected: ExpectedView { mismatch },
            metadata: decision.metadata.clone().filter(|m| !m.is_null()),
        }
    }

    /// The view as the JSON object conditions are evaluated against; absent fields are
    /// missing keys.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

/// Each v3 feature array under the name Didit uses in `features`.
fn feature_arrays(decision: &Decision) -> [(&'static str, &Option<Vec<FeatureItem>>); 10] {
    [
        ("ID_VERIFICATION", &decision.id_verifications),
        ("NFC", &decision.nfc_verifications),
        ("LIVENESS", &decision.liveness_checks),
        ("FACE_MATCH", &decision.face_matches),
        ("PHONE", &decision.phone_verifications),
        ("EMAIL", &decision.email_verifications),
        ("POA", &decision.poa_verifications),
        ("AML", &decision.aml_screenings),
        ("IP_ANALYSIS", &decision.ip_analyses),
        ("DATABASE_VALIDATION", &decision.database_validations),
    ]
}

/// Didit appends an item per attempt: the last is the latest.
fn latest(items: &Option<Vec<FeatureItem>>) -> Option<&FeatureItem> {
    items.as_ref().and_then(|items| items.last())
}

/// The score of the latest attempt that has one.
fn latest_score(items: &Option<Vec<FeatureItem>>) -> Option<f64> {
    items
        .iter()
        .flatten()
        .rev()
        .filter_map(|item| item.score)
        .find(|score| score.is_finite())
}

fn lowest_score(items: &Option<Vec<FeatureItem>>) -> Option<f64> {
    items
        .iter()
        .flatten()
        .filter_map(|item| item.score)
        .filter(|score| score.is_finite())
        .reduce(f64::min)
}

fn text<'a>(item: &'a FeatureItem, key: &str) -> Option<&'a str> {
    item.rest
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn document(item: &FeatureItem, today: Date) -> DocumentView {
    let expiry = text(item, "expiration_date");
    DocumentView {
        document_type: text(item, "document_type").map(str::to_owned),
        issuing_country: text(item, "issuing_state")
            .or_else(|| text(item, "issuing_state_name"))
            .and_then(normalise_country),
        nationality: text(item, "nationality").and_then(normalise_country),
        expiry_date: expiry.map(str::to_owned),
        days_to_expiry: expiry
            .and_then(parse_date)
            .map(|date| (date - today).whole_days()),
    }
}

fn aml(item: &FeatureItem) -> AmlView {
    let hits = item.rest.get("hits").and_then(Value::as_array);
    let max_match = hits
        .into_iter()
        .flatten()
        .filter_map(|hit| hit.get("match_score").and_then(Value::as_f64))
        .reduce(f64::max);
    let total = item
        .rest
        .get("total_hits")
        .and_then(Value::as_i64)
        .or_else(|| hits.and_then(|h| i64::try_from(h.len()).ok()))
        .unwrap_or(0);
    AmlView {
        hits: total,
        max_score: max_match
            .or(if total > 0 { item.score } else { None })
            .unwrap_or(0.0),
    }
}

/// An unknown spelling is kept (upper-cased) rather than dropped: a country the table does
/// not know still differs from every country it does.
fn normalise_country(value: &str) -> Option<String> {
    Some(
        country::to_alpha3(value)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_uppercase()),
    )
}

fn parse_date(text: &str) -> Option<Date> {
    let day = text.get(..10)?;
    Date::parse(day, format_description!("[year]-[month]-[day]")).ok()
}

/// Whole years between `born` and `on`.
fn age_on(born: Date, on: Date) -> i64 {
    let had_birthday = (u8::from(on.month()), on.day()) >= (u8::from(born.month()), born.day());
    i64::from(on.year() - born.year()) - i64::from(!had_birthday)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn decision(value: Value) -> Decision {
        serde_json::from_value(value).expect("decision fixture")
    }

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    #[test]
    fn the_latest_item_wins_for_the_document_and_the_scores_and_the_lowest_has_its_name() {
        let d = decision(json!({
            "session_id": "11111111-2222-3333-4444-555555555555",
            "status": "In Review",
            "id_verifications": [
                {"node_id": "feature_ocr_1", "document_type": "Passport", "issuing_state": "FRA",
                 "date_of_birth": "2000-03-02", "expiration_date": "2020-01-01"},
                {"node_id": "feature_ocr_1", "document_type": "Identity Card", "issuing_state": "Spain",
                 "nationality": "ES", "date_of_birth": "2000-03-01", "expiration_date": "2026-03-11"}
            ],
            "face_matches": [{"score": 95.0}, {"score": 71.5}, {"score": 88.0}],
            "liveness_checks": [{"score": null}, {"score": 92.0}],
            "ip_analyses": [{"ip_country_code": "FR"}, {"ip_country": "Spain", "is_vpn_or_tor": true}],
        }));
        let view = DecisionView::new(&d, NOW);
        let doc = view.document.as_ref().expect("document");
        assert_eq!(doc.document_type.as_deref(), Some("Identity Card"));
        assert_eq!(doc.issuing_country.as_deref(), Some("ESP"));
        assert_eq!(doc.nationality.as_deref(), Some("ESP"));
        assert_eq!(doc.days_to_expiry, Some(10));
        assert_eq!(view.age, Some(26));
        assert_eq!(view.scores.face_match, Some(88.0));
        assert_eq!(view.scores.face_match_lowest, Some(71.5));
        assert_eq!(view.scores.liveness, Some(92.0));
        assert_eq!(view.scores.liveness_lowest, Some(92.0));
        let ip = view.ip.as_ref().expect("ip");
        assert_eq!(ip.country.as_deref(), Some("ESP"));
        assert_eq!(ip.is_vpn_or_tor, Some(true));
        assert_eq!(
            view.features,
            ["ID_VERIFICATION", "LIVENESS", "FACE_MATCH", "IP_ANALYSIS"]
        );
    }

    #[test]
    fn missing_sections_are_absent_and_explained() {
        let d = decision(json!({
            "session_id": "11111111-2222-3333-4444-555555555555",
            "status": "Approved",
            "face_matches": null,
        }));
        let json = DecisionView::new(&d, NOW).to_json();
        for (path, reason) in [
            (
                "scores.face_match",
                "scores.face_match is absent (no face match in this decision)",
            ),
            (
                "document.days_to_expiry",
                "document is absent (no ID verification in this decision)",
            ),
            (
                "aml.hits",
                "aml is absent (no AML screening in this decision)",
            ),
            ("age", "age is absent (no date of birth in this decision)"),
            (
                "metadata.tier",
                "metadata is absent (the session has no metadata)",
            ),
        ] {
            assert_eq!(lookup(&json, path), None, "{path}");
            assert_eq!(explain_absent(&json, path), reason);
        }
        assert_eq!(lookup(&json, "expected.mismatch"), Some(&json!(false)));
        assert_eq!(lookup(&json, "warnings"), Some(&json!([])));
    }

    #[test]
    fn ages_count_whole_years_on_the_given_day() {
        let born = Date::from_calendar_date(2008, time::Month::March, 2).expect("date");
        assert_eq!(age_on(born, NOW.date()), 17);
        let born = Date::from_calendar_date(2008, time::Month::March, 1).expect("date");
        assert_eq!(age_on(born, NOW.date()), 18);
    }

    #[test]
    fn aml_reads_hits_and_the_highest_match_score_of_the_latest_screening() {
        let d = decision(json!({
            "session_id": "11111111-2222-3333-4444-555555555555",
            "status": "In Review",
            "aml_screenings": [
                {"total_hits": 3, "hits": [{"match_score": 99}], "score": 99},
                {"total_hits": 2, "hits": [{"match_score": 60}, {"match_score": 81}], "score": 81}
            ],
        }));
        let aml = DecisionView::new(&d, NOW).aml.expect("aml");
        assert_eq!((aml.hits, aml.max_score), (2, 81.0));
    }

    #[test]
    fn a_mismatch_with_provided_details_is_flagged() {
        for (risk, expected) in [
            ("NAME_MISMATCH_WITH_PROVIDED", true),
            ("POA_COUNTRY_MISMATCH_WITH_PROVIDED", true),
            ("DOCUMENT_EXPIRED", false),
        ] {
            let d = decision(json!({
                "session_id": "11111111-2222-3333-4444-555555555555",
                "status": "In Review",
                "id_verifications": [{"warnings": [{"risk": risk, "log_type": "warning"}]}],
            }));
            assert_eq!(
                DecisionView::new(&d, NOW).expected.mismatch,
                expected,
                "{risk}"
            );
        }
    }

    #[test]
    fn every_field_is_known_and_metadata_is_open() {
        for f in FIELDS {
            assert!(is_known(f.path));
        }
        assert!(is_known("metadata.tier.level"));
        assert!(!is_known("document.colour"));
        assert!(!is_known("score"));
    }
}
