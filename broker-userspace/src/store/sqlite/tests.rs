use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use ipnet::Ipv6Net;
use proptest::prelude::*;

use rusqlite::Connection;

use super::*;
use crate::store::test_engines::{on_every_engine, Open};
use crate::store::PoolSet;
use crate::{
    model::{Endpoint, Kind, State, TunnelSpec},
    store::{NewTunnel, Origin, Store, StoreError, TunnelChange},
};

fn net(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn pools() -> PoolSet {
    PoolSet {
        link: vec![net("2001:db8:10::/48")],
        routed: vec![net("2001:db8:1000::/40")],
        routed_lengths: vec![48, 56, 64],
        quarantine_secs: 100,
        v4v6: Some("203.0.113.0/29".parse().unwrap()),
    }
}

fn p41(remote: u8) -> Endpoint {
    Endpoint::Ipv4(Ipv4Addr::new(198, 51, 100, remote))
}

fn new(remote: u8, routed: Option<u8>) -> NewTunnel {
    NewTunnel {
        mtu: 1480,
        routed_length: routed,
        ..NewTunnel::api(None, Kind::Proto41, p41(remote))
    }
}

fn v4v6(last: u16) -> NewTunnel {
    NewTunnel {
        kind: Kind::V4In6,
        endpoint: Endpoint::Ipv6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, last)),
        mtu: 1460,
        ..new(0, None)
    }
}

/// What the store keeps of a password (the derivation is crate::secret's business; the
/// store only keeps and returns it).
fn kept(password: &str) -> crate::secret::UserSecrets {
    crate::secret::UserSecrets {
        password_hash: format!("$argon2id$of-{password}"),
        tic_md5: format!("md5-of-{password}"),
        digest_realm: "broker".into(),
        digest_ha1: format!("ha1-of-{password}"),
    }
}

fn allocates_link_and_routed_prefixes_and_tokens(open: Open) {
    let mut s = open(pools());
    let a = s.create_tunnel(&new(1, Some(48)), 10).unwrap();
    let b = s.create_tunnel(&new(2, Some(56)), 10).unwrap();
    assert_eq!(a.spec.id, 1);
    assert_eq!(b.spec.id, 2);
    assert_eq!(a.spec.link_prefix, Some(net("2001:db8:10::/64")));
    assert_eq!(b.spec.link_prefix, Some(net("2001:db8:10:1::/64")));
    assert_eq!(a.spec.routed_prefixes, vec![net("2001:db8:1000::/48")]);
    assert_eq!(b.spec.routed_prefixes[0].prefix_len(), 56);
    assert!(!a.spec.routed_prefixes[0].contains(&b.spec.routed_prefixes[0]));
    assert_eq!(a.password.len(), 16);
    // The update key is handed out once; only its SHA-256 is kept.
    let key = a.update_key.clone().unwrap();
    assert_eq!(key.len(), 16);
    assert_ne!(a.password, key);
    assert_eq!(a.update_key_hash, crate::secret::hash_key(&key));
    assert_ne!(a.password, b.password);
    assert_eq!(s.tunnels().unwrap(), vec![a.clone(), b]);
    assert_eq!(s.tunnel(1).unwrap(), Some(a));
}

fn refuses_unknown_owner_duplicate_endpoint_and_unoffered_length(open: Open) {
    let mut s = open(pools());
    let mut req = new(1, None);
    req.owner = Some("nobody".into());
    assert!(matches!(
        s.create_tunnel(&req, 0),
        Err(StoreError::NoSuchUser { .. })
    ));
    s.create_tunnel(&new(1, None), 0).unwrap();
    assert!(matches!(
        s.create_tunnel(&new(1, None), 0),
        Err(StoreError::DuplicateEndpoint { id: 1, .. })
    ));
    assert!(matches!(
        s.create_tunnel(&new(2, Some(60)), 0),
        Err(StoreError::LengthNotOffered { len: 60, .. })
    ));
    // Nothing half made: the failed requests left no tunnel and no allocation behind,
    // so the next tunnel gets the next /64.
    assert_eq!(s.tunnels().unwrap().len(), 1);
    let next = s.create_tunnel(&new(3, None), 0).unwrap();
    assert_eq!(next.spec.link_prefix, Some(net("2001:db8:10:1::/64")));
}

fn a_named_prefix_must_be_in_a_pool_and_free(open: Open) {
    let mut s = open(pools());
    let req = NewTunnel {
        link_prefix: Some(net("2001:db8:10:77::/64")),
        routed_prefix: Some(net("2001:db8:1000:ab00::/56")),
        ..new(1, None)
    };
    let t = s.create_tunnel(&req, 0).unwrap();
    assert_eq!(t.spec.link_prefix, Some(net("2001:db8:10:77::/64")));
    assert_eq!(t.spec.routed_prefixes, vec![net("2001:db8:1000:ab00::/56")]);
    let outside = NewTunnel {
        link_prefix: Some(net("2001:db8:99::/64")),
        ..new(2, None)
    };
    assert_eq!(
        s.create_tunnel(&outside, 0).unwrap_err().to_string(),
        "2001:db8:99::/64 is not inside the link pools"
    );
    let taken = NewTunnel {
        routed_prefix: Some(net("2001:db8:1000:ab00::/48")),
        ..new(2, None)
    };
    assert!(matches!(
        s.create_tunnel(&taken, 0),
        Err(StoreError::PrefixInUse { .. })
    ));
    // Allocation walks around a named prefix.
    let named = net("2001:db8:1000:ab00::/56");
    for remote in 3..40 {
        let r = s
            .create_tunnel(&new(remote, Some(48)), 0)
            .unwrap()
            .spec
            .routed_prefixes[0];
        assert!(
            !r.contains(&named) && !named.contains(&r),
            "{r} overlaps {named}"
        );
    }
}

fn a_deleted_tunnel_can_be_restored_exactly(open: Open) {
    let mut s = open(pools());
    let t = s.create_tunnel(&new(1, Some(48)), 0).unwrap();
    let gone = s.delete_tunnel(t.spec.id, 1).unwrap();
    s.restore_tunnel(&gone).unwrap();
    assert_eq!(s.tunnels().unwrap(), vec![t]);
    // Its prefixes are allocated again, not in quarantine: the pool moves on.
    let u = s.create_tunnel(&new(2, Some(48)), 500).unwrap();
    assert_ne!(u.spec.link_prefix, gone.spec.link_prefix);
    assert_ne!(u.spec.routed_prefixes, gone.spec.routed_prefixes);
}

fn an_exhausted_pool_is_a_clear_error(open: Open) {
    let mut p = pools();
    p.link = vec![net("2001:db8:10::/63")];
    let mut s = open(p);
    s.create_tunnel(&new(1, None), 0).unwrap();
    s.create_tunnel(&new(2, None), 0).unwrap();
    let e = s.create_tunnel(&new(3, None), 0).unwrap_err();
    assert_eq!(e.to_string(), "the link pool has no free /64");
}

fn freed_prefixes_come_back_only_after_the_quarantine(open: Open) {
    let mut p = pools();
    p.link = vec![net("2001:db8:10::/63")];
    let mut s = open(p);
    let a = s.create_tunnel(&new(1, None), 0).unwrap();
    s.create_tunnel(&new(2, None), 0).unwrap();
    s.delete_tunnel(a.spec.id, 50).unwrap();
    assert!(matches!(
        s.create_tunnel(&new(3, None), 149),
        Err(StoreError::PoolExhausted { .. })
    ));
    let c = s.create_tunnel(&new(3, None), 150).unwrap();
    assert_eq!(c.spec.link_prefix, a.spec.link_prefix);
    assert_ne!(c.spec.id, a.spec.id, "ids are never reused");
}

fn updates_change_endpoint_state_and_mtu(open: Open) {
    let mut s = open(pools());
    s.create_tunnel(&new(1, None), 0).unwrap();
    s.create_tunnel(&new(2, None), 0).unwrap();
    let change = TunnelChange {
        endpoint: Some(p41(9)),
        state: Some(State::Disabled),
        mtu: Some(1280),
        ..Default::default()
    };
    let t = s.update_tunnel(1, &change, 5).unwrap();
    assert_eq!(t.spec.endpoint, p41(9));
    assert_eq!(t.spec.state, State::Disabled);
    assert_eq!(t.spec.mtu, 1280);
    assert_eq!(t.updated_at, 5);
    assert_eq!(s.tunnel(1).unwrap().unwrap(), t);
    let clash = TunnelChange {
        endpoint: Some(p41(2)),
        ..Default::default()
    };
    assert!(matches!(
        s.update_tunnel(1, &clash, 6),
        Err(StoreError::DuplicateEndpoint { id: 2, .. })
    ));
    assert!(matches!(
        s.update_tunnel(9, &clash, 6),
        Err(StoreError::NoSuchTunnel { id: 9 })
    ));
}

fn v4v6_tunnels_get_an_inner_ipv4_and_no_ipv6_prefixes(open: Open) {
    let mut s = open(pools());
    let a = s.create_tunnel(&v4v6(10), 0).unwrap();
    assert_eq!(a.spec.link_prefix, None);
    assert_eq!(a.spec.prefixes().count(), 0);
    // .0 is the network, .1 the PoP.
    assert_eq!(a.spec.client_v4, Some(Ipv4Addr::new(203, 0, 113, 2)));
    assert_eq!(s.tunnel(a.spec.id).unwrap().unwrap(), a);
    assert!(matches!(
        s.create_tunnel(&v4v6(10), 0),
        Err(StoreError::DuplicateEndpoint { .. })
    ));
    let routed = NewTunnel {
        routed_length: Some(48),
        ..v4v6(11)
    };
    assert!(matches!(
        s.create_tunnel(&routed, 0),
        Err(StoreError::Invalid { .. })
    ));
    // A /29 has .2 to .6 for clients.
    for last in 11..15 {
        s.create_tunnel(&v4v6(last), 0).unwrap();
    }
    assert_eq!(
        s.create_tunnel(&v4v6(20), 0).unwrap_err().to_string(),
        "the v4v6 pool has no free /32"
    );
    // A freed address waits out the quarantine, then comes back.
    s.delete_tunnel(a.spec.id, 10).unwrap();
    assert!(s.create_tunnel(&v4v6(20), 109).is_err());
    let b = s.create_tunnel(&v4v6(20), 110).unwrap();
    assert_eq!(b.spec.client_v4, a.spec.client_v4);
    // Restoring a deleted one takes its address back.
    let gone = s.delete_tunnel(b.spec.id, 111).unwrap();
    s.restore_tunnel(&gone).unwrap();
    assert_eq!(s.tunnel(b.spec.id).unwrap().unwrap(), b);
    let mut p = pools();
    p.v4v6 = None;
    let mut s = open(p);
    assert_eq!(
        s.create_tunnel(&v4v6(1), 0).unwrap_err().to_string(),
        "no v4v6 pool is configured (pools.v4v6)"
    );
}

fn udp_endpoints_are_address_and_port_and_kinds_switch_within_a_family(open: Open) {
    let mut s = open(pools());
    let udp = |port| Endpoint::Udp4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), port));
    let req = NewTunnel {
        kind: Kind::V6Udp4,
        endpoint: udp(40000),
        origin: Origin::Tsp,
        keepalive: Some(30),
        expires_at: Some(1000),
        ..new(0, None)
    };
    let a = s.create_tunnel(&req, 0).unwrap();
    assert_eq!(s.tunnel(a.spec.id).unwrap().unwrap(), a);
    assert_eq!(a.origin, Origin::Tsp);
    // Same address, other port: another NATed client.
    s.create_tunnel(
        &NewTunnel {
            endpoint: udp(40001),
            ..req.clone()
        },
        0,
    )
    .unwrap();
    assert!(matches!(
        s.create_tunnel(&req, 0),
        Err(StoreError::DuplicateEndpoint { .. })
    ));
    // proto-41 from the same address is a different endpoint.
    s.create_tunnel(&new(1, None), 0).unwrap();
    // Out from behind the NAT: v6udpv4 becomes proto-41 (not onto a taken endpoint).
    let to_p41 = TunnelChange {
        kind: Some(Kind::Proto41),
        endpoint: Some(p41(7)),
        expires_at: Some(Some(2000)),
        add_routed_length: Some(56),
        ..Default::default()
    };
    let t = s.update_tunnel(a.spec.id, &to_p41, 1).unwrap();
    assert_eq!((t.spec.kind, t.spec.endpoint), (Kind::Proto41, p41(7)));
    assert_eq!(t.expires_at, Some(2000));
    assert_eq!(t.spec.routed_prefixes.len(), 1);
    assert_eq!(t.spec.routed_prefixes[0].prefix_len(), 56);
    assert_eq!(s.tunnel(a.spec.id).unwrap().unwrap(), t);
    // A second request for a routed prefix keeps the one it has.
    let again = s.update_tunnel(a.spec.id, &to_p41, 2).unwrap();
    assert_eq!(again.spec.routed_prefixes, t.spec.routed_prefixes);
    let to_v4v6 = TunnelChange {
        kind: Some(Kind::V4In6),
        ..Default::default()
    };
    assert!(matches!(
        s.update_tunnel(a.spec.id, &to_v4v6, 3),
        Err(StoreError::Invalid { .. })
    ));
    let mismatch = TunnelChange {
        endpoint: Some(udp(5)),
        ..Default::default()
    };
    assert!(matches!(
        s.update_tunnel(a.spec.id, &mismatch, 3),
        Err(StoreError::Invalid { .. })
    ));
}

fn tsp_tunnels_are_found_by_owner_and_family(open: Open) {
    let mut s = open(pools());
    s.create_user("carol", &kept("secret-pw"), 0).unwrap();
    let mine = |r: NewTunnel| NewTunnel {
        owner: Some("carol".into()),
        origin: Origin::Tsp,
        ..r
    };
    assert!(s.tsp_tunnel("carol", false).unwrap().is_none());
    // An API tunnel of the same user is not a TSP one.
    s.create_tunnel(
        &NewTunnel {
            owner: Some("carol".into()),
            ..new(1, None)
        },
        0,
    )
    .unwrap();
    assert!(s.tsp_tunnel("carol", false).unwrap().is_none());
    let v6 = s.create_tunnel(&mine(new(2, None)), 0).unwrap();
    let v4 = s.create_tunnel(&mine(v4v6(3)), 0).unwrap();
    assert_eq!(s.tsp_tunnel("carol", false).unwrap(), Some(v6));
    assert_eq!(s.tsp_tunnel("carol", true).unwrap(), Some(v4));
}

fn tunnels_by_owner_and_by_link(open: Open) {
    let mut s = open(pools());
    s.create_user("erin", &kept("pw"), 0).unwrap();
    s.create_user("finn", &kept("pw"), 0).unwrap();
    let of = |who: &str, r: NewTunnel| NewTunnel {
        owner: Some(who.into()),
        ..r
    };
    let a = s.create_tunnel(&of("erin", new(1, None)), 0).unwrap();
    let _b = s.create_tunnel(&of("finn", new(2, None)), 0).unwrap();
    let c = s.create_tunnel(&of("erin", new(3, Some(56))), 0).unwrap();
    let _anon = s.create_tunnel(&new(4, None), 0).unwrap();
    assert_eq!(s.tunnels_of("erin").unwrap(), vec![a.clone(), c.clone()]);
    assert!(s.tunnels_of("nobody").unwrap().is_empty());

    let link = c.spec.link_prefix.unwrap();
    assert_eq!(s.tunnel_by_link(&link).unwrap(), Some(c.clone()));
    // Any address inside the /64 names it (heartbeats give the client's ::2).
    let inside: Ipv6Net = format!("{}/64", c.spec.client_v6().unwrap())
        .parse()
        .unwrap();
    assert_eq!(s.tunnel_by_link(&inside).unwrap(), Some(c.clone()));
    assert_eq!(s.tunnel_by_link(&net("2001:db8:ffff::/64")).unwrap(), None);
    // A routed prefix is not a link.
    assert_eq!(s.tunnel_by_link(&c.spec.routed_prefixes[0]).unwrap(), None);
}

#[test]
fn a_version_1_store_migrates_keeping_everything() {
    let dir = tempfile_dir();
    let path = dir.join("v1.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(super::schema::MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO users VALUES ('dave', 'pw', 1);
             INSERT INTO tunnels VALUES (5, 'dave', 'api', 'proto41', 'up', '198.51.100.5',
                 '2001:db8:10:5::/64', 1480, 'p', 'k', 1, 2);
             INSERT INTO routed VALUES (5, '2001:db8:1000::/48');",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path, pools()).unwrap();
    let t = s.tunnel(5).unwrap().unwrap();
    assert_eq!(t.spec.endpoint, p41(5));
    assert_eq!(t.spec.link_prefix, Some(net("2001:db8:10:5::/64")));
    assert_eq!(t.spec.routed_prefixes, vec![net("2001:db8:1000::/48")]);
    assert_eq!(
        (t.owner.as_deref(), t.created_at, t.updated_at),
        (Some("dave"), 1, 2)
    );
    let fk: bool = s
        .conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert!(fk, "foreign keys are back on after the migration");
    std::fs::remove_dir_all(dir).unwrap();
}

fn users_own_tunnels(open: Open) {
    let mut s = open(pools());
    s.create_user("alice", &kept("pw"), 1).unwrap();
    assert!(matches!(
        s.create_user("alice", &kept("x"), 1),
        Err(StoreError::UserExists { .. })
    ));
    let mut req = new(1, None);
    req.owner = Some("alice".into());
    let t = s.create_tunnel(&req, 2).unwrap();
    assert_eq!(t.owner.as_deref(), Some("alice"));
    assert!(matches!(
        s.delete_user("alice"),
        Err(StoreError::UserHasTunnels { .. })
    ));
    s.delete_tunnel(t.spec.id, 3).unwrap();
    s.delete_user("alice").unwrap();
    assert!(s.users().unwrap().is_empty());
    assert!(matches!(
        s.delete_user("alice"),
        Err(StoreError::NoSuchUser { .. })
    ));
}

fn static_spec(id: u32, remote: u8, link: &str) -> TunnelSpec {
    TunnelSpec {
        id,
        kind: Kind::Proto41,
        state: State::Up,
        endpoint: p41(remote),
        link_prefix: Some(net(link)),
        routed_prefixes: vec![],
        client_v4: None,
        mtu: 1480,
        keepalive: None,
        ayiya_key: None,
    }
}

fn static_tunnels_are_declarative(open: Open) {
    let mut s = open(pools());
    let a = static_spec(10, 10, "2001:db8:f:1::/64");
    let b = static_spec(11, 11, "2001:db8:f:2::/64");
    let r = s.sync_static(&[a.clone(), b.clone()], 0).unwrap();
    assert_eq!(
        (r.added, r.changed, r.removed),
        (vec![10, 11], vec![], vec![])
    );
    let pw = s.tunnel(10).unwrap().unwrap().password;
    // Unchanged, changed, removed.
    let a2 = TunnelSpec {
        mtu: 1400,
        ..a.clone()
    };
    let r = s.sync_static(std::slice::from_ref(&a2), 1).unwrap();
    assert_eq!(
        (r.added, r.changed, r.removed),
        (vec![], vec![10], vec![11])
    );
    let t = s.tunnel(10).unwrap().unwrap();
    assert_eq!(t.spec, a2);
    assert_eq!(t.password, pw, "credentials survive a config change");
    assert!(s.tunnel(11).unwrap().is_none());
    // Run-time tunnels are left alone, and get ids above the static ones.
    let d = s.create_tunnel(&new(1, None), 2).unwrap();
    assert_eq!(
        d.spec.id, 12,
        "ids only grow: 11 was the removed static tunnel's"
    );
    s.sync_static(&[], 3).unwrap();
    assert_eq!(s.tunnels().unwrap(), vec![d.clone()]);
    // A static tunnel cannot take a run-time tunnel's id or endpoint.
    assert!(matches!(
        s.sync_static(&[static_spec(d.spec.id, 99, "2001:db8:f:9::/64")], 4),
        Err(StoreError::IdTaken { .. })
    ));
    assert!(matches!(
        s.sync_static(&[static_spec(50, 1, "2001:db8:f:9::/64")], 4),
        Err(StoreError::DuplicateEndpoint { .. })
    ));
}

#[test]
fn everything_is_there_after_a_restart() {
    let dir = tempfile_dir();
    let path = dir.join("broker.db");
    let (tunnels, users) = {
        let mut s = SqliteStore::open(&path, pools()).unwrap();
        s.create_user("bob", &kept("secret"), 1).unwrap();
        let mut req = new(1, Some(56));
        req.owner = Some("bob".into());
        s.create_tunnel(&req, 2).unwrap();
        s.create_tunnel(&new(2, None), 2).unwrap();
        s.sync_static(&[static_spec(100, 100, "2001:db8:f:1::/64")], 3)
            .unwrap();
        s.delete_tunnel(2, 4).unwrap();
        s.bump("adoptions").unwrap();
        (s.tunnels().unwrap(), s.users().unwrap())
    };
    let mut s = SqliteStore::open(&path, pools()).unwrap();
    assert_eq!(s.tunnels().unwrap(), tunnels);
    assert_eq!(s.users().unwrap(), users);
    // Read ahead on a connection of its own, as a cold start does: the same, and the
    // generation they are of.
    let ahead = s
        .preload(&path, crate::store::Ahead::All)
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(ahead.tunnels, tunnels);
    assert_eq!(ahead.generation, s.generation().unwrap());
    let ahead = s
        .preload(&path, crate::store::Ahead::Watched)
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(ahead.tunnels, s.watched().unwrap());
    assert_eq!(s.counter("adoptions").unwrap(), 1);
    // The freed /64 is still in quarantine after the restart; allocation continues.
    let t = s.create_tunnel(&new(3, None), 5).unwrap();
    assert_eq!(t.spec.link_prefix, Some(net("2001:db8:10:2::/64")));
    assert_eq!(t.spec.id, 101);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn every_tunnel_read_ahead_in_two_halves_is_every_tunnel() {
    let dir = tempfile_dir();
    let path = dir.join("broker.db");
    let mut s = SqliteStore::open(&path, pools()).unwrap();
    s.create_tunnel(&new(1, Some(56)), 1).unwrap();
    // Ids far enough apart for the read to be split between two connections.
    s.sync_static(
        &[
            static_spec(20_000, 100, "2001:db8:f:1::/64"),
            static_spec(40_000, 101, "2001:db8:f:2::/64"),
        ],
        2,
    )
    .unwrap();
    s.create_tunnel(&new(2, Some(56)), 3).unwrap();
    let ahead = s
        .preload(&path, crate::store::Ahead::All)
        .join()
        .unwrap()
        .unwrap();
    let all = s.tunnels().unwrap();
    assert_eq!(all.len(), 4);
    assert!(all[0].spec.routed_prefixes.len() == 1 && all[3].spec.routed_prefixes.len() == 1);
    assert_eq!(ahead.tunnels, all);
    assert_eq!(ahead.generation, s.generation().unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "broker-store-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(Debug, Clone)]
enum Op {
    Create { routed: Option<u8> },
    Delete { pick: usize },
    Wait { secs: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::option::of(prop::sample::select(vec![44u8, 46, 48])).prop_map(|routed| Op::Create { routed }),
        2 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => (0u64..150).prop_map(|secs| Op::Wait { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Under any sequence of creations, deletions and time passing, no two live prefixes
    /// overlap, and a freed prefix is not handed out before its quarantine ends.
    #[test]
    fn allocation_never_overlaps(ops in prop::collection::vec(op(), 1..120)) {
        // Small pools, so exhaustion and reuse happen.
        let p = PoolSet {
            link: vec![net("2001:db8:10::/60")],
            routed: vec![net("2001:db8:1000::/42")],
            routed_lengths: vec![44, 46, 48],
            quarantine_secs: 100,
            v4v6: None,
        };
        let mut s = SqliteStore::in_memory(p).unwrap();
        let mut now = 0u64;
        let mut remote = 0u32;
        // prefix -> when it was freed
        let mut freed: Vec<(Ipv6Net, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Create { routed } => {
                    remote += 1;
                    let req = NewTunnel {
                        endpoint: Endpoint::Ipv4(Ipv4Addr::from(0xc633_6400 + remote)),
                        ..new(0, routed)
                    };
                    match s.create_tunnel(&req, now) {
                        Ok(t) => {
                            for q in t.spec.prefixes() {
                                for (f, at) in &freed {
                                    prop_assert!(
                                        !(f.contains(&q) || q.contains(f)) || now >= at + 100,
                                        "{q} handed out {}s after {f} was freed", now - at
                                    );
                                }
                            }
                        }
                        Err(StoreError::PoolExhausted { .. }) => {}
                        Err(e) => prop_assert!(false, "unexpected error {e}"),
                    }
                }
                Op::Delete { pick } => {
                    let all = s.tunnels().unwrap();
                    if !all.is_empty() {
                        let t = &all[pick % all.len()];
                        s.delete_tunnel(t.spec.id, now).unwrap();
                        freed.extend(t.spec.prefixes().map(|p| (p, now)));
                    }
                }
                Op::Wait { secs } => now += secs,
            }
            let live: Vec<Ipv6Net> = s.tunnels().unwrap().iter().flat_map(|t| t.spec.prefixes()).collect();
            for (i, a) in live.iter().enumerate() {
                for b in &live[i + 1..] {
                    prop_assert!(!a.contains(b) && !b.contains(a), "{a} overlaps {b}");
                }
            }
        }
    }
}

on_every_engine!(
    allocates_link_and_routed_prefixes_and_tokens,
    refuses_unknown_owner_duplicate_endpoint_and_unoffered_length,
    a_named_prefix_must_be_in_a_pool_and_free,
    a_deleted_tunnel_can_be_restored_exactly,
    an_exhausted_pool_is_a_clear_error,
    freed_prefixes_come_back_only_after_the_quarantine,
    updates_change_endpoint_state_and_mtu,
    v4v6_tunnels_get_an_inner_ipv4_and_no_ipv6_prefixes,
    udp_endpoints_are_address_and_port_and_kinds_switch_within_a_family,
    tsp_tunnels_are_found_by_owner_and_family,
    tunnels_by_owner_and_by_link,
    users_own_tunnels,
    static_tunnels_are_declarative,
);

/// A SQLite store is one PoP's: opened under another `pop.name`, every tunnel follows, and
/// finding none to move is an index's work, whatever N.
#[test]
fn a_renamed_pop_keeps_its_sqlite_stores_tunnels() {
    let dir = tempfile_dir();
    let path = dir.join("broker.db");
    let home = |pop: &str| crate::store::Home {
        pop: pop.into(),
        pools: pools(),
    };
    let mut s = SqliteStore::open(&path, home("a")).unwrap();
    let t = s.create_tunnel(&new(1, None), 1).unwrap();
    assert_eq!(t.pop, "a");
    drop(s);
    let s = SqliteStore::open(&path, home("b")).unwrap();
    let all = s.tunnels().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].pop, "b");
    assert_eq!(
        s.census().unwrap().iter().map(|(_, _, n)| n).sum::<u64>(),
        1
    );
    let plan: String = s
        .conn
        .prepare(&format!(
            "EXPLAIN QUERY PLAN {}",
            crate::store::pops::CLAIM_ALL
        ))
        .unwrap()
        .query_map(["b"], |r| r.get::<_, String>(3))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(plan.contains("tunnels_pop"), "{plan}");
    std::fs::remove_dir_all(dir).unwrap();
}
