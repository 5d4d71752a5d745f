//! The outcomes a sandbox session can be driven to with `sandbox_scenario`, and the full v3
//! decision sections each one produces.
//!
//! Only `decline_document_expired` and `decline_aml_hit` are Didit's own slugs; the others are
//! ours, each exercising one path of the fleet's rules. Scores, warnings and document data
//! follow the shapes of Didit's OpenAPI document: a warning's `log_type` is `error` when
//! the workflow declines on it and `warning` when it routes to review. `docs/sandbox.md`
//! lists what each scenario yields; keep the two in step.

use serde_json::{json, Map, Value};
use time::{Date, Duration as TimeDuration, OffsetDateTime};
use uuid::Uuid;

use didit::SessionStatus;

/// How the simulated user's flow ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `approve` (the default): `Approved`, every check passed, no warnings.
    Approve,
    /// `decline_document_expired` (a Didit slug): `Declined`, the document expired 400 days
    /// ago (`DOCUMENT_EXPIRED`, error).
    DeclineDocumentExpired,
    /// `decline_face_mismatch`: `Declined`, face match score 23.5
    /// (`LOW_FACE_MATCH_SIMILARITY`, error).
    DeclineFaceMismatch,
    /// `decline_liveness`: `Declined`, liveness score 12.3 (`LOW_LIVENESS_SCORE`, error);
    /// no face match ran.
    DeclineLiveness,
    /// `decline_aml_hit` (a Didit slug): `Declined`, one sanctions hit
    /// (`POSSIBLE_MATCH_FOUND`, error).
    DeclineAmlHit,
    /// `review_face_match_borderline`: `In Review`, face match score 68.4
    /// (`LOW_FACE_MATCH_SIMILARITY`, warning).
    ReviewFaceMatchBorderline,
    /// `review_high_scores_warning`: `In Review` with high liveness and face scores and one
    /// warning-level risk on the document (`POSSIBLE_DUPLICATED_USER`).
    ReviewHighScoresWarning,
    /// `review_aml_possible_match`: `In Review`, one PEP hit (`POSSIBLE_MATCH_FOUND`,
    /// warning).
    ReviewAmlPossibleMatch,
    /// `approve_underage`: `Approved`, but the holder is 16 today, for rules that check age
    /// themselves.
    ApproveUnderage,
    /// Opens the link, never finishes: `In Progress` until expiry, then `Abandoned`.
    Abandon,
    /// Never opens the link: `Not Started` until expiry, then `Expired`.
    Expire,
}

impl Scenario {
    /// Every scenario, in declaration order.
    pub const ALL: [Scenario; 11] = [
        Scenario::Approve,
        Scenario::DeclineDocumentExpired,
        Scenario::DeclineFaceMismatch,
        Scenario::DeclineLiveness,
        Scenario::DeclineAmlHit,
        Scenario::ReviewFaceMatchBorderline,
        Scenario::ReviewHighScoresWarning,
        Scenario::ReviewAmlPossibleMatch,
        Scenario::ApproveUnderage,
        Scenario::Abandon,
        Scenario::Expire,
    ];

    /// The `sandbox_scenario` slug (`approve`, `decline_document_expired`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Approve => "approve",
            Scenario::DeclineDocumentExpired => "decline_document_expired",
            Scenario::DeclineFaceMismatch => "decline_face_mismatch",
            Scenario::DeclineLiveness => "decline_liveness",
            Scenario::DeclineAmlHit => "decline_aml_hit",
            Scenario::ReviewFaceMatchBorderline => "review_face_match_borderline",
            Scenario::ReviewHighScoresWarning => "review_high_scores_warning",
            Scenario::ReviewAmlPossibleMatch => "review_aml_possible_match",
            Scenario::ApproveUnderage => "approve_underage",
            Scenario::Abandon => "abandon",
            Scenario::Expire => "expire",
        }
    }

    /// Reads a `sandbox_scenario` slug; `None` for an unknown one (the sandbox answers 400).
    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The status the flow ends in when the user finishes it; `None` for the two scenarios
    /// that only end by expiry.
    pub fn final_status(self) -> Option<SessionStatus> {
        Some(match self {
            Scenario::Approve | Scenario::ApproveUnderage => SessionStatus::Approved,
            Scenario::DeclineDocumentExpired
            | Scenario::DeclineFaceMismatch
            | Scenario::DeclineLiveness
            | Scenario::DeclineAmlHit => SessionStatus::Declined,
            Scenario::ReviewFaceMatchBorderline
            | Scenario::ReviewHighScoresWarning
            | Scenario::ReviewAmlPossibleMatch => SessionStatus::InReview,
            Scenario::Abandon | Scenario::Expire => return None,
        })
    }
}

/// What a finished flow produced: the session status and its decision sections, keyed by
/// the v3 array names (`id_verifications`, …).
pub struct Outcome {
    /// The session's final status.
    pub status: SessionStatus,
    /// The decision's feature arrays by their v3 names, each a JSON array.
    pub sections: Map<String, Value>,
}

/// The person and the run a decision describes.
pub struct Subject {
    /// The session the decision belongs to (feature data is derived from it).
    pub session_id: Uuid,
    /// The day the flow finishes, which document dates and ages are computed from.
    pub today: Date,
    /// The vendor_data had its face or document blocklisted: Didit declines on sight.
    pub blocklisted: bool,
}

/// The section that the IP step produces as soon as the user opens the link.
pub fn ip_analysis(session_id: Uuid) -> Value {
    json!([{
        "node_id": "feature_ip_1",
        "status": "Approved",
        "device_brand": "Apple",
        "device_model": "iPhone",
        "browser_family": "Mobile Safari",
        "os_family": "iOS",
        "platform": "mobile",
        "device_fingerprint": format!("fp-{}", &session_id.simple().to_string()[..16]),
        "ip_country": "Spain",
        "ip_country_code": "ES",
        "ip_state": "Madrid",
        "ip_city": "Madrid",
        "latitude": 40.4165,
        "longitude": -3.70256,
        "ip_address": "83.50.226.71",
        "isp": "Telefonica de Espana",
        "organization": "Telefonica de Espana",
        "is_vpn_or_tor": false,
        "is_data_center": false,
        "time_zone": "Europe/Madrid",
        "time_zone_offset": "+0100",
        "warnings": [],
        "matches": []
    }])
}

/// The full outcome of a finished flow.
pub fn outcome(scenario: Scenario, subject: &Subject) -> Outcome {
    let mut status = scenario.final_status().unwrap_or(SessionStatus::Approved);
    let mut doc = Document::adult(subject.today);
    let mut id_status = "Approved";
    let mut id_warnings = Vec::new();
    let mut liveness = Some(Check::approved(97.4));
    let mut face = Some(Check::approved(94.2));
    let mut aml = Aml::clear();

    match scenario {
        Scenario::Approve | Scenario::Abandon | Scenario::Expire => {}
        Scenario::ApproveUnderage => doc = Document::underage(subject.today),
        Scenario::DeclineDocumentExpired => {
            doc.expiration_date = subject.today - TimeDuration::days(400);
            id_status = "Declined";
            id_warnings.push(warning(
                "ID_VERIFICATION",
                "DOCUMENT_EXPIRED",
                "error",
                "Document expired",
                "The document's expiration date has passed, so it is no longer valid for verification.",
                "feature_ocr_1",
            ));
        }
        Scenario::DeclineFaceMismatch => {
            face = Some(Check {
                status: "Declined",
                score: 23.5,
                warnings: vec![warning(
                    "FACEMATCH",
                    "LOW_FACE_MATCH_SIMILARITY",
                    "error",
                    "Low face match similarity",
                    "The facial features of the provided image don't closely match the reference image, suggesting a potential identity mismatch.",
                    "feature_face_match_1",
                )],
            });
        }
        Scenario::DeclineLiveness => {
            liveness = Some(Check {
                status: "Declined",
                score: 12.3,
                warnings: vec![warning(
                    "LIVENESS",
                    "LOW_LIVENESS_SCORE",
                    "error",
                    "Low liveness score",
                    "The liveness check returned a score below the workflow's threshold, suggesting a presentation attack or a poor capture.",
                    "feature_liveness_1",
                )],
            });
            // Without a live face there is nothing to match the document against.
            face = None;
        }
        Scenario::DeclineAmlHit => aml = Aml::hit("Declined", "error", 0.96, 96, "Sanctions"),
        Scenario::ReviewFaceMatchBorderline => {
            face = Some(Check {
                status: "In Review",
                score: 68.4,
                warnings: vec![warning(
                    "FACEMATCH",
                    "LOW_FACE_MATCH_SIMILARITY",
                    "warning",
                    "Low face match similarity",
                    "The facial features of the provided image don't closely match the reference image, suggesting a potential identity mismatch.",
                    "feature_face_match_1",
                )],
            });
        }
        Scenario::ReviewHighScoresWarning => {
            liveness = Some(Check::approved(96.2));
            face = Some(Check::approved(95.1));
            id_status = "In Review";
            id_warnings.push(warning(
                "ID_VERIFICATION",
                "POSSIBLE_DUPLICATED_USER",
                "warning",
                "Possible duplicated user",
                "A previous session with a matching document and face exists under another vendor_data.",
                "feature_ocr_1",
            ));
        }
        Scenario::ReviewAmlPossibleMatch => {
            aml = Aml::hit("In Review", "warning", 0.73, 78, "PEP");
        }
    }
    if subject.blocklisted {
        status = SessionStatus::Declined;
        id_status = "Declined";
        id_warnings.push(warning(
            "ID_VERIFICATION",
            "ID_DOCUMENT_IN_BLOCKLIST",
            "error",
            "ID document in blocklist",
            "The document matches an entry of the application's blocklist.",
            "feature_ocr_1",
        ));
    }

    let mut sections = Map::new();
    sections.insert(
        "id_verifications".into(),
        json!([doc.to_json(subject.session_id, id_status, id_warnings)]),
    );
    sections.insert(
        "liveness_checks".into(),
        liveness.map_or(Value::Null, |c| c.liveness_json(subject.session_id)),
    );
    sections.insert(
        "face_matches".into(),
        face.map_or(Value::Null, |c| c.face_json(subject.session_id)),
    );
    sections.insert("aml_screenings".into(), aml.to_json(&doc, subject.today));
    sections.insert("ip_analyses".into(), ip_analysis(subject.session_id));
    Outcome { status, sections }
}

fn warning(
    feature: &str,
    risk: &str,
    log_type: &str,
    short: &str,
    long: &str,
    node_id: &str,
) -> Value {
    json!({
        "feature": feature,
        "risk": risk,
        "additional_data": null,
        "log_type": log_type,
        "short_description": short,
        "long_description": long,
        "node_id": node_id,
    })
}

/// A presigned-looking media link: Didit's expire after an hour and must never be stored.
fn media(session_id: Uuid, name: &str) -> String {
    format!(
        "https://sandbox-media.didit.invalid/{session_id}/{name}.jpg?X-Amz-Expires=3600&X-Amz-Signature=sandbox"
    )
}

fn iso_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Whole years between `born` and `on`.
fn age_on(born: Date, on: Date) -> i32 {
    let had_birthday = (u8::from(on.month()), on.day()) >= (u8::from(born.month()), born.day());
    on.year() - born.year() - i32::from(!had_birthday)
}

/// `date` moved by whole years, 29 February falling back to the 28th.
fn years_from(date: Date, years: i32) -> Date {
    let year = date.year() + years;
    Date::from_calendar_date(year, date.month(), date.day())
        .or_else(|_| Date::from_calendar_date(year, date.month(), 28))
        .unwrap_or(date)
}

struct Document {
    first_name: &'static str,
    last_name: &'static str,
    date_of_birth: Date,
    expiration_date: Date,
    date_of_issue: Date,
    today: Date,
}

impl Document {
    fn adult(today: Date) -> Self {
        Self {
            first_name: "Carmen",
            last_name: "Española Española",
            date_of_birth: Date::from_calendar_date(1990, time::Month::May, 15)
                .expect("15 May 1990 is a valid date"),
            expiration_date: years_from(today, 6),
            date_of_issue: years_from(today, -4),
            today,
        }
    }

    /// Sixteen years old today: Didit's default workflow has no age rule and approves.
    fn underage(today: Date) -> Self {
        Self {
            first_name: "Lucía",
            date_of_birth: years_from(today, -16),
            ..Self::adult(today)
        }
    }

    fn to_json(&self, session_id: Uuid, status: &str, warnings: Vec<Value>) -> Value {
        let full_name = format!("{} {}", self.first_name, self.last_name);
        json!({
            "node_id": "feature_ocr_1",
            "status": status,
            "document_type": "Identity Card",
            "document_subtype": "ID_CARD_GENERIC",
            "document_number": "CAA000000",
            "personal_number": "99999999R",
            "portrait_image": media(session_id, "portrait"),
            "front_image": media(session_id, "front"),
            "back_image": media(session_id, "back"),
            "date_of_birth": iso_date(self.date_of_birth),
            "age": age_on(self.date_of_birth, self.today),
            "expiration_date": iso_date(self.expiration_date),
            "date_of_issue": iso_date(self.date_of_issue),
            "issuing_state": "ESP",
            "issuing_state_name": "Spain",
            "first_name": self.first_name,
            "last_name": self.last_name,
            "full_name": full_name,
            "gender": "F",
            "address": "Calle Mayor 1, 28013 Madrid",
            "formatted_address": "Calle Mayor 1, 28013 Madrid, Spain",
            "place_of_birth": "Madrid",
            "marital_status": "Single",
            "nationality": "ESP",
            "extra_fields": {"dl_categories": [], "blood_group": null},
            "mrz": {
                "mrz_type": "TD1",
                "document_number": "CAA000000",
                "errors": [],
                "warnings": []
            },
            "front_image_quality_score": {
                "focus_score": 85.3,
                "brightness_score": 92.1,
                "brightness_issue": "ok",
                "is_document_fully_visible": true,
                "resolution_score": 72.4,
                "overall_score": 88.7
            },
            "extra_files": [],
            "matches": [],
            "warnings": warnings,
        })
    }
}

struct Check {
    status: &'static str,
    score: f64,
    warnings: Vec<Value>,
}

impl Check {
    fn approved(score: f64) -> Self {
        Self {
            status: "Approved",
            score,
            warnings: Vec::new(),
        }
    }

    fn liveness_json(self, session_id: Uuid) -> Value {
        json!([{
            "node_id": "feature_liveness_1",
            "status": self.status,
            "method": "PASSIVE",
            "score": self.score,
            "reference_image": media(session_id, "liveness-reference"),
            "age_estimation": 34.2,
            "matches": [],
            "warnings": self.warnings,
            "face_quality": 91.0,
            "face_luminance": 63.5
        }])
    }

    fn face_json(self, session_id: Uuid) -> Value {
        json!([{
            "node_id": "feature_face_match_1",
            "status": self.status,
            "score": self.score,
            "source_image_session_id": null,
            "source_image": media(session_id, "portrait"),
            "target_image": media(session_id, "liveness-reference"),
            "warnings": self.warnings,
        }])
    }
}

struct Aml {
    status: &'static str,
    hit: Option<(f64, u32, &'static str)>,
    log_type: &'static str,
}

impl Aml {
    fn clear() -> Self {
        Self {
            status: "Approved",
            hit: None,
            log_type: "information",
        }
    }

    fn hit(
        status: &'static str,
        log_type: &'static str,
        score: f64,
        match_score: u32,
        dataset: &'static str,
    ) -> Self {
        Self {
            status,
            hit: Some((score, match_score, dataset)),
            log_type,
        }
    }

    fn to_json(&self, doc: &Document, today: Date) -> Value {
        let full_name = format!("{} {}", doc.first_name, doc.last_name);
        let seen = OffsetDateTime::new_utc(today, time::Time::MIDNIGHT) - TimeDuration::days(30);
        let seen = seen
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let hits: Vec<Value> = self
            .hit
            .iter()
            .map(|(score, match_score, dataset)| {
                let sanctions = if *dataset == "Sanctions" {
                    json!([{"list": "EU Financial Sanctions Files", "since": "2022-03-15"}])
                } else {
                    json!([])
                };
                let peps = if *dataset == "PEP" {
                    json!([{"position": "Member of a regional parliament", "country": "ESP"}])
                } else {
                    json!([])
                };
                json!({
                    "id": "cPtTGRKkyddAcAC4xgsLCm",
                    "url": "https://www.opensanctions.org/entities/cPtTGRKkyddAcAC4xgsLCm/",
                    "match": true,
                    "score": score,
                    "target": true,
                    "caption": full_name,
                    "datasets": [dataset],
                    "properties": {"name": [full_name], "country": "es", "birthDate": [iso_date(doc.date_of_birth)]},
                    "match_score": match_score,
                    "risk_score": (score * 100.0).round(),
                    "review_status": "Unreviewed",
                    "first_seen": seen,
                    "last_seen": seen,
                    "score_breakdown": {"name_score": match_score, "dob_score": 100, "country_score": 100},
                    "pep_matches": peps,
                    "sanction_matches": sanctions,
                    "warning_matches": [],
                    "adverse_media_matches": [],
                    "linked_entities": [],
                })
            })
            .collect();
        let warnings: Vec<Value> = if self.hit.is_some() {
            vec![warning(
                "AML",
                "POSSIBLE_MATCH_FOUND",
                self.log_type,
                "Possible match found in AML screening",
                "The screened person possibly matches an entry of a sanctions, PEP or watch list.",
                "feature_aml_1",
            )]
        } else {
            Vec::new()
        };
        json!([{
            "node_id": "feature_aml_1",
            "status": self.status,
            "total_hits": hits.len(),
            "entity_type": "person",
            "hits": hits,
            "score": self.hit.map_or(0.0, |(_, match_score, _)| f64::from(match_score)),
            "screened_data": {
                "full_name": full_name,
                "date_of_birth": iso_date(doc.date_of_birth),
                "nationality": "ESP",
                "document_number": "CAA000000"
            },
            "is_ongoing_monitoring_enabled": false,
            "next_ongoing_monitoring_bill_date": null,
            "warnings": warnings,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            session_id: Uuid::nil(),
            today: Date::from_calendar_date(2026, time::Month::March, 1).expect("valid date"),
            blocklisted: false,
        }
    }

    #[test]
    fn every_scenario_round_trips_its_slug() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scenario::parse("Approve"), None);
    }

    #[test]
    fn underage_is_approved_with_a_date_of_birth_under_18() {
        let o = outcome(Scenario::ApproveUnderage, &subject());
        assert_eq!(o.status, SessionStatus::Approved);
        let id = &o.sections["id_verifications"][0];
        assert_eq!(id["age"], 16);
        assert_eq!(id["date_of_birth"], "2010-03-01");
    }

    #[test]
    fn high_scores_review_has_only_warning_level_warnings() {
        let o = outcome(Scenario::ReviewHighScoresWarning, &subject());
        assert_eq!(o.status, SessionStatus::InReview);
        assert!(o.sections["liveness_checks"][0]["score"].as_f64() >= Some(90.0));
        assert!(o.sections["face_matches"][0]["score"].as_f64() >= Some(90.0));
        let levels: Vec<&Value> = o
            .sections
            .values()
            .filter_map(Value::as_array)
            .flatten()
            .flat_map(|item| item["warnings"].as_array().into_iter().flatten())
            .map(|w| &w["log_type"])
            .collect();
        assert!(!levels.is_empty());
        assert!(levels.iter().all(|l| *l == "warning"), "{levels:?}");
    }

    #[test]
    fn an_expired_document_is_declined_with_an_error_warning() {
        let o = outcome(Scenario::DeclineDocumentExpired, &subject());
        assert_eq!(o.status, SessionStatus::Declined);
        let id = &o.sections["id_verifications"][0];
        assert_eq!(id["expiration_date"], "2025-01-25");
        assert_eq!(id["warnings"][0]["risk"], "DOCUMENT_EXPIRED");
        assert_eq!(id["warnings"][0]["log_type"], "error");
    }

    #[test]
    fn ages_count_whole_years() {
        let born = Date::from_calendar_date(2000, time::Month::February, 29).expect("leap day");
        let day = |m, d| Date::from_calendar_date(2018, m, d).expect("valid date");
        assert_eq!(age_on(born, day(time::Month::February, 28)), 17);
        assert_eq!(age_on(born, day(time::Month::March, 1)), 18);
    }
}
