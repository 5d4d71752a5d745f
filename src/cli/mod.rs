//! The `kyc-worker` command line: parses arguments, loads settings, runs one command.
//!
//! Exit codes are part of the interface: 0 success, 1 a command that failed (Didit refused,
//! unreachable host), 2 bad usage, an invalid setting or an invalid rules file (before anything
//! touched Redis or Didit).

mod batch;
mod didit;
mod events;
mod queue;
mod rules;
mod run;
mod sandbox;
mod session;
mod subscribers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::settings::{Settings, SettingsError};

#[derive(Debug, Parser)]
#[command(
    name = "kyc-worker",
    version,
    about = "Runs KYC identity verification through the Didit API as durable jobs in Redis",
    long_about = "Runs KYC identity verification through the Didit API as durable jobs in Redis.\n\n\
        Settings come from the embedded config/default.toml, then config/{KYC_ENV}.toml, then \
        KYC__SECTION__KEY environment variables (e.g. KYC__DIDIT__API_KEY)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the fleet process: workers, the webhook receiver and health endpoints
    Run,
    /// Ask for a verification (one, or one per CSV row); prints the request id
    Enqueue(Box<run::EnqueueArgs>),
    /// Run a local emulator of the Didit API (for the demo, tests and benchmarks)
    Sandbox(Box<sandbox::SandboxArgs>),
    /// Call the Didit API directly: workflows, sessions, decisions, reviews, billing
    Didit(Box<didit::DiditArgs>),
    /// Stop following a verification still open (no more polls; emits kyc.session.failed, reason cancelled); exit 1 naming the outcome when it already ended
    Cancel {
        /// The request id given (or printed) at enqueue
        request_id: String,
    },
    /// Erase a person: their sessions at Didit, local records, waiting work and events
    /// (queues a job the fleet runs; emits kyc.subject.erased with a salted hash)
    Erase {
        /// The person's vendor_data
        #[arg(long)]
        vendor_data: String,
    },
    /// A verification's audit trail (`session show`), or a decision read now (`session refresh`)
    Session(session::SessionArgs),
    /// Queue depths and the dead set (list, replay, purge)
    Queue(queue::QueueArgs),
    /// Auto-decision rules: check a rules file, explain a decision rule by rule
    Rules(rules::RulesArgs),
    /// Services that receive outcome events over HTTP: list, enable, replay
    Subscribers(subscribers::SubscribersArgs),
    /// The outcome events as consumers see them (`events tail`), from every partition
    Events(events::EventsArgs),
}

/// Why a command stopped: decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Rules(#[from] crate::rules::RuleError),
    #[error(transparent)]
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for CliError {
    /// A setting error anywhere in the chain (e.g. Redis refused the password) keeps exit 2.
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<SettingsError>() {
            Ok(setting) => CliError::Settings(setting),
            Err(other) => CliError::Failed(other),
        }
    }
}

impl From<crate::queue::ConnectError> for CliError {
    fn from(e: crate::queue::ConnectError) -> Self {
        match e {
            crate::queue::ConnectError::Setting(setting) => CliError::Settings(setting),
            outage => CliError::Failed(outage.into()),
        }
    }
}

/// The connector of a one-shot command, checked: a Redis setting that cannot work exits 2,
/// an unreachable Redis exits 1.
async fn redis(settings: &Settings) -> Result<crate::queue::Connector, CliError> {
    let connector = crate::queue::Connector::new(&settings.redis)?;
    connector.check().await?;
    Ok(connector)
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Settings(_) | CliError::Usage(_) | CliError::Rules(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

impl From<::didit::DiditError> for CliError {
    fn from(e: ::didit::DiditError) -> Self {
        CliError::Failed(e.into())
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            e.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Sandbox(args) => sandbox::run(*args).await,
        Command::Didit(command) => {
            let settings = Settings::load()?;
            let _tracing = init_logs(&settings)?;
            didit::run(*command, &settings).await
        }
        Command::Run => {
            let settings = Settings::load()?;
            let _tracing = init_logs(&settings)?;
            run::run(settings).await
        }
        Command::Enqueue(args) => {
            let settings = Settings::load()?;
            let _tracing = init_logs(&settings)?;
            run::enqueue(*args, &settings).await
        }
        Command::Cancel { request_id } => {
            let settings = Settings::load()?;
            let _tracing = init_logs(&settings)?;
            run::cancel(&request_id, &settings).await
        }
        Command::Erase { vendor_data } => {
            let settings = Settings::load()?;
            let _tracing = init_logs(&settings)?;
            run::erase(&vendor_data, &settings).await
        }
        Command::Events(args) => {
            let settings = Settings::load()?;
            let _tracing = init_logs(&settings)?;
            events::run(args, &settings).await
        }
        Command::Session(args) => {
            let settings = Settings::load()?;
            let _tracing = init_logs(&settings)?;
            session::run(args, &settings).await
        }
        Command::Queue(args) => {
            let settings = Settings::load()?;
            let _tracing = init_logs(&settings)?;
            queue::run(args, &settings).await
        }
        Command::Rules(args) => rules::run(args),
        Command::Subscribers(args) => {
            let settings = Settings::load()?;
            init_logs(&settings)?;
            subscribers::run(args, &settings).await
        }
    }
}

/// Logs go to stderr so a command's own output on stdout stays machine-readable; in colour
/// only when stderr is a terminal and `NO_COLOR` is not set. Spans are exported when
/// `[telemetry]` names a receiver, until the returned guard is dropped.
fn init_logs(settings: &Settings) -> Result<crate::telemetry::Tracing, CliError> {
    use std::io::IsTerminal;
    let colours = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let instance = uuid::Uuid::new_v4().to_string();
    crate::telemetry::init_subscriber(
        &settings.log,
        &settings.telemetry,
        &instance,
        std::io::stderr,
        colours,
    )
    .map_err(|e| CliError::Failed(e.context("cannot start logging")))
}

/// `outer: inner: innermost`, each cause once.
fn error_chain(e: &CliError) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}
