//! Egress: which addresses a subscriber URL may name. The fleet runs inside a private
//! network, and a URL from a config file must not turn it into a proxy to the cloud's
//! metadata service, the Redis next door or an admin page on loopback (server-side request
//! forgery).
//!
//! The policy is pure: the settings check URLs whose host is an IP literal with it when they
//! are read, and the subscriber client's resolver applies it to every address a name
//! resolves to at connect time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether an address is private, loopback, link-local, a metadata endpoint or otherwise
/// not a public unicast address.
pub(crate) fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            forbidden_v6(v6)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        // 169.254.0.0/16 holds the cloud metadata service (169.254.169.254).
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // 0.0.0.0/8 ("this network").
        || a == 0
        // 100.64.0.0/10, carrier-grade NAT (Alibaba's metadata service is 100.100.100.200).
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24, IETF protocol assignments.
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        // 198.18.0.0/15, benchmarking.
        || (a == 198 && (b == 18 || b == 19))
        // 240.0.0.0/4, reserved.
        || a >= 240
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7, unique local (AWS's IPv6 metadata service is fd00:ec2::254).
        || (first & 0xfe00) == 0xfc00
        // fe80::/10, link-local.
        || (first & 0xffc0) == 0xfe80
        // ::/96 IPv4-compatible and 64:ff9b::/96 NAT64 embed an IPv4 address: judge that.
        || embedded_v4(ip).is_some_and(forbidden_v4)
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compatible = s[..6].iter().all(|x| *x == 0);
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0);
    (compatible || nat64).then_some(tail)
}

/// A target the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

/// Refuses a URL whose host is a forbidden IP literal (a name is checked when resolved).
pub(crate) fn check_literal(url: &url::Url) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if is_forbidden(ip) {
        return Err(Refused(format!(
            "{ip} is a private, loopback, link-local or reserved address (set allow_private = true for a target inside your network)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = ip.parse().expect(ip);
            assert!(is_forbidden(ip), "{ip} must be forbidden");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            let ip: IpAddr = ip.parse().expect(ip);
            assert!(!is_forbidden(ip), "{ip} is public");
        }
    }

    #[test]
    fn literal_hosts_are_checked_and_names_are_left_to_the_resolver() {
        let url = |u: &str| url::Url::parse(u).expect(u);
        assert!(check_literal(&url("https://127.0.0.1/hook")).is_err());
        assert!(check_literal(&url("https://[::1]:8443/hook")).is_err());
        assert!(check_literal(&url("https://169.254.169.254/latest")).is_err());
        assert!(check_literal(&url("https://1.1.1.1/hook")).is_ok());
        assert!(check_literal(&url("https://hooks.example.com/x")).is_ok());
    }
}
