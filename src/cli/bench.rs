//! `kyc-worker bench …`: measurements behind the README's performance numbers.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliError;
use crate::queue::bench::{self, QueueBenchOptions};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The queue alone vs apalis-redis 1.0.0: throughput, Redis commands per job, delayed-job
    /// lateness, Redis bytes per delayed job. Starts its own redis-server.
    Queue {
        /// Smaller sizes (about 20 s) for CI
        #[arg(long)]
        quick: bool,
        /// Where queue.json and queue.md are written
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// The redis-server binary to start
        #[arg(long, default_value = "redis-server")]
        redis_server: String,
    },
}

pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    match args.command {
        BenchCommand::Queue {
            quick,
            out,
            redis_server,
        } => {
            let mut options = if quick {
                QueueBenchOptions::quick(out.clone())
            } else {
                QueueBenchOptions::full(out.clone())
            };
            options.redis_server = redis_server;
            let report = bench::run(&options).await?;
            println!("{}", bench::markdown(&report));
            println!(
                "written: {} and {}",
                out.join("queue.json").display(),
                out.join("queue.md").display()
            );
            Ok(())
        }
    }
}
