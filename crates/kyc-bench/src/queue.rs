//! `kyc-worker bench queue`: what the queue costs, measured against apalis-redis 1.0.0 with
//! its default settings in the same run on the same private redis-server.
//!
//! Every figure is a rate or a per-unit cost taken in one run, so ratios hold on a noisy
//! machine: jobs/s enqueue and consume at concurrency 1 and 64 (5,000-job backlog, because
//! apalis-redis defaults fail above ~8,000 due jobs), Redis commands per job from
//! `INFO commandstats` deltas, delayed-job lateness at 1,000 and 5,000 jobs/s, Redis bytes
//! per delayed job at 100,000, and the Redis commands per second of one and of four idle
//! `kyc-worker run` processes (an idle fleet must not load the Redis everyone shares).

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use apalis::prelude::*;
use serde::{Deserialize, Serialize};

use kyc_worker::{
    queue::{
        connect, now_ms, unix_ms, Completion, Job, JobError, Maintenance, Queue, RedisBackend,
    },
    settings::QueueSettings,
};

use crate::{
    processes::WorkerProcess,
    server::{
        commands_since_reset, flush, raw_command_calls, redis_version, used_memory, BenchRedis,
    },
};

/// What to run; the defaults are the sizes, `quick` shrinks them for CI.
#[derive(Debug, Clone)]
pub struct QueueBenchOptions {
    pub backlog: usize,
    pub delayed: usize,
    pub lateness_seconds: u64,
    pub lateness_rates: Vec<u64>,
    /// How long idle processes are measured.
    pub idle_seconds: u64,
    pub out_dir: PathBuf,
    pub redis_server: String,
}

impl QueueBenchOptions {
    pub fn full(out_dir: PathBuf) -> Self {
        Self {
            backlog: 5_000,
            delayed: 100_000,
            lateness_seconds: 5,
            lateness_rates: vec![1_000, 5_000],
            idle_seconds: 60,
            out_dir,
            redis_server: "redis-server".into(),
        }
    }

    pub fn quick(out_dir: PathBuf) -> Self {
        Self {
            backlog: 1_000,
            delayed: 5_000,
            lateness_seconds: 2,
            idle_seconds: 10,
            ..Self::full(out_dir)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    pub enqueue_per_s: f64,
    pub consume_c1_per_s: f64,
    pub consume_c64_per_s: f64,
    /// Redis commands (client and scripted) per job, enqueue through finish, at c=64.
    pub commands_per_job: f64,
    /// Jobs that had not finished when the run gave up (a wedged backend).
    pub unfinished: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueBenchReport {
    pub backlog: usize,
    pub ours: Throughput,
    pub apalis_redis_default: Throughput,
    /// ours consume at c=64 divided by apalis-redis's.
    pub consume_ratio_c64: f64,
    /// Delayed jobs scheduled at a steady rate, each due 1 s after it was scheduled.
    pub lateness: Vec<Lateness>,
    /// Idle `kyc-worker run` processes.
    pub idle: Vec<IdleTraffic>,
    pub redis_bytes_per_delayed_job: f64,
    pub delayed_jobs_measured: usize,
    pub redis_version: String,
    pub cpus: usize,
}

/// How late delayed jobs started at one scheduling rate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lateness {
    pub rate_per_s: u64,
    pub jobs: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// Redis commands sent by idle fleet processes, from `INFO commandstats` (scripted commands
/// and pings included; only the measuring `INFO` left out).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdleTraffic {
    pub processes: usize,
    /// Job queues each process reads, all through one blocking read; the intake stream is
    /// read besides.
    #[serde(default)]
    pub queues_per_process: usize,
    pub seconds: f64,
    pub commands: u64,
    pub per_process_per_s: f64,
    /// Calls per command over the window, all processes together.
    pub by_command: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NoopJob {
    n: u64,
    /// Unix ms the job is due (lateness runs), 0 otherwise.
    due_ms: u64,
}

impl Job for NoopJob {
    const QUEUE: &'static str = "bench";
    const VERSION: u32 = 1;
}

/// Completion counts shared with the handlers.
#[derive(Default)]
struct Tally {
    done: AtomicU64,
    first_start: Mutex<Option<Instant>>,
    last_done: Mutex<Option<Instant>>,
    lateness_ms: Mutex<Vec<u64>>,
}

impl Tally {
    fn start(&self) {
        let mut first = self.first_start.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert_with(Instant::now);
    }
    fn finish(&self, due_ms: u64) {
        if due_ms > 0 {
            self.lateness_ms
                .lock()
                .expect("tally lock")
                .push(now_ms().saturating_sub(due_ms));
        }
        *self.last_done.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.done.fetch_add(1, Ordering::SeqCst);
    }
    fn rate(&self) -> f64 {
        let first = *self.first_start.lock().unwrap_or_else(|e| e.into_inner());
        let last = *self.last_done.lock().unwrap_or_else(|e| e.into_inner());
        match (first, last) {
            (Some(a), Some(b)) if b > a => {
                self.done.load(Ordering::SeqCst) as f64 / (b - a).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

async fn ours_handler(
    job: NoopJob,
    tally: Data<Arc<Tally>>,
) -> Result<Completion<NoopJob>, JobError> {
    tally.start();
    tally.finish(job.due_ms);
    Ok(Completion::Done)
}

async fn apalis_handler(
    job: NoopJob,
    tally: Data<Arc<Tally>>,
) -> Result<(), apalis_core::error::BoxDynError> {
    tally.start();
    tally.finish(job.due_ms);
    Ok(())
}

async fn wait_for(tally: &Tally, n: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    while tally.done.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n.saturating_sub(tally.done.load(Ordering::SeqCst))
}

/// The shipped defaults: the numbers describe what an operator gets.
fn settings() -> QueueSettings {
    QueueSettings::default()
}

/// One run of our queue: enqueue a backlog, then drain it with `concurrency`.
async fn run_ours(
    url: &str,
    backlog: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let mut admin = connect(url).await?;
    flush(&mut admin).await?;
    let queue = Queue::connect(url, "bench", settings()).await?;
    let jobs: Vec<NoopJob> = (0..backlog as u64)
        .map(|n| NoopJob { n, due_ms: 0 })
        .collect();
    let started = Instant::now();
    for chunk in jobs.chunks(500) {
        queue.push_many(chunk).await?;
    }
    let enqueue = backlog as f64 / started.elapsed().as_secs_f64();

    let tally = Arc::new(Tally::default());
    let consumer = format!("bench-ours-{concurrency}");
    let worker = WorkerBuilder::new(consumer.as_str())
        .backend(RedisBackend::<NoopJob>::new(queue.clone(), &consumer))
        .concurrency(concurrency)
        .data(tally.clone())
        .build(ours_handler);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
        Ok::<(), apalis_core::error::WorkerError>(())
    }));
    let unfinished = wait_for(&tally, backlog as u64, Duration::from_secs(120)).await;
    let _ = stop.send(());
    let _ = handle.await;
    let commands = commands_since_reset(&mut admin).await? as f64 / backlog as f64;
    Ok((enqueue, tally.rate(), commands, unfinished))
}

/// One run of apalis-redis 1.0.0 with its default configuration.
async fn run_apalis(
    url: &str,
    backlog: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let mut admin = connect(url).await?;
    flush(&mut admin).await?;
    let conn = apalis_redis::connect(url).await?;
    let mut storage = apalis_redis::RedisStorage::<NoopJob>::new(conn);
    let started = Instant::now();
    for n in 0..backlog as u64 {
        storage
            .push(NoopJob { n, due_ms: 0 })
            .await
            .map_err(|e| anyhow::anyhow!("apalis-redis push: {e}"))?;
    }
    let enqueue = backlog as f64 / started.elapsed().as_secs_f64();

    let tally = Arc::new(Tally::default());
    let worker = WorkerBuilder::new(format!("bench-apalis-{concurrency}-{}", std::process::id()))
        .backend(storage)
        .concurrency(concurrency)
        .data(tally.clone())
        .build(apalis_handler);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
        Ok::<(), apalis_core::error::WorkerError>(())
    }));
    let unfinished = wait_for(&tally, backlog as u64, Duration::from_secs(120)).await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
    let commands = commands_since_reset(&mut admin).await? as f64 / backlog as f64;
    Ok((enqueue, tally.rate(), commands, unfinished))
}

/// Lateness of delayed jobs pushed at `rate`/s for `seconds`, each due 1 s after its push.
async fn run_lateness(url: &str, rate: u64, seconds: u64) -> anyhow::Result<Lateness> {
    let mut admin = connect(url).await?;
    flush(&mut admin).await?;
    let queue = Queue::connect(url, "bench", settings()).await?;
    let tally = Arc::new(Tally::default());
    let maintenance = Maintenance::spawn(queue.clone(), vec![NoopJob::QUEUE], "bench-late".into());
    let worker = WorkerBuilder::new("bench-late")
        .backend(RedisBackend::<NoopJob>::new(queue.clone(), "bench-late"))
        .concurrency(64)
        .data(tally.clone())
        .build(ours_handler);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
        Ok::<(), apalis_core::error::WorkerError>(())
    }));
    // The promoter subscribes before the first job is scheduled.
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribers(&mut admin, &queue.keys(NoopJob::QUEUE).wake).await? == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the promoter did not subscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let per_tick = (rate / 100).max(1);
    let ticks = seconds * 100;
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0;
    for _ in 0..ticks {
        interval.tick().await;
        let due = SystemTime::now() + Duration::from_secs(1);
        let due_ms = unix_ms(due);
        let batch: Vec<(String, NoopJob, SystemTime)> = (0..per_tick)
            .map(|i| (format!("late-{}", n + i), NoopJob { n: n + i, due_ms }, due))
            .collect();
        n += per_tick;
        queue.push_at_many(&batch).await?;
    }
    let _ = wait_for(&tally, n, Duration::from_secs(60)).await;
    let _ = stop.send(());
    let _ = handle.await;
    maintenance.stop();
    let mut lateness = tally
        .lateness_ms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    lateness.sort_unstable();
    Ok(Lateness {
        rate_per_s: rate,
        jobs: lateness.len(),
        p50_ms: percentile(&lateness, 0.50),
        p99_ms: percentile(&lateness, 0.99),
        max_ms: lateness.last().copied().unwrap_or(0),
    })
}

async fn subscribers(
    conn: &mut impl redis::aio::ConnectionLike,
    channel: &str,
) -> anyhow::Result<u64> {
    let reply: Vec<(String, u64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await?;
    Ok(reply.first().map(|(_, n)| *n).unwrap_or(0))
}

/// Redis commands of `processes` idle `kyc-worker run` children over `seconds`, after they
/// are ready and have settled (their start-up reads are not idle traffic).
async fn run_idle(url: &str, processes: usize, seconds: u64) -> anyhow::Result<IdleTraffic> {
    let mut admin = connect(url).await?;
    flush(&mut admin).await?;
    let mut children = Vec::with_capacity(processes);
    for _ in 0..processes {
        let port = didit_sandbox::ports::free_port()?;
        let env: Vec<(String, String)> = [
            ("KYC__REDIS__URL", url.to_owned()),
            ("KYC__REDIS__PREFIX", "kyc".to_owned()),
            ("KYC__HTTP__HOST", "127.0.0.1".to_owned()),
            ("KYC__HTTP__PORT", port.to_string()),
            // Nothing listens there: an idle fleet makes no Didit call worth answering.
            ("KYC__DIDIT__BASE_URL", "http://127.0.0.1:9".to_owned()),
            ("KYC__LOG__LEVEL", "error".to_owned()),
            ("KYC__RULES__FILE", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        children.push(WorkerProcess::spawn(&env, port)?);
    }
    for child in &mut children {
        child.ready().await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queues_per_process = queues_read(&mut admin).await?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut admin)
        .await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Every command counts here, pings included; only the measuring INFO is left out (and
    // the RESETSTAT that opened the window).
    let mut by_command = raw_command_calls(&mut admin).await?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(children);
    by_command.remove("info");
    by_command.remove("config|resetstat");
    let commands: u64 = by_command.values().sum();
    Ok(IdleTraffic {
        processes,
        queues_per_process,
        seconds: elapsed,
        commands,
        per_process_per_s: commands as f64 / elapsed / processes as f64,
        by_command,
    })
}

/// Job queues the fleet under the `kyc` prefix reads: the ready streams its readers made
/// (a reader creates a stream's group, and the stream, on its first read). Every `kyc-worker
/// run` reads every queue, so this is also each process's count.
async fn queues_read(admin: &mut impl redis::aio::ConnectionLike) -> anyhow::Result<usize> {
    let streams: Vec<String> = redis::cmd("KEYS")
        .arg("kyc:queue:*:ready")
        .query_async(admin)
        .await?;
    Ok(streams.len())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Redis memory per delayed job with `n` scheduled.
async fn run_memory(url: &str, n: usize) -> anyhow::Result<f64> {
    let mut admin = connect(url).await?;
    flush(&mut admin).await?;
    let queue = Queue::connect(url, "bench", settings()).await?;
    let before = used_memory(&mut admin).await?;
    let at = SystemTime::now() + Duration::from_secs(3600);
    let ids: Vec<u64> = (0..n as u64).collect();
    for chunk in ids.chunks(1000) {
        let batch: Vec<(String, NoopJob, SystemTime)> = chunk
            .iter()
            .map(|&i| {
                (
                    format!("poll:{}", uuid::Uuid::new_v4()),
                    NoopJob { n: i, due_ms: 0 },
                    at,
                )
            })
            .collect();
        queue.push_at_many(&batch).await?;
    }
    let after = used_memory(&mut admin).await?;
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// Runs every measurement and writes `queue.json` and `queue.md` into `out_dir`.
pub async fn run(options: &QueueBenchOptions) -> anyhow::Result<QueueBenchReport> {
    let redis = BenchRedis::start(&options.redis_server).await?;
    let url = redis.url().to_owned();
    let backlog = options.backlog;

    let (enqueue, c1, _, u1) = run_ours(&url, backlog, 1).await?;
    let (_, c64, commands, u64_) = run_ours(&url, backlog, 64).await?;
    let ours = Throughput {
        enqueue_per_s: enqueue,
        consume_c1_per_s: c1,
        consume_c64_per_s: c64,
        commands_per_job: commands,
        unfinished: u1 + u64_,
    };
    let (a_enqueue, a1, _, au1) = run_apalis(&url, backlog, 1).await?;
    let (_, a64, a_commands, au64) = run_apalis(&url, backlog, 64).await?;
    let apalis_redis_default = Throughput {
        enqueue_per_s: a_enqueue,
        consume_c1_per_s: a1,
        consume_c64_per_s: a64,
        commands_per_job: a_commands,
        unfinished: au1 + au64,
    };
    let mut lateness = Vec::new();
    for &rate in &options.lateness_rates {
        lateness.push(run_lateness(&url, rate, options.lateness_seconds).await?);
    }
    let bytes = run_memory(&url, options.delayed).await?;
    let mut idle = Vec::new();
    for processes in [1, 4] {
        idle.push(run_idle(&url, processes, options.idle_seconds).await?);
    }
    let mut admin = connect(&url).await?;
    let report = QueueBenchReport {
        backlog,
        consume_ratio_c64: if a64 > 0.0 { c64 / a64 } else { f64::INFINITY },
        ours,
        apalis_redis_default,
        lateness,
        idle,
        redis_bytes_per_delayed_job: bytes,
        delayed_jobs_measured: options.delayed,
        redis_version: redis_version(&mut admin).await,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    write_report(&options.out_dir, &report)?;
    Ok(report)
}

fn write_report(dir: &Path, report: &QueueBenchReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("queue.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(dir.join("queue.md"), markdown(report))?;
    Ok(())
}

/// The report as a Markdown table for the README.
pub fn markdown(r: &QueueBenchReport) -> String {
    let o = &r.ours;
    let a = &r.apalis_redis_default;
    format!(
        "## Queue benchmark\n\n\
         Redis {redis}, {cpus} CPUs, one worker process, no-op jobs, {backlog}-job backlog \
         (apalis-redis 1.0.0 defaults fail above ~8,000 due jobs and slow down as the backlog grows, \
         so the comparison uses a backlog it survives).\n\n\
         | measure | kyc-worker queue | apalis-redis 1.0.0 default | ratio |\n\
         |---|---:|---:|---:|\n\
         | enqueue, jobs/s | {oe:.0} | {ae:.0} | {re:.1}× |\n\
         | consume c=1, jobs/s | {o1:.0} | {a1:.0} | {r1:.1}× |\n\
         | consume c=64, jobs/s | {o64:.0} | {a64:.0} | {r64:.1}× |\n\
         | Redis commands per job | {oc:.2} | {ac:.2} | {rc:.2}× |\n\
         | jobs unfinished after 120 s | {ou} | {au} | |\n\n\
         Delayed jobs, each due 1 s after it was scheduled (ms after the due time the job started):\n\n\
         | scheduled per s | jobs | p50 | p99 | max |\n|---:|---:|---:|---:|---:|\n{late}\n\
         Idle `kyc-worker run` processes (INFO commandstats delta, every command counted):\n\n\
         | processes | queues per process | seconds | commands | per process per s | busiest commands |\n|---:|---:|---:|---:|---:|---|\n{idle}\n\
         Redis memory per delayed job with {n} scheduled: {bytes:.0} bytes.\n{targets}",
        redis = r.redis_version,
        cpus = r.cpus,
        backlog = r.backlog,
        oe = o.enqueue_per_s,
        ae = a.enqueue_per_s,
        re = ratio(o.enqueue_per_s, a.enqueue_per_s),
        o1 = o.consume_c1_per_s,
        a1 = a.consume_c1_per_s,
        r1 = ratio(o.consume_c1_per_s, a.consume_c1_per_s),
        o64 = o.consume_c64_per_s,
        a64 = a.consume_c64_per_s,
        r64 = r.consume_ratio_c64,
        oc = o.commands_per_job,
        ac = a.commands_per_job,
        rc = ratio(o.commands_per_job, a.commands_per_job),
        ou = o.unfinished,
        au = a.unfinished,
        late = r
            .lateness
            .iter()
            .map(|l| format!(
                "| {} | {} | {} | {} | {} |\n",
                l.rate_per_s, l.jobs, l.p50_ms, l.p99_ms, l.max_ms
            ))
            .collect::<String>(),
        idle = r
            .idle
            .iter()
            .map(|i| format!(
                "| {} | {} | {:.0} | {} | {:.2} | {} |\n",
                i.processes,
                i.queues_per_process,
                i.seconds,
                i.commands,
                i.per_process_per_s,
                busiest(&i.by_command)
            ))
            .collect::<String>(),
        targets = crate::report::targets_markdown(&crate::report::queue_targets(r)),
        n = r.delayed_jobs_measured,
        bytes = r.redis_bytes_per_delayed_job,
    )
}

/// The five most called commands, "name n, …".
fn busiest(by_command: &std::collections::BTreeMap<String, u64>) -> String {
    let mut calls: Vec<(&String, &u64)> = by_command.iter().filter(|(_, n)| **n > 0).collect();
    calls.sort_by(|a, b| b.1.cmp(a.1));
    calls
        .iter()
        .take(5)
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::INFINITY
    }
}
