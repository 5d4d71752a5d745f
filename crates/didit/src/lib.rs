//! A Rust client for the Didit identity verification API, v3.
//!
//! Didit runs the hosted verification flow (document, liveness, face match, AML…); a service
//! creates a session, sends the person to its `url`, and learns the decision from a signed
//! webhook or by reading it. This crate is everything needed to speak that API and nothing
//! else: no queue, no storage, no runtime of its own.
//!
//! - [`DiditClient`]: one typed method per call, each with a [`ClientConfig`] timeout.
//! - [`DiditError`]: every failure, classified ([`DiditError::class`]) so a caller knows
//!   whether to retry, wait for `Retry-After`, pause the whole account, or give up.
//! - [`types`]: the request and response bodies, faithful to Didit's OpenAPI document (v3
//!   decision arrays are `null` until a step produced data).
//! - [`webhook`]: verifying (and, for emulators, producing) Didit's webhook signatures.
//! - [`SessionStatus`]: the ten statuses of a session, spelled as Didit spells them.
//!
//! The crate's README covers installing it, error handling and what it leaves to the caller;
//! `examples/create_session.rs` and `examples/verify_webhook.rs` run against the local sandbox
//! and on their own.
//!
//! ```no_run
//! # async fn run() -> Result<(), didit::DiditError> {
//! use didit::{types::CreateSessionRequest, ClientConfig, DiditClient};
//!
//! let config = ClientConfig::new(
//!     "https://verification.didit.me".parse().expect("url"),
//!     "https://apx.didit.me/auth/v2".parse().expect("url"),
//!     "my-api-key".to_owned().into(),
//! );
//! let client = DiditClient::new(&config)?;
//! let workflow_id = "5f0c9a52-2b8e-4d3c-9a61-7e4b8d2c1f30".parse().expect("uuid");
//! let session = client
//!     .create_session(&CreateSessionRequest {
//!         workflow_id,
//!         vendor_data: Some("user-42".to_owned()),
//!         ..CreateSessionRequest::default()
//!     })
//!     .await?;
//! println!("send the person to {}", session.url);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod client;
mod error;
mod redact;
mod status;
pub mod types;
pub mod webhook;

pub use client::{ClientConfig, DiditClient, Endpoint, RequestObserver, Scope};
pub use error::{
    parse_retry_after, AccountPause, DiditError, DiditErrorKind, ErrorBody, ErrorClass,
    MAX_RETRY_AFTER,
};
pub use redact::redact_values;
pub use status::SessionStatus;

/// The README's code blocks, compiled (and run where they need no network) as doctests, so
/// the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
