//! Packets for the kernel-program tests, built and checked with etherparse (never with the
//! code under test), and the fixture network they run in.
#![allow(dead_code)]

pub mod batch;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    time::{Duration, Instant},
};

use broker_common::{
    maps::{RateLimit, TunnelStats},
    stats::{DropReason, Event, PassReason},
};
use broker_tests::netns;
use broker_userspace::{
    dataplane::{self, Dataplane, GlobalCounters},
    model::{Endpoint, Kind, Pop, State, TunnelSpec},
};
use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Header, Icmpv4Type, Icmpv6Type, IpNumber, Ipv4Dscp, Ipv4Ecn,
    Ipv4Header, PacketBuilder,
};

pub const POP4_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x04, 0x01];
pub const ISP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x00, 0xfe];
pub const POP6_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x06, 0x01];
pub const INET_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x00, 0x02];

pub const POP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The PoP's address on eth6: the outer end of v4v6 tunnels.
pub const POP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
pub const TSP_PORT: u16 = 3653;
pub const AYIYA_PORT: u16 = 5072;
/// The v4v6 pool; `.1` is the PoP's inner address.
pub const V4V6_POOL: &str = "203.0.113.0/24";
pub const V4V6_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// The PoP of every fixture: proto-41, TSP's v6udpv4, v4v6 and AYIYA all on.
pub fn pop() -> Pop {
    Pop {
        ipv4: POP_V4,
        ipv6: Some(POP_V6),
        tsp_port: Some(TSP_PORT),
        ayiya_port: Some(AYIYA_PORT),
        v4v6_pool: Some(V4V6_POOL.parse().unwrap()),
    }
}
pub const GW_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const INET_HOST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 2);
/// On eth6's subnet but with no neighbour entry.
pub const UNRESOLVED_HOST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 3);
/// Inside a blackhole route.
pub const BLACKHOLED: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xdead, 0, 0, 0, 0, 1);

/// Tunnels of the fixture: (id, endpoint, state, mtu).
pub const TUNNELS: [(u32, [u8; 4], State, u16); 4] = [
    (1, [198, 51, 100, 10], State::Up, 1480),
    (2, [198, 51, 100, 20], State::Up, 1280),
    (3, [198, 51, 100, 30], State::Down, 1480),
    (4, [198, 51, 100, 40], State::Disabled, 1480),
];

pub fn client_v4(id: u32) -> Ipv4Addr {
    Ipv4Addr::from(TUNNELS[(id - 1) as usize].1)
}

/// `2001:db8:10:<id>::<host>`.
pub fn link_addr(id: u32, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x10, id as u16, 0, 0, 0, host)
}

/// An address inside tunnel `id`'s routed /48, `2001:db8:<1000+100 id>::<host>`.
pub fn routed_addr(id: u32, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        (0x1000 + 0x100 * id) as u16,
        5,
        0,
        0,
        0,
        host,
    )
}

pub fn spec(id: u32) -> TunnelSpec {
    let (_, v4, state, mtu) = TUNNELS[(id - 1) as usize];
    TunnelSpec {
        id,
        kind: Kind::Proto41,
        state,
        endpoint: Endpoint::Ipv4(Ipv4Addr::from(v4)),
        link_prefix: Some(format!("2001:db8:10:{id:x}::/64").parse().unwrap()),
        routed_prefixes: vec![format!("2001:db8:{:x}::/48", 0x1000 + 0x100 * id)
            .parse()
            .unwrap()],
        client_v4: None,
        mtu,
        keepalive: None,
        ayiya_key: None,
    }
}

/// v6udpv4 tunnel 5: client 198.51.100.50:40000 (after its NAT), up, liveness tracked.
pub const UDP_CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 50), 40000);
/// v6udpv4 tunnel 7: down for silence, woken by its client's packets.
pub const SLEEPY_CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 70), 40070);
/// v4v6 tunnel 6: the client's IPv6 (on eth6's side) and its inner IPv4.
pub const V4V6_CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 6);
pub const V4V6_INNER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// A native IPv4 host out of eth4 (through the default route).
pub const INET4_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);

/// The TSP tunnels added by [`Fixture::with_tsp`].
pub fn tsp_specs() -> Vec<TunnelSpec> {
    let udp = |id: u32, (a, p): (Ipv4Addr, u16), state| TunnelSpec {
        kind: Kind::V6Udp4,
        state,
        endpoint: Endpoint::Udp4(std::net::SocketAddrV4::new(a, p)),
        link_prefix: Some(format!("2001:db8:10:{id:x}::/64").parse().unwrap()),
        routed_prefixes: vec![format!("2001:db8:{:x}::/48", 0x1000 + 0x100 * id)
            .parse()
            .unwrap()],
        mtu: 1472,
        keepalive: Some(30),
        ayiya_key: None,
        ..spec(1)
    };
    vec![
        TunnelSpec {
            id: 5,
            ..udp(5, UDP_CLIENT, State::Up)
        },
        TunnelSpec {
            id: 6,
            kind: Kind::V4In6,
            state: State::Up,
            endpoint: Endpoint::Ipv6(V4V6_CLIENT),
            link_prefix: None,
            routed_prefixes: vec![],
            client_v4: Some(V4V6_INNER),
            mtu: 1460,
            keepalive: Some(30),
            ayiya_key: None,
        },
        TunnelSpec {
            id: 7,
            ..udp(7, SLEEPY_CLIENT, State::Down)
        },
    ]
}

/// The data plane loaded (not attached) in a private network namespace of the calling
/// thread, with the fixture's interfaces, neighbours, routes and tunnels.
pub struct Fixture {
    pub dp: Dataplane,
    pub eth4: u32,
    pub eth6: u32,
}

fn sh(args: &[&str]) {
    netns::run(Command::new(args[0]).args(&args[1..])).expect("fixture command");
}

impl Fixture {
    /// The fixture network and the data plane with the four tunnels of [`TUNNELS`]. Must
    /// run on a thread of its own: it moves that thread into a new namespace.
    pub fn new() -> Self {
        let mut fx = Self::network(64, 256);
        for (id, ..) in TUNNELS {
            fx.dp.upsert(&spec(id)).unwrap();
        }
        fx
    }

    /// [`Fixture::new`] and the TSP tunnels of [`tsp_specs`]; the v4v6 client is a
    /// neighbour on eth6.
    pub fn with_tsp() -> Self {
        let mut fx = Self::new();
        for spec in tsp_specs() {
            fx.dp.upsert(&spec).unwrap();
        }
        sh(&[
            "ip",
            "-6",
            "neigh",
            "replace",
            &V4V6_CLIENT.to_string(),
            "lladdr",
            "02:00:00:00:00:06",
            "dev",
            "eth6",
            "nud",
            "permanent",
        ]);
        fx
    }

    /// [`Fixture::new`], the data plane loaded with `opts` (its rate limits, for instance;
    /// the capacities stay the fixture's).
    pub fn with_options(opts: dataplane::Options) -> Self {
        let mut fx = Self::network_with(dataplane::Options {
            max_tunnels: 64,
            max_prefixes: 256,
            ..opts
        });
        for (id, ..) in TUNNELS {
            fx.dp.upsert(&spec(id)).unwrap();
        }
        fx
    }

    /// The fixture network and an empty data plane with the given capacities.
    pub fn network(max_tunnels: u32, max_prefixes: u32) -> Self {
        Self::network_with(dataplane::Options {
            max_tunnels,
            max_prefixes,
            ..dataplane::Options::new("test")
        })
    }

    /// The fixture network and an empty data plane loaded with `opts`.
    pub fn network_with(opts: dataplane::Options) -> Self {
        broker_tests::require_root();
        netns::unshare_thread().expect("a private network namespace");
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        sh(&["ip", "link", "set", "lo", "up"]);
        for (name, m, peer, pm) in [
            ("eth4", POP4_MAC, "peer4", ISP_MAC),
            ("eth6", POP6_MAC, "peer6", INET_MAC),
        ] {
            sh(&[
                "ip",
                "link",
                "add",
                name,
                "address",
                &mac(m),
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "address",
                &mac(pm),
            ]);
            sh(&["ip", "link", "set", name, "up"]);
            sh(&["ip", "link", "set", peer, "up"]);
        }
        sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        sh(&["ip", "addr", "add", "192.0.2.1/24", "dev", "eth4"]);
        sh(&["ip", "route", "add", "default", "via", &GW_V4.to_string()]);
        sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:ffff::1/64",
            "dev",
            "eth6",
            "nodad",
        ]);
        sh(&[
            "ip",
            "neigh",
            "replace",
            &GW_V4.to_string(),
            "lladdr",
            &mac(ISP_MAC),
            "dev",
            "eth4",
            "nud",
            "permanent",
        ]);
        sh(&[
            "ip",
            "-6",
            "neigh",
            "replace",
            &INET_HOST.to_string(),
            "lladdr",
            &mac(INET_MAC),
            "dev",
            "eth6",
            "nud",
            "permanent",
        ]);
        sh(&[
            "ip",
            "-6",
            "route",
            "add",
            "blackhole",
            "2001:db8:dead::/48",
        ]);
        sh(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &INET_HOST.to_string(),
        ]);

        let mut dp = Dataplane::load(&opts).expect("loading the data plane (needs root and BPF)");
        dp.set_pop(&pop()).unwrap();
        Self {
            dp,
            eth4: ifindex("eth4"),
            eth6: ifindex("eth6"),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            global: self.dp.global_counters().unwrap(),
            tunnels: self
                .dp
                .tunnel_ids()
                .into_iter()
                .map(|id| (id, self.dp.tunnel_counters(id).unwrap().unwrap()))
                .collect(),
        }
    }
}

/// Runs `f` with a fixture made by `make` on a thread of its own (the fixture moves its
/// thread into a private namespace).
pub fn on_thread(make: fn() -> Fixture, f: impl FnOnce(&Fixture) + Send + 'static) {
    std::thread::spawn(move || f(&make()))
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// One packet through the program: asserts the action, the counter, and (when given) the
/// exact output frame.
pub fn check(
    fx: &Fixture,
    what: &str,
    frame: &[u8],
    ingress: u32,
    action: u32,
    reason: Reason,
    want: Option<&[u8]>,
) -> Vec<u8> {
    let before = fx.snapshot();
    let out = fx.dp.test_run(frame, ingress, 1).expect("test run");
    assert_eq!(
        out.action,
        action,
        "{what}: action (output {})",
        hex(&out.data)
    );
    before.assert_one(&fx.snapshot(), action, reason, what);
    if let Some(w) = want {
        assert_bytes(&out.data, w, what);
    }
    out.data
}

/// [`check`] of a frame dropped for `reason`, counted as one drop of tunnel `id`.
pub fn check_tunnel_drop(
    fx: &Fixture,
    what: &str,
    frame: &[u8],
    ingress: u32,
    reason: DropReason,
    id: u32,
) {
    let before = fx.snapshot();
    check(
        fx,
        what,
        frame,
        ingress,
        XDP_DROP,
        Reason::Drop(reason),
        None,
    );
    assert_eq!(
        before.tunnel_delta(&fx.snapshot(), id).drop_packets,
        1,
        "{what}"
    );
}

/// Cuts `frame` at every length and asserts each piece gets exactly one counted verdict,
/// drop or pass, and passes untouched.
pub fn assert_every_truncation_counted(fx: &Fixture, what: &str, frame: &[u8], ingress: u32) {
    // The kernel refuses test frames shorter than an Ethernet header (no driver delivers
    // one to XDP either).
    for len in 0..14 {
        assert!(
            fx.dp.test_run(&frame[..len], ingress, 1).is_err(),
            "{what} cut to {len}"
        );
    }
    for len in 14..frame.len() {
        let before = fx.snapshot();
        let out = fx.dp.test_run(&frame[..len], ingress, 1).expect("test run");
        assert!(
            out.action == XDP_DROP || out.action == XDP_PASS,
            "{what} cut to {len}: action {}",
            out.action
        );
        let d = fx.snapshot().global.since(&before.global);
        let reasons: u64 = DropReason::ALL
            .iter()
            .map(|r| d.dropped(*r).packets)
            .sum::<u64>()
            + PassReason::ALL
                .iter()
                .map(|r| d.passed(*r).packets)
                .sum::<u64>();
        assert_eq!(reasons, 1, "{what} cut to {len}: exactly one reason");
        assert_eq!(
            d.action(out.action).packets,
            1,
            "{what} cut to {len}: action counted"
        );
        if out.action == XDP_PASS {
            assert_bytes(
                &out.data,
                &frame[..len],
                &format!("{what} cut to {len} passes untouched"),
            );
        }
    }
}

/// The index of `name` in the calling thread's namespace (/sys/class/net would show the
/// namespace sysfs was mounted in instead).
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: reads a NUL-terminated string; uses a socket of the thread's namespace.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}

/// Counters at one moment.
pub struct Snapshot {
    pub global: GlobalCounters,
    pub tunnels: BTreeMap<u32, TunnelStats>,
}

/// What a packet is expected to be counted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Drop(DropReason),
    Pass(PassReason),
    /// Forwarded or answered, with this event.
    Did(Event),
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

impl Snapshot {
    /// Asserts that between `self` and `after` exactly one packet was counted: under
    /// `action`, and under `reason` and no other drop or pass reason.
    pub fn assert_one(&self, after: &Snapshot, action: u32, reason: Reason, what: &str) {
        let d = after.global.since(&self.global);
        for a in 0..5 {
            let want = u64::from(a == action);
            assert_eq!(d.action(a).packets, want, "{what}: action {a} count");
        }
        for r in DropReason::ALL {
            let want = u64::from(reason == Reason::Drop(*r));
            assert_eq!(
                d.dropped(*r).packets,
                want,
                "{what}: drop reason {}",
                r.as_str()
            );
        }
        for r in PassReason::ALL {
            let want = u64::from(reason == Reason::Pass(*r));
            assert_eq!(
                d.passed(*r).packets,
                want,
                "{what}: pass reason {}",
                r.as_str()
            );
        }
        if let Reason::Did(e) = reason {
            assert!(
                d.event(e).packets >= 1,
                "{what}: event {} not counted",
                e.as_str()
            );
        }
    }

    /// Per-tunnel counter difference for tunnel `id`.
    pub fn tunnel_delta(&self, after: &Snapshot, id: u32) -> TunnelStats {
        let (a, b) = (&after.tunnels[&id], &self.tunnels[&id]);
        TunnelStats {
            from_client_packets: a.from_client_packets - b.from_client_packets,
            from_client_bytes: a.from_client_bytes - b.from_client_bytes,
            to_client_packets: a.to_client_packets - b.to_client_packets,
            to_client_bytes: a.to_client_bytes - b.to_client_bytes,
            drop_packets: a.drop_packets - b.drop_packets,
            drop_bytes: a.drop_bytes - b.drop_bytes,
        }
    }
}

/// An IPv6/UDP packet.
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), hop)
        .udp(40000, 5001)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// An ICMPv6 message of type `ty` (code 0) with hop limit 255, as neighbour discovery
/// sends them: `rest` follows the four header bytes (reserved field first).
pub fn icmp6_nd(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let (head, body) = rest.split_at(4);
    PacketBuilder::ipv6(src.octets(), dst.octets(), 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: ty,
            code_u8: 0,
            bytes5to8: head.try_into().unwrap(),
        })
        .write(&mut v, body)
        .unwrap();
    v
}

/// An ICMPv6 echo request or reply.
pub fn echo6(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, reply: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ipv6(src.octets(), dst.octets(), hop);
    let b = if reply {
        b.icmpv6_echo_reply(0x1234, 7)
    } else {
        b.icmpv6_echo_request(0x1234, 7)
    };
    b.write(&mut v, payload).unwrap();
    v
}

/// The PoP-wide rate limit `burst` then nothing: `burst` messages (or passes) go through,
/// the next is dropped, whatever the time (tests never depend on a clock).
pub fn only(burst: u32) -> RateLimit {
    RateLimit { per_s: 0, burst }
}

/// The ICMPv6 Time Exceeded (hop limit exceeded in transit) from `from` to `to` that
/// answers `offending`: its first 128 bytes quoted (all of it when shorter), hop limit 64.
pub fn time_exceeded6(from: Ipv6Addr, to: Ipv6Addr, offending: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv6(from.octets(), to.octets(), 64)
        .icmpv6(Icmpv6Type::TimeExceeded(
            etherparse::icmpv6::TimeExceededCode::HopLimitExceeded,
        ))
        .write(&mut v, &offending[..offending.len().min(128)])
        .unwrap();
    v
}

/// The ICMPv4 time exceeded (TTL exceeded in transit) from `from` to `to` that answers
/// `offending`: its first 64 bytes quoted (all of it when shorter), TTL 64, no DF, id 0.
pub fn time_exceeded4(from: Ipv4Addr, to: Ipv4Addr, offending: &[u8]) -> Vec<u8> {
    let quote = &offending[..offending.len().min(64)];
    let icmp = Icmpv4Header::with_checksum(
        Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit),
        quote,
    );
    let mut ip = Ipv4Header::new(
        (8 + quote.len()) as u16,
        64,
        IpNumber::ICMP,
        from.octets(),
        to.octets(),
    )
    .unwrap();
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = ip.to_bytes().to_vec();
    v.extend_from_slice(&icmp.to_bytes());
    v.extend_from_slice(quote);
    v
}

/// Asserts that the IPv6 packet `ip` carries an ICMPv6 message whose checksum etherparse
/// computes to the same value, and returns its type.
pub fn assert_icmp6_checksum(ip: &[u8], what: &str) -> Icmpv6Type {
    let sliced = etherparse::SlicedPacket::from_ip(ip).unwrap();
    let (Some(etherparse::NetSlice::Ipv6(h)), Some(etherparse::TransportSlice::Icmpv6(i))) =
        (sliced.net, sliced.transport)
    else {
        panic!("{what}: not ICMPv6 in IPv6: {}", hex(ip));
    };
    let computed = i
        .header()
        .icmp_type
        .calc_checksum(h.header().source(), h.header().destination(), i.payload())
        .unwrap();
    assert_eq!(i.checksum(), computed, "{what}: ICMPv6 checksum");
    i.icmp_type()
}

/// Asserts that the IPv4 packet `ip` has a correct header checksum and carries an ICMPv4
/// message with a correct checksum (both computed by etherparse); returns its type.
pub fn assert_icmp4_checksums(ip: &[u8], what: &str) -> Icmpv4Type {
    let (h, _) = Ipv4Header::from_slice(ip).unwrap();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "{what}: IPv4 checksum"
    );
    let sliced = etherparse::SlicedPacket::from_ip(ip).unwrap();
    let Some(etherparse::TransportSlice::Icmpv4(i)) = sliced.transport else {
        panic!("{what}: not ICMPv4: {}", hex(ip));
    };
    let computed = Icmpv4Header::with_checksum(i.icmp_type(), i.payload()).checksum;
    assert_eq!(i.checksum(), computed, "{what}: ICMPv4 checksum");
    i.icmp_type()
}

/// The outer IPv4 header the PoP is expected to write (DF, TTL 64, id 0).
pub fn outer_v4(src: Ipv4Addr, dst: Ipv4Addr, tos: u8, inner_len: usize) -> Ipv4Header {
    let mut h = Ipv4Header::new(
        inner_len as u16,
        64,
        IpNumber::IPV6,
        src.octets(),
        dst.octets(),
    )
    .unwrap();
    h.dont_fragment = true;
    h.identification = 0;
    h.dscp = Ipv4Dscp::try_new(tos >> 2).unwrap();
    h.ecn = Ipv4Ecn::try_new(tos & 3).unwrap();
    h.header_checksum = h.calc_header_checksum();
    h
}

pub fn ether(src: [u8; 6], dst: [u8; 6], ty: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut v = Ethernet2Header {
        source: src,
        destination: dst,
        ether_type: ty,
    }
    .to_bytes()
    .to_vec();
    v.extend_from_slice(payload);
    v
}

/// A proto-41 frame from a client to the PoP, as the ISP router delivers it.
pub fn from_client(client: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut ip = outer_v4(client, POP_V4, 0, inner.len());
    ip.identification = 0x4242;
    ip.time_to_live = 63;
    ip.header_checksum = ip.calc_header_checksum();
    let mut p = ip.to_bytes().to_vec();
    p.extend_from_slice(inner);
    ether(ISP_MAC, POP4_MAC, EtherType::IPV4, &p)
}

/// A native IPv6 frame from the internet side.
pub fn from_internet(inner: &[u8]) -> Vec<u8> {
    ether(INET_MAC, POP6_MAC, EtherType::IPV6, inner)
}

/// The same IPv6 packet with its hop limit decremented (no checksum covers it).
pub fn hop_decremented(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    v[7] -= 1;
    v
}

pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Asserts byte equality, showing both in hex.
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: output differs\n got  ({}): {}\n want ({}): {}",
        got.len(),
        hex(got),
        want.len(),
        hex(want)
    );
}

/// Seconds since 1970, as AYIYA epochs count.
pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

/// SHA-1 of an AYIYA tunnel's password: its key.
pub fn ayiya_key(password: &str) -> [u8; 20] {
    use sha1::Digest;
    sha1::Sha1::digest(password.as_bytes()).into()
}

/// An AYIYA UDP payload signed as the SixXS clients do, with the `sha1` crate (never with
/// the code under test): the key in the signature field, SHA-1 over everything, the
/// result in its place.
pub fn ayiya_payload(
    identity: Ipv6Addr,
    epoch: u32,
    op: u8,
    nh: u8,
    inner: &[u8],
    key: &[u8; 20],
) -> Vec<u8> {
    use sha1::Digest;
    let mut p = vec![0x41, 0x52, 0x10 | op, nh];
    p.extend_from_slice(&epoch.to_be_bytes());
    p.extend_from_slice(&identity.octets());
    p.extend_from_slice(key);
    p.extend_from_slice(inner);
    let sig: [u8; 20] = sha1::Sha1::digest(&p).into();
    p[24..44].copy_from_slice(&sig);
    p
}

/// A frame from `(addr, port)` to the PoP's AYIYA port.
pub fn from_ayiya_client((addr, port): (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(ISP_MAC, POP4_MAC)
        .ipv4(addr.octets(), POP_V4.octets(), 63)
        .udp(port, AYIYA_PORT)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// AYIYA tunnel `id` (link /64 and routed /48 as the fixture's others), endpoint as given
/// (`None`: not heard from yet), MTU 1428, keyed by `password`.
pub fn ayiya_spec(
    id: u32,
    state: State,
    endpoint: Option<(Ipv4Addr, u16)>,
    password: &str,
) -> TunnelSpec {
    TunnelSpec {
        id,
        kind: Kind::Ayiya,
        state,
        endpoint: match endpoint {
            Some((a, p)) => Endpoint::Udp4(std::net::SocketAddrV4::new(a, p)),
            None => Endpoint::unspecified(Kind::Ayiya),
        },
        link_prefix: Some(format!("2001:db8:10:{id:x}::/64").parse().unwrap()),
        routed_prefixes: vec![format!("2001:db8:{:x}::/48", 0x1000 + 0x100 * id)
            .parse()
            .unwrap()],
        mtu: 1428,
        keepalive: Some(60),
        ayiya_key: Some(ayiya_key(password)),
        ..spec(1)
    }
}

const ETH_P_ALL: u16 = 0x0003;

/// An AF_PACKET socket on one interface: writes frames into it, reads what it receives.
pub struct Wire(OwnedFd);

impl Wire {
    pub fn open(ifindex: u32) -> Self {
        // SAFETY: plain syscalls on a descriptor we own.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            );
            assert!(fd >= 0, "AF_PACKET socket");
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "binding the AF_PACKET socket");
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            Self(fd)
        }
    }

    pub fn send(&self, frame: &[u8]) {
        self.try_send(frame).expect("frame written");
    }

    /// Writes a frame; the error the kernel gave when it took none of it.
    pub fn try_send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: a buffer of the length passed.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        assert_eq!(n, frame.len() as isize, "frame written whole");
        Ok(())
    }

    /// The next received frame into `buf`, its length; `None` after 100 ms without one.
    pub fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: a buffer of the length passed.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then_some(n as usize)
    }

    /// The first received frame `pick` accepts within `wait`.
    pub fn expect(&self, wait: Duration, pick: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let end = Instant::now() + wait;
        let mut buf = vec![0u8; 2048];
        while Instant::now() < end {
            // SAFETY: a buffer of the length passed.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && pick(&buf[..n as usize]) {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }
}
