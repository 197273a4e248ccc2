//! What a tunnel is, independent of where it came from (config file today, the store
//! later) and of how the data plane stores it.
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;

use crate::config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Proto41,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Disabled,
}

/// One tunnel: identity, endpoint, addressing and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    pub id: u32,
    pub kind: Kind,
    pub state: State,
    /// The client's IPv4 endpoint.
    pub remote_v4: Ipv4Addr,
    /// The link /64: `::1` the PoP, `::2` the client.
    pub link_prefix: Ipv6Net,
    pub routed_prefixes: Vec<Ipv6Net>,
    pub mtu: u16,
}

impl TunnelSpec {
    /// The PoP's address on the link (`::1`).
    pub fn pop_v6(&self) -> Ipv6Addr {
        host(self.link_prefix, 1)
    }

    /// The client's address on the link (`::2`).
    pub fn client_v6(&self) -> Ipv6Addr {
        host(self.link_prefix, 2)
    }

    /// Every prefix the tunnel owns: the link /64 first, then the routed ones.
    pub fn prefixes(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        std::iter::once(self.link_prefix).chain(self.routed_prefixes.iter().copied())
    }
}

fn host(net: Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) | n)
}

impl From<&config::Tunnel> for TunnelSpec {
    fn from(t: &config::Tunnel) -> Self {
        Self {
            id: t.id,
            kind: match t.kind {
                config::TunnelKind::Proto41 => Kind::Proto41,
            },
            state: match t.state {
                config::TunnelState::Up => State::Up,
                config::TunnelState::Down => State::Down,
                config::TunnelState::Disabled => State::Disabled,
            },
            remote_v4: t.remote_ipv4.0,
            link_prefix: t.link_prefix.0,
            routed_prefixes: t.routed_prefixes.iter().map(|p| p.0).collect(),
            mtu: t.mtu.0,
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
            remote_v4: "198.51.100.10".parse().unwrap(),
            link_prefix: "2001:db8:10:1::/64".parse().unwrap(),
            routed_prefixes: vec!["2001:db8:1100::/48".parse().unwrap()],
            mtu: 1480,
        };
        assert_eq!(t.pop_v6(), "2001:db8:10:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            t.client_v6(),
            "2001:db8:10:1::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(t.prefixes().count(), 2);
    }
}
