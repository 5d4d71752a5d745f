//! The sandbox's memory: sessions, workflows, webhook destinations, the account, and the
//! lifecycle that moves a session as if a user went through the hosted flow.
//!
//! Everything sits behind one `std::sync::Mutex`: every operation is short and never awaits
//! with it held. Session times follow the sandbox clock (the real clock plus an offset a test
//! can advance through `/sandbox/control`), so expiry can be shown without waiting an hour.
//! Status changes are pushed as webhook events while the lock is held, which keeps them in
//! the order they happened.
//!
//! A benchmark holds 100,000 waiting sessions here, so nothing that runs per request or per
//! tick walks all of them: the ticker pops due sessions from an index ordered by due time,
//! and session reuse looks the vendor up in an index by (workflow, vendor_data).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Map, Value};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use tokio::sync::mpsc::UnboundedSender;
use url::Url;
use uuid::Uuid;

use super::{
    limits::{Faults, Limiter, Stats},
    scenarios::{self, Scenario, Subject},
    webhooks::{Event, Target, WebhookStats},
    Contested, SandboxConfig, WORKFLOW_ID,
};
use didit::SessionStatus;

/// The application every sandbox session belongs to (the webhook's `application_id`).
pub const APPLICATION_ID: Uuid = Uuid::from_u128(0x0b5e7c1d_5a4d_4b0c_8d1e_5a4db0c0ffee);

/// Didit's default `session_expiration_time`: 7 days.
pub const DEFAULT_EXPIRATION_S: u64 = 604_800;

/// Didit's largest `session_expiration_time`: 4 weeks.
pub const MAX_EXPIRATION_S: u64 = 2_419_200;

/// The furthest `advance_clock` may move the sandbox clock in total: far enough for any
/// expiry, and far from the year 9999 where time arithmetic and RFC 3339 formatting fail.
pub const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(100 * 366 * 86_400);

/// The decision arrays of a KYC session, in Didit's order; each is `null` until produced.
pub const SECTIONS: [&str; 12] = [
    "id_verifications",
    "nfc_verifications",
    "liveness_checks",
    "face_matches",
    "phone_verifications",
    "email_verifications",
    "poa_verifications",
    "document_ai_documents",
    "questionnaire_responses",
    "aml_screenings",
    "ip_analyses",
    "database_validations",
];

/// What the HTTP layer and the background tasks share.
pub struct Shared {
    inner: Mutex<Inner>,
    pub webhook_stats: Arc<WebhookStats>,
}

impl Shared {
    /// `link_base` is the sandbox's own address: the hosted-flow links of its sessions
    /// point there (a sandbox session has no page at Didit).
    pub fn new(
        config: &SandboxConfig,
        events: UnboundedSender<Event>,
        link_base: Url,
    ) -> anyhow::Result<Self> {
        let now = OffsetDateTime::now_utc();
        let inner = Inner {
            link_base,
            api_key: config.api_key.clone(),
            key_revoked: false,
            balance: config.balance,
            webhook_url: config.webhook_url.clone(),
            webhook_secret: config.webhook_secret.clone(),
            complete_after: config.complete_after,
            min_expiration: config.min_expiration,
            clock_offset: Duration::ZERO,
            contested: config.contested,
            sessions: HashMap::new(),
            due: BTreeSet::new(),
            by_vendor: HashMap::new(),
            next_number: 1,
            workflows: vec![Workflow::new(
                WORKFLOW_ID,
                "Sandbox KYC",
                vec![
                    "OCR".into(),
                    "LIVENESS".into(),
                    "FACE_MATCH".into(),
                    "AML".into(),
                    "IP_ANALYSIS".into(),
                ],
                DEFAULT_EXPIRATION_S,
                now,
            )],
            destinations: Vec::new(),
            blocklisted_vendors: HashSet::new(),
            registrations: HashMap::new(),
            limiter: Limiter::new(&config.limits),
            faults: Faults::new(config.latency, config.error_rate),
            stats: Stats::default(),
            events,
        };
        Ok(Self {
            inner: Mutex::new(inner),
            webhook_stats: Arc::new(WebhookStats::default()),
        })
    }

    /// The state, even if a handler panicked while holding it: every mutation is a
    /// complete assignment, so a poisoned lock still holds consistent data.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Moves every session whose next step is due. Runs until the sandbox stops.
pub async fn drive_sessions(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.lock().advance_due();
    }
}

pub struct Inner {
    /// Where session links point: the sandbox itself (`{link_base}session/{token}`).
    link_base: Url,
    pub api_key: String,
    pub key_revoked: bool,
    /// USD.
    pub balance: f64,
    pub webhook_url: Option<Url>,
    pub webhook_secret: String,
    /// Change it with [`Inner::set_complete_after`], which reschedules the waiting sessions.
    complete_after: Duration,
    pub min_expiration: Duration,
    /// Only grows, up to [`MAX_CLOCK_OFFSET`]; see [`Inner::advance_clock`].
    clock_offset: Duration,
    pub contested: Contested,
    pub sessions: HashMap<Uuid, Session>,
    /// (due time, session) of every session with a step ahead; mirrors `Session::due_at`.
    due: BTreeSet<(OffsetDateTime, Uuid)>,
    /// (workflow, vendor_data) → its sessions, for Didit's reuse of an unfinished one.
    by_vendor: HashMap<(Uuid, String), Vec<Uuid>>,
    next_number: i64,
    pub workflows: Vec<Workflow>,
    pub destinations: Vec<Destination>,
    /// vendor_data whose face or document was blocklisted: later sessions are declined.
    pub blocklisted_vendors: HashSet<String>,
    /// E-mail → registered (waiting for the code) or verified.
    pub registrations: HashMap<String, bool>,
    pub limiter: Limiter,
    pub faults: Faults,
    pub stats: Stats,
    events: UnboundedSender<Event>,
}

pub struct Session {
    pub id: Uuid,
    pub number: i64,
    pub token: String,
    pub url: String,
    /// The workflow's stable id (shared by its versions).
    pub workflow_id: Uuid,
    pub workflow_version: i64,
    /// The id of the version it runs (`settings_uuid`), whose steps and expiration apply.
    pub workflow_uuid: Uuid,
    pub vendor_data: Option<String>,
    pub metadata: Value,
    pub callback: Option<String>,
    pub expected_details: Value,
    pub contact_details: Value,
    pub scenario: Scenario,
    pub status: SessionStatus,
    /// Whether the simulated user is still going: false once a final status is reached or
    /// a test set the status by hand.
    pub auto: bool,
    /// When the current run of the flow started (creation or resubmission).
    pub phase_start: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub sections: Map<String, Value>,
    pub reviews: Vec<Value>,
    /// The nodes of the last resubmission, echoed as the webhook's `resubmit_info`.
    pub resubmitted_nodes: Vec<Value>,
    /// When the next step is due, as entered in `Inner::due`.
    due_at: Option<OffsetDateTime>,
}

/// The transitions the simulated user (or time) makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Open,
    Finish,
    Expire,
}

impl Session {
    fn due_step(&self, now: OffsetDateTime, complete_after: Duration) -> Option<Step> {
        if !self.auto {
            return None;
        }
        if self.status.is_reusable() && now >= self.expires_at {
            return Some(Step::Expire);
        }
        let elapsed = now - self.phase_start;
        match self.status {
            SessionStatus::NotStarted | SessionStatus::Resubmitted
                if elapsed >= complete_after / 2 =>
            {
                (!self.never_opens()).then_some(Step::Open)
            }
            SessionStatus::InProgress
                if elapsed >= complete_after && self.scenario != Scenario::Abandon =>
            {
                Some(Step::Finish)
            }
            _ => None,
        }
    }

    fn never_opens(&self) -> bool {
        self.status == SessionStatus::NotStarted && self.scenario == Scenario::Expire
    }

    /// The earliest time at which `due_step` returns a step, if any: the same conditions,
    /// solved for `now`. A time beyond what `OffsetDateTime` holds means never.
    fn next_due(&self, complete_after: Duration) -> Option<OffsetDateTime> {
        if !self.auto {
            return None;
        }
        let after = |d: Duration| {
            time::Duration::try_from(d)
                .ok()
                .and_then(|d| self.phase_start.checked_add(d))
        };
        let step = match self.status {
            SessionStatus::NotStarted | SessionStatus::Resubmitted if !self.never_opens() => {
                after(complete_after / 2)
            }
            SessionStatus::InProgress if self.scenario != Scenario::Abandon => {
                after(complete_after)
            }
            _ => None,
        };
        let expiry = self.status.is_reusable().then_some(self.expires_at);
        step.into_iter().chain(expiry).min()
    }

    pub fn row_json(&self) -> Value {
        let id = self.sections.get("id_verifications").and_then(|v| v.get(0));
        let features: Vec<Value> = [
            ("id_verifications", "ID_VERIFICATION"),
            ("liveness_checks", "LIVENESS"),
            ("face_matches", "FACE_MATCH"),
            ("aml_screenings", "AML"),
            ("ip_analyses", "IP_ANALYSIS"),
        ]
        .into_iter()
        .filter_map(|(section, feature)| {
            let item = self.sections.get(section)?.get(0)?;
            Some(json!({"feature": feature, "status": item["status"]}))
        })
        .collect();
        json!({
            "session_id": self.id,
            "session_kind": "user",
            "session_number": self.number,
            "session_url": self.url,
            "portrait_image": id.and_then(|i| i.get("portrait_image")).cloned(),
            "document_type": id.and_then(|i| i.get("document_type")).cloned(),
            "full_name": id.and_then(|i| i.get("full_name")).cloned(),
            "country": id.and_then(|i| i.get("issuing_state")).cloned(),
            "status": self.status.as_str(),
            "vendor_data": self.vendor_data,
            "didit_internal_id": Uuid::new_v5(&APPLICATION_ID, self.id.as_bytes()),
            "created_at": rfc3339(self.created_at),
            "features": features,
            "phone_number": null,
            "email_address": null,
            "additional_details": null,
        })
    }
}

/// One version of a workflow: Didit lists, reads and runs versions; `workflow_id` groups
/// them and `uuid` (the `settings_uuid`) names one.
pub struct Workflow {
    pub uuid: Uuid,
    /// The stable id shared by every version (equals `uuid` for version 1).
    pub workflow_id: Uuid,
    pub version: i64,
    pub label: String,
    pub features: Vec<String>,
    pub session_expiration_s: u64,
    pub max_retry_attempts: u64,
    pub created_at: OffsetDateTime,
}

impl Workflow {
    pub fn new(
        uuid: Uuid,
        label: &str,
        features: Vec<String>,
        session_expiration_s: u64,
        created_at: OffsetDateTime,
    ) -> Self {
        Self {
            uuid,
            workflow_id: uuid,
            version: 1,
            label: label.to_owned(),
            features,
            session_expiration_s,
            max_retry_attempts: 3,
            created_at,
        }
    }

    /// The next published version: a new `uuid` and `version` + 1 under the same
    /// `workflow_id`, with the same settings until the caller changes them.
    pub fn next_version(&self, created_at: OffsetDateTime) -> Self {
        Self {
            uuid: Uuid::new_v4(),
            workflow_id: self.workflow_id,
            version: self.version + 1,
            label: self.label.clone(),
            features: self.features.clone(),
            session_expiration_s: self.session_expiration_s,
            max_retry_attempts: self.max_retry_attempts,
            created_at,
        }
    }

    /// The decision arrays this workflow's steps fill.
    fn produces(&self, section: &str) -> bool {
        let feature = match section {
            "id_verifications" => "OCR",
            "liveness_checks" => "LIVENESS",
            "face_matches" => "FACE_MATCH",
            "aml_screenings" => "AML",
            "ip_analyses" => "IP_ANALYSIS",
            _ => return false,
        };
        self.features.iter().any(|f| f == feature)
    }

    /// Display names of the decision's `features`.
    fn display_features(&self) -> Vec<&'static str> {
        self.features
            .iter()
            .filter_map(|f| {
                Some(match f.as_str() {
                    "OCR" => "ID_VERIFICATION",
                    "NFC" => "NFC",
                    "LIVENESS" => "LIVENESS",
                    "FACE_MATCH" => "FACE_MATCH",
                    "PROOF_OF_ADDRESS" => "POA",
                    "PHONE_VERIFICATION" => "PHONE",
                    "EMAIL_VERIFICATION" => "EMAIL_VERIFICATION",
                    "AML" => "AML",
                    "IP_ANALYSIS" => "IP_ANALYSIS",
                    "DATABASE_VALIDATION" => "DATABASE_VALIDATION",
                    "QUESTIONNAIRE" => "QUESTIONNAIRE",
                    "AGE_ESTIMATION" => "AGE_ESTIMATION",
                    _ => return None,
                })
            })
            .collect()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "uuid": self.uuid,
            "workflow_id": self.workflow_id,
            "workflow_label": self.label,
            "workflow_type": "kyc",
            "is_default": self.workflow_id == WORKFLOW_ID,
            "is_archived": false,
            "is_white_label_enabled": false,
            "total_price": 0.0,
            "min_price": 0.0,
            "max_price": 0.0,
            "features": self.features.join(" + "),
            "is_simple_workflow": true,
            "is_editable": true,
            "workflow_url": format!("https://verify.didit.me/u/{}", self.uuid.simple()),
            "max_retry_attempts": self.max_retry_attempts,
            "retry_window_days": 7,
            "session_expiration_time": self.session_expiration_s,
            "version": self.version,
            "status": "published",
            "has_draft": false,
            "created_by": {"name": "API Client", "email": null, "type": "api_key"},
            "updated_at": rfc3339(self.created_at),
        })
    }
}

pub struct Destination {
    pub uuid: Uuid,
    pub label: String,
    pub url: Url,
    pub webhook_version: String,
    pub subscribed_events: Vec<String>,
    pub secret: String,
    pub created_at: OffsetDateTime,
}

impl Destination {
    /// The listing form: never the secret.
    pub fn to_json(&self) -> Value {
        json!({
            "uuid": self.uuid,
            "label": self.label,
            "url": self.url.as_str(),
            "enabled": true,
            "webhook_version": self.webhook_version,
            "subscribed_events": self.subscribed_events,
            "subscribed_events_count": self.subscribed_events.len(),
            "deliveries_count": 0,
            "failed_deliveries_count": 0,
            "average_response_time_ms": null,
            "error_rate_percentage": 0,
            "last_delivery_at": null,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.created_at),
        })
    }
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .expect("a UTC time within year 0..9999 always formats as RFC 3339")
}

/// What a create request asks for, already validated.
pub struct NewSession {
    pub workflow_id: Uuid,
    pub vendor_data: Option<String>,
    pub metadata: Value,
    pub callback: Option<String>,
    pub language: Option<String>,
    pub expected_details: Value,
    pub contact_details: Value,
    pub scenario: Scenario,
}

impl Inner {
    pub fn now(&self) -> OffsetDateTime {
        // `advance_clock` keeps the offset within MAX_CLOCK_OFFSET, a century short of the
        // year 9999 where this addition would panic.
        OffsetDateTime::now_utc() + self.clock_offset
    }

    /// Moves the sandbox clock forward and takes every step that became due. Refuses a jump
    /// that would take the total offset past [`MAX_CLOCK_OFFSET`].
    pub fn advance_clock(&mut self, by: Duration) -> Result<(), String> {
        self.clock_offset = self
            .clock_offset
            .checked_add(by)
            .filter(|offset| *offset <= MAX_CLOCK_OFFSET)
            .ok_or_else(|| {
                format!(
                    "the sandbox clock can move at most {} s ahead in total, {} s already used",
                    MAX_CLOCK_OFFSET.as_secs(),
                    self.clock_offset.as_secs()
                )
            })?;
        self.advance_due();
        Ok(())
    }

    /// Puts the session at its place in the due index (or takes it out when nothing is
    /// ahead); to be called after anything that changes its status, phase or scenario.
    pub fn schedule(&mut self, id: Uuid) {
        let complete_after = self.complete_after;
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let next = session.next_due(complete_after);
        if let Some(old) = std::mem::replace(&mut session.due_at, next) {
            self.due.remove(&(old, id));
        }
        if let Some(at) = next {
            self.due.insert((at, id));
        }
    }

    /// Changes how long a flow takes; every waiting session moves to its new due time.
    pub fn set_complete_after(&mut self, complete_after: Duration) {
        self.complete_after = complete_after;
        let waiting: Vec<Uuid> = self.due.iter().map(|(_, id)| *id).collect();
        for id in waiting {
            self.schedule(id);
        }
    }

    /// Forgets a session (Didit's delete).
    pub fn remove_session(&mut self, id: Uuid) -> Option<Session> {
        let session = self.sessions.remove(&id)?;
        if let Some(at) = session.due_at {
            self.due.remove(&(at, id));
        }
        if let Some(vendor) = &session.vendor_data {
            let key = (session.workflow_id, vendor.clone());
            if let Some(ids) = self.by_vendor.get_mut(&key) {
                ids.retain(|other| *other != id);
                if ids.is_empty() {
                    self.by_vendor.remove(&key);
                }
            }
        }
        Some(session)
    }

    /// One workflow version by its own id (`settings_uuid`), as `GET /v3/workflows/{id}/`
    /// reads it.
    pub fn workflow(&self, id: Uuid) -> Option<&Workflow> {
        self.workflows.iter().find(|w| w.uuid == id)
    }

    /// The version a session created with `id` runs: the latest version of the workflow
    /// whose stable id it is (a first version's `uuid` is that id too), else the version
    /// whose own id it is.
    pub fn version_for(&self, id: Uuid) -> Option<&Workflow> {
        self.latest_version(id).or_else(|| self.workflow(id))
    }

    /// The latest version of a workflow, by its stable id.
    pub fn latest_version(&self, workflow_id: Uuid) -> Option<&Workflow> {
        self.workflows
            .iter()
            .filter(|w| w.workflow_id == workflow_id)
            .max_by_key(|w| w.version)
    }

    /// The session a hosted-flow link names.
    pub fn session_by_token(&self, token: &str) -> Option<&Session> {
        self.sessions.values().find(|s| s.token == token)
    }

    /// Creates a session, or returns the unfinished one of the same vendor_data on the same
    /// workflow with its metadata and callback overwritten (Didit's only idempotency).
    /// The bool says whether it is new.
    pub fn create_session(&mut self, new: NewSession) -> (Uuid, bool) {
        self.create_session_as(new, None)
    }

    /// [`Inner::create_session`], or with `seeded`, a new session under that id and no reuse:
    /// a test that restores records of sessions created elsewhere (an earlier sandbox)
    /// seeds them by their ids, as they were.
    pub fn create_session_as(&mut self, new: NewSession, seeded: Option<Uuid>) -> (Uuid, bool) {
        let (workflow_id, version, workflow_uuid, expiration) =
            match self.version_for(new.workflow_id) {
                Some(w) => (w.workflow_id, w.version, w.uuid, w.session_expiration_s),
                None => (new.workflow_id, 1, new.workflow_id, DEFAULT_EXPIRATION_S),
            };
        // Reused only on the workflow's latest version: a republished workflow starts afresh.
        let latest = self.latest_version(workflow_id).map(|w| w.uuid);
        if let (Some(vendor), None) = (&new.vendor_data, seeded) {
            let reusable = self
                .by_vendor
                .get(&(workflow_id, vendor.clone()))
                .into_iter()
                .flatten()
                .filter_map(|id| self.sessions.get(id))
                .filter(|s| s.status.is_reusable())
                .filter(|s| latest.is_none_or(|l| s.workflow_uuid == l))
                .max_by_key(|s| s.number)
                .map(|s| s.id);
            if let Some(existing) = reusable.and_then(|id| self.sessions.get_mut(&id)) {
                existing.metadata = new.metadata;
                existing.callback = new.callback;
                self.stats.sessions_reused += 1;
                return (existing.id, false);
            }
        }
        let now = self.now();
        let id = seeded.unwrap_or_else(Uuid::new_v4);
        let token = Alphanumeric.sample_string(&mut rand::rng(), 12);
        let path = match &new.language {
            Some(lang) => format!("{lang}/session/{token}"),
            None => format!("session/{token}"),
        };
        let url = self
            .link_base
            .join(&path)
            .map(String::from)
            .unwrap_or_else(|_| format!("{}{path}", self.link_base));
        let number = self.next_number;
        self.next_number += 1;
        let session = Session {
            id,
            number,
            token,
            url,
            workflow_id,
            workflow_version: version,
            workflow_uuid,
            vendor_data: new.vendor_data,
            metadata: new.metadata,
            callback: new.callback,
            expected_details: new.expected_details,
            contact_details: new.contact_details,
            scenario: new.scenario,
            status: SessionStatus::NotStarted,
            auto: true,
            phase_start: now,
            created_at: now,
            expires_at: now + Duration::from_secs(expiration),
            sections: Map::new(),
            reviews: Vec::new(),
            resubmitted_nodes: Vec::new(),
            due_at: None,
        };
        if let Some(vendor) = &session.vendor_data {
            self.by_vendor
                .entry((session.workflow_id, vendor.clone()))
                .or_default()
                .push(id);
        }
        self.sessions.insert(id, session);
        self.schedule(id);
        self.stats.sessions_created += 1;
        (id, true)
    }

    /// Moves the sessions whose next step is due, and only those: O(due), not O(sessions).
    pub fn advance_due(&mut self) {
        let now = self.now();
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            if let Some(session) = self.sessions.get_mut(&id) {
                session.due_at = None;
            }
            due.push(id);
        }
        for id in due {
            self.advance(id);
            // Steps reschedule the session; this also re-enters one that owed none.
            self.schedule(id);
        }
    }

    /// Takes every step of one session that is due, so a read right at `complete_after`
    /// does not wait for the next tick.
    pub fn advance(&mut self, id: Uuid) {
        let now = self.now();
        // A session can owe several steps after a long pause or a clock jump.
        while let Some(step) = self
            .sessions
            .get(&id)
            .and_then(|s| s.due_step(now, self.complete_after))
        {
            self.apply(id, step);
        }
    }

    /// Takes one step of the simulated flow and announces the new status.
    pub fn apply(&mut self, id: Uuid, step: Step) {
        let today = self.now().date();
        let blocklisted = self
            .sessions
            .get(&id)
            .and_then(|s| s.vendor_data.as_ref())
            .is_some_and(|v| self.blocklisted_vendors.contains(v));
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let workflow = self.workflow(session.workflow_uuid);
        let produces = |section: &str| workflow.is_none_or(|w| w.produces(section));
        let (status, sections, auto) = match step {
            Step::Open => {
                let mut sections = session.sections.clone();
                if produces("ip_analyses") {
                    sections.insert("ip_analyses".into(), scenarios::ip_analysis(id));
                }
                (SessionStatus::InProgress, sections, true)
            }
            Step::Finish => {
                let outcome = scenarios::outcome(
                    session.scenario,
                    &Subject {
                        session_id: id,
                        today,
                        blocklisted,
                    },
                );
                let sections = outcome
                    .sections
                    .into_iter()
                    .filter(|(k, _)| produces(k))
                    .collect();
                (outcome.status, sections, false)
            }
            Step::Expire => {
                let status = if session.status == SessionStatus::NotStarted {
                    SessionStatus::Expired
                } else {
                    SessionStatus::Abandoned
                };
                (status, session.sections.clone(), false)
            }
        };
        if let Some(session) = self.sessions.get_mut(&id) {
            session.status = status;
            session.sections = sections;
            session.auto = auto;
        }
        self.schedule(id);
        self.announce(id);
    }

    /// Sets a status by hand (update-status or a test's control action).
    pub fn set_status(&mut self, id: Uuid, status: SessionStatus, review: Option<Value>) {
        let now = self.now();
        let expiration = self
            .sessions
            .get(&id)
            .and_then(|s| self.workflow(s.workflow_uuid))
            .map_or(DEFAULT_EXPIRATION_S, |w| w.session_expiration_s);
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if status == SessionStatus::Resubmitted {
            // The user redoes the selected steps from the same link; expiry restarts.
            for node in &session.resubmitted_nodes {
                if let Some(section) = node["section"].as_str() {
                    session.sections.insert(section.to_owned(), Value::Null);
                }
            }
            session.auto = true;
            session.phase_start = now;
            session.expires_at = now + Duration::from_secs(expiration);
        } else {
            session.auto = matches!(
                status,
                SessionStatus::NotStarted | SessionStatus::InProgress
            );
            if session.auto {
                session.phase_start = now;
            }
        }
        session.status = status;
        if let Some(review) = review {
            session.reviews.push(review);
        }
        self.schedule(id);
        self.announce(id);
    }

    /// The decision as `GET /v3/session/{id}/decision/` returns it.
    pub fn decision_json(&self, session: &Session) -> Value {
        let workflow = self.workflow(session.workflow_uuid);
        let mut d = Map::new();
        d.insert("session_id".into(), json!(session.id));
        d.insert("session_kind".into(), json!("user"));
        d.insert("session_number".into(), json!(session.number));
        d.insert("session_url".into(), json!(session.url));
        d.insert("status".into(), json!(session.status.as_str()));
        d.insert("environment".into(), json!("sandbox"));
        d.insert("workflow_id".into(), json!(session.workflow_id));
        d.insert(
            "features".into(),
            json!(workflow.map(Workflow::display_features).unwrap_or_default()),
        );
        d.insert("vendor_data".into(), json!(session.vendor_data));
        d.insert("metadata".into(), session.metadata.clone());
        d.insert("expected_details".into(), session.expected_details.clone());
        d.insert("contact_details".into(), session.contact_details.clone());
        d.insert("callback".into(), json!(session.callback));
        for section in SECTIONS {
            d.insert(
                section.into(),
                session
                    .sections
                    .get(section)
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        d.insert("reviews".into(), json!(session.reviews));
        d.insert("created_at".into(), json!(rfc3339(session.created_at)));
        d.insert("expires_at".into(), json!(rfc3339(session.expires_at)));
        Value::Object(d)
    }

    /// Queues a `status.updated` webhook for the session's current status to every target.
    fn announce(&mut self, id: Uuid) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let mut targets: Vec<Target> = self
            .webhook_url
            .iter()
            .map(|url| Target {
                url: url.clone(),
                secret: self.webhook_secret.clone(),
            })
            .collect();
        targets.extend(
            self.destinations
                .iter()
                .filter(|d| d.subscribed_events.iter().any(|e| e == "status.updated"))
                .map(|d| Target {
                    url: d.url.clone(),
                    secret: d.secret.clone(),
                }),
        );
        if targets.is_empty() {
            return;
        }
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let mut payload = Map::new();
        payload.insert("event_id".into(), json!(Uuid::new_v4()));
        payload.insert("webhook_type".into(), json!("status.updated"));
        payload.insert("timestamp".into(), json!(timestamp));
        payload.insert("created_at".into(), json!(timestamp));
        payload.insert("application_id".into(), json!(APPLICATION_ID));
        payload.insert("environment".into(), json!("sandbox"));
        payload.insert("session_id".into(), json!(session.id));
        payload.insert("status".into(), json!(session.status.as_str()));
        payload.insert("workflow_id".into(), json!(session.workflow_id));
        payload.insert("workflow_version".into(), json!(session.workflow_version));
        if let Some(vendor) = &session.vendor_data {
            payload.insert("vendor_data".into(), json!(vendor));
        }
        if !session.metadata.is_null() {
            payload.insert("metadata".into(), session.metadata.clone());
        }
        if matches!(
            session.status,
            SessionStatus::Approved
                | SessionStatus::Declined
                | SessionStatus::InReview
                | SessionStatus::Abandoned
        ) {
            payload.insert("decision".into(), self.decision_json(session));
        }
        if session.status == SessionStatus::Resubmitted {
            let nodes: Vec<Value> = session
                .resubmitted_nodes
                .iter()
                .map(|n| json!({"node_id": n["node_id"], "feature": n["feature"]}))
                .collect();
            payload.insert(
                "resubmit_info".into(),
                json!({"nodes_to_resubmit": nodes, "reasons": {}}),
            );
        }
        // The receiver lives as long as the sandbox; a send fails only while stopping.
        let _ = self.events.send(Event {
            session_id: id,
            payload: Value::Object(payload),
            targets,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_link_base() -> Url {
        Url::parse("http://127.0.0.1:8089/").expect("url")
    }

    #[test]
    fn session_links_point_at_the_sandbox() {
        let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Shared::new(
            &SandboxConfig::for_tests(Duration::from_secs(60)),
            events,
            test_link_base(),
        )
        .expect("state");
        let mut inner = shared.lock();
        let (id, _) = inner.create_session(new_session("linked"));
        let session = &inner.sessions[&id];
        assert_eq!(
            session.url,
            format!("http://127.0.0.1:8089/session/{}", session.token)
        );
        assert_eq!(
            inner.session_by_token(&session.token).map(|s| s.id),
            Some(id)
        );
    }

    fn new_session(vendor: &str) -> NewSession {
        NewSession {
            workflow_id: WORKFLOW_ID,
            vendor_data: Some(vendor.to_owned()),
            metadata: Value::Null,
            callback: None,
            language: None,
            expected_details: Value::Null,
            contact_details: Value::Null,
            scenario: Scenario::Approve,
        }
    }

    #[test]
    fn the_due_index_holds_exactly_the_sessions_with_a_step_ahead() {
        let (events, _receiver) = tokio::sync::mpsc::unbounded_channel();
        let shared = Shared::new(
            &SandboxConfig::for_tests(Duration::from_secs(60)),
            events,
            test_link_base(),
        )
        .expect("state");
        let mut inner = shared.lock();
        let ids: Vec<Uuid> = (0..3)
            .map(|n| inner.create_session(new_session(&format!("v{n}"))).0)
            .collect();
        assert_eq!(inner.due.len(), 3);
        assert_eq!(
            inner.create_session(new_session("v0")),
            (ids[0], false),
            "an unfinished session is found through the vendor index"
        );

        inner.advance_due();
        assert_eq!(inner.due.len(), 3, "nothing was due yet");
        inner.remove_session(ids[2]);
        assert_eq!(inner.due.len(), 2);

        inner
            .advance_clock(Duration::from_secs(30))
            .expect("a short jump");
        assert!(ids[..2]
            .iter()
            .all(|id| inner.sessions[id].status == SessionStatus::InProgress));
        assert_eq!(inner.due.len(), 2, "each now waits for its finish");

        inner.set_complete_after(Duration::from_secs(1));
        inner.advance_due();
        assert!(ids[..2]
            .iter()
            .all(|id| inner.sessions[id].status == SessionStatus::Approved));
        assert!(inner.due.is_empty(), "final sessions leave the index");
        assert!(inner.sessions.values().all(|s| s.due_at.is_none()));
    }

    #[test]
    fn the_clock_refuses_to_move_past_its_bound_and_keeps_its_offset() {
        let (events, _receiver) = tokio::sync::mpsc::unbounded_channel();
        let shared = Shared::new(
            &SandboxConfig::for_tests(Duration::ZERO),
            events,
            test_link_base(),
        )
        .expect("state");
        let mut inner = shared.lock();
        inner
            .advance_clock(Duration::from_secs(86_400))
            .expect("a day");
        assert!(inner.advance_clock(Duration::MAX).is_err());
        assert!(inner.advance_clock(MAX_CLOCK_OFFSET).is_err());
        assert_eq!(inner.clock_offset, Duration::from_secs(86_400));
        assert!(inner.now() > OffsetDateTime::now_utc());
    }
}
