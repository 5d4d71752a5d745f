//! `kyc-worker bench lifecycle`: the whole fleet against the in-process sandbox, from a start
//! request to its `kyc.session.decided` event.
//!
//! A "worker process" here is one [`Application`] in this process (its own Redis connections,
//! HTTP port, consumer name and 64 workers), all sharing this process's tokio runtime and the
//! sandbox's CPU. That is a stand-in for separate `kyc-worker run` processes: it shows how the
//! fleet scales on one host, not how separate kernels' schedulers would share the cores.
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
//! - Redis bytes per waiting session, and sessions/s with 1, 2 and 4 applications.
//!
//! Didit's rate limits are lifted in the sandbox and the fleet for these runs (they would cap
//! every figure at 10 sessions/s); `budget` computes what the default limits allow instead.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::{sync::oneshot, task::JoinHandle};

use super::server::{
    command_calls_since_reset, commands_since_reset, flush, process_cpu_seconds, redis_cpu_seconds,
    used_memory, BenchRedis,
};
use crate::{
    domain::StartRequest,
    producer::Producer,
    rules::RuleSet,
    sandbox::{Sandbox, SandboxConfig, SandboxHandle},
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

#[derive(Debug, Clone)]
pub struct LifecycleOptions {
    /// Sessions per lifecycle run (4 runs) and per scaling run (3 runs).
    pub sessions: usize,
    /// Sessions created and left waiting for the memory reading.
    pub waiting_sessions: usize,
    /// How long the fleet's idle Redis traffic is sampled before each run.
    pub idle_sample: Duration,
    pub out_dir: PathBuf,
    pub redis_server: String,
}

impl LifecycleOptions {
    pub fn full(out_dir: PathBuf) -> Self {
        Self {
            sessions: 5_000,
            waiting_sessions: 10_000,
            idle_sample: Duration::from_secs(2),
            out_dir,
            redis_server: "redis-server".into(),
        }
    }

    pub fn quick(out_dir: PathBuf) -> Self {
        Self {
            sessions: 1_000,
            waiting_sessions: 1_000,
            idle_sample: Duration::from_millis(500),
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
    /// Cores the bench process kept busy: the fleet, the sandbox and the load generator.
    pub fleet_and_sandbox_cores: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LifecycleReport {
    pub runs: Vec<LifecycleRun>,
    pub scaling: Vec<LifecycleRun>,
    pub waiting_sessions: usize,
    pub redis_bytes_per_waiting_session: f64,
    pub cpus: usize,
}

/// One scenario of a run.
#[derive(Debug, Clone, Copy)]
struct Shape {
    webhooks: bool,
    latency: Duration,
    processes: usize,
    complete_after: Duration,
}

/// Redis, the sandbox and `processes` applications wired together.
struct Fleet {
    sandbox: SandboxHandle,
    settings: Settings,
    apps: Vec<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn settings_for(
    redis_url: &str,
    sandbox: &SandboxHandle,
    port: u16,
    webhooks: bool,
) -> anyhow::Result<Settings> {
    let unlimited = UNLIMITED.to_string();
    let env: HashMap<String, String> = [
        ("KYC__REDIS__URL", redis_url.to_owned()),
        ("KYC__HTTP__HOST", "127.0.0.1".to_owned()),
        ("KYC__HTTP__PORT", port.to_string()),
        (
            "KYC__DIDIT__BASE_URL",
            sandbox.base_url().as_str().trim_end_matches('/').to_owned(),
        ),
        ("KYC__DIDIT__WEBHOOKS", webhooks.to_string()),
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
        ("KYC__WORKER__SHUTDOWN_TIMEOUT", "5s".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(Settings::load_from(&Sources {
        config_dir: Some(std::env::temp_dir().join("kyc-worker-no-overlay")),
        env: Some(env),
    })?)
}

impl Fleet {
    async fn start(redis_url: &str, shape: Shape) -> anyhow::Result<Self> {
        let ports = (0..shape.processes)
            .map(|_| free_port())
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
        let mut apps = Vec::new();
        let mut settings = None;
        for port in ports {
            let s = settings_for(redis_url, &sandbox, port, shape.webhooks)?;
            let rules = RuleSet::from_settings(&s.rules)?;
            let app = Application::build(s.clone(), rules).await?;
            let (tx, rx) = oneshot::channel::<()>();
            let handle = tokio::spawn(app.run_until(async move {
                let _ = rx.await;
            }));
            apps.push((tx, handle));
            settings.get_or_insert(s);
        }
        let settings = settings.context("a fleet has at least one process")?;
        Ok(Self {
            sandbox,
            settings,
            apps,
        })
    }

    async fn stop(self) {
        let mut handles = Vec::new();
        for (tx, handle) in self.apps {
            let _ = tx.send(());
            handles.push(handle);
        }
        for handle in handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
        self.sandbox.stop().await;
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
    async fn read(&mut self, conn: &mut ConnectionManager, stream: &str) -> anyhow::Result<()> {
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
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..PRODUCERS {
        let producer = producer.clone();
        let next = next.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut pushed = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return Ok::<_, anyhow::Error>(pushed);
                }
                let at = crate::queue::now_ms();
                let id = producer
                    .start_kyc(StartRequest {
                        vendor_data: format!("bench-{tag}-{i}"),
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
    let mut admin = crate::queue::connect(redis.url()).await?;
    flush(&mut admin).await?;
    let fleet = Fleet::start(redis.url(), shape).await?;
    let producer = Producer::connect(&fleet.settings).await?;
    let stream = format!("{}:events", fleet.settings.redis.prefix);

    // The fleet's background traffic with nothing to do.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut admin)
        .await?;
    tokio::time::sleep(idle_sample).await;
    let idle_per_s = commands_since_reset(&mut admin).await? as f64 / idle_sample.as_secs_f64();

    let calls_before = fleet.didit_calls().await?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut admin)
        .await?;
    let redis_cpu_before = redis_cpu_seconds(&mut admin).await?;
    let cpu_before = process_cpu_seconds();
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
    let cpu = process_cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| (after - before) / seconds);
    let redis_cores = (redis_cpu_seconds(&mut admin).await? - redis_cpu_before) / seconds;
    let mut by_command = command_calls_since_reset(&mut admin).await?;
    if let Some(xrange) = by_command.get_mut("xrange") {
        *xrange = xrange.saturating_sub(watch.reads);
    }
    let commands = by_command.values().sum::<u64>() as f64;
    let calls_after = fleet.didit_calls().await?;
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
        fleet_and_sandbox_cores: cpu,
    })
}

/// Redis bytes per session created and waiting for its user (webhook mode, one process).
async fn waiting_memory(redis: &BenchRedis, n: usize) -> anyhow::Result<f64> {
    let mut admin = crate::queue::connect(redis.url()).await?;
    flush(&mut admin).await?;
    let shape = Shape {
        webhooks: true,
        latency: Duration::ZERO,
        processes: 1,
        complete_after: Duration::from_secs(3_000),
    };
    let fleet = Fleet::start(redis.url(), shape).await?;
    let producer = Producer::connect(&fleet.settings).await?;
    let stream = format!("{}:events", fleet.settings.redis.prefix);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = used_memory(&mut admin).await?;
    let pushed = produce(&producer, n, "waiting").await?;
    let mut watch = Watch::default();
    let deadline = Instant::now() + RUN_LIMIT;
    while !pushed.keys().all(|id| watch.created_ms.contains_key(id)) {
        if Instant::now() > deadline {
            bail!("{} of {n} sessions created", watch.created_ms.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        watch.read(&mut admin, &stream).await?;
    }
    // Let the jobs that created them finish and release their leases.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = used_memory(&mut admin).await?;
    fleet.stop().await;
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// Every lifecycle measurement in one run.
pub async fn run(options: &LifecycleOptions) -> anyhow::Result<LifecycleReport> {
    let redis = BenchRedis::start(&options.redis_server).await?;
    let mut runs = Vec::new();
    for webhooks in [true, false] {
        for latency_ms in [0, 50] {
            let shape = Shape {
                webhooks,
                latency: Duration::from_millis(latency_ms),
                processes: 1,
                complete_after: COMPLETE_AFTER,
            };
            runs.push(run_one(&redis, shape, options.sessions, options.idle_sample).await?);
        }
    }
    let mut scaling = Vec::new();
    for processes in [1, 2, 4] {
        let shape = Shape {
            webhooks: true,
            latency: Duration::ZERO,
            processes,
            complete_after: COMPLETE_AFTER,
        };
        scaling.push(run_one(&redis, shape, options.sessions, options.idle_sample).await?);
    }
    let bytes = waiting_memory(&redis, options.waiting_sessions).await?;
    Ok(LifecycleReport {
        runs,
        scaling,
        waiting_sessions: options.waiting_sessions,
        redis_bytes_per_waiting_session: bytes,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}
