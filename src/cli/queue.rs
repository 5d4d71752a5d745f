//! `kyc-worker queue …`: look at the queues and work the dead set, as an operator.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::CliError;
use crate::{
    queue::Queue,
    settings::{parse_duration, Settings},
};

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Print JSON instead of a table
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Depth (ready, in flight, scheduled, dead) and lag of every queue
    Stats,
    /// The dead set: jobs that cannot run, with their reasons
    #[command(subcommand)]
    Dead(DeadCommand),
}

#[derive(Debug, Subcommand)]
enum DeadCommand {
    /// List dead jobs, newest first
    List {
        /// Only this queue (default: all)
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put dead jobs back on their queue with attempts reset
    Replay {
        #[arg(long)]
        queue: String,
        /// The dead entry id shown by `dead list`
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        entry_id: Option<String>,
        /// Replay every dead job of the queue
        #[arg(long)]
        all: bool,
    },
    /// Delete dead jobs older than a duration (e.g. 7d)
    Purge {
        /// Only this queue (default: all)
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
    },
}

pub async fn run(args: QueueArgs, settings: &Settings) -> Result<(), CliError> {
    let queue = Queue::new(
        super::redis(settings).await?.connect(),
        &settings.redis.prefix,
        settings.queue.clone(),
    );
    match args.command {
        QueueCommand::Stats => {
            let mut rows = Vec::new();
            for name in queue.queue_names().await.context("cannot list queues")? {
                let stats = queue
                    .stats(&name)
                    .await
                    .context("cannot read queue stats")?;
                rows.push((name, stats));
            }
            if args.json {
                let map: serde_json::Map<String, serde_json::Value> = rows
                    .iter()
                    .map(|(n, s)| (n.clone(), serde_json::to_value(s).unwrap_or_default()))
                    .collect();
                println!("{}", serde_json::Value::Object(map));
            } else if rows.is_empty() {
                println!("no queues under prefix \"{}\" yet", settings.redis.prefix);
            } else {
                println!(
                    "{:<16} {:>9} {:>9} {:>10} {:>7} {:>10}",
                    "queue", "ready", "in flight", "scheduled", "dead", "lag"
                );
                for (name, s) in rows {
                    println!(
                        "{:<16} {:>9} {:>9} {:>10} {:>7} {:>9.1}s",
                        name,
                        s.ready,
                        s.in_flight,
                        s.scheduled,
                        s.dead,
                        s.lag_ms as f64 / 1000.0
                    );
                }
            }
        }
        QueueCommand::Dead(DeadCommand::List { queue: only, limit }) => {
            let names = match only {
                Some(q) => vec![q],
                None => queue.queue_names().await.context("cannot list queues")?,
            };
            let now = crate::queue::now_ms();
            let mut all = Vec::new();
            for name in names {
                for dead in queue
                    .dead_list(&name, limit)
                    .await
                    .context("cannot read the dead set")?
                {
                    all.push((name.clone(), dead));
                }
            }
            if args.json {
                let items: Vec<serde_json::Value> = all
                    .iter()
                    .map(|(q, d)| {
                        serde_json::json!({"queue": q, "entry_id": d.entry_id, "job_id": d.job_id,
                        "reason": d.reason, "attempts": d.attempts, "died_at_ms": d.died_at_ms()})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(items));
            } else if all.is_empty() {
                println!("the dead set is empty");
            } else {
                for (q, d) in all {
                    let age = now.saturating_sub(d.died_at_ms()) / 1000;
                    println!(
                        "{q} {} job {} ({} attempts, {age}s ago): {}",
                        d.entry_id, d.job_id, d.attempts, d.reason
                    );
                }
            }
        }
        QueueCommand::Dead(DeadCommand::Replay {
            queue: name,
            entry_id,
            all,
        }) => {
            let replayed = if all {
                queue
                    .dead_replay_all(&name)
                    .await
                    .context("replay failed")?
            } else {
                let id = entry_id.unwrap_or_default();
                if !queue
                    .dead_replay(&name, &id)
                    .await
                    .context("replay failed")?
                {
                    return Err(CliError::Failed(anyhow::anyhow!(
                        "no dead job {id} in queue {name}"
                    )));
                }
                1
            };
            println!("replayed {replayed} job(s) on queue {name}");
        }
        QueueCommand::Dead(DeadCommand::Purge {
            queue: only,
            older_than,
        }) => {
            let names = match only {
                Some(q) => vec![q],
                None => queue.queue_names().await.context("cannot list queues")?,
            };
            let mut removed = 0;
            for name in names {
                removed += queue
                    .dead_purge(&name, older_than)
                    .await
                    .context("purge failed")?;
            }
            println!("purged {removed} dead job(s)");
        }
    }
    Ok(())
}
