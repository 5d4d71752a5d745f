//! Domain types: what a verification is, independent of Redis, HTTP or Didit's wire format.
//! Nothing here does I/O.

mod status;

pub use status::SessionStatus;
