//! `--profile`: a CPU profile of one lifecycle run, sampled in-process with pprof-rs
//! (`SIGPROF`), written as `flamegraph.svg` and summed into the costs `report.md` lists.
//!
//! Two views of the same samples:
//! - **self**: each sample goes to the innermost frame that belongs to a known group (JSON,
//!   HTTP, the Redis client, the tokio runtime, …), so the shares add up to at most 100 %;
//! - **inclusive, our code**: each sample counts once for every `kyc_worker::<module>` on
//!   its stack (a job handler includes the Redis and JSON work it calls).
//!
//! Samples whose program counter is in libc, libgcc, pthread or the vDSO are dropped (the
//! unwinder is not safe to enter there from a signal handler), so syscalls and malloc are
//! missing from both views; `coverage` says how much of the process's CPU time the kept
//! samples stand for.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Samples per second of CPU time: enough for a few thousand samples in one run, few
/// enough that unwinding stays around 1 % of the CPU.
const FREQUENCY: i32 = 199;

/// Library groups for the self view: (name, what it is in this fleet, symbol prefixes).
const GROUPS: &[(&str, &str, &[&str])] = &[
    (
        "JSON (serde_json)",
        "job payloads, Didit request and response bodies, webhook bodies, event data",
        &["serde_json::", "<serde_json::"],
    ),
    (
        "HTTP (hyper, reqwest, axum, h2, tower)",
        "the Didit client, the webhook and API routes, and the sandbox's HTTP server",
        &[
            "hyper::",
            "<hyper::",
            "hyper_util::",
            "<hyper_util::",
            "reqwest::",
            "<reqwest::",
            "axum::",
            "<axum::",
            "h2::",
            "<h2::",
            "httparse::",
            "http::",
            "<http::",
            "tower::",
            "<tower::",
        ],
    ),
    (
        "TLS (rustls, ring)",
        "none expected: the sandbox is plain HTTP",
        &["rustls::", "<rustls::", "ring::", "aws_lc"],
    ),
    (
        "HMAC-SHA256 (hmac, sha2)",
        "webhook signatures: the sandbox signs each delivery three ways, the fleet verifies",
        &[
            "hmac::",
            "<hmac::",
            "sha2::",
            "<sha2::",
            "digest::",
            "<digest::",
        ],
    ),
    (
        "Redis client (redis)",
        "encoding commands, parsing replies (with `combine`), the connection manager",
        &["redis::", "<redis::", "combine::", "<combine::"],
    ),
    (
        "tokio runtime",
        "task scheduling, the I/O and timer drivers, channels and locks between tasks",
        &["tokio::", "<tokio::", "mio::", "<mio::"],
    ),
    (
        "apalis worker",
        "the worker loop around each job: polling the backend, tower layers, acks",
        &["apalis", "<apalis"],
    ),
    (
        "tracing",
        "spans and events (the fleet logs at error level in the bench)",
        &["tracing", "<tracing"],
    ),
    (
        "prometheus metrics",
        "counters and histograms updated per job and per Didit call",
        &["prometheus::", "<prometheus::"],
    ),
    (
        "uuid, time",
        "ids (v4, v5 event ids) and RFC 3339 timestamps",
        &["uuid::", "<uuid::", "time::", "<time::"],
    ),
    (
        "formatting (core::fmt)",
        "format!/to_string: Redis keys, ids, numbers",
        &["core::fmt::", "<core::fmt::", "alloc::fmt::"],
    ),
    (
        "allocation",
        "the Rust allocator entry points (malloc itself is in libc, not sampled)",
        &[
            "__rust_alloc",
            "__rust_dealloc",
            "__rust_realloc",
            "alloc::alloc::",
        ],
    ),
    (
        "the sandbox (bench harness)",
        "the in-process Didit stand-in's own logic; not a cost of the fleet",
        &["didit_sandbox::", "<didit_sandbox::"],
    ),
    (
        "our code (kyc_worker)",
        "the pipeline's own logic outside the libraries above",
        &["kyc_worker::", "<kyc_worker::"],
    ),
];

/// What each module of ours does, for the inclusive view.
const MODULES: &[(&str, &str)] = &[
    (
        "bench",
        "the load generator and the event watcher (bench harness)",
    ),
    ("cli", "the command line"),
    (
        "didit",
        "the Didit client: requests, responses, rate-limit bookkeeping",
    ),
    ("domain", "parsed types: statuses, schedules, requests"),
    (
        "http",
        "the public and internal routes: webhooks, API, metrics",
    ),
    ("jobs", "the job handlers: start, poll/decide, publish"),
    ("metrics", "Prometheus registration and updates"),
    ("producer", "start requests into the queue"),
    (
        "queue",
        "our Redis queue backend: fetch, ack, schedule, maintenance",
    ),
    ("ratelimit", "the fleet-wide Didit rate limiter in Redis"),
    ("rules", "the CEL auto-decision rules"),
    ("sandbox", "the in-process Didit stand-in (bench harness)"),
    (
        "startup",
        "`Application::run_until`, which polls the worker monitor: every job runs under it",
    ),
    (
        "store",
        "session and request records, events, webhook dedupe",
    ),
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cost {
    pub name: String,
    pub share: f64,
    pub what: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProfileSummary {
    /// Which run was sampled.
    pub run: String,
    pub samples: u64,
    pub frequency_hz: i32,
    /// Kept samples / (the process's CPU seconds over the run × frequency).
    pub coverage: f64,
    /// Self view, largest first.
    pub by_group: Vec<Cost>,
    /// Inclusive view of `kyc_worker::<module>`, largest first.
    pub by_module: Vec<Cost>,
}

/// A running sampler; [`Profiler::finish`] writes the flame graph and sums the samples.
pub struct Profiler {
    guard: pprof::ProfilerGuard<'static>,
    cpu_before: Option<f64>,
}

impl Profiler {
    pub fn start() -> anyhow::Result<Self> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .context("cannot start the CPU profiler")?;
        Ok(Self {
            guard,
            cpu_before: crate::server::process_cpu_seconds(),
        })
    }

    pub fn finish(self, svg: &Path, run: &str) -> anyhow::Result<ProfileSummary> {
        let cpu = crate::server::process_cpu_seconds()
            .zip(self.cpu_before)
            .map(|(after, before)| after - before);
        let report = self
            .guard
            .report()
            .build()
            .context("cannot build the profile")?;
        drop(self.guard);
        if let Some(dir) = svg.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = std::fs::File::create(svg)
            .with_context(|| format!("cannot create {}", svg.display()))?;
        report
            .flamegraph(std::io::BufWriter::new(file))
            .context("cannot write the flame graph")?;
        let stacks: Vec<(Vec<String>, u64)> = report
            .data
            .iter()
            .map(|(frames, count)| {
                // Innermost first: frames[0] is the leaf, and within a frame the inlined
                // callee comes before its caller.
                let names = frames
                    .frames
                    .iter()
                    .flat_map(|frame| {
                        frame
                            .iter()
                            .map(|symbol| qualified(&symbol.name(), &symbol.filename()))
                    })
                    .collect();
                (names, u64::try_from(*count).unwrap_or(0))
            })
            .collect();
        let samples: u64 = stacks.iter().map(|(_, n)| n).sum();
        Ok(ProfileSummary {
            run: run.to_owned(),
            samples,
            frequency_hz: FREQUENCY,
            coverage: cpu.map_or(0.0, |cpu| {
                samples as f64 / (cpu * f64::from(FREQUENCY)).max(1.0)
            }),
            by_group: by_group(&stacks),
            by_module: by_module(&stacks),
        })
    }
}

/// The symbol's name prefixed with the module path its source file gives: inlined frames
/// carry only a short name (`deserialize<…>`) in the line tables, their file says whose
/// code it is. `…/registry/src/<index>/serde_json-1.0.1/src/de.rs` → `serde_json::de::`,
/// `…/library/core/src/fmt/mod.rs` → `core::fmt::mod::`, `<this crate>/src/jobs/start.rs` →
/// `kyc_worker::jobs::start::`; other files leave the name as it is.
fn qualified(name: &str, file: &str) -> String {
    let module = |path: &str| {
        path.trim_end_matches(".rs")
            .split('/')
            .filter(|s| *s != "src")
            .collect::<Vec<_>>()
            .join("::")
    };
    let ours = file
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .map(|rest| rest.trim_start_matches('/'))
        .unwrap_or(file);
    let prefix = if let Some((_, rest)) = file.split_once("/registry/src/") {
        // <index>/<crate>-<version>/<path>
        let mut parts = rest.splitn(3, '/').skip(1);
        let krate = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let bytes = krate.as_bytes();
        let end = (1..bytes.len())
            .find(|&i| bytes[i - 1] == b'-' && bytes[i].is_ascii_digit())
            .map_or(krate.len(), |i| i - 1);
        Some(format!(
            "{}::{}",
            krate[..end].replace('-', "_"),
            module(path)
        ))
    } else if let Some((_, rest)) = file.split_once("/library/") {
        Some(module(rest))
    } else {
        ours.strip_prefix("src/")
            .map(|path| format!("kyc_worker::{}", module(path)))
    };
    match prefix {
        Some(prefix) if !name.starts_with(&prefix) => format!("{prefix}::{name}"),
        _ => name.to_owned(),
    }
}

fn group_of(symbol: &str) -> Option<usize> {
    GROUPS
        .iter()
        .position(|(_, _, prefixes)| prefixes.iter().any(|prefix| symbol.starts_with(prefix)))
}

/// The self view: each stack to the group of its innermost known frame.
fn by_group(stacks: &[(Vec<String>, u64)]) -> Vec<Cost> {
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let mut counts = vec![0u64; GROUPS.len()];
    let mut other = 0;
    for (names, n) in stacks {
        match names.iter().find_map(|name| group_of(name)) {
            Some(group) => counts[group] += n,
            None => other += n,
        }
    }
    let mut costs: Vec<Cost> = GROUPS
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|((name, what, _), n)| Cost {
            name: (*name).to_owned(),
            share: n as f64 / total.max(1) as f64,
            what: (*what).to_owned(),
        })
        .collect();
    if other > 0 {
        costs.push(Cost {
            name: "other (std, other crates)".to_owned(),
            share: other as f64 / total.max(1) as f64,
            what: "memcpy, hashing, collections and crates not grouped above".to_owned(),
        });
    }
    costs.sort_by(|a, b| b.share.total_cmp(&a.share));
    costs
}

/// The job handlers, shown one by one in the inclusive view (`jobs::start`, `jobs::poll`, …).
const JOB_MODULES: &[&str] = &[
    "context", "decide", "erase", "intake", "poll", "start", "sweep",
];

/// `kyc_worker::store::Store::publish::{{closure}}` → `store`; `<kyc_worker::jobs::start::X as
/// …>::y` → `jobs::start` (the job handlers are told apart).
fn module_of(symbol: &str) -> Option<String> {
    let rest = &symbol[symbol.find("kyc_worker::")? + "kyc_worker::".len()..];
    let mut segments = rest.split("::");
    let first = segments.next().filter(|s| !s.is_empty())?;
    match segments.next() {
        Some(second) if first == "jobs" && JOB_MODULES.contains(&second) => {
            Some(format!("jobs::{second}"))
        }
        _ => Some(first.to_owned()),
    }
}

/// The inclusive view: each stack once for every module of ours on it.
fn by_module(stacks: &[(Vec<String>, u64)]) -> Vec<Cost> {
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (names, n) in stacks {
        let mut seen: Vec<String> = names.iter().filter_map(|s| module_of(s)).collect();
        seen.sort_unstable();
        seen.dedup();
        for module in seen {
            *counts.entry(module).or_default() += n;
        }
    }
    let mut costs: Vec<Cost> = counts
        .into_iter()
        .map(|(module, n)| {
            let top = module.split("::").next().unwrap_or_default();
            Cost {
                what: MODULES
                    .iter()
                    .find(|(name, _)| *name == top)
                    .map_or("", |(_, what)| what)
                    .to_owned(),
                name: module,
                share: n as f64 / total.max(1) as f64,
            }
        })
        .collect();
    costs.sort_by(|a, b| b.share.total_cmp(&a.share));
    costs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(names: &[&str], n: u64) -> (Vec<String>, u64) {
        (names.iter().map(|s| (*s).to_owned()).collect(), n)
    }

    #[test]
    fn modules_are_named_by_their_first_path_segment_and_job_handlers_by_two() {
        assert_eq!(
            module_of("kyc_worker::jobs::start::handle::{{closure}}").as_deref(),
            Some("jobs::start")
        );
        assert_eq!(
            module_of("<kyc_worker::store::Store as core::clone::Clone>::clone").as_deref(),
            Some("store")
        );
        assert_eq!(
            module_of("kyc_worker::jobs::run_workers::{{closure}}").as_deref(),
            Some("jobs")
        );
        assert_eq!(module_of("tokio::runtime::park"), None);
    }

    #[test]
    fn inlined_frames_are_named_by_their_source_file() {
        assert_eq!(
            qualified(
                "deserialize<X>",
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/serde_json-1.0.140/src/de.rs"
            ),
            "serde_json::de::deserialize<X>"
        );
        assert_eq!(
            qualified(
                "spawn",
                "/root/.cargo/registry/src/index.crates.io-1/apalis-core-1.0.0-rc.7/src/lib.rs"
            ),
            "apalis_core::lib::spawn"
        );
        assert_eq!(
            qualified("fmt", "/rustc/abc/library/core/src/fmt/mod.rs"),
            "core::fmt::mod::fmt"
        );
        assert_eq!(
            qualified(
                "handle",
                &format!("{}/src/jobs/start.rs", env!("CARGO_MANIFEST_DIR"))
            ),
            "kyc_worker::jobs::start::handle"
        );
        assert_eq!(qualified("memcpy", "Unknown"), "memcpy");
    }

    #[test]
    fn a_sample_counts_for_its_innermost_known_group_and_for_every_module_of_ours() {
        let stacks = [
            stack(
                &[
                    "memcpy",
                    "serde_json::ser::to_vec",
                    "redis::cmd::Cmd::arg",
                    "kyc_worker::store::publish::{{closure}}",
                    "kyc_worker::jobs::poll::handle::{{closure}}",
                    "tokio::runtime::task::raw::poll",
                ],
                3,
            ),
            stack(
                &["redis::parser::parse", "tokio::runtime::task::raw::poll"],
                1,
            ),
        ];
        let groups = by_group(&stacks);
        assert_eq!(groups[0].name, "JSON (serde_json)");
        assert_eq!(groups[0].share, 0.75);
        assert_eq!(groups[1].name, "Redis client (redis)");
        let modules = by_module(&stacks);
        assert_eq!(modules.len(), 2);
        assert!(modules.iter().all(|m| m.share == 0.75), "{modules:?}");
    }
}
