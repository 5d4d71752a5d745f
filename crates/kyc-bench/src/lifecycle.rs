//! `kyc-worker bench lifecycle`: the whole fleet against the in-process sandbox, from a start
//! request to its `kyc.session.decided` event.
//!
//! Two kinds of fleet process. The lifecycle runs use one [`Application`] in this process
//! (its own Redis connections, HTTP port, consumer name and 64 workers) sharing this
//! process's tokio runtime with the sandbox and the load generator, so one CPU profile covers
//! all of it. The scaling runs and the worker-memory reading use real `kyc-worker run` child
//! processes ([`super::processes`]) configured by the same settings as environment variables,
//! so each process's CPU and memory can be read from `/proc`.
//!
//! Every figure is a rate or a per-session cost taken in one run:
//! - sessions/s end to end at sandbox latency 0 and 50 ms, webhooks on and off (decided
//!   events per second from the first to the last, so one session's latency at either end
//!   does not count);
//! - Redis commands per session (`INFO commandstats` delta, with the fleet's idle background
//!   traffic over the same time shown separately), Didit calls per session by endpoint (the
//!   sandbox's request counts);
//! - final status at the sandbox → decided event: the decided event's stream-id time minus
//!   (the created event's stream-id time + the sandbox's `complete_after`);
//! - sessions/s with 1, 2 and 4 child processes, with the cores redis-server, the workers and
//!   the bench process (sandbox + load generator) kept busy;
//! - Redis bytes per waiting session at 100,000 waiting;
//! - Redis bytes kept per finished session, decided by Didit and by a rule, once every key
//!   that lives shorter than `events.record_retention` is gone;
//! - round trips per session: the 1-process scaling run again, its top-level commands
//!   counted with `MONITOR` ([`super::monitor`]); with the Redis CPU and worker CPU of the
//!   1-process scaling run, the per-session targets of the report;
//! - a child process's resident memory with 10,000 sessions waiting and then 10,000 start
//!   jobs in flight (each holding a Didit call open);
//! - event → subscriber receipt p50/p99 on loopback and Redis commands per delivery (one
//!   Standard Webhooks subscriber, events added to the outcome stream at a steady pace);
//! - with `--profile`, a CPU profile of the first lifecycle run ([`super::profile`]);
//! - the cost of tracing: one child process's CPU per session with no OTLP endpoint set, and
//!   with one set to a local sink that takes every export (spans and bytes per session),
//!   and with `--baseline-worker`, the same run of a build without tracing code (`kyc-worker`
//!   built with `--no-default-features`, which leaves the `otel` feature out), run in turns
//!   that alternate their order so the host's load drifts over all of them alike
//!   (`kyc-bench tracing` runs these alone).
//!
//! Didit's rate limits are lifted in the sandbox and the fleet for these runs (they would cap
//! every figure at 10 sessions/s); `budget` computes what the default limits allow instead.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{
    monitor::{client_addr, Monitor},
    processes::{connections_to, WorkerProcess},
    profile::{ProfileSummary, Profiler},
    server::{
        command_calls_since_reset, commands_since_reset, flush, load_average, memory_field,
        process_cpu_seconds, redis_cpu_seconds, used_memory, BenchRedis,
    },
};
use didit_sandbox::{ports::free_port, Sandbox, SandboxConfig, SandboxHandle};
use kyc_worker::{
    domain::StartRequest,
    jobs::StartKyc,
    producer::Producer,
    queue::{Job, Queue},
    rules::RuleSet,
    settings::{Settings, Sources},
    startup::Application,
};

/// Limits high enough that neither the sandbox nor the fleet's limiter ever waits.
const UNLIMITED: u32 = 10_000_000;
/// Start requests in flight from the load generator at once.
const PRODUCERS: usize = 32;
/// The sandbox's time from session creation to the final status in throughput runs.
const COMPLETE_AFTER: Duration = Duration::from_millis(200);
/// Polling-only runs poll this soon (the default is 5 s growing to 60 s).
const BENCH_POLLING_INITIAL: &str = "100ms";
const BENCH_POLLING_MAX: &str = "300ms";
/// How long one run may take before the bench gives up.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// The fleet's default `worker.concurrency`.
const CONCURRENCY: usize = 64;
/// Didit's answer time while the worker-memory reading holds start jobs in flight: long
/// enough that none of them finishes before all are in flight.
pub const IN_FLIGHT_LATENCY: Duration = Duration::from_secs(120);
/// How long the worker-memory reading waits for every start job to be in flight.
const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone)]
pub struct LifecycleOptions {
    /// Sessions per lifecycle run (4 runs) and per scaling run (3 runs).
    pub sessions: usize,
    /// Sessions created and left waiting for the Redis memory reading.
    pub waiting_sessions: usize,
    /// Sessions waiting, then start jobs in flight, in the worker-memory reading.
    pub worker_jobs: usize,
    /// Sessions started one by one for the webhook → event latency.
    pub latency_sessions: usize,
    /// Events delivered to one subscriber for the delivery latency and cost.
    pub delivery_events: usize,
    /// Sample the first lifecycle run and write `flamegraph.svg`.
    pub profile: bool,
    /// How long the fleet's idle Redis traffic is sampled before each run.
    pub idle_sample: Duration,
    pub out_dir: PathBuf,
    pub redis_server: String,
    /// A `kyc-worker` without tracing code, for the tracing-cost comparison.
    pub baseline_worker: Option<PathBuf>,
    /// Turns of the tracing-cost runs (each turn runs every variant once).
    pub tracing_turns: usize,
    /// Sessions decided per kept-memory reading (one with no rule matched, one with).
    pub kept_sessions: usize,
    /// Sessions of the run whose round trips `MONITOR` counts.
    pub round_trip_sessions: usize,
    /// Sessions per tracing-cost run.
    pub tracing_sessions: usize,
}

impl LifecycleOptions {
    pub fn full(out_dir: PathBuf) -> Self {
        Self {
            // 7 runs: sized so `make bench` stays well under 10 minutes on a busy 2-CPU host.
            sessions: 3_000,
            waiting_sessions: 100_000,
            worker_jobs: 10_000,
            latency_sessions: 300,
            delivery_events: 1_000,
            profile: false,
            idle_sample: Duration::from_secs(2),
            out_dir,
            redis_server: "redis-server".into(),
            baseline_worker: None,
            tracing_turns: 3,
            kept_sessions: 10_000,
            round_trip_sessions: 3_000,
            tracing_sessions: 3_000,
        }
    }

    pub fn quick(out_dir: PathBuf) -> Self {
        Self {
            sessions: 500,
            waiting_sessions: 1_000,
            worker_jobs: 1_000,
            latency_sessions: 40,
            delivery_events: 200,
            kept_sessions: 200,
            round_trip_sessions: 200,
            idle_sample: Duration::from_millis(500),
            tracing_sessions: 500,
            ..Self::full(out_dir)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LifecycleRun {
    pub webhooks: bool,
    pub sandbox_latency_ms: u64,
    pub processes: usize,
    pub sessions: usize,
    /// Decided events per second between the run's first and last (the pipeline's rate,
    /// without the latency of one session at either end).
    pub sessions_per_s: f64,
    /// How fast the load generator's start requests went in.
    pub start_requests_per_s: f64,
    /// Start request → decided event.
    pub end_to_end_p50_ms: u64,
    pub end_to_end_p99_ms: u64,
    /// Final status at the sandbox → decided event (see the module docs).
    pub final_to_decided_p50_ms: u64,
    pub final_to_decided_p99_ms: u64,
    /// Every Redis command during the run, per session.
    pub redis_commands_per_session: f64,
    /// Less the fleet's idle traffic (fetch blocks, promotion, leases) over the run's length.
    pub redis_commands_per_session_net: f64,
    /// Every command during the run by name (scripts' inner commands included), per session.
    pub redis_commands_by_name: BTreeMap<String, f64>,
    pub didit_calls_per_session: f64,
    pub didit_calls_by_endpoint: BTreeMap<String, f64>,
    pub seconds: f64,
    /// Cores redis-server kept busy during the run (CPU seconds / wall seconds).
    pub redis_cores: f64,
    /// Cores the bench process kept busy: the sandbox, the load generator and, when the
    /// fleet runs in-process, the fleet.
    pub bench_process_cores: Option<f64>,
    /// Cores the child `kyc-worker run` processes kept busy together (`None` in-process).
    pub worker_cores: Option<f64>,
    /// The host's 1-minute load average at the end of the run (this machine is shared).
    pub load_average: Option<f64>,
    /// Redis CPU (user + system) per session, less the fleet's idle CPU over the run's
    /// length.
    #[serde(default)]
    pub redis_cpu_ms_per_session_net: f64,
    /// Top-level commands per session from the fleet's and the producer's connections
    /// (`MONITOR`, scripts' calls left out), less the idle ones; only in the round-trip run.
    #[serde(default)]
    pub round_trips_per_session_net: Option<f64>,
    /// Those top-level commands by name, per session (idle ones included).
    #[serde(default)]
    pub round_trips_by_name: BTreeMap<String, f64>,
}

/// A child `kyc-worker run` process's resident memory (`/proc/<pid>/status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerMemory {
    /// Sessions created and left waiting by one process; start jobs put in flight at once
    /// in another.
    pub jobs: usize,
    /// `worker.concurrency` of the process that created the waiting sessions (the default).
    pub waiting_concurrency: usize,
    /// `worker.concurrency` of the process that held the jobs in flight (`jobs`).
    pub concurrency: usize,
    /// VmRSS once ready, nothing to do.
    pub idle_rss_bytes: u64,
    /// VmRSS with `jobs` sessions created and waiting for their users.
    pub waiting_rss_bytes: u64,
    /// VmRSS of the second process once ready, before its jobs arrive.
    pub in_flight_base_rss_bytes: u64,
    /// VmRSS of the second process with `in_flight` start jobs reserved, each in a Didit
    /// call.
    pub in_flight_rss_bytes: u64,
    /// Start jobs reserved by the worker when read (`jobs` unless the wait ran out).
    pub in_flight: u64,
    /// Connections open from the worker to the sandbox when read.
    pub didit_calls_open: usize,
    /// VmHWM when read: the most the process has been resident.
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LifecycleReport {
    pub runs: Vec<LifecycleRun>,
    pub scaling: Vec<LifecycleRun>,
    pub waiting_sessions: usize,
    pub redis_bytes_per_waiting_session: f64,
    pub worker_memory: WorkerMemory,
    pub webhook_latency: WebhookLatency,
    pub subscriber_delivery: SubscriberDelivery,
    pub profile: Option<ProfileSummary>,
    pub cpus: usize,
    /// What tracing costs a worker (see [`TracingRun`]).
    #[serde(default)]
    pub tracing: Vec<TracingRun>,
    /// The scaling run's shape (one child process) again, its top-level commands counted
    /// with `MONITOR`.
    #[serde(default)]
    pub round_trips: Option<LifecycleRun>,
    /// Redis bytes kept per finished session: decided by Didit with no rule matched, then
    /// with a rule matched.
    #[serde(default)]
    pub kept: Vec<KeptMemory>,
    /// Whether the bench (and the `kyc-worker` beside it) is a release build.
    #[serde(default)]
    pub release_build: bool,
}

/// What Redis keeps per finished session once every key that lives shorter than
/// `events.record_retention` is gone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeptMemory {
    /// `no rule matched` or the rule that decided.
    pub case: String,
    pub sessions: usize,
    /// The decided events' status (the last one read).
    pub status: String,
    pub decided_by: String,
    /// `used_memory` delta / sessions, after the deletions below.
    pub bytes_per_session: f64,
    /// Keys kept, per session, by key pattern (ids replaced by `*`).
    pub keys_kept_per_session: BTreeMap<String, f64>,
    /// Keys deleted for a time to live shorter than `events.record_retention`, per session,
    /// by key pattern.
    pub keys_deleted_per_session: BTreeMap<String, f64>,
    /// `MEMORY USAGE` of the kept keys, per session, by key pattern: what each record costs
    /// on its own (the `used_memory` delta also holds the keyspace's own tables).
    #[serde(default)]
    pub bytes_kept_by_pattern: BTreeMap<String, f64>,
    /// Of `bytes_per_session`, what the client connections' buffers grew by (they shrink
    /// back over time; part of `used_memory`, not of the data).
    #[serde(default)]
    pub client_buffer_bytes_per_session: f64,
    /// The `used_memory_dataset` delta per session: the data without the server's overhead.
    #[serde(default)]
    pub dataset_bytes_per_session: f64,
    /// Bytes of the outcome stream, deleted before the reading (it is trimmed at
    /// `events.retention`, not kept per session), per session.
    pub events_stream_bytes_per_session: f64,
    pub record_retention_s: u64,
}

/// One variant of the tracing-cost runs: one `kyc-worker run` child, webhooks on, Didit
/// latency 0, the median of its turns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TracingRun {
    /// [`NO_TRACING_CODE`], [`NO_ENDPOINT`] or [`ENDPOINT_SET`].
    pub variant: String,
    pub sessions: usize,
    pub turns: usize,
    /// The child's CPU milliseconds per session (median of the turns).
    pub worker_cpu_ms_per_session: f64,
    /// Every turn's figure, in order.
    pub worker_cpu_ms_per_turn: Vec<f64>,
    /// OTLP export requests and protobuf bytes the sink received, per session.
    pub exports_per_session: f64,
    pub export_bytes_per_session: f64,
}

/// The tracing-cost variant running the `--baseline-worker` build (no tracing code).
pub const NO_TRACING_CODE: &str = "no tracing code";
/// The tracing-cost variant running this build with no OTLP endpoint.
pub const NO_ENDPOINT: &str = "no endpoint";
/// The tracing-cost variant running this build exporting to a local sink.
pub const ENDPOINT_SET: &str = "endpoint set";

/// Webhook accepted → `kyc.session.decided` published, on a fleet with nothing else to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookLatency {
    pub sessions: usize,
    /// Start requests were sent this far apart, so each webhook meets an idle fleet.
    pub pace_ms: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// Outcome event → subscriber receipt, and what a delivery costs in Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubscriberDelivery {
    pub events: usize,
    /// Events were added this far apart.
    pub pace_ms: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Every command of the bridge, the delivery worker and its state writes, per delivery,
    /// less the fleet's idle traffic and the events' own XADDs.
    pub redis_commands_per_delivery: f64,
    pub redis_commands_by_name: BTreeMap<String, f64>,
}

/// What a run changes about the fleet's processes beyond its [`Shape`].
#[derive(Debug, Clone, Default)]
struct Variant {
    /// Settings on top of the run's.
    env: Vec<(String, String)>,
    /// Another `kyc-worker` build for the child processes.
    binary: Option<PathBuf>,
    /// How long the fleet keeps running after the figures are taken (a span export lingers
    /// up to a second before it is sent).
    linger: Duration,
    /// Count top-level commands with `MONITOR` (which costs Redis CPU: the run's Redis CPU
    /// is then not the fleet's alone).
    monitor: bool,
}

/// One scenario of a run.
#[derive(Debug, Clone, Copy)]
struct Shape {
    webhooks: bool,
    latency: Duration,
    processes: usize,
    /// Child `kyc-worker run` processes instead of applications in this process.
    children: bool,
    concurrency: usize,
    complete_after: Duration,
    /// A subscriber receiving every event on this loopback port.
    subscriber: Option<u16>,
}

impl Shape {
    /// One in-process application at the default concurrency.
    fn in_process(webhooks: bool, latency: Duration, complete_after: Duration) -> Self {
        Self {
            webhooks,
            latency,
            processes: 1,
            children: false,
            concurrency: CONCURRENCY,
            complete_after,
            subscriber: None,
        }
    }
}

enum Workers {
    InProcess(Vec<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>),
    Children(Vec<WorkerProcess>),
}

/// Redis, the sandbox and `processes` fleet processes wired together.
struct Fleet {
    sandbox: SandboxHandle,
    settings: Settings,
    workers: Workers,
}

/// The fleet's settings for a run, as the `KYC__…` variables a child process gets.
fn fleet_env(
    redis_url: &str,
    sandbox: &SandboxHandle,
    port: u16,
    shape: Shape,
) -> Vec<(String, String)> {
    let unlimited = UNLIMITED.to_string();
    [
        ("KYC__REDIS__URL", redis_url.to_owned()),
        ("KYC__REDIS__PREFIX", "kyc".to_owned()),
        ("KYC__HTTP__HOST", "127.0.0.1".to_owned()),
        ("KYC__HTTP__PORT", port.to_string()),
        (
            "KYC__DIDIT__BASE_URL",
            sandbox.base_url().as_str().trim_end_matches('/').to_owned(),
        ),
        ("KYC__DIDIT__WEBHOOKS", shape.webhooks.to_string()),
        // Longer than IN_FLIGHT_LATENCY, so held calls do not time out while being counted.
        ("KYC__DIDIT__REQUEST_TIMEOUT", "300s".to_owned()),
        ("KYC__LOG__LEVEL", "error".to_owned()),
        ("KYC__RULES__FILE", String::new()),
        (
            "KYC__POLL__POLLING_INITIAL",
            BENCH_POLLING_INITIAL.to_owned(),
        ),
        ("KYC__POLL__POLLING_MAX", BENCH_POLLING_MAX.to_owned()),
        ("KYC__RATELIMIT__GET", unlimited.clone()),
        ("KYC__RATELIMIT__WRITE", unlimited.clone()),
        ("KYC__RATELIMIT__CREATE", unlimited.clone()),
        ("KYC__QUEUE__BACKPRESSURE_LIMIT", unlimited),
        ("KYC__WORKER__CONCURRENCY", shape.concurrency.to_string()),
        ("KYC__WORKER__SHUTDOWN_TIMEOUT", "5s".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(shape.subscriber.map(|port| {
        let subscriber = serde_json::json!([{
            "name": BENCH_SUBSCRIBER,
            "url": format!("http://127.0.0.1:{port}/hook"),
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "allow_private": true,
            "allow_insecure": true,
        }]);
        ("KYC__SUBSCRIBERS".to_owned(), subscriber.to_string())
    }))
    .collect()
}

fn settings_for(env: &[(String, String)]) -> anyhow::Result<Settings> {
    Ok(Settings::load_from(&Sources {
        config_dir: Some(std::env::temp_dir().join("kyc-worker-no-overlay")),
        env: Some(env.iter().cloned().collect()),
    })?)
}

impl Fleet {
    async fn start(redis_url: &str, shape: Shape) -> anyhow::Result<Self> {
        Self::start_variant(redis_url, shape, &Variant::default()).await
    }

    async fn start_variant(
        redis_url: &str,
        shape: Shape,
        variant: &Variant,
    ) -> anyhow::Result<Self> {
        let ports = (0..shape.processes)
            .map(|_| Ok(free_port()?))
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let mut config = SandboxConfig::for_tests(shape.complete_after);
        config.latency = shape.latency;
        config.limits = ["get", "write", "create", "pdf"]
            .iter()
            .map(|scope| format!("{scope}={UNLIMITED}/60s").parse())
            .collect::<Result<_, String>>()
            .map_err(anyhow::Error::msg)?;
        if shape.webhooks {
            // Didit delivers to one URL (a load balancer in production): the first process.
            config.webhook_url =
                Some(format!("http://127.0.0.1:{}/webhooks/didit", ports[0]).parse()?);
        }
        let sandbox = Sandbox::start(config).await?;
        let mut settings = None;
        let workers = if shape.children {
            let mut children = Vec::new();
            for port in ports {
                let mut env = fleet_env(redis_url, &sandbox, port, shape);
                env.extend(variant.env.iter().cloned());
                settings.get_or_insert(settings_for(&env)?);
                children.push(match &variant.binary {
                    Some(binary) => WorkerProcess::spawn_binary(binary, &env, port)?,
                    None => WorkerProcess::spawn(&env, port)?,
                });
            }
            for child in &mut children {
                child.ready().await?;
            }
            Workers::Children(children)
        } else {
            let mut apps = Vec::new();
            for port in ports {
                let mut env = fleet_env(redis_url, &sandbox, port, shape);
                env.extend(variant.env.iter().cloned());
                let s = settings_for(&env)?;
                let rules = RuleSet::from_settings(&s.rules)?;
                let app = Application::build(s.clone(), rules).await?;
                let (tx, rx) = oneshot::channel::<()>();
                let handle = tokio::spawn(app.run_until(async move {
                    let _ = rx.await;
                }));
                apps.push((tx, handle));
                settings.get_or_insert(s);
            }
            Workers::InProcess(apps)
        };
        let settings = settings.context("a fleet has at least one process")?;
        Ok(Self {
            sandbox,
            settings,
            workers,
        })
    }

    /// CPU seconds the child processes have used (`None` in-process).
    fn worker_cpu_seconds(&self) -> Option<f64> {
        match &self.workers {
            Workers::InProcess(_) => None,
            Workers::Children(children) => children.iter().map(WorkerProcess::cpu_seconds).sum(),
        }
    }

    async fn stop(self) {
        match self.workers {
            Workers::InProcess(apps) => {
                let mut handles = Vec::new();
                for (tx, handle) in apps {
                    let _ = tx.send(());
                    handles.push(handle);
                }
                for handle in handles {
                    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
                }
            }
            // Killed and reaped on drop.
            Workers::Children(children) => drop(children),
        }
        self.sandbox.stop().await;
    }

    async fn control(&self, action: serde_json::Value) -> anyhow::Result<()> {
        reqwest::Client::new()
            .post(format!("{}sandbox/control", self.sandbox.base_url()))
            .json(&action)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn didit_calls(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let stats: serde_json::Value =
            reqwest::get(format!("{}sandbox/stats", self.sandbox.base_url()))
                .await?
                .json()
                .await?;
        let requests = stats
            .get("requests")
            .and_then(|r| r.as_object())
            .context("sandbox stats have no requests")?;
        Ok(requests
            .iter()
            .filter(|(endpoint, _)| endpoint.as_str() != "sandbox_stats")
            .map(|(endpoint, n)| (endpoint.clone(), n.as_u64().unwrap_or(0)))
            .collect())
    }
}

/// What the events stream says about the run's requests.
#[derive(Default)]
struct Watch {
    last_id: String,
    created_ms: HashMap<String, u64>,
    decided_ms: HashMap<String, u64>,
    /// Our own XRANGE calls, subtracted from the command count.
    reads: u64,
}

fn id_ms(id: &str) -> u64 {
    id.split_once('-')
        .map_or(id, |(ms, _)| ms)
        .parse()
        .unwrap_or(0)
}

impl Watch {
    async fn read(
        &mut self,
        conn: &mut kyc_worker::queue::RedisConnection,
        stream: &str,
    ) -> anyhow::Result<()> {
        loop {
            let start = if self.last_id.is_empty() {
                "-".to_owned()
            } else {
                format!("({}", self.last_id)
            };
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(stream)
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            self.reads += 1;
            let n = reply.ids.len();
            for entry in reply.ids {
                let field = |name: &str| -> Option<String> {
                    entry
                        .map
                        .get(name)
                        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                };
                if let (Some(kind), Some(request)) = (field("type"), field("request_id")) {
                    let ms = id_ms(&entry.id);
                    match kind.as_str() {
                        "kyc.session.created" => {
                            self.created_ms.entry(request).or_insert(ms);
                        }
                        "kyc.session.decided" => {
                            self.decided_ms.entry(request).or_insert(ms);
                        }
                        _ => {}
                    }
                }
                self.last_id = entry.id;
            }
            if n < 1000 {
                return Ok(());
            }
        }
    }
}

/// Pushes `n` start requests, `PRODUCERS` at a time; returns request id → push time (unix ms).
async fn produce(producer: &Producer, n: usize, tag: &str) -> anyhow::Result<HashMap<String, u64>> {
    produce_scenario(producer, n, tag, None).await
}

/// [`produce`] with every session playing the sandbox scenario `scenario`.
async fn produce_scenario(
    producer: &Producer,
    n: usize,
    tag: &str,
    scenario: Option<&str>,
) -> anyhow::Result<HashMap<String, u64>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..PRODUCERS {
        let producer = producer.clone();
        let next = next.clone();
        let tag = tag.to_owned();
        let scenario = scenario.map(str::to_owned);
        tasks.push(tokio::spawn(async move {
            let mut pushed = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return Ok::<_, anyhow::Error>(pushed);
                }
                let at = kyc_worker::queue::now_ms();
                let id = producer
                    .start_kyc(StartRequest {
                        vendor_data: format!("bench-{tag}-{i}"),
                        sandbox_scenario: scenario.clone(),
                        ..StartRequest::default()
                    })
                    .await?;
                pushed.push((id.to_string(), at));
            }
        }));
    }
    let mut all = HashMap::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// Events per second between the first and the last decided event.
fn decided_rate(decided_ms: &HashMap<String, u64>) -> f64 {
    let first = decided_ms.values().min().copied().unwrap_or(0);
    let last = decided_ms.values().max().copied().unwrap_or(0);
    if last > first {
        (decided_ms.len() - 1) as f64 * 1000.0 / (last - first) as f64
    } else {
        0.0
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One throughput run: a fresh Redis database and fleet, `sessions` start requests.
async fn run_one(
    redis: &BenchRedis,
    shape: Shape,
    sessions: usize,
    idle_sample: Duration,
) -> anyhow::Result<LifecycleRun> {
    run_variant(redis, shape, &Variant::default(), sessions, idle_sample).await
}

/// [`run_one`] of a [`Variant`].
async fn run_variant(
    redis: &BenchRedis,
    shape: Shape,
    variant: &Variant,
    sessions: usize,
    idle_sample: Duration,
) -> anyhow::Result<LifecycleRun> {
    let mut admin = kyc_worker::queue::connect(redis.url()).await?;
    flush(&mut admin).await?;
    let fleet = Fleet::start_variant(redis.url(), shape, variant).await?;
    let producer = Producer::connect(&fleet.settings).await?;
    let stream = format!("{}:events", fleet.settings.redis.prefix);

    let monitor = if variant.monitor {
        Some(Monitor::start(redis.url(), &client_addr(&mut admin).await?).await?)
    } else {
        None
    };
    // The fleet's background traffic with nothing to do.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut admin)
        .await?;
    let idle_cpu_before = redis_cpu_seconds(&mut admin).await?;
    let idle_round_trips_before = monitor.as_ref().map(Monitor::counts);
    tokio::time::sleep(idle_sample).await;
    let idle_per_s = commands_since_reset(&mut admin).await? as f64 / idle_sample.as_secs_f64();
    let idle_cpu_per_s =
        (redis_cpu_seconds(&mut admin).await? - idle_cpu_before) / idle_sample.as_secs_f64();
    let idle_round_trips_per_s = monitor
        .as_ref()
        .zip(idle_round_trips_before)
        .map(|(m, before)| m.counts().since(&before).total() as f64 / idle_sample.as_secs_f64());
    let round_trips_before = monitor.as_ref().map(Monitor::counts);

    let calls_before = fleet.didit_calls().await?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut admin)
        .await?;
    let redis_cpu_before = redis_cpu_seconds(&mut admin).await?;
    let cpu_before = process_cpu_seconds();
    let worker_cpu_before = fleet.worker_cpu_seconds();
    let started = Instant::now();
    let tag = format!(
        "{}-{}-{}",
        shape.webhooks,
        shape.latency.as_millis(),
        shape.processes
    );
    let pushed = produce(&producer, sessions, &tag).await?;
    let push_seconds = started.elapsed().as_secs_f64();
    let mut watch = Watch::default();
    let deadline = started + RUN_LIMIT;
    loop {
        watch.read(&mut admin, &stream).await?;
        if pushed.keys().all(|id| watch.decided_ms.contains_key(id)) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {sessions} sessions decided after {RUN_LIMIT:?} ({shape:?})",
                watch.decided_ms.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cores =
        |after: Option<f64>, before: Option<f64>| after.zip(before).map(|(a, b)| (a - b) / seconds);
    let cpu = cores(process_cpu_seconds(), cpu_before);
    let worker_cores = cores(fleet.worker_cpu_seconds(), worker_cpu_before);
    let load_average = load_average();
    let redis_cpu = redis_cpu_seconds(&mut admin).await? - redis_cpu_before;
    let redis_cores = redis_cpu / seconds;
    let round_trips = monitor
        .as_ref()
        .zip(round_trips_before)
        .map(|(m, before)| m.counts().since(&before));
    drop(monitor);
    let mut by_command = command_calls_since_reset(&mut admin).await?;
    if let Some(xrange) = by_command.get_mut("xrange") {
        *xrange = xrange.saturating_sub(watch.reads);
    }
    let commands = by_command.values().sum::<u64>() as f64;
    let calls_after = fleet.didit_calls().await?;
    tokio::time::sleep(variant.linger).await;
    fleet.stop().await;

    let n = sessions as f64;
    let by_endpoint: BTreeMap<String, f64> = calls_after
        .iter()
        .map(|(endpoint, after)| {
            let before = calls_before.get(endpoint).copied().unwrap_or(0);
            (endpoint.clone(), after.saturating_sub(before) as f64 / n)
        })
        .filter(|(_, per)| *per > 0.0)
        .collect();
    let mut end_to_end: Vec<u64> = pushed
        .iter()
        .map(|(id, at)| watch.decided_ms[id].saturating_sub(*at))
        .collect();
    end_to_end.sort_unstable();
    let complete_ms = shape.complete_after.as_millis() as u64;
    let mut final_to_decided: Vec<u64> = pushed
        .keys()
        .filter_map(|id| {
            let created = watch.created_ms.get(id)?;
            Some(watch.decided_ms[id].saturating_sub(created + complete_ms))
        })
        .collect();
    final_to_decided.sort_unstable();
    Ok(LifecycleRun {
        webhooks: shape.webhooks,
        sandbox_latency_ms: shape.latency.as_millis() as u64,
        processes: shape.processes,
        sessions,
        sessions_per_s: decided_rate(&watch.decided_ms),
        start_requests_per_s: n / push_seconds,
        end_to_end_p50_ms: percentile(&end_to_end, 0.5),
        end_to_end_p99_ms: percentile(&end_to_end, 0.99),
        final_to_decided_p50_ms: percentile(&final_to_decided, 0.5),
        final_to_decided_p99_ms: percentile(&final_to_decided, 0.99),
        redis_commands_per_session: commands / n,
        redis_commands_per_session_net: (commands - idle_per_s * seconds).max(0.0) / n,
        redis_commands_by_name: by_command
            .into_iter()
            .filter(|(_, calls)| *calls > 0)
            .map(|(name, calls)| (name, calls as f64 / n))
            .collect(),
        didit_calls_per_session: by_endpoint.values().sum(),
        didit_calls_by_endpoint: by_endpoint,
        seconds,
        redis_cores,
        bench_process_cores: cpu,
        worker_cores,
        load_average,
        redis_cpu_ms_per_session_net: (redis_cpu - idle_cpu_per_s * seconds).max(0.0) * 1000.0 / n,
        round_trips_per_session_net: round_trips.as_ref().zip(idle_round_trips_per_s).map(
            |(counted, idle_per_s)| (counted.total() as f64 - idle_per_s * seconds).max(0.0) / n,
        ),
        round_trips_by_name: round_trips
            .map(|counted| {
                counted
                    .by_name
                    .into_iter()
                    .map(|(name, calls)| (name, calls as f64 / n))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Polls until the start queue has nothing ready and nothing in flight.
async fn start_queue_drained(queue: &Queue, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let stats = queue.stats(StartKyc::QUEUE).await?;
        if stats.ready == 0 && stats.in_flight == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("start jobs still queued after {limit:?}: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pushes `n` start requests and polls until each has its created event.
async fn create_waiting(
    fleet: &Fleet,
    admin: &mut kyc_worker::queue::RedisConnection,
    n: usize,
    tag: &str,
) -> anyhow::Result<()> {
    let producer = Producer::connect(&fleet.settings).await?;
    let stream = format!("{}:events", fleet.settings.redis.prefix);
    let pushed = produce(&producer, n, tag).await?;
    let mut watch = Watch::default();
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        watch.read(admin, &stream).await?;
        if pushed.keys().all(|id| watch.created_ms.contains_key(id)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} of {n} sessions created", watch.created_ms.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fleet whose sessions wait for their users: webhooks on (the first safety-net poll is
/// 15 min away), nothing final before 3,000 s.
fn waiting_shape() -> Shape {
    Shape::in_process(true, Duration::ZERO, Duration::from_secs(3_000))
}

/// Redis bytes per session created and waiting for its user (one in-process application).
async fn waiting_memory(redis: &BenchRedis, n: usize) -> anyhow::Result<f64> {
    let mut admin = kyc_worker::queue::connect(redis.url()).await?;
    flush(&mut admin).await?;
    let fleet = Fleet::start(redis.url(), waiting_shape()).await?;
    let queue = Queue::connect(
        redis.url(),
        &fleet.settings.redis.prefix,
        fleet.settings.queue.clone(),
    )
    .await?;
    let before = used_memory(&mut admin).await?;
    create_waiting(&fleet, &mut admin, n, "waiting").await?;
    // The jobs that created them finish and release their leases.
    start_queue_drained(&queue, RUN_LIMIT).await?;
    let after = used_memory(&mut admin).await?;
    fleet.stop().await;
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// The rule-matched case of the kept-memory reading: (scenario, the rule that decides it).
const KEPT_RULE: (&str, &str) = ("approve_underage", "under_18");

/// How much of `events.record_retention` a kept record may already have lived by the
/// time the kept-memory reading looks at it.
const KEPT_TTL_MARGIN: Duration = Duration::from_secs(3_600);

/// A key's pattern: the segments after the prefix that carry an id (16 characters or more,
/// or any digit) become `*`.
fn key_pattern(key: &str) -> String {
    key.split(':')
        .map(|segment| {
            if segment.len() >= 16 || segment.chars().any(|c| c.is_ascii_digit()) {
                "*"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// Polls until no poll job is ready, in flight or scheduled (gives up quietly after
/// `limit`: what is left then is part of the reading).
async fn poll_queue_settled(queue: &Queue, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let stats = queue.stats(kyc_worker::jobs::PollDecision::QUEUE).await?;
        if stats.ready + stats.in_flight + stats.scheduled == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Redis bytes kept per finished session: `n` sessions decided (webhooks on, one in-process
/// application; with `rule`, the default rule pack and a scenario that rule decides), the
/// fleet left idle, then every key whose time to live is shorter than
/// `events.record_retention` (less [`KEPT_TTL_MARGIN`]) deleted (webhook dedupe markers, rate-limit windows, leases)
/// and the outcome stream deleted (trimmed at `events.retention`, so not kept per session);
/// keys without a time to live or with a longer one stay. The `used_memory` delta from the
/// idle fleet before the first session, per session.
async fn kept_memory(
    redis: &BenchRedis,
    n: usize,
    rule: Option<(&str, &str)>,
) -> anyhow::Result<KeptMemory> {
    let mut admin = kyc_worker::queue::connect(redis.url()).await?;
    flush(&mut admin).await?;
    let mut variant = Variant::default();
    if rule.is_some() {
        let pack = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/rules.toml");
        if !pack.is_file() {
            bail!("the default rule pack {} is missing", pack.display());
        }
        variant
            .env
            .push(("KYC__RULES__FILE".to_owned(), pack.display().to_string()));
    }
    let fleet = Fleet::start_variant(
        redis.url(),
        Shape::in_process(true, Duration::ZERO, COMPLETE_AFTER),
        &variant,
    )
    .await?;
    let settings = fleet.settings.clone();
    let queue = Queue::connect(redis.url(), &settings.redis.prefix, settings.queue.clone()).await?;
    let producer = Producer::connect(&settings).await?;
    let stream = format!("{}:events", settings.redis.prefix);
    // Both readings with the same clients connected and idle, so their buffers and the
    // fleet's own keys (queues, groups) are on both sides.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = used_memory(&mut admin).await?;
    let buffers_before = memory_field(&mut admin, "mem_clients_normal").await?;
    let dataset_before = memory_field(&mut admin, "used_memory_dataset").await?;
    let pushed = produce_scenario(&producer, n, "kept", rule.map(|(scenario, _)| scenario)).await?;
    let mut watch = Watch::default();
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        watch.read(&mut admin, &stream).await?;
        if pushed.keys().all(|id| watch.decided_ms.contains_key(id)) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {n} kept-memory sessions decided",
                watch.decided_ms.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A rule's update-status comes back as a webhook and its read; let those finish.
    start_queue_drained(&queue, RUN_LIMIT).await?;
    poll_queue_settled(&queue, Duration::from_secs(10)).await?;

    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut admin)
        .await?;
    let field = |name: &str| -> String {
        last.ids
            .first()
            .and_then(|e| e.map.get(name))
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .unwrap_or_default()
    };
    let (status, decided_by) = (field("status"), field("decided_by"));
    let stream_bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&stream)
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut admin)
        .await?;
    // A record's lifetime is set to `events.record_retention` when it is written, so it reads
    // a little less by now: "shorter" means shorter by more than the margin.
    let retention_ms = settings
        .events
        .record_retention
        .saturating_sub(KEPT_TTL_MARGIN)
        .as_millis() as i64;
    let (mut kept, mut deleted, mut kept_bytes) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut admin)
            .await?;
        for key in keys {
            if key == stream {
                continue;
            }
            let ttl_ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut admin).await?;
            // -1: no time to live; -2: gone meanwhile.
            if (0..retention_ms).contains(&ttl_ms) {
                redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<()>(&mut admin)
                    .await?;
                *deleted.entry(key_pattern(&key)).or_insert(0u64) += 1;
            } else if ttl_ms != -2 {
                let pattern = key_pattern(&key);
                let bytes: Option<u64> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(&mut admin)
                    .await?;
                *kept_bytes.entry(pattern.clone()).or_insert(0u64) += bytes.unwrap_or(0);
                *kept.entry(pattern).or_insert(0u64) += 1;
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    redis::cmd("DEL")
        .arg(&stream)
        .query_async::<()>(&mut admin)
        .await?;
    let after = used_memory(&mut admin).await?;
    let buffers_after = memory_field(&mut admin, "mem_clients_normal").await?;
    let dataset_after = memory_field(&mut admin, "used_memory_dataset").await?;
    fleet.stop().await;
    drop(producer);
    drop(queue);
    let per = |counts: BTreeMap<String, u64>| -> BTreeMap<String, f64> {
        counts
            .into_iter()
            .map(|(pattern, count)| (pattern, count as f64 / n as f64))
            .collect()
    };
    Ok(KeptMemory {
        case: rule.map_or_else(
            || "no rule matched".to_owned(),
            |(scenario, rule)| format!("rule {rule} matched (scenario {scenario})"),
        ),
        sessions: n,
        status,
        decided_by,
        bytes_per_session: after.saturating_sub(before) as f64 / n as f64,
        keys_kept_per_session: per(kept),
        keys_deleted_per_session: per(deleted),
        bytes_kept_by_pattern: per(kept_bytes),
        client_buffer_bytes_per_session: (buffers_after as f64 - buffers_before as f64) / n as f64,
        dataset_bytes_per_session: (dataset_after as f64 - dataset_before as f64) / n as f64,
        events_stream_bytes_per_session: stream_bytes.unwrap_or(0) as f64 / n as f64,
        record_retention_s: settings.events.record_retention.as_secs(),
    })
}

/// A child process's resident memory at the default concurrency: idle, then with `n`
/// sessions it created waiting for their users. Then a second child with concurrency `n`
/// takes `n` start jobs at once, each in a Didit call the sandbox answers after
/// [`IN_FLIGHT_LATENCY`]. Two processes, so the in-flight burst does not inflate the
/// waiting reading (the allocator keeps what a burst used).
async fn worker_memory(redis: &BenchRedis, n: usize) -> anyhow::Result<WorkerMemory> {
    let mut admin = kyc_worker::queue::connect(redis.url()).await?;
    flush(&mut admin).await?;
    let (idle, waiting) = {
        let shape = Shape {
            children: true,
            ..waiting_shape()
        };
        let fleet = Fleet::start(redis.url(), shape).await?;
        let child = only_child(&fleet)?;
        let queue = Queue::connect(
            redis.url(),
            &fleet.settings.redis.prefix,
            fleet.settings.queue.clone(),
        )
        .await?;
        let idle = resident(child, "idle")?;
        create_waiting(&fleet, &mut admin, n, "worker-waiting").await?;
        start_queue_drained(&queue, RUN_LIMIT).await?;
        let waiting = resident(child, "waiting")?;
        fleet.stop().await;
        (idle, waiting)
    };

    flush(&mut admin).await?;
    let shape = Shape {
        children: true,
        concurrency: n,
        ..waiting_shape()
    };
    let fleet = Fleet::start(redis.url(), shape).await?;
    let child = only_child(&fleet)?;
    let read = |what: &str| resident(child, what);
    let queue = Queue::connect(
        redis.url(),
        &fleet.settings.redis.prefix,
        fleet.settings.queue.clone(),
    )
    .await?;
    let base = read("before the burst")?;

    fleet
        .control(serde_json::json!({
            "action": "set_latency",
            "ms": IN_FLIGHT_LATENCY.as_millis() as u64,
        }))
        .await?;
    let producer = Producer::connect(&fleet.settings).await?;
    produce(&producer, n, "worker-in-flight").await?;
    let didit_port = fleet.sandbox.addr().port();
    let deadline = Instant::now() + IN_FLIGHT_LIMIT;
    let (in_flight, open) = loop {
        let in_flight = queue.stats(StartKyc::QUEUE).await?.in_flight;
        let open = connections_to(didit_port)?;
        if (in_flight >= n as u64 && open >= n) || Instant::now() > deadline {
            break (in_flight, open);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let loaded = read("in flight")?;
    fleet.stop().await;
    Ok(WorkerMemory {
        jobs: n,
        waiting_concurrency: CONCURRENCY,
        concurrency: n,
        idle_rss_bytes: idle.now,
        waiting_rss_bytes: waiting.now,
        in_flight_base_rss_bytes: base.now,
        in_flight_rss_bytes: loaded.now,
        in_flight,
        didit_calls_open: open,
        peak_rss_bytes: loaded.peak,
    })
}

/// How far apart the latency run's start requests are: the sandbox finishes a session
/// [`COMPLETE_AFTER`] after creating it, so about one session is in flight at a time.
const LATENCY_PACE: Duration = Duration::from_millis(100);

/// Webhook → decided event with one session in flight at a time (webhooks on, Didit latency
/// 0, one in-process application). The webhook's time is its `webhook_received` audit
/// step (written once the signature, dedupe and session checks passed); the event's is its
/// stream id. Both clocks are this host's.
async fn webhook_latency(redis: &BenchRedis, n: usize) -> anyhow::Result<WebhookLatency> {
    let mut admin = kyc_worker::queue::connect(redis.url()).await?;
    flush(&mut admin).await?;
    let fleet = Fleet::start(
        redis.url(),
        Shape::in_process(true, Duration::ZERO, COMPLETE_AFTER),
    )
    .await?;
    let producer = Producer::connect(&fleet.settings).await?;
    let mut pace = tokio::time::interval(LATENCY_PACE);
    let mut requests = Vec::with_capacity(n);
    for i in 0..n {
        pace.tick().await;
        let request = StartRequest {
            vendor_data: format!("bench-latency-{i}"),
            ..StartRequest::default()
        };
        requests.push(producer.start_kyc(request).await?);
    }
    let stream = format!("{}:events", fleet.settings.redis.prefix);
    let mut watch = Watch::default();
    let deadline = Instant::now() + RUN_LIMIT;
    while !requests
        .iter()
        .all(|r| watch.decided_ms.contains_key(r.as_str()))
    {
        if Instant::now() > deadline {
            bail!("{} of {n} latency sessions decided", watch.decided_ms.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        watch.read(&mut admin, &stream).await?;
    }
    let store = kyc_worker::store::Store::new(
        admin.clone(),
        &fleet.settings.redis.prefix,
        fleet.settings.events.clone(),
    );
    let mut latencies = Vec::with_capacity(n);
    for request in &requests {
        let accepted = store
            .audit_trail(request)
            .await?
            .iter()
            .filter(|step| step["step"] == "webhook_received")
            .filter_map(|step| step["at_ms"].as_u64())
            .max();
        if let (Some(accepted), Some(decided)) = (accepted, watch.decided_ms.get(request.as_str()))
        {
            latencies.push(decided.saturating_sub(accepted));
        }
    }
    fleet.stop().await;
    if latencies.is_empty() {
        bail!("no webhook reached the fleet in the latency run");
    }
    latencies.sort_unstable();
    Ok(WebhookLatency {
        sessions: latencies.len(),
        pace_ms: LATENCY_PACE.as_millis() as u64,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0),
    })
}

/// The subscriber of the delivery run.
const BENCH_SUBSCRIBER: &str = "bench";
/// Events are added this far apart in the delivery run, so each meets an idle fleet.
const DELIVERY_PACE: Duration = Duration::from_millis(20);

/// A loopback receiver answering 200 at once; remembers when each `webhook-id` first arrived.
async fn receiver() -> anyhow::Result<(u16, Arc<Mutex<HashMap<String, u64>>>, JoinHandle<()>)> {
    let arrivals: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let seen = arrivals.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let seen = seen.clone();
            async move {
                let now = kyc_worker::queue::now_ms();
                if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(id.to_owned())
                        .or_insert(now);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((port, arrivals, server))
}

/// Event → subscriber receipt with one in-process application and one subscriber on
/// loopback. Events are added to the outcome stream as the publish script adds them (the
/// verification pipeline's own costs are measured by the lifecycle runs), so every Redis
/// command in the window, less the idle traffic and the events' XADDs, is the delivery's:
/// the bridge's read, enqueue and acknowledgement, the worker's fetch, the state writes and
/// the finish.
async fn subscriber_delivery(
    redis: &BenchRedis,
    n: usize,
    idle_sample: Duration,
) -> anyhow::Result<SubscriberDelivery> {
    let mut admin = kyc_worker::queue::connect(redis.url()).await?;
    flush(&mut admin).await?;
    let (port, arrivals, server) = receiver().await?;
    let shape = Shape {
        subscriber: Some(port),
        ..Shape::in_process(true, Duration::ZERO, COMPLETE_AFTER)
    };
    let fleet = Fleet::start(redis.url(), shape).await?;
    let stream = format!("{}:events", fleet.settings.redis.prefix);
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut admin)
            .await;
        if groups.is_ok_and(|g| g.groups.iter().any(|g| g.name == "subscribers")) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the delivery bridge never created its group");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut admin)
        .await?;
    tokio::time::sleep(idle_sample).await;
    let idle_per_s = commands_since_reset(&mut admin).await? as f64 / idle_sample.as_secs_f64();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut admin)
        .await?;
    let started = Instant::now();
    let mut pace = tokio::time::interval(DELIVERY_PACE);
    let mut published = HashMap::with_capacity(n);
    for i in 0..n {
        pace.tick().await;
        let event_id = format!("bench-event-{i}");
        let entry: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(&[
                ("event_id", event_id.as_str()),
                ("type", "kyc.session.decided"),
                ("session_id", ""),
                ("request_id", "bench"),
                ("vendor_data", "bench-user"),
                ("status", "Approved"),
                ("previous_status", ""),
                ("decided_by", "didit"),
                ("data", "{}"),
            ])
            .query_async(&mut admin)
            .await?;
        let at_ms = entry
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
            .context("a stream entry id starts with its ms")?;
        published.insert(event_id, at_ms);
    }
    while arrivals.lock().unwrap_or_else(|e| e.into_inner()).len() < n {
        if Instant::now() > deadline {
            bail!("the subscriber received only part of the {n} events");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The finish (state write, acknowledgement) follows each receipt by a round trip or two.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut by_name = command_calls_since_reset(&mut admin).await?;
    if let Some(xadd) = by_name.get_mut("xadd") {
        *xadd = xadd.saturating_sub(n as u64);
    }
    let commands: u64 = by_name.values().sum();
    let mut latencies: Vec<u64> = {
        let arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner());
        published
            .iter()
            .filter_map(|(id, at)| arrivals.get(id).map(|got| got.saturating_sub(*at)))
            .collect()
    };
    fleet.stop().await;
    server.abort();
    latencies.sort_unstable();
    let per = n.max(1) as f64;
    Ok(SubscriberDelivery {
        events: n,
        pace_ms: DELIVERY_PACE.as_millis() as u64,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0),
        redis_commands_per_delivery: (commands as f64 - idle_per_s * seconds).max(0.0) / per,
        redis_commands_by_name: by_name
            .into_iter()
            .filter(|(_, calls)| *calls > 0)
            .map(|(name, calls)| (name, calls as f64 / per))
            .collect(),
    })
}

/// The one worker process of a children fleet.
fn only_child(fleet: &Fleet) -> anyhow::Result<&crate::processes::WorkerProcess> {
    let Workers::Children(children) = &fleet.workers else {
        bail!("the worker-memory fleet is a child process");
    };
    children
        .first()
        .context("the worker-memory fleet has one process")
}

fn resident(
    child: &crate::processes::WorkerProcess,
    what: &str,
) -> anyhow::Result<crate::server::Resident> {
    child
        .resident()
        .with_context(|| format!("cannot read the worker's memory ({what})"))
}

/// Every lifecycle measurement in one run.
pub async fn run(options: &LifecycleOptions) -> anyhow::Result<LifecycleReport> {
    let redis = BenchRedis::start(&options.redis_server).await?;
    let mut runs = Vec::new();
    let mut profile = None;
    for webhooks in [true, false] {
        for latency_ms in [0, 50] {
            let shape =
                Shape::in_process(webhooks, Duration::from_millis(latency_ms), COMPLETE_AFTER);
            // The first run (webhooks on, latency 0: the path the targets are about).
            let profiler = if options.profile && runs.is_empty() {
                Some(Profiler::start()?)
            } else {
                None
            };
            runs.push(run_one(&redis, shape, options.sessions, options.idle_sample).await?);
            if let Some(profiler) = profiler {
                profile = Some(profiler.finish(
                    &options.out_dir.join("flamegraph.svg"),
                    "webhooks on, Didit latency 0, one in-process application",
                )?);
            }
        }
    }
    let mut scaling = Vec::new();
    for processes in [1, 2, 4] {
        let shape = Shape {
            processes,
            children: true,
            ..Shape::in_process(true, Duration::ZERO, COMPLETE_AFTER)
        };
        scaling.push(run_one(&redis, shape, options.sessions, options.idle_sample).await?);
    }
    let bytes = waiting_memory(&redis, options.waiting_sessions).await?;
    let worker_memory = worker_memory(&redis, options.worker_jobs).await?;
    let webhook_latency = webhook_latency(&redis, options.latency_sessions).await?;
    let subscriber_delivery =
        subscriber_delivery(&redis, options.delivery_events, options.idle_sample).await?;
    let tracing = tracing_cost(&redis, options).await?;
    let round_trips = Some(
        run_variant(
            &redis,
            Shape {
                children: true,
                ..Shape::in_process(true, Duration::ZERO, COMPLETE_AFTER)
            },
            &Variant {
                monitor: true,
                ..Variant::default()
            },
            options.round_trip_sessions,
            options.idle_sample,
        )
        .await?,
    );
    let mut kept = Vec::new();
    for rule in [None, Some(KEPT_RULE)] {
        kept.push(kept_memory(&redis, options.kept_sessions, rule).await?);
    }
    Ok(LifecycleReport {
        tracing,
        round_trips,
        kept,
        release_build: !cfg!(debug_assertions),
        runs,
        scaling,
        waiting_sessions: options.waiting_sessions,
        redis_bytes_per_waiting_session: bytes,
        worker_memory,
        webhook_latency,
        subscriber_delivery,
        profile,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}

/// The tracing-cost runs alone (`kyc-bench tracing`), on a redis-server of their own.
pub async fn tracing_only(options: &LifecycleOptions) -> anyhow::Result<Vec<TracingRun>> {
    let redis = BenchRedis::start(&options.redis_server).await?;
    tracing_cost(&redis, options).await
}

/// An OTLP/HTTP receiver that takes every export and counts requests and bytes.
struct TraceSink {
    port: u16,
    received: Arc<std::sync::Mutex<(u64, u64)>>,
    task: JoinHandle<()>,
}

impl TraceSink {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
        let tally = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let tally = tally.clone();
                async move {
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    t.0 += 1;
                    t.1 += body.len() as u64;
                    // An empty ExportTraceServiceResponse is zero bytes of protobuf.
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")]
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            port,
            received,
            task,
        })
    }

    /// (requests, bytes) so far.
    fn received(&self) -> (u64, u64) {
        *self.received.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TraceSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// What tracing costs one worker process: each variant once per turn, in turns.
async fn tracing_cost(
    redis: &BenchRedis,
    options: &LifecycleOptions,
) -> anyhow::Result<Vec<TracingRun>> {
    let sink = TraceSink::start().await?;
    let shape = Shape {
        children: true,
        ..Shape::in_process(true, Duration::ZERO, COMPLETE_AFTER)
    };
    let mut variants: Vec<(&str, Variant)> = Vec::new();
    if let Some(binary) = &options.baseline_worker {
        variants.push((
            NO_TRACING_CODE,
            Variant {
                binary: Some(binary.clone()),
                ..Variant::default()
            },
        ));
    }
    variants.push((NO_ENDPOINT, Variant::default()));
    variants.push((
        ENDPOINT_SET,
        Variant {
            env: vec![(
                "KYC__TELEMETRY__OTLP_ENDPOINT".to_owned(),
                format!("http://127.0.0.1:{}", sink.port),
            )],
            linger: Duration::from_secs(2),
            ..Variant::default()
        },
    ));
    let mut per_turn: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut exported = vec![(0u64, 0u64); variants.len()];
    let sessions = options.tracing_sessions;
    for turn in 0..options.tracing_turns.max(1) {
        // A-B-C, then C-B-A: a load that rises or falls over a turn favours no variant.
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if turn % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let variant = &variants[i].1;
            let before = sink.received();
            let run = run_variant(redis, shape, variant, sessions, options.idle_sample).await?;
            // Every span has been exported by now: the run lingered past the export delay.
            let after = sink.received();
            exported[i].0 += after.0 - before.0;
            exported[i].1 += after.1 - before.1;
            let cores = run.worker_cores.unwrap_or(0.0);
            per_turn[i].push(cores * run.seconds * 1000.0 / sessions as f64);
        }
    }
    let turns = options.tracing_turns.max(1);
    let n = (sessions * turns) as f64;
    Ok(variants
        .iter()
        .zip(per_turn)
        .zip(exported)
        .map(|(((name, _), cpu), (requests, bytes))| TracingRun {
            variant: (*name).to_owned(),
            sessions,
            turns,
            worker_cpu_ms_per_session: median(&cpu),
            worker_cpu_ms_per_turn: cpu,
            exports_per_session: requests as f64 / n,
            export_bytes_per_session: bytes as f64 / n,
        })
        .collect())
}
