//! `kyc-worker run` and `kyc-worker enqueue`.

use std::path::PathBuf;

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
    /// A Didit workflow by id (default: didit.workflow_id from settings)
    #[arg(long)]
    workflow_id: Option<Uuid>,
    /// Where Didit sends the user after the hosted flow (a URL)
    #[arg(long)]
    callback: Option<String>,
    /// Language of the hosted flow, e.g. en, es, pt-BR (default: the user's browser)
    #[arg(long)]
    language: Option<String>,
    /// The user's e-mail: Didit mails them when a resubmission is asked for
    #[arg(long)]
    email: Option<String>,
    /// JSON object echoed in Didit's decision and webhooks
    #[arg(long)]
    metadata: Option<String>,
    /// Sandbox only: the outcome to simulate, e.g. approve, decline_document_expired,
    /// review_face_match_borderline (docs/sandbox.md lists them all)
    #[arg(long)]
    sandbox_scenario: Option<String>,
    /// Enqueue one request per row of a CSV file whose header row names the columns:
    /// vendor_data (required), request_id, workflow, workflow_id, callback, language,
    /// sandbox_scenario, and contact_details, expected_details, metadata as JSON. Nothing is
    /// enqueued when a row is invalid (each bad row and field is named). Prints
    /// `row,request_id` as CSV
    #[arg(long, conflicts_with = "vendor_data")]
    from_csv: Option<PathBuf>,
    /// With --from-csv: enqueue the valid rows and list the invalid ones
    #[arg(long, requires = "from_csv")]
    skip_invalid: bool,
    /// With --from-csv: write `row,request_id` to this file instead of stdout
    #[arg(long, requires = "from_csv")]
    out: Option<PathBuf>,
}

pub async fn enqueue(args: EnqueueArgs, settings: &Settings) -> Result<(), CliError> {
    let producer = Producer::connect(settings)
        .await
        .map_err(|e| CliError::Failed(e.into()))?;
    if let Some(path) = &args.from_csv {
        let options = super::batch::BatchOptions {
            path,
            skip_invalid: args.skip_invalid,
            out: args.out.as_deref(),
        };
        return super::batch::enqueue_csv(&producer, options).await;
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

fn producer_error(e: ProducerError) -> CliError {
    match e {
        ProducerError::Invalid(e) => CliError::Usage(format!("invalid start request: {e}")),
        ProducerError::Connect(e) => e.into(),
        other => CliError::Failed(anyhow::anyhow!("{other}")),
    }
}

/// `kyc-worker cancel REQUEST_ID`.
pub async fn cancel(request_id: &str, settings: &Settings) -> Result<(), CliError> {
    let id =
        crate::domain::RequestId::parse(request_id).map_err(|e| CliError::Usage(e.to_string()))?;
    let connector = super::redis(settings).await?;
    let queue = crate::queue::Queue::new(
        connector.connect(),
        &settings.redis.prefix,
        settings.queue.clone(),
    );
    let conn = connector.connect();
    let store = crate::store::Store::new(conn, &settings.redis.prefix, settings.events.clone());
    match crate::jobs::cancel(&queue, &store, &id).await {
        Ok(true) => println!("cancelled {id}"),
        Ok(false) => println!("{id} was already cancelled"),
        Err(e) => return Err(CliError::Failed(e.into())),
    }
    Ok(())
}

/// `kyc-worker erase --vendor-data ID`: queues the erasure; the fleet carries it out.
/// Prints the subject hash, which `kyc.subject.erased` carries, so the caller can match the
/// event (the vendor_data itself is never in it).
pub async fn erase(vendor_data: &str, settings: &Settings) -> Result<(), CliError> {
    let vendor_data = vendor_data.trim();
    if vendor_data.is_empty() {
        return Err(CliError::Usage("--vendor-data must not be empty".into()));
    }
    let connector = super::redis(settings).await?;
    let queue = crate::queue::Queue::new(
        connector.connect(),
        &settings.redis.prefix,
        settings.queue.clone(),
    );
    let store = crate::store::Store::new(
        queue.connection(),
        &settings.redis.prefix,
        settings.events.clone(),
    );
    queue
        .push(&crate::jobs::EraseSubject {
            vendor_data: vendor_data.to_owned(),
        })
        .await
        .context("cannot queue the erasure")?;
    let subject = store.subject_hash(vendor_data);
    println!("{subject}");
    eprintln!(
        "erasure queued; kyc.subject.erased with data.subject_hash {subject} \
         (request_id erasure-{subject}) follows on the event stream once done"
    );
    Ok(())
}
