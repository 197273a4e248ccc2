use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::{
    broker::tests::{FakeMaps, FakeRoutes},
    store::SqliteStore,
};

type TestBroker = Broker<SqliteStore, FakeMaps, FakeRoutes>;

fn broker() -> TestBroker {
    broker_with("2001:db8:20::/48")
}

/// Routed pool: two /48s.
fn broker_with(link_pool: &str) -> TestBroker {
    let mut b = crate::broker::tests::broker_with(link_pool, "2001:db8:3000::/47");
    b.create_user("alice", Some("alice-password")).unwrap();
    b
}

fn cfg() -> TspConfig {
    serde_yaml::from_str("{}").unwrap()
}

fn ask(user: Option<&str>, kind: Kind, endpoint: Endpoint, router: Option<u8>) -> TunnelAsk {
    TunnelAsk {
        user: user.map(Into::into),
        kind,
        endpoint,
        claimed_ipv4: endpoint.ipv4(),
        router,
        keepalive: 30,
        over_udp: true,
    }
}

fn p41(last: u8) -> Endpoint {
    Endpoint::Ipv4(Ipv4Addr::new(198, 51, 100, last))
}

fn udp(last: u8, port: u16) -> Endpoint {
    Endpoint::Udp4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, last), port))
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_user_gets_the_same_tunnel_back_wherever_it_connects_from() {
    let mut b = broker();
    let (id, first) = run(provide(
        &mut b,
        &ask(Some("alice"), Kind::Proto41, p41(10), None),
        &cfg(),
    ))
    .unwrap();
    assert_eq!(first.tunnel_type, RequestedType::V6V4);
    assert_eq!(first.server_ipv4, Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(
        first.server_ipv6,
        "2001:db8:20::1".parse::<std::net::Ipv6Addr>().unwrap()
    );
    assert_eq!(
        first.client_ipv6,
        "2001:db8:20::2".parse::<std::net::Ipv6Addr>().unwrap()
    );
    assert_eq!(first.keepalive, Some((30, first.server_ipv6.into())));
    assert_eq!(first.lifetime, cfg().lifetime_secs);
    assert_eq!(first.router_prefix, None);
    // Behind a NAT now, and in router mode: same tunnel, moved, with a prefix.
    let (id2, second) = run(provide(
        &mut b,
        &ask(Some("alice"), Kind::V6Udp4, udp(77, 40000), Some(56)),
        &cfg(),
    ))
    .unwrap();
    assert_eq!(id2, id);
    assert_eq!(second.tunnel_type, RequestedType::V6UdpV4);
    assert_eq!(second.client_ipv6, first.client_ipv6);
    let prefix = second.router_prefix.expect("a routed /56");
    assert_eq!(prefix.prefix_len(), 56);
    let t = b.store.tunnel(id).unwrap().unwrap();
    assert_eq!(
        (t.spec.kind, t.spec.endpoint),
        (Kind::V6Udp4, udp(77, 40000))
    );
    assert_eq!(t.origin, Origin::Tsp);
    assert!(t.expires_at.is_some());
    assert_eq!(b.maps_installed(id), Some(t.spec.clone()));
    // And again: the same prefix, never a second one.
    let (_, third) = run(provide(
        &mut b,
        &ask(Some("alice"), Kind::V6Udp4, udp(77, 40001), Some(48)),
        &cfg(),
    ))
    .unwrap();
    assert_eq!(third.router_prefix, Some(prefix));
}

#[test]
fn an_anonymous_client_at_the_same_endpoint_gets_its_tunnel_back() {
    let mut b = broker();
    let a = ask(None, Kind::V6Udp4, udp(5, 1000), None);
    let (id1, o1) = run(provide(&mut b, &a, &cfg())).unwrap();
    assert_eq!(o1.lifetime, cfg().anonymous_lifetime_secs);
    assert_eq!(o1.dns_server, std::net::Ipv6Addr::UNSPECIFIED);
    let t = b.store.tunnel(id1).unwrap().unwrap();
    assert_eq!(t.owner, None);
    assert!(t.expires_at.unwrap() >= store::now() + cfg().anonymous_lifetime_secs - 5);
    // Restarted on the same port (or renegotiating): the same tunnel, not a new /64.
    let (id2, o2) = run(provide(&mut b, &a, &cfg())).unwrap();
    assert_eq!((id2, o2.client_ipv6), (id1, o1.client_ipv6));
    assert_eq!(b.store.tunnels().unwrap().len(), 1);
    // A user logging in from that endpoint takes the endpoint; the anonymous one goes.
    let (id3, _) = run(provide(
        &mut b,
        &ask(Some("alice"), Kind::V6Udp4, udp(5, 1000), None),
        &cfg(),
    ))
    .unwrap();
    assert!(b.store.tunnel(id1).unwrap().is_none());
    assert_eq!(
        b.store.tunnel(id3).unwrap().unwrap().owner.as_deref(),
        Some("alice")
    );
}

#[test]
fn anonymous_tunnels_are_bounded_per_address_and_the_silent_ones_taken_over() {
    let mut b = broker();
    let cfg = cfg();
    assert_eq!(cfg.anonymous_per_source, 4, "the documented default");
    // gogoc restarted by a supervisor: a new source port every time.
    let ids: Vec<u32> = (0..4)
        .map(|i| {
            run(provide(
                &mut b,
                &ask(None, Kind::V6Udp4, udp(5, 1000 + i), None),
                &cfg,
            ))
            .unwrap()
            .0
        })
        .collect();
    // The fifth while all four are alive (several clients behind one NAT): refused.
    let fifth = ask(None, Kind::V6Udp4, udp(5, 2000), None);
    assert_eq!(
        run(provide(&mut b, &fifth, &cfg)).unwrap_err(),
        Status::ServerTooBusy
    );
    assert_eq!(b.store.tunnels().unwrap().len(), 4);
    // Another address is not held back.
    run(provide(
        &mut b,
        &ask(None, Kind::V6Udp4, udp(6, 2000), None),
        &cfg,
    ))
    .unwrap();
    // Two fall silent: the one renewed longest ago (the first) is taken over, with its
    // addresses, at the new port, awake.
    let before = b.store.tunnel(ids[0]).unwrap().unwrap();
    b.set_asleep(ids[2], true).unwrap();
    b.set_asleep(ids[0], true).unwrap();
    let (id, offer) = run(provide(&mut b, &fifth, &cfg)).unwrap();
    assert_eq!(id, ids[0]);
    assert_eq!(Some(offer.client_ipv6), before.spec.client_v6());
    let after = b.store.tunnel(id).unwrap().unwrap();
    assert_eq!(after.spec.endpoint, udp(5, 2000));
    assert!(!b.is_asleep(id));
    assert_eq!(b.store.tunnels().unwrap().len(), 5, "no tunnel added");
    // The next one takes the other silent tunnel; then all are alive again.
    let (id, _) = run(provide(
        &mut b,
        &ask(None, Kind::V6Udp4, udp(5, 2001), None),
        &cfg,
    ))
    .unwrap();
    assert_eq!(id, ids[2]);
    assert_eq!(
        run(provide(
            &mut b,
            &ask(None, Kind::V6Udp4, udp(5, 2002), None),
            &cfg
        ))
        .unwrap_err(),
        Status::ServerTooBusy
    );
}

#[test]
fn a_disabled_anonymous_tunnel_is_not_taken_over() {
    let mut b = broker();
    let a = ask(None, Kind::V6Udp4, udp(5, 1000), None);
    let (id, _) = run(provide(&mut b, &a, &cfg())).unwrap();
    run(b.update_tunnel(
        id,
        &TunnelChange {
            state: Some(State::Disabled),
            ..TunnelChange::default()
        },
    ))
    .unwrap();
    assert_eq!(
        run(provide(&mut b, &a, &cfg())).unwrap_err(),
        Status::ServerError
    );
    assert_eq!(
        b.store.tunnel(id).unwrap().unwrap().spec.state,
        State::Disabled
    );
}

#[test]
fn conflicts_and_exhaustion_have_their_codes() {
    let mut b = broker();
    run(provide(
        &mut b,
        &ask(Some("alice"), Kind::Proto41, p41(10), None),
        &cfg(),
    ))
    .unwrap();
    // Someone else asks for proto-41 from the same address.
    assert_eq!(
        run(provide(
            &mut b,
            &ask(None, Kind::Proto41, p41(10), None),
            &cfg()
        ))
        .unwrap_err(),
        Status::Ipv4AlreadyUsed
    );
    b.create_user("bob", Some("bob-password")).unwrap();
    assert_eq!(
        run(provide(
            &mut b,
            &ask(Some("bob"), Kind::Proto41, p41(11), Some(64)),
            &cfg()
        ))
        .unwrap_err(),
        Status::UnsupportedPrefixLength
    );
    // The routed pool holds two /48s.
    for (i, u) in ["bob", "carol", "dave"].iter().enumerate() {
        if *u != "bob" {
            b.create_user(u, Some("long-password")).unwrap();
        }
        let r = run(provide(
            &mut b,
            &ask(Some(u), Kind::Proto41, p41(20 + i as u8), Some(48)),
            &cfg(),
        ));
        if i < 2 {
            assert!(r.is_ok(), "{u}");
        } else {
            assert_eq!(r.unwrap_err(), Status::PrefixLengthUnavailable);
        }
    }
}

#[test]
fn an_exhausted_link_pool_is_no_more_tunnels() {
    let mut b = broker_with("2001:db8:20::/63");
    b.create_user("bob", Some("bob-password")).unwrap();
    run(provide(
        &mut b,
        &ask(None, Kind::Proto41, p41(1), None),
        &cfg(),
    ))
    .unwrap();
    run(provide(
        &mut b,
        &ask(Some("bob"), Kind::Proto41, p41(2), None),
        &cfg(),
    ))
    .unwrap();
    assert_eq!(
        run(provide(
            &mut b,
            &ask(None, Kind::Proto41, p41(3), None),
            &cfg()
        ))
        .unwrap_err(),
        Status::NoTunnels
    );
}

#[test]
fn v4v6_offers_inner_ipv4_and_outer_ipv6() {
    let mut b = broker();
    let client6: std::net::Ipv6Addr = "2001:db8:ffff::6".parse().unwrap();
    let (_, o) = run(provide(
        &mut b,
        &ask(Some("alice"), Kind::V4In6, Endpoint::Ipv6(client6), None),
        &cfg(),
    ))
    .unwrap();
    assert_eq!(o.tunnel_type, RequestedType::V4V6);
    assert_eq!(o.server_ipv4, Ipv4Addr::new(203, 0, 113, 1));
    assert_eq!(
        o.server_ipv6,
        "2001:db8:ffff::1".parse::<std::net::Ipv6Addr>().unwrap()
    );
    assert_eq!(o.client_ipv4, Ipv4Addr::new(203, 0, 113, 2));
    assert_eq!(o.client_ipv6, client6);
    assert_eq!(
        o.keepalive,
        Some((30, Ipv4Addr::new(203, 0, 113, 1).into()))
    );
    assert_eq!(o.mtu, 1280);
    // Her IPv6 tunnel is another one.
    let (id6, _) = run(provide(
        &mut b,
        &ask(Some("alice"), Kind::Proto41, p41(10), None),
        &cfg(),
    ))
    .unwrap();
    assert_eq!(b.store.tunnels().unwrap().len(), 2);
    assert!(b
        .store
        .tunnel(id6)
        .unwrap()
        .unwrap()
        .spec
        .link_prefix
        .is_some());
}

#[test]
fn a_tunnel_the_operator_disabled_stays_disabled() {
    let mut b = broker();
    let a = ask(Some("alice"), Kind::Proto41, p41(10), None);
    let (id, _) = run(provide(&mut b, &a, &cfg())).unwrap();
    let off = TunnelChange {
        state: Some(State::Disabled),
        ..Default::default()
    };
    run(b.update_tunnel(id, &off)).unwrap();
    assert_eq!(
        run(provide(&mut b, &a, &cfg())).unwrap_err(),
        Status::ServerError
    );
    assert_eq!(
        b.store.tunnel(id).unwrap().unwrap().spec.state,
        State::Disabled
    );
}

#[test]
fn a_new_session_wakes_a_sleeping_tunnel() {
    let mut b = broker();
    let a = ask(Some("alice"), Kind::Proto41, p41(10), None);
    let (id, _) = run(provide(&mut b, &a, &cfg())).unwrap();
    b.set_asleep(id, true).unwrap();
    assert_eq!(b.maps_installed(id).unwrap().state, State::Down);
    run(provide(&mut b, &a, &cfg())).unwrap();
    assert!(!b.is_asleep(id));
    assert_eq!(b.maps_installed(id).unwrap().state, State::Up);
}

#[test]
fn forged_sources_hold_a_bounded_number_of_tunnels_for_a_bounded_time() {
    let mut b = broker();
    let cfg = TspConfig {
        anonymous_unproven_max: 2,
        ..cfg()
    };
    // Three "clients" that will never send a packet (addresses a forger used).
    let (a, _) = run(provide(
        &mut b,
        &ask(None, Kind::V6Udp4, udp(1, 1000), None),
        &cfg,
    ))
    .unwrap();
    let (c, _) = run(provide(
        &mut b,
        &ask(None, Kind::V6Udp4, udp(2, 1000), None),
        &cfg,
    ))
    .unwrap();
    assert_eq!(
        run(provide(
            &mut b,
            &ask(None, Kind::V6Udp4, udp(3, 1000), None),
            &cfg
        ))
        .unwrap_err(),
        Status::ServerTooBusy
    );
    // A user is not held up, nor an anonymous session over TCP (its source is proven).
    let over_tcp = TunnelAsk {
        over_udp: false,
        ..ask(None, Kind::Proto41, p41(4), None)
    };
    run(provide(&mut b, &over_tcp, &cfg)).unwrap();
    run(provide(
        &mut b,
        &ask(Some("alice"), Kind::V6Udp4, udp(5, 1000), None),
        &cfg,
    ))
    .unwrap();
    // The first one's client is heard; the other's never: at the deadline it goes (its
    // /64 free at once: Broker::discard_unused, as undone creations).
    b.maps.heard.insert(a);
    let later = std::time::Instant::now()
        + std::time::Duration::from_secs(cfg.negotiation_timeout_secs + 2 * 30 + 1);
    assert_eq!(
        run(b.sweep_unproven(std::time::Instant::now())).unwrap(),
        Vec::<u32>::new()
    );
    assert_eq!(run(b.sweep_unproven(later)).unwrap(), vec![c]);
    assert!(b.store.tunnel(c).unwrap().is_none());
    assert!(b.store.tunnel(a).unwrap().is_some(), "heard: kept");
    assert_eq!(b.unproven(), 0);
    // And there is room again.
    run(provide(
        &mut b,
        &ask(None, Kind::V6Udp4, udp(6, 1000), None),
        &cfg,
    ))
    .unwrap();
}

#[test]
fn a_users_quotas_hold_over_tsp_as_over_the_api() {
    let mut b = broker();
    b.quotas.routed_prefixes_per_user = 0;
    let router = ask(Some("alice"), Kind::Proto41, p41(10), Some(56));
    assert_eq!(
        run(provide(&mut b, &router, &cfg())).unwrap_err(),
        Status::PrefixLengthUnavailable,
        "a routed prefix beyond the quota"
    );
    // Without the prefix the tunnel is made; asking for one later is refused the same way.
    let host = ask(Some("alice"), Kind::Proto41, p41(10), None);
    run(provide(&mut b, &host, &cfg())).unwrap();
    assert_eq!(
        run(provide(&mut b, &router, &cfg())).unwrap_err(),
        Status::PrefixLengthUnavailable
    );
    b.create_user("bob", Some("bob-password")).unwrap();
    b.quotas.tunnels_per_user = 0;
    assert_eq!(
        run(provide(
            &mut b,
            &ask(Some("bob"), Kind::Proto41, p41(11), None),
            &cfg()
        ))
        .unwrap_err(),
        Status::NoTunnels,
        "a tunnel beyond the quota"
    );
    // A tunnel alice already holds is hers to keep using whatever the quota.
    run(provide(&mut b, &host, &cfg())).unwrap();
}

/// A client asking while the shared store is away is told to come back later (530), not
/// that the server failed or that it may not have a tunnel.
#[test]
fn an_unavailable_store_is_server_too_busy() {
    let away = BrokerError::Store(StoreError::Unavailable {
        what: "connecting again".into(),
    });
    assert_eq!(status_of(&away), Status::ServerTooBusy);
    assert_eq!(Status::ServerTooBusy as u16, 530);
}

#[test]
fn a_user_whose_tunnel_lives_on_another_pop_is_redirected_there() {
    use crate::store::PopReport;
    let (mut a, mut b) = crate::broker::pops_tests::two();
    a.create_user("alice", Some("alice-password")).unwrap();
    // alice's TSP tunnel, made at b.
    let alice = ask(Some("alice"), Kind::Proto41, p41(10), None);
    let (id, _) = run(provide(&mut b, &alice, &cfg())).unwrap();
    // b has not said where its TSP server is: a cannot send her there.
    assert!(matches!(
        run(provide_or_redirect(&mut a, &alice, &cfg())),
        Err(Status::ServerError)
    ));
    let report = PopReport {
        ipv4: Ipv4Addr::new(192, 0, 2, 2),
        ipv6: None,
        tsp: Some((Ipv4Addr::new(192, 0, 2, 2), 3653).into()),
        version: "0".into(),
        attached: true,
        started_at: 0,
    };
    b.store.report_pop(&report, crate::store::now()).unwrap();
    match run(provide_or_redirect(&mut a, &alice, &cfg())) {
        Ok(Provided::Redirect(to)) => assert_eq!(to, vec![IpAddr::from([192, 0, 2, 2])]),
        other => panic!("{other:?}"),
    }
    // At b, her own tunnel.
    match run(provide_or_redirect(&mut b, &alice, &cfg())) {
        Ok(Provided::Offer(got, _)) => assert_eq!(got, id),
        other => panic!("{other:?}"),
    }
    // Anonymous clients are served where they arrive.
    assert!(matches!(
        run(provide_or_redirect(
            &mut a,
            &ask(None, Kind::Proto41, p41(11), None),
            &cfg()
        )),
        Ok(Provided::Offer(..))
    ));
}

#[test]
fn a_users_tunnel_is_served_as_known_while_the_store_is_away() {
    use crate::{
        model::Pop,
        store::{PgStore, PoolSet, Remembered},
    };
    let mut pg = broker_tests::postgres::Cluster::start().expect("a PostgreSQL cluster");
    pg.create_database("b").unwrap();
    let pools = PoolSet {
        link: vec!["2001:db8:20::/48".parse().unwrap()],
        ..Default::default()
    };
    let store = PgStore::connect(&pg.conninfo("b"), Some(pg.password()), pools).unwrap();
    let pop = Pop {
        ipv4: Ipv4Addr::new(192, 0, 2, 1),
        ipv6: None,
        tsp_port: Some(3653),
        ayiya_port: None,
        v4v6_pool: None,
    };
    let mut b = Broker::new(
        Remembered::new(store, true),
        FakeMaps::default(),
        FakeRoutes::default(),
        pop,
    );
    b.create_user("alice", Some("alice-password")).unwrap();
    let alice = |port| ask(Some("alice"), Kind::V6Udp4, udp(10, port), None);
    let (id, first) = run(provide(&mut b, &alice(4000), &cfg())).unwrap();

    assert!(pg.stop(), "PostgreSQL stopped");
    // Her next session gets the tunnel she had.
    let (again, offer) = run(provide(&mut b, &alice(4000), &cfg())).unwrap();
    assert_eq!((again, offer.client_ipv6), (id, first.client_ipv6));
    // From a new NAT mapping: the maps follow now, the store later.
    let (moved, _) = run(provide(&mut b, &alice(4001), &cfg())).unwrap();
    assert_eq!(moved, id);
    assert_eq!(b.maps_installed(id).unwrap().endpoint, udp(10, 4001));
    // What needs a write waits for the store.
    let anonymous = ask(None, Kind::V6Udp4, udp(11, 4000), None);
    assert_eq!(
        run(provide(&mut b, &anonymous, &cfg())).err(),
        Some(Status::ServerTooBusy)
    );

    pg.start_again().unwrap();
    let mut written = false;
    for _ in 0..100 {
        if run(b.flush_deferred()).is_ok_and(|n| n == 1) {
            written = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(written, "the endpoint learnt meanwhile is stored");
    assert_eq!(
        b.store.tunnel(id).unwrap().unwrap().spec.endpoint,
        udp(10, 4001)
    );
}
