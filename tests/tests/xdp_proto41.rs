//! The proto-41 data plane through BPF_PROG_TEST_RUN: every branch, exact output bytes
//! (built independently with etherparse), and the counter each packet lands in.
//!
//! Each test runs on its own thread in a private network namespace with two veths (eth4:
//! IPv4 uplink, eth6: IPv6 side), static neighbours and routes, so `bpf_fib_lookup`
//! answers deterministically.
mod support;

use broker_common::{
    maps::RateLimit,
    stats::{DropReason, Event, PassReason},
};
use broker_userspace::dataplane;
use etherparse::{EtherType, Icmpv6Type, PacketBuilder};
use support::*;

/// Runs `f` with a fresh fixture on its own thread.
fn with_fixture(f: impl FnOnce(&Fixture) + Send + 'static) {
    on_thread(Fixture::new, f)
}

#[test]
fn decap_forwards_native_ipv6_with_hop_limit_decremented() {
    with_fixture(|fx| {
        for (what, src) in [
            ("from the link ::2", link_addr(1, 2)),
            ("from the routed /48", routed_addr(1, 9)),
        ] {
            let inner = udp6(src, INET_HOST, 64, b"decap me");
            let frame = from_client(client_v4(1), &inner);
            let want = ether(
                POP6_MAC,
                INET_MAC,
                EtherType::IPV6,
                &hop_decremented(&inner),
            );
            let before = fx.snapshot();
            check(
                fx,
                what,
                &frame,
                fx.eth4,
                XDP_REDIRECT,
                Reason::Did(Event::Decap),
                Some(&want),
            );
            let t = before.tunnel_delta(&fx.snapshot(), 1);
            assert_eq!(
                (t.from_client_packets, t.from_client_bytes),
                (1, inner.len() as u64)
            );
            assert_eq!((t.to_client_packets, t.drop_packets), (0, 0));
        }
    });
}

#[test]
fn encap_adds_a_checksummed_ipv4_header() {
    with_fixture(|fx| {
        for (what, dst, tc) in [
            ("to the client's ::2", link_addr(1, 2), 0u8),
            (
                "to the routed /48, traffic class copied",
                routed_addr(1, 77),
                0xb8u8,
            ),
        ] {
            let mut inner = udp6(INET_HOST, dst, 50, b"encap me");
            inner[0] = 0x60 | (tc >> 4);
            inner[1] = (tc << 4) | (inner[1] & 0x0f);
            let frame = from_internet(&inner);
            let fwd = hop_decremented(&inner);
            let mut want = outer_v4(POP_V4, client_v4(1), tc, fwd.len())
                .to_bytes()
                .to_vec();
            want.extend_from_slice(&fwd);
            let want = ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &want);
            let before = fx.snapshot();
            let out = check(
                fx,
                what,
                &frame,
                fx.eth6,
                XDP_REDIRECT,
                Reason::Did(Event::Encap),
                Some(&want),
            );
            // The outer checksum, verified independently of the expected bytes.
            let (ip, _) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{what}");
            let t = before.tunnel_delta(&fx.snapshot(), 1);
            assert_eq!(
                (t.to_client_packets, t.to_client_bytes),
                (1, inner.len() as u64)
            );
        }
    });
}

#[test]
fn client_to_client_is_encapsulated_into_the_other_tunnel() {
    with_fixture(|fx| {
        let inner = udp6(link_addr(1, 2), link_addr(2, 2), 64, b"hairpin");
        let frame = from_client(client_v4(1), &inner);
        let fwd = hop_decremented(&inner);
        let mut want = outer_v4(POP_V4, client_v4(2), 0, fwd.len())
            .to_bytes()
            .to_vec();
        want.extend_from_slice(&fwd);
        let want = ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &want);
        let before = fx.snapshot();
        check(
            fx,
            "hairpin",
            &frame,
            fx.eth4,
            XDP_REDIRECT,
            Reason::Did(Event::Encap),
            Some(&want),
        );
        let after = fx.snapshot();
        assert_eq!(before.tunnel_delta(&after, 1).from_client_packets, 1);
        assert_eq!(before.tunnel_delta(&after, 2).to_client_packets, 1);
    });
}

#[test]
fn oversized_packet_gets_packet_too_big_with_the_tunnel_mtu() {
    with_fixture(|fx| {
        // Tunnel 2 has MTU 1280: a 1300-byte packet is too big.
        let inner = udp6(INET_HOST, link_addr(2, 2), 64, &[0xab; 1300 - 48]);
        assert_eq!(inner.len(), 1300);
        let frame = from_internet(&inner);
        let mut icmp = Vec::new();
        PacketBuilder::ipv6(link_addr(2, 1).octets(), INET_HOST.octets(), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut icmp, &inner[..128])
            .unwrap();
        let want = ether(POP6_MAC, INET_MAC, EtherType::IPV6, &icmp);
        let before = fx.snapshot();
        let out = check(
            fx,
            "too big",
            &frame,
            fx.eth6,
            XDP_TX,
            Reason::Did(Event::PacketTooBig),
            Some(&want),
        );
        // Checksum verified by etherparse on the output itself.
        let sliced = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
        match sliced.transport {
            Some(etherparse::TransportSlice::Icmpv6(i)) => {
                assert_eq!(i.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1280 });
                let etherparse::NetSlice::Ipv6(ip) = sliced.net.unwrap() else {
                    panic!("not IPv6")
                };
                let computed = i
                    .header()
                    .icmp_type
                    .calc_checksum(ip.header().source(), ip.header().destination(), i.payload())
                    .unwrap();
                assert_eq!(i.checksum(), computed);
            }
            other => panic!("not ICMPv6: {other:?}"),
        }
        let t = before.tunnel_delta(&fx.snapshot(), 2);
        assert_eq!((t.drop_packets, t.to_client_packets), (1, 0));

        // At exactly the MTU it is forwarded.
        let inner = udp6(INET_HOST, link_addr(2, 2), 64, &[0xab; 1280 - 48]);
        check(
            fx,
            "at the MTU",
            &from_internet(&inner),
            fx.eth6,
            XDP_REDIRECT,
            Reason::Did(Event::Encap),
            None,
        );
    });
}

#[test]
fn no_packet_too_big_in_answer_to_an_icmp_error() {
    with_fixture(|fx| {
        let mut inner = Vec::new();
        PacketBuilder::ipv6(INET_HOST.octets(), link_addr(2, 2).octets(), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1500 })
            .write(&mut inner, &[0u8; 1300])
            .unwrap();
        check(
            fx,
            "ICMPv6 error over the MTU",
            &from_internet(&inner),
            fx.eth6,
            XDP_DROP,
            Reason::Drop(DropReason::TooBigIcmpError),
            None,
        );
    });
}

#[test]
fn echo_to_the_pop_address_is_answered_through_the_tunnel() {
    with_fixture(|fx| {
        let req = echo6(link_addr(1, 2), link_addr(1, 1), 64, false, b"keepalive");
        let frame = from_client(client_v4(1), &req);
        let reply = echo6(link_addr(1, 1), link_addr(1, 2), 64, true, b"keepalive");
        // Outer header: the request's, addresses swapped, TTL 64, checksum redone.
        let (mut ip, _) = etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap();
        std::mem::swap(&mut ip.source, &mut ip.destination);
        ip.time_to_live = 64;
        ip.header_checksum = ip.calc_header_checksum();
        let mut want = ip.to_bytes().to_vec();
        want.extend_from_slice(&reply);
        let want = ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &want);
        let before = fx.snapshot();
        check(
            fx,
            "echo in tunnel",
            &frame,
            fx.eth4,
            XDP_TX,
            Reason::Did(Event::EchoReply),
            Some(&want),
        );
        let t = before.tunnel_delta(&fx.snapshot(), 1);
        assert_eq!((t.from_client_packets, t.to_client_packets), (1, 1));
    });
}

#[test]
fn echo_to_the_pop_address_from_outside_is_answered_natively() {
    with_fixture(|fx| {
        let req = echo6(INET_HOST, link_addr(1, 1), 60, false, b"monitoring");
        let reply = echo6(link_addr(1, 1), INET_HOST, 64, true, b"monitoring");
        let want = ether(POP6_MAC, INET_MAC, EtherType::IPV6, &reply);
        check(
            fx,
            "native echo",
            &from_internet(&req),
            fx.eth6,
            XDP_TX,
            Reason::Did(Event::EchoReply),
            Some(&want),
        );
    });
}

#[test]
fn other_traffic_to_the_pop_address_is_dropped() {
    with_fixture(|fx| {
        let p = udp6(link_addr(1, 2), link_addr(1, 1), 64, b"x");
        check(
            fx,
            "UDP to ::1 via tunnel",
            &from_client(client_v4(1), &p),
            fx.eth4,
            XDP_DROP,
            Reason::Drop(DropReason::PopAddress),
            None,
        );
        let p = udp6(INET_HOST, link_addr(1, 1), 64, b"x");
        check(
            fx,
            "UDP to ::1 natively",
            &from_internet(&p),
            fx.eth6,
            XDP_DROP,
            Reason::Drop(DropReason::PopAddress),
            None,
        );
        let p = echo6(INET_HOST, link_addr(1, 1), 64, true, b"x");
        check(
            fx,
            "echo reply to ::1",
            &from_internet(&p),
            fx.eth6,
            XDP_DROP,
            Reason::Drop(DropReason::PopAddress),
            None,
        );
    });
}

#[test]
fn every_drop_reason_is_counted() {
    with_fixture(|fx| {
        let good = udp6(link_addr(1, 2), INET_HOST, 64, b"payload");
        // (what, frame, ingress interface, reason, tunnel charged with the drop)
        type Case = (&'static str, Vec<u8>, u32, DropReason, Option<u32>);
        let cases: Vec<Case> = vec![
            (
                "unknown endpoint",
                from_client([203, 0, 113, 9].into(), &good),
                fx.eth4,
                DropReason::UnknownEndpoint,
                None,
            ),
            (
                "spoofed inner source",
                from_client(
                    client_v4(1),
                    &udp6("2001:db8:bad::1".parse().unwrap(), INET_HOST, 64, b"x"),
                ),
                fx.eth4,
                DropReason::SpoofedSource,
                Some(1),
            ),
            (
                "another tunnel's source",
                from_client(client_v4(1), &udp6(link_addr(2, 2), INET_HOST, 64, b"x")),
                fx.eth4,
                DropReason::SpoofedSource,
                Some(1),
            ),
            (
                "link-local inner source",
                from_client(
                    client_v4(1),
                    &udp6("fe80::2".parse().unwrap(), INET_HOST, 64, b"x"),
                ),
                fx.eth4,
                DropReason::LinkLocal,
                Some(1),
            ),
            (
                "router solicitation from the client's kernel",
                from_client(
                    client_v4(1),
                    &icmp6_nd(
                        "fe80::2".parse().unwrap(),
                        "ff02::2".parse().unwrap(),
                        133,
                        &[0; 4],
                    ),
                ),
                fx.eth4,
                DropReason::LinkLocal,
                Some(1),
            ),
            (
                "duplicate address detection for the client's ::2",
                from_client(
                    client_v4(1),
                    &icmp6_nd(
                        "::".parse().unwrap(),
                        "ff02::1:ff00:2".parse().unwrap(),
                        135,
                        &[[0u8; 4].as_slice(), &link_addr(1, 2).octets()].concat(),
                    ),
                ),
                fx.eth4,
                DropReason::LinkLocal,
                Some(1),
            ),
            (
                "neighbour solicitation for the PoP's ::1 from the client's ::2",
                from_client(
                    client_v4(1),
                    &icmp6_nd(
                        link_addr(1, 2),
                        "ff02::1:ff00:1".parse().unwrap(),
                        135,
                        &[[0u8; 4].as_slice(), &link_addr(1, 1).octets()].concat(),
                    ),
                ),
                fx.eth4,
                DropReason::LinkLocal,
                Some(1),
            ),
            (
                "tunnel down, from client",
                from_client(client_v4(3), &udp6(link_addr(3, 2), INET_HOST, 64, b"x")),
                fx.eth4,
                DropReason::TunnelDown,
                Some(3),
            ),
            (
                "tunnel down, to client",
                from_internet(&udp6(INET_HOST, link_addr(3, 2), 64, b"x")),
                fx.eth6,
                DropReason::TunnelDown,
                Some(3),
            ),
            (
                "tunnel disabled, from client",
                from_client(client_v4(4), &udp6(link_addr(4, 2), INET_HOST, 64, b"x")),
                fx.eth4,
                DropReason::TunnelDisabled,
                Some(4),
            ),
            (
                "tunnel disabled, to client",
                from_internet(&udp6(INET_HOST, link_addr(4, 2), 64, b"x")),
                fx.eth6,
                DropReason::TunnelDisabled,
                Some(4),
            ),
            (
                "hop limit 1 from client, an ICMPv6 error",
                from_client(client_v4(1), &unreachable6(link_addr(1, 2), INET_HOST, 1)),
                fx.eth4,
                DropReason::HopLimitExceeded,
                Some(1),
            ),
            (
                "hop limit 1 to client, an ICMPv6 error",
                from_internet(&unreachable6(INET_HOST, link_addr(1, 2), 1)),
                fx.eth6,
                DropReason::HopLimitExceeded,
                Some(1),
            ),
            (
                "no route",
                from_client(client_v4(1), &udp6(link_addr(1, 2), BLACKHOLED, 64, b"x")),
                fx.eth4,
                DropReason::NoRoute,
                None,
            ),
        ];
        for (what, frame, ingress, reason, tunnel) in cases {
            let before = fx.snapshot();
            check(
                fx,
                what,
                &frame,
                ingress,
                XDP_DROP,
                Reason::Drop(reason),
                None,
            );
            if let Some(id) = tunnel {
                assert_eq!(
                    before.tunnel_delta(&fx.snapshot(), id).drop_packets,
                    1,
                    "{what}: tunnel drop"
                );
            }
        }

        // Outer header defects, made by editing a valid frame.
        let frame = from_client(client_v4(1), &good);
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = frame.clone();
            f(&mut v);
            v
        };
        let refresh = |v: &mut Vec<u8>| {
            let (mut h, _) = etherparse::Ipv4Header::from_slice(&v[14..]).unwrap();
            h.header_checksum = h.calc_header_checksum();
            v[24..26].copy_from_slice(&h.header_checksum.to_be_bytes());
        };
        let defects: Vec<(&str, Vec<u8>, DropReason)> = vec![
            (
                "bad outer checksum",
                edit(&|v| v[24] ^= 0xff),
                DropReason::BadIpv4Checksum,
            ),
            (
                "IHL below 5",
                edit(&|v| v[14] = 0x44),
                DropReason::BadIpv4Header,
            ),
            (
                "outer fragment (MF)",
                edit(&|v| {
                    v[20] |= 0x20;
                    refresh(v)
                }),
                DropReason::OuterFragment,
            ),
            (
                "outer fragment (offset)",
                edit(&|v| {
                    v[21] = 8;
                    refresh(v)
                }),
                DropReason::OuterFragment,
            ),
            (
                "total length beyond the frame",
                edit(&|v| {
                    v[17] += 1;
                    refresh(v)
                }),
                DropReason::Truncated,
            ),
            (
                "total length shorter than the inner packet",
                edit(&|v| {
                    v[17] -= 1;
                    refresh(v)
                }),
                DropReason::BadInnerHeader,
            ),
            (
                "inner not IPv6",
                edit(&|v| v[34] = 0x45),
                DropReason::BadInnerHeader,
            ),
            (
                "inner payload length wrong",
                edit(&|v| v[39] += 1),
                DropReason::BadInnerHeader,
            ),
        ];
        for (what, frame, reason) in defects {
            check(
                fx,
                what,
                &frame,
                fx.eth4,
                XDP_DROP,
                Reason::Drop(reason),
                None,
            );
        }

        // Options: a valid header with IHL 6.
        let mut with_opts = frame[..34].to_vec();
        with_opts.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        with_opts.extend_from_slice(&frame[34..]);
        with_opts[14] = 0x46;
        let tot = u16::from_be_bytes([with_opts[16], with_opts[17]]) + 4;
        with_opts[16..18].copy_from_slice(&tot.to_be_bytes());
        let (mut h, _) = etherparse::Ipv4Header::from_slice(&with_opts[14..]).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let hb = h.to_bytes();
        with_opts[14..14 + hb.len()].copy_from_slice(&hb);
        check(
            fx,
            "outer options",
            &with_opts,
            fx.eth4,
            XDP_DROP,
            Reason::Drop(DropReason::Ipv4Options),
            None,
        );
    });
}

#[test]
fn unforwardable_packets_go_to_the_kernel_already_rewritten() {
    with_fixture(|fx| {
        // No neighbour entry for the destination: passed decapsulated, hop limit intact
        // (the kernel decrements it when it forwards).
        let inner = udp6(link_addr(1, 2), UNRESOLVED_HOST, 64, b"resolve me");
        let want = ether(ISP_MAC, POP4_MAC, EtherType::IPV6, &inner);
        check(
            fx,
            "no neighbour",
            &from_client(client_v4(1), &inner),
            fx.eth4,
            XDP_PASS,
            Reason::Pass(PassReason::NoNeighbour),
            Some(&want),
        );
        // The PoP's own native address: delivered locally.
        let inner = udp6(
            link_addr(1, 2),
            "2001:db8:ffff::1".parse().unwrap(),
            64,
            b"to me",
        );
        let want = ether(ISP_MAC, POP4_MAC, EtherType::IPV6, &inner);
        check(
            fx,
            "local destination",
            &from_client(client_v4(1), &inner),
            fx.eth4,
            XDP_PASS,
            Reason::Pass(PassReason::NotForwarded),
            Some(&want),
        );
    });
}

#[test]
fn non_tunnel_traffic_passes_untouched() {
    with_fixture(|fx| {
        let mut udp4 = Vec::new();
        PacketBuilder::ethernet2(ISP_MAC, POP4_MAC)
            .ipv4([198, 51, 100, 10], POP_V4.octets(), 64)
            .udp(1000, 53)
            .write(&mut udp4, b"dns?")
            .unwrap();
        let mut p41_elsewhere =
            from_client(client_v4(1), &udp6(link_addr(1, 2), INET_HOST, 64, b"x"));
        p41_elsewhere[33] = 99; // destination 192.0.2.99, not the PoP
        let (mut h, _) = etherparse::Ipv4Header::from_slice(&p41_elsewhere[14..]).unwrap();
        h.header_checksum = h.calc_header_checksum();
        p41_elsewhere[24..26].copy_from_slice(&h.header_checksum.to_be_bytes());
        let native_elsewhere = from_internet(&udp6(
            INET_HOST,
            "2001:db8:9999::1".parse().unwrap(),
            64,
            b"x",
        ));
        let arp = ether(ISP_MAC, [0xff; 6], EtherType::ARP, &[0u8; 28]);
        let cases: Vec<(&str, Vec<u8>, PassReason)> = vec![
            ("IPv4 UDP to the PoP", udp4, PassReason::NotTunnel),
            (
                "proto-41 to another address",
                p41_elsewhere,
                PassReason::NotTunnel,
            ),
            (
                "IPv6 outside every tunnel prefix",
                native_elsewhere,
                PassReason::NotTunnel,
            ),
            ("ARP", arp, PassReason::NotTunnel),
            (
                "Ethernet header only",
                ether(ISP_MAC, POP4_MAC, EtherType::IPV4, &[]),
                PassReason::Unparsed,
            ),
        ];
        for (what, frame, reason) in cases {
            let out = check(
                fx,
                what,
                &frame,
                fx.eth4,
                XDP_PASS,
                Reason::Pass(reason),
                None,
            );
            assert_bytes(&out, &frame, what);
        }
    });
}

#[test]
fn every_truncation_gets_a_counted_verdict() {
    with_fixture(|fx| {
        let valid = [
            (
                "decap",
                from_client(
                    client_v4(1),
                    &udp6(link_addr(1, 2), INET_HOST, 64, b"truncate me"),
                ),
                fx.eth4,
            ),
            (
                "encap",
                from_internet(&udp6(INET_HOST, link_addr(1, 2), 64, b"truncate me")),
                fx.eth6,
            ),
            (
                "echo",
                from_client(
                    client_v4(1),
                    &echo6(link_addr(1, 2), link_addr(1, 1), 64, false, b"e"),
                ),
                fx.eth4,
            ),
            (
                "hop limit 1 from the client",
                from_client(client_v4(1), &probe6(link_addr(1, 2), INET_HOST, 1, 60)),
                fx.eth4,
            ),
            (
                "hop limit 1 towards the client",
                from_internet(&probe6(INET_HOST, link_addr(1, 2), 1, 60)),
                fx.eth6,
            ),
        ];
        for (what, frame, ingress) in valid {
            assert_every_truncation_counted(fx, what, &frame, ingress);
        }
    });
}

#[test]
fn client_to_client_over_the_second_tunnels_mtu_is_dropped_and_counted() {
    with_fixture(|fx| {
        // Tunnel 2 has MTU 1280; tunnel 1's client sends it 1300 bytes.
        let inner = udp6(link_addr(1, 2), link_addr(2, 2), 64, &[7; 1300 - 48]);
        let before = fx.snapshot();
        check(
            fx,
            "hairpin over the MTU",
            &from_client(client_v4(1), &inner),
            fx.eth4,
            XDP_DROP,
            Reason::Drop(DropReason::TooBigHairpin),
            None,
        );
        assert_eq!(before.tunnel_delta(&fx.snapshot(), 2).drop_packets, 1);
    });
}

#[test]
fn egress_mtu_and_disabled_forwarding_go_to_the_kernel() {
    with_fixture(|fx| {
        // A narrow link: 2001:db8:7777::/48 leaves through eth7, MTU 1280.
        let sh = |args: &[&str]| {
            broker_tests::netns::run(std::process::Command::new(args[0]).args(&args[1..])).unwrap()
        };
        sh(&[
            "ip", "link", "add", "eth7", "mtu", "1280", "type", "veth", "peer", "name", "peer7",
        ]);
        sh(&["ip", "link", "set", "eth7", "up"]);
        sh(&["ip", "link", "set", "peer7", "up"]);
        sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:7770::1/64",
            "dev",
            "eth7",
            "nodad",
        ]);
        sh(&[
            "ip",
            "-6",
            "neigh",
            "replace",
            "2001:db8:7770::2",
            "lladdr",
            "02:00:00:00:07:02",
            "dev",
            "eth7",
            "nud",
            "permanent",
        ]);
        sh(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:7777::/48",
            "via",
            "2001:db8:7770::2",
        ]);
        let far: std::net::Ipv6Addr = "2001:db8:7777::9".parse().unwrap();

        // Too big for eth7 (but within the tunnel MTU): the kernel sends the ICMP error.
        let inner = udp6(link_addr(1, 2), far, 64, &[1; 1400 - 48]);
        let want = ether(ISP_MAC, POP4_MAC, EtherType::IPV6, &inner);
        check(
            fx,
            "egress MTU",
            &from_client(client_v4(1), &inner),
            fx.eth4,
            XDP_PASS,
            Reason::Pass(PassReason::FragNeeded),
            Some(&want),
        );
        // Small enough: forwarded, looked up for its own size (and not cached, since a
        // larger packet of the same flow would not fit).
        for _ in 0..2 {
            let inner = udp6(link_addr(1, 2), far, 64, &[1; 1000 - 48]);
            let out = check(
                fx,
                "fits eth7",
                &from_client(client_v4(1), &inner),
                fx.eth4,
                XDP_REDIRECT,
                Reason::Did(Event::Decap),
                None,
            );
            assert_eq!(out[..6], [0x02, 0, 0, 0, 0x07, 0x02]);
        }
        let inner = udp6(link_addr(1, 2), far, 64, &[1; 1400 - 48]);
        check(
            fx,
            "still too big after a small one",
            &from_client(client_v4(1), &inner),
            fx.eth4,
            XDP_PASS,
            Reason::Pass(PassReason::FragNeeded),
            None,
        );

        // IPv4 forwarding off on the interface an encapsulated packet arrived on.
        sh(&["sysctl", "-qw", "net.ipv4.conf.eth6.forwarding=0"]);
        let inner = udp6(INET_HOST, link_addr(1, 2), 64, b"x");
        check(
            fx,
            "forwarding off",
            &from_internet(&inner),
            fx.eth6,
            XDP_PASS,
            Reason::Pass(PassReason::FibError),
            None,
        );
    });
}

/// An ICMPv6 destination unreachable (an error) quoting a few bytes.
fn unreachable6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, hop: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), hop)
        .icmpv6(Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Address,
        ))
        .write(&mut v, &[0x60; 48])
        .unwrap();
    v
}

/// A traceroute probe as Linux `traceroute -6` sends it: UDP to port 33434 and up, 32 bytes
/// of payload, the hop limit counting up from 1.
fn probe6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, hop: u8, size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), hop)
        .udp(40001, 33434 + u16::from(hop))
        .write(&mut v, &vec![0x40; size - 48])
        .unwrap();
    v
}

#[test]
fn hop_limit_running_out_from_a_client_gets_time_exceeded_through_the_tunnel() {
    with_fixture(|fx| {
        // Short probes are quoted whole; long packets to 128 bytes.
        for (hop, size) in [(1, 80), (0, 81), (1, 49), (1, 1400)] {
            let what = format!("hop limit {hop}, {size} bytes, from the client");
            let probe = probe6(link_addr(1, 2), INET_HOST, hop, size);
            let te = time_exceeded6(link_addr(1, 1), link_addr(1, 2), &probe);
            // Encapsulated as the PoP encapsulates everything: DF, TTL 64, id 0.
            let mut want = outer_v4(POP_V4, client_v4(1), 0, te.len())
                .to_bytes()
                .to_vec();
            want.extend_from_slice(&te);
            let want = ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &want);
            let before = fx.snapshot();
            let out = check(
                fx,
                &what,
                &from_client(client_v4(1), &probe),
                fx.eth4,
                XDP_TX,
                Reason::Did(Event::TimeExceeded),
                Some(&want),
            );
            let (ip, inner) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{what}");
            assert_eq!(
                assert_icmp6_checksum(inner, &what),
                Icmpv6Type::TimeExceeded(etherparse::icmpv6::TimeExceededCode::HopLimitExceeded)
            );
            let t = before.tunnel_delta(&fx.snapshot(), 1);
            assert_eq!(
                (t.drop_packets, t.from_client_packets, t.to_client_packets),
                (1, 0, 0),
                "{what}"
            );
        }
        // An echo request is no error: pinging with hop limit 1 shows the PoP too.
        let ping = echo6(routed_addr(1, 5), INET_HOST, 1, false, b"ttl 1");
        let te = time_exceeded6(link_addr(1, 1), routed_addr(1, 5), &ping);
        let mut want = outer_v4(POP_V4, client_v4(1), 0, te.len())
            .to_bytes()
            .to_vec();
        want.extend_from_slice(&te);
        check(
            fx,
            "ping with hop limit 1 from the routed /48",
            &from_client(client_v4(1), &ping),
            fx.eth4,
            XDP_TX,
            Reason::Did(Event::TimeExceeded),
            Some(&ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &want)),
        );
    });
}

#[test]
fn hop_limit_running_out_towards_a_tunnel_gets_time_exceeded_natively() {
    with_fixture(|fx| {
        for (hop, size) in [(1, 80), (0, 63), (1, 1280)] {
            let what = format!("hop limit {hop}, {size} bytes, towards tunnel 2");
            let probe = probe6(INET_HOST, routed_addr(2, 9), hop, size);
            // From the tunnel's ::1, back out of eth6 to the MAC it came from.
            let te = time_exceeded6(link_addr(2, 1), INET_HOST, &probe);
            let want = ether(POP6_MAC, INET_MAC, EtherType::IPV6, &te);
            let before = fx.snapshot();
            let out = check(
                fx,
                &what,
                &from_internet(&probe),
                fx.eth6,
                XDP_TX,
                Reason::Did(Event::TimeExceeded),
                Some(&want),
            );
            assert_icmp6_checksum(&out[14..], &what);
            let t = before.tunnel_delta(&fx.snapshot(), 2);
            assert_eq!((t.drop_packets, t.to_client_packets), (1, 0), "{what}");
        }
    });
}

#[test]
fn no_time_exceeded_for_an_icmp_error_or_multicast() {
    with_fixture(|fx| {
        let unicast = from_internet(&probe6(INET_HOST, link_addr(1, 2), 1, 80));
        let mut link_multicast = unicast.clone();
        link_multicast[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
        // What differs from the cases below: an ICMPv6 message that is no error, a
        // unicast frame. Those are answered.
        let ping = echo6(INET_HOST, link_addr(1, 2), 1, false, b"ttl 1");
        for (what, frame) in [("ping", from_internet(&ping)), ("unicast frame", unicast)] {
            check(
                fx,
                what,
                &frame,
                fx.eth6,
                XDP_TX,
                Reason::Did(Event::TimeExceeded),
                None,
            );
        }
        let cases = [
            (
                "an ICMPv6 error from the client",
                from_client(client_v4(1), &unreachable6(link_addr(1, 2), INET_HOST, 1)),
                fx.eth4,
            ),
            (
                "an ICMPv6 error towards the tunnel",
                from_internet(&unreachable6(INET_HOST, link_addr(1, 2), 0)),
                fx.eth6,
            ),
            (
                "a Packet Too Big towards the tunnel",
                from_internet(&{
                    let mut v = Vec::new();
                    PacketBuilder::ipv6(INET_HOST.octets(), link_addr(1, 2).octets(), 1)
                        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
                        .write(&mut v, &[0x60; 64])
                        .unwrap();
                    v
                }),
                fx.eth6,
            ),
            (
                "from the client to global multicast",
                from_client(
                    client_v4(1),
                    &probe6(link_addr(1, 2), "ff0e::1".parse().unwrap(), 1, 80),
                ),
                fx.eth4,
            ),
            (
                "as a link-layer multicast towards the tunnel",
                link_multicast,
                fx.eth6,
            ),
        ];
        for (what, frame, ingress) in cases {
            check_tunnel_drop(fx, what, &frame, ingress, DropReason::HopLimitExceeded, 1);
        }
    });
}

#[test]
fn no_icmp_goes_to_multicast_unspecified_loopback_or_link_local() {
    with_fixture(|fx| {
        for src in ["ff02::1", "ff0e::1", "::", "::1", "fe80::1"] {
            let src: std::net::Ipv6Addr = src.parse().unwrap();
            let cases = [
                (
                    "echo request to a tunnel's ::1",
                    echo6(src, link_addr(1, 1), 64, false, b"ping"),
                ),
                (
                    "over the tunnel MTU",
                    udp6(src, link_addr(2, 2), 64, &[1; 1300 - 48]),
                ),
                ("hop limit 1", probe6(src, link_addr(1, 2), 1, 80)),
            ];
            for (what, p) in cases {
                let what = format!("{what} from {src}");
                check(
                    fx,
                    &what,
                    &from_internet(&p),
                    fx.eth6,
                    XDP_DROP,
                    Reason::Drop(DropReason::IcmpBadSource),
                    None,
                );
            }
        }
    });
}

/// The fixture with the ICMP rate limit at three messages, never refilled.
fn three_icmp() -> Fixture {
    Fixture::with_options(dataplane::Options {
        icmp_limit: only(3),
        ..dataplane::Options::new("test")
    })
}

#[test]
fn icmp_beyond_the_rate_limit_is_not_sent_and_its_cause_counted() {
    on_thread(three_icmp, |fx| {
        let too_big = from_internet(&udp6(INET_HOST, link_addr(2, 2), 64, &[1; 1300 - 48]));
        let echo = from_internet(&echo6(INET_HOST, link_addr(1, 1), 64, false, b"ping"));
        let expiring = from_client(client_v4(1), &probe6(link_addr(1, 2), INET_HOST, 1, 80));
        let echo_in_tunnel = from_client(
            client_v4(1),
            &echo6(link_addr(1, 2), link_addr(1, 1), 64, false, b"keepalive"),
        );
        // One bucket for every kind of message: three of them go out...
        for (what, frame, ingress, event) in [
            ("Packet Too Big", &too_big, fx.eth6, Event::PacketTooBig),
            ("echo reply", &echo, fx.eth6, Event::EchoReply),
            ("Time Exceeded", &expiring, fx.eth4, Event::TimeExceeded),
        ] {
            check(fx, what, frame, ingress, XDP_TX, Reason::Did(event), None);
        }
        // ...and then none: the packet that asked is dropped and counted.
        for (what, frame, ingress, tunnel) in [
            ("fourth: Packet Too Big", &too_big, fx.eth6, Some(2)),
            ("fourth: echo reply", &echo, fx.eth6, None),
            ("fourth: Time Exceeded", &expiring, fx.eth4, Some(1)),
            (
                "fourth: echo reply in the tunnel",
                &echo_in_tunnel,
                fx.eth4,
                Some(1),
            ),
        ] {
            let before = fx.snapshot();
            check(
                fx,
                what,
                frame,
                ingress,
                XDP_DROP,
                Reason::Drop(DropReason::IcmpRateLimited),
                None,
            );
            let after = fx.snapshot();
            let d = after.global.since(&before.global);
            for e in [Event::PacketTooBig, Event::EchoReply, Event::TimeExceeded] {
                assert_eq!(d.event(e).packets, 0, "{what}: {} counted", e.as_str());
            }
            if let Some(id) = tunnel {
                assert_eq!(before.tunnel_delta(&after, id).drop_packets, 1, "{what}");
            }
        }
        // A dropped packet is left as it was, so the kernel may run it again and again.
        let before = fx.snapshot();
        let out = fx.dp.test_run(&echo, fx.eth6, 50).unwrap();
        assert_eq!(out.action, XDP_DROP);
        let d = fx.snapshot().global.since(&before.global);
        assert_eq!(d.dropped(DropReason::IcmpRateLimited).packets, 50);
        assert_eq!(d.event(Event::EchoReply).packets, 0);
        // Forwarding does not need tokens.
        check(
            fx,
            "forwarded meanwhile",
            &from_client(client_v4(1), &udp6(link_addr(1, 2), INET_HOST, 64, b"x")),
            fx.eth4,
            XDP_REDIRECT,
            Reason::Did(Event::Decap),
            None,
        );
    });
}

#[test]
fn the_controller_sets_the_rate_limits() {
    // Its own thread: setting the limits needs the data plane mutably.
    std::thread::spawn(|| {
        let mut fx = Fixture::new();
        fx.dp
            .set_rate_limits(only(2), RateLimit::NEIGHBOUR_DEFAULT)
            .unwrap();
        let echo = from_internet(&echo6(INET_HOST, link_addr(1, 1), 64, false, b"ping"));
        for what in ["first", "second"] {
            check(
                &fx,
                what,
                &echo,
                fx.eth6,
                XDP_TX,
                Reason::Did(Event::EchoReply),
                None,
            );
        }
        check(
            &fx,
            "third, over burst 2",
            &echo,
            fx.eth6,
            XDP_DROP,
            Reason::Drop(DropReason::IcmpRateLimited),
            None,
        );
        // Burst 0: nothing at all, whatever the bucket holds.
        fx.dp
            .set_rate_limits(
                RateLimit {
                    per_s: 1_000_000,
                    burst: 0,
                },
                RateLimit::NEIGHBOUR_DEFAULT,
            )
            .unwrap();
        check(
            &fx,
            "burst 0",
            &echo,
            fx.eth6,
            XDP_DROP,
            Reason::Drop(DropReason::IcmpRateLimited),
            None,
        );
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// The fixture with at most three decapsulated packets passed for neighbour resolution.
fn three_neighbours() -> Fixture {
    Fixture::with_options(dataplane::Options {
        neighbour_limit: only(3),
        ..dataplane::Options::new("test")
    })
}

#[test]
fn neighbour_resolution_for_decapsulated_packets_is_rate_limited() {
    on_thread(three_neighbours, |fx| {
        // Resolved next hops never take a token.
        for _ in 0..10 {
            check(
                fx,
                "to a known neighbour",
                &from_client(client_v4(1), &udp6(link_addr(1, 2), INET_HOST, 64, b"x")),
                fx.eth4,
                XDP_REDIRECT,
                Reason::Did(Event::Decap),
                None,
            );
        }
        // Random hosts of the PoP's connected /64, as a client scanning it sends: the first
        // three go to the kernel, which resolves them (as before)...
        let scan = |host: u16| {
            let dst = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0x1234, 0, host, 3);
            from_client(client_v4(1), &udp6(link_addr(1, 2), dst, 64, b"scan"))
        };
        for host in 1..=3 {
            let frame = scan(host);
            let inner = &frame[34..];
            check(
                fx,
                &format!("host {host}"),
                &frame,
                fx.eth4,
                XDP_PASS,
                Reason::Pass(PassReason::NoNeighbour),
                Some(&ether(ISP_MAC, POP4_MAC, EtherType::IPV6, inner)),
            );
        }
        // ...the rest are dropped and counted, as decapsulated packets of the tunnel.
        for host in 4..=6 {
            let before = fx.snapshot();
            check(
                fx,
                &format!("host {host}"),
                &scan(host),
                fx.eth4,
                XDP_DROP,
                Reason::Drop(DropReason::NeighbourRateLimited),
                None,
            );
            let t = before.tunnel_delta(&fx.snapshot(), 1);
            assert_eq!((t.from_client_packets, t.drop_packets), (1, 0));
        }
        // The ICMP bucket is another one.
        check(
            fx,
            "echo meanwhile",
            &from_internet(&echo6(INET_HOST, link_addr(1, 1), 64, false, b"ping")),
            fx.eth6,
            XDP_TX,
            Reason::Did(Event::EchoReply),
            None,
        );
    });
}
