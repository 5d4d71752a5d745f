//! Finishing: every handler outcome ends its delivery in one atomic Redis step.
//!
//! The backend installs [`Finisher`] as an apalis [`Acknowledge`] layer, so every result —
//! success, "run again later", a retryable error with or without its own delay, a fatal
//! error, a panic, a timeout — is turned by the [`RetryPolicy`] into one step: `XACK`+`XDEL`,
//! a script that schedules and acknowledges together, or one that buries and acknowledges
//! together. Each step acts only on an entry still pending for this consumer, so it is
//! idempotent and never finishes a job another process has taken over.

use std::{marker::PhantomData, sync::Arc};

use apalis_core::{error::BoxDynError, task::ExecutionContext, worker::ext::ack::Acknowledge};
use futures_util::{future::BoxFuture, FutureExt};

use super::{
    backend::{Backoff, Delivery, Shared},
    envelope::{Envelope, Job},
    keys::{QueueKeys, GROUP},
    now_ms,
    retry::{Completion, JobError, RetryPolicy, Verdict},
    scripts, unix_ms, Queue,
};

/// Finishes each job by the handler's result. Installed by the backend as its middleware.
pub struct Finisher<A> {
    pub(super) queue: Queue,
    pub(super) keys: QueueKeys,
    pub(super) consumer: String,
    pub(super) shared: Arc<Shared>,
    pub(super) _job: PhantomData<fn() -> A>,
}

impl<A> Clone for Finisher<A> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            keys: self.keys.clone(),
            consumer: self.consumer.clone(),
            shared: self.shared.clone(),
            _job: PhantomData,
        }
    }
}

/// The step that ends one delivery.
enum Finish {
    Done,
    /// `outcome` is the `kyc_jobs_total` label: run_again, retried or waited.
    Schedule {
        at_ms: u64,
        envelope: Envelope,
        outcome: &'static str,
    },
    Bury {
        reason: String,
    },
}

impl Finish {
    fn outcome(&self) -> &'static str {
        match self {
            Finish::Done => "done",
            Finish::Schedule { outcome, .. } => outcome,
            Finish::Bury { .. } => "dead",
        }
    }
}

impl<A: Job> Acknowledge<Completion<A>> for Finisher<A> {
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<(), Self::Error>>;

    fn ack(
        &mut self,
        res: &Result<Completion<A>, BoxDynError>,
        ctx: &ExecutionContext,
    ) -> Self::Future {
        let Some(delivery) = ctx.data().get::<Delivery>().cloned() else {
            return futures_util::future::ready(Ok(())).boxed();
        };
        let finish = decide(&delivery, res, self.queue.settings());
        let this = self.clone();
        async move {
            this.apply(&delivery, finish).await;
            Ok(())
        }
        .boxed()
    }
}

/// The finishing step for a handler's result.
fn decide<A: Job>(
    delivery: &Delivery,
    res: &Result<Completion<A>, BoxDynError>,
    settings: &crate::settings::QueueSettings,
) -> Finish {
    match res {
        Ok(Completion::Done) => Finish::Done,
        Ok(Completion::RunAgain { at, args }) => match serde_json::value::to_raw_value(args) {
            Ok(raw) => {
                let at_ms = unix_ms(*at);
                Finish::Schedule {
                    at_ms,
                    envelope: Envelope {
                        v: A::VERSION,
                        id: delivery.job_id.clone(),
                        attempt: 0,
                        deadline_ms: RetryPolicy::from_settings(settings).deadline_from(at_ms),
                        // The next run stays in the same trace as this one (kept where
                        // its job type keeps it).
                        trace: delivery.envelope.trace.filter(|_| A::CARRIES_TRACE),
                        args: raw,
                    },
                    outcome: "run_again",
                }
            }
            Err(e) => Finish::Bury {
                reason: format!("cannot encode the next run: {e}"),
            },
        },
        Err(error) => {
            let retry;
            let job_error = match error.downcast_ref::<JobError>() {
                Some(job_error) => job_error,
                // Anything else (a panic caught, a timeout) is worth another attempt.
                None => {
                    retry = JobError::Retry {
                        reason: error.to_string(),
                        after: None,
                    };
                    &retry
                }
            };
            match delivery.verdict(job_error, settings) {
                Verdict::Bury { reason } => Finish::Bury { reason },
                Verdict::Retry {
                    at_ms,
                    attempt,
                    outcome,
                } => {
                    if let JobError::Retry { reason, .. } = job_error {
                        // Every retry says why, with ids only: a reason is an error's text
                        // (Redis's, Didit's status and field names), never a record's values.
                        tracing::warn!(
                            queue = A::QUEUE,
                            job = %delivery.job_id,
                            attempt,
                            retry_in_ms = at_ms.saturating_sub(now_ms()),
                            reason = %reason,
                            "job failed; retrying"
                        );
                    }
                    let mut envelope = (*delivery.envelope).clone();
                    envelope.attempt = attempt;
                    Finish::Schedule {
                        at_ms,
                        envelope,
                        outcome,
                    }
                }
            }
        }
    }
}

impl<A: Job> Finisher<A> {
    /// Applies the finishing step, retrying Redis errors for a while. Every step is
    /// idempotent (it acts only on an entry still pending for us), so a retry after a lost
    /// reply is safe. If Redis stays away the entry is let go: it stays pending and is
    /// reclaimed later (at-least-once).
    async fn apply(&self, delivery: &Delivery, finish: Finish) {
        let mut backoff = Backoff::new();
        let give_up = tokio::time::Instant::now() + self.queue.settings().reclaim_after;
        loop {
            match self.try_apply(delivery, &finish).await {
                Ok(()) => {
                    if let Some(m) = self.queue.metrics() {
                        m.jobs
                            .with_label_values(&[A::QUEUE, finish.outcome()])
                            .inc();
                        m.job_duration
                            .with_label_values(&[A::QUEUE])
                            .observe(delivery.received.elapsed().as_secs_f64());
                    }
                    break;
                }
                Err(e) if tokio::time::Instant::now() < give_up => {
                    tracing::warn!(error = %e, queue = A::QUEUE, "finishing a job failed; retrying");
                    backoff.wait().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, queue = A::QUEUE, entry = %delivery.entry_id, "could not finish a job; it will be reclaimed and run again");
                    break;
                }
            }
        }
        self.shared.release(&delivery.entry_id);
    }

    async fn try_apply(&self, delivery: &Delivery, finish: &Finish) -> redis::RedisResult<()> {
        let mut conn = self.queue.connection();
        match finish {
            // Two commands, not a script: the cheapest finish. Should XDEL be lost after
            // XACK, maintenance trims acknowledged entries (see `maintenance::trim_finished`).
            Finish::Done => {
                redis::pipe()
                    .xack(&self.keys.ready, GROUP, &[&delivery.entry_id])
                    .ignore()
                    .xdel(&self.keys.ready, &[&delivery.entry_id])
                    .ignore()
                    .query_async(&mut conn)
                    .await
            }
            Finish::Schedule {
                at_ms, envelope, ..
            } => {
                let applied: i64 = scripts::RESCHEDULE
                    .key(&self.keys.delayed)
                    .key(&self.keys.payloads)
                    .key(&self.keys.ready)
                    .arg(&envelope.id)
                    .arg(*at_ms)
                    .arg(envelope.encode())
                    .arg(&delivery.entry_id)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(&self.keys.wake)
                    .invoke_async(&mut conn)
                    .await?;
                if applied == 0 {
                    tracing::warn!(queue = A::QUEUE, entry = %delivery.entry_id, "another consumer took this job meanwhile; it continues there");
                }
                Ok(())
            }
            Finish::Bury { reason } => {
                tracing::warn!(queue = A::QUEUE, job = %delivery.job_id, %reason, "job dead-lettered");
                let payload = delivery.envelope.encode();
                let burial = Burial {
                    payload: &payload,
                    reason,
                    job_id: &delivery.job_id,
                    attempts: delivery.attempt + 1,
                    entry_id: &delivery.entry_id,
                    consumer: &self.consumer,
                };
                bury_once(&self.queue, &self.keys, &burial).await
            }
        }
    }
}

/// One dead-lettering: the delivery and why it cannot run.
pub(super) struct Burial<'a> {
    /// The stored envelope, or undecodable text as it was.
    pub payload: &'a str,
    pub reason: &'a str,
    pub job_id: &'a str,
    pub attempts: u32,
    pub entry_id: &'a str,
    /// The consumer the entry is pending for.
    pub consumer: &'a str,
}

/// Dead-letters a delivery, retrying Redis errors briefly (the script is idempotent).
pub(super) async fn bury(queue: &Queue, keys: &QueueKeys, burial: &Burial<'_>) {
    let mut backoff = Backoff::new();
    for _ in 0..10 {
        match bury_once(queue, keys, burial).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "dead-lettering failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

async fn bury_once(queue: &Queue, keys: &QueueKeys, b: &Burial<'_>) -> redis::RedisResult<()> {
    let mut conn = queue.connection();
    scripts::BURY
        .key(&keys.dead)
        .key(&keys.ready)
        .arg(b.payload)
        .arg(b.reason)
        .arg(b.job_id)
        .arg(b.attempts)
        .arg(queue.settings().dead_max_len)
        .arg(b.entry_id)
        .arg(GROUP)
        .arg(b.consumer)
        .invoke_async::<i64>(&mut conn)
        .await
        .map(drop)
}
