//! `kyc-worker run` and `kyc-worker enqueue`.

use std::{io::Write, path::PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use uuid::Uuid;

use super::CliError;
use crate::{
    domain::{ContactDetails, StartRequest},
    producer::{Producer, ProducerError},
    rules::RuleSet,
    settings::Settings,
    startup::{shutdown_signal, Application},
};

/// Runs the fleet process until SIGTERM or ctrl-c, then drains and exits 0.
pub async fn run(settings: Settings) -> Result<(), CliError> {
    // An invalid rules file stops the process before anything runs (exit 2, naming the rule).
    let rules = RuleSet::from_settings(&settings.rules)
        .map_err(|e| CliError::Usage(format!("invalid rules: {e}")))?;
    let app = Application::build(settings, rules).await?;
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Your id for the person (required unless --from-csv)
    #[arg(long, required_unless_present = "from_csv")]
    vendor_data: Option<String>,
    /// Idempotency key; generated when absent. Enqueuing it again never creates a second session.
    #[arg(long)]
    request_id: Option<String>,
    /// A workflow named in settings ([workflows])
    #[arg(long, conflicts_with = "workflow_id")]
    workflow: Option<String>,
    #[arg(long)]
    workflow_id: Option<Uuid>,
    #[arg(long)]
    callback: Option<String>,
    #[arg(long)]
    language: Option<String>,
    #[arg(long)]
    email: Option<String>,
    /// JSON object echoed in Didit's decision and webhooks
    #[arg(long)]
    metadata: Option<String>,
    /// Sandbox only: the outcome to simulate
    #[arg(long)]
    sandbox_scenario: Option<String>,
    /// Enqueue one request per row of a CSV file with a header row; columns: vendor_data
    /// (required), request_id, workflow, workflow_id, callback, language, sandbox_scenario.
    /// Values must not contain commas.
    #[arg(long, conflicts_with = "vendor_data")]
    from_csv: Option<PathBuf>,
}

pub async fn enqueue(args: EnqueueArgs, settings: &Settings) -> Result<(), CliError> {
    let producer = Producer::connect(settings).await.map_err(producer_error)?;
    if let Some(path) = &args.from_csv {
        return enqueue_csv(&producer, path).await;
    }
    let metadata = match &args.metadata {
        Some(text) => Some(
            serde_json::from_str::<Value>(text)
                .map_err(|e| CliError::Usage(format!("--metadata is not JSON: {e}")))?,
        ),
        None => None,
    };
    let request = StartRequest {
        request_id: args.request_id,
        vendor_data: args.vendor_data.unwrap_or_default(),
        workflow: args.workflow,
        workflow_id: args.workflow_id,
        callback: args.callback,
        language: args.language,
        contact_details: args.email.map(|email| ContactDetails {
            email: Some(email),
            ..Default::default()
        }),
        metadata,
        sandbox_scenario: args.sandbox_scenario,
        ..Default::default()
    };
    let id = producer.start_kyc(request).await.map_err(producer_error)?;
    println!("{id}");
    Ok(())
}

async fn enqueue_csv(producer: &Producer, path: &std::path::Path) -> Result<(), CliError> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| CliError::Usage(format!("{} is empty", path.display())))?
        .split(',')
        .map(|h| h.trim().to_owned())
        .collect();
    if !header.iter().any(|h| h == "vendor_data") {
        return Err(CliError::Usage(format!(
            "{}: the header row has no vendor_data column",
            path.display()
        )));
    }
    let rows: Vec<&str> = lines.collect();
    let total = rows.len();
    let mut stderr = std::io::stderr();
    for (i, row) in rows.iter().enumerate() {
        let mut object = serde_json::Map::new();
        for (name, value) in header.iter().zip(row.split(',')) {
            let value = value.trim();
            if !value.is_empty() {
                object.insert(name.clone(), Value::from(value));
            }
        }
        let request: StartRequest = serde_json::from_value(Value::Object(object))
            .map_err(|e| CliError::Usage(format!("{} line {}: {e}", path.display(), i + 2)))?;
        producer.start_kyc(request).await.map_err(|e| match e {
            ProducerError::Invalid(e) => {
                CliError::Usage(format!("{} line {}: {e}", path.display(), i + 2))
            }
            other => producer_error(other),
        })?;
        let done = i + 1;
        let width = 30;
        let filled = done * width / total.max(1);
        let _ = write!(
            stderr,
            "\r[{}{}] {done}/{total}",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
    }
    let _ = writeln!(stderr);
    println!("enqueued {total} verification(s)");
    Ok(())
}

fn producer_error(e: ProducerError) -> CliError {
    match e {
        ProducerError::Invalid(e) => CliError::Usage(format!("invalid start request: {e}")),
        other => CliError::Failed(anyhow::anyhow!("{other}")),
    }
}

/// `kyc-worker cancel REQUEST_ID`.
pub async fn cancel(request_id: &str, settings: &Settings) -> Result<(), CliError> {
    let id =
        crate::domain::RequestId::parse(request_id).map_err(|e| CliError::Usage(e.to_string()))?;
    let queue = crate::queue::Queue::connect(
        settings.redis.url(),
        &settings.redis.prefix,
        settings.queue.clone(),
    )
    .await
    .context("cannot connect to Redis")?;
    let conn = crate::queue::connect(settings.redis.url())
        .await
        .context("cannot connect to Redis")?;
    let store = crate::store::Store::new(conn, &settings.redis.prefix, settings.events.clone());
    match crate::jobs::cancel(&queue, &store, &id).await {
        Ok(true) => println!("cancelled {id}"),
        Ok(false) => println!("{id} was already cancelled"),
        Err(e) => return Err(CliError::Failed(e.into())),
    }
    Ok(())
}

/// `kyc-worker erase --vendor-data ID`: queues the erasure; the fleet carries it out.
pub async fn erase(vendor_data: &str, settings: &Settings) -> Result<(), CliError> {
    if vendor_data.trim().is_empty() {
        return Err(CliError::Usage("--vendor-data must not be empty".into()));
    }
    let queue = crate::queue::Queue::connect(
        settings.redis.url(),
        &settings.redis.prefix,
        settings.queue.clone(),
    )
    .await
    .context("cannot connect to Redis")?;
    queue
        .push(&crate::jobs::EraseSubject {
            vendor_data: vendor_data.trim().to_owned(),
        })
        .await
        .context("cannot queue the erasure")?;
    println!("erasure queued; kyc.subject.erased follows on the event stream once done");
    Ok(())
}
