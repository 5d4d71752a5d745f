//! `kyc-worker sandbox`: serve the local Didit emulator until ctrl-c or SIGTERM.
//!
//! The flags only fill a [`SandboxConfig`]; what the sandbox does is documented in
//! `kyc_worker::sandbox` and `docs/sandbox.md`.

use std::{net::IpAddr, time::Duration};

use clap::Args;
use url::Url;

use super::CliError;
use didit_sandbox::{
    Contested, DeleteStatus, LimitSpec, SameStatus, Sandbox, SandboxConfig, WrongKeyStatus,
    DEFAULT_API_KEY, DEFAULT_PORT, DEFAULT_WEBHOOK_SECRET, MAX_RETRY_SCALE, WORKFLOW_ID,
};

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0: any free port)
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// The API key clients must send as x-api-key
    #[arg(long, default_value = DEFAULT_API_KEY)]
    api_key: String,
    /// Deliver every status change to this URL, signed like Didit's webhooks
    #[arg(long)]
    webhook_url: Option<Url>,
    /// Secret the deliveries to --webhook-url are signed with
    #[arg(long, default_value = DEFAULT_WEBHOOK_SECRET)]
    webhook_secret: String,
    /// Milliseconds from session creation to its final status (In Progress at half)
    #[arg(long, default_value_t = 2000)]
    complete_after_ms: u64,
    /// Milliseconds added to every API response
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of API calls (0.0-1.0) answered with a 500
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// A rate limit as SCOPE=N/WINDOW (scopes get, write, create, pdf; window 500ms, 1s, 1m);
    /// repeatable, window at most one day. Default: Didit's 600/300/600/50 per minute
    #[arg(long = "limit")]
    limits: Vec<LimitSpec>,
    /// Smallest session_expiration_time a workflow may have, in seconds (Didit: 3600)
    #[arg(long, default_value_t = 3600)]
    min_expiration_s: u64,
    /// Multiplies Didit's webhook retry delays of 60 s and 240 s (e.g. 0.001)
    #[arg(long, default_value_t = 1.0)]
    webhook_retry_scale: f64,
    /// Status for a wrong or revoked API key: 401 (documented) or 403 (seen from July 2026)
    #[arg(long, default_value_t = WrongKeyStatus::default())]
    wrong_key_status: WrongKeyStatus,
    /// update-status to the current status: 200 no-op (newer docs) or 400 bare array (older)
    #[arg(long, default_value_t = SameStatus::default())]
    same_status: SameStatus,
    /// Status of a successful delete: 204 empty (July 2026) or 200 JSON (August 2026)
    #[arg(long, default_value_t = DeleteStatus::default())]
    delete_status: DeleteStatus,
}

pub async fn run(args: SandboxArgs) -> Result<(), CliError> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        return Err(CliError::Usage(format!(
            "--error-rate must be between 0 and 1, got {}",
            args.error_rate
        )));
    }
    if !(0.0..=MAX_RETRY_SCALE).contains(&args.webhook_retry_scale) {
        return Err(CliError::Usage(format!(
            "--webhook-retry-scale must be between 0 and {MAX_RETRY_SCALE}"
        )));
    }
    let config = SandboxConfig {
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        webhook_url: args.webhook_url,
        webhook_secret: args.webhook_secret,
        complete_after: Duration::from_millis(args.complete_after_ms),
        latency: Duration::from_millis(args.latency_ms),
        error_rate: args.error_rate,
        limits: args.limits,
        min_expiration: Duration::from_secs(args.min_expiration_s),
        webhook_retry_scale: args.webhook_retry_scale,
        contested: Contested {
            wrong_key: args.wrong_key_status,
            same_status: args.same_status,
            delete: args.delete_status,
        },
        ..SandboxConfig::default()
    };
    let api_key = config.api_key.clone();
    let handle = Sandbox::start(config).await?;
    // The sandbox's own key, not a secret: printing it is what makes the demo copy-pasteable.
    println!(
        "Didit sandbox listening on {} (api key: {api_key}, workflow {WORKFLOW_ID})",
        handle.base_url().as_str().trim_end_matches('/')
    );
    handle.serve_until_signal().await?;
    Ok(())
}
