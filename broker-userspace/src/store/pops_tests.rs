//! Several PoPs on one PostgreSQL store (docs/MULTI-POP.md): each reads only its own
//! tunnels, allocates from the pools of the PoP a tunnel is for, follows its own
//! generation, and hears the changes made to its tunnels elsewhere.
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv6Net;

use super::{
    test_engines::shared, Heard, Home, NewTunnel, Notified, PoolSet, PopReport, Store, StoreError,
    TunnelChange, TunnelFilter,
};
use crate::model::{Endpoint, Kind, State, TunnelSpec};

fn net(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn home(pop: &str, n: u8) -> Home {
    Home {
        pop: pop.into(),
        pools: PoolSet {
            link: vec![net(&format!("2001:db8:{n}0::/56"))],
            routed: vec![net(&format!("2001:db8:{n}000::/40"))],
            routed_lengths: vec![48, 56],
            quarantine_secs: 3600,
            v4v6: Some(format!("192.0.2.{}/29", n * 8).parse().unwrap()),
        },
    }
}

fn proto41(last: u8, pop: Option<&str>) -> NewTunnel {
    NewTunnel {
        pop: pop.map(Into::into),
        routed_length: Some(56),
        ..NewTunnel::api(
            None,
            Kind::Proto41,
            Endpoint::Ipv4(Ipv4Addr::new(198, 51, 100, last)),
        )
    }
}

#[test]
fn each_pop_reads_its_own_tunnels_drawn_from_its_own_pools() {
    let [mut a, b] = <[_; 2]>::try_from(shared([home("a", 1), home("b", 2)]))
        .ok()
        .unwrap();
    let (ga, gb) = (a.generation().unwrap(), b.generation().unwrap());
    // Created through PoP a for PoP b: b's pools, b's tunnel.
    let t = a.create_tunnel(&proto41(1, Some("b")), 1).unwrap();
    assert_eq!(t.pop, "b");
    assert_eq!(t.spec.link_prefix, Some(net("2001:db8:20::/64")));
    assert_eq!(t.spec.routed_prefixes, vec![net("2001:db8:2000::/56")]);
    let own = a.create_tunnel(&proto41(2, None), 1).unwrap();
    assert_eq!(own.spec.link_prefix, Some(net("2001:db8:10::/64")));
    assert_eq!(a.tunnels().unwrap(), vec![own.clone()]);
    assert_eq!(b.tunnels().unwrap(), vec![t.clone()]);
    // Any PoP reads any tunnel; listings filter by PoP.
    assert_eq!(b.tunnel(own.spec.id).unwrap(), Some(own.clone()));
    let f = TunnelFilter {
        pop: Some("b".into()),
        ..Default::default()
    };
    assert_eq!(a.tunnel_page(&f, None, 10).unwrap(), vec![t.clone()]);
    // Each generation moved with its own PoP's change only once.
    assert!(a.generation().unwrap().1 > ga.1);
    assert!(b.generation().unwrap().1 > gb.1);
    let gb = b.generation().unwrap();
    a.update_tunnel(
        own.spec.id,
        &TunnelChange {
            mtu: Some(1400),
            ..Default::default()
        },
        2,
    )
    .unwrap();
    assert_eq!(b.generation().unwrap(), gb);
    // The census is per PoP.
    assert_eq!(a.census().unwrap(), vec![(Kind::Proto41, State::Up, 1)]);
    let pops = a.pops().unwrap();
    assert_eq!(
        pops.iter()
            .map(|p| (p.name.as_str(), p.tunnel_count()))
            .collect::<Vec<_>>(),
        vec![("a", 1), ("b", 1)]
    );
    // A PoP nobody registered is refused.
    assert!(matches!(
        a.create_tunnel(&proto41(3, Some("c")), 3),
        Err(StoreError::NoSuchPop { .. })
    ));
}

#[test]
fn a_move_renumbers_from_the_new_pops_pools_and_quarantines_the_old() {
    let [mut a, b] = <[_; 2]>::try_from(shared([home("a", 1), home("b", 2)]))
        .ok()
        .unwrap();
    let t = a.create_tunnel(&proto41(1, None), 1).unwrap();
    let v4v6 = NewTunnel::api(
        None,
        Kind::V4In6,
        Endpoint::Ipv6("2001:db8:ffff::1".parse().unwrap()),
    );
    let inner = a.create_tunnel(&v4v6, 1).unwrap();
    let to_b = TunnelChange {
        pop: Some("b".into()),
        ..Default::default()
    };
    let moved = a.update_tunnel(t.spec.id, &to_b, 2).unwrap();
    assert_eq!(moved.pop, "b");
    assert_eq!(moved.spec.link_prefix, Some(net("2001:db8:20::/64")));
    assert_eq!(moved.spec.routed_prefixes, vec![net("2001:db8:2000::/56")]);
    assert_eq!(moved.spec.endpoint, t.spec.endpoint);
    assert_eq!(b.tunnel(t.spec.id).unwrap(), Some(moved.clone()));
    assert!(a.tunnels().unwrap().iter().all(|x| x.spec.id != t.spec.id));
    assert_eq!(b.tunnels().unwrap(), vec![moved]);
    // The old prefixes are in quarantine, not free.
    let claim = NewTunnel {
        routed_length: None,
        routed_prefix: t.spec.routed_prefixes.first().copied(),
        ..proto41(9, None)
    };
    assert!(matches!(
        a.create_tunnel(&claim, 3),
        Err(StoreError::PrefixInUse { .. })
    ));
    let inner_moved = a.update_tunnel(inner.spec.id, &to_b, 2).unwrap();
    assert_eq!(
        inner_moved.spec.client_v4,
        Some(Ipv4Addr::new(192, 0, 2, 18))
    );
    assert_eq!(
        b.census().unwrap(),
        vec![(Kind::Proto41, State::Up, 1), (Kind::V4In6, State::Up, 1)]
    );
    assert!(a.census().unwrap().is_empty());
}

#[test]
fn pools_that_overlap_another_pops_are_refused_and_statics_stay_apart() {
    let [mut a, mut b] = <[_; 2]>::try_from(shared([home("a", 1), home("b", 2)]))
        .ok()
        .unwrap();
    let spec = |id: u32, last: u8, link: &str| TunnelSpec {
        id,
        kind: Kind::Proto41,
        state: State::Up,
        endpoint: Endpoint::Ipv4(Ipv4Addr::new(203, 0, 113, last)),
        link_prefix: Some(net(link)),
        routed_prefixes: vec![],
        client_v4: None,
        mtu: 1280,
        keepalive: None,
        ayiya_key: None,
    };
    a.sync_static(&[spec(100, 1, "2001:db8:f:1::/64")], 1)
        .unwrap();
    b.sync_static(&[spec(200, 2, "2001:db8:f:2::/64")], 1)
        .unwrap();
    // b's declaration does not remove a's, and cannot take its id.
    assert_eq!(a.tunnels().unwrap().len(), 1);
    assert!(matches!(
        b.sync_static(&[spec(100, 3, "2001:db8:f:3::/64")], 2),
        Err(StoreError::IdTaken { id: 100 })
    ));
    // A static tunnel moves by moving it in the configuration.
    let to_b = TunnelChange {
        pop: Some("b".into()),
        ..Default::default()
    };
    assert!(matches!(
        a.update_tunnel(100, &to_b, 3),
        Err(StoreError::Invalid { .. })
    ));
    // A third PoP whose pools overlap b's may not join.
    let (conninfo, password) = b.conninfo_for_tests();
    let mut c = home("c", 3);
    c.pools.routed = vec![net("2001:db8:2000::/36")];
    let e = super::PgStore::connect(&conninfo, Some(&password), c)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("overlaps the pools of PoP \"b\""),
        "{e}"
    );
}

#[test]
fn a_pop_hears_the_changes_made_to_its_tunnels_elsewhere_in_commit_order() {
    let [mut a, b] = <[_; 2]>::try_from(shared([home("a", 1), home("b", 2)]))
        .ok()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut heard = b.listen();
    let next = |heard: &mut tokio::sync::mpsc::UnboundedReceiver<Heard>| {
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), heard.recv())
                .await
                .expect("a notification within 10 s")
                .expect("the listener runs")
        })
    };
    assert_eq!(next(&mut heard), Heard::Listening);
    // Not b's: nothing is heard of it.
    a.create_tunnel(&proto41(1, None), 1).unwrap();
    let t = a.create_tunnel(&proto41(2, Some("b")), 1).unwrap();
    let mut last = 0;
    // The tunnel's row and its routed prefix: two changes, one transaction.
    for _ in 0..2 {
        match next(&mut heard) {
            Heard::Changed(Notified { id, generation }) => {
                assert_eq!(id, t.spec.id);
                assert!(generation > last);
                last = generation;
            }
            h => panic!("{h:?}"),
        }
    }
    assert_eq!(b.generation().unwrap().1, last);
    a.delete_tunnel(t.spec.id, 2).unwrap();
    match next(&mut heard) {
        Heard::Changed(n) => assert_eq!(n.id, t.spec.id),
        h => panic!("{h:?}"),
    }
}

#[test]
fn a_pop_reports_itself() {
    let [mut a, b] = <[_; 2]>::try_from(shared([home("a", 1), home("b", 2)]))
        .ok()
        .unwrap();
    let report = PopReport {
        ipv4: Ipv4Addr::new(192, 0, 2, 1),
        ipv6: Some("2001:db8::1".parse().unwrap()),
        tsp: Some(SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 3653))),
        version: "1.2.3".into(),
        attached: true,
        started_at: 5,
    };
    a.report_pop(&report, 100).unwrap();
    let pops = b.pops().unwrap();
    assert_eq!(pops[0].name, "a");
    assert_eq!(pops[0].report.as_ref(), Some(&report));
    assert_eq!(pops[0].last_seen, Some(100));
    assert!(pops[0].healthy(120, 30));
    assert!(!pops[0].healthy(131, 30));
    assert_eq!(pops[1].report, None);
    assert_eq!(pops[1].pools, home("b", 2).pools);
}
