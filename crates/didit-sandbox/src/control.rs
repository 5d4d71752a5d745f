//! `POST /sandbox/control`: change the sandbox while it runs, without losing sessions.
//!
//! Sandbox-only, no API key (the route does not exist at Didit). One JSON object per call,
//! `{"action": "...", ...}`; `docs/sandbox.md` lists every action. The route answers 200
//! `{"ok": true}` or 400 `{"detail": "..."}`; this module only applies the action, so it needs
//! nothing of the HTTP surface that calls it.

use std::time::Duration;

use axum::body::Bytes;
use serde_json::Value;
use uuid::Uuid;

use super::{
    contested::{DeleteStatus, SameStatus, WrongKeyStatus},
    limits::{Injected, LateAnswer, Limit, LimitSpec, RateScope, ENDPOINT_NAMES},
    scenarios::{self, Scenario, Subject},
    state::{Inner, NewSession, Shared, Step},
};
use didit::SessionStatus;

const ACTIONS: &[&str] = &[
    "revoke_api_key",
    "restore_api_key",
    "set_credits",
    "set_limit",
    "set_latency",
    "set_error_rate",
    "fail_next",
    "answer_creates_late",
    "complete_session",
    "set_status",
    "set_scenario",
    "seed_session",
    "set_complete_after",
    "advance_clock",
    "set_wrong_key_status",
    "set_same_status",
    "set_delete_status",
    "reset_stats",
];

/// Applies one control request; returns the action it carried out, or why it was refused.
pub fn handle(shared: &Shared, body: &Bytes) -> Result<String, String> {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Err("expected a JSON object such as {\"action\": \"revoke_api_key\"}".into()),
    };
    let Some(action) = request["action"].as_str() else {
        return Err(format!(
            "\"action\" is required, one of: {}",
            ACTIONS.join(", ")
        ));
    };
    let result = {
        let mut inner = shared.lock();
        apply(&mut inner, action, &request)
    };
    if action == "reset_stats" && result.is_ok() {
        shared.webhook_stats.reset();
    }
    result.map(|()| action.to_owned())
}

fn apply(inner: &mut Inner, action: &str, r: &Value) -> Result<(), String> {
    match action {
        "revoke_api_key" => inner.key_revoked = true,
        "restore_api_key" => inner.key_revoked = false,
        "set_credits" => {
            let balance = &r["balance"];
            inner.balance = balance
                .as_f64()
                .or_else(|| balance.as_str().and_then(|s| s.parse().ok()))
                .filter(|b| b.is_finite())
                .ok_or("\"balance\" must be a number of US dollars, e.g. 0 or \"1000.0000\"")?;
        }
        "set_limit" => {
            let spec = match r["spec"].as_str() {
                Some(spec) => spec.parse::<LimitSpec>()?,
                None => LimitSpec {
                    scope: r["scope"]
                        .as_str()
                        .ok_or("\"scope\" (get, write, create, pdf) or \"spec\" is required")?
                        .parse::<RateScope>()?,
                    limit: Limit::new(
                        u32::try_from(number(r, "limit")?).map_err(|_| "\"limit\" is too large")?,
                        Duration::from_millis(r["window_ms"].as_u64().unwrap_or(60_000)),
                    )?,
                },
            };
            inner.limiter.set(spec);
        }
        "set_latency" => inner.faults.latency = Duration::from_millis(number(r, "ms")?),
        "set_error_rate" => {
            let rate = r["rate"]
                .as_f64()
                .filter(|rate| (0.0..=1.0).contains(rate))
                .ok_or("\"rate\" must be a number between 0 and 1")?;
            let status = match &r["status"] {
                Value::Null => 500,
                v => v
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .filter(|s| *s == 429 || (500..=599).contains(s))
                    .ok_or("\"status\" must be 429 or a 5xx status")?,
            };
            let retry_after_s =
                match &r["retry_after_s"] {
                    Value::Null => None,
                    v => Some(v.as_u64().filter(|s| (1..=86_400).contains(s)).ok_or(
                        "\"retry_after_s\" must be a whole number of seconds, 1 to 86400",
                    )?),
                };
            inner.faults.error_rate = rate;
            inner.faults.outage = Injected {
                status,
                retry_after_s,
            };
        }
        "fail_next" => {
            let endpoint = r["endpoint"].as_str().unwrap_or_default();
            if !ENDPOINT_NAMES.contains(&endpoint) {
                return Err(format!(
                    "\"endpoint\" must be one of: {}",
                    ENDPOINT_NAMES.join(", ")
                ));
            }
            let count = u32::try_from(number(r, "count")?).map_err(|_| "\"count\" is too large")?;
            let status = r["status"].as_u64().unwrap_or(500);
            let status = u16::try_from(status)
                .ok()
                .filter(|s| (400..=599).contains(s))
                .ok_or("\"status\" must be an HTTP error status (400-599)")?;
            inner.faults.fail_next(endpoint, count, status);
        }
        "answer_creates_late" => {
            let count = u32::try_from(number(r, "count")?).map_err(|_| "\"count\" is too large")?;
            let how = match (&r["ms"], r["reset"].as_bool()) {
                (Value::Null, Some(true)) => LateAnswer::Reset,
                (ms, None | Some(false)) if !ms.is_null() => LateAnswer::After(
                    ms.as_u64()
                        .filter(|ms| *ms <= 600_000)
                        .map(Duration::from_millis)
                        .ok_or("\"ms\" must be a whole number of milliseconds, at most 600000")?,
                ),
                _ => return Err("give either \"ms\" (answer that late) or \"reset\": true".into()),
            };
            inner.faults.answer_creates_late(count, how);
        }
        "complete_session" => complete_session(inner, session_id(inner, r)?)?,
        "set_status" => {
            let id = session_id(inner, r)?;
            let status = r["status"]
                .as_str()
                .map(SessionStatus::parse)
                .filter(|s| !matches!(s, SessionStatus::Unknown(_)))
                .ok_or("\"status\" must be one of Didit's ten statuses, e.g. \"In Review\"")?;
            set_status(inner, id, status);
        }
        "set_scenario" => {
            let id = session_id(inner, r)?;
            let scenario = r["scenario"]
                .as_str()
                .and_then(Scenario::parse)
                .ok_or("\"scenario\" must be a sandbox scenario such as \"approve\"")?;
            if let Some(session) = inner.sessions.get_mut(&id) {
                session.scenario = scenario;
            }
            inner.schedule(id);
        }
        "seed_session" => seed_session(inner, r)?,
        "set_complete_after" => inner.set_complete_after(Duration::from_millis(number(r, "ms")?)),
        "advance_clock" => inner.advance_clock(Duration::from_secs(number(r, "seconds")?))?,
        "set_wrong_key_status" => {
            inner.contested.wrong_key = WrongKeyStatus::from_code(status(r)?)?;
        }
        "set_same_status" => inner.contested.same_status = SameStatus::from_code(status(r)?)?,
        "set_delete_status" => inner.contested.delete = DeleteStatus::from_code(status(r)?)?,
        "reset_stats" => {
            inner.stats.reset();
            inner.limiter.reset_peaks();
            inner.faults.injected = 0;
        }
        other => {
            return Err(format!(
                "unknown action \"{other}\", expected one of: {}",
                ACTIONS.join(", ")
            ))
        }
    }
    Ok(())
}

fn number(r: &Value, field: &str) -> Result<u64, String> {
    r[field]
        .as_u64()
        .ok_or_else(|| format!("\"{field}\" must be a whole number"))
}

/// The `"status"` of the `set_*_status` actions.
fn status(r: &Value) -> Result<u16, String> {
    r["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .ok_or_else(|| "\"status\" must be an HTTP status such as 403".to_owned())
}

fn session_id(inner: &Inner, r: &Value) -> Result<Uuid, String> {
    let id = r["session_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or("\"session_id\" must be a session UUID")?;
    if inner.sessions.contains_key(&id) {
        Ok(id)
    } else {
        Err(format!("no session {id}"))
    }
}

/// Creates a session under a given id, as if created earlier (e.g. by another sandbox whose
/// records a test restored): `session_id`, `workflow_id` (else the sandbox's workflow),
/// `vendor_data`, `scenario` (default `approve`) and `status` (default `Not Started`, which
/// the simulated user then plays on; any other status is set with the scenario's data and
/// without a webhook, since the session reached it before).
fn seed_session(inner: &mut Inner, r: &Value) -> Result<(), String> {
    let id = r["session_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or("\"session_id\" must be a session UUID")?;
    if inner.sessions.contains_key(&id) {
        return Err(format!("session {id} exists already"));
    }
    let workflow_id = match &r["workflow_id"] {
        Value::Null => crate::WORKFLOW_ID,
        v => v
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .filter(|w| inner.version_for(*w).is_some())
            .ok_or("\"workflow_id\" must name a workflow of the sandbox")?,
    };
    let scenario = match &r["scenario"] {
        Value::Null => Scenario::Approve,
        v => v
            .as_str()
            .and_then(Scenario::parse)
            .ok_or("\"scenario\" must be a sandbox scenario such as \"approve\"")?,
    };
    let status = match &r["status"] {
        Value::Null => SessionStatus::NotStarted,
        v => v
            .as_str()
            .map(SessionStatus::parse)
            .filter(|s| !matches!(s, SessionStatus::Unknown(_)))
            .ok_or("\"status\" must be one of Didit's ten statuses, e.g. \"In Review\"")?,
    };
    let vendor_data = match &r["vendor_data"] {
        Value::Null => None,
        v => Some(
            v.as_str()
                .ok_or("\"vendor_data\" must be a string")?
                .to_owned(),
        ),
    };
    inner.create_session_as(
        NewSession {
            workflow_id,
            vendor_data,
            metadata: Value::Null,
            callback: None,
            language: None,
            expected_details: Value::Null,
            contact_details: Value::Null,
            scenario,
        },
        Some(id),
    );
    if status != SessionStatus::NotStarted {
        // The scenario's data, so a decision read (and the rules) see what it would have
        // produced.
        let outcome = scenarios::outcome(
            scenario,
            &Subject {
                session_id: id,
                today: inner.now().date(),
                blocklisted: false,
            },
        );
        if let Some(session) = inner.sessions.get_mut(&id) {
            session.sections.extend(outcome.sections);
            session.auto = status == SessionStatus::InProgress;
            session.status = status;
        }
        // No webhook: the seeded session reached this status before, when its webhooks
        // went out.
        inner.schedule(id);
    }
    Ok(())
}

/// Plays the rest of the user's flow now, with every webhook it would have caused.
fn complete_session(inner: &mut Inner, id: Uuid) -> Result<(), String> {
    loop {
        let Some(session) = inner.sessions.get(&id) else {
            return Ok(());
        };
        let step = match session.status {
            SessionStatus::NotStarted if session.scenario == Scenario::Expire => Step::Expire,
            SessionStatus::NotStarted | SessionStatus::Resubmitted => Step::Open,
            SessionStatus::InProgress if session.scenario == Scenario::Abandon => Step::Expire,
            SessionStatus::InProgress => Step::Finish,
            ref done => {
                return Err(format!(
                    "session {id} is already {done}, nothing to complete"
                ))
            }
        };
        inner.apply(id, step);
        if step != Step::Open {
            return Ok(());
        }
    }
}

/// Moves a session to any status, as a Didit reviewer or Didit's own jobs would; a decision
/// status on a session with no data yet gets the data of a matching scenario.
fn set_status(inner: &mut Inner, id: Uuid, status: SessionStatus) {
    let fill = match status {
        SessionStatus::Approved => Some(Scenario::Approve),
        SessionStatus::Declined => Some(Scenario::DeclineFaceMismatch),
        SessionStatus::InReview => Some(Scenario::ReviewFaceMatchBorderline),
        _ => None,
    };
    let today = inner.now().date();
    if let (Some(scenario), Some(session)) = (fill, inner.sessions.get_mut(&id)) {
        if session
            .sections
            .get("id_verifications")
            .is_none_or(Value::is_null)
        {
            let outcome = scenarios::outcome(
                scenario,
                &Subject {
                    session_id: id,
                    today,
                    blocklisted: false,
                },
            );
            session.sections.extend(outcome.sections);
        }
    }
    inner.set_status(id, status, None);
}
