//! `kyc-worker subscribers …`: the services that receive outcome events over HTTP, their
//! delivery state, re-enabling one a 410 disabled, and sending events again.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::CliError;
use crate::{
    jobs::Deliveries,
    metrics::Metrics,
    queue::{now_ms, Queue},
    settings::{parse_duration, HumanDuration, Settings, Subscriber},
    store::{Store, SubscriberState},
};

#[derive(Debug, Args)]
pub struct SubscribersArgs {
    /// Print JSON instead of a table
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: SubscribersCommand,
}

#[derive(Debug, Subcommand)]
enum SubscribersCommand {
    /// Every configured subscriber (secrets redacted) with its delivery state
    List,
    /// Re-enable a subscriber that answered 410 Gone
    Enable { name: String },
    /// Send events on the outcome stream to a subscriber again (same webhook-id)
    Replay {
        name: String,
        /// Every event published in this past window, e.g. 2h
        #[arg(long, value_parser = parse_duration, required_unless_present = "event_id", conflicts_with = "event_id")]
        since: Option<Duration>,
        /// One event by its event_id
        #[arg(long)]
        event_id: Option<String>,
    },
}

pub async fn run(args: SubscribersArgs, settings: &Settings) -> Result<(), CliError> {
    let conn = super::redis(settings).await?.connect();
    let store = Store::new(
        conn.clone(),
        &settings.redis.prefix,
        settings.events.clone(),
    );
    match args.command {
        SubscribersCommand::List => list(&store, settings, args.json).await,
        SubscribersCommand::Enable { name } => {
            configured(settings, &name)?;
            let was = store
                .enable_subscriber(&name)
                .await
                .context("cannot enable")?;
            println!(
                "{name}: {}",
                if was {
                    "enabled (deliveries of new events start within seconds)"
                } else {
                    "was not disabled"
                }
            );
            Ok(())
        }
        SubscribersCommand::Replay {
            name,
            since,
            event_id,
        } => {
            configured(settings, &name)?;
            let entries = match (since, event_id) {
                (Some(window), _) => store
                    .events_since(now_ms().saturating_sub(window.as_millis() as u64))
                    .await
                    .context("cannot read the outcome stream")?,
                (None, Some(id)) => match store
                    .event_by_id(&id)
                    .await
                    .context("cannot read the outcome stream")?
                {
                    Some(entry) => vec![entry],
                    None => {
                        return Err(CliError::Failed(anyhow::anyhow!(
                            "no event {id} on the outcome stream (trimmed after events.retention, or erased)"
                        )))
                    }
                },
                (None, None) => return Err(CliError::Usage("give --since or --event-id".into())),
            };
            let queue = Queue::new(conn, &settings.redis.prefix, settings.queue.clone());
            let deliveries = Deliveries::new(
                queue,
                store.clone(),
                Metrics::new(&[]),
                settings.delivery.clone(),
                &settings.subscribers,
            )
            .context("cannot build the subscriber's client")?;
            deliveries
                .refresh_disabled()
                .await
                .context("cannot read the disabled subscribers")?;
            let state = store
                .subscriber_state(&name)
                .await
                .context("cannot read the subscriber's state")?;
            if state.disabled.is_some() {
                return Err(CliError::Failed(anyhow::anyhow!(
                    "{name} is disabled: `kyc-worker subscribers enable {name}` first"
                )));
            }
            let n = deliveries
                .enqueue(&entries, Some(&name))
                .await
                .context("cannot enqueue deliveries")?;
            println!(
                "{n} deliveries to {name} enqueued ({} events read; types it does not receive are skipped)",
                entries.len()
            );
            Ok(())
        }
    }
}

fn configured<'a>(settings: &'a Settings, name: &str) -> Result<&'a Subscriber, CliError> {
    settings
        .subscribers
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = settings
                .subscribers
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            CliError::Usage(format!(
                "no subscriber {name} in the settings (configured: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })
}

/// The URL without query or fragment (they may carry tokens).
fn shown_url(s: &Subscriber) -> String {
    let mut url = s.url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => {
            let secs = now_ms().saturating_sub(ms) / 1000;
            format!("{} ago", HumanDuration(Duration::from_secs(secs)))
        }
        None => "-".to_owned(),
    }
}

fn status(state: &SubscriberState) -> String {
    match (&state.disabled, state.failing_since_ms) {
        (Some(d), _) => format!("disabled ({}, {})", d.reason, ago(Some(d.at_ms))),
        (None, Some(since)) => format!("failing since {}", ago(Some(since))),
        (None, None) => "ok".to_owned(),
    }
}

async fn list(store: &Store, settings: &Settings, json: bool) -> Result<(), CliError> {
    let mut rows = Vec::new();
    for s in &settings.subscribers {
        let state = store
            .subscriber_state(&s.name)
            .await
            .context("cannot read a subscriber's state")?;
        rows.push((s, state));
    }
    if json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(s, state)| {
                serde_json::json!({
                    "name": s.name,
                    "url": shown_url(s),
                    "types": s.types,
                    "secrets": format!("[REDACTED] ({} active)", s.keys.len()),
                    "allow_private": s.allow_private,
                    "allow_insecure": s.allow_insecure,
                    "state": state,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("cannot print JSON")?
        );
        return Ok(());
    }
    if rows.is_empty() {
        println!("no subscribers configured ([[subscribers]] or KYC__SUBSCRIBERS)");
        return Ok(());
    }
    for (s, state) in rows {
        println!("{}", s.name);
        println!("  url:           {}", shown_url(s));
        println!("  types:         {}", s.types.join(", "));
        println!("  secrets:       [REDACTED] ({} active)", s.keys.len());
        println!("  state:         {}", status(&state));
        println!("  last success:  {}", ago(state.last_success_ms));
        println!(
            "  last failure:  {}{}",
            ago(state.last_failure_ms),
            state
                .last_failure
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default()
        );
        println!(
            "  pending:       {} (oldest {})",
            state.pending,
            ago(state.oldest_pending_ms)
        );
    }
    Ok(())
}
