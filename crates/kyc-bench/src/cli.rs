//! The `kyc-bench` command line: which benchmark, how big, where the reports go.

use anyhow::Context;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    lifecycle::{self, LifecycleOptions},
    queue::{self as bench, QueueBenchOptions},
    report,
};

/// Without a subcommand: `bench all`.
#[derive(Debug, Parser)]
#[command(args_conflicts_with_subcommands = true)]
#[command(
    name = "kyc-bench",
    version,
    about = "Benchmarks of kyc-worker: the job queue against apalis-redis, the fleet end to end against the Didit sandbox"
)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    options: BenchOptions,
}

#[derive(Debug, Clone, Args)]
struct BenchOptions {
    /// Smaller sizes for CI (queue about 20 s, lifecycle about 30 s)
    #[arg(long)]
    quick: bool,
    /// Sample the first lifecycle run's CPU (pprof-rs): flamegraph.svg and the top costs in
    /// report.md
    #[arg(long)]
    profile: bool,
    /// Where the JSON and Markdown reports are written
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The redis-server binary to start
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// A `kyc-worker` built without tracing code (`cargo build --release -p kyc-worker
    /// --no-default-features`, copied aside), whose worker CPU per session the tracing runs
    /// are compared with
    #[arg(long)]
    baseline_worker: Option<PathBuf>,
    /// Turns of the tracing runs, each running every variant once (default 3; `tracing`: 6)
    #[arg(long)]
    tracing_turns: Option<usize>,
    /// Sessions per tracing run (default 3,000; 500 with --quick)
    #[arg(long)]
    tracing_sessions: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The queue alone vs apalis-redis 1.0.0: throughput, Redis commands per job, delayed-job
    /// lateness, Redis bytes per delayed job (queue.json, queue.md). Starts its own
    /// redis-server.
    Queue(BenchOptions),
    /// The fleet against the in-process sandbox: sessions/s, Redis commands, round trips,
    /// Redis CPU and Didit calls per session, webhook-to-event latency, Redis bytes per
    /// waiting session and kept per finished session, 1/2/4
    /// `kyc-worker run` child processes with their CPU, a worker's memory with 10,000 jobs in
    /// flight, the Didit budget and the targets (report.json, report.md, merging queue.json
    /// when present; flamegraph.svg with --profile). Starts its own redis-server.
    Lifecycle(BenchOptions),
    /// What tracing costs a worker, alone: one `kyc-worker run` child's CPU per session with
    /// no OTLP endpoint, with one set to a local sink, and with --baseline-worker a build
    /// without tracing code, in turns of alternating order (tracing.json, tracing.md with
    /// its targets). Starts its own redis-server.
    Tracing(BenchOptions),
    /// `queue` then `lifecycle`
    All(BenchOptions),
}

async fn queue(options: &BenchOptions) -> anyhow::Result<()> {
    let mut queue_options = if options.quick {
        QueueBenchOptions::quick(options.out.clone())
    } else {
        QueueBenchOptions::full(options.out.clone())
    };
    queue_options.redis_server = options.redis_server.clone();
    let report = bench::run(&queue_options).await?;
    println!("{}", bench::markdown(&report));
    println!(
        "written: {} and {}",
        options.out.join("queue.json").display(),
        options.out.join("queue.md").display()
    );
    Ok(())
}

/// The lifecycle options `options` ask for; `turns` when --tracing-turns is not given.
fn lifecycle_options(options: &BenchOptions, turns: usize) -> anyhow::Result<LifecycleOptions> {
    let mut lifecycle_options = if options.quick {
        LifecycleOptions::quick(options.out.clone())
    } else {
        LifecycleOptions::full(options.out.clone())
    };
    lifecycle_options.redis_server = options.redis_server.clone();
    lifecycle_options.profile = options.profile;
    // Absolute: the child processes run in the temp directory.
    lifecycle_options.baseline_worker = options
        .baseline_worker
        .as_ref()
        .map(|path| {
            path.canonicalize()
                .with_context(|| format!("--baseline-worker {}", path.display()))
        })
        .transpose()?;
    lifecycle_options.tracing_turns = options.tracing_turns.unwrap_or(turns);
    if let Some(sessions) = options.tracing_sessions {
        lifecycle_options.tracing_sessions = sessions;
    }
    Ok(lifecycle_options)
}

async fn tracing(options: &BenchOptions) -> anyhow::Result<()> {
    let runs = lifecycle::tracing_only(&lifecycle_options(options, 6)?).await?;
    println!("{}", report::write_tracing(&options.out, runs)?);
    println!(
        "written: {} and {}",
        options.out.join("tracing.json").display(),
        options.out.join("tracing.md").display()
    );
    Ok(())
}

async fn lifecycle(options: &BenchOptions) -> anyhow::Result<()> {
    let lifecycle_options = lifecycle_options(options, 3)?;
    let measured = lifecycle::run(&lifecycle_options).await?;
    let merged = report::build(&options.out, measured)?;
    report::write(&options.out, &merged)?;
    println!("{}", report::markdown(&merged));
    println!(
        "written: {} and {}",
        options.out.join("report.json").display(),
        options.out.join("report.md").display()
    );
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::Queue(options)) => queue(&options).await,
        Some(BenchCommand::Lifecycle(options)) => lifecycle(&options).await,
        Some(BenchCommand::Tracing(options)) => tracing(&options).await,
        Some(BenchCommand::All(options)) => {
            queue(&options).await?;
            lifecycle(&options).await
        }
        None => {
            queue(&args.options).await?;
            lifecycle(&args.options).await
        }
    }
}
