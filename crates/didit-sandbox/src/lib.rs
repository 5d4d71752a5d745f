//! A local, in-memory emulator of the Didit v3 API: the demo, the tests and the benchmarks
//! run against it, so none of them needs a Didit account or the network.
//!
//! It is faithful where the fleet depends on Didit's wire behaviour: the same paths (an
//! unslashed path answers 301 to the slashed one, a malformed session id an HTML 404), status
//! codes, Django REST Framework error shapes, `x-api-key` auth (no key 403, a wrong or revoked
//! key 401), v3 decisions whose feature arrays stay `null` until a step produced data,
//! webhooks signed exactly as Didit signs them and retried on Didit's schedule, and per-scope
//! sliding-window rate limits with Didit's 429 headers. Responses are built as JSON here and
//! never from `didit::types`, so tests that check the client against the sandbox are not
//! circular.
//!
//! A session plays a user going through the hosted flow: `Not Started` → `In Progress` at
//! half of `complete_after` → a final status at `complete_after`, chosen by the
//! `sandbox_scenario` of the create request (see [`Scenario`]). Unfinished sessions expire at
//! the workflow's `session_expiration_time`.
//!
//! Three routes exist only in the sandbox and need no API key: `GET /sandbox/stats` (request
//! counts, peak requests per rate-limit window, webhook deliveries), `GET /sandbox/calls`
//! (the latest calls with their arrival times) and `POST /sandbox/control` (revoke the key,
//! zero the credits, change limits and faults, drive a session) — see `docs/sandbox.md`.
//!
//! # Layout
//! - `state`: sessions, workflows, the account and the session lifecycle.
//! - `scenarios`: the decision each scenario produces.
//! - `routes`: the HTTP surface, one handler per Didit endpoint.
//! - `limits`: sliding windows, fault injection and statistics.
//! - `webhooks`: signed deliveries, in order per session, with Didit's retries.
//! - `control`: the sandbox-only control actions.
//! - `contested`: the answers Didit's sources disagree on, each selectable.
//! - `ports`: loopback ports for the processes started beside the sandbox.

#![warn(missing_docs)]

mod contested;
mod control;
mod limits;
pub mod ports;
mod routes;
pub mod scenarios;
mod state;
mod webhooks;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use url::Url;
use uuid::Uuid;

pub use contested::{Contested, DeleteStatus, SameStatus, WrongKeyStatus};
pub use limits::{LimitSpec, RateScope};
pub use scenarios::Scenario;

/// The one workflow every sandbox starts with; `config/default.toml` names it, so the demo
/// needs no setup.
pub const WORKFLOW_ID: Uuid = Uuid::from_u128(0x5f0c9a52_2b8e_4d3c_9a61_7e4b8d2c1f30);

/// The API key the sandbox accepts unless told otherwise.
pub const DEFAULT_API_KEY: &str = "sandbox";

/// The secret deliveries to `--webhook-url` are signed with unless told otherwise.
pub const DEFAULT_WEBHOOK_SECRET: &str = "sandbox-webhook-secret";

/// The port `config/default.toml` expects the sandbox on.
pub const DEFAULT_PORT: u16 = 8089;

/// The code programmatic registration "e-mails": the sandbox sends no mail, so it is fixed.
pub const EMAIL_CODE: &str = "SBX123";

/// The largest `webhook_retry_scale`: 1000 × 240 s is already days, and a bounded scale
/// keeps the scaled delays far from `Duration`'s overflow.
pub const MAX_RETRY_SCALE: f64 = 1000.0;

/// Everything a sandbox can be told at start; most of it can change later through
/// `POST /sandbox/control`.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The address to listen on (loopback by default).
    pub host: IpAddr,
    /// 0 picks a free port (tests); read it back from [`SandboxHandle::addr`].
    pub port: u16,
    /// The only `x-api-key` accepted; any other gets 401 (or 403, see [`Contested`]).
    pub api_key: String,
    /// Where every status change is delivered, signed with `webhook_secret`.
    pub webhook_url: Option<Url>,
    /// The destination secret deliveries are signed with, as Didit signs them.
    pub webhook_secret: String,
    /// Time from creation (or resubmission) to the final status; `In Progress` comes at half.
    pub complete_after: Duration,
    /// Added to every API response.
    pub latency: Duration,
    /// Share of API calls (0.0–1.0) answered with a 500.
    pub error_rate: f64,
    /// Overrides of Didit's rate limits, e.g. `get=60/1s`.
    pub limits: Vec<LimitSpec>,
    /// The smallest `session_expiration_time` a workflow may have (Didit: 3600 s).
    pub min_expiration: Duration,
    /// Multiplies Didit's webhook retry delays (60 s, then 240 s); 0.001 makes them 60/240 ms.
    pub webhook_retry_scale: f64,
    /// Didit gives up on a delivery after 5 s.
    pub webhook_timeout: Duration,
    /// Credit balance in USD at start.
    pub balance: f64,
    /// Which branch to serve where Didit's sources disagree (401 or 403 for a wrong key,
    /// same-status update, delete answer).
    pub contested: Contested,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            api_key: DEFAULT_API_KEY.to_owned(),
            webhook_url: None,
            webhook_secret: DEFAULT_WEBHOOK_SECRET.to_owned(),
            complete_after: Duration::from_secs(2),
            latency: Duration::ZERO,
            error_rate: 0.0,
            limits: Vec::new(),
            min_expiration: Duration::from_secs(3600),
            webhook_retry_scale: 1.0,
            webhook_timeout: Duration::from_secs(5),
            balance: 1000.0,
            contested: Contested::default(),
        }
    }
}

impl SandboxConfig {
    /// A config for tests: a free port, sessions final after `complete_after`.
    pub fn for_tests(complete_after: Duration) -> Self {
        Self {
            port: 0,
            complete_after,
            webhook_retry_scale: 0.001,
            ..Self::default()
        }
    }
}

/// Starts sandboxes.
pub struct Sandbox;

impl Sandbox {
    /// Binds the port and serves until the returned handle is stopped or dropped.
    pub async fn start(config: SandboxConfig) -> anyhow::Result<SandboxHandle> {
        if !(0.0..=1.0).contains(&config.error_rate) {
            anyhow::bail!(
                "error rate must be between 0 and 1, got {}",
                config.error_rate
            );
        }
        if !(0.0..=MAX_RETRY_SCALE).contains(&config.webhook_retry_scale) {
            anyhow::bail!(
                "webhook retry scale must be between 0 and {MAX_RETRY_SCALE}, got {}",
                config.webhook_retry_scale
            );
        }
        let listener = TcpListener::bind(SocketAddr::new(config.host, config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let addr = listener.local_addr().context("no local address")?;
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(state::Shared::new(&config, events, base_url(addr))?);

        let dispatcher = tokio::spawn(webhooks::dispatch(
            receiver,
            webhooks::Delivery::new(&config, shared.webhook_stats.clone())?,
        ));
        let ticker = tokio::spawn(state::drive_sessions(shared.clone()));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = routes::router(shared);
        let server = tokio::spawn(async move {
            let shutdown = async {
                // Either an explicit stop or the handle being dropped ends the server.
                let _ = stop_rx.await;
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        });
        Ok(SandboxHandle {
            addr,
            stop: Some(stop_tx),
            tasks: vec![dispatcher, ticker],
            server: Some(server),
        })
    }
}

/// `http://ADDRESS:PORT/` of a listening address (loopback for an unspecified one).
fn base_url(addr: SocketAddr) -> Url {
    let host = if addr.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    Url::parse(&format!("http://{}", SocketAddr::new(host, addr.port())))
        .expect("an IP address and a port always form a valid URL")
}

/// A running sandbox. Dropping it stops the server and every background task.
pub struct SandboxHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl SandboxHandle {
    /// The address the sandbox listens on, with the port actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, what `KYC__DIDIT__BASE_URL` should be.
    pub fn base_url(&self) -> Url {
        base_url(self.addr)
    }

    /// The registration host, what `KYC__DIDIT__AUTH_BASE_URL` should be.
    pub fn auth_base_url(&self) -> Url {
        self.base_url()
            .join("/auth/v2")
            .expect("a fixed path joins onto an http URL")
    }

    /// Stops the server and waits until it no longer accepts connections.
    pub async fn stop(mut self) {
        self.shutdown();
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Serves until ctrl-c or SIGTERM (the CLI).
    pub async fn serve_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await?;
        self.stop().await;
        Ok(())
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// The README's code blocks, compiled as doctests so the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for ctrl-c"),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for ctrl-c")
    }
}
