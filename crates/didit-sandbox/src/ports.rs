//! Loopback ports for the processes that the tests and benchmarks start beside the sandbox
//! (`redis-server`, `kyc-worker run`).
//!
//! Asking the kernel for port 0 and handing the number to a child process is racy: the port
//! comes from the ephemeral range, and any outgoing connection made before the child binds
//! (a Redis client, an HTTP request to the sandbox) may be given the same number as its local
//! port — the child then fails with "address already in use". The ports handed out here lie
//! below the ephemeral range, where the kernel never picks a local port by itself, so only
//! another listener can take one; and each is handed out once per process.

use std::{
    net::{Ipv4Addr, TcpListener},
    ops::Range,
    sync::atomic::{AtomicU32, Ordering},
};

/// A Redis Cluster node also listens on its port + 10 000 (the cluster bus); ports are
/// chosen so that this one is free and below the ephemeral range too.
const BUS_OFFSET: u16 = 10_000;

/// The lowest port handed out: above the well-known services that listen on 1–9999.
const FLOOR: u16 = 10_000;

/// Where Linux starts its ephemeral range by default; used when it cannot be read.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// Candidates tried so far by this process, so that concurrent callers never get the same one.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1 that is free now, below the kernel's ephemeral range, and whose
/// port + 10 000 is free as well.
///
/// # Errors
/// When every candidate is taken.
pub fn free_port() -> std::io::Result<u16> {
    let range = candidates(ephemeral_start());
    let span = u32::from(range.end - range.start);
    // Different processes start at different places, so two test binaries rarely meet.
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    first_free(range, offset, &NEXT)
}

/// The first port of `range`, walking from `offset` on with the shared counter `next`, that
/// is bindable together with its bus port.
fn first_free(range: Range<u16>, offset: u32, next: &AtomicU32) -> std::io::Result<u16> {
    let span = u32::from(range.end - range.start);
    for _ in 0..span {
        let step = next.fetch_add(1, Ordering::Relaxed);
        let index = offset.wrapping_add(step) % span;
        let Ok(index) = u16::try_from(index) else {
            continue;
        };
        let port = range.start + index;
        if bindable(port) && bindable(port + BUS_OFFSET) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {range:?}"),
    ))
}

fn candidates(ephemeral_start: u16) -> Range<u16> {
    let end = ephemeral_start
        .saturating_sub(BUS_OFFSET)
        .max(FLOOR + 1_000);
    FLOOR..end
}

fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_stay_below_the_ephemeral_range_with_their_bus_port() {
        assert_eq!(candidates(32_768), 10_000..22_768);
        assert_eq!(candidates(15_000), 10_000..11_000);
        let range = candidates(ephemeral_start());
        for _ in 0..50 {
            let port = free_port().expect("a free port");
            assert!(range.contains(&port), "{port} outside {range:?}");
        }
    }

    #[test]
    fn a_port_is_handed_out_once_per_process() {
        let ports: std::collections::HashSet<u16> = (0..200)
            .map(|_| free_port().expect("a free port"))
            .collect();
        assert_eq!(ports.len(), 200);
    }

    #[test]
    fn a_taken_port_or_bus_port_is_never_handed_out() {
        let port = free_port().expect("a free port");
        assert_eq!(
            first_free(port..port + 1, 0, &AtomicU32::new(0)).ok(),
            Some(port)
        );
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind");
        let taken = first_free(port..port + 1, 0, &AtomicU32::new(0));
        assert_eq!(
            taken.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::AddrInUse)
        );
        drop(held);
        let _bus = TcpListener::bind((Ipv4Addr::LOCALHOST, port + BUS_OFFSET)).expect("bind");
        assert!(first_free(port..port + 1, 0, &AtomicU32::new(0)).is_err());
    }
}
