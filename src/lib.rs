//! kyc-worker: a fleet of workers that runs KYC identity verification through the Didit API
//! as durable jobs in Redis.
//!
//! The modules form one-way layers: each may use the ones above it, never one below.
//! The Didit SDK (`didit`) and the emulator (`didit-sandbox`) are crates of their own.
//!
//! # Domain: what a verification is, no I/O
//! - [`domain`]: request ids, statuses, outcome events, the poll schedule.
//! - [`rules`]: the operator's auto-decision rules (CEL) over Didit's decisions.
//!
//! # Wiring every layer shares
//! - [`settings`]: layered, validated settings (`config/default.toml`,
//!   `config/{KYC_ENV}.toml`, `KYC__SECTION__KEY`).
//! - `telemetry`: the tracing subscriber.
//! - `metrics`: the Prometheus registry behind `/metrics`.
//!
//! # Adapters: the only code that knows Redis
//! - [`queue`]: durable jobs in Redis under apalis workers.
//! - [`store`]: what the fleet remembers about requests and sessions.
//! - `ratelimit`: the fleet-wide Didit budget.
//!
//! # Application: the pipeline
//! - [`jobs`]: start, poll, decide, operator actions, erasure, the sweep.
//! - [`producer`]: how services ask for a verification: from Rust, or through the intake
//!   stream from any language.
//!
//! # Surfaces
//! - `state`: what the HTTP handlers and the console share.
//! - `http`: webhooks in, verification requests in, status and health out.
//! - `console`: the operator console under `/console/`.
//! - [`startup`]: `kyc-worker run`: connections, HTTP servers and workers, and shutdown.
//! - [`cli`]: the `kyc-worker` command line.

pub mod cli;
pub(crate) mod console;
pub mod domain;
pub(crate) mod http;
pub mod jobs;
pub(crate) mod metrics;
pub mod producer;
pub mod queue;
pub(crate) mod ratelimit;
pub mod rules;
pub mod settings;
pub mod startup;
pub(crate) mod state;
pub mod store;
pub(crate) mod telemetry;
