//! The tunnels, options and pins of the batch-read test (`xdp_batch`) and benchmark
//! (`benches/batch.rs`).
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4},
    time::Duration,
};

use broker_userspace::{
    dataplane::{self, Dataplane, MapReads},
    model::{Endpoint, Kind, Pop, State, TunnelSpec},
};

use super::{ayiya_key, pop};

pub const PASSWORD: &str = "batch";

/// The fixture's PoP with a v4v6 pool large enough for a million clients.
pub fn big_pop() -> Pop {
    Pop {
        v4v6_pool: Some("100.64.0.0/10".parse().unwrap()),
        ..pop()
    }
}

/// Tunnel `k`'s client endpoint (proto-41, v6udpv4, AYIYA): 240.0.0.0/4 plus `k`, as in the
/// benchmark (never routed; only map contents and test frames).
pub fn client(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xf000_0000 | k)
}

/// Where an AYIYA client roams to.
pub fn moved(k: u32) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(0xf100_0000 | k), 7000)
}

/// Tunnel `k` of a mix of every kind and state: mostly proto-41, every tenth v6udpv4,
/// AYIYA or v4v6, some heartbeat tunnels never heard from, a routed /56 on every fourth.
pub fn spec_of(k: u32) -> TunnelSpec {
    let state = match k % 50 {
        0 => State::Down,
        1 => State::Disabled,
        _ => State::Up,
    };
    let link = Some(
        format!("2001:db8:{:x}:{:x}::/64", k >> 16, k & 0xffff)
            .parse()
            .unwrap(),
    );
    let routed = if k.is_multiple_of(4) {
        vec![format!("3fff:{:x}:{:x}00::/56", k >> 8, k & 0xff)
            .parse()
            .unwrap()]
    } else {
        vec![]
    };
    let base = TunnelSpec {
        id: k,
        kind: Kind::Proto41,
        state,
        endpoint: Endpoint::Ipv4(client(k)),
        link_prefix: link,
        routed_prefixes: routed,
        client_v4: None,
        mtu: 1480,
        keepalive: None,
        ayiya_key: None,
    };
    let udp = Endpoint::Udp4(SocketAddrV4::new(client(k), 1024 + (k % 60_000) as u16));
    match k % 10 {
        7 => TunnelSpec {
            kind: Kind::V6Udp4,
            endpoint: udp,
            mtu: 1472,
            keepalive: Some(30),
            ..base
        },
        8 => TunnelSpec {
            kind: Kind::Ayiya,
            endpoint: if k % 100 == 98 {
                Endpoint::unspecified(Kind::Ayiya)
            } else {
                udp
            },
            mtu: 1428,
            keepalive: Some(60),
            ayiya_key: Some(ayiya_key(PASSWORD)),
            ..base
        },
        9 => TunnelSpec {
            kind: Kind::V4In6,
            endpoint: Endpoint::Ipv6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0xffff,
                1,
                0,
                0,
                (k >> 16) as u16,
                k as u16,
            )),
            link_prefix: None,
            routed_prefixes: vec![],
            client_v4: Some(Ipv4Addr::from(0x6440_0000 | k)),
            mtu: 1460,
            ..base
        },
        5 if k % 100 == 55 => TunnelSpec {
            kind: Kind::Heartbeat,
            endpoint: Endpoint::unspecified(Kind::Heartbeat),
            ..base
        },
        _ => base,
    }
}

pub fn specs(n: u32) -> Vec<TunnelSpec> {
    (1..=n).map(spec_of).collect()
}

/// Removes a pinned test instance, also when the test fails.
pub struct Pins(pub String);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = dataplane::detach_instance(&self.0);
    }
}

pub fn options(instance: &str, max_tunnels: u32, reads: MapReads) -> dataplane::Options {
    dataplane::Options {
        pin: true,
        max_tunnels,
        max_prefixes: 2 * max_tunnels,
        map_reads: reads,
        ..dataplane::Options::new(instance)
    }
}

pub fn slots(dp: &Dataplane) -> Vec<(u32, u32)> {
    dp.tunnel_ids()
        .into_iter()
        .map(|id| (id, dp.slot_of(id).unwrap()))
        .collect()
}

pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}
