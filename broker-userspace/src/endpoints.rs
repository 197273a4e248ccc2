//! Which addresses a tunnel's client end may have. Pure: the broker core asks it for
//! every endpoint it stores.
//!
//! Two strengths. An endpoint someone *names* (the API, `/nic/update`, the config) must be
//! a unicast address the PoP can send to and that is not its own; private ranges only
//! where the operator allows them (`pop.private_endpoints`: a datacenter may tunnel over
//! private addressing, a public PoP must not send tunnel traffic into its own networks on
//! a user's say-so). An endpoint *learnt* from packets (TSP sessions, heartbeats, AYIYA
//! roaming) is where those packets came from: it only has to be a possible source.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;

/// What the PoP knows of itself for the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The subnets of the PoP's interfaces: their network and broadcast addresses are no
    /// endpoints.
    pub subnets: Vec<Ipv4Net>,
    /// `pop.private_endpoints`.
    pub private_allowed: bool,
}

/// How an endpoint came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Named by someone: the API, `/nic/update`, the config.
    Named,
    /// The source of packets the PoP received.
    Learnt,
}

/// Why `addr` may not be a tunnel endpoint, or `None`. The unspecified address (a dynamic
/// tunnel's "not heard yet") is the caller's business.
pub fn problem(addr: IpAddr, local: &Local, origin: Origin) -> Option<String> {
    let why = match addr {
        IpAddr::V4(a) => v4(a, local, origin),
        IpAddr::V6(a) => v6(a, local, origin),
    }?;
    Some(format!("{addr} {why}"))
}

fn v4(a: Ipv4Addr, local: &Local, origin: Origin) -> Option<&'static str> {
    let o = a.octets();
    if a.is_unspecified() || o[0] == 0 {
        return Some("is not an address of a host (0.0.0.0/8)");
    }
    if a.is_loopback() {
        return Some("is loopback");
    }
    if a.is_multicast() {
        return Some("is multicast");
    }
    if a.is_broadcast() || o[0] >= 240 {
        return Some("is broadcast or reserved (240.0.0.0/4)");
    }
    if Some(a) == local.ipv4 {
        return Some("is the PoP's own address");
    }
    for net in &local.subnets {
        if net.prefix_len() <= 30 && (a == net.network() || a == net.broadcast()) {
            return Some("is a network or broadcast address of the PoP's subnet");
        }
    }
    if origin == Origin::Named && !local.private_allowed {
        let private = a.is_private()
            || a.is_link_local()
            // Shared address space (carrier-grade NAT, RFC 6598).
            || (o[0] == 100 && (o[1] & 0xc0) == 64);
        if private {
            return Some("is private (RFC 1918, 6598 or link-local): pop.private_endpoints is off");
        }
    }
    None
}

fn v6(a: Ipv6Addr, local: &Local, origin: Origin) -> Option<&'static str> {
    let s = a.segments();
    if a.is_unspecified() {
        return Some("is not an address of a host");
    }
    if a.is_loopback() {
        return Some("is loopback");
    }
    if a.is_multicast() {
        return Some("is multicast");
    }
    if a.to_ipv4_mapped().is_some() {
        return Some("is IPv4-mapped");
    }
    if Some(a) == local.ipv6 {
        return Some("is the PoP's own address");
    }
    // Link-local: not reachable beyond the PoP's own links.
    if s[0] & 0xffc0 == 0xfe80 {
        return Some("is link-local");
    }
    if origin == Origin::Named && !local.private_allowed && s[0] & 0xfe00 == 0xfc00 {
        return Some("is unique-local (fc00::/7): pop.private_endpoints is off");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Local {
        Local {
            ipv4: Some("192.0.2.1".parse().unwrap()),
            ipv6: Some("2001:db8:ffff::1".parse().unwrap()),
            subnets: vec!["192.0.2.0/24".parse().unwrap()],
            private_allowed: false,
        }
    }

    fn named(a: &str) -> Option<String> {
        problem(a.parse().unwrap(), &local(), Origin::Named)
    }

    #[test]
    fn named_endpoints_must_be_unicast_and_not_the_pops() {
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "192.0.2.255",
            "192.0.2.0",
            "::",
            "::1",
            "ff02::1",
            "::ffff:198.51.100.1",
            "2001:db8:ffff::1",
            "fe80::1",
        ] {
            assert!(named(bad).is_some(), "{bad} accepted");
        }
        for good in [
            "198.51.100.10",
            "192.0.2.7",
            "203.0.113.1",
            "2001:db8:fffe::6",
        ] {
            assert_eq!(named(good), None, "{good}");
        }
        assert!(named("127.0.0.1").unwrap().contains("loopback"));
    }

    #[test]
    fn private_ranges_are_the_operators_call() {
        let private = [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "fd00::1",
        ];
        for a in private {
            assert!(named(a).unwrap().contains("pop.private_endpoints"), "{a}");
            let allowed = Local {
                private_allowed: true,
                ..local()
            };
            assert_eq!(
                problem(a.parse().unwrap(), &allowed, Origin::Named),
                None,
                "{a}"
            );
            // Packets came from there: the PoP can reach it.
            assert_eq!(
                problem(a.parse().unwrap(), &local(), Origin::Learnt),
                None,
                "{a}"
            );
        }
        // 100.128.0.1 is outside the shared space.
        assert_eq!(named("100.128.0.1"), None);
    }

    #[test]
    fn learnt_endpoints_are_still_no_broadcast_or_loopback() {
        for bad in [
            "127.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "ff02::1",
        ] {
            assert!(
                problem(bad.parse().unwrap(), &local(), Origin::Learnt).is_some(),
                "{bad}"
            );
        }
    }
}
