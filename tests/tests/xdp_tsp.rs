//! TSP's data paths through BPF_PROG_TEST_RUN: v6udpv4 (IPv6 right after a UDP header, on
//! the TSP port) and v4v6 (IPv4 in IPv6), both directions, with exact output bytes built
//! independently with etherparse, and the counter each packet lands in.
mod support;

use std::net::{Ipv4Addr, Ipv6Addr};

use broker_common::stats::{DropReason, Event, PassReason};
use broker_userspace::{
    dataplane,
    model::{Endpoint, TunnelSpec},
};
use etherparse::{
    icmpv4::DestUnreachableHeader, EtherType, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, IpNumber,
    Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder, UdpHeader,
};
use support::*;

const V4V6_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x06];

fn with_fixture(f: impl FnOnce(&Fixture) + Send + 'static) {
    on_thread(Fixture::with_tsp, f)
}

/// A v6udpv4 frame from `(addr, port)` to the PoP's TSP port, carrying `payload`.
fn from_udp_client((addr, port): (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(ISP_MAC, POP4_MAC)
        .ipv4(addr.octets(), POP_V4.octets(), 63)
        .udp(port, TSP_PORT)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// What the PoP sends to a v6udpv4 client: DF, TTL 64, UDP checksum 0.
fn to_udp_client((addr, port): (Ipv4Addr, u16), inner: &[u8]) -> Vec<u8> {
    let udp_len = (8 + inner.len()) as u16;
    // etherparse's defaults: DF, identification 0.
    let mut ip =
        Ipv4Header::new(udp_len, 64, IpNumber::UDP, POP_V4.octets(), addr.octets()).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = ip.to_bytes().to_vec();
    v.extend_from_slice(
        &UdpHeader {
            source_port: TSP_PORT,
            destination_port: port,
            length: udp_len,
            checksum: 0,
        }
        .to_bytes(),
    );
    v.extend_from_slice(inner);
    ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &v)
}

/// An IPv4 UDP packet.
fn udp4(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.octets(), dst.octets(), ttl)
        .udp(40000, 5001)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// The IPv6 header of a v4v6 packet carrying `inner_len` bytes.
fn v6_outer(src: Ipv6Addr, dst: Ipv6Addr, tc: u8, inner_len: usize) -> Vec<u8> {
    Ipv6Header {
        traffic_class: tc,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: inner_len as u16,
        next_header: IpNumber::IPV4,
        hop_limit: 64,
        source: src.octets(),
        destination: dst.octets(),
    }
    .to_bytes()
    .to_vec()
}

/// A v4v6 frame from the client to the PoP.
fn from_v4v6_client(src: Ipv6Addr, inner: &[u8]) -> Vec<u8> {
    let mut v = v6_outer(src, POP_V6, 0, inner.len());
    v.extend_from_slice(inner);
    ether(V4V6_MAC, POP6_MAC, EtherType::IPV6, &v)
}

/// The same IPv4 packet with its TTL decremented and the checksum recomputed.
fn ttl_decremented(p: &[u8]) -> Vec<u8> {
    let (mut ip, rest) = Ipv4Header::from_slice(p).unwrap();
    ip.time_to_live -= 1;
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = ip.to_bytes().to_vec();
    v.extend_from_slice(rest);
    v
}

#[test]
fn v6udpv4_decap_forwards_the_inner_ipv6() {
    with_fixture(|fx| {
        let inner = udp6(link_addr(5, 2), INET_HOST, 64, b"through the NAT");
        let want = ether(
            POP6_MAC,
            INET_MAC,
            EtherType::IPV6,
            &hop_decremented(&inner),
        );
        let before = fx.snapshot();
        check(
            fx,
            "v6udpv4 decap",
            &from_udp_client(UDP_CLIENT, &inner),
            fx.eth4,
            XDP_REDIRECT,
            Reason::Did(Event::Decap),
            Some(&want),
        );
        let t = before.tunnel_delta(&fx.snapshot(), 5);
        assert_eq!(
            (t.from_client_packets, t.from_client_bytes),
            (1, inner.len() as u64)
        );
    });
}

#[test]
fn v6udpv4_encap_sends_to_the_registered_address_and_port() {
    with_fixture(|fx| {
        for dst in [link_addr(5, 2), routed_addr(5, 3)] {
            let inner = udp6(INET_HOST, dst, 50, b"to the NATed client");
            let want = to_udp_client(UDP_CLIENT, &hop_decremented(&inner));
            let before = fx.snapshot();
            let out = check(
                fx,
                "v6udpv4 encap",
                &from_internet(&inner),
                fx.eth6,
                XDP_REDIRECT,
                Reason::Did(Event::Encap),
                Some(&want),
            );
            let (ip, _) = Ipv4Header::from_slice(&out[14..]).unwrap();
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            let t = before.tunnel_delta(&fx.snapshot(), 5);
            assert_eq!(
                (t.to_client_packets, t.to_client_bytes),
                (1, inner.len() as u64)
            );
        }
    });
}

#[test]
fn tsp_control_goes_to_the_kernel_and_strangers_are_dropped() {
    with_fixture(|fx| {
        let data = udp6(link_addr(5, 2), INET_HOST, 64, b"x");
        let mut control = vec![0xf0, 0, 0, 0xf0, 0, 0, 0, 1];
        control.extend_from_slice(b"VERSION=2.0.2\r\n");
        let mut little_endian = control.clone();
        little_endian[..4].copy_from_slice(&[0x01, 0x01, 0, 0xf0]);
        let passes = [
            ("TSP control", control.clone(), PassReason::TspControl),
            (
                "TSP control, old byte order",
                little_endian,
                PassReason::Unparsed,
            ),
            ("empty datagram", Vec::new(), PassReason::Unparsed),
        ];
        for (what, payload, reason) in passes {
            // From the tunnel's own client and from anyone else alike.
            for client in [UDP_CLIENT, (Ipv4Addr::new(198, 51, 100, 51), 1234)] {
                let frame = from_udp_client(client, &payload);
                check(
                    fx,
                    what,
                    &frame,
                    fx.eth4,
                    XDP_PASS,
                    Reason::Pass(reason),
                    Some(&frame),
                );
            }
        }
        for (what, client) in [
            ("another address", (Ipv4Addr::new(198, 51, 100, 51), 40000)),
            ("another port (a new NAT mapping)", (UDP_CLIENT.0, 40001)),
        ] {
            check(
                fx,
                what,
                &from_udp_client(client, &data),
                fx.eth4,
                XDP_DROP,
                Reason::Drop(DropReason::UnknownEndpoint),
                None,
            );
        }
        // Another UDP port on the PoP is not ours at all.
        let mut other = Vec::new();
        PacketBuilder::ethernet2(ISP_MAC, POP4_MAC)
            .ipv4(UDP_CLIENT.0.octets(), POP_V4.octets(), 63)
            .udp(UDP_CLIENT.1, 3654)
            .write(&mut other, &data)
            .unwrap();
        check(
            fx,
            "another port",
            &other,
            fx.eth4,
            XDP_PASS,
            Reason::Pass(PassReason::NotTunnel),
            Some(&other),
        );
    });
}

#[test]
fn v6udpv4_defects_are_counted_drops() {
    with_fixture(|fx| {
        let good = from_udp_client(UDP_CLIENT, &udp6(link_addr(5, 2), INET_HOST, 64, b"x"));
        let mut bad_len = good.clone();
        bad_len[38..40].copy_from_slice(&9u16.to_be_bytes());
        let spoofed = from_udp_client(UDP_CLIENT, &udp6(link_addr(1, 2), INET_HOST, 64, b"x"));
        let mut short_inner = udp6(link_addr(5, 2), INET_HOST, 64, b"x");
        short_inner[5] += 1; // payload length one more than carried
        let bad_inner = from_udp_client(UDP_CLIENT, &short_inner);
        let mut unreachable = Vec::new();
        PacketBuilder::ipv6(link_addr(5, 2).octets(), INET_HOST.octets(), 1)
            .icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(
                etherparse::icmpv6::DestUnreachableCode::Port,
            ))
            .write(&mut unreachable, &[0x60; 48])
            .unwrap();
        let expired = from_udp_client(UDP_CLIENT, &unreachable);
        let to_pop = from_udp_client(
            UDP_CLIENT,
            &udp6(link_addr(5, 2), link_addr(5, 1), 64, b"x"),
        );
        let solicitation = from_udp_client(
            UDP_CLIENT,
            &icmp6_nd(
                "fe80::2".parse().unwrap(),
                "ff02::2".parse().unwrap(),
                133,
                &[0; 4],
            ),
        );
        for (what, frame, reason) in [
            ("UDP length", bad_len, DropReason::BadUdpHeader),
            (
                "inner source of tunnel 1",
                spoofed,
                DropReason::SpoofedSource,
            ),
            (
                "router solicitation from the client's kernel",
                solicitation,
                DropReason::LinkLocal,
            ),
            ("inner length", bad_inner, DropReason::BadInnerHeader),
            (
                "hop limit 1, an ICMPv6 error",
                expired,
                DropReason::HopLimitExceeded,
            ),
            ("UDP to the PoP's ::1", to_pop, DropReason::PopAddress),
        ] {
            let before = fx.snapshot();
            check(
                fx,
                what,
                &frame,
                fx.eth4,
                XDP_DROP,
                Reason::Drop(reason),
                None,
            );
            if reason != DropReason::BadUdpHeader {
                assert_eq!(
                    before.tunnel_delta(&fx.snapshot(), 5).drop_packets,
                    1,
                    "{what}"
                );
            }
        }
    });
}

#[test]
fn v6udpv4_keepalive_echo_is_answered_through_the_tunnel() {
    with_fixture(|fx| {
        let req = echo6(link_addr(5, 2), link_addr(5, 1), 64, false, b"keepalive");
        let frame = from_udp_client(UDP_CLIENT, &req);
        let reply = echo6(link_addr(5, 1), link_addr(5, 2), 64, true, b"keepalive");
        // The request's IPv4 header, addresses swapped, TTL 64, checksum redone; UDP
        // ports swapped, checksum 0.
        let (mut ip, _) = Ipv4Header::from_slice(&frame[14..]).unwrap();
        std::mem::swap(&mut ip.source, &mut ip.destination);
        ip.time_to_live = 64;
        ip.header_checksum = ip.calc_header_checksum();
        let mut want = ip.to_bytes().to_vec();
        want.extend_from_slice(
            &UdpHeader {
                source_port: TSP_PORT,
                destination_port: UDP_CLIENT.1,
                length: (8 + reply.len()) as u16,
                checksum: 0,
            }
            .to_bytes(),
        );
        want.extend_from_slice(&reply);
        let want = ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &want);
        check(
            fx,
            "keepalive",
            &frame,
            fx.eth4,
            XDP_TX,
            Reason::Did(Event::EchoReply),
            Some(&want),
        );
    });
}

#[test]
fn v6udpv4_over_the_mtu_gets_packet_too_big() {
    with_fixture(|fx| {
        let inner = udp6(INET_HOST, link_addr(5, 2), 64, &[1; 1473 - 48]);
        let out = check(
            fx,
            "1473 bytes into MTU 1472",
            &from_internet(&inner),
            fx.eth6,
            XDP_TX,
            Reason::Did(Event::PacketTooBig),
            None,
        );
        // ICMPv6 type 2, MTU 1472, from the tunnel's ::1.
        assert_eq!(&out[22..38], &link_addr(5, 1).octets());
        assert_eq!(out[54], 2);
        assert_eq!(&out[58..62], &1472u32.to_be_bytes());
    });
}

#[test]
fn a_silent_tunnel_is_woken_by_its_client_but_sends_nothing() {
    with_fixture(|fx| {
        // Tunnel 7 is down for silence: its client's packets still get through...
        let inner = udp6(link_addr(7, 2), INET_HOST, 64, b"I'm back");
        let before = fx.snapshot();
        check(
            fx,
            "from the silent client",
            &from_udp_client(SLEEPY_CLIENT, &inner),
            fx.eth4,
            XDP_REDIRECT,
            Reason::Did(Event::Decap),
            None,
        );
        assert_eq!(
            before.tunnel_delta(&fx.snapshot(), 7).from_client_packets,
            1
        );
        // ...but nothing goes towards it until the controller marks it up.
        check(
            fx,
            "to the silent client",
            &from_internet(&udp6(INET_HOST, link_addr(7, 2), 64, b"x")),
            fx.eth6,
            XDP_DROP,
            Reason::Drop(DropReason::TunnelDown),
            None,
        );
        // A tunnel the operator set down (no liveness) wakes for nobody.
        check(
            fx,
            "from tunnel 3, down",
            &from_client(client_v4(3), &udp6(link_addr(3, 2), INET_HOST, 64, b"x")),
            fx.eth4,
            XDP_DROP,
            Reason::Drop(DropReason::TunnelDown),
            None,
        );
    });
}

#[test]
fn v4v6_decap_forwards_the_inner_ipv4() {
    with_fixture(|fx| {
        let inner = udp4(V4V6_INNER, INET4_HOST, 64, b"IPv4 over IPv6");
        let want = ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &ttl_decremented(&inner));
        let before = fx.snapshot();
        let out = check(
            fx,
            "v4v6 decap",
            &from_v4v6_client(V4V6_CLIENT, &inner),
            fx.eth6,
            XDP_REDIRECT,
            Reason::Did(Event::Decap),
            Some(&want),
        );
        let (ip, _) = Ipv4Header::from_slice(&out[14..]).unwrap();
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        let t = before.tunnel_delta(&fx.snapshot(), 6);
        assert_eq!(
            (t.from_client_packets, t.from_client_bytes),
            (1, inner.len() as u64)
        );
    });
}

#[test]
fn v4v6_encap_wraps_ipv4_for_the_client() {
    with_fixture(|fx| {
        let mut inner = udp4(INET4_HOST, V4V6_INNER, 60, b"to the IPv6-only client");
        // TOS 0xb8 (EF), carried over as the traffic class.
        inner[1] = 0xb8;
        let (mut h, _) = Ipv4Header::from_slice(&inner).unwrap();
        h.header_checksum = h.calc_header_checksum();
        inner[..20].copy_from_slice(&h.to_bytes());
        let fwd = ttl_decremented(&inner);
        let mut want = v6_outer(POP_V6, V4V6_CLIENT, 0xb8, fwd.len());
        want.extend_from_slice(&fwd);
        let want = ether(POP6_MAC, V4V6_MAC, EtherType::IPV6, &want);
        let before = fx.snapshot();
        check(
            fx,
            "v4v6 encap",
            &ether(ISP_MAC, POP4_MAC, EtherType::IPV4, &inner),
            fx.eth4,
            XDP_REDIRECT,
            Reason::Did(Event::Encap),
            Some(&want),
        );
        let t = before.tunnel_delta(&fx.snapshot(), 6);
        assert_eq!(
            (t.to_client_packets, t.to_client_bytes),
            (1, inner.len() as u64)
        );
    });
}

#[test]
fn v4v6_keepalive_echo_to_the_pop_is_answered() {
    with_fixture(|fx| {
        let mut req = Vec::new();
        PacketBuilder::ipv4(V4V6_INNER.octets(), V4V6_GATEWAY.octets(), 64)
            .icmpv4_echo_request(0x77, 3)
            .write(&mut req, b"alive?")
            .unwrap();
        let frame = from_v4v6_client(V4V6_CLIENT, &req);
        let (mut ip, _) = Ipv4Header::from_slice(&req).unwrap();
        std::mem::swap(&mut ip.source, &mut ip.destination);
        ip.time_to_live = 64;
        ip.header_checksum = ip.calc_header_checksum();
        let icmp = Icmpv4Header::with_checksum(
            Icmpv4Type::EchoReply(IcmpEchoHeader { id: 0x77, seq: 3 }),
            b"alive?",
        );
        let mut reply = ip.to_bytes().to_vec();
        reply.extend_from_slice(&icmp.to_bytes());
        reply.extend_from_slice(b"alive?");
        let mut want = v6_outer(POP_V6, V4V6_CLIENT, 0, reply.len());
        want.extend_from_slice(&reply);
        // Back where it came from.
        let want = ether(POP6_MAC, V4V6_MAC, EtherType::IPV6, &want);
        check(
            fx,
            "v4v6 keepalive",
            &frame,
            fx.eth6,
            XDP_TX,
            Reason::Did(Event::EchoReply),
            Some(&want),
        );
    });
}

#[test]
fn v4v6_over_the_mtu_gets_fragmentation_needed_or_a_counted_drop() {
    with_fixture(|fx| {
        let big = udp4(INET4_HOST, V4V6_INNER, 60, &[3; 1461 - 28]);
        assert_eq!(big.len(), 1461);
        let icmp = Icmpv4Header::with_checksum(
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1460,
            }),
            &big[..64],
        );
        let mut ip = Ipv4Header::new(
            (8 + 64) as u16,
            64,
            IpNumber::ICMP,
            POP_V4.octets(),
            INET4_HOST.octets(),
        )
        .unwrap();
        ip.dont_fragment = false;
        ip.header_checksum = ip.calc_header_checksum();
        let mut want = ip.to_bytes().to_vec();
        want.extend_from_slice(&icmp.to_bytes());
        want.extend_from_slice(&big[..64]);
        let want = ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &want);
        check(
            fx,
            "1461 bytes with DF into MTU 1460",
            &ether(ISP_MAC, POP4_MAC, EtherType::IPV4, &big),
            fx.eth4,
            XDP_TX,
            Reason::Did(Event::PacketTooBig),
            Some(&want),
        );
        // Without DF it would have to be fragmented, which the PoP does not do.
        let mut no_df = big.clone();
        let (mut h, _) = Ipv4Header::from_slice(&no_df).unwrap();
        h.dont_fragment = false;
        h.header_checksum = h.calc_header_checksum();
        no_df[..20].copy_from_slice(&h.to_bytes());
        check(
            fx,
            "without DF",
            &ether(ISP_MAC, POP4_MAC, EtherType::IPV4, &no_df),
            fx.eth4,
            XDP_DROP,
            Reason::Drop(DropReason::TooBigNoDf),
            None,
        );
        // At the MTU it goes through.
        check(
            fx,
            "at the MTU",
            &ether(
                ISP_MAC,
                POP4_MAC,
                EtherType::IPV4,
                &udp4(INET4_HOST, V4V6_INNER, 60, &[3; 1460 - 28]),
            ),
            fx.eth4,
            XDP_REDIRECT,
            Reason::Did(Event::Encap),
            None,
        );
    });
}

#[test]
fn v4v6_defects_are_counted_drops() {
    with_fixture(|fx| {
        let good = udp4(V4V6_INNER, INET4_HOST, 64, b"x");
        let mut bad_sum = good.clone();
        bad_sum[10] ^= 0xff;
        let stranger: Ipv6Addr = "2001:db8:ffff::7".parse().unwrap();
        for (what, frame, reason) in [
            (
                "inner source not the client's",
                from_v4v6_client(
                    V4V6_CLIENT,
                    &udp4("203.0.113.3".parse().unwrap(), INET4_HOST, 64, b"x"),
                ),
                DropReason::SpoofedSource,
            ),
            (
                "inner checksum",
                from_v4v6_client(V4V6_CLIENT, &bad_sum),
                DropReason::BadInnerHeader,
            ),
            (
                "TTL 1, an ICMP error",
                from_v4v6_client(V4V6_CLIENT, &unreachable4(V4V6_INNER, INET4_HOST, 1)),
                DropReason::HopLimitExceeded,
            ),
            (
                "unknown client",
                from_v4v6_client(stranger, &good),
                DropReason::UnknownEndpoint,
            ),
        ] {
            check(
                fx,
                what,
                &frame,
                fx.eth6,
                XDP_DROP,
                Reason::Drop(reason),
                None,
            );
        }
        // Not ours: a pool address without a tunnel, next header 4 to another address.
        let unassigned = ether(
            ISP_MAC,
            POP4_MAC,
            EtherType::IPV4,
            &udp4(INET4_HOST, "203.0.113.77".parse().unwrap(), 64, b"x"),
        );
        let mut elsewhere = v6_outer(V4V6_CLIENT, INET_HOST, 0, good.len());
        elsewhere.extend_from_slice(&good);
        let elsewhere = ether(V4V6_MAC, POP6_MAC, EtherType::IPV6, &elsewhere);
        for (what, frame, ingress) in [
            ("unassigned pool address", unassigned, fx.eth4),
            ("IPv4-in-IPv6 to another host", elsewhere, fx.eth6),
        ] {
            check(
                fx,
                what,
                &frame,
                ingress,
                XDP_PASS,
                Reason::Pass(PassReason::NotTunnel),
                Some(&frame),
            );
        }
    });
}

#[test]
fn every_truncation_of_the_tsp_paths_gets_a_counted_verdict() {
    with_fixture(|fx| {
        let cases = [
            (
                "v6udpv4 decap",
                from_udp_client(UDP_CLIENT, &udp6(link_addr(5, 2), INET_HOST, 64, b"cut")),
                fx.eth4,
            ),
            (
                "v4v6 decap",
                from_v4v6_client(V4V6_CLIENT, &udp4(V4V6_INNER, INET4_HOST, 64, b"cut")),
                fx.eth6,
            ),
            (
                "v4v6 encap",
                ether(
                    ISP_MAC,
                    POP4_MAC,
                    EtherType::IPV4,
                    &udp4(INET4_HOST, V4V6_INNER, 64, b"cut"),
                ),
                fx.eth4,
            ),
        ];
        for (what, frame, ingress) in cases {
            assert_every_truncation_counted(fx, what, &frame, ingress);
        }
    });
}

/// An ICMPv4 port unreachable (an error) quoting a few bytes.
fn unreachable4(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.octets(), dst.octets(), ttl)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(&mut v, &[0x45; 28])
        .unwrap();
    v
}

/// A UDP probe of `size` bytes (traceroute's), TTL `ttl`.
fn probe4(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.octets(), dst.octets(), ttl)
        .udp(40001, 33434)
        .write(&mut v, &vec![0x40; size - 28])
        .unwrap();
    v
}

#[test]
fn v6udpv4_hop_limit_running_out_gets_time_exceeded_through_the_tunnel() {
    with_fixture(|fx| {
        for size in [80, 1000] {
            let mut probe = Vec::new();
            PacketBuilder::ipv6(link_addr(5, 2).octets(), INET_HOST.octets(), 1)
                .udp(40001, 33434)
                .write(&mut probe, &vec![0x40; size - 48])
                .unwrap();
            let te = time_exceeded6(link_addr(5, 1), link_addr(5, 2), &probe);
            // In UDP from the TSP port to the client's, as everything sent to it.
            let want = to_udp_client(UDP_CLIENT, &te);
            let before = fx.snapshot();
            let out = check(
                fx,
                "hop limit 1 through the NAT",
                &from_udp_client(UDP_CLIENT, &probe),
                fx.eth4,
                XDP_TX,
                Reason::Did(Event::TimeExceeded),
                Some(&want),
            );
            assert_icmp6_checksum(&out[14 + 28..], "v6udpv4 Time Exceeded");
            assert_eq!(before.tunnel_delta(&fx.snapshot(), 5).drop_packets, 1);
        }
    });
}

#[test]
fn v4v6_ttl_running_out_gets_time_exceeded_both_ways() {
    with_fixture(|fx| {
        // From the client: from the PoP's inner address, in IPv6 back to the client.
        for (ttl, size) in [(1, 60), (0, 61), (1, 500)] {
            let what = format!("TTL {ttl}, {size} bytes, from the client");
            let probe = probe4(V4V6_INNER, INET4_HOST, ttl, size);
            let te = time_exceeded4(V4V6_GATEWAY, V4V6_INNER, &probe);
            let mut want = v6_outer(POP_V6, V4V6_CLIENT, 0, te.len());
            want.extend_from_slice(&te);
            let want = ether(POP6_MAC, V4V6_MAC, EtherType::IPV6, &want);
            let before = fx.snapshot();
            let out = check(
                fx,
                &what,
                &from_v4v6_client(V4V6_CLIENT, &probe),
                fx.eth6,
                XDP_TX,
                Reason::Did(Event::TimeExceeded),
                Some(&want),
            );
            assert_eq!(
                assert_icmp4_checksums(&out[14 + 40..], &what),
                Icmpv4Type::TimeExceeded(
                    etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit
                )
            );
            assert_eq!(before.tunnel_delta(&fx.snapshot(), 6).drop_packets, 1);
        }
        // Towards the client: from the PoP's IPv4, natively.
        for (ttl, size) in [(1, 60), (1, 300)] {
            let what = format!("TTL {ttl}, {size} bytes, towards the client");
            let probe = probe4(INET4_HOST, V4V6_INNER, ttl, size);
            let te = time_exceeded4(POP_V4, INET4_HOST, &probe);
            let want = ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &te);
            let out = check(
                fx,
                &what,
                &ether(ISP_MAC, POP4_MAC, EtherType::IPV4, &probe),
                fx.eth4,
                XDP_TX,
                Reason::Did(Event::TimeExceeded),
                Some(&want),
            );
            assert_icmp4_checksums(&out[14..], &what);
        }
    });
}

#[test]
fn v4v6_no_time_exceeded_where_rfc_1122_says_no() {
    with_fixture(|fx| {
        let mut later_fragment = probe4(INET4_HOST, V4V6_INNER, 1, 60);
        let (mut h, _) = Ipv4Header::from_slice(&later_fragment).unwrap();
        h.dont_fragment = false;
        h.fragment_offset = etherparse::IpFragOffset::try_new(100).unwrap();
        h.header_checksum = h.calc_header_checksum();
        later_fragment[..20].copy_from_slice(&h.to_bytes());
        let cases = [
            (
                "an ICMP error from the client",
                from_v4v6_client(V4V6_CLIENT, &unreachable4(V4V6_INNER, INET4_HOST, 1)),
                fx.eth6,
            ),
            (
                "from the client to multicast",
                from_v4v6_client(
                    V4V6_CLIENT,
                    &probe4(V4V6_INNER, "224.0.0.251".parse().unwrap(), 1, 60),
                ),
                fx.eth6,
            ),
            (
                "an ICMP error towards the client",
                ether(
                    ISP_MAC,
                    POP4_MAC,
                    EtherType::IPV4,
                    &unreachable4(INET4_HOST, V4V6_INNER, 1),
                ),
                fx.eth4,
            ),
            (
                "a later fragment towards the client",
                ether(ISP_MAC, POP4_MAC, EtherType::IPV4, &later_fragment),
                fx.eth4,
            ),
        ];
        for (what, frame, ingress) in cases {
            check_tunnel_drop(fx, what, &frame, ingress, DropReason::HopLimitExceeded, 6);
        }
        // Nor any ICMPv4 to an address that cannot take one.
        for src in ["127.0.0.1", "0.0.0.0", "224.0.0.5", "255.255.255.255"] {
            let src: Ipv4Addr = src.parse().unwrap();
            let mut big = udp4(src, V4V6_INNER, 60, &[3; 1461 - 28]);
            let (mut h, _) = Ipv4Header::from_slice(&big).unwrap();
            h.dont_fragment = true;
            h.header_checksum = h.calc_header_checksum();
            big[..20].copy_from_slice(&h.to_bytes());
            for (what, p) in [
                ("fragmentation needed", big),
                ("time exceeded", probe4(src, V4V6_INNER, 1, 60)),
            ] {
                check(
                    fx,
                    &format!("{what} to {src}"),
                    &ether(ISP_MAC, POP4_MAC, EtherType::IPV4, &p),
                    fx.eth4,
                    XDP_DROP,
                    Reason::Drop(DropReason::IcmpBadSource),
                    None,
                );
            }
        }
    });
}

/// [`Fixture::with_tsp`] with three passes for neighbour resolution, never refilled.
fn tsp_three_neighbours() -> Fixture {
    let mut fx = Fixture::with_options(dataplane::Options {
        neighbour_limit: only(3),
        ..dataplane::Options::new("test")
    });
    for spec in tsp_specs() {
        fx.dp.upsert(&spec).unwrap();
    }
    fx
}

#[test]
fn v4v6_neighbour_resolution_is_rate_limited() {
    on_thread(tsp_three_neighbours, |fx| {
        // Hosts of eth4's 192.0.2.0/24 nobody resolved.
        for (host, want) in [
            (10, None),
            (11, None),
            (12, None),
            (13, Some(DropReason::NeighbourRateLimited)),
            (14, Some(DropReason::NeighbourRateLimited)),
        ] {
            let frame = from_v4v6_client(
                V4V6_CLIENT,
                &udp4(V4V6_INNER, Ipv4Addr::new(192, 0, 2, host), 64, b"scan"),
            );
            let (action, reason) = match want {
                None => (XDP_PASS, Reason::Pass(PassReason::NoNeighbour)),
                Some(r) => (XDP_DROP, Reason::Drop(r)),
            };
            check(
                fx,
                &format!("192.0.2.{host}"),
                &frame,
                fx.eth6,
                action,
                reason,
                None,
            );
        }
    });
}

/// The lookup hints (`SLOT_HINTS`) of v6udpv4 endpoints, v4v6 endpoints and v4v6 routes
/// follow their tunnels as the maps do: a client's new NAT port, a v4v6 client's new
/// address or inner IPv4 leave the hinted old one unknown.
#[test]
fn hinted_tsp_endpoints_and_routes_follow_their_tunnels() {
    std::thread::spawn(|| {
        let mut fx = Fixture::with_tsp();
        let fx = &mut fx;
        let action = |fx: &Fixture, frame: &[u8], ingress: u32| {
            fx.dp.test_run(frame, ingress, 1).expect("test run").action
        };
        let v6in = udp6(link_addr(5, 2), INET_HOST, 64, b"x");
        let v4in = udp4(V4V6_INNER, INET4_HOST, 64, b"x");
        let to_inner = |inner4: Ipv4Addr| {
            ether(
                ISP_MAC,
                POP4_MAC,
                EtherType::IPV4,
                &udp4(INET4_HOST, inner4, 60, b"x"),
            )
        };
        // Hinted: each path twice.
        for _ in 0..2 {
            assert_eq!(
                action(fx, &from_udp_client(UDP_CLIENT, &v6in), fx.eth4),
                XDP_REDIRECT
            );
            assert_eq!(
                action(fx, &from_v4v6_client(V4V6_CLIENT, &v4in), fx.eth6),
                XDP_REDIRECT
            );
            assert_eq!(action(fx, &to_inner(V4V6_INNER), fx.eth4), XDP_REDIRECT);
        }
        let specs = tsp_specs();
        // The NAT gave tunnel 5's client a new port.
        let new_port = (UDP_CLIENT.0, UDP_CLIENT.1 + 1);
        let moved5 = TunnelSpec {
            endpoint: Endpoint::Udp4(std::net::SocketAddrV4::new(new_port.0, new_port.1)),
            ..specs[0].clone()
        };
        fx.dp.upsert(&moved5).unwrap();
        let unknown = Reason::Drop(DropReason::UnknownEndpoint);
        let frame = from_udp_client(UDP_CLIENT, &v6in);
        check(
            fx,
            "the port tunnel 5 left",
            &frame,
            fx.eth4,
            XDP_DROP,
            unknown,
            None,
        );
        assert_eq!(
            action(fx, &from_udp_client(new_port, &v6in), fx.eth4),
            XDP_REDIRECT
        );
        // Tunnel 6's client moved to another IPv6 and another inner IPv4.
        let new_v6: Ipv6Addr = "2001:db8:ffff::66".parse().unwrap();
        let new_v4 = Ipv4Addr::new(203, 0, 113, 3);
        let moved6 = TunnelSpec {
            endpoint: Endpoint::Ipv6(new_v6),
            client_v4: Some(new_v4),
            ..specs[1].clone()
        };
        fx.dp.upsert(&moved6).unwrap();
        let frame = from_v4v6_client(V4V6_CLIENT, &v4in);
        check(
            fx,
            "the address tunnel 6 left",
            &frame,
            fx.eth6,
            XDP_DROP,
            unknown,
            None,
        );
        let frame = to_inner(V4V6_INNER);
        let not_tunnel = Reason::Pass(PassReason::NotTunnel);
        let what = "the inner IPv4 tunnel 6 gave up";
        check(fx, what, &frame, fx.eth4, XDP_PASS, not_tunnel, None);
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}
