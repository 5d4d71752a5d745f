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
//! the dead set later: its own rules, and what this deployment can start (a workflow its
//! settings name; against the sandbox, one of the sandbox's scenarios). Services in other
//! languages write to the intake stream instead; its reader (`intake`) turns each entry into
//! the same call.

mod intake;

use crate::{
    domain::{Admission, IntakeLimits, RequestError, RequestId, StartRequest},
    jobs::StartKyc,
    queue::{ConnectError, Connector, Queue, QueueError},
    settings::Settings,
    store::{Enqueued, Store, StoreError},
};

pub(crate) use intake::read_intake;

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("invalid start request: {0}")]
    Invalid(#[from] RequestError),
    /// The request id was accepted before for another request: nothing was queued. Not
    /// retryable: send the original body again, or use a new id.
    #[error("idempotency_mismatch: the request id was already used for a different request ({} differ)", fields.join(", "))]
    IdempotencyMismatch { fields: Vec<&'static str> },
    #[error("cannot enqueue: {0}")]
    Queue(#[from] QueueError),
    /// Redis cannot be used: a setting to fix, or an outage (see [`ConnectError::is_retryable`]).
    #[error(transparent)]
    Connect(#[from] ConnectError),
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
pub(crate) const BACKPRESSURE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Producer {
    queue: Queue,
    store: Store,
    admission: Admission,
    limits: IntakeLimits,
    /// The last reading of waiting start requests and when it was taken.
    waiting: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, u64)>>>,
}

impl Producer {
    /// Connects with the `[redis]` settings and checks that Redis answers.
    pub async fn connect(settings: &Settings) -> Result<Self, ProducerError> {
        let connector = Connector::new(&settings.redis).map_err(ConnectError::from)?;
        connector.check().await?;
        let queue = Queue::new(
            connector.connect(),
            &settings.redis.prefix,
            settings.queue.clone(),
        );
        let store = Store::new(
            connector.connect(),
            &settings.redis.prefix,
            settings.events.clone(),
        );
        Ok(Self::new(queue, store, admission(settings)).with_limits(settings.intake))
    }

    pub fn new(queue: Queue, store: Store, admission: Admission) -> Self {
        Self {
            queue,
            store,
            admission,
            limits: IntakeLimits::default(),
            waiting: Default::default(),
        }
    }

    /// Applies the settings' size limits (`[intake]`) instead of the defaults.
    pub fn with_limits(mut self, limits: IntakeLimits) -> Self {
        self.limits = limits;
        self
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

    /// What [`Producer::start_kyc`] would refuse, without queuing anything: the request's
    /// own rules, then what this deployment can start. Returns the request with its id
    /// filled in (a batch checks every row before it queues one).
    pub fn check(&self, request: StartRequest) -> Result<(RequestId, StartRequest), RequestError> {
        self.check_all(request)
            .map_err(crate::domain::first_problem)
    }

    /// As [`Producer::check`], naming every field at fault.
    pub fn check_all(
        &self,
        request: StartRequest,
    ) -> Result<(RequestId, StartRequest), Vec<RequestError>> {
        let mut refusals = self.admission.refusals(&request);
        match request.validate_all(&self.limits) {
            Ok(valid) if refusals.is_empty() => Ok(valid),
            Ok(_) => Err(refusals),
            Err(mut errors) => {
                errors.append(&mut refusals);
                Err(errors)
            }
        }
    }

    /// Queues a verification; returns its request id (generated when the request has none).
    ///
    /// Idempotent on the request id: the same request again is accepted with the same
    /// answer and never creates a second Didit session; the id with another body is
    /// refused ([`ProducerError::IdempotencyMismatch`]). The request record and the job are
    /// written in one step, so an error leaves nothing behind.
    pub async fn start_kyc(&self, request: StartRequest) -> Result<RequestId, ProducerError> {
        let (id, request) = self.check(request)?;
        self.check_capacity().await?;
        let fingerprint = request.fingerprint();
        let vendor_data = request.vendor_data.trim().to_owned();
        let (ready, envelope) = self.queue.prepare(&StartKyc { request })?;
        let enqueued = self
            .store
            .enqueue_start(&id, &vendor_data, &fingerprint.encode(), &ready, &envelope)
            .await?;
        match enqueued {
            Enqueued::New | Enqueued::Again => Ok(id),
            Enqueued::Mismatch { recorded } => {
                let mut fields = fingerprint.differing(recorded.as_deref());
                if fields.is_empty() {
                    // Recorded by a build that fingerprinted fields this one does not know.
                    fields.push("body");
                }
                Err(ProducerError::IdempotencyMismatch { fields })
            }
        }
    }
}

/// What the deployment these settings describe can start: the workflows of `[workflows]`
/// and, when `didit.base_url` is this machine (the sandbox), the sandbox's scenarios.
pub fn admission(settings: &Settings) -> Admission {
    let scenarios = settings.didit.is_sandbox().then(|| {
        didit_sandbox::Scenario::ALL
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect()
    });
    Admission::new(settings.workflows.keys().cloned(), scenarios)
}
