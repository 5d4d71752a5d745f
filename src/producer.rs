//! Producers: how other Rust services ask for a verification.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let settings = kyc_worker::settings::Settings::load()?;
//! let producer = kyc_worker::producer::Producer::connect(&settings).await?;
//! let request_id = producer
//!     .start_kyc(kyc_worker::domain::StartRequest { vendor_data: "user-1".into(), ..Default::default() })
//!     .await?;
//! # Ok(()) }
//! ```
//! The request is validated here, so a caller gets a clear error at once instead of a job in
//! the dead set later.

use crate::{
    domain::{RequestError, RequestId, StartRequest},
    jobs::StartKyc,
    queue::{Queue, QueueError},
    settings::Settings,
    store::Store,
};

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("invalid start request: {0}")]
    Invalid(#[from] RequestError),
    #[error("cannot enqueue: {0}")]
    Queue(#[from] QueueError),
    #[error("cannot record the request: {0}")]
    Record(#[from] redis::RedisError),
}

#[derive(Clone, Debug)]
pub struct Producer {
    queue: Queue,
    store: Store,
}

impl Producer {
    pub async fn connect(settings: &Settings) -> Result<Self, ProducerError> {
        let queue = Queue::connect(
            settings.redis.url(),
            &settings.redis.prefix,
            settings.queue.clone(),
        )
        .await?;
        let conn = crate::queue::connect(settings.redis.url()).await?;
        let store = Store::new(conn, &settings.redis.prefix, settings.events.clone());
        Ok(Self { queue, store })
    }

    pub fn new(queue: Queue, store: Store) -> Self {
        Self { queue, store }
    }

    /// Queues a verification; returns its request id (generated when the request has none).
    /// Enqueuing the same request id again never creates a second Didit session.
    pub async fn start_kyc(&self, request: StartRequest) -> Result<RequestId, ProducerError> {
        let (id, request) = request.validate()?;
        self.store
            .record_enqueued(&id, request.vendor_data.trim())
            .await?;
        self.queue.push(&StartKyc { request }).await?;
        Ok(id)
    }
}
