//! AYIYA through BPF_PROG_TEST_RUN: verify-and-decap, roaming, beats, echo, sign-and-encap,
//! and every rejection. Packets are built with etherparse and signed with the `sha1` crate
//! (never with the code under test); signatures the data plane writes are checked the same
//! way.
mod support;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use broker_common::stats::{DropReason, Event};
use broker_userspace::{
    dataplane,
    model::{State, TunnelSpec},
};
use etherparse::{EtherType, IpNumber, Ipv4Header, UdpHeader};
use sha1::{Digest, Sha1};
use support::*;

/// AYIYA tunnel 8 (up, heard from `CLIENT`), 9 (up, never heard), 10 (disabled).
const PASSWORD: &str = "secret";
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 80), 40080);
const MOVED: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 81), 50081);

const NOOP: u8 = 0;
const FORWARD: u8 = 1;
const ECHO_REQUEST: u8 = 2;
const ECHO_RESPONSE: u8 = 4;
const NH_IPV6: u8 = 41;
const NH_NONE: u8 = 59;

fn key() -> [u8; 20] {
    ayiya_key(PASSWORD)
}

fn ayiya_spec(id: u32, state: State, endpoint: Option<(Ipv4Addr, u16)>) -> TunnelSpec {
    support::ayiya_spec(id, state, endpoint, PASSWORD)
}

fn fixture() -> Fixture {
    with_ayiya_tunnels(Fixture::new())
}

fn with_ayiya_tunnels(mut fx: Fixture) -> Fixture {
    fx.dp
        .upsert(&ayiya_spec(8, State::Up, Some(CLIENT)))
        .unwrap();
    fx.dp.upsert(&ayiya_spec(9, State::Up, None)).unwrap();
    fx.dp
        .upsert(&ayiya_spec(
            10,
            State::Disabled,
            Some((Ipv4Addr::new(198, 51, 100, 100), 1)),
        ))
        .unwrap();
    fx
}

fn with_fixture(f: impl FnOnce(&Fixture) + Send + 'static) {
    on_thread(fixture, f)
}

fn now() -> u32 {
    unix_now()
}

fn ayiya(identity: Ipv6Addr, epoch: u32, op: u8, nh: u8, inner: &[u8], key: &[u8; 20]) -> Vec<u8> {
    ayiya_payload(identity, epoch, op, nh, inner, key)
}

/// Whether an AYIYA payload carries the signature `key` gives it.
fn signed_with(p: &[u8], key: &[u8; 20]) -> bool {
    let mut q = p.to_vec();
    q[24..44].copy_from_slice(key);
    let sig: [u8; 20] = Sha1::digest(&q).into();
    sig[..] == p[24..44]
}

fn from(client: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    from_ayiya_client(client, payload)
}

/// A client's forward packet carrying `inner`, from tunnel 8's client.
fn forward(inner: &[u8]) -> Vec<u8> {
    from(
        CLIENT,
        &ayiya(link_addr(8, 2), now(), FORWARD, NH_IPV6, inner, &key()),
    )
}

/// The frame the PoP sends to `(addr, port)` with AYIYA payload `payload`: DF, TTL 64,
/// UDP checksum 0, from the AYIYA port.
fn to((addr, port): (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    let mut ip =
        Ipv4Header::new(udp_len, 64, IpNumber::UDP, POP_V4.octets(), addr.octets()).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = ip.to_bytes().to_vec();
    v.extend_from_slice(
        &UdpHeader {
            source_port: AYIYA_PORT,
            destination_port: port,
            length: udp_len,
            checksum: 0,
        }
        .to_bytes(),
    );
    v.extend_from_slice(payload);
    ether(POP4_MAC, ISP_MAC, EtherType::IPV4, &v)
}

/// Checks what the PoP sent: the frame it must be with the epoch it chose (within a few
/// seconds of now), and a signature that verifies with the tunnel's key.
fn assert_sent(out: &[u8], dst: (Ipv4Addr, u16), op: u8, nh: u8, inner: &[u8], what: &str) {
    let payload = &out[14 + 28..];
    let epoch = u32::from_be_bytes(payload[4..8].try_into().unwrap());
    assert!(
        now().abs_diff(epoch) <= 2,
        "{what}: epoch {epoch} is not now ({})",
        now()
    );
    let want = to(dst, &ayiya(link_addr(8, 1), epoch, op, nh, inner, &key()));
    assert_bytes(out, &want, what);
    assert!(signed_with(payload, &key()), "{what}: signature");
}

#[test]
fn verified_packets_are_decapsulated_at_every_block_boundary() {
    with_fixture(|fx| {
        // Hashed bytes = 44 + 48 + n: the SHA-1 padding falls in the last block, spills
        // into a new one, or the message fills its blocks exactly; 1232 is a 1280-byte
        // inner packet.
        for n in [0, 27, 28, 35, 36, 37, 100, 1232, 1336] {
            let inner = udp6(link_addr(8, 2), INET_HOST, 64, &vec![0xa5; n]);
            let want = ether(
                POP6_MAC,
                INET_MAC,
                EtherType::IPV6,
                &hop_decremented(&inner),
            );
            let before = fx.snapshot();
            check(
                fx,
                &format!("AYIYA decap, {n}-byte payload"),
                &forward(&inner),
                fx.eth4,
                XDP_REDIRECT,
                Reason::Did(Event::Decap),
                Some(&want),
            );
            let t = before.tunnel_delta(&fx.snapshot(), 8);
            assert_eq!(
                (t.from_client_packets, t.from_client_bytes),
                (1, inner.len() as u64)
            );
        }
    });
}

#[test]
fn native_packets_are_encapsulated_and_signed() {
    with_fixture(|fx| {
        for (n, dst) in [(10, link_addr(8, 2)), (1228 - 48, routed_addr(8, 7))] {
            let inner = udp6(INET_HOST, dst, 50, &vec![0x5a; n]);
            let out = check(
                fx,
                "AYIYA encap",
                &from_internet(&inner),
                fx.eth6,
                XDP_REDIRECT,
                Reason::Did(Event::Encap),
                None,
            );
            assert_sent(
                &out,
                CLIENT,
                FORWARD,
                NH_IPV6,
                &hop_decremented(&inner),
                "AYIYA encap",
            );
        }
    });
}

#[test]
fn a_verified_packet_from_a_new_address_moves_the_tunnel() {
    with_fixture(|fx| {
        assert_eq!(
            fx.dp.learnt_endpoints().unwrap(),
            vec![
                (8, SocketAddrV4::new(CLIENT.0, CLIENT.1)),
                (10, SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 100), 1))
            ]
        );
        let inner = udp6(link_addr(8, 2), INET_HOST, 64, b"after the NAT rebinding");
        let frame = from(
            MOVED,
            &ayiya(link_addr(8, 2), now(), FORWARD, NH_IPV6, &inner, &key()),
        );
        check(
            fx,
            "AYIYA from a new port",
            &frame,
            fx.eth4,
            XDP_REDIRECT,
            Reason::Did(Event::Decap),
            None,
        );
        assert!(fx
            .dp
            .learnt_endpoints()
            .unwrap()
            .contains(&(8, SocketAddrV4::new(MOVED.0, MOVED.1))));
        // Replies follow the client.
        let back = udp6(INET_HOST, link_addr(8, 2), 50, b"to the new port");
        let out = check(
            fx,
            "AYIYA encap after roaming",
            &from_internet(&back),
            fx.eth6,
            XDP_REDIRECT,
            Reason::Did(Event::Encap),
            None,
        );
        assert_sent(
            &out,
            MOVED,
            FORWARD,
            NH_IPV6,
            &hop_decremented(&back),
            "after roaming",
        );
    });
}

#[test]
fn a_tunnel_update_keeps_where_the_client_roamed() {
    std::thread::spawn(|| {
        let mut fx = fixture();
        let beat = ayiya(link_addr(8, 2), now(), NOOP, NH_NONE, &[], &key());
        fx.dp.test_run(&from(MOVED, &beat), fx.eth4, 1).unwrap();
        let mut changed = ayiya_spec(8, State::Up, Some(CLIENT));
        changed.mtu = 1400;
        fx.dp.upsert(&changed).unwrap();
        assert!(fx
            .dp
            .learnt_endpoints()
            .unwrap()
            .contains(&(8, SocketAddrV4::new(MOVED.0, MOVED.1))));
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

#[test]
fn a_beat_is_consumed_counted_and_moves_the_tunnel() {
    with_fixture(|fx| {
        let beat = ayiya(link_addr(9, 2), now(), NOOP, NH_NONE, &[], &key());
        let before = fx.snapshot();
        check(
            fx,
            "AYIYA beat",
            &from(MOVED, &beat),
            fx.eth4,
            XDP_DROP,
            Reason::Did(Event::Beat),
            None,
        );
        let t = before.tunnel_delta(&fx.snapshot(), 9);
        assert_eq!((t.from_client_packets, t.from_client_bytes), (1, 0));
        assert!(fx
            .dp
            .learnt_endpoints()
            .unwrap()
            .contains(&(9, SocketAddrV4::new(MOVED.0, MOVED.1))));
    });
}

#[test]
fn echo_requests_are_answered_signed() {
    with_fixture(|fx| {
        let payload = b"are you there";
        let req = ayiya(
            link_addr(8, 2),
            now(),
            ECHO_REQUEST,
            NH_NONE,
            payload,
            &key(),
        );
        let out = check(
            fx,
            "AYIYA echo request",
            &from(CLIENT, &req),
            fx.eth4,
            XDP_TX,
            Reason::Did(Event::EchoReply),
            None,
        );
        // Back out of the interface it came in on: MACs swapped, like `to`.
        assert_sent(
            &out,
            CLIENT,
            ECHO_RESPONSE,
            NH_NONE,
            payload,
            "AYIYA echo response",
        );
    });
}

#[test]
fn ping_to_the_pop_inside_the_tunnel_is_answered_signed() {
    with_fixture(|fx| {
        let ping = echo6(link_addr(8, 2), link_addr(8, 1), 64, false, b"ping");
        let pong = echo6(link_addr(8, 1), link_addr(8, 2), 64, true, b"ping");
        let out = check(
            fx,
            "ping ::1 over AYIYA",
            &forward(&ping),
            fx.eth4,
            XDP_TX,
            Reason::Did(Event::EchoReply),
            None,
        );
        assert_sent(
            &out,
            CLIENT,
            FORWARD,
            NH_IPV6,
            &pong,
            "echo reply over AYIYA",
        );
    });
}

#[test]
fn every_defect_is_counted_and_nothing_moves() {
    with_fixture(|fx| {
        let inner = udp6(link_addr(8, 2), INET_HOST, 64, b"forged");
        let id = link_addr(8, 2);
        let t = now();
        let mut flipped = ayiya(id, t, FORWARD, NH_IPV6, &inner, &key());
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let mut bad_id_byte = ayiya(id, t, FORWARD, NH_IPV6, &inner, &key());
        bad_id_byte[0] = 0x42;
        let mut sha256 = ayiya(id, t, FORWARD, NH_IPV6, &inner, &key());
        sha256[1] = 0x82;
        let wrong_key: [u8; 20] = Sha1::digest(b"guess").into();
        let spoofed = udp6(link_addr(3, 2), INET_HOST, 64, b"not mine");
        let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
            ("a flipped payload bit", flipped, DropReason::BadSignature),
            (
                "the wrong password",
                ayiya(id, t, FORWARD, NH_IPV6, &inner, &wrong_key),
                DropReason::BadSignature,
            ),
            (
                "an epoch 121 s old",
                ayiya(id, t - 121, FORWARD, NH_IPV6, &inner, &key()),
                DropReason::StaleEpoch,
            ),
            (
                // The PoP's clock may have passed into the next second since `t` was
                // read: 122 ahead is 121 or 122 by its count, never 120.
                "an epoch 121 s ahead",
                ayiya(id, t + 122, FORWARD, NH_IPV6, &inner, &key()),
                DropReason::StaleEpoch,
            ),
            (
                "an unknown identity",
                ayiya(link_addr(77, 2), t, FORWARD, NH_IPV6, &inner, &key()),
                DropReason::UnknownEndpoint,
            ),
            (
                "next header IPv4",
                ayiya(id, t, FORWARD, 4, &inner, &key()),
                DropReason::WrongNextHeader,
            ),
            ("identity type 2", bad_id_byte, DropReason::BadAyiyaHeader),
            (
                "SHA-256 (dz-paji aiccu)",
                sha256,
                DropReason::BadAyiyaHeader,
            ),
            (
                "opcode 5 (MOTD)",
                ayiya(id, t, 5, NH_NONE, &[], &key()),
                DropReason::AyiyaOpcode,
            ),
        ];
        // All from a new address: none of them may move the tunnel there.
        for (what, payload, reason) in cases {
            check(
                fx,
                what,
                &from(MOVED, &payload),
                fx.eth4,
                XDP_DROP,
                Reason::Drop(reason),
                None,
            );
            assert!(
                fx.dp
                    .learnt_endpoints()
                    .unwrap()
                    .contains(&(8, SocketAddrV4::new(CLIENT.0, CLIENT.1))),
                "{what}: the tunnel moved"
            );
        }
        // Signed by the client itself, but carrying nothing or a source its prefixes lack:
        // the packet is the client's (it may move the tunnel), its inner one is not
        // forwarded.
        let solicitation = icmp6_nd(
            "fe80::2".parse().unwrap(),
            "ff02::2".parse().unwrap(),
            133,
            &[0; 4],
        );
        for (what, inner, reason) in [
            (
                "a spoofed inner source",
                &spoofed[..],
                DropReason::SpoofedSource,
            ),
            (
                "a router solicitation from the client's kernel",
                &solicitation[..],
                DropReason::LinkLocal,
            ),
            ("a header only", &[][..], DropReason::Truncated),
        ] {
            check(
                fx,
                what,
                &from(CLIENT, &ayiya(id, t, FORWARD, NH_IPV6, inner, &key())),
                fx.eth4,
                XDP_DROP,
                Reason::Drop(reason),
                None,
            );
        }
        // Within the window is fine.
        check(
            fx,
            "an epoch 100 s old",
            &from(
                CLIENT,
                &ayiya(id, t - 100, FORWARD, NH_IPV6, &inner, &key()),
            ),
            fx.eth4,
            XDP_REDIRECT,
            Reason::Did(Event::Decap),
            None,
        );
    });
}

#[test]
fn tunnels_without_an_endpoint_or_disabled_forward_nothing() {
    with_fixture(|fx| {
        let to_9 = udp6(INET_HOST, link_addr(9, 2), 50, b"nobody home");
        check(
            fx,
            "into an AYIYA tunnel never heard from",
            &from_internet(&to_9),
            fx.eth6,
            XDP_DROP,
            Reason::Drop(DropReason::NoEndpoint),
            None,
        );
        let inner = udp6(link_addr(10, 2), INET_HOST, 64, b"disabled");
        check(
            fx,
            "from a disabled AYIYA tunnel",
            &from(
                CLIENT,
                &ayiya(link_addr(10, 2), now(), FORWARD, NH_IPV6, &inner, &key()),
            ),
            fx.eth4,
            XDP_DROP,
            Reason::Drop(DropReason::TunnelDisabled),
            None,
        );
    });
}

#[test]
fn every_truncation_is_counted() {
    with_fixture(|fx| {
        let inner = udp6(link_addr(8, 2), INET_HOST, 64, b"cut me");
        assert_every_truncation_counted(fx, "AYIYA", &forward(&inner), fx.eth4);
        let beat = ayiya(link_addr(8, 2), now(), NOOP, NH_NONE, &[], &key());
        assert_every_truncation_counted(fx, "AYIYA beat", &from(CLIENT, &beat), fx.eth4);
    });
}

#[test]
fn hop_limit_running_out_gets_time_exceeded_signed_through_the_tunnel() {
    with_fixture(|fx| {
        for size in [80, 700] {
            let mut probe = Vec::new();
            etherparse::PacketBuilder::ipv6(link_addr(8, 2).octets(), INET_HOST.octets(), 1)
                .udp(40001, 33434)
                .write(&mut probe, &vec![0x40; size - 48])
                .unwrap();
            let te = time_exceeded6(link_addr(8, 1), link_addr(8, 2), &probe);
            let before = fx.snapshot();
            let out = check(
                fx,
                "hop limit 1 over AYIYA",
                &forward(&probe),
                fx.eth4,
                XDP_TX,
                Reason::Did(Event::TimeExceeded),
                None,
            );
            // A forward packet from the PoP's identity, signed with the tunnel's key.
            assert_sent(
                &out,
                CLIENT,
                FORWARD,
                NH_IPV6,
                &te,
                "Time Exceeded over AYIYA",
            );
            assert_icmp6_checksum(&out[14 + 28 + 44..], "Time Exceeded over AYIYA");
            assert_eq!(before.tunnel_delta(&fx.snapshot(), 8).drop_packets, 1);
        }
    });
}

/// The AYIYA fixture with the ICMP rate limit at two messages, never refilled.
fn two_icmp() -> Fixture {
    with_ayiya_tunnels(Fixture::with_options(dataplane::Options {
        icmp_limit: only(2),
        ..dataplane::Options::new("test")
    }))
}

#[test]
fn echo_responses_share_the_icmp_rate_limit() {
    on_thread(two_icmp, |fx| {
        let echo = || {
            from(
                CLIENT,
                &ayiya(
                    link_addr(8, 2),
                    now(),
                    ECHO_REQUEST,
                    NH_NONE,
                    b"there?",
                    &key(),
                ),
            )
        };
        let ping = forward(&echo6(link_addr(8, 2), link_addr(8, 1), 64, false, b"ping"));
        check(
            fx,
            "AYIYA echo request",
            &echo(),
            fx.eth4,
            XDP_TX,
            Reason::Did(Event::EchoReply),
            None,
        );
        check(
            fx,
            "ping to ::1 over AYIYA",
            &ping,
            fx.eth4,
            XDP_TX,
            Reason::Did(Event::EchoReply),
            None,
        );
        for (what, frame) in [("third: AYIYA echo request", echo()), ("third: ping", ping)] {
            check_tunnel_drop(fx, what, &frame, fx.eth4, DropReason::IcmpRateLimited, 8);
        }
    });
}
