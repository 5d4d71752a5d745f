//! Everything that speaks Didit: the HTTP client, the wire types, the error classification
//! and webhook signatures. This is the only module that knows reqwest; the rest of the fleet
//! sees typed calls and a [`DiditError`] that says whether to retry, pause or give up.

mod client;
mod error;
pub mod types;
pub mod webhook;

pub use client::{DiditClient, Endpoint, Scope};
pub use error::{
    parse_retry_after, AccountPause, DiditError, DiditErrorKind, ErrorBody, ErrorClass,
};
