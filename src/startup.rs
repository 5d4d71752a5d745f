//! Wiring for `kyc-worker run`: settings → connections → HTTP servers + workers, and the
//! graceful shutdown that ties them together.

use std::{
    future::Future,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use anyhow::Context;
use didit::{webhook::WebhookVerifier, DiditClient};
use tokio::net::TcpListener;

use crate::{
    console::{ConsoleState, Throughput},
    domain::AccountPause,
    http::{internal_router, public_router, AppState},
    jobs::{run_workers, Pipeline, QUEUES},
    metrics::Metrics,
    producer::Producer,
    queue::Queue,
    ratelimit::RateLimiter,
    rules::RuleSet,
    settings::Settings,
    store::Store,
};

/// A built, not yet running, fleet process.
pub struct Application {
    listener: TcpListener,
    /// The internal listener for `/metrics`, when `http.internal_port` is set.
    internal: Option<TcpListener>,
    port: u16,
    pipeline: Pipeline,
    state: AppState,
    consumer: String,
    /// This process's heartbeat id in Redis (random; never a host name).
    process: uuid::Uuid,
}

impl Application {
    /// Connects to Redis and binds the HTTP ports (0 picks a free one).
    pub async fn build(settings: Settings, rules: RuleSet) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let metrics = Metrics::new(&QUEUES);
        let queue = Queue::connect(
            settings.redis.url(),
            &settings.redis.prefix,
            settings.queue.clone(),
        )
        .await
        .context("cannot connect to Redis")?
        .with_metrics(metrics.clone());
        let conn = crate::queue::connect(settings.redis.url())
            .await
            .context("cannot connect to Redis")?;
        let store = Store::new(
            conn.clone(),
            &settings.redis.prefix,
            settings.events.clone(),
        );
        let limiter = RateLimiter::new(conn, &settings.redis.prefix, settings.ratelimit.clone());
        let console = ConsoleState {
            enabled: settings.http.console,
            admin_token: settings.http.admin_token.clone(),
            limiter: limiter.clone(),
            throughput: Arc::new(Throughput::default()),
        };
        let didit =
            DiditClient::new(&settings.didit.client_config())?.with_observer(metrics.clone());
        let pipeline = Pipeline::new(
            didit,
            queue.clone(),
            store.clone(),
            limiter,
            metrics.clone(),
            Arc::new(rules),
            settings.clone(),
        );
        let state = AppState {
            producer: Producer::new(queue.clone(), store.clone()),
            store,
            queue,
            verifier: Arc::new(WebhookVerifier::new(
                settings.didit.webhook_secrets(),
                settings.didit.webhook_tolerance,
            )),
            api_token: settings.http.api_token.clone(),
            workers_alive: Arc::new(AtomicBool::new(true)),
            metrics,
            console,
        };
        let listener = bind(&settings.http.host, settings.http.port).await?;
        let internal = match settings.http.internal_port {
            Some(port) => Some(bind(&settings.http.host, port).await?),
            None => None,
        };
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            internal,
            port,
            pipeline,
            state,
            consumer: consumer_name(),
            process: uuid::Uuid::new_v4(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// This process's consumer name: host (or pod) name plus a random suffix per start.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Serves and works until `shutdown` resolves, then drains for `worker.shutdown_timeout`.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let settings = self.pipeline.settings.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let alive = self.state.workers_alive.clone();
        let (public, internal) = match self.internal {
            Some(_) => (
                public_router(self.state.clone()),
                Some(internal_router(self.state.clone())),
            ),
            None => (
                public_router(self.state.clone()).merge(internal_router(self.state.clone())),
                None,
            ),
        };
        let server = tokio::spawn(serve(self.listener, public, stop_rx.clone()));
        let internal_server = match (self.internal, internal) {
            (Some(listener), Some(router)) => {
                Some(tokio::spawn(serve(listener, router, stop_rx.clone())))
            }
            _ => None,
        };
        let sampler = tokio::spawn(sample(
            self.pipeline.clone(),
            self.state.console.throughput.clone(),
            self.process,
        ));
        tracing::info!(port = self.port, consumer = %self.consumer, "kyc-worker running");
        let mut worker_stop = stop_rx.clone();
        let workers = run_workers(
            self.pipeline,
            self.consumer,
            settings.worker.concurrency,
            settings.worker.shutdown_timeout,
            async move {
                let _ = worker_stop.wait_for(|stop| *stop).await;
            },
        );
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: draining running jobs");
            let _ = stop_tx.send(true);
        });
        let result = workers.await;
        alive.store(false, std::sync::atomic::Ordering::SeqCst);
        sampler.abort();
        // Best effort and short: an unreachable Redis must not delay the exit (the key
        // expires by itself).
        let forget = self.state.store.forget_process(self.process);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(1), forget).await,
            Ok(Ok(()))
        ) {
            tracing::warn!("could not remove this process's heartbeat; it expires by itself");
        }
        server
            .await
            .context("HTTP server task")?
            .context("HTTP server")?;
        if let Some(internal) = internal_server {
            internal
                .await
                .context("internal HTTP server task")?
                .context("internal HTTP server")?;
        }
        result
    }
}

async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let address = format!("{host}:{port}");
    TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))
}

async fn serve(
    listener: TcpListener,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
}

/// How long a process's heartbeat outlives its last refresh (three sampler ticks).
const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// Samples what this process owns: its heartbeat (every 5 s), the console's throughput
/// (every minute) and the Didit balance (every 5 min). Gauges read from the shared Redis
/// (queue depths and lag, the account pause, the outcome stream's consumer lag) are read
/// when `/metrics` is scraped instead (see [`refresh_shared_gauges`]): an idle process that
/// nobody scrapes sends only its heartbeat.
async fn sample(pipeline: Pipeline, throughput: Arc<Throughput>, process: uuid::Uuid) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        let m = &pipeline.metrics;
        if let Err(e) = pipeline.store.heartbeat(process, HEARTBEAT_TTL).await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
        if ticks % 12 == 0 {
            throughput.sample(m, &QUEUES);
        }
        if ticks % 60 == 0 {
            if let Ok(balance) = pipeline.didit.balance().await {
                if let Ok(value) = balance.balance.trim().parse::<f64>() {
                    m.didit_balance.set(value);
                }
            }
        }
        ticks += 1;
    }
}

/// Shortest time between two reads of the shared gauges, however often `/metrics` is scraped.
const SHARED_GAUGES_MAX_AGE: Duration = Duration::from_secs(5);

/// Reads the gauges every process sees alike from Redis — queue depths and lag, the account
/// pause, the outcome stream's consumer lag — at most once per [`SHARED_GAUGES_MAX_AGE`].
pub async fn refresh_shared_gauges(queue: &Queue, store: &Store, m: &Metrics) {
    if !m.shared_gauges_due(SHARED_GAUGES_MAX_AGE) {
        return;
    }
    for name in QUEUES {
        if let Ok(stats) = queue.stats(name).await {
            m.queue_depth
                .with_label_values(&[name, "ready"])
                .set(stats.ready as f64);
            m.queue_depth
                .with_label_values(&[name, "in_flight"])
                .set(stats.in_flight as f64);
            m.queue_depth
                .with_label_values(&[name, "scheduled"])
                .set(stats.scheduled as f64);
            m.queue_depth
                .with_label_values(&[name, "dead"])
                .set(stats.dead as f64);
            m.queue_lag
                .with_label_values(&[name])
                .set(stats.lag_ms as f64 / 1000.0);
        }
    }
    if let Ok(pause) = store.pause().await {
        for reason in AccountPause::ALL {
            let on = pause == Some(reason);
            m.didit_paused
                .with_label_values(&[reason.as_str()])
                .set(if on { 1.0 } else { 0.0 });
        }
    }
    if let Ok(groups) = store.event_consumer_lag().await {
        for (group, lag) in groups {
            m.events_consumer_lag
                .with_label_values(&[&group])
                .set(lag as f64);
        }
    }
}

/// `<host>-<6 random characters>`: unique per process start, readable in `XINFO CONSUMERS`.
pub fn consumer_name() -> String {
    use rand::Rng;
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kyc-worker".to_owned());
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(6)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect();
    format!("{host}-{suffix}")
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
