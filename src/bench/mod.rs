//! Benchmarks behind the README's performance numbers: `bench queue` (the queue alone, in
//! `queue::bench`), `bench lifecycle` (the whole fleet against the sandbox) and the merged
//! report with the targets.

pub mod lifecycle;
pub mod processes;
pub mod profile;
pub mod report;
pub mod server;
