//! What a tunnel is, independent of where it came from (config file, API, TSP) and of how
//! the data plane stores it.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::config;

/// The encapsulation. Names are those of the API, the store and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// IPv6 in IPv4, protocol 41 (TSP `v6v4`).
    Proto41,
    /// IPv6 in UDP over IPv4 (TSP `v6udpv4`): crosses NATs.
    V6Udp4,
    /// IPv4 in IPv6 (TSP `v4v6`): IPv4 for IPv6-only clients.
    V4In6,
    /// IPv6 in signed AYIYA over UDP (SixXS `ayiya`): crosses NATs; the data plane follows
    /// the client's address and port.
    Ayiya,
    /// proto-41 whose endpoint the client's heartbeats set (SixXS `6in4-heartbeat`).
    Heartbeat,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Proto41,
        Kind::V6Udp4,
        Kind::V4In6,
        Kind::Ayiya,
        Kind::Heartbeat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Heartbeat => "heartbeat",
            k => k.dataplane().as_str(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn dataplane(self) -> broker_common::maps::TunnelKind {
        use broker_common::maps::TunnelKind as K;
        match self {
            Kind::Proto41 => K::Proto41,
            Kind::V6Udp4 => K::V6Udp4,
            Kind::V4In6 => K::V4In6,
            Kind::Ayiya => K::Ayiya,
            Kind::Heartbeat => K::Proto41,
        }
    }

    /// The client's endpoint is learnt from its packets (AYIYA) or beats (heartbeat)
    /// rather than configured: it starts unspecified (`0.0.0.0`).
    pub fn dynamic_endpoint(self) -> bool {
        matches!(self, Kind::Ayiya | Kind::Heartbeat)
    }

    /// IPv6 inside (a link /64 and routed prefixes), rather than IPv4.
    pub fn carries_ipv6(self) -> bool {
        !matches!(self, Kind::V4In6)
    }

    /// The largest MTU on a 1500-byte path.
    pub fn mtu_max(self) -> u16 {
        self.dataplane().mtu_max()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Disabled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [State::Up, State::Down, State::Disabled]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Where the client's end of the tunnel is: what its packets arrive from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// proto-41: the client's IPv4.
    Ipv4(Ipv4Addr),
    /// v6udpv4: the client's IPv4 and UDP port (as the PoP sees them, after any NAT).
    Udp4(SocketAddrV4),
    /// v4v6: the client's IPv6.
    Ipv6(Ipv6Addr),
}

impl Endpoint {
    /// The client's IPv4, for the kinds that have one.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        match self {
            Endpoint::Ipv4(a) => Some(*a),
            Endpoint::Udp4(a) => Some(*a.ip()),
            Endpoint::Ipv6(_) => None,
        }
    }

    /// The client's address, without a port.
    pub fn address(&self) -> IpAddr {
        match self {
            Endpoint::Ipv4(a) => IpAddr::V4(*a),
            Endpoint::Udp4(a) => IpAddr::V4(*a.ip()),
            Endpoint::Ipv6(a) => IpAddr::V6(*a),
        }
    }

    /// The endpoint as the API's and the store's fields: client IPv4, UDP port, IPv6.
    pub fn parts(&self) -> (Option<Ipv4Addr>, Option<u16>, Option<Ipv6Addr>) {
        match self {
            Endpoint::Ipv4(a) => (Some(*a), None, None),
            Endpoint::Udp4(a) => (Some(*a.ip()), Some(a.port()), None),
            Endpoint::Ipv6(a) => (None, None, Some(*a)),
        }
    }

    /// Whether this endpoint suits a tunnel of `kind`.
    pub fn fits(&self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (Endpoint::Ipv4(_), Kind::Proto41 | Kind::Heartbeat)
                | (Endpoint::Udp4(_), Kind::V6Udp4 | Kind::Ayiya)
                | (Endpoint::Ipv6(_), Kind::V4In6)
        )
    }

    /// Not heard from yet (a dynamic tunnel's endpoint before its first beat or packet).
    pub fn is_unspecified(&self) -> bool {
        match self {
            Endpoint::Ipv4(a) => a.is_unspecified(),
            Endpoint::Udp4(a) => a.ip().is_unspecified(),
            Endpoint::Ipv6(a) => a.is_unspecified(),
        }
    }

    /// The unspecified endpoint of a tunnel of `kind`.
    pub fn unspecified(kind: Kind) -> Self {
        match kind {
            Kind::Proto41 | Kind::Heartbeat => Endpoint::Ipv4(Ipv4Addr::UNSPECIFIED),
            Kind::V6Udp4 | Kind::Ayiya => {
                Endpoint::Udp4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            }
            Kind::V4In6 => Endpoint::Ipv6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Ipv4(a) => a.fmt(f),
            Endpoint::Udp4(a) => a.fmt(f),
            Endpoint::Ipv6(a) => a.fmt(f),
        }
    }
}

/// One tunnel: identity, endpoint, addressing and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    pub id: u32,
    pub kind: Kind,
    pub state: State,
    pub endpoint: Endpoint,
    /// The link /64 (`::1` the PoP, `::2` the client) of tunnels that carry IPv6.
    pub link_prefix: Option<Ipv6Net>,
    pub routed_prefixes: Vec<Ipv6Net>,
    /// The client's inner IPv4 (v4v6).
    pub client_v4: Option<Ipv4Addr>,
    pub mtu: u16,
    /// Seconds between the client's keepalives, for tunnels whose liveness the PoP tracks
    /// (TSP): silent for five intervals, the tunnel goes down until its client is heard.
    pub keepalive: Option<u32>,
    /// AYIYA: SHA-1 of the tunnel's password, which signs every packet. Derived from the
    /// stored password when the tunnel is projected; never stored itself.
    pub ayiya_key: Option<[u8; 20]>,
}

impl TunnelSpec {
    /// The PoP's address on the link (`::1`).
    pub fn pop_v6(&self) -> Option<Ipv6Addr> {
        self.link_prefix.map(|p| host(p, 1))
    }

    /// The client's address on the link (`::2`).
    pub fn client_v6(&self) -> Option<Ipv6Addr> {
        self.link_prefix.map(|p| host(p, 2))
    }

    /// Every IPv6 prefix the tunnel owns: the link /64 first, then the routed ones.
    pub fn prefixes(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        self.link_prefix
            .into_iter()
            .chain(self.routed_prefixes.iter().copied())
    }
}

fn host(net: Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) | n)
}

/// The PoP's side of every tunnel, as the data plane needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pop {
    /// Local endpoint of proto-41 and v6udpv4 tunnels.
    pub ipv4: Ipv4Addr,
    /// Local endpoint of v4v6 tunnels.
    pub ipv6: Option<Ipv6Addr>,
    /// The UDP port of TSP, where v6udpv4 data arrives.
    pub tsp_port: Option<u16>,
    /// The UDP port of AYIYA (5072).
    pub ayiya_port: Option<u16>,
    /// The pool of v4v6 inner addresses; its first host is the PoP's own.
    pub v4v6_pool: Option<Ipv4Net>,
}

impl Pop {
    /// Only an IPv4 endpoint: proto-41.
    pub fn ipv4_only(ipv4: Ipv4Addr) -> Self {
        Self {
            ipv4,
            ipv6: None,
            tsp_port: None,
            ayiya_port: None,
            v4v6_pool: None,
        }
    }

    /// The PoP's address inside v4v6 tunnels (the pool's first host).
    pub fn v4v6_gateway(&self) -> Option<Ipv4Addr> {
        self.v4v6_pool
            .map(|p| Ipv4Addr::from(u32::from(p.network()) + 1))
    }
}

impl From<&config::Tunnel> for TunnelSpec {
    fn from(t: &config::Tunnel) -> Self {
        Self {
            id: t.id,
            kind: Kind::Proto41,
            state: match t.state {
                config::TunnelState::Up => State::Up,
                config::TunnelState::Down => State::Down,
                config::TunnelState::Disabled => State::Disabled,
            },
            endpoint: Endpoint::Ipv4(t.remote_ipv4.0),
            link_prefix: Some(t.link_prefix.0),
            routed_prefixes: t.routed_prefixes.iter().map(|p| p.0).collect(),
            client_v4: None,
            mtu: t.mtu.0,
            keepalive: None,
            ayiya_key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_addresses() {
        let t = TunnelSpec {
            id: 1,
            kind: Kind::Proto41,
            state: State::Up,
            endpoint: Endpoint::Ipv4("198.51.100.10".parse().unwrap()),
            link_prefix: Some("2001:db8:10:1::/64".parse().unwrap()),
            routed_prefixes: vec!["2001:db8:1100::/48".parse().unwrap()],
            client_v4: None,
            mtu: 1480,
            keepalive: None,
            ayiya_key: None,
        };
        assert_eq!(t.pop_v6(), Some("2001:db8:10:1::1".parse().unwrap()));
        assert_eq!(t.client_v6(), Some("2001:db8:10:1::2".parse().unwrap()));
        assert_eq!(t.prefixes().count(), 2);
    }

    #[test]
    fn kinds_and_endpoints() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::V6Udp4.mtu_max(), 1472);
        assert_eq!(Kind::V4In6.mtu_max(), 1460);
        let udp = Endpoint::Udp4("198.51.100.10:40000".parse().unwrap());
        assert!(udp.fits(Kind::V6Udp4) && !udp.fits(Kind::Proto41));
        assert_eq!(udp.ipv4(), Some("198.51.100.10".parse().unwrap()));
        let pop = Pop {
            v4v6_pool: Some("203.0.113.0/24".parse().unwrap()),
            ..Pop::ipv4_only("192.0.2.1".parse().unwrap())
        };
        assert_eq!(pop.v4v6_gateway(), Some("203.0.113.1".parse().unwrap()));
    }
}
