//! `kyc-bench`: the measurements behind the performance page. `queue` runs the job queue
//! alone against apalis-redis 1.0.0 on the same private redis-server; `lifecycle` runs the
//! whole fleet against the in-process Didit sandbox and as `kyc-worker run` child processes;
//! `all` runs both and merges them, with the targets, into `report.json` and `report.md`.
//!
//! Kept out of the production binary: the profiler (pprof) and the competing queue
//! (apalis-redis) are linked here only.
//!
//! # Layout
//! - `cli`: the command line.
//! - `queue`: the queue benchmark and its report.
//! - `lifecycle`: the fleet benchmark.
//! - `monitor`: round trips to Redis, counted with `MONITOR`.
//! - `processes`: `kyc-worker run` child processes.
//! - `profile`: the CPU profile of a lifecycle run.
//! - `server`: the private redis-server and its readings.
//! - `report`: the merged report with the targets.

mod cli;
mod lifecycle;
mod monitor;
mod processes;
mod profile;
mod queue;
mod report;
mod server;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::BenchArgs::parse();
    match cli::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
