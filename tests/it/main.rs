//! The one integration-test binary: real `redis-server` processes on free ports, the Didit
//! sandbox over real HTTP, the `kyc-worker` binary as a child process where it matters.

mod branches;
mod chaos;
mod cli;
mod compliance;
mod console;
mod edges;
mod events;
mod helpers;
mod hostile;
mod layers;
mod observability;
mod openapi;
mod pipeline;
mod producers;
mod queue;
mod quickstart;
mod redis_harness;
mod redis_topologies;
mod rules;
mod sandbox;
mod sandbox_schema;
mod secrets;
mod subscribers;
mod traces;
mod upgrade;
