//! Creates one verification session and prints the link to send the person to, then reads
//! the session's decision once.
//!
//! By default it talks to the local sandbox (`kyc-worker sandbox`, on port 8089 with the API
//! key `sandbox` and a ready-made workflow), so it needs no Didit account:
//!
//! ```text
//! cargo run --bin kyc-worker -- sandbox &
//! cargo run -p didit --example create_session
//! ```
//!
//! Against Didit, set `DIDIT_BASE_URL=https://verification.didit.me`, `DIDIT_API_KEY` and
//! `DIDIT_WORKFLOW_ID`. `DIDIT_VENDOR_DATA` names the person (your own opaque id).

use std::{env, error::Error, process::ExitCode};

use didit::{types::CreateSessionRequest, ClientConfig, DiditClient, DiditError, ErrorClass};
use url::Url;
use uuid::Uuid;

/// The local sandbox's address and key (`didit_sandbox::DEFAULT_PORT`, `DEFAULT_API_KEY`).
const SANDBOX_BASE_URL: &str = "http://127.0.0.1:8089";
const SANDBOX_API_KEY: &str = "sandbox";
/// The workflow every sandbox starts with (`didit_sandbox::WORKFLOW_ID`).
const SANDBOX_WORKFLOW_ID: &str = "5f0c9a52-2b8e-4d3c-9a61-7e4b8d2c1f30";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<DiditError>() {
                Some(didit) => explain(didit),
                None => eprintln!("{error}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let base_url: Url = setting("DIDIT_BASE_URL", SANDBOX_BASE_URL).parse()?;
    // Registration lives on another host; this example makes no registration call, so the
    // sandbox's own path is a fine placeholder.
    let auth_base_url = base_url.join("/auth/v2")?;
    let api_key = setting("DIDIT_API_KEY", SANDBOX_API_KEY);
    let workflow_id: Uuid = setting("DIDIT_WORKFLOW_ID", SANDBOX_WORKFLOW_ID).parse()?;
    let vendor_data = setting("DIDIT_VENDOR_DATA", "example-user-1");

    let config = ClientConfig::new(base_url, auth_base_url, api_key.into());
    let client = DiditClient::new(&config)?;

    let request = CreateSessionRequest {
        workflow_id,
        vendor_data: Some(vendor_data),
        ..CreateSessionRequest::default()
    };
    let session = client.create_session(&request).await?;
    println!("session {} ({})", session.session_id, session.status);
    println!("send the person to {}", session.url);

    let decision = client.decision(session.session_id).await?;
    println!("decision so far: {}", decision.status);
    if decision.status.is_final() {
        println!("final: no further status change unless a reviewer or the API makes one");
    }
    Ok(())
}

/// An environment variable, or `default` when it is unset or empty.
fn setting(name: &str, default: &str) -> String {
    env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// What a caller would do about the failure, by its class.
fn explain(error: &DiditError) {
    match error.class() {
        ErrorClass::Retryable {
            retry_after: Some(wait),
        } => eprintln!("{error}: retry in {} s or later", wait.as_secs()),
        ErrorClass::Retryable { retry_after: None } => {
            eprintln!("{error}: retry with backoff (is the sandbox running?)")
        }
        ErrorClass::Account(cause) => eprintln!(
            "{error}: the account cannot make calls ({}); stop calling until it is fixed",
            cause.as_str()
        ),
        ErrorClass::Request => eprintln!("{error}: this request cannot succeed as sent"),
    }
}
