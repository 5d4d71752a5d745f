//! Prometheus metrics: one registry, one `/metrics`, names from DESIGN.md.
//!
//! Labels are by queue, endpoint, status, rule — never by worker name, session id,
//! vendor_data or anything personal. Every label value known in advance is initialised at
//! start, so a series exists (at 0) before its first event and alerts on `rate()` work from
//! the first scrape.

use std::{sync::Arc, time::Duration};

use didit::{Endpoint, Scope};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use crate::domain::{AccountPause, EventType, Refusal, SessionStatus};

/// Outcomes of one job delivery (`kyc_jobs_total{outcome}`).
pub const JOB_OUTCOMES: [&str; 5] = ["done", "run_again", "retried", "waited", "dead"];
/// Results of one webhook delivery (`kyc_webhooks_total{result}`).
pub const WEBHOOK_RESULTS: [&str; 9] = [
    "accepted",
    "bad_signature",
    "stale",
    "duplicate",
    "malformed",
    "too_large",
    "unknown_session",
    "adoption_refused",
    "error",
];
/// Why a console login failed (`kyc_console_login_failures_total{reason}`).
pub const LOGIN_FAILURES: [&str; 3] = ["wrong_token", "bad_operator", "throttled"];
/// Why a start request was refused (`kyc_intake_rejected_total{reason}`), besides the
/// field refusals of [`Refusal`].
const INTAKE_REJECTIONS: [&str; 4] = [
    "malformed",
    "backpressure",
    "idempotency_mismatch",
    "content_type",
];
const QUEUE_STATES: [&str; 4] = ["ready", "scheduled", "in_flight", "dead"];
const STATUS_CLASSES: [&str; 5] = ["2xx", "4xx", "5xx", "429", "error"];
const DECIDERS: [&str; 4] = ["didit", "rule", "operator", "kyc-worker"];
/// What an operator did in the console (`kyc_console_actions_total{action}`).
pub const CONSOLE_ACTIONS: [&str; 8] = [
    "login",
    "approve",
    "decline",
    "resubmit",
    "replay",
    "replay_all",
    "purge",
    "delete",
];

/// Every metric the fleet exports.
pub struct Metrics {
    registry: Registry,
    /// When the gauges read from the shared Redis were last refreshed.
    shared_gauges_at: std::sync::Mutex<Option<std::time::Instant>>,
    pub jobs: IntCounterVec,
    pub job_duration: HistogramVec,
    pub queue_depth: GaugeVec,
    pub queue_lag: GaugeVec,
    pub didit_requests: IntCounterVec,
    pub didit_duration: HistogramVec,
    pub didit_rate_limited: IntCounterVec,
    pub rate_limit_deferred: IntCounterVec,
    pub didit_paused: GaugeVec,
    pub didit_balance: Gauge,
    pub webhooks: IntCounterVec,
    pub intake_rejected: IntCounterVec,
    pub sessions_created: IntCounter,
    pub decisions: IntCounterVec,
    pub rule_matches: IntCounterVec,
    pub time_to_decision: Histogram,
    pub decision_fetches: Histogram,
    pub events_published: IntCounterVec,
    pub events_consumer_lag: GaugeVec,
    pub webhook_last_received: Gauge,
    pub webhooks_expected: IntGauge,
    pub console_actions: IntCounterVec,
    pub deliveries: IntCounterVec,
    pub delivery_duration: HistogramVec,
    pub delivery_lag: GaugeVec,
    pub console_login_failures: IntCounterVec,
    /// 0 when Redis is seen to evict keys under memory pressure (`maxmemory-policy` is not
    /// `noeviction`): jobs and records could vanish. 1 otherwise, until a reading says so.
    pub redis_eviction_policy_ok: IntGauge,
    /// Spans dropped instead of exported: one count per process (see
    /// [`crate::telemetry::SPANS_DROPPED`]), shown in every registry.
    pub trace_spans_dropped: IntCounter,
    pub up: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers a metric on the registry and returns it. Names and labels are constants of
/// this module and each metric is registered once on a new registry, so neither step fails.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric names, labels and buckets are valid constants");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once on a new registry");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(registry, GaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels),
    )
}

impl Metrics {
    /// Builds and registers every metric, with known label sets initialised.
    pub fn new(queues: &[&str]) -> Arc<Self> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            // The collector only fails to register twice; this registry is new.
            let _ = registry.register(Box::new(process));
        }
        let r = &registry;
        let m = Metrics {
            jobs: counter(
                r,
                "kyc_jobs_total",
                "Job deliveries finished, by queue and outcome.",
                &["queue", "outcome"],
            ),
            job_duration: histogram(
                r,
                "kyc_job_duration_seconds",
                "Time from a job's delivery to its finish.",
                &["queue"],
                prometheus::exponential_buckets(0.005, 2.0, 14)
                    .expect("constant bucket parameters are valid"),
            ),
            queue_depth: gauge(
                r,
                "kyc_queue_depth",
                "Jobs per queue and state.",
                &["queue", "state"],
            ),
            queue_lag: gauge(
                r,
                "kyc_queue_lag_seconds",
                "Age of the oldest due job not yet started.",
                &["queue"],
            ),
            didit_requests: counter(
                r,
                "kyc_didit_requests_total",
                "Didit HTTP calls, by endpoint and status class.",
                &["endpoint", "status_class"],
            ),
            didit_duration: histogram(
                r,
                "kyc_didit_request_duration_seconds",
                "Didit HTTP call latency.",
                &["endpoint"],
                prometheus::exponential_buckets(0.01, 2.0, 12)
                    .expect("constant bucket parameters are valid"),
            ),
            didit_rate_limited: counter(
                r,
                "kyc_didit_rate_limited_total",
                "429 answers from Didit, by bucket.",
                &["bucket"],
            ),
            rate_limit_deferred: counter(
                r,
                "kyc_rate_limit_deferred_total",
                "Didit calls the fleet's limiter deferred for lack of budget, by bucket.",
                &["bucket"],
            ),
            didit_paused: gauge(
                r,
                "kyc_didit_paused",
                "1 while Didit calls are paused fleet-wide, by reason.",
                &["reason"],
            ),
            didit_balance: register(
                r,
                Gauge::new(
                    "kyc_didit_balance",
                    "Didit credit balance in USD (sampled).",
                ),
            ),
            webhooks: counter(
                r,
                "kyc_webhooks_total",
                "Didit webhook deliveries, by result.",
                &["result"],
            ),
            intake_rejected: counter(
                r,
                "kyc_intake_rejected_total",
                "Start requests refused, by source and reason.",
                &["source", "reason"],
            ),
            sessions_created: register(
                r,
                IntCounter::new("kyc_sessions_created_total", "Didit sessions created."),
            ),
            decisions: counter(
                r,
                "kyc_decisions_total",
                "Decisions published, by status and decider.",
                &["status", "decider"],
            ),
            rule_matches: counter(
                r,
                "kyc_rule_matches_total",
                "Rule matches, by rule and action.",
                &["rule", "action"],
            ),
            time_to_decision: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "kyc_time_to_decision_seconds",
                        "From session creation to its first decision.",
                    )
                    .buckets(
                        prometheus::exponential_buckets(1.0, 2.0, 20)
                            .expect("constant bucket parameters are valid"),
                    ),
                ),
            ),
            decision_fetches: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "kyc_decision_fetches_per_session",
                        "Decision reads a session took until its decision.",
                    )
                    .buckets(vec![0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
                ),
            ),
            events_published: counter(
                r,
                "kyc_events_published_total",
                "Outcome events published, by type.",
                &["type"],
            ),
            events_consumer_lag: gauge(
                r,
                "kyc_events_consumer_lag",
                "Events not yet read by each consumer group of the outcome stream.",
                &["group"],
            ),
            webhook_last_received: register(
                r,
                Gauge::new(
                    "kyc_webhook_last_received_timestamp_seconds",
                    "Unix time of the last Didit webhook with a valid signature this process \
                     received (0: none since it started).",
                ),
            ),
            webhooks_expected: register(
                r,
                IntGauge::new(
                    "kyc_webhooks_expected",
                    "1 when didit.webhooks is on: decisions are expected by webhook, and polls \
                     are only a slow safety net.",
                ),
            ),
            console_actions: counter(
                r,
                "kyc_console_actions_total",
                "Operator console actions accepted, by action.",
                &["action"],
            ),
            deliveries: counter(
                r,
                "kyc_deliveries_total",
                "Subscriber delivery attempts and their ends, by subscriber and outcome.",
                &["subscriber", "outcome"],
            ),
            delivery_duration: histogram(
                r,
                "kyc_delivery_duration_seconds",
                "Time of one delivery attempt to a subscriber.",
                &["subscriber"],
                prometheus::exponential_buckets(0.005, 2.0, 12)
                    .expect("constant bucket parameters are valid"),
            ),
            delivery_lag: gauge(
                r,
                "kyc_delivery_lag_seconds",
                "Age of the oldest event not yet delivered to a subscriber.",
                &["subscriber"],
            ),
            console_login_failures: counter(
                r,
                "kyc_console_login_failures_total",
                "Console logins refused (wrong token, bad operator name, throttled), by reason.",
                &["reason"],
            ),
            redis_eviction_policy_ok: register(
                r,
                IntGauge::new(
                    "kyc_redis_eviction_policy_ok",
                    "1 unless Redis's maxmemory-policy was read and is not noeviction.",
                ),
            ),
            trace_spans_dropped: register(r, Ok(crate::telemetry::SPANS_DROPPED.clone())),
            up: register(
                r,
                IntGauge::new("kyc_worker_up", "1 while this process runs."),
            ),
            registry,
            shared_gauges_at: std::sync::Mutex::new(None),
        };
        m.initialise(queues);
        Arc::new(m)
    }

    fn initialise(&self, queues: &[&str]) {
        for q in queues {
            for outcome in JOB_OUTCOMES {
                self.jobs.with_label_values(&[q, outcome]);
            }
            self.job_duration.with_label_values(&[q]);
            for state in QUEUE_STATES {
                self.queue_depth.with_label_values(&[q, state]);
            }
            self.queue_lag.with_label_values(&[q]);
        }
        for endpoint in Endpoint::ALL {
            for class in STATUS_CLASSES {
                self.didit_requests
                    .with_label_values(&[endpoint.as_str(), class]);
            }
            self.didit_duration.with_label_values(&[endpoint.as_str()]);
        }
        for scope in [Scope::Get, Scope::Write, Scope::Create, Scope::Pdf] {
            self.didit_rate_limited.with_label_values(&[scope.as_str()]);
            self.rate_limit_deferred
                .with_label_values(&[scope.as_str()]);
        }
        for pause in AccountPause::ALL {
            self.didit_paused.with_label_values(&[pause.as_str()]);
        }
        for result in WEBHOOK_RESULTS {
            self.webhooks.with_label_values(&[result]);
        }
        for source in ["http", "intake_stream"] {
            let refusals = Refusal::ALL.iter().map(|r| r.as_str());
            for reason in refusals.chain(INTAKE_REJECTIONS) {
                self.intake_rejected.with_label_values(&[source, reason]);
            }
        }
        for status in SessionStatus::ALL
            .iter()
            .filter(|s| EventType::for_status(s).is_some())
        {
            for decider in DECIDERS {
                self.decisions
                    .with_label_values(&[status.as_str(), decider]);
            }
        }
        for kind in EventType::ALL {
            self.events_published.with_label_values(&[kind.as_str()]);
        }
        for reason in LOGIN_FAILURES {
            self.console_login_failures.with_label_values(&[reason]);
        }
        for action in CONSOLE_ACTIONS {
            self.console_actions.with_label_values(&[action]);
        }
        self.redis_eviction_policy_ok.set(1);
        self.up.set(1);
    }

    /// Creates a subscriber's series at 0, so alerts see it before its first delivery.
    pub fn initialise_subscriber(&self, name: &str, outcomes: &[&str]) {
        for outcome in outcomes {
            self.deliveries.with_label_values(&[name, outcome]);
        }
        self.delivery_duration.with_label_values(&[name]);
        self.delivery_lag.with_label_values(&[name]);
    }

    /// Whether the gauges read from the shared Redis are older than `max_age`; if so, marks
    /// them refreshed now (the caller refreshes them), so concurrent scrapes read once.
    pub fn shared_gauges_due(&self, max_age: Duration) -> bool {
        let mut at = self
            .shared_gauges_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if at.is_some_and(|t| t.elapsed() < max_age) {
            return false;
        }
        *at = Some(std::time::Instant::now());
        true
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// `status_class` label of a Didit answer.
    pub fn status_class(status: Option<u16>) -> &'static str {
        match status {
            Some(429) => "429",
            Some(200..=299) => "2xx",
            Some(500..=599) => "5xx",
            Some(_) => "4xx",
            None => "error",
        }
    }

    /// The decider kind of a `decided_by` label (`rule:x` → `rule`).
    pub fn decider_kind(decided_by: &str) -> &str {
        decided_by.split(':').next().unwrap_or(decided_by)
    }
}

/// Every Didit call, counted by endpoint and status class, with its latency.
impl didit::RequestObserver for Metrics {
    fn observe(&self, endpoint: Endpoint, status: Option<u16>, elapsed: Duration) {
        self.didit_requests
            .with_label_values(&[endpoint.as_str(), Self::status_class(status)])
            .inc();
        self.didit_duration
            .with_label_values(&[endpoint.as_str()])
            .observe(elapsed.as_secs_f64());
    }
}
