//! `kyc-worker didit …`: Didit's API from a terminal, with the fleet's own settings.
//!
//! For setting an account up (workflow, webhook destination, registration), checking one
//! session by hand, and trying a flow end to end against the sandbox or Didit. Human output by
//! default; `--json` prints Didit's response instead.

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, Subcommand};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::CliError;
use crate::{domain::SessionStatus, settings::Settings};
use didit::{types::*, DiditClient};

#[derive(Debug, Args)]
pub struct DiditArgs {
    /// Print Didit's response as JSON instead of a summary
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: DiditCommand,
}

#[derive(Debug, Subcommand)]
enum DiditCommand {
    /// Create a KYC workflow (ID document always; other steps by flag)
    Setup(SetupArgs),
    /// Create a verification session and print the link the user opens
    Session(SessionArgs),
    /// Show a session's decision
    Decision {
        /// Session id (UUID)
        session_id: Uuid,
        /// Poll until the session reaches a final status
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        wait_args: WaitArgs,
    },
    /// Create a session on the configured workflow and wait for its decision
    Full {
        /// Your id for the user (required: Didit groups sessions by it)
        #[arg(long)]
        vendor_data: String,
        /// Workflow to use; default: didit.workflow_id from settings
        #[arg(long)]
        workflow_id: Option<Uuid>,
        /// Create a new default workflow first instead of using an existing one
        #[arg(long, conflicts_with = "workflow_id")]
        create_workflow: bool,
        /// Sandbox only: the outcome to simulate (e.g. approve, decline_document_expired)
        #[arg(long)]
        scenario: Option<String>,
        /// Where the user's browser goes after the flow
        #[arg(long)]
        callback: Option<String>,
        #[command(flatten)]
        wait_args: WaitArgs,
    },
    /// List sessions, newest first
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// List workflows (one row per version) or show one version
    #[command(subcommand)]
    Workflows(WorkflowsCommand),
    /// List webhook destinations
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Approve a session (update-status)
    Approve(ReviewArgs),
    /// Decline a session (update-status)
    Decline(ReviewArgs),
    /// Ask the user to redo steps (update-status Resubmitted)
    Resubmit {
        #[command(flatten)]
        review: ReviewArgs,
        /// A step to redo as NODE_ID:FEATURE, e.g. feature_ocr:OCR; repeatable.
        /// None: Didit picks the declined and unfinished steps.
        #[arg(long = "node", value_parser = parse_node)]
        nodes: Vec<NodeToResubmit>,
        /// Do not ask Didit to e-mail the person (by default it does when the session was
        /// created with contact_details.email, in that request's language)
        #[arg(long)]
        no_email: bool,
    },
    /// Add a session's face and/or document to the blocklist
    Blocklist {
        session_id: Uuid,
        #[arg(long)]
        face: bool,
        #[arg(long)]
        document: bool,
        #[arg(long)]
        phone: bool,
        #[arg(long)]
        email: bool,
    },
    /// Download a session's PDF report
    Pdf {
        session_id: Uuid,
        /// File to write
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Register a webhook destination (Didit then POSTs status changes to URL); its
    /// secret is saved to a file (mode 0600), never printed except with --json
    Webhook {
        /// Public HTTPS URL of POST /webhooks/didit
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "kyc-worker")]
        label: String,
        /// Where KYC__DIDIT__WEBHOOK_SECRET=… is written (mode 0600), beside the API keys
        /// `verify-email` saves
        #[arg(long, default_value = "didit.env")]
        env_file: PathBuf,
    },
    /// Create a Didit account (a code is e-mailed). The password is read from the
    /// DIDIT_PASSWORD environment variable, never from the command line (visible in `ps`).
    Register { email: String },
    /// Confirm the e-mailed code; saves the API keys to a file, never to the terminal
    VerifyEmail {
        email: String,
        code: String,
        /// Where KYC__DIDIT__API_KEY=… is written (mode 0600)
        #[arg(long, default_value = "didit.env")]
        env_file: PathBuf,
    },
    /// Show the credit balance
    Balance,
    /// Start a credit top-up (prints the checkout link)
    TopUp {
        /// Amount in US dollars (Didit's minimum is 50)
        amount: u64,
        #[arg(long)]
        success_url: Option<String>,
        #[arg(long)]
        cancel_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// One page of sessions, newest first
    List {
        /// Only this person's sessions
        #[arg(long)]
        vendor_data: Option<String>,
        /// Only these statuses, comma-separated as Didit spells them ("In Review,Declined")
        #[arg(long)]
        status: Option<String>,
        /// Rows (Didit's default 50)
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum WorkflowsCommand {
    /// Every workflow version, newest first
    List,
    /// One workflow version, by its own id (the `uuid` of `workflows list`)
    Show { settings_uuid: Uuid },
}

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// The registered destinations (never their secrets)
    List,
}

#[derive(Debug, Args)]
struct SetupArgs {
    /// The workflow's name in Didit's console
    #[arg(long, default_value = "kyc-worker")]
    label: String,
    /// Add a liveness check (LIVENESS): the user records a selfie video
    #[arg(long)]
    liveness: bool,
    /// Add a face match (FACE_MATCH): the selfie against the document's photo
    #[arg(long)]
    face_match: bool,
    /// Add an AML screening (AML) of the document's name and date of birth
    #[arg(long)]
    aml: bool,
    /// Add NFC (NFC): read the passport's chip
    #[arg(long)]
    nfc: bool,
    /// Add a phone verification (PHONE_VERIFICATION)
    #[arg(long)]
    phone: bool,
    /// Add an e-mail verification (EMAIL_VERIFICATION)
    #[arg(long)]
    email: bool,
    /// Face-match score below which Didit declines (0-100; needs --face-match)
    #[arg(long, requires = "face_match", value_parser = clap::value_parser!(u8).range(0..=100))]
    face_match_threshold: Option<u8>,
    /// Attempts a user gets (0-10; Didit's default when absent)
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=10))]
    max_retries: Option<u32>,
    /// Seconds before an unfinished session expires (3600-2419200; Didit's default: 7 days)
    #[arg(long, value_parser = clap::value_parser!(u64).range(3600..=2_419_200))]
    expiration: Option<u64>,
}

#[derive(Debug, Args)]
struct SessionArgs {
    /// Workflow to use; default: didit.workflow_id from settings
    #[arg(long)]
    workflow_id: Option<Uuid>,
    /// Your id for the user (required: Didit groups sessions by it)
    #[arg(long)]
    vendor_data: String,
    /// Where the user's browser goes after the flow
    #[arg(long)]
    callback: Option<String>,
    /// UI language (ISO 639-1), e.g. en, es, pt-BR
    #[arg(long)]
    language: Option<String>,
    #[arg(long)]
    email: Option<String>,
    #[arg(long)]
    first_name: Option<String>,
    #[arg(long)]
    last_name: Option<String>,
    /// YYYY-MM-DD
    #[arg(long)]
    date_of_birth: Option<String>,
    /// JSON object echoed back in decisions and webhooks
    #[arg(long, value_parser = parse_json_object)]
    metadata: Option<Value>,
    /// Sandbox only: the outcome to simulate
    #[arg(long)]
    scenario: Option<String>,
}

#[derive(Debug, Args)]
struct ReviewArgs {
    session_id: Uuid,
    /// Stored on the session's review trail
    #[arg(long)]
    comment: Option<String>,
}

#[derive(Debug, Clone, Args)]
struct WaitArgs {
    /// Seconds between polls while waiting
    #[arg(long, default_value_t = 2)]
    interval: u64,
    /// Give up waiting after this many seconds
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

fn parse_node(s: &str) -> Result<NodeToResubmit, String> {
    match s.split_once(':') {
        Some((node_id, feature)) if !node_id.is_empty() && !feature.is_empty() => {
            Ok(NodeToResubmit {
                node_id: node_id.to_owned(),
                feature: feature.to_owned(),
            })
        }
        _ => Err(format!(
            "expected NODE_ID:FEATURE such as feature_ocr:OCR, got \"{s}\""
        )),
    }
}

fn parse_json_object(s: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("expected a JSON object such as {\"plan\":\"gold\"}".to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

pub async fn run(args: DiditArgs, settings: &Settings) -> Result<(), CliError> {
    let client = DiditClient::new(&settings.didit.client_config())?;
    let out = Output { json: args.json };
    match args.command {
        DiditCommand::Setup(a) => {
            let workflow = client.create_workflow(&workflow_request(&a)).await?;
            out.show(&workflow, || {
                format!(
                    "workflow {} created: {} ({}), sessions expire after {} s\n\
                     use it with: export KYC__DIDIT__WORKFLOW_ID={}",
                    workflow.stable_id(),
                    workflow.workflow_label.as_deref().unwrap_or("-"),
                    workflow.features.as_deref().unwrap_or("-"),
                    workflow.session_expiration_time.unwrap_or(604_800),
                    workflow.stable_id(),
                )
            })
        }
        DiditCommand::Session(a) => {
            let workflow_id = a.workflow_id.unwrap_or(settings.didit.workflow_id);
            let session = client
                .create_session(&session_request(workflow_id, a))
                .await?;
            out.show(&session, || describe_created(&session))
        }
        DiditCommand::Decision {
            session_id,
            wait,
            wait_args,
        } => {
            let decision = if wait {
                wait_for_decision(&client, session_id, &wait_args, out.json).await?
            } else {
                client.decision(session_id).await?
            };
            out.show(&decision, || describe_decision(&decision))
        }
        DiditCommand::Full {
            vendor_data,
            workflow_id,
            create_workflow,
            scenario,
            callback,
            wait_args,
        } => {
            let workflow_id = if create_workflow {
                let w = client
                    .create_workflow(&workflow_request(&SetupArgs {
                        label: "kyc-worker".into(),
                        liveness: true,
                        face_match: true,
                        aml: false,
                        nfc: false,
                        phone: false,
                        email: false,
                        face_match_threshold: None,
                        max_retries: None,
                        expiration: None,
                    }))
                    .await?;
                out.progress(&format!("workflow {} created", w.stable_id()));
                w.stable_id()
            } else {
                workflow_id.unwrap_or(settings.didit.workflow_id)
            };
            let session = client
                .create_session(&CreateSessionRequest {
                    workflow_id,
                    vendor_data: Some(vendor_data),
                    sandbox_scenario: scenario,
                    callback,
                    ..Default::default()
                })
                .await?;
            out.progress(&describe_created(&session));
            let decision =
                wait_for_decision(&client, session.session_id, &wait_args, out.json).await?;
            out.show(&decision, || describe_decision(&decision))
        }
        DiditCommand::Sessions(SessionsCommand::List {
            vendor_data,
            status,
            limit,
        }) => {
            let page = client
                .list_sessions(&SessionQuery {
                    vendor_data,
                    status,
                    limit,
                    ..Default::default()
                })
                .await?;
            out.show(&page, || {
                let mut lines = vec![format!("{} session(s)", page.count)];
                lines.extend(page.results.iter().map(|s| {
                    format!(
                        "{}  {:<12} {}",
                        s.session_id,
                        s.status.as_str(),
                        s.created_at.as_deref().unwrap_or("-")
                    )
                }));
                lines.join("\n")
            })
        }
        DiditCommand::Workflows(WorkflowsCommand::List) => {
            let page = client.list_workflows().await?;
            out.show(&page, || {
                let mut lines = vec![format!("{} workflow version(s)", page.count)];
                lines.extend(page.results.iter().map(describe_workflow));
                lines.join("\n")
            })
        }
        DiditCommand::Workflows(WorkflowsCommand::Show { settings_uuid }) => {
            let workflow = client.get_workflow(settings_uuid).await?;
            out.show(&workflow, || describe_workflow(&workflow))
        }
        DiditCommand::Webhooks(WebhooksCommand::List) => {
            let destinations = client.list_webhook_destinations().await?;
            out.show(&destinations, || {
                let mut lines = vec![format!("{} destination(s)", destinations.len())];
                lines.extend(destinations.iter().map(|d| {
                    format!(
                        "{}  {}  {} ({})",
                        d.uuid,
                        d.url,
                        d.subscribed_events.clone().unwrap_or_default().join(","),
                        if d.enabled.unwrap_or(true) {
                            "enabled"
                        } else {
                            "disabled"
                        }
                    )
                }));
                lines.join("\n")
            })
        }
        DiditCommand::Approve(a) => {
            update_status(&client, &out, a, SessionStatus::Approved, None, false).await
        }
        DiditCommand::Decline(a) => {
            update_status(&client, &out, a, SessionStatus::Declined, None, false).await
        }
        DiditCommand::Resubmit {
            review,
            nodes,
            no_email,
        } => {
            let nodes = (!nodes.is_empty()).then_some(nodes);
            update_status(
                &client,
                &out,
                review,
                SessionStatus::Resubmitted,
                nodes,
                !no_email,
            )
            .await
        }
        DiditCommand::Blocklist {
            session_id,
            face,
            document,
            phone,
            email,
        } => {
            if !(face || document || phone || email) {
                return Err(CliError::Usage(
                    "blocklist needs at least one of --face, --document, --phone, --email".into(),
                ));
            }
            let added = client
                .blocklist_add(&BlocklistAddRequest {
                    session_id,
                    blocklist_face: face,
                    blocklist_document: document,
                    blocklist_phone: phone,
                    blocklist_email: email,
                })
                .await?;
            out.show(&added, || {
                format!(
                    "session {session_id} blocklisted: {}",
                    added.message.as_deref().unwrap_or("done")
                )
            })
        }
        DiditCommand::Pdf { session_id, output } => {
            let pdf = client.generate_pdf(session_id).await?;
            std::fs::write(&output, &pdf)
                .with_context(|| format!("cannot write {}", output.display()))?;
            let summary =
                serde_json::json!({"session_id": session_id, "file": output, "bytes": pdf.len()});
            out.show(&summary, || {
                format!(
                    "report of {session_id} written to {} ({} bytes)",
                    output.display(),
                    pdf.len()
                )
            })
        }
        DiditCommand::Webhook {
            url,
            label,
            env_file,
        } => {
            let destination = client
                .create_webhook_destination(&CreateWebhookDestination {
                    label,
                    url,
                    webhook_version: "v3".into(),
                    subscribed_events: vec!["status.updated".into(), "data.updated".into()],
                })
                .await?;
            // Didit shows the secret in this answer only: keep it before anything else.
            if let Some(secret) = &destination.secret_shared_key {
                save_setting(&env_file, "KYC__DIDIT__WEBHOOK_SECRET", secret)?;
            }
            let saved = destination.secret_shared_key.is_some();
            out.show(&destination, || {
                let mut text = format!("webhook destination {} → {}", destination.uuid, destination.url);
                if saved {
                    text.push_str(&format!(
                        "\nits secret saved to {} (mode 0600) as KYC__DIDIT__WEBHOOK_SECRET; \
                         the fleet reads it from there once loaded into its environment",
                        env_file.display()
                    ));
                } else {
                    text.push_str("\nDidit returned no secret_shared_key: copy it from Didit's console into KYC__DIDIT__WEBHOOK_SECRET");
                }
                text
            })
        }
        DiditCommand::Register { email } => {
            let password = std::env::var("DIDIT_PASSWORD").map_err(|_| {
                CliError::Usage("set DIDIT_PASSWORD to the new account's password".into())
            })?;
            let registered = client
                .register(&email, &SecretString::from(password))
                .await?;
            out.show(&registered, || {
                format!("registered {email}: check the inbox for the code, then run `kyc-worker didit verify-email {email} CODE`")
            })
        }
        DiditCommand::VerifyEmail {
            email,
            code,
            env_file,
        } => {
            let account = client.verify_email(&email, &code).await?;
            let keys = save_keys(&account, &env_file)?;
            let summary =
                serde_json::json!({"email": email, "env_file": env_file, "keys_saved": keys});
            out.show(&summary, || {
                format!(
                    "{email} verified; {keys} API key(s) saved to {} (mode 0600)",
                    env_file.display()
                )
            })
        }
        DiditCommand::Balance => {
            let balance = client.balance().await?;
            out.show(&balance, || {
                let refill = if balance.auto_refill_enabled {
                    format!(
                        ", auto refill {} below {}",
                        balance.auto_refill_amount.as_deref().unwrap_or("?"),
                        balance.auto_refill_threshold.as_deref().unwrap_or("?")
                    )
                } else {
                    String::new()
                };
                format!("balance: ${}{refill}", balance.balance)
            })
        }
        DiditCommand::TopUp {
            amount,
            success_url,
            cancel_url,
        } => {
            let top_up = client
                .top_up(&TopUpRequest {
                    amount_in_dollars: amount,
                    success_url,
                    cancel_url,
                })
                .await?;
            out.show(&top_up, || {
                format!("pay at: {}", top_up.checkout_session_url)
            })
        }
    }
}

fn workflow_request(a: &SetupArgs) -> CreateWorkflowRequest {
    let mut features = vec![WorkflowFeature {
        feature: "OCR".into(),
        config: None,
    }];
    let mut add = |on: bool, feature: &str, config: Option<Value>| {
        if on {
            features.push(WorkflowFeature {
                feature: feature.into(),
                config,
            });
        }
    };
    // Didit's ordering rules: face match after the document, passive checks (AML) not first.
    add(a.nfc, "NFC", None);
    add(a.liveness, "LIVENESS", None);
    add(
        a.face_match,
        "FACE_MATCH",
        a.face_match_threshold
            .map(|t| serde_json::json!({"face_match_score_decline_threshold": t})),
    );
    add(a.phone, "PHONE_VERIFICATION", None);
    add(a.email, "EMAIL_VERIFICATION", None);
    add(a.aml, "AML", None);
    CreateWorkflowRequest {
        workflow_label: Some(a.label.clone()),
        features,
        max_retry_attempts: a.max_retries,
        session_expiration_time: a.expiration,
    }
}

fn session_request(workflow_id: Uuid, a: SessionArgs) -> CreateSessionRequest {
    let expected = ExpectedDetails {
        first_name: a.first_name,
        last_name: a.last_name,
        date_of_birth: a.date_of_birth,
        ..Default::default()
    };
    CreateSessionRequest {
        workflow_id,
        vendor_data: Some(a.vendor_data),
        callback: a.callback,
        metadata: a.metadata,
        language: a.language,
        contact_details: a.email.map(|email| ContactDetails {
            email: Some(email),
            ..Default::default()
        }),
        expected_details: (expected != ExpectedDetails::default()).then_some(expected),
        sandbox_scenario: a.scenario,
        ..Default::default()
    }
}

async fn update_status(
    client: &DiditClient,
    out: &Output,
    a: ReviewArgs,
    new_status: SessionStatus,
    nodes_to_resubmit: Option<Vec<NodeToResubmit>>,
    email: bool,
) -> Result<(), CliError> {
    let mut request = UpdateStatusRequest {
        new_status: new_status.clone(),
        comment: a.comment,
        nodes_to_resubmit,
        send_email: None,
        email_address: None,
        email_language: None,
    };
    let emailed = if email {
        // The address and language the session was created with, as the decision echoes.
        let decision = client.decision(a.session_id).await?;
        crate::jobs::email_the_person(&mut request, &decision)
    } else {
        false
    };
    let updated = client.update_status(a.session_id, &request).await?;
    out.show(&updated, || {
        let mut text = format!("session {} set to {new_status}", updated.session_id);
        if emailed {
            text.push_str("; Didit e-mails the person the link");
        }
        text
    })
}

fn describe_workflow(w: &Workflow) -> String {
    format!(
        "{}  {} v{} ({})  {}  expires after {} s  [{}]",
        w.uuid,
        w.workflow_label.as_deref().unwrap_or("-"),
        w.version.map_or_else(|| "?".to_owned(), |v| v.to_string()),
        w.status.as_deref().unwrap_or("-"),
        w.stable_id(),
        w.session_expiration_time.unwrap_or(604_800),
        w.features.as_deref().unwrap_or("-"),
    )
}

/// Sets `KEY=value` in an env file (mode 0600), replacing the key's earlier line and
/// keeping the others (the API keys `verify-email` wrote).
fn save_setting(path: &std::path::Path, key: &str, value: &str) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let prefix = format!("{key}=");
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{key}={value}"));
    write_private(path, &lines.join("\n"))
}

/// Writes a file only its owner can read (0600, also when it existed before).
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // `mode` applies only to a new file: tighten an existing one too.
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    writeln!(file, "{text}").with_context(|| format!("cannot write {}", path.display()))
}

async fn wait_for_decision(
    client: &DiditClient,
    session_id: Uuid,
    wait: &WaitArgs,
    quiet: bool,
) -> Result<Decision, CliError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.timeout);
    let mut last_status = None;
    loop {
        let decision = client.decision(session_id).await?;
        if decision.status.is_final() {
            return Ok(decision);
        }
        if !quiet && last_status.as_ref() != Some(&decision.status) {
            eprintln!("session {session_id}: {} (waiting)", decision.status);
        }
        last_status = Some(decision.status);
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Failed(anyhow::anyhow!(
                "session {session_id} is still not final after {} s",
                wait.timeout
            )));
        }
        tokio::time::sleep(Duration::from_secs(wait.interval.max(1))).await;
    }
}

fn describe_created(s: &CreatedSession) -> String {
    format!(
        "session {} ({}) on workflow {}\nopen: {}",
        s.session_id,
        s.status,
        s.workflow_id
            .map(|w| w.to_string())
            .unwrap_or_else(|| "-".into()),
        s.url
    )
}

/// A PII-free summary: statuses, scores and warning codes, never names or document data.
fn describe_decision(d: &Decision) -> String {
    let mut lines = vec![format!("session {}: {}", d.session_id, d.status)];
    let sections = d.sections();
    for (name, items) in sections {
        for item in items.iter().flatten() {
            let score = item
                .score
                .map(|s| format!(" score {s}"))
                .unwrap_or_default();
            let warnings: Vec<String> = item
                .warnings
                .iter()
                .flatten()
                .map(|w| {
                    format!(
                        "{} ({})",
                        w.risk.as_deref().unwrap_or("?"),
                        w.log_type.as_deref().unwrap_or("?")
                    )
                })
                .collect();
            let warnings = if warnings.is_empty() {
                String::new()
            } else {
                format!(" warnings: {}", warnings.join(", "))
            };
            lines.push(format!(
                "  {name}: {}{score}{warnings}",
                item.status.as_deref().unwrap_or("?")
            ));
        }
    }
    for review in d.reviews.iter().flatten() {
        lines.push(format!(
            "  review → {}: {}",
            review.new_status.as_deref().unwrap_or("?"),
            review.comment.as_deref().unwrap_or("")
        ));
    }
    lines.join("\n")
}

/// Writes the keys of a verified account as `KYC__DIDIT__API_KEY=…` lines; returns how many.
fn save_keys(account: &VerifiedAccount, path: &std::path::Path) -> anyhow::Result<usize> {
    let mut lines = Vec::new();
    if let Some(key) = account
        .application
        .as_ref()
        .and_then(|a| a.api_key.as_ref())
    {
        lines.push(format!("KYC__DIDIT__API_KEY={key}"));
    }
    if let Some(key) = account
        .sandbox_application
        .as_ref()
        .and_then(|a| a.api_key.as_ref())
    {
        lines.push(format!(
            "# sandbox application (free, mocked sessions)\n# KYC__DIDIT__API_KEY={key}"
        ));
    }
    write_private(path, &lines.join("\n"))?;
    Ok(lines.len())
}

/// Chooses between the human summary and Didit's JSON.
struct Output {
    json: bool,
}

impl Output {
    fn show<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        if self.json {
            let text = serde_json::to_string_pretty(value).context("cannot print JSON")?;
            println!("{text}");
        } else {
            println!("{}", human());
        }
        Ok(())
    }

    /// A step of a longer command; on stderr with --json so stdout stays one document.
    fn progress(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}
