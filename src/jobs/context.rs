//! What every handler needs: Didit, the queue, the store, settings; and the shared steps.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use didit::{types::Decision, DiditClient, DiditError, Endpoint, ErrorClass};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    domain::{
        AccountPause, Decider, EventStatus, EventType, OutcomeEvent, PollSchedule, RequestId,
        SessionStatus,
    },
    metrics::Metrics,
    queue::{now_ms, JobError, Queue, QueueError},
    ratelimit::{Priority, RateLimiter},
    rules::RuleSet,
    settings::Settings,
    store::{SessionRecord, Store, StoreError},
};

use super::PollDecision;

/// The handlers' shared state. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Pipeline {
    pub didit: DiditClient,
    pub queue: Queue,
    pub store: Store,
    pub limiter: RateLimiter,
    pub metrics: Arc<Metrics>,
    pub rules: Arc<RuleSet>,
    pub settings: Arc<Settings>,
    /// Session expiration per (workflow, version), read from Didit once per process and
    /// version: a republished workflow is a new version, read when a session runs on it.
    expirations: Arc<Mutex<HashMap<(Uuid, i64), Duration>>>,
    /// One expiration read at a time, so a burst of starts on a new process reads a
    /// workflow once rather than once per job.
    expiration_read: Arc<tokio::sync::Mutex<()>>,
    /// The fleet-wide pause as last read, and when: read at most once per
    /// [`PAUSE_FRESH`] instead of once per job.
    pause_seen: Arc<Mutex<Option<(Instant, bool)>>>,
}

/// How long a read of the fleet-wide pause is trusted. A job that starts inside this window
/// after another process paused the fleet makes at most one call Didit refuses for the
/// same reason, which pauses this process too; nothing is lost.
const PAUSE_FRESH: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

/// Didit's default `session_expiration_time`.
const DEFAULT_EXPIRATION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Pipeline {
    pub fn new(
        didit: DiditClient,
        queue: Queue,
        store: Store,
        limiter: RateLimiter,
        metrics: Arc<Metrics>,
        rules: Arc<RuleSet>,
        settings: Arc<Settings>,
    ) -> Self {
        for rule in rules.rules.iter().chain(rules.workflows.values().flatten()) {
            metrics
                .rule_matches
                .with_label_values(&[&rule.name, rule.action.name()]);
        }
        Self {
            rules,
            didit,
            queue,
            store,
            limiter,
            metrics,
            settings,
            expirations: Arc::new(Mutex::new(HashMap::new())),
            expiration_read: Arc::new(tokio::sync::Mutex::new(())),
            pause_seen: Arc::new(Mutex::new(None)),
        }
    }

    /// The poll schedule in force (webhooks on or off).
    pub fn schedule(&self) -> PollSchedule {
        if self.settings.didit.webhooks {
            self.settings.poll.with_webhooks
        } else {
            self.settings.poll.polling_only
        }
    }

    /// Makes one Didit call inside the fleet's rate limit. The outer error means "not now"
    /// (no budget, or Redis unreachable): the job re-schedules without blocking a worker.
    /// The inner result is Didit's answer; a 429 also pauses the call's scopes fleet-wide.
    pub async fn call<T, F, Fut>(
        &self,
        endpoint: Endpoint,
        priority: Priority,
        call: F,
    ) -> Result<Result<T, DiditError>, JobError>
    where
        F: FnOnce(DiditClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, DiditError>>,
    {
        if let Some(wait) = self.limiter.acquire(endpoint.scopes(), priority).await? {
            for scope in endpoint.scopes() {
                self.metrics
                    .rate_limit_deferred
                    .with_label_values(&[scope.as_str()])
                    .inc();
            }
            return Err(JobError::Wait {
                reason: format!("Didit budget for {endpoint} used up"),
                // Every job refused now is told the same instant (the window's next free
                // slot, a 429 pause's end): spread them so they do not return together.
                after: spread_wait(wait),
            });
        }
        let result = call(self.didit.clone()).await;
        if let Err(e) = &result {
            if e.is_rate_limited() {
                for scope in endpoint.scopes() {
                    self.metrics
                        .didit_rate_limited
                        .with_label_values(&[scope.as_str()])
                        .inc();
                }
                let wait = e.retry_after().unwrap_or(Duration::from_secs(5));
                tracing::warn!(endpoint = %endpoint, wait_ms = wait.as_millis() as u64, "Didit answered 429: pausing these calls fleet-wide");
                if let Err(e) = self.limiter.pause(endpoint.scopes(), wait).await {
                    tracing::warn!(error = %e, "could not record the rate-limit pause");
                }
            }
        }
        Ok(result)
    }

    /// The session expiration of a workflow version (`version` as Didit's create response
    /// gives it; `None`: the latest published version); Didit's default when it cannot be
    /// read.
    ///
    /// Didit reads a workflow by the version's own id (`settings_uuid`), which only the
    /// rows of `GET /v3/workflows/` give: one list call finds the version's row, whose
    /// `session_expiration_time` is the answer (a row without it is read by its id). Every
    /// version the list shows is remembered, so a burst of sessions reads the list once and
    /// a republished workflow is read again when its first session arrives.
    pub async fn expiration(&self, workflow: Uuid, version: Option<i64>) -> Duration {
        let cached = |version: i64| {
            self.expirations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(workflow, version))
                .copied()
        };
        if let Some(d) = version.and_then(cached) {
            return d;
        }
        let _one_at_a_time = self.expiration_read.lock().await;
        if let Some(d) = version.and_then(cached) {
            return d;
        }
        match self.read_expiration(workflow, version).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                tracing::debug!(workflow = %workflow, ?version, "workflow version not listed; using Didit's default expiration");
                DEFAULT_EXPIRATION
            }
            Err(e) => {
                tracing::debug!(error = %e, "workflow expiration not read now; using Didit's default");
                DEFAULT_EXPIRATION
            }
        }
    }

    /// Lists the workflows, remembers every version's expiration and returns the asked one.
    async fn read_expiration(
        &self,
        workflow: Uuid,
        version: Option<i64>,
    ) -> Result<Option<Duration>, String> {
        let page = self
            .call(Endpoint::ListWorkflows, Priority::High, |d| async move {
                d.list_workflows().await
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let rows: Vec<_> = page
            .results
            .into_iter()
            .filter(|w| w.stable_id() == workflow || w.uuid == workflow)
            .collect();
        {
            let mut cache = self.expirations.lock().unwrap_or_else(|e| e.into_inner());
            for row in &rows {
                if let (Some(v), Some(s)) = (row.version, row.session_expiration_time) {
                    cache.insert((workflow, v), Duration::from_secs(s));
                }
            }
        }
        let row = match version {
            Some(v) => rows.into_iter().find(|w| w.version == Some(v)),
            None => rows
                .into_iter()
                .filter(|w| w.status.as_deref() != Some("draft"))
                .max_by_key(|w| w.version),
        };
        let Some(row) = row else {
            return Ok(None);
        };
        if let Some(s) = row.session_expiration_time {
            return Ok(Some(Duration::from_secs(s)));
        }
        let id = row.uuid;
        let read = self
            .call(Endpoint::GetWorkflow, Priority::High, |d| async move {
                d.get_workflow(id).await
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let d = read
            .session_expiration_time
            .map_or(DEFAULT_EXPIRATION, Duration::from_secs);
        if let Some(v) = row.version {
            self.expirations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((workflow, v), d);
        }
        Ok(Some(d))
    }

    /// Schedules the session's next poll in its one slot, unless an earlier one is there.
    pub async fn schedule_poll(
        &self,
        session_id: Uuid,
        polls: u32,
        after: Duration,
    ) -> Result<(), JobError> {
        self.queue
            .push_no_later(
                &PollDecision::slot(session_id),
                &PollDecision {
                    session_id,
                    polls,
                    urgent: false,
                },
                SystemTime::now() + after,
            )
            .await?;
        Ok(())
    }

    /// Returns the wait to apply when Didit calls are paused fleet-wide.
    pub async fn paused(&self) -> Result<Option<Duration>, JobError> {
        let seen = *self.pause_seen.lock().unwrap_or_else(|e| e.into_inner());
        let paused = match seen {
            Some((at, paused)) if at.elapsed() < PAUSE_FRESH => paused,
            _ => {
                let paused = self.store.pause().await?.is_some();
                self.saw_pause(paused);
                paused
            }
        };
        Ok(paused.then_some(self.settings.poll.pause_recheck))
    }

    fn saw_pause(&self, paused: bool) {
        *self.pause_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), paused));
    }

    /// Maps a Didit failure to the queue's language, pausing the fleet on account errors.
    pub async fn didit_failure(&self, error: DiditError) -> JobError {
        if error.is_malformed_response() {
            // A body we cannot read is more likely a proxy than a permanent answer, but it
            // is not Didit's throttling either: retry, counting attempts.
            return JobError::Retry {
                reason: error.to_string(),
                after: None,
            };
        }
        match error.class() {
            ErrorClass::Retryable { retry_after } => JobError::Wait {
                reason: error.to_string(),
                // Didit's own floor when it gave one; else about 5 s, spread so that jobs
                // failing together (an outage) do not come back in lockstep.
                after: retry_after
                    .map(spread_wait)
                    .unwrap_or_else(|| {
                        use rand::Rng;
                        Duration::from_secs(5).mul_f64(rand::rng().random_range(0.8..1.2))
                    })
                    .max(Duration::from_millis(100)),
            },
            ErrorClass::Account(pause) => {
                self.saw_pause(true);
                if let Ok(true) = self.store.set_pause(pause).await {
                    tracing::error!(reason = pause.as_str(), error = %error, "Didit calls paused for the whole fleet");
                }
                JobError::Wait {
                    reason: format!("Didit calls paused: {}", pause.as_str()),
                    after: self.settings.poll.pause_recheck,
                }
            }
            ErrorClass::Request => JobError::Fatal(error.to_string()),
        }
    }

    /// Publishes the event a status produces for every request the session answers.
    pub async fn publish_status(
        &self,
        session_id: Uuid,
        session: &SessionRecord,
        status: &SessionStatus,
        decider: &Decider,
        data: Value,
    ) -> Result<(), JobError> {
        let events = self
            .status_events(session_id, session, status, decider, data)
            .await?;
        self.publish_all(&events).await
    }

    /// The events a status produces for every request the session answers, in the
    /// session's change round, with the review queue kept in step (In Review enters it, any
    /// other status leaves it).
    pub async fn status_events(
        &self,
        session_id: Uuid,
        session: &SessionRecord,
        status: &SessionStatus,
        decider: &Decider,
        data: Value,
    ) -> Result<Vec<OutcomeEvent>, JobError> {
        let Some(kind) = EventType::for_status(status) else {
            return Ok(Vec::new());
        };
        self.store
            .track_review(session_id, session, status, &decider.label(), &data)
            .await?;
        self.events_to_all(session_id, session, kind, status, decider, data)
            .await
    }

    /// Publishes `kyc.session.resubmission_requested` for every request the session answers
    /// (`data`: the nodes, the reason, who asked), in the session's change round.
    pub async fn publish_resubmission(
        &self,
        session_id: Uuid,
        session: &SessionRecord,
        decider: &Decider,
        data: Value,
    ) -> Result<(), JobError> {
        let events = self
            .events_to_all(
                session_id,
                session,
                EventType::ResubmissionRequested,
                &SessionStatus::Resubmitted,
                decider,
                data,
            )
            .await?;
        self.publish_all(&events).await
    }

    /// One event for every request the session answers, in the session's change round.
    pub async fn events_to_all(
        &self,
        session_id: Uuid,
        session: &SessionRecord,
        kind: EventType,
        status: &SessionStatus,
        decider: &Decider,
        data: Value,
    ) -> Result<Vec<OutcomeEvent>, JobError> {
        let mut events = Vec::with_capacity(session.requests.len());
        for request in &session.requests {
            let vendor_data = self.vendor_data(session, request).await?;
            let event = OutcomeEvent::new(
                kind,
                request.clone(),
                Some(session_id),
                vendor_data,
                status.clone().into(),
                decider,
                data.clone(),
            )
            .in_round(session.round);
            events.push(event);
        }
        Ok(events)
    }

    async fn publish_all(&self, events: &[OutcomeEvent]) -> Result<(), JobError> {
        for event in events {
            self.publish(event).await?;
        }
        Ok(())
    }

    /// The person a session's request verifies: from the session record, else (a record
    /// written before it carried it) from the request's.
    pub async fn vendor_data(
        &self,
        session: &SessionRecord,
        request: &RequestId,
    ) -> Result<String, JobError> {
        if let Some(v) = &session.vendor_data {
            return Ok(v.clone());
        }
        Ok(self
            .store
            .request(request)
            .await?
            .map(|r| r.vendor_data)
            .unwrap_or_default())
    }

    /// Publishes `kyc.session.failed` for a request.
    pub async fn publish_failed(
        &self,
        request: &RequestId,
        session_id: Option<Uuid>,
        vendor_data: &str,
        reason: crate::domain::FailureReason,
        detail: &str,
    ) -> Result<(), JobError> {
        let event = OutcomeEvent::new(
            EventType::Failed,
            request.clone(),
            session_id,
            vendor_data.to_owned(),
            EventStatus::Failed,
            &Decider::Fleet,
            json!({"reason": reason.as_str(), "detail": detail}),
        );
        self.publish(&event).await.map(drop)
    }

    /// Publishes an event once per (request, session, change round, type, status) and
    /// counts it; `true` when it was new.
    pub async fn publish(&self, event: &OutcomeEvent) -> Result<bool, JobError> {
        let new = self.store.publish(event).await?;
        self.published(event, new);
        Ok(new)
    }

    /// Counts an event the store published (`new`), or says nothing when it was published
    /// before.
    pub fn published(&self, event: &OutcomeEvent, new: bool) {
        if new {
            self.metrics
                .events_published
                .with_label_values(&[event.kind.as_str()])
                .inc();
            if event.kind == EventType::Decided {
                self.metrics
                    .decisions
                    .with_label_values(&[
                        event.status.as_str(),
                        Metrics::decider_kind(&event.decided_by),
                    ])
                    .inc();
            }
            tracing::info!(event = event.kind.as_str(), status = %event.status, session = ?event.session_id, "event published");
        }
    }

    /// Unix ms when a session whose expiry window starts now gives up: the expiration of
    /// its workflow version + grace.
    pub async fn deadline_for(&self, workflow: Uuid, version: Option<i64>) -> u64 {
        now_ms()
            + (self.expiration(workflow, version).await + self.settings.poll.expiry_grace)
                .as_millis() as u64
    }
}

/// A wait after `floor`, spread at random (see [`crate::domain::spread`]).
fn spread_wait(floor: Duration) -> Duration {
    use rand::Rng;
    crate::domain::spread(floor, rand::rng().random_range(0.0..1.0))
}

/// A store failure inside a handler: retry the job later (the queue's backoff) when Redis
/// may answer then; a corrupt record reads the same on every attempt, so dead-letter it.
impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        if e.is_retryable() {
            JobError::Retry {
                reason: e.to_string(),
                after: None,
            }
        } else {
            JobError::Fatal(e.to_string())
        }
    }
}

/// A queue failure inside a handler: Redis may answer later; a job that cannot be encoded
/// never will.
impl From<QueueError> for JobError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Redis(_) => JobError::Retry {
                reason: e.to_string(),
                after: None,
            },
            QueueError::Encode(_) => JobError::Fatal(e.to_string()),
        }
    }
}

/// A rate-limiter failure (Redis unreachable) inside a handler: retry the job later.
impl From<redis::RedisError> for JobError {
    fn from(e: redis::RedisError) -> Self {
        JobError::Retry {
            reason: format!("redis: {e}"),
            after: None,
        }
    }
}

/// The PII-free summary of a decision that events carry: statuses, scores, warning codes.
/// Never names, dates of birth, document numbers or media URLs.
pub fn decision_summary(d: &Decision) -> Value {
    let sections = d.sections();
    let mut features = serde_json::Map::new();
    let mut scores = serde_json::Map::new();
    let mut warnings = Vec::new();
    for (name, items) in sections {
        let Some(items) = items else { continue };
        if let Some(last) = items.last() {
            features.insert(name.to_owned(), json!(last.status));
        }
        // The latest attempt's score is the feature's: an earlier failed attempt the
        // person redid (a resubmission, a retry) no longer speaks for them. The lowest over
        // all attempts is kept beside it, under its own name.
        if let Some(score) = items.iter().rev().find_map(|i| i.score) {
            scores.insert(name.to_owned(), json!(score));
        }
        if items.iter().filter(|i| i.score.is_some()).count() > 1 {
            let lowest = items
                .iter()
                .filter_map(|i| i.score)
                .fold(f64::INFINITY, f64::min);
            scores.insert(format!("{name}_lowest"), json!(lowest));
        }
        for item in items {
            for w in item.warnings.iter().flatten() {
                warnings
                    .push(json!({"feature": w.feature, "risk": w.risk, "log_type": w.log_type}));
            }
        }
    }
    json!({"features": features, "scores": scores, "warnings": warnings})
}

/// Checks a paused account every `pause_recheck` and resumes the fleet once the cause is
/// gone: credits for a credit pause, an authenticated read for a key problem.
pub async fn pause_probe(pipeline: Pipeline) {
    loop {
        tokio::time::sleep(pipeline.settings.poll.pause_recheck).await;
        let Ok(Some(pause)) = pipeline.store.pause().await else {
            continue;
        };
        let cured = match pause {
            AccountPause::NoCredits => pipeline.didit.balance().await.is_ok_and(|b| b.has_credit()),
            AccountPause::InvalidKey | AccountPause::Forbidden => {
                pipeline.didit.list_workflows().await.is_ok()
            }
        };
        if cured && pipeline.store.resume().await.is_ok() {
            pipeline.saw_pause(false);
            tracing::warn!(
                reason = pause.as_str(),
                "Didit calls resumed: the cause is gone"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_scores_are_the_latest_attempts_and_the_lowest_has_its_own_name() {
        let decision: Decision = serde_json::from_value(json!({
            "session_id": "11111111-2222-3333-4444-555555555555",
            "status": "Approved",
            "face_matches": [{"status": "Declined", "score": 31.0}, {"status": "Approved", "score": 93.5}],
            "liveness_checks": [{"status": "Approved", "score": 97.0}],
        }))
        .expect("decision");
        let summary = decision_summary(&decision);
        assert_eq!(summary["scores"]["face_match"], json!(93.5));
        assert_eq!(summary["scores"]["face_match_lowest"], json!(31.0));
        assert_eq!(summary["scores"]["liveness"], json!(97.0));
        assert!(summary["scores"].get("liveness_lowest").is_none());
        assert_eq!(summary["features"]["face_match"], json!("Approved"));
    }

    #[test]
    fn a_store_failure_retries_unless_the_record_is_corrupt() {
        let io = StoreError::from(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        assert!(matches!(
            JobError::from(io),
            JobError::Retry { after: None, ref reason } if reason.starts_with("redis: ")
        ));
        let corrupt = StoreError::Corrupt {
            record: "session",
            field: "deadline_ms",
        };
        assert!(matches!(JobError::from(corrupt), JobError::Fatal(_)));
    }
}
