//! How the data plane's tables behave as the controller changes them: prefixes of several
//! lengths, endpoint and prefix updates, removal, and the next-hop cache (through
//! BPF_PROG_TEST_RUN, as in xdp_proto41.rs).
mod support;

use std::{net::Ipv4Addr, process::Command};

use broker_common::stats::{DropReason, Event, PassReason};
use broker_tests::netns;
use broker_userspace::{
    dataplane,
    model::{Endpoint, Kind, TunnelSpec},
};
use etherparse::EtherType;
use support::*;

fn with_fixture(f: impl FnOnce(&mut Fixture) + Send + 'static) {
    std::thread::spawn(move || f(&mut Fixture::new()))
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

fn run(fx: &Fixture, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
    let out = fx.dp.test_run(frame, ingress, 1).expect("test run");
    (out.action, out.data)
}

fn encap_frame(dst: std::net::Ipv6Addr) -> Vec<u8> {
    from_internet(&udp6(INET_HOST, dst, 64, b"in"))
}

fn decap_frame(id: u32, src: std::net::Ipv6Addr) -> Vec<u8> {
    from_client(client_v4(id), &udp6(src, INET_HOST, 64, b"out"))
}

fn set_neighbour(ip: &str, mac: &str, dev: &str) {
    netns::run(Command::new("ip").args([
        "neigh",
        "replace",
        ip,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]))
    .unwrap();
}

#[test]
fn prefixes_of_several_lengths_are_found_and_guard_the_source() {
    with_fixture(|fx| {
        let spec = TunnelSpec {
            routed_prefixes: vec![
                "2001:db8:2000:100::/56".parse().unwrap(),
                "2001:db8:2000:210::/60".parse().unwrap(),
                "2001:db8:3000::/36".parse().unwrap(),
            ],
            ..spec(1)
        };
        fx.dp.upsert(&spec).unwrap();
        for dst in [
            "2001:db8:2000:1ff::9",
            "2001:db8:2000:21f::9",
            "2001:db8:3fff:ffff::1",
            "2001:db8:10:1::2",
        ] {
            let (action, out) = run(fx, &encap_frame(dst.parse().unwrap()), fx.eth6);
            assert_eq!(action, XDP_REDIRECT, "encap to {dst}");
            assert_eq!(
                &out[30..34],
                &client_v4(1).octets(),
                "to tunnel 1's client: {dst}"
            );
            let (action, _) = run(fx, &decap_frame(1, dst.parse().unwrap()), fx.eth4);
            assert_eq!(action, XDP_REDIRECT, "decap from {dst}");
        }
        // Just outside each: neither encapsulated nor accepted as a source.
        for dst in [
            "2001:db8:2000:200::9",
            "2001:db8:2000:220::9",
            "2001:db8:4000::1",
            "2001:db8:1100::1",
        ] {
            let (action, _) = run(fx, &decap_frame(1, dst.parse().unwrap()), fx.eth4);
            assert_eq!(action, XDP_DROP, "decap from {dst}");
        }
        for dst in [
            "2001:db8:2000:200::9",
            "2001:db8:2000:220::9",
            "2001:db8:4000::1",
        ] {
            let before = fx.snapshot();
            let (action, _) = run(fx, &encap_frame(dst.parse().unwrap()), fx.eth6);
            assert_eq!(action, XDP_PASS, "encap to {dst}");
            before.assert_one(
                &fx.snapshot(),
                XDP_PASS,
                Reason::Pass(PassReason::NotTunnel),
                dst,
            );
        }
    });
}

#[test]
fn endpoint_and_prefix_changes_take_effect_and_leave_nothing_behind() {
    with_fixture(|fx| {
        let moved = TunnelSpec {
            endpoint: Endpoint::Ipv4(Ipv4Addr::new(198, 51, 100, 11)),
            routed_prefixes: vec!["2001:db8:1111::/48".parse().unwrap()],
            ..spec(1)
        };
        fx.dp.upsert(&moved).unwrap();
        // The old endpoint is unknown now, the new one works.
        let inner = udp6(link_addr(1, 2), INET_HOST, 64, b"x");
        let before = fx.snapshot();
        assert_eq!(
            run(fx, &from_client(client_v4(1), &inner), fx.eth4).0,
            XDP_DROP
        );
        before.assert_one(
            &fx.snapshot(),
            XDP_DROP,
            Reason::Drop(DropReason::UnknownEndpoint),
            "old endpoint",
        );
        assert_eq!(
            run(
                fx,
                &from_client(moved.endpoint.ipv4().unwrap(), &inner),
                fx.eth4
            )
            .0,
            XDP_REDIRECT
        );
        // Encapsulation goes to the new endpoint.
        let (action, out) = run(fx, &encap_frame(link_addr(1, 2)), fx.eth6);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(&out[30..34], &moved.endpoint.ipv4().unwrap().octets());
        // The old routed prefix is gone, the new one is there.
        assert_eq!(
            run(fx, &encap_frame(routed_addr(1, 1)), fx.eth6).0,
            XDP_PASS
        );
        assert_eq!(
            run(
                fx,
                &encap_frame("2001:db8:1111::1".parse().unwrap()),
                fx.eth6
            )
            .0,
            XDP_REDIRECT
        );

        fx.dp.remove(1).unwrap();
        for frame in [
            encap_frame(link_addr(1, 2)),
            encap_frame("2001:db8:1111::1".parse().unwrap()),
        ] {
            assert_eq!(
                run(fx, &frame, fx.eth6).0,
                XDP_PASS,
                "removed tunnel's prefix"
            );
        }
        assert_eq!(
            run(
                fx,
                &from_client(moved.endpoint.ipv4().unwrap(), &inner),
                fx.eth4
            )
            .0,
            XDP_DROP
        );
        // The freed slot serves the next tunnel with fresh counters.
        let five = TunnelSpec {
            id: 5,
            endpoint: Endpoint::Ipv4(Ipv4Addr::new(198, 51, 100, 50)),
            link_prefix: Some("2001:db8:10:5::/64".parse().unwrap()),
            routed_prefixes: vec![],
            ..spec(1)
        };
        fx.dp.upsert(&five).unwrap();
        assert_eq!(
            fx.dp.tunnel_counters(5).unwrap().unwrap(),
            Default::default()
        );
        assert_eq!(
            run(
                fx,
                &encap_frame("2001:db8:10:5::2".parse().unwrap()),
                fx.eth6
            )
            .0,
            XDP_REDIRECT
        );
    });
}

#[test]
fn cached_next_hops_follow_invalidation() {
    with_fixture(|fx| {
        let new_mac = [0x02, 0, 0, 0, 0xbe, 0xef];
        // Fill both caches.
        assert_eq!(
            run(fx, &decap_frame(1, link_addr(1, 2)), fx.eth4).1[..6],
            INET_MAC
        );
        assert_eq!(
            run(fx, &encap_frame(link_addr(1, 2)), fx.eth6).1[..6],
            ISP_MAC
        );
        set_neighbour(&INET_HOST.to_string(), "02:00:00:00:be:ef", "eth6");
        set_neighbour(&GW_V4.to_string(), "02:00:00:00:be:ef", "eth4");
        // Until the controller says the network changed, the cached hops are used...
        assert_eq!(
            run(fx, &decap_frame(1, link_addr(1, 2)), fx.eth4).1[..6],
            INET_MAC
        );
        assert_eq!(
            run(fx, &encap_frame(link_addr(1, 2)), fx.eth6).1[..6],
            ISP_MAC
        );
        // ...and after it does, the new neighbour.
        fx.dp.invalidate_nexthops().unwrap();
        assert_eq!(
            run(fx, &decap_frame(1, link_addr(1, 2)), fx.eth4).1[..6],
            new_mac
        );
        assert_eq!(
            run(fx, &encap_frame(link_addr(1, 2)), fx.eth6).1[..6],
            new_mac
        );
    });
}

#[test]
fn cached_next_hops_expire_and_the_cache_can_be_off() {
    for (cache, age_ms) in [(true, 1), (false, 1_000)] {
        std::thread::spawn(move || {
            let mut fx = Fixture::network_with(dataplane::Options {
                max_tunnels: 64,
                max_prefixes: 256,
                nexthop_cache: cache,
                nexthop_max_age_ms: age_ms,
                ..dataplane::Options::new("test")
            });
            fx.dp.upsert(&spec(1)).unwrap();
            assert_eq!(
                run(&fx, &decap_frame(1, link_addr(1, 2)), fx.eth4).1[..6],
                INET_MAC
            );
            set_neighbour(&INET_HOST.to_string(), "02:00:00:00:be:ef", "eth6");
            // Older than the maximum age (the coarse clock ticks every few ms).
            std::thread::sleep(std::time::Duration::from_millis(50));
            let (action, out) = run(&fx, &decap_frame(1, link_addr(1, 2)), fx.eth4);
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(
                out[..6],
                [0x02, 0, 0, 0, 0xbe, 0xef],
                "cache {cache}, max age {age_ms} ms"
            );
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    }
}

#[test]
fn decap_and_encap_count_once_with_the_cache_warm() {
    with_fixture(|fx| {
        for _ in 0..3 {
            let inner = udp6(link_addr(1, 2), INET_HOST, 64, b"again");
            let want = ether(
                POP6_MAC,
                INET_MAC,
                EtherType::IPV6,
                &hop_decremented(&inner),
            );
            let before = fx.snapshot();
            let (action, out) = run(fx, &from_client(client_v4(1), &inner), fx.eth4);
            assert_eq!(action, XDP_REDIRECT);
            assert_bytes(&out, &want, "decap, cache warm");
            before.assert_one(
                &fx.snapshot(),
                XDP_REDIRECT,
                Reason::Did(Event::Decap),
                "decap",
            );
        }
    });
}

/// Removes a pinned test instance, also when the test fails.
struct Pins(String);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = dataplane::detach_instance(&self.0);
    }
}

#[test]
fn pinned_tables_keep_their_size_and_tunnels_when_the_configured_size_changes() {
    std::thread::spawn(|| {
        let instance = format!("test-resize-{}", std::process::id());
        let _pins = Pins(instance.clone());
        let opts = |max_tunnels| dataplane::Options {
            pin: true,
            max_tunnels,
            max_prefixes: 256,
            ..dataplane::Options::new(&instance)
        };
        let mut fx = Fixture::network_with(opts(64));
        // More tunnels than the smaller size below, so that some sit in slots beyond it.
        let ids: Vec<u32> = (100..140).collect();
        for &id in &ids {
            let n = id - 100;
            fx.dp
                .upsert(&TunnelSpec {
                    id,
                    endpoint: Endpoint::Ipv4(Ipv4Addr::new(198, 18, 1, n as u8 + 1)),
                    link_prefix: Some(format!("2001:db8:20:{n:x}::/64").parse().unwrap()),
                    routed_prefixes: vec![],
                    ..spec(1)
                })
                .unwrap();
        }
        for configured in [128, 32] {
            fx.dp = dataplane::Dataplane::load(&opts(configured))
                .unwrap_or_else(|e| panic!("adopting with max_tunnels {configured}: {e:#}"));
            assert!(fx.dp.adopted());
            let mut found = fx.dp.tunnel_ids();
            found.sort_unstable();
            assert_eq!(found, ids, "max_tunnels {configured}");
            let usage = fx.dp.map_usage();
            let tunnels = usage.iter().find(|u| u.map == "TUNNELS").unwrap();
            assert_eq!(
                (tunnels.used, tunnels.capacity),
                (40, 64),
                "the pinned size, whatever is configured"
            );
        }
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

#[test]
fn a_restart_of_the_same_build_reuses_the_verified_program_over_the_same_maps() {
    std::thread::spawn(|| {
        let instance = format!("test-reuse-{}", std::process::id());
        let _pins = Pins(instance.clone());
        let opts = || dataplane::Options {
            pin: true,
            max_tunnels: 64,
            max_prefixes: 256,
            ..dataplane::Options::new(&instance)
        };
        let mut fx = Fixture::network_with(opts());
        assert!(!fx.dp.program_reused(), "nothing pinned yet: verified");
        let first = fx.dp.program_id().unwrap();
        fx.dp.upsert(&spec(1)).unwrap();
        fx.dp
            .attach("eth4", broker_userspace::config::AttachMode::Skb)
            .unwrap();
        let pinned = dataplane::pin_dir(&instance).join("program");
        assert_eq!(
            std::fs::read_dir(&pinned).unwrap().count(),
            1,
            "one program pinned"
        );

        fx.dp = dataplane::Dataplane::load(&opts()).unwrap();
        assert!(fx.dp.adopted() && fx.dp.program_reused());
        assert_eq!(fx.dp.program_id().unwrap(), first, "the same program");
        // It runs over the maps taken over, and goes back onto the pinned link.
        fx.dp.set_pop(&pop()).unwrap();
        let (action, out) = run(
            &fx,
            &decap_frame(1, "2001:db8:10:1::2".parse().unwrap()),
            fx.eth4,
        );
        assert_eq!(action, XDP_REDIRECT, "decap by the reused program");
        assert_eq!(&out[12..14], &[0x86, 0xdd], "an IPv6 frame out");
        fx.dp
            .attach("eth4", broker_userspace::config::AttachMode::Skb)
            .unwrap();

        // Maps created anew need a program verified over them.
        drop(std::mem::replace(
            &mut fx.dp,
            dataplane::Dataplane::load(&dataplane::Options {
                pin: false,
                ..opts()
            })
            .unwrap(),
        ));
        dataplane::detach_instance(&instance).unwrap();
        fx.dp = dataplane::Dataplane::load(&opts()).unwrap();
        assert!(!fx.dp.adopted() && !fx.dp.program_reused());
        assert_ne!(fx.dp.program_id().unwrap(), first);
        assert_eq!(
            std::fs::read_dir(&pinned).unwrap().count(),
            1,
            "pinned anew"
        );
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

#[test]
fn each_kinds_endpoint_map_has_its_own_size_and_refuses_beyond_it() {
    std::thread::spawn(|| {
        let instance = format!("test-kinds-{}", std::process::id());
        let _pins = Pins(instance.clone());
        let opts = |proto41| dataplane::Options {
            pin: true,
            max_tunnels: 64,
            max_prefixes: 256,
            max_endpoints: broker_userspace::config::MaxEndpoints {
                proto41: Some(proto41),
                v6udpv4: Some(4),
                v4v6: Some(1),
                ayiya: Some(1),
            },
            ..dataplane::Options::new(&instance)
        };
        let mut fx = Fixture::network_with(opts(2));
        let p41 = |id: u32| TunnelSpec {
            id,
            endpoint: Endpoint::Ipv4(Ipv4Addr::new(198, 18, 2, id as u8)),
            link_prefix: Some(format!("2001:db8:21:{id:x}::/64").parse().unwrap()),
            routed_prefixes: vec![],
            ..spec(1)
        };
        fx.dp.upsert(&p41(1)).unwrap();
        fx.dp.upsert(&p41(2)).unwrap();
        let full = fx.dp.upsert(&p41(3)).unwrap_err().to_string();
        assert!(
            full.contains("dataplane.max_endpoints.proto41"),
            "the key named: {full}"
        );
        // A tunnel keeping its kind of endpoint moves within the full map.
        fx.dp
            .upsert(&TunnelSpec {
                endpoint: Endpoint::Ipv4(Ipv4Addr::new(198, 18, 2, 99)),
                ..p41(2)
            })
            .unwrap();
        // The other kinds have room of their own.
        fx.dp
            .upsert(&TunnelSpec {
                kind: Kind::V6Udp4,
                endpoint: Endpoint::Udp4(std::net::SocketAddrV4::new(
                    Ipv4Addr::new(198, 18, 2, 3),
                    4000,
                )),
                ..p41(3)
            })
            .unwrap();
        let capacity = |dp: &dataplane::Dataplane, map: &str| {
            let u = dp.map_usage();
            let u = u.iter().find(|u| u.map == map).unwrap();
            (u.used, u.capacity)
        };
        assert_eq!(capacity(&fx.dp, "P41_ENDPOINTS"), (2, 2));
        assert_eq!(capacity(&fx.dp, "UDP_ENDPOINTS"), (1, 4));
        assert_eq!(capacity(&fx.dp, "V6_ENDPOINTS"), (0, 1));
        assert_eq!(capacity(&fx.dp, "V4_ROUTES"), (0, 1));
        assert_eq!(capacity(&fx.dp, "AYIYA_IDS"), (0, 1));
        // The kernel's maps have these sizes, and keep them when taken over with another
        // configured size.
        fx.dp = dataplane::Dataplane::load(&opts(32)).unwrap();
        assert!(fx.dp.adopted());
        assert_eq!(capacity(&fx.dp, "P41_ENDPOINTS"), (2, 2));
        for (name, want) in [("P41_ENDPOINTS", 2), ("UDP_ENDPOINTS", 4), ("AYIYA_IDS", 1)] {
            let (_, pin) = fx
                .dp
                .map_names()
                .into_iter()
                .find(|(n, _)| n == name)
                .unwrap();
            let info = aya::maps::MapInfo::from_pin(pin.unwrap()).unwrap();
            assert_eq!(info.max_entries(), want, "{name}");
        }
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// The endpoint hints in front of the endpoint maps (`ENDPOINT_HINTS`) never send a packet
/// where the maps would not: a hint left by a moved, removed or re-kinded tunnel, by the
/// tunnel that had the slot before, or by another endpoint with the same hint, is checked
/// against `TUNNELS` and the map decides.
#[test]
fn endpoint_hints_never_outlive_what_they_point_at() {
    with_fixture(|fx| {
        let inner = udp6(link_addr(1, 2), INET_HOST, 64, b"x");
        let forwarded = |fx: &Fixture, from: Ipv4Addr, id: u32, what: &str| {
            let frame = from_client(from, &udp6(link_addr(id, 2), INET_HOST, 64, b"x"));
            let before = fx.snapshot();
            assert_eq!(run(fx, &frame, fx.eth4).0, XDP_REDIRECT, "{what}");
            let t = before.tunnel_delta(&fx.snapshot(), id);
            assert_eq!(t.from_client_packets, 1, "{what}: counted to tunnel {id}");
        };
        let unknown = |fx: &Fixture, from: Ipv4Addr, what: &str| {
            let before = fx.snapshot();
            assert_eq!(
                run(fx, &from_client(from, &inner), fx.eth4).0,
                XDP_DROP,
                "{what}"
            );
            before.assert_one(
                &fx.snapshot(),
                XDP_DROP,
                Reason::Drop(DropReason::UnknownEndpoint),
                what,
            );
        };

        // A hint for tunnel 1's endpoint, then the tunnel moves.
        forwarded(fx, client_v4(1), 1, "tunnel 1, hinted from here on");
        let moved_to = Ipv4Addr::new(198, 51, 100, 11);
        let moved = TunnelSpec {
            endpoint: Endpoint::Ipv4(moved_to),
            ..spec(1)
        };
        fx.dp.upsert(&moved).unwrap();
        unknown(fx, client_v4(1), "the endpoint tunnel 1 left");
        forwarded(fx, moved_to, 1, "tunnel 1's new endpoint");
        forwarded(fx, moved_to, 1, "tunnel 1's new endpoint, hinted");

        // Removed: its hint points at an empty slot; then another tunnel takes the slot.
        fx.dp.remove(1).unwrap();
        unknown(fx, moved_to, "the removed tunnel's endpoint");
        let five_at = Ipv4Addr::new(198, 51, 100, 55);
        let five = TunnelSpec {
            id: 5,
            endpoint: Endpoint::Ipv4(five_at),
            link_prefix: Some("2001:db8:10:5::/64".parse().unwrap()),
            routed_prefixes: vec![],
            ..spec(1)
        };
        fx.dp.upsert(&five).unwrap();
        unknown(
            fx,
            moved_to,
            "the removed tunnel's endpoint, its slot reused",
        );
        forwarded(fx, five_at, 5, "the tunnel in the reused slot");

        // Another endpoint with the same hint as tunnel 2's: each packet is its own
        // tunnel's, however the hint flips between them.
        let pop = POP_V4.octets();
        let index = |a: Ipv4Addr| broker_common::maps::hint::endpoint4(a.octets(), pop, 0);
        let twin = (0..=u16::MAX)
            .map(|i| Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8))
            .find(|a| index(*a) == index(client_v4(2)))
            .expect("an address of 198.18.0.0/16 with tunnel 2's hint");
        let six = TunnelSpec {
            id: 6,
            endpoint: Endpoint::Ipv4(twin),
            link_prefix: Some("2001:db8:10:6::/64".parse().unwrap()),
            routed_prefixes: vec![],
            ..spec(2)
        };
        fx.dp.upsert(&six).unwrap();
        for round in 0..3 {
            forwarded(fx, client_v4(2), 2, &format!("tunnel 2, round {round}"));
            forwarded(
                fx,
                twin,
                6,
                &format!("tunnel 6 on tunnel 2's hint, round {round}"),
            );
        }

        // A routed prefix hinted for tunnel 2 moves to tunnel 6: traffic to it follows.
        let to_routed = |fx: &Fixture, want: Ipv4Addr, what: &str| {
            let (action, out) = run(fx, &encap_frame(routed_addr(2, 1)), fx.eth6);
            assert_eq!(action, XDP_REDIRECT, "{what}");
            assert_eq!(&out[30..34], &want.octets(), "{what}: outer destination");
        };
        to_routed(fx, client_v4(2), "tunnel 2's routed prefix");
        to_routed(fx, client_v4(2), "tunnel 2's routed prefix, hinted");
        let two_without = TunnelSpec {
            routed_prefixes: vec![],
            ..spec(2)
        };
        fx.dp.upsert(&two_without).unwrap();
        let six_with = TunnelSpec {
            routed_prefixes: spec(2).routed_prefixes,
            ..six.clone()
        };
        fx.dp.upsert(&six_with).unwrap();
        to_routed(fx, twin, "the prefix moved to tunnel 6");
        fx.dp.upsert(&six).unwrap();
        assert_eq!(
            run(fx, &encap_frame(routed_addr(2, 1)), fx.eth6).0,
            XDP_PASS,
            "the prefix nobody has any more"
        );

        // Tunnel 2 becomes v6udpv4 at the same address: its hint is not proto-41's.
        let udp = TunnelSpec {
            kind: Kind::V6Udp4,
            endpoint: Endpoint::Udp4(std::net::SocketAddrV4::new(client_v4(2), 40002)),
            ..spec(2)
        };
        fx.dp.upsert(&udp).unwrap();
        unknown(
            fx,
            client_v4(2),
            "proto-41 from a tunnel that is v6udpv4 now",
        );
    });
}
