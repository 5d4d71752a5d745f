//! kyc-worker: a fleet of workers that runs KYC identity verification through the Didit API
//! as durable jobs in Redis.
//!
//! # Layout
//! - [`settings`]: layered, validated settings (`config/default.toml`, `config/{KYC_ENV}.toml`,
//!   `KYC__SECTION__KEY`).
//! - [`telemetry`]: the tracing subscriber.
//! - [`domain`]: statuses and other types that do no I/O.
//! - [`didit`]: the only code that speaks HTTP to Didit, and webhook signatures.
//! - [`queue`]: durable jobs in Redis under apalis workers.
//! - [`rules`]: the operator's auto-decision rules (CEL) over Didit's decisions.
//! - [`sandbox`]: a local emulator of the Didit endpoints the fleet uses.
//! - [`console`]: the operator console under `/console/`.
//! - [`cli`]: the `kyc-worker` command line.

pub mod bench;
pub mod cli;
pub mod console;
pub mod didit;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod producer;
pub mod queue;
pub mod ratelimit;
pub mod rules;
pub mod sandbox;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
