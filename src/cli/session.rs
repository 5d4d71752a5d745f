//! `kyc-worker session show REQUEST_ID|SESSION_ID`: what happened to a verification and why,
//! from its PII-free audit trail.

use anyhow::Context;
use clap::{Args, Subcommand};
use uuid::Uuid;

use super::CliError;
use crate::{domain::RequestId, settings::Settings, store::Store};

#[derive(Debug, Args)]
pub struct SessionArgs {
    #[command(subcommand)]
    command: SessionCommand,
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Print the audit trail of a request (or of every request a Didit session serves)
    Show {
        /// A request id, or a Didit session id (UUID)
        id: String,
        /// One JSON object per line instead of a table
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: SessionArgs, settings: &Settings) -> Result<(), CliError> {
    let SessionCommand::Show { id, json } = args.command;
    let conn = super::redis(settings).await?.connect();
    let store = Store::new(conn, &settings.redis.prefix, settings.events.clone());
    let session = match Uuid::parse_str(&id) {
        Ok(sid) => store
            .session(sid)
            .await
            .context("cannot read the session")?,
        Err(_) => None,
    };
    let requests = match session {
        Some(s) => s.requests.into_iter().chain(s.cancelled).collect(),
        None => vec![RequestId::parse(&id).map_err(|e| CliError::Usage(e.to_string()))?],
    };
    let mut found = false;
    for request in &requests {
        let trail = store
            .audit_trail(request)
            .await
            .context("cannot read the audit trail")?;
        if trail.is_empty() {
            continue;
        }
        found = true;
        if !json {
            println!("request {request}");
        }
        for step in trail {
            if json {
                println!("{step}");
                continue;
            }
            let when = timestamp(step["at_ms"].as_u64().unwrap_or(0));
            let name = step["step"].as_str().unwrap_or("?").to_owned();
            let mut rest = step.clone();
            if let Some(map) = rest.as_object_mut() {
                map.remove("at_ms");
                map.remove("step");
            }
            println!("  {when}  {name:<20} {rest}");
        }
    }
    if !found {
        return Err(CliError::Failed(anyhow::anyhow!(
            "no audit trail for {id} (unknown, or past its retention)"
        )));
    }
    Ok(())
}

/// Unix ms as `2026-11-26T15:04:05.120Z`: always millisecond precision, so the steps'
/// columns line up (RFC 3339 alone drops trailing zeros of the fraction).
fn timestamp(ms: u64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{ms:>24}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_one_width() {
        assert_eq!(timestamp(1_764_169_445_000), "2025-11-26T15:04:05.000Z");
        assert_eq!(timestamp(1_764_169_445_120), "2025-11-26T15:04:05.120Z");
        assert_eq!(timestamp(1_764_169_445_123), "2025-11-26T15:04:05.123Z");
    }
}
