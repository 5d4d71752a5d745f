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
    http::{internal_router, public_router, AppState},
    jobs::{run_workers, Pipeline, QUEUES},
    metrics::Metrics,
    producer::{read_intake, Producer},
    queue::{ConnectError, Connector, Queue, RedisConnection},
    ratelimit::RateLimiter,
    rules::RuleSet,
    settings::Settings,
    state::{ConsoleState, Throughput},
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
    /// Makes every Redis connection; waited on before the workers start.
    connector: Connector,
    /// The connection the Redis watch pings and reads `INFO memory` on.
    watch: RedisConnection,
}

impl Application {
    /// Prepares the Redis connections and binds the HTTP ports (0 picks a free one).
    ///
    /// A Redis setting that cannot work (a TLS file, credentials, the master's name) is a
    /// [`crate::settings::SettingsError`]; an unreachable Redis is not an error here: the
    /// process starts, `/readyz` is red, and [`Application::run_until`] waits for Redis.
    pub async fn build(settings: Settings, rules: RuleSet) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let metrics = Metrics::new(&QUEUES);
        let connector = Connector::new(&settings.redis)?;
        match connector.check().await {
            Ok(()) => {}
            Err(ConnectError::Setting(e)) => return Err(e.into()),
            Err(ConnectError::Unreachable { hosts, source }) => {
                tracing::warn!(%hosts, error = %source, "redis unreachable at start; waiting for it (readiness is red until it answers)");
            }
        }
        let queue = Queue::new(
            connector.connect(),
            &settings.redis.prefix,
            settings.queue.clone(),
        )
        .with_metrics(metrics.clone());
        let conn = connector.connect();
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
            trusted_proxies: settings.http.trusted_proxies.clone(),
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
        metrics
            .webhooks_expected
            .set(i64::from(settings.didit.webhooks));
        let state = AppState {
            producer: Producer::new(
                queue.clone(),
                store.clone(),
                crate::producer::admission(&settings),
            )
            .with_limits(settings.intake),
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
            watch: connector.connect(),
            connector,
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
        let internal_port = self
            .internal
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
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
        let watch = tokio::spawn(watch_redis(
            self.connector.clone(),
            self.watch,
            self.state.metrics.clone(),
        ));
        let stop_tx = Arc::new(stop_tx);
        let signal_stop = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: draining running jobs");
            let _ = signal_stop.send(true);
        });
        // Workers start once Redis answers; meanwhile HTTP serves a red `/readyz`.
        let mut waiting_stop = stop_rx.clone();
        let reachable = tokio::select! {
            reachable = self.connector.wait_until_reachable() => Some(reachable),
            _ = waiting_stop.wait_for(|stop| *stop) => None,
        };
        if !matches!(reachable, Some(Ok(()))) {
            // Stopped before Redis answered, or a Redis setting cannot work: no workers ran.
            watch.abort();
            let _ = stop_tx.send(true);
            let _ = server.await;
            if let Some(internal) = internal_server {
                let _ = internal.await;
            }
            return match reachable {
                Some(Err(setting)) => Err(setting.into()),
                _ => Ok(()),
            };
        }
        let sampler = tokio::spawn(sample(
            self.pipeline.clone(),
            self.state.console.throughput.clone(),
            self.process,
        ));
        let started = Started {
            host: &settings.http.host,
            public_port: self.port,
            internal_port,
            console: settings.http.console,
            webhooks: settings.didit.webhooks,
            safety_net: settings.poll.with_webhooks.initial,
            polling: settings.poll.polling_only.initial,
        };
        tracing::info!(
            public_port = self.port,
            internal_port = %started.internal_port(),
            console = %started.console_url(),
            webhooks = %started.webhook_mode(),
            consumer = %self.consumer,
            "kyc-worker running"
        );
        // The intake stream feeds the start queue; it stops with the workers.
        let intake = tokio::spawn(read_intake(
            self.state.producer.clone(),
            self.pipeline.metrics.clone(),
            self.pipeline.queue.connection().connector().clone(),
            settings.redis.prefix.clone(),
            format!("{}-intake", self.consumer),
            settings.queue.reclaim_after,
            settings.queue.fetch_block,
        ));
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
        let result = workers.await;
        alive.store(false, std::sync::atomic::Ordering::SeqCst);
        intake.abort();
        sampler.abort();
        watch.abort();
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
    // The peer's address reaches handlers (the console's login throttle).
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
}

/// How often the Redis watch pings, and how often it reads the eviction policy.
const REDIS_PING_EVERY: Duration = Duration::from_secs(5);
const EVICTION_CHECK_EVERY: Duration = Duration::from_secs(300);

/// Watches Redis for the operator: a warning naming the hosts (never a password) every 30 s
/// while it does not answer, and its eviction policy at start and every 5 minutes. Anything
/// but `noeviction` lets Redis drop keys under memory pressure — jobs, records, markers — so
/// it is a loud warning and `kyc_redis_eviction_policy_ok` 0 (alerted).
async fn watch_redis(connector: Connector, mut conn: RedisConnection, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(REDIS_PING_EVERY);
    let mut down_since_warning: Option<tokio::time::Instant> = None;
    let mut policy_read_at: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        if let Err(e) = ping {
            if down_since_warning
                .is_none_or(|at| at.elapsed() >= crate::queue::OUTAGE_WARNING_EVERY)
            {
                tracing::warn!(hosts = %connector.hosts(), error = %e, "redis unreachable; retrying (readiness is red)");
                down_since_warning = Some(tokio::time::Instant::now());
            }
            continue;
        }
        if down_since_warning.take().is_some() {
            tracing::info!(hosts = %connector.hosts(), "redis answers again");
        }
        if policy_read_at.is_some_and(|at| at.elapsed() < EVICTION_CHECK_EVERY) {
            continue;
        }
        match crate::queue::eviction_policy(&mut conn).await {
            Ok(Some(policy)) => {
                policy_read_at = Some(tokio::time::Instant::now());
                let ok = policy == "noeviction";
                metrics.redis_eviction_policy_ok.set(i64::from(ok));
                if !ok {
                    tracing::warn!(
                        maxmemory_policy = %policy,
                        "REDIS MAY EVICT THE FLEET'S KEYS: maxmemory-policy is not noeviction, so under memory pressure Redis deletes jobs, records and markers; set it to noeviction (docs/redis.md)"
                    );
                }
            }
            Ok(None) => {
                policy_read_at = Some(tokio::time::Instant::now());
                tracing::warn!(
                    "INFO memory has no maxmemory_policy; the eviction policy is unknown"
                );
            }
            Err(e) => tracing::debug!(error = %e, "could not read INFO memory"),
        }
    }
}

/// What the start line says about where the process listens and how it learns decisions.
struct Started<'a> {
    host: &'a str,
    public_port: u16,
    internal_port: Option<u16>,
    console: bool,
    webhooks: bool,
    safety_net: Duration,
    polling: Duration,
}

impl Started<'_> {
    fn internal_port(&self) -> String {
        match self.internal_port {
            Some(port) => port.to_string(),
            None => "none (metrics and console on the public port)".to_owned(),
        }
    }

    /// Where a person on this machine opens the console.
    fn console_url(&self) -> String {
        if !self.console {
            return "off".to_owned();
        }
        let host = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => "localhost".to_owned(),
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.host.to_owned(),
        };
        let port = self.internal_port.unwrap_or(self.public_port);
        format!("http://{host}:{port}/console/")
    }

    fn webhook_mode(&self) -> String {
        if self.webhooks {
            format!(
                "on: decisions arrive at POST /webhooks/didit; the first safety-net poll comes \
                 after {}",
                span(self.safety_net)
            )
        } else {
            format!(
                "off: decisions are polled, first after {}",
                span(self.polling)
            )
        }
    }
}

/// A duration as settings write it: `15m`, `20s`, `1h`, `1500ms`.
fn span(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// How long sessions may wait for a webhook before the process warns: ten minutes, or the
/// first safety-net poll's delay when that is shorter (the poll decides then anyway).
const WEBHOOK_SILENCE: Duration = Duration::from_secs(600);

/// Notices the misconfiguration where webhooks are expected (`didit.webhooks`) but none
/// arrives — no destination at Didit, the wrong URL, a sandbox without `--webhook-url` —
/// which otherwise only shows as decisions taking as long as the first safety-net poll.
/// Fed this process's counters: sessions it created, the last webhook it verified.
#[derive(Debug)]
struct WebhookWatch {
    silence: Duration,
    created_seen: u64,
    last_webhook_seen: f64,
    /// When the first session created since the last webhook was seen.
    waiting_since: Option<tokio::time::Instant>,
    warned: bool,
}

impl WebhookWatch {
    fn new(silence: Duration) -> Self {
        Self {
            silence,
            created_seen: 0,
            last_webhook_seen: 0.0,
            waiting_since: None,
            warned: false,
        }
    }

    /// Takes one look; returns how long sessions have waited when it is time to warn (once
    /// per silence: a webhook re-arms it).
    fn observe(
        &mut self,
        now: tokio::time::Instant,
        sessions_created: u64,
        last_webhook: f64,
    ) -> Option<Duration> {
        if last_webhook != self.last_webhook_seen {
            self.last_webhook_seen = last_webhook;
            self.waiting_since = None;
            self.warned = false;
        }
        if sessions_created > self.created_seen {
            self.created_seen = sessions_created;
            self.waiting_since.get_or_insert(now);
        }
        let waited = now.duration_since(self.waiting_since?);
        if self.warned || waited < self.silence {
            return None;
        }
        self.warned = true;
        Some(waited)
    }
}

/// How long a process's heartbeat outlives its last refresh (three sampler ticks).
const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// Samples what this process owns: its heartbeat (every 5 s), the console's throughput
/// (every minute) and the Didit balance (every 5 min). Gauges read from the shared Redis
/// (queue depths and lag, the account pause, the outcome stream's consumer lag) are read
/// when `/metrics` is scraped instead (see `AppState::refresh_shared_gauges`): an idle process that
/// nobody scrapes sends only its heartbeat.
async fn sample(pipeline: Pipeline, throughput: Arc<Throughput>, process: uuid::Uuid) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut ticks: u64 = 0;
    let settings = pipeline.settings.clone();
    let mut webhook_watch = settings
        .didit
        .webhooks
        .then(|| WebhookWatch::new(WEBHOOK_SILENCE.min(settings.poll.with_webhooks.initial)));
    loop {
        tick.tick().await;
        let m = &pipeline.metrics;
        if let Some(watch) = webhook_watch.as_mut() {
            let now = tokio::time::Instant::now();
            if let Some(waited) =
                watch.observe(now, m.sessions_created.get(), m.webhook_last_received.get())
            {
                tracing::warn!(
                    waited_s = waited.as_secs(),
                    first_poll_after = %span(settings.poll.with_webhooks.initial),
                    "didit.webhooks is on but no Didit webhook reached this process since it \
                     created sessions: decisions wait for the safety-net poll. Register a \
                     webhook destination for POST /webhooks/didit (kyc-worker didit webhook; \
                     the sandbox: --webhook-url), or set KYC__DIDIT__WEBHOOKS=false to poll"
                );
            }
        }
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

/// `<host>-<6 random characters>`: unique per process start, readable in `XINFO CONSUMERS`.
pub(crate) fn consumer_name() -> String {
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
pub(crate) async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SILENCE: Duration = Duration::from_secs(600);

    #[test]
    fn the_watch_warns_once_when_sessions_wait_for_a_webhook_that_never_comes() {
        let start = tokio::time::Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut watch = WebhookWatch::new(SILENCE);
        // Nothing created: nothing waits, however long.
        assert_eq!(watch.observe(at(0), 0, 0.0), None);
        assert_eq!(watch.observe(at(3600), 0, 0.0), None);
        // A session at 3600 s, no webhook: a warning ten minutes later, once.
        assert_eq!(watch.observe(at(3600), 1, 0.0), None);
        assert_eq!(watch.observe(at(4100), 2, 0.0), None);
        assert_eq!(watch.observe(at(4200), 2, 0.0), Some(SILENCE));
        assert_eq!(watch.observe(at(4300), 3, 0.0), None);
        // A webhook re-arms it; sessions after it wait afresh.
        assert_eq!(watch.observe(at(4400), 3, 1_700_000_000.0), None);
        assert_eq!(watch.observe(at(4500), 4, 1_700_000_000.0), None);
        assert_eq!(watch.observe(at(5000), 4, 1_700_000_000.0), None);
        assert_eq!(watch.observe(at(5100), 4, 1_700_000_000.0), Some(SILENCE));
    }

    #[test]
    fn webhooks_that_keep_coming_keep_the_watch_quiet() {
        let start = tokio::time::Instant::now();
        let mut watch = WebhookWatch::new(SILENCE);
        for minute in 0..120u64 {
            let now = start + Duration::from_secs(minute * 60);
            let last_webhook = 1_700_000_000.0 + (minute / 5 * 300) as f64;
            assert_eq!(watch.observe(now, minute, last_webhook), None, "{minute}");
        }
    }

    #[test]
    fn the_start_line_names_ports_console_and_webhook_mode() {
        let started = Started {
            host: "0.0.0.0",
            public_port: 8080,
            internal_port: Some(9090),
            console: true,
            webhooks: true,
            safety_net: Duration::from_secs(900),
            polling: Duration::from_secs(5),
        };
        assert_eq!(started.internal_port(), "9090");
        assert_eq!(started.console_url(), "http://localhost:9090/console/");
        assert!(started.webhook_mode().contains("after 15m"));
        let single = Started {
            host: "127.0.0.1",
            internal_port: None,
            console: false,
            webhooks: false,
            ..started
        };
        assert!(single.internal_port().starts_with("none"));
        assert_eq!(single.console_url(), "off");
        assert_eq!(
            single.webhook_mode(),
            "off: decisions are polled, first after 5s"
        );
        assert_eq!(span(Duration::from_millis(1500)), "1500ms");
        assert_eq!(span(Duration::from_secs(3600)), "1h");
    }
}
