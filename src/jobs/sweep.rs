//! Reconciliation: re-read sessions still open or In Review on a slow cadence.
//!
//! Webhooks and the poll schedule normally see every change, but Didit drops a webhook after
//! three failed deliveries and staff decide reviews days later. The sweep moves each such
//! session's poll to now at least every `poll.sweep_interval`, so every later decision still
//! produces its event. One process per interval does it (a Redis turn), in bounded batches,
//! as low-priority Didit budget.

use std::time::SystemTime;

use super::{Pipeline, PollDecision};

/// Sessions handled per batch.
const BATCH: usize = 500;

pub async fn sweep(pipeline: Pipeline) {
    let every = pipeline.settings.poll.sweep_interval;
    loop {
        tokio::time::sleep(every).await;
        match pipeline.store.take_sweep_turn(every).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation sweep skipped");
                continue;
            }
        }
        let mut swept = 0;
        loop {
            let due = match pipeline.store.sessions_to_sweep(BATCH, every).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation sweep interrupted");
                    break;
                }
            };
            if due.is_empty() {
                break;
            }
            let jobs: Vec<(String, PollDecision, SystemTime)> = due
                .iter()
                .map(|&session_id| {
                    let job = PollDecision {
                        session_id,
                        polls: 0,
                        urgent: false,
                    };
                    (PollDecision::slot(session_id), job, SystemTime::now())
                })
                .collect();
            if let Err(e) = pipeline.queue.push_at_many::<PollDecision, _>(&jobs).await {
                tracing::warn!(error = %e, "reconciliation sweep could not schedule reads");
                break;
            }
            swept += jobs.len();
        }
        if swept > 0 {
            tracing::info!(sessions = swept, "reconciliation sweep scheduled reads");
        }
    }
}
