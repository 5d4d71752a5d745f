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
    store::{Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("invalid start request: {0}")]
    Invalid(#[from] RequestError),
    #[error("cannot enqueue: {0}")]
    Queue(#[from] QueueError),
    #[error("cannot connect to Redis: {0}")]
    Connect(#[from] redis::RedisError),
    #[error("cannot record the request: {0}")]
    Record(#[from] StoreError),
    /// Too much work is waiting; try again after `retry_after`.
    #[error("the fleet is behind ({waiting} start requests waiting); retry in {} s", retry_after.as_secs())]
    Backpressure {
        waiting: u64,
        retry_after: std::time::Duration,
    },
}

/// How long a backpressure reading is reused (keeps the check off the hot path).
const BACKPRESSURE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// What producers are told to wait while the fleet is behind.
pub const BACKPRESSURE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Producer {
    queue: Queue,
    store: Store,
    /// The last reading of waiting start requests and when it was taken.
    waiting: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, u64)>>>,
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
        Ok(Self::new(queue, store))
    }

    pub fn new(queue: Queue, store: Store) -> Self {
        Self {
            queue,
            store,
            waiting: Default::default(),
        }
    }

    /// Start requests waiting (ready + scheduled), read at most once a second.
    async fn waiting(&self) -> Result<u64, ProducerError> {
        let cached = *self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, n)) = cached {
            if at.elapsed() < BACKPRESSURE_TTL {
                return Ok(n);
            }
        }
        let stats = self
            .queue
            .stats(<StartKyc as crate::queue::Job>::QUEUE)
            .await?;
        let n = stats.ready + stats.scheduled;
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), n));
        Ok(n)
    }

    /// `Err(Backpressure)` while more start requests wait than `queue.backpressure_limit`.
    pub async fn check_capacity(&self) -> Result<(), ProducerError> {
        let waiting = self.waiting().await?;
        if waiting >= self.queue.settings().backpressure_limit {
            return Err(ProducerError::Backpressure {
                waiting,
                retry_after: BACKPRESSURE_RETRY,
            });
        }
        Ok(())
    }

    /// Queues a verification; returns its request id (generated when the request has none).
    /// Enqueuing the same request id again never creates a second Didit session.
    pub async fn start_kyc(&self, request: StartRequest) -> Result<RequestId, ProducerError> {
        let (id, request) = request.validate()?;
        self.check_capacity().await?;
        self.store
            .record_enqueued(&id, request.vendor_data.trim())
            .await?;
        self.queue.push(&StartKyc { request }).await?;
        Ok(id)
    }
}
