//! DeliverEvent: one outcome event sent to one subscriber, retried on a schedule.
//!
//! # From the stream to a delivery
//! A bridge reads `<prefix>:events` through the consumer group `subscribers` (as the intake
//! bridge reads the intake stream) and turns each event into one job per subscriber that
//! wants its type, on the `deliver` queue; only then does it acknowledge the entry. A crash
//! between the two re-reads the entry and enqueues again: at-least-once, with the same
//! `webhook-id`, which receivers dedupe on. The bridge was chosen over enqueuing inside the
//! publish script: the script stays one hash slot (a Redis Cluster requirement the queue's
//! keys would break), publishing never waits on subscribers, and the subscriber list can
//! change without touching the publish path. The price is the bridge's read latency (one
//! blocking read, a few ms) and a consumer group whose lag is watched like any other.
//!
//! # One delivery
//! Each attempt is signed anew with this attempt's time, so a retry hours after the event
//! still passes a receiver's tolerance. 2xx is delivered. 410 disables the subscriber
//! (until `kyc-worker subscribers enable`). Anything else is retried after the next wait of
//! `delivery.retry_schedule` (±20 % jitter); after the last the delivery goes to the
//! `deliver` dead set, where the console and `queue dead replay` can send it once more.
//!
//! # A failing subscriber never delays another
//! Every subscriber has its own concurrency cap (`delivery.per_subscriber`) and a circuit:
//! after `delivery.circuit_after` consecutive failures its deliveries wait in the queue's
//! schedule (without using a retry, never holding a worker slot) while one probe at a time
//! tries again, 5 s after the opening and then doubling up to `delivery.circuit_max`. Both
//! are per process.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use apalis::prelude::Data;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::{
    metrics::Metrics,
    queue::{now_ms, Completion, Job, JobError, Queue, QueueError},
    settings::{DeliverySettings, Subscriber},
    store::{EventReader, OutcomeEntry, Store, StoreError, StoreResult},
    subscribers::{payload, Answer, SubscriberClient},
};

/// Enqueueing deliveries or forgetting them failed: the index of waiting deliveries (the
/// store) or the deliver queue could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Inside a handler (erasure), each side keeps its own meaning: retry while Redis may
/// answer later, dead-letter what never will.
impl From<DeliveryError> for JobError {
    fn from(e: DeliveryError) -> Self {
        match e {
            DeliveryError::Store(e) => e.into(),
            DeliveryError::Queue(e) => e.into(),
        }
    }
}

/// Job: send one event to one subscriber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeliverEvent {
    pub(crate) subscriber: String,
    /// The `webhook-id`: the same on every attempt and every replay.
    pub(crate) event_id: String,
    /// When the event was published (Unix ms); the lag is measured from it.
    pub(crate) published_ms: u64,
    /// The JSON body (see [`crate::subscribers::payload`]).
    pub(crate) body: Value,
    /// Failed attempts before this one.
    #[serde(default)]
    pub(crate) attempt: u32,
    /// After this (Unix ms) a failure or an open circuit sends the delivery to the dead set.
    pub(crate) give_up_at_ms: u64,
}

impl Job for DeliverEvent {
    const QUEUE: &'static str = "deliver";
    const VERSION: u32 = 1;
}

impl DeliverEvent {
    /// The job's slot: one per (event, subscriber).
    pub(crate) fn slot(&self) -> String {
        format!("{}:{}", self.event_id, self.subscriber)
    }

    /// The person this delivery is about (empty for events that name nobody).
    fn vendor_data(args: &Value) -> Option<&str> {
        args.get("body")?.get("data")?.get("vendor_data")?.as_str()
    }
}

/// A subscriber's circuit: closed while deliveries succeed; open after repeated failures,
/// then one probe at a time until a success closes it.
#[derive(Debug)]
struct Circuit {
    failures: u32,
    open_until: Option<tokio::time::Instant>,
    pause: Duration,
    probing: bool,
}

/// The first pause of an opened circuit.
const FIRST_PAUSE: Duration = Duration::from_secs(5);

impl Circuit {
    fn new() -> Self {
        Self {
            failures: 0,
            open_until: None,
            pause: FIRST_PAUSE,
            probing: false,
        }
    }

    /// `Err(wait)` while the circuit is open or a probe is under way.
    fn admit(&mut self, now: tokio::time::Instant) -> Result<(), Duration> {
        match self.open_until {
            None => Ok(()),
            Some(until) if now < until => Err(until - now),
            Some(_) if self.probing => Err(Duration::from_secs(1)),
            Some(_) => {
                self.probing = true;
                Ok(())
            }
        }
    }

    fn success(&mut self) {
        *self = Self::new();
    }

    fn failure(&mut self, now: tokio::time::Instant, after: u32, max: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.probing = false;
        if self.failures >= after {
            self.open_until = Some(now + self.pause);
            self.pause = (self.pause * 2).min(max);
        }
    }
}

/// One subscriber's client, slots and circuit in this process.
struct Target {
    client: SubscriberClient,
    slots: Arc<Semaphore>,
    circuit: Mutex<Circuit>,
}

impl Target {
    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        // Each critical section is a few assignments: a poisoned lock holds consistent data.
        self.circuit.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the delivery worker, the bridge and the operator commands share. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Deliveries {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Queue,
    store: Store,
    metrics: Arc<Metrics>,
    settings: DeliverySettings,
    subscribers: Vec<Arc<Subscriber>>,
    targets: HashMap<String, Target>,
    /// Disabled subscribers as last read (every few seconds) or disabled here.
    disabled: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries")
            .field("subscribers", &self.inner.subscribers.len())
            .finish()
    }
}

/// `kyc_deliveries_total{outcome}`.
const DELIVERY_OUTCOMES: [&str; 7] = [
    "delivered",
    "failed",
    "refused",
    "disabled",
    "dead",
    "deferred",
    "dropped",
];

impl Deliveries {
    pub(crate) fn new(
        queue: Queue,
        store: Store,
        metrics: Arc<Metrics>,
        settings: DeliverySettings,
        subscribers: &[Subscriber],
    ) -> reqwest::Result<Self> {
        let mut targets = HashMap::new();
        for s in subscribers {
            metrics.initialise_subscriber(&s.name, &DELIVERY_OUTCOMES);
            targets.insert(
                s.name.clone(),
                Target {
                    client: SubscriberClient::new(s.clone(), settings.timeout)?,
                    slots: Arc::new(Semaphore::new(settings.per_subscriber)),
                    circuit: Mutex::new(Circuit::new()),
                },
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                subscribers: targets
                    .values()
                    .map(|t| t.client.subscriber.clone())
                    .collect(),
                queue,
                store,
                metrics,
                settings,
                targets,
                disabled: Mutex::new(HashSet::new()),
            }),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inner.targets.is_empty()
    }

    fn disabled(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner
            .disabled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn is_disabled(&self, name: &str) -> bool {
        self.disabled().contains(name)
    }

    /// Reads the disabled set from Redis.
    pub(crate) async fn refresh_disabled(&self) -> StoreResult<()> {
        let now: HashSet<String> = self
            .inner
            .store
            .disabled_subscribers()
            .await?
            .into_keys()
            .collect();
        *self.disabled() = now;
        Ok(())
    }

    fn count(&self, name: &str, outcome: &str) {
        self.inner
            .metrics
            .deliveries
            .with_label_values(&[name, outcome])
            .inc();
    }

    /// Enqueues one delivery per (event, subscriber that wants its type and is enabled),
    /// limited to subscriber `only` when given; returns how many.
    pub(crate) async fn enqueue(
        &self,
        entries: &[OutcomeEntry],
        only: Option<&str>,
    ) -> Result<usize, DeliveryError> {
        let settings = &self.inner.settings;
        let total: Duration = settings.retry_schedule.iter().sum();
        let give_up_at_ms = now_ms()
            .saturating_add(total.mul_f64(1.25).as_millis() as u64)
            .saturating_add(settings.circuit_max.as_millis() as u64);
        let mut jobs: Vec<DeliverEvent> = Vec::new();
        for entry in entries {
            let body = match payload(&entry.fields, entry.published_ms()) {
                Ok(body) => body,
                Err(reason) => {
                    tracing::warn!(entry = %entry.entry_id, %reason, "outcome event not deliverable; skipped");
                    continue;
                }
            };
            let kind = entry.field("type");
            for s in &self.inner.subscribers {
                if only.is_some_and(|o| o != s.name) || !s.wants(kind) || self.is_disabled(&s.name)
                {
                    continue;
                }
                jobs.push(DeliverEvent {
                    subscriber: s.name.clone(),
                    event_id: entry.field("event_id").to_owned(),
                    published_ms: entry.published_ms(),
                    body: body.clone(),
                    attempt: 0,
                    give_up_at_ms,
                });
            }
        }
        // Pending first: a delivery that finishes before its index entry exists would
        // otherwise leave that entry behind, inflating the lag.
        let mut by_subscriber: HashMap<&str, Vec<(String, u64)>> = HashMap::new();
        for job in &jobs {
            by_subscriber
                .entry(job.subscriber.as_str())
                .or_default()
                .push((job.event_id.clone(), job.published_ms));
        }
        for (name, items) in by_subscriber {
            self.inner.store.add_pending(name, &items).await?;
        }
        for job in &jobs {
            self.inner.queue.push_with_id(&job.slot(), job).await?;
        }
        Ok(jobs.len())
    }

    /// Runs one attempt and decides what follows.
    async fn attempt(&self, job: DeliverEvent) -> Result<Completion<DeliverEvent>, JobError> {
        let name = job.subscriber.clone();
        let Some(target) = self.inner.targets.get(&name) else {
            tracing::info!(subscriber = %name, "delivery dropped: the subscriber is no longer configured");
            return self.drop_delivery(&job).await;
        };
        if self.is_disabled(&name) {
            return self.drop_delivery(&job).await;
        }
        let now = now_ms();
        // Slots first, then the circuit: a probe admitted without a slot would block it.
        let Ok(permit) = target.slots.clone().try_acquire_owned() else {
            self.count(&name, "deferred");
            return Ok(later(job, jitter(Duration::from_secs(1))));
        };
        let admitted = target.circuit().admit(tokio::time::Instant::now());
        if let Err(wait) = admitted {
            drop(permit);
            if now > job.give_up_at_ms {
                return self
                    .bury(&job, "its subscriber's circuit stayed open")
                    .await;
            }
            self.count(&name, "deferred");
            return Ok(later(job, jitter(wait)));
        }
        let body = serde_json::to_vec(&job.body)
            .map_err(|e| JobError::Fatal(format!("cannot encode the body: {e}")))?;
        let started = std::time::Instant::now();
        let timestamp = (now / 1000) as i64;
        let answer = target.client.send(&job.event_id, timestamp, &body).await;
        drop(permit);
        self.inner
            .metrics
            .delivery_duration
            .with_label_values(&[&name])
            .observe(started.elapsed().as_secs_f64());
        let store = &self.inner.store;
        match answer {
            Answer::Delivered(_) => {
                target.circuit().success();
                self.count(&name, "delivered");
                if let Err(e) = store.record_delivered(&name, &job.event_id).await {
                    tracing::warn!(error = %e, subscriber = %name, "delivered, but its state was not recorded");
                }
                Ok(Completion::Done)
            }
            Answer::Gone => {
                target.circuit().success();
                self.count(&name, "disabled");
                self.disabled().insert(name.clone());
                tracing::warn!(subscriber = %name, "subscriber answered 410 Gone: disabled until `kyc-worker subscribers enable {name}`");
                if let Err(e) = store.disable_subscriber(&name, "410 Gone").await {
                    tracing::warn!(error = %e, subscriber = %name, "could not record the subscriber as disabled");
                }
                let _ = store
                    .forget_pending(&name, std::slice::from_ref(&job.event_id))
                    .await;
                Ok(Completion::Done)
            }
            Answer::Failed(what) => self.failed(&job, target, what, "failed", now).await,
            Answer::Refused(what) => self.failed(&job, target, what, "refused", now).await,
        }
    }

    /// A failed attempt: retry on the schedule, or bury after its last wait.
    async fn failed(
        &self,
        job: &DeliverEvent,
        target: &Target,
        what: String,
        outcome: &str,
        now: u64,
    ) -> Result<Completion<DeliverEvent>, JobError> {
        let name = &job.subscriber;
        let store = &self.inner.store;
        target.circuit().failure(
            tokio::time::Instant::now(),
            self.inner.settings.circuit_after,
            self.inner.settings.circuit_max,
        );
        if let Err(e) = store.record_failed(name, &what).await {
            tracing::debug!(error = %e, "failure not recorded");
        }
        let schedule = &self.inner.settings.retry_schedule;
        match schedule.get(job.attempt as usize) {
            Some(wait) if now <= job.give_up_at_ms => {
                self.count(name, outcome);
                tracing::info!(subscriber = %name, attempt = job.attempt + 1, failure = %what, "delivery failed; retrying");
                let next = DeliverEvent {
                    attempt: job.attempt + 1,
                    ..job.clone()
                };
                Ok(later(next, jitter(*wait)))
            }
            _ => {
                self.count(name, outcome);
                let reason = format!(
                    "delivery to {name} failed after {} attempts: {what}",
                    job.attempt + 1
                );
                self.bury(job, &reason).await
            }
        }
    }

    async fn bury(
        &self,
        job: &DeliverEvent,
        reason: &str,
    ) -> Result<Completion<DeliverEvent>, JobError> {
        self.count(&job.subscriber, "dead");
        let _ = self
            .inner
            .store
            .forget_pending(&job.subscriber, std::slice::from_ref(&job.event_id))
            .await;
        Err(JobError::Fatal(reason.to_owned()))
    }

    async fn drop_delivery(
        &self,
        job: &DeliverEvent,
    ) -> Result<Completion<DeliverEvent>, JobError> {
        self.count(&job.subscriber, "dropped");
        let _ = self
            .inner
            .store
            .forget_pending(&job.subscriber, std::slice::from_ref(&job.event_id))
            .await;
        Ok(Completion::Done)
    }

    /// Samples `kyc_delivery_lag_seconds` and re-reads the disabled set.
    async fn sample(&self) {
        if let Err(e) = self.refresh_disabled().await {
            tracing::debug!(error = %e, "disabled subscribers not read");
        }
        let now = now_ms();
        for s in &self.inner.subscribers {
            if let Ok(oldest) = self.inner.store.oldest_pending_ms(&s.name).await {
                let lag = oldest.map(|ms| now.saturating_sub(ms)).unwrap_or(0);
                self.inner
                    .metrics
                    .delivery_lag
                    .with_label_values(&[&s.name])
                    .set(lag as f64 / 1000.0);
            }
        }
    }
}

/// Runs the job again at `after` from now with `args`.
fn later(args: DeliverEvent, after: Duration) -> Completion<DeliverEvent> {
    Completion::RunAgain {
        at: SystemTime::now() + after,
        args,
    }
}

/// Moves a wait by up to ±20 %, so deliveries that failed together do not retry together.
fn jitter(wait: Duration) -> Duration {
    use rand::Rng;
    wait.mul_f64(rand::rng().random_range(0.8..1.2))
}

pub(crate) async fn handle(
    job: DeliverEvent,
    d: Data<Deliveries>,
) -> Result<Completion<DeliverEvent>, JobError> {
    d.attempt(job).await
}

/// Starts the bridge and the lag sampler when subscribers are configured. The consumer
/// group exists when this returns (if Redis answered), so every event published by the
/// workers started next reaches the subscribers.
pub(crate) async fn start(
    d: Deliveries,
    p: &super::Pipeline,
    consumer: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    if d.is_empty() {
        return Vec::new();
    }
    // A connection of its own: the bridge's blocking reads must not hold up the shared one.
    let mut reader = EventReader::new(
        p.queue.connection().connector().connect(),
        &p.settings.redis.prefix,
        format!("{consumer}-events"),
        p.settings.queue.reclaim_after,
    );
    let first = reader.ensure_group().await;
    if let Err(e) = d.refresh_disabled().await {
        tracing::warn!(error = %e, "disabled subscribers not read; retrying in the background");
    }
    let bridge_d = d.clone();
    let bridge_task = tokio::spawn(async move {
        let mut grouped = first;
        while let Err(e) = grouped {
            tracing::warn!(error = %e, "delivery bridge cannot reach Redis; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            grouped = reader.ensure_group().await;
        }
        bridge(bridge_d, reader).await
    });
    let sampler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            d.sample().await;
        }
    });
    vec![bridge_task, sampler]
}

/// Turns events into deliveries until aborted. `reader` already has its group.
async fn bridge(d: Deliveries, mut reader: EventReader) {
    let mut failures = 0u32;
    loop {
        let batch = match reader.next_batch(100, Duration::from_secs(1)).await {
            Ok(batch) => batch,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "delivery bridge: reading events failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(50)))).await;
                continue;
            }
        };
        failures = 0;
        if batch.is_empty() {
            continue;
        }
        // One read per batch, so `subscribers enable` applies from the next event on.
        if let Err(e) = d.refresh_disabled().await {
            tracing::debug!(error = %e, "disabled subscribers not re-read");
        }
        match d.enqueue(&batch, None).await {
            Ok(_) => {
                let ids: Vec<String> = batch.into_iter().map(|e| e.entry_id).collect();
                if let Err(e) = reader.ack(&ids).await {
                    // Left pending: re-read after `queue.reclaim_after` (same webhook-ids).
                    tracing::warn!(error = %e, "delivery bridge: acknowledgement failed");
                }
            }
            Err(e) => {
                // Left pending: reclaimed and enqueued again.
                tracing::warn!(error = %e, "delivery bridge: enqueueing failed; the events will be read again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Deletes a person's waiting and dead deliveries (erasure); returns how many. A delivery
/// being sent at that moment finishes its attempt.
pub(crate) async fn forget_subject(
    queue: &Queue,
    store: &Store,
    vendor_data: &str,
) -> Result<usize, DeliveryError> {
    let removed: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let n = queue
        .purge_jobs(DeliverEvent::QUEUE, |args| {
            let hit = DeliverEvent::vendor_data(args) == Some(vendor_data);
            if hit {
                let field = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or_default();
                removed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((field("subscriber").to_owned(), field("event_id").to_owned()));
            }
            hit
        })
        .await?;
    let removed = removed.into_inner().unwrap_or_else(|e| e.into_inner());
    for (subscriber, event_id) in removed {
        store.forget_pending(&subscriber, &[event_id]).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_circuit_opens_after_repeated_failures_and_lets_one_probe_through() {
        let mut c = Circuit::new();
        let t0 = tokio::time::Instant::now();
        let max = Duration::from_secs(60);
        for _ in 0..2 {
            assert!(c.admit(t0).is_ok());
            c.failure(t0, 3, max);
        }
        assert!(c.admit(t0).is_ok(), "closed below the threshold");
        c.failure(t0, 3, max);
        let wait = c.admit(t0).expect_err("open");
        assert_eq!(wait, FIRST_PAUSE);
        let later = t0 + FIRST_PAUSE;
        assert!(c.admit(later).is_ok(), "one probe");
        assert!(c.admit(later).is_err(), "only one probe at a time");
        c.failure(later, 3, max);
        assert_eq!(c.admit(later).expect_err("reopened"), FIRST_PAUSE * 2);
        c.success();
        assert!(c.admit(later).is_ok(), "a success closes it");
    }

    #[test]
    fn the_pause_doubles_up_to_the_maximum() {
        let mut c = Circuit::new();
        let t = tokio::time::Instant::now();
        for _ in 0..10 {
            c.failure(t, 1, Duration::from_secs(30));
        }
        assert_eq!(c.pause, Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(8) && j <= Duration::from_secs(12),
                "{j:?}"
            );
        }
    }

    #[test]
    fn an_erasure_finds_the_person_in_a_delivery_s_arguments() {
        let job = DeliverEvent {
            subscriber: "crm".into(),
            event_id: "e".into(),
            published_ms: 1,
            body: serde_json::json!({"data": {"vendor_data": "u-1"}}),
            attempt: 0,
            give_up_at_ms: 2,
        };
        let args = serde_json::to_value(&job).expect("json");
        assert_eq!(DeliverEvent::vendor_data(&args), Some("u-1"));
    }
}
