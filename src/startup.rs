//! Wiring for `kyc-worker run`: settings → connections → HTTP servers + workers, and the
//! graceful shutdown that ties them together.

use std::{
    future::Future,
    sync::{atomic::AtomicBool, Arc},
};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    didit::{webhook::WebhookVerifier, DiditClient},
    http::{public_router, AppState},
    jobs::{run_workers, Pipeline},
    producer::Producer,
    queue::Queue,
    ratelimit::RateLimiter,
    settings::Settings,
    store::Store,
};

/// A built, not yet running, fleet process.
pub struct Application {
    listener: TcpListener,
    port: u16,
    pipeline: Pipeline,
    state: AppState,
    consumer: String,
}

impl Application {
    /// Connects to Redis and binds the HTTP port (0 picks a free one).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let queue = Queue::connect(
            settings.redis.url(),
            &settings.redis.prefix,
            settings.queue.clone(),
        )
        .await
        .context("cannot connect to Redis")?;
        let conn = crate::queue::connect(settings.redis.url())
            .await
            .context("cannot connect to Redis")?;
        let store = Store::new(
            conn.clone(),
            &settings.redis.prefix,
            settings.events.clone(),
        );
        let limiter = RateLimiter::new(conn, &settings.redis.prefix, settings.ratelimit.clone());
        let didit = DiditClient::new(&settings.didit)?;
        let pipeline = Pipeline::new(
            didit,
            queue.clone(),
            store.clone(),
            limiter,
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
        };
        let address = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            port,
            pipeline,
            state,
            consumer: consumer_name(),
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
        let router = public_router(self.state);
        let mut http_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            axum::serve(self.listener, router)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|stop| *stop).await;
                })
                .await
        });
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
        server
            .await
            .context("HTTP server task")?
            .context("HTTP server")?;
        result
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
