//! What the HTTP handlers and the operator console share.
//!
//! Both surfaces serve from one axum state; defining it here, below both, lets the HTTP
//! surface mount the console's routes without the console reaching back into `http`.

use std::{
    collections::VecDeque,
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::Duration,
};

use didit::webhook::WebhookVerifier;
use secrecy::SecretString;

use crate::{
    domain::AccountPause, jobs::QUEUES, metrics::Metrics, producer::Producer, queue::Queue,
    ratelimit::RateLimiter, store::Store,
};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub queue: Queue,
    pub producer: Producer,
    pub verifier: Arc<WebhookVerifier>,
    /// Bearer token of the HTTP intake; `None`: the intake is off.
    pub api_token: Option<SecretString>,
    /// Cleared when the workers have died, so liveness fails and the pod is restarted.
    pub workers_alive: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// The operator console's settings and readers.
    pub console: ConsoleState,
}

/// Shortest time between two reads of the shared gauges, however often `/metrics` is scraped.
const SHARED_GAUGES_MAX_AGE: Duration = Duration::from_secs(5);

impl AppState {
    /// Reads the gauges every process sees alike from Redis — queue depths and lag, the
    /// account pause, the outcome stream's consumer lag — at most once per
    /// `SHARED_GAUGES_MAX_AGE`. Called when `/metrics` is scraped, so an idle process that
    /// nobody scrapes does not read them.
    pub async fn refresh_shared_gauges(&self) {
        let m = &self.metrics;
        if !m.shared_gauges_due(SHARED_GAUGES_MAX_AGE) {
            return;
        }
        for name in QUEUES {
            if let Ok(stats) = self.queue.stats(name).await {
                m.queue_depth
                    .with_label_values(&[name, "ready"])
                    .set(stats.ready as f64);
                m.queue_depth
                    .with_label_values(&[name, "in_flight"])
                    .set(stats.in_flight as f64);
                m.queue_depth
                    .with_label_values(&[name, "scheduled"])
                    .set(stats.scheduled as f64);
                m.queue_depth
                    .with_label_values(&[name, "dead"])
                    .set(stats.dead as f64);
                m.queue_lag
                    .with_label_values(&[name])
                    .set(stats.lag_ms as f64 / 1000.0);
            }
        }
        if let Ok(pause) = self.store.pause().await {
            for reason in AccountPause::ALL {
                let on = pause == Some(reason);
                m.didit_paused
                    .with_label_values(&[reason.as_str()])
                    .set(if on { 1.0 } else { 0.0 });
            }
        }
        if let Ok(groups) = self.store.event_consumer_lag().await {
            for (group, lag) in groups {
                m.events_consumer_lag
                    .with_label_values(&[&group])
                    .set(lag as f64);
            }
        }
    }
}

/// What the console needs beyond the other handlers' state.
#[derive(Clone)]
pub struct ConsoleState {
    /// Serve `/console/` at all (`http.console`).
    pub enabled: bool,
    pub admin_token: Option<SecretString>,
    pub limiter: RateLimiter,
    pub throughput: Arc<Throughput>,
    /// Proxies whose `X-Forwarded-For` names the client (the login throttle's address).
    pub trusted_proxies: crate::domain::TrustedProxies,
}

/// Finished jobs per queue over the last hour, counted by this process: samples of
/// `kyc_jobs_total{outcome="done"}` taken once a minute by the fleet's sampler.
#[derive(Debug, Default)]
pub struct Throughput {
    samples: Mutex<VecDeque<(tokio::time::Instant, Vec<u64>)>>,
}

/// How many per-minute samples cover the hour the overview shows.
const SAMPLES_PER_HOUR: usize = 61;

impl Throughput {
    /// Takes one sample of every queue's finished-job counter.
    pub fn sample(&self, metrics: &Metrics, queues: &[&str]) {
        let counts = queues
            .iter()
            .map(|q| metrics.jobs.with_label_values(&[q, "done"]).get())
            .collect();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((tokio::time::Instant::now(), counts));
        while samples.len() > SAMPLES_PER_HOUR {
            samples.pop_front();
        }
    }

    /// Jobs of `queues[index]` finished since the oldest sample (at most an hour ago), and
    /// how long ago that sample was taken.
    pub fn since_oldest(&self, metrics: &Metrics, queue: &str, index: usize) -> (u64, Duration) {
        let now = metrics.jobs.with_label_values(&[queue, "done"]).get();
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        match samples.front() {
            Some((at, counts)) => (
                now.saturating_sub(counts.get(index).copied().unwrap_or(0)),
                at.elapsed(),
            ),
            None => (now, Duration::ZERO),
        }
    }
}
