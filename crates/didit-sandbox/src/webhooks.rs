//! Webhook deliveries, signed and retried as Didit does.
//!
//! The body is `didit_wire_body(payload)` (sorted keys, compact, ASCII-escaped) and the
//! signatures come from `didit::webhook::sign`, the same code the fleet verifies with, so the
//! two cannot drift apart; the worked vectors in `didit::webhook`'s tests pin that code to
//! Didit's algorithm.
//!
//! Order: one queue per (session, target) with at most one delivery in flight, so a
//! session's deliveries arrive in the order its status changed, while a slow or failing
//! receiver delays only that session. A queue exists only while it has deliveries: when the
//! last one finishes its entry is removed, so a benchmark of 100,000 sessions leaves no idle
//! tasks or channels behind.
//! Retries: on a 5xx, a 404, a timeout or a refused connection, Didit tries again after about
//! 60 s and then 240 s (three attempts in all) and then drops the delivery; the sandbox
//! multiplies those delays by `webhook_retry_scale`. Every attempt carries the same body and
//! `X-Timestamp`.

use std::{
    collections::{hash_map::Entry, HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context;
use serde_json::{json, Value};
use tokio::{
    sync::mpsc::UnboundedReceiver,
    task::{self, JoinSet},
};
use url::Url;
use uuid::Uuid;

use super::SandboxConfig;
use didit::webhook::{didit_wire_body, sign};

/// Didit's delays before the second and third attempts.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(240)];

/// One status change to announce.
#[derive(Debug)]
pub struct Event {
    pub session_id: Uuid,
    pub payload: Value,
    pub targets: Vec<Target>,
}

/// A receiver and the secret its deliveries are signed with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub url: Url,
    pub secret: String,
}

#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Deliveries the receiver acknowledged with a 2xx.
    pub sent: AtomicU64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Deliveries given up after the last attempt, or refused with a 4xx other than 404.
    pub dropped: AtomicU64,
    /// Deliveries queued and not yet finished.
    pub pending: AtomicU64,
}

impl WebhookStats {
    /// Zeroes the finished counts; `pending` still describes deliveries in flight.
    pub fn reset(&self) {
        for counter in [&self.sent, &self.failed_attempts, &self.dropped] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "sent": self.sent.load(Ordering::Relaxed),
            "failed": self.failed_attempts.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "pending": self.pending.load(Ordering::Relaxed),
        })
    }
}

/// How deliveries are made.
#[derive(Clone)]
pub struct Delivery {
    http: reqwest::Client,
    retry_scale: f64,
    stats: Arc<WebhookStats>,
}

impl Delivery {
    pub fn new(config: &SandboxConfig, stats: Arc<WebhookStats>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("DiditWebhook/2.0 +https://didit.me")
            .build()
            .context("cannot build the webhook HTTP client")?;
        Ok(Self {
            http,
            retry_scale: config.webhook_retry_scale,
            stats,
        })
    }

    async fn deliver(&self, target: &Target, payload: &Value) {
        let body = didit_wire_body(payload);
        let timestamp = payload["timestamp"].as_i64().unwrap_or_default();
        let signatures = match sign(&target.secret, body.as_bytes(), timestamp) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a webhook body");
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        for attempt in 0..=RETRY_DELAYS.len() {
            let result = self
                .http
                .post(target.url.clone())
                .header("content-type", "application/json")
                .header("x-signature", &signatures.raw)
                .header("x-signature-v2", &signatures.v2)
                .header("x-signature-simple", &signatures.simple)
                .header("x-timestamp", timestamp.to_string())
                .body(body.clone())
                .send()
                .await;
            let retryable = match result {
                Ok(response) if response.status().is_success() => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(response) => {
                    let status = response.status();
                    status.is_server_error() || status == reqwest::StatusCode::NOT_FOUND
                }
                Err(_) => true,
            };
            self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            let Some(delay) = RETRY_DELAYS.get(attempt).filter(|_| retryable) else {
                break;
            };
            tokio::time::sleep(delay.mul_f64(self.retry_scale)).await;
        }
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// A session's deliveries to one receiver.
type QueueKey = (Uuid, Target);

/// Routes each event to the queue of its (session, target); runs until the sandbox stops.
/// Dropping this future aborts every delivery in flight with it.
pub async fn dispatch(mut events: UnboundedReceiver<Event>, delivery: Delivery) {
    // Deliveries waiting behind the one in flight; the key is present exactly while one is.
    let mut queues: HashMap<QueueKey, VecDeque<Value>> = HashMap::new();
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut keys: HashMap<task::Id, QueueKey> = HashMap::new();
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                for target in event.targets {
                    delivery.stats.pending.fetch_add(1, Ordering::Relaxed);
                    match queues.entry((event.session_id, target)) {
                        Entry::Occupied(mut waiting) => {
                            waiting.get_mut().push_back(event.payload.clone());
                        }
                        Entry::Vacant(idle) => {
                            let key = idle.key().clone();
                            idle.insert(VecDeque::new());
                            let payload = event.payload.clone();
                            start(&mut in_flight, &mut keys, key, payload, &delivery);
                        }
                    }
                }
            }
            Some(done) = in_flight.join_next_with_id() => {
                // A delivery that panicked still frees its queue for the next one.
                let id = done.map_or_else(|e| e.id(), |(id, ())| id);
                delivery.stats.pending.fetch_sub(1, Ordering::Relaxed);
                let Some(key) = keys.remove(&id) else { continue };
                match queues.get_mut(&key).and_then(VecDeque::pop_front) {
                    Some(next) => start(&mut in_flight, &mut keys, key, next, &delivery),
                    None => {
                        queues.remove(&key);
                    }
                }
            }
        }
    }
}

/// Sends one delivery (with its retries) in the background, remembering whose it is.
fn start(
    in_flight: &mut JoinSet<()>,
    keys: &mut HashMap<task::Id, QueueKey>,
    key: QueueKey,
    payload: Value,
    delivery: &Delivery,
) {
    let delivery = delivery.clone();
    let target = key.1.clone();
    let handle = in_flight.spawn(async move { delivery.deliver(&target, &payload).await });
    keys.insert(handle.id(), key);
}
