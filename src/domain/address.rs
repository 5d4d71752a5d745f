//! Who is calling: the client address behind our reverse proxies.
//!
//! Throttling failed console logins per client needs the client's address. Behind a load
//! balancer every connection comes from the balancer, and the client is named in
//! `X-Forwarded-For` — a header anyone can write. So the header is believed only when the
//! connection comes from a proxy the operator listed (`http.trusted_proxies`), and only as
//! far as the chain of trusted proxies reaches: reading right to left, the first address
//! that is not a trusted proxy is the client.

use std::net::IpAddr;

/// One trusted network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    base: IpAddr,
    prefix: u8,
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, canonical(ip)) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(base) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address seen through an IPv6 socket (`::ffff:1.2.3.4`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose `X-Forwarded-For` is believed (settings `http.trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Network>);

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and CIDR networks; empty: none.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut networks = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (address, prefix) = match item.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (item, None),
            };
            let base: IpAddr = address
                .parse()
                .map_err(|_| format!("\"{item}\" is not an IP address or CIDR network"))?;
            let base = canonical(base);
            let max = if base.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("\"{item}\": the prefix length must be 0-{max}"))?,
            };
            networks.push(Network { base, prefix });
        }
        Ok(Self(networks))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client's address: the peer itself, unless the peer is a trusted proxy; then
    /// the right-most `X-Forwarded-For` entry that is not a trusted proxy (or the left-most
    /// when all are). Unparsable entries end the walk: nothing left of them is believed.
    pub fn client_address<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let chain: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for entry in chain.iter().rev() {
            let Ok(ip) = entry.parse::<IpAddr>().map(canonical) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_address(ip("127.0.0.1"), ["203.0.113.9"]),
            ip("127.0.0.1")
        );
        let lb = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1").expect("list");
        assert_eq!(
            lb.client_address(ip("127.0.0.1"), ["203.0.113.9"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            lb.client_address(ip("192.0.2.1"), ["203.0.113.9"]),
            ip("192.0.2.1"),
            "an untrusted peer's header is ignored"
        );
        // The client forged the left-most entry; the trusted chain names the real one.
        assert_eq!(
            lb.client_address(ip("10.1.2.3"), ["6.6.6.6, 198.51.100.7, 10.9.9.9"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            lb.client_address(ip("10.1.2.3"), ["garbage, 10.9.9.9"]),
            ip("10.9.9.9")
        );
        assert_eq!(
            lb.client_address(ip("::ffff:127.0.0.1"), Vec::<&str>::new()),
            ip("127.0.0.1")
        );
        let v6 = TrustedProxies::parse("fd00::/8").expect("v6");
        assert!(v6.trusts(ip("fd12::1")));
        assert!(!v6.trusts(ip("fe80::1")));
    }

    #[test]
    fn bad_lists_are_refused_with_the_item() {
        assert!(TrustedProxies::parse("").expect("empty").is_empty());
        for bad in ["10.0.0.0/33", "nope", "::1/129", "1.2.3.4/x"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
    }
}
