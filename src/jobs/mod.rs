//! The pipeline's jobs and the workers that run them.
//!
//! - [`StartKyc`]: one Didit session per request, the user's link, the first poll.
//! - [`PollDecision`]: reads a session's decision; "not yet" re-schedules on the poll
//!   schedule (never an attempt), a final status publishes its event.
//! - `EraseSubject`: a person's right to erasure, at Didit and here.
//! - [`OperatorAction`]: a person's decision from the console, carried out at Didit.
//! - `DeliverEvent`: one outcome event sent to one subscriber service over HTTP.
//!
//! Handlers turn every Didit failure into the queue's language through `Pipeline::didit_failure`:
//! 429/5xx wait without using attempts, account problems pause the fleet, request problems
//! fail the request with an event.

mod context;
mod decide;
mod deliver;
mod erase;
mod operator;
mod poll;
mod start;
mod sweep;

use std::time::Duration;

use apalis::prelude::*;

pub(crate) use context::Pipeline;
pub(crate) use decide::email_the_person;
pub(crate) use deliver::{DeliverEvent, Deliveries};
pub(crate) use erase::EraseSubject;
pub use operator::{OperatorAction, OperatorDecision};
pub use poll::PollDecision;
pub use start::StartKyc;
pub(crate) use start::REQUEST_ID_METADATA;

use crate::queue::{Maintenance, RedisBackend};

/// Every queue this pipeline uses, for maintenance and stats.
pub(crate) const QUEUES: [&str; 5] = [
    <StartKyc as crate::queue::Job>::QUEUE,
    <PollDecision as crate::queue::Job>::QUEUE,
    <EraseSubject as crate::queue::Job>::QUEUE,
    <OperatorAction as crate::queue::Job>::QUEUE,
    <DeliverEvent as crate::queue::Job>::QUEUE,
];

/// Why a request could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CancelError {
    #[error("no request {0}")]
    Unknown(String),
    /// The verification already ended: cancelling would rewrite its outcome.
    #[error("{request} is already {status}: only an open verification can be cancelled")]
    Settled { request: String, status: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

/// Stops following a verification that is still open (queued, created, in progress,
/// resubmitted or In Review): no more polls, out of the review queue, and
/// `kyc.session.failed` with `data.reason` = `cancelled`. A verification that reached its
/// outcome (Approved, Declined, expired, failed) is refused with
/// [`CancelError::Settled`]: its outcome was published and stands. Returns `false` when it
/// was cancelled before. Needs no Didit call: the session at Didit is left as it is.
pub(crate) async fn cancel(
    queue: &crate::queue::Queue,
    store: &crate::store::Store,
    request: &crate::domain::RequestId,
) -> Result<bool, CancelError> {
    use crate::domain::{
        Decider, EventStatus, EventType, FailureReason, OutcomeEvent, SessionStatus,
    };
    let record = store
        .request(request)
        .await?
        .ok_or_else(|| CancelError::Unknown(request.to_string()))?;
    if record.cancelled {
        return Ok(false);
    }
    let settled = match &record.last_status {
        Some(EventStatus::Session(s)) => s.is_final() && *s != SessionStatus::InReview,
        Some(EventStatus::Failed | EventStatus::Erased) => true,
        None => false,
    };
    if let (true, Some(status)) = (settled, &record.last_status) {
        return Err(CancelError::Settled {
            request: request.to_string(),
            status: status.to_string(),
        });
    }
    if !store.cancel_request(request, record.session_id).await? {
        return Ok(false);
    }
    store
        .audit(
            std::slice::from_ref(request),
            "cancelled",
            serde_json::json!({}),
        )
        .await?;
    let event = OutcomeEvent::new(
        EventType::Failed,
        request.clone(),
        record.session_id,
        record.vendor_data.clone(),
        EventStatus::Failed,
        &Decider::Fleet,
        serde_json::json!({"reason": FailureReason::Cancelled.as_str()}),
    );
    store.publish(&event).await?;
    if let Some(sid) = record.session_id {
        let session = store.session(sid).await?;
        let others_active = session.as_ref().is_some_and(|s| !s.requests.is_empty());
        if !others_active {
            queue
                .unschedule(
                    <PollDecision as crate::queue::Job>::QUEUE,
                    &PollDecision::slot(sid),
                )
                .await?;
            match &session {
                Some(session) => store.finish_session(sid, session).await?,
                None => store.close_session(sid).await?,
            }
            store.unlist_review(sid).await?;
        }
    }
    Ok(true)
}

/// Runs the pipeline's workers until `shutdown` resolves, then drains for at most `drain`.
pub(crate) async fn run_workers(
    pipeline: Pipeline,
    consumer: String,
    concurrency: usize,
    drain: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let maintenance = Maintenance::spawn(pipeline.queue.clone(), QUEUES.to_vec(), consumer.clone());
    let probe = tokio::spawn(context::pause_probe(pipeline.clone()));
    let sweeper = tokio::spawn(sweep::sweep(pipeline.clone()));
    let deliveries = Deliveries::new(
        pipeline.queue.clone(),
        pipeline.store.clone(),
        pipeline.metrics.clone(),
        pipeline.settings.delivery.clone(),
        &pipeline.settings.subscribers,
    )?;
    let delivery_tasks = deliver::start(deliveries.clone(), &pipeline, &consumer).await;
    let deliver_worker = format!("{consumer}-deliver");
    let deliver_queue = pipeline.queue.clone();
    let deliver_concurrency = pipeline.settings.delivery.concurrency;
    let start_pipeline = pipeline.clone();
    let start_worker = format!("{consumer}-start");
    let poll_worker = format!("{consumer}-poll");
    let erase_worker = format!("{consumer}-erase");
    let erase_pipeline = pipeline.clone();
    let operator_worker = format!("{consumer}-operator");
    // Every worker reads as the process's consumer: one blocking read feeds them all.
    let start_consumer = consumer.clone();
    let poll_consumer = consumer.clone();
    let erase_consumer = consumer.clone();
    let operator_consumer = consumer.clone();
    let deliver_consumer = consumer.clone();
    let operator_pipeline = pipeline.clone();
    let result = Monitor::new()
        .register(move |_run| {
            WorkerBuilder::new(start_worker.as_str())
                .backend(RedisBackend::<StartKyc>::new(
                    start_pipeline.queue.clone(),
                    start_consumer.clone(),
                ))
                .concurrency(concurrency)
                .catch_panic()
                .data(start_pipeline.clone())
                .build(start::handle)
        })
        .register(move |_run| {
            WorkerBuilder::new(poll_worker.as_str())
                .backend(RedisBackend::<PollDecision>::new(
                    pipeline.queue.clone(),
                    poll_consumer.clone(),
                ))
                .concurrency(concurrency)
                .catch_panic()
                .data(pipeline.clone())
                .build(poll::handle)
        })
        .register(move |_run| {
            // Erasures are rare and heavy (scans): one at a time.
            WorkerBuilder::new(erase_worker.as_str())
                .backend(RedisBackend::<EraseSubject>::new(
                    erase_pipeline.queue.clone(),
                    erase_consumer.clone(),
                ))
                .concurrency(1)
                .catch_panic()
                .data(erase_pipeline.clone())
                .build(erase::handle)
        })
        .register(move |_run| {
            // People click a few times a minute; a handful at once is plenty.
            WorkerBuilder::new(operator_worker.as_str())
                .backend(RedisBackend::<OperatorAction>::new(
                    operator_pipeline.queue.clone(),
                    operator_consumer.clone(),
                ))
                .concurrency(4)
                .catch_panic()
                .data(operator_pipeline.clone())
                .build(operator::handle)
        })
        .register(move |_run| {
            // Its own queue and slots: subscribers never hold up verifications.
            WorkerBuilder::new(deliver_worker.as_str())
                .backend(RedisBackend::<DeliverEvent>::new(
                    deliver_queue.clone(),
                    deliver_consumer.clone(),
                ))
                .concurrency(deliver_concurrency)
                .catch_panic()
                .data(deliveries.clone())
                .build(deliver::handle)
        })
        .should_restart(|_ctx, _err| true)
        .shutdown_timeout(drain)
        .run_with_signal(async move {
            shutdown.await;
            Ok(())
        })
        .await;
    probe.abort();
    sweeper.abort();
    for task in delivery_tasks {
        task.abort();
    }
    maintenance.stop();
    result.map_err(|e| anyhow::anyhow!("workers stopped: {e}"))
}
