//! `kyc-worker session show REQUEST_ID|SESSION_ID`: what happened to a verification and why,
//! from its PII-free audit trail; `kyc-worker session refresh REQUEST_ID|SESSION_ID`: read
//! the decision now and run it through the pipeline, for an operator who knows Didit
//! changed something (a reviewer's decision, a resubmission from Didit's console) that no
//! webhook announced.

use anyhow::Context;
use clap::{Args, Subcommand};
use uuid::Uuid;

use super::CliError;
use crate::{domain::RequestId, jobs::PollDecision, settings::Settings, store::Store};

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
    /// Read the session's decision now and run it through the pipeline (rules, events),
    /// as a webhook would: queued first in the session's poll slot for a worker
    Refresh {
        /// A request id, or a Didit session id (UUID)
        id: String,
    },
}

pub async fn run(args: SessionArgs, settings: &Settings) -> Result<(), CliError> {
    let conn = super::redis(settings).await?.connect();
    let store = Store::new(
        conn.clone(),
        &settings.redis.prefix,
        settings.events.clone(),
    );
    let (id, json) = match args.command {
        SessionCommand::Show { id, json } => (id, json),
        SessionCommand::Refresh { id } => return refresh(&id, &store, conn, settings).await,
    };
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

/// Queues an immediate decision read of the session a request id or session id names.
async fn refresh(
    id: &str,
    store: &Store,
    conn: crate::queue::RedisConnection,
    settings: &Settings,
) -> Result<(), CliError> {
    // Request ids are often UUIDs too: a UUID names a session when one is recorded under it.
    let as_session = match Uuid::parse_str(id) {
        Ok(sid) => store
            .session(sid)
            .await
            .context("cannot read the session")?
            .map(|_| sid),
        Err(_) => None,
    };
    let sid = match as_session {
        Some(sid) => sid,
        None => {
            let request = RequestId::parse(id).map_err(|e| CliError::Usage(e.to_string()))?;
            store
                .request(&request)
                .await
                .context("cannot read the request")?
                .ok_or_else(|| CliError::Failed(anyhow::anyhow!("no request {id}")))?
                .session_id
                .ok_or_else(|| {
                    CliError::Failed(anyhow::anyhow!(
                        "request {id} has no Didit session yet: its start job creates one"
                    ))
                })?
        }
    };
    let session = store
        .session(sid)
        .await
        .context("cannot read the session")?
        .ok_or_else(|| {
            CliError::Failed(anyhow::anyhow!(
                "no record of session {sid} (unknown, or past its retention)"
            ))
        })?;
    if session.requests.is_empty() {
        return Err(CliError::Failed(anyhow::anyhow!(
            "session {sid} serves no open request (all cancelled): nothing to refresh"
        )));
    }
    let queue = crate::queue::Queue::new(conn, &settings.redis.prefix, settings.queue.clone());
    let job = PollDecision {
        session_id: sid,
        polls: 0,
        urgent: true,
    };
    queue
        .run_now(&PollDecision::slot(sid), &job)
        .await
        .context("cannot queue the read")?;
    println!(
        "session {sid}: decision read queued; a worker runs it through the rules and publishes what changed (see `kyc-worker session show {sid}`)"
    );
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
