//! `target/bench/report.json` and `report.md`: the lifecycle run, the queue run when
//! `queue.json` is present, the Didit budget computed from the default settings, and the
//! issue's targets, each met or missed by how much.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{
    lifecycle::{
        LifecycleReport, LifecycleRun, TracingRun, WorkerMemory, ENDPOINT_SET, NO_ENDPOINT,
        NO_TRACING_CODE,
    },
    profile::ProfileSummary,
};
use kyc_worker::{
    domain::PollSchedule,
    settings::{Settings, Sources},
};

use crate::queue::QueueBenchReport;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BudgetRow {
    pub mode: String,
    /// Seconds between reads of one waiting session once the schedule has reached its cap
    /// (the sweep moves a poll forward when its interval is shorter).
    pub steady_interval_s: f64,
    /// Reads of one session in its first hour of waiting.
    pub first_hour_reads: u32,
    /// Sessions the low-priority GET budget follows at the steady interval.
    pub sessions_steady: u64,
    /// …and if every session were in its first hour.
    pub sessions_first_hour: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Budget {
    /// GETs per minute safety-net polls may use: `ratelimit.get` × `ratelimit.low_share`.
    pub low_priority_gets_per_min: f64,
    pub sweep_interval_s: f64,
    pub rows: Vec<BudgetRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
    /// How far from the target, e.g. "35% under" or "2.1× over".
    pub margin: String,
    /// What the figure is made of, so a miss says why (empty when nothing to add).
    #[serde(default)]
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub lifecycle: LifecycleReport,
    pub queue: Option<QueueBenchReport>,
    pub budget: Budget,
    pub targets: Vec<Target>,
}

/// Reads of one session: (seconds between reads in its 25th hour of waiting, reads in its
/// first hour). The sweep reads every open session every `sweep` seconds by moving its
/// pending poll to now; the schedule then continues from that read. Jitter is left out.
fn schedule_reads(schedule: &PollSchedule, sweep: f64) -> (f64, u32) {
    let schedule = PollSchedule {
        jitter: 0.0,
        ..*schedule
    };
    let (mut at, mut next_sweep, mut first_hour, mut late) = (0.0, sweep, 0, 0);
    for n in 0.. {
        let due = at + schedule.interval(n, 0).as_secs_f64();
        at = if due > next_sweep {
            next_sweep += sweep;
            next_sweep - sweep
        } else {
            due
        };
        match at {
            t if t <= 3600.0 => first_hour += 1,
            t if t > 24.0 * 3600.0 && t <= 25.0 * 3600.0 => late += 1,
            t if t > 25.0 * 3600.0 => break,
            _ => {}
        }
    }
    (3600.0 / f64::from(late.max(1)), first_hour)
}

pub fn budget() -> anyhow::Result<Budget> {
    let defaults = Settings::load_from(&Sources {
        config_dir: Some(std::env::temp_dir().join("kyc-worker-no-overlay")),
        env: Some(Default::default()),
    })?;
    let low = defaults.ratelimit.get as f64 * defaults.ratelimit.low_share
        / defaults.ratelimit.window.as_secs_f64()
        * 60.0;
    let sweep = defaults.poll.sweep_interval.as_secs_f64();
    let rows = [
        ("webhooks on", &defaults.poll.with_webhooks),
        ("polling only", &defaults.poll.polling_only),
    ]
    .into_iter()
    .map(|(mode, schedule)| {
        let (steady, first_hour) = schedule_reads(schedule, sweep);
        BudgetRow {
            mode: mode.to_owned(),
            steady_interval_s: steady,
            first_hour_reads: first_hour,
            sessions_steady: (low * steady / 60.0) as u64,
            sessions_first_hour: (low * 60.0 / first_hour.max(1) as f64) as u64,
        }
    })
    .collect();
    Ok(Budget {
        low_priority_gets_per_min: low,
        sweep_interval_s: sweep,
        rows,
    })
}

/// `measured` against an upper bound, compared at the two decimals shown.
fn at_most(name: &str, measured: f64, bound: f64, unit: &str) -> Target {
    let met = (measured * 100.0).round() <= bound * 100.0;
    let margin = if met && (measured * 100.0).round() == bound * 100.0 {
        "at the bound".to_owned()
    } else if met {
        format!("{:.0}% under", (1.0 - measured / bound) * 100.0)
    } else {
        format!("{:.2}× the target", measured / bound)
    };
    Target {
        name: name.to_owned(),
        target: format!("≤ {bound} {unit}"),
        measured: format!("{measured:.2} {unit}"),
        met,
        margin,
        why: String::new(),
    }
}

/// `measured` against a lower bound, compared at the two decimals shown.
fn at_least(name: &str, measured: f64, bound: f64, unit: &str) -> Target {
    let met = (measured * 100.0).round() >= bound * 100.0;
    let margin = if met {
        format!("{:.0}% over", (measured / bound - 1.0) * 100.0)
    } else {
        format!("{:.0}% short", (1.0 - measured / bound) * 100.0)
    };
    Target {
        name: name.to_owned(),
        target: format!("≥ {bound}{unit}"),
        measured: format!("{measured:.2}{unit}"),
        met,
        margin,
        why: String::new(),
    }
}

/// The webhook path at sandbox latency 0, one process.
fn webhook_run(lifecycle: &LifecycleReport) -> Option<&LifecycleRun> {
    lifecycle
        .runs
        .iter()
        .find(|r| r.webhooks && r.sandbox_latency_ms == 0 && r.processes == 1)
}

pub fn targets(lifecycle: &LifecycleReport, queue: Option<&QueueBenchReport>) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(run) = webhook_run(lifecycle) {
        targets.push(at_most(
            "Didit calls per session, webhook path",
            run.didit_calls_per_session,
            2.0,
            "calls",
        ));
    }
    targets.push(at_most(
        &format!(
            "Redis memory per waiting session ({} waiting)",
            lifecycle.waiting_sessions
        ),
        lifecycle.redis_bytes_per_waiting_session,
        1024.0,
        "bytes",
    ));
    targets.extend(lifecycle_targets(lifecycle));
    targets.push(at_most(
        "Webhook → event p99, one Didit GET on loopback included",
        lifecycle.webhook_latency.p99_ms as f64,
        20.0,
        "ms",
    ));
    let w = &lifecycle.worker_memory;
    targets.push(at_most(
        &format!(
            "Worker RSS with {} jobs in flight (peak, VmHWM)",
            w.in_flight
        ),
        mib(w.peak_rss_bytes),
        64.0,
        "MiB",
    ));
    targets.extend(tracing_targets(&lifecycle.tracing));
    if let Some(q) = queue {
        targets.extend(queue_targets(q));
    }
    targets
}

/// `name value` pairs, largest first, the first `n`.
fn largest(values: &std::collections::BTreeMap<String, f64>, n: usize) -> String {
    let mut sorted: Vec<(&String, &f64)> = values.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(a.1));
    sorted
        .iter()
        .filter(|(_, v)| **v >= 0.05)
        .take(n)
        .map(|(name, v)| format!("{name} {v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The per-session cost targets of the session lifecycle: round trips, commands and CPU in
/// Redis, Redis memory kept per finished session and worker CPU, each with what it is made
/// of.
pub fn lifecycle_targets(l: &LifecycleReport) -> Vec<Target> {
    let mut targets = Vec::new();
    let build = if l.release_build {
        "release build"
    } else {
        "debug build"
    };
    if let Some(run) = &l.round_trips {
        if let Some(round_trips) = run.round_trips_per_session_net {
            let mut t = at_most(
                &format!(
                    "Redis round trips per session, webhook path (top-level commands of the \
                     fleet and producer, `MONITOR`, net of idle; {} sessions)",
                    run.sessions
                ),
                round_trips,
                12.0,
                "round trips",
            );
            t.why = format!(
                "top-level commands per session: {}",
                largest(&run.round_trips_by_name, 8)
            );
            targets.push(t);
        }
    }
    if let Some(run) = l.scaling.iter().find(|r| r.processes == 1) {
        let mut t = at_most(
            &format!(
                "Redis commands per session, webhook path, one `kyc-worker run` (scripts' calls, \
                 queue and rate limiter included, net of idle; {} sessions)",
                run.sessions
            ),
            run.redis_commands_per_session_net,
            35.0,
            "commands",
        );
        t.why = format!("by command: {}", largest(&run.redis_commands_by_name, 8));
        targets.push(t);
        let mut t = at_most(
            "Redis CPU per session (used_cpu_user + used_cpu_sys, net of idle)",
            run.redis_cpu_ms_per_session_net,
            0.15,
            "ms",
        );
        t.why = format!(
            "{:.1} commands per session at about {:.1} µs each",
            run.redis_commands_per_session_net,
            run.redis_cpu_ms_per_session_net * 1000.0
                / run.redis_commands_per_session_net.max(f64::MIN_POSITIVE)
        );
        targets.push(t);
        let worker_ms =
            run.worker_cores.unwrap_or(0.0) * run.seconds * 1000.0 / run.sessions.max(1) as f64;
        let mut t = at_most(
            &format!(
                "Worker CPU per session (`/proc` of one `kyc-worker run` child, {build}; the \
                 sandbox and load generator in the bench process)"
            ),
            worker_ms,
            0.5,
            "ms",
        );
        if !l.release_build {
            t.why = "a debug build: only the release build's figure counts".to_owned();
        }
        targets.push(t);
    }
    for kept in &l.kept {
        let mut t = at_most(
            &format!(
                "Redis memory kept per finished session, {} ({} sessions, {} by {}; keys living \
                 shorter than events.record_retention ({} d) deleted; the events stream \
                 excluded, it is trimmed at events.retention)",
                kept.case,
                kept.sessions,
                kept.status,
                kept.decided_by,
                kept.record_retention_s / 86_400,
            ),
            kept.bytes_per_session,
            512.0,
            "bytes",
        );
        t.why = format!(
            "{:.1} keys kept per session: {}; `MEMORY USAGE` per session: {}; \
             `used_memory_dataset` {:.0}",
            kept.keys_kept_per_session.values().sum::<f64>(),
            largest(&kept.keys_kept_per_session, 6),
            largest(&kept.bytes_kept_by_pattern, 6),
            kept.dataset_bytes_per_session,
        );
        targets.push(t);
    }
    targets
}

/// The most worker CPU per session tracing may add with no endpoint set, in percent.
const NO_ENDPOINT_OVERHEAD_PERCENT: f64 = 2.0;

/// `variant`'s worker CPU per session relative to the baseline's, in percent, turn by turn:
/// each turn ran both on the same host load, so the pairs cancel most of its drift.
fn paired_percent(variant: &TracingRun, baseline: &TracingRun) -> Vec<f64> {
    variant
        .worker_cpu_ms_per_turn
        .iter()
        .zip(&baseline.worker_cpu_ms_per_turn)
        .map(|(v, b)| (v / b.max(f64::MIN_POSITIVE) - 1.0) * 100.0)
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The tracing targets: with no endpoint, at most 2 % more worker CPU per session than a
/// build without tracing code (the median of the turns' paired differences, with their
/// spread); with an endpoint, the cost per session stated.
pub fn tracing_targets(runs: &[TracingRun]) -> Vec<Target> {
    let find = |name: &str| runs.iter().find(|r| r.variant == name);
    let mut targets = Vec::new();
    let baseline = find(NO_TRACING_CODE);
    if let (Some(off), Some(base)) = (find(NO_ENDPOINT), baseline) {
        let pairs = paired_percent(off, base);
        let overhead = median(&pairs);
        let (low, high) = pairs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| {
                (l.min(*p), h.max(*p))
            });
        let met = (overhead * 10.0).round() <= NO_ENDPOINT_OVERHEAD_PERCENT * 10.0;
        let noise = if low <= NO_ENDPOINT_OVERHEAD_PERCENT && high > NO_ENDPOINT_OVERHEAD_PERCENT {
            "; the turns straddle the bound"
        } else {
            ""
        };
        targets.push(Target {
            name: format!(
                "Worker CPU per session with no OTLP endpoint, vs no tracing code ({} turns × {} sessions)",
                pairs.len(),
                off.sessions
            ),
            target: format!("≤ +{NO_ENDPOINT_OVERHEAD_PERCENT} %"),
            measured: format!(
                "{overhead:+.1} % (median of paired turns; {low:+.1} to {high:+.1} %)"
            ),
            met,
            margin: format!(
                "{:.1} points {}{noise}",
                (NO_ENDPOINT_OVERHEAD_PERCENT - overhead).abs(),
                if met { "under" } else { "over" }
            ),
            why: "with no endpoint the tracing code costs a few atomic loads and task-local \
                  reads per session; a single turn moves by far more than the bound on a \
                  shared host, so only many paired turns settle it"
                .to_owned(),
        });
    }
    if let Some(on) = find(ENDPOINT_SET) {
        let reference = baseline.or_else(|| find(NO_ENDPOINT));
        let measured = match reference {
            Some(reference) => {
                let pairs = paired_percent(on, reference);
                format!(
                    "{:+.2} ms ({:+.0} %, turns {:+.0} to {:+.0} %) vs {}; {:.0} bytes and {:.3} exports",
                    on.worker_cpu_ms_per_session - reference.worker_cpu_ms_per_session,
                    median(&pairs),
                    pairs.iter().copied().fold(f64::INFINITY, f64::min),
                    pairs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    reference.variant,
                    on.export_bytes_per_session,
                    on.exports_per_session,
                )
            }
            None => format!("{:.2} ms", on.worker_cpu_ms_per_session),
        };
        targets.push(Target {
            name: "Worker CPU and OTLP traffic per session with an endpoint set".to_owned(),
            target: "stated".to_owned(),
            measured,
            met: true,
            margin: "stated".to_owned(),
            why: "span export: batching and OTLP encoding in the worker".to_owned(),
        });
    }
    targets
}

/// `kyc-bench tracing` alone: the runs and their targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TracingReport {
    pub runs: Vec<TracingRun>,
    pub targets: Vec<Target>,
}

/// Writes `tracing.json` and `tracing.md`; returns the Markdown.
pub fn write_tracing(dir: &Path, runs: Vec<TracingRun>) -> anyhow::Result<String> {
    let report = TracingReport {
        targets: tracing_targets(&runs),
        runs,
    };
    let mut md = tracing_markdown(&report.runs);
    md.push_str(&targets_markdown(&report.targets));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("tracing.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(dir.join("tracing.md"), &md)?;
    Ok(md)
}

/// A targets table in Markdown, headed "Targets:".
pub fn targets_markdown(targets: &[Target]) -> String {
    let mut md = String::from(
        "\nTargets:\n\n| target | bound | measured | met | margin | why |\n|---|---|---|---|---|---|\n",
    );
    for t in targets {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            t.name,
            t.target,
            t.measured,
            if t.met { "yes" } else { "**no**" },
            t.margin,
            t.why,
        ));
    }
    md
}

/// The queue's own targets: consume speed against apalis-redis, commands per job, delayed
/// jobs on time, and an idle process that is quiet.
pub fn queue_targets(q: &QueueBenchReport) -> Vec<Target> {
    let mut targets = vec![
        at_least(
            "queue consume vs apalis-redis, c=64",
            q.consume_ratio_c64,
            4.0,
            "×",
        ),
        at_most(
            "Redis commands per no-op job",
            q.ours.commands_per_job,
            4.0,
            "commands",
        ),
    ];
    if let Some(l) = q.lateness.iter().find(|l| l.rate_per_s == 1_000) {
        targets.push(at_most(
            "delayed job lateness p99 at 1,000/s",
            l.p99_ms as f64,
            50.0,
            "ms",
        ));
    }
    for idle in &q.idle {
        targets.push(at_most(
            &format!(
                "idle Redis commands/s per process, {} process{} of {} queues each",
                idle.processes,
                if idle.processes == 1 { "" } else { "es" },
                idle.queues_per_process
            ),
            idle.per_process_per_s,
            5.0,
            "/s",
        ));
    }
    targets
}

/// Builds the report, merging `queue.json` from `dir` when a queue run left one there.
pub fn build(dir: &Path, lifecycle: LifecycleReport) -> anyhow::Result<Report> {
    let queue_file = dir.join("queue.json");
    let queue: Option<QueueBenchReport> = if queue_file.exists() {
        let text = std::fs::read_to_string(&queue_file)
            .with_context(|| format!("cannot read {}", queue_file.display()))?;
        Some(
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a queue report", queue_file.display()))?,
        )
    } else {
        None
    };
    Ok(Report {
        targets: targets(&lifecycle, queue.as_ref()),
        budget: budget()?,
        lifecycle,
        queue,
    })
}

pub fn write(dir: &Path, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(dir.join("report.md"), markdown(report))?;
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// CPU milliseconds per session a component spent, from its cores busy.
fn ms_per_session(cores: f64, run: &LifecycleRun) -> f64 {
    if run.sessions_per_s > 0.0 {
        cores * 1000.0 / run.sessions_per_s
    } else {
        0.0
    }
}

/// Where the scaling curve stops growing (less than 15 % more sessions/s for the next
/// process count) and which reading explains it.
pub fn scaling_verdict(scaling: &[LifecycleRun], cpus: usize) -> String {
    let Some(first) = scaling.first() else {
        return "No scaling runs.".to_owned();
    };
    let flat = scaling
        .windows(2)
        .find(|pair| pair[1].sessions_per_s < pair[0].sessions_per_s * 1.15);
    let (at, next) = match flat {
        Some(pair) => (&pair[0], Some(&pair[1])),
        None => (scaling.last().unwrap_or(first), None),
    };
    let workers = at.worker_cores.unwrap_or(0.0);
    let bench = at.bench_process_cores.unwrap_or(0.0);
    let total = at.redis_cores + workers + bench;
    let cpus = cpus.max(1) as f64;
    let redis_ms = ms_per_session(at.redis_cores, at);
    let worker_ms = ms_per_session(workers, at);
    let bench_ms = ms_per_session(bench, at);
    let per_session = redis_ms + worker_ms + bench_ms;
    let mut text = match next {
        Some(next) => format!(
            "The curve flattens at {} process{} ({:.0} sessions/s; {} give {:.0}, {:+.0} %). ",
            at.processes,
            if at.processes == 1 { "" } else { "es" },
            at.sessions_per_s,
            next.processes,
            next.sessions_per_s,
            (next.sessions_per_s / at.sessions_per_s.max(f64::MIN_POSITIVE) - 1.0) * 100.0,
        ),
        None => format!(
            "The curve has not flattened at {} processes ({:.0} sessions/s). ",
            at.processes, at.sessions_per_s
        ),
    };
    let ceiling = if per_session > 0.0 {
        cpus * 1000.0 / per_session
    } else {
        0.0
    };
    text.push_str(&format!(
        "There the host's {cpus:.0} cores were {busy:.0} % busy with the benchmark \
         (redis-server {redis:.2}, workers {workers:.2}, bench process {bench:.2} cores) and one \
         session cost {worker_ms:.2} ms of worker CPU, {bench_ms:.2} ms of sandbox and \
         load-generator CPU and {redis_ms:.2} ms of Redis CPU: {per_session:.2} ms in all, so \
         {cpus:.0} fully busy cores would top out near {ceiling:.0} sessions/s. ",
        busy = total / cpus * 100.0,
        redis = at.redis_cores,
    ));
    let (largest, largest_ms) = [
        ("the workers", worker_ms),
        (
            "the sandbox and load generator (a bench cost: Didit is remote in production)",
            bench_ms,
        ),
        ("redis-server", redis_ms),
    ]
    .into_iter()
    .max_by(|a, b| a.1.total_cmp(&b.1))
    .unwrap_or(("the workers", worker_ms));
    let largest_share = largest_ms / per_session.max(f64::MIN_POSITIVE) * 100.0;
    if at.redis_cores >= 0.8 {
        text.push_str(
            "Redis is the limit: it runs commands on one thread and is near a full core.",
        );
    } else if total >= 0.85 * cpus {
        text.push_str(&format!(
            "The limit is CPU: the cores are saturated, and the largest share \
             ({largest_share:.0} %) is {largest}; Redis, at {:.2} of its one core, is not the \
             limit.",
            at.redis_cores,
        ));
    } else {
        text.push_str(&format!(
            "The benchmark did not saturate the cores and Redis is below one core, so the limit \
             is not this benchmark's CPU: other load on the host (load average {load}) or \
             waiting on Redis and HTTP round trips; the largest CPU share ({largest_share:.0} %) \
             is {largest}.",
            load = at
                .load_average
                .map_or_else(|| "n/a".to_owned(), |l| format!("{l:.1}")),
        ));
    }
    text
}

fn endpoints(run: &LifecycleRun) -> String {
    run.didit_calls_by_endpoint
        .iter()
        .map(|(endpoint, n)| format!("{endpoint} {n:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn worker_memory_markdown(w: &WorkerMemory) -> String {
    let per = |from: u64, to: u64| to.saturating_sub(from) as f64 / w.jobs.max(1) as f64;
    format!(
        "Worker memory: `kyc-worker run` child processes, resident memory (VmRSS) from \
         `/proc/<pid>/status`; the waiting sessions are made by one process at the default \
         `worker.concurrency` ({wc}), the jobs in flight held by another at `worker.concurrency` \
         = {c}, so the burst does not inflate the waiting reading:\n\n\
         | state | VmRSS | per session or job |\n|---|---:|---:|\n\
         | ready, idle | {idle:.1} MiB | |\n\
         | {n} sessions created and waiting for their users | {waiting:.1} MiB | {per_waiting:.0} bytes |\n\
         | second process ready, idle | {base:.1} MiB | |\n\
         | {in_flight} start jobs in flight ({open} Didit calls open) | {loaded:.1} MiB | {per_job:.1} KiB |\n\
         | peak of the second process (VmHWM) | {peak:.1} MiB | |\n\n\
         A waiting session lives in Redis, not in the worker: its cost in the process is what \
         creating it left behind (allocator arenas, connection buffers), not state per session. \
         A job in flight holds its task, its decoded payload and one HTTP connection with its \
         buffers; the sandbox answers each start call after {latency} s, so all of them are \
         held at once. {n} in flight is {times:.0}× the default concurrency of {wc}: at the \
         default a process holds {wc} at most.\n\n",
        wc = w.waiting_concurrency,
        c = w.concurrency,
        n = w.jobs,
        idle = mib(w.idle_rss_bytes),
        waiting = mib(w.waiting_rss_bytes),
        per_waiting = per(w.idle_rss_bytes, w.waiting_rss_bytes),
        base = mib(w.in_flight_base_rss_bytes),
        in_flight = w.in_flight,
        open = w.didit_calls_open,
        loaded = mib(w.in_flight_rss_bytes),
        per_job = per(w.in_flight_base_rss_bytes, w.in_flight_rss_bytes) / 1024.0,
        peak = mib(w.peak_rss_bytes),
        latency = crate::lifecycle::IN_FLIGHT_LATENCY.as_secs(),
        times = w.jobs as f64 / w.waiting_concurrency.max(1) as f64,
    )
}

/// The tracing-cost runs: worker CPU per session by variant, relative to the first (the
/// median of the turns' paired differences).
fn tracing_markdown(runs: &[TracingRun]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mut md = format!(
        "What tracing costs a worker (one `kyc-worker run` child, webhooks on, Didit latency 0, \
         {} sessions per run, {} turns of every variant in alternating order, medians; the sink \
         takes every OTLP export on loopback):\n\n\
         | variant | worker CPU ms per session | vs {}, paired turns | per turn | OTLP exports per session | exported bytes per session |\n\
         |---|---:|---:|---|---:|---:|\n",
        first.sessions, first.turns, first.variant
    );
    for run in runs {
        let turns: Vec<String> = run
            .worker_cpu_ms_per_turn
            .iter()
            .map(|ms| format!("{ms:.2}"))
            .collect();
        md.push_str(&format!(
            "| {} | {:.2} | {:+.1} % | {} | {:.3} | {:.0} |\n",
            run.variant,
            run.worker_cpu_ms_per_session,
            median(&paired_percent(run, first)),
            turns.join(", "),
            run.exports_per_session,
            run.export_bytes_per_session,
        ));
    }
    md.push('\n');
    md
}

fn profile_markdown(p: &ProfileSummary) -> String {
    let mut md = format!(
        "CPU profile (`--profile`: pprof-rs in the bench process at {hz} Hz, run: {run}; \
         {samples} samples standing for {coverage:.0} % of the process's CPU time — samples in \
         libc (syscalls, malloc) are dropped; `flamegraph.svg`). Top five costs by self samples \
         (each sample to the innermost frame of a known group):\n\n",
        hz = p.frequency_hz,
        run = p.run,
        samples = p.samples,
        coverage = p.coverage * 100.0,
    );
    for (i, cost) in p.by_group.iter().take(5).enumerate() {
        md.push_str(&format!(
            "{}. {} — {:.1} %: {}\n",
            i + 1,
            cost.name,
            cost.share * 100.0,
            cost.what
        ));
    }
    md.push_str(
        "\nOur code, inclusive (share of samples with the module anywhere on the stack):\n\n\
         | module | samples | what |\n|---|---:|---|\n",
    );
    for cost in p.by_module.iter().take(8) {
        md.push_str(&format!(
            "| `{}` | {:.1} % | {} |\n",
            cost.name,
            cost.share * 100.0,
            cost.what
        ));
    }
    md.push('\n');
    md
}

/// The report as Markdown for the README.
pub fn markdown(r: &Report) -> String {
    let l = &r.lifecycle;
    let mut md = format!(
        "## Fleet benchmark\n\n\
         {cpus} CPUs; redis-server, the sandbox and the fleet on the same host; in this first table one fleet \
         \"process\" is one `Application` in the bench process (same tokio runtime). The sandbox \
         finishes each session 200 ms after creation; Didit's rate limits are lifted in the \
         sandbox and the fleet (the budget below is computed from the defaults instead); no \
         rules; polling-only runs poll after 100 ms growing to 300 ms (default 5 s to 60 s). \
         {n} sessions per run, pushed as fast as 32 concurrent producers go (a burst); \
         sessions/s counts decided events from the run's first to its last.\n\n\
         | webhooks | Didit latency | sessions/s (start requests/s) | start → decided p50 / p99 | final status → decided p50 / p99 | Redis cmds/session (net of idle) | Didit calls/session |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
        cpus = l.cpus,
        n = l.runs.first().map_or(0, |r| r.sessions),
    );
    for run in &l.runs {
        md.push_str(&format!(
            "| {} | {} ms | {:.0} ({:.0}) | {} / {} ms | {} / {} ms | {:.1} ({:.1}) | {:.2}: {} |\n",
            if run.webhooks { "on" } else { "off" },
            run.sandbox_latency_ms,
            run.sessions_per_s,
            run.start_requests_per_s,
            run.end_to_end_p50_ms,
            run.end_to_end_p99_ms,
            run.final_to_decided_p50_ms,
            run.final_to_decided_p99_ms,
            run.redis_commands_per_session,
            run.redis_commands_per_session_net,
            run.didit_calls_per_session,
            endpoints(run),
        ));
    }
    md.push_str(
        "\n\"final status → decided\" is the decided event's stream-id time minus the created \
         event's stream-id time plus 200 ms (when the sandbox makes the session final, ±10 ms \
         of its ticker): with webhooks it is delivery, verification, the decision read and the \
         publish; without, it is mostly the wait for the next poll. \"net of idle\" subtracts \
         the fleet's Redis traffic with nothing to do (blocking fetches, promotion, leases), \
         sampled just before, over the run's length. `workflow_get` is each process's \
         once-per-workflow expiration read, repeated by the jobs that start before the first \
         answer is cached; it shrinks per session as runs grow.\n\n\
         Scaling with real `kyc-worker run` child processes (webhooks on, delivered to the \
         first process; Didit latency 0; cores busy = CPU seconds / wall seconds: redis-server \
         from `INFO cpu`, the workers from `/proc/<pid>/stat`, the bench process — the sandbox \
         and the load generator — from `/proc/self/stat`):\n\n\
         | processes | sessions/s (start requests/s) | start → decided p50 / p99 | cores: redis-server | cores: workers | cores: bench process | CPU ms/session: redis / workers / bench | load average |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let cores = |c: Option<f64>| c.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"));
    for run in &l.scaling {
        md.push_str(&format!(
            "| {} | {:.0} ({:.0}) | {} / {} ms | {:.2} | {} | {} | {:.2} / {:.2} / {:.2} | {} |\n",
            run.processes,
            run.sessions_per_s,
            run.start_requests_per_s,
            run.end_to_end_p50_ms,
            run.end_to_end_p99_ms,
            run.redis_cores,
            cores(run.worker_cores),
            cores(run.bench_process_cores),
            ms_per_session(run.redis_cores, run),
            ms_per_session(run.worker_cores.unwrap_or(0.0), run),
            ms_per_session(run.bench_process_cores.unwrap_or(0.0), run),
            run.load_average
                .map_or_else(|| "n/a".to_owned(), |l| format!("{l:.1}")),
        ));
    }
    md.push('\n');
    md.push_str(&scaling_verdict(&l.scaling, l.cpus));
    md.push('\n');
    if let Some(run) = webhook_run(l) {
        let mut by_name: Vec<(&String, &f64)> = run.redis_commands_by_name.iter().collect();
        by_name.sort_by(|a, b| b.1.total_cmp(a.1));
        let top: Vec<String> = by_name
            .iter()
            .take(12)
            .map(|(name, n)| format!("{name} {n:.1}"))
            .collect();
        md.push_str(&format!(
            "\nRedis commands per session on the webhook path (latency 0) by command, scripts' \
             inner calls included, largest first: {}.\n",
            top.join(", ")
        ));
    }
    md.push_str(&format!(
        "\nRedis memory per waiting session (webhooks on, {} created and waiting: request and \
         session records, the poll job, the created event, the audit trail; `used_memory` \
         delta / sessions): {:.0} bytes, so {:.2} GiB for 1,000,000 if it stays linear (the \
         per-key costs do; Redis's hash tables grow in powers of two, so the real figure steps \
         up to a few % above at a resize).\n\n",
        l.waiting_sessions,
        l.redis_bytes_per_waiting_session,
        l.redis_bytes_per_waiting_session * 1e6 / (1u64 << 30) as f64,
    ));
    for kept in &l.kept {
        md.push_str(&format!(
            "Redis memory kept per finished session, {case} ({n} sessions decided {status} by \
             {by}; webhooks on, one in-process application; with the fleet idle, every key with \
             a time to live shorter than `events.record_retention` ({days} d, by more than an \
             hour) deleted and the outcome stream deleted, since it is trimmed at \
             `events.retention`, not kept per session; `used_memory` delta from the idle fleet \
             before the first session / sessions): {bytes:.0} bytes. \
             Kept per session: {kept_keys}; their `MEMORY USAGE` per session: {kept_bytes}. \
             Deleted per session: {deleted_keys}. Client connection buffers grew by {buffers:.0} \
             bytes per session (in `used_memory`, not data); `used_memory_dataset` (the data \
             without the server's overhead) by {dataset:.0}. The outcome stream held \
             {stream:.0} bytes per session.\n\n",
            case = kept.case,
            n = kept.sessions,
            status = kept.status,
            by = kept.decided_by,
            days = kept.record_retention_s / 86_400,
            bytes = kept.bytes_per_session,
            kept_keys = largest(&kept.keys_kept_per_session, 8),
            kept_bytes = largest(&kept.bytes_kept_by_pattern, 8),
            buffers = kept.client_buffer_bytes_per_session,
            dataset = kept.dataset_bytes_per_session,
            deleted_keys = largest(&kept.keys_deleted_per_session, 8),
            stream = kept.events_stream_bytes_per_session,
        ));
    }
    if let Some(run) = &l.round_trips {
        md.push_str(&format!(
            "Round trips (the scaling runs' one `kyc-worker run` child again, {} sessions, with \
             `MONITOR` counting the top-level commands of the fleet's and the producer's \
             connections; scripts' calls, marked `lua`, and the bench's own reads left out; \
             net of the idle ones): {:.1} per session. By command, idle included: {}.\n\n",
            run.sessions,
            run.round_trips_per_session_net.unwrap_or(0.0),
            largest(&run.round_trips_by_name, 12),
        ));
    }
    let w = &l.webhook_latency;
    md.push_str(&format!(
        "Webhook → decided event with one session in flight at a time ({} sessions started \
         {} ms apart; webhooks on, Didit latency 0, one in-process application): p50 {} ms, \
         p99 {} ms, max {} ms, from the `webhook_received` audit step (signature, dedupe and \
         session checks passed) to the event's stream id; it includes the poll job's hand-off, \
         one Didit GET on loopback, the rules and the publish.\n\n",
        w.sessions, w.pace_ms, w.p50_ms, w.p99_ms, w.max_ms,
    ));
    let d = &l.subscriber_delivery;
    let mut top: Vec<(&String, &f64)> = d.redis_commands_by_name.iter().collect();
    top.sort_by(|a, b| b.1.total_cmp(a.1));
    let top: Vec<String> = top
        .iter()
        .take(8)
        .map(|(name, per)| format!("{name} {per:.2}"))
        .collect();
    md.push_str(&format!(
        "Outcome event → subscriber receipt ({} events added {} ms apart to the outcome \
         stream; one Standard Webhooks subscriber on loopback answering 200; one in-process \
         application): p50 {} ms, p99 {} ms, max {} ms, from the event's stream id to the \
         request's arrival (the bridge's blocking read, the enqueue, the worker's fetch, the \
         signing and the POST). Redis commands per delivery, less the idle traffic: {:.1} \
         ({}).\n\n",
        d.events,
        d.pace_ms,
        d.p50_ms,
        d.p99_ms,
        d.max_ms,
        d.redis_commands_per_delivery,
        top.join(", "),
    ));
    md.push_str(&worker_memory_markdown(&l.worker_memory));
    md.push_str(&tracing_markdown(&l.tracing));
    if let Some(profile) = &l.profile {
        md.push_str(&profile_markdown(profile));
    }
    let b = &r.budget;
    md.push_str(&format!(
        "Didit budget for waiting sessions (computed from config/default.toml, jitter left out): \
         safety-net and schedule polls may use {:.0} GETs/min (`ratelimit.get` × `low_share`), \
         and the reconciliation sweep reads every open session at least every {:.0} s.\n\n\
         | mode | steady read interval | reads in the first hour | sessions followed, steady | sessions followed, all in their first hour |\n\
         |---|---:|---:|---:|---:|\n",
        b.low_priority_gets_per_min, b.sweep_interval_s,
    ));
    for row in &b.rows {
        md.push_str(&format!(
            "| {} | {:.0} s | {} | {} | {} |\n",
            row.mode,
            row.steady_interval_s,
            row.first_hour_reads,
            row.sessions_steady,
            row.sessions_first_hour
        ));
    }
    md.push_str(&targets_markdown(&r.targets));
    if let Some(q) = &r.queue {
        md.push('\n');
        md.push_str(&crate::queue::markdown(q));
    } else {
        md.push_str("\n(no queue.json: run `kyc-worker bench queue` first to include the queue)\n");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_is_bound_by_the_sweep_with_webhooks_and_the_cap_without() {
        let b = budget().expect("the default settings load");
        assert_eq!(b.low_priority_gets_per_min, 480.0);
        let webhooks = &b.rows[0];
        assert_eq!(webhooks.steady_interval_s, 600.0);
        assert_eq!(webhooks.first_hour_reads, 6);
        assert_eq!(webhooks.sessions_steady, 4_800);
        let polling = &b.rows[1];
        assert!(polling.steady_interval_s <= 60.0, "{polling:?}");
        assert!(polling.first_hour_reads > 60, "{polling:?}");
        assert!(polling.sessions_steady < 480, "{polling:?}");
    }

    fn scaling_run(processes: usize, sessions_per_s: f64, cores: [f64; 3]) -> LifecycleRun {
        LifecycleRun {
            webhooks: true,
            sandbox_latency_ms: 0,
            processes,
            sessions: 1_000,
            sessions_per_s,
            start_requests_per_s: sessions_per_s,
            end_to_end_p50_ms: 0,
            end_to_end_p99_ms: 0,
            final_to_decided_p50_ms: 0,
            final_to_decided_p99_ms: 0,
            redis_commands_per_session: 0.0,
            redis_commands_per_session_net: 0.0,
            redis_commands_by_name: Default::default(),
            didit_calls_per_session: 0.0,
            didit_calls_by_endpoint: Default::default(),
            seconds: 1.0,
            redis_cores: cores[0],
            worker_cores: Some(cores[1]),
            bench_process_cores: Some(cores[2]),
            load_average: Some(2.0),
            redis_cpu_ms_per_session_net: 0.0,
            round_trips_per_session_net: None,
            round_trips_by_name: Default::default(),
        }
    }

    #[test]
    fn the_verdict_names_where_the_curve_flattens_and_the_largest_cpu_share() {
        let runs = [
            scaling_run(1, 500.0, [0.2, 0.9, 0.4]),
            scaling_run(2, 800.0, [0.3, 1.12, 0.5]),
            scaling_run(4, 820.0, [0.3, 1.2, 0.5]),
        ];
        let verdict = scaling_verdict(&runs, 2);
        assert!(
            verdict.starts_with("The curve flattens at 2 processes (800 sessions/s; 4 give 820"),
            "{verdict}"
        );
        assert!(verdict.contains("1.40 ms of worker CPU"), "{verdict}");
        assert!(verdict.contains("The limit is CPU"), "{verdict}");
        assert!(verdict.contains("is the workers"), "{verdict}");
    }

    fn tracing_run(variant: &str, per_turn: &[f64], bytes: f64) -> TracingRun {
        TracingRun {
            variant: variant.to_owned(),
            sessions: 1_000,
            turns: per_turn.len(),
            worker_cpu_ms_per_session: median(per_turn),
            worker_cpu_ms_per_turn: per_turn.to_vec(),
            exports_per_session: if bytes > 0.0 { 0.01 } else { 0.0 },
            export_bytes_per_session: bytes,
        }
    }

    #[test]
    fn the_no_endpoint_overhead_is_the_median_of_paired_turns_with_its_spread() {
        // The host got busier over the run: each turn is slower, the pairs stay close.
        let runs = [
            tracing_run(NO_TRACING_CODE, &[1.00, 1.20, 1.40], 0.0),
            tracing_run(NO_ENDPOINT, &[1.01, 1.23, 1.40], 0.0),
            tracing_run(ENDPOINT_SET, &[1.30, 1.56, 1.82], 1200.0),
        ];
        let targets = tracing_targets(&runs);
        assert_eq!(targets.len(), 2, "{targets:?}");
        let off = &targets[0];
        assert!(off.met, "{off:?}");
        assert!(off.measured.starts_with("+1.0 %"), "{off:?}");
        assert!(off.measured.contains("+0.0 to +2.5 %"), "{off:?}");
        assert!(off.margin.contains("straddle"), "{off:?}");
        let on = &targets[1];
        assert!(on.measured.starts_with("+0.36 ms (+30 %"), "{on:?}");
        assert!(on.measured.contains("1200 bytes"), "{on:?}");

        let over = [
            tracing_run(NO_TRACING_CODE, &[1.00, 1.00], 0.0),
            tracing_run(NO_ENDPOINT, &[1.05, 1.04], 0.0),
        ];
        let missed = &tracing_targets(&over)[0];
        assert!(!missed.met, "{missed:?}");
        assert!(missed.margin.starts_with("2.5 points over"), "{missed:?}");
    }

    #[test]
    fn targets_are_compared_at_the_precision_shown() {
        assert!(at_most("calls", 2.004, 2.0, "calls").met);
        assert!(!at_most("calls", 2.006, 2.0, "calls").met);
        assert!(at_least("ratio", 4.996, 5.0, "×").met);
        assert!(!at_least("ratio", 4.9, 5.0, "×").met);
    }
}
