use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use std::net::Ipv4Addr;

use super::*;
use crate::{
    model::{Kind, State},
    store::{PoolSet, SqliteStore},
};

#[derive(Default)]
pub(crate) struct FakeMaps {
    installed: BTreeMap<u32, TunnelSpec>,
    fail: bool,
    /// What the data plane says AYIYA clients roamed to.
    learnt: Vec<(u32, std::net::SocketAddrV4)>,
    /// Tunnels whose client sent a packet.
    pub(crate) heard: BTreeSet<u32>,
    /// As the data plane keeps it: cleared by any write.
    stamp: Option<u64>,
    reconciles: usize,
}

impl<S> Broker<S, FakeMaps, FakeRoutes> {
    /// What the fake data plane holds for `id`.
    pub(crate) fn maps_installed(&self, id: u32) -> Option<TunnelSpec> {
        self.maps.installed.get(&id).cloned()
    }

    /// The fake kernel's routes.
    pub(crate) fn routes_now(&self) -> BTreeSet<Ipv6Net> {
        self.routes.routes.lock().unwrap().clone()
    }
}

impl FakeMaps {
    /// Full reconciles so far.
    pub(crate) fn reconciles(&self) -> usize {
        self.reconciles
    }
}

impl Projection for FakeMaps {
    fn install(&mut self, spec: &TunnelSpec) -> Result<(), String> {
        self.stamp = None;
        if self.fail {
            return Err("maps broken".into());
        }
        self.installed.insert(spec.id, spec.clone());
        Ok(())
    }

    fn uninstall(&mut self, id: u32) -> Result<(), String> {
        self.stamp = None;
        if self.fail {
            return Err("maps broken".into());
        }
        self.installed.remove(&id);
        Ok(())
    }

    fn installed_prefixes(&self, id: u32) -> Option<Vec<ipnet::Ipv6Net>> {
        self.installed.get(&id).map(|s| s.prefixes().collect())
    }

    fn reconcile(&mut self, specs: &[TunnelSpec], _: &Pop) -> Result<Reconciled, String> {
        self.stamp = None;
        self.reconciles += 1;
        self.installed = specs.iter().map(|s| (s.id, s.clone())).collect();
        Ok(Reconciled::default())
    }

    fn stamp(&self) -> Option<u64> {
        self.stamp
    }

    fn set_stamp(&mut self, stamp: u64) -> Result<(), String> {
        self.stamp = Some(stamp);
        Ok(())
    }

    fn take_adopted_down(&mut self) -> Vec<u32> {
        self.installed
            .values()
            .filter(|s| s.state == State::Down)
            .map(|s| s.id)
            .collect()
    }

    fn counters(&self, id: u32) -> Option<TunnelStats> {
        self.installed.contains_key(&id).then(|| TunnelStats {
            from_client_packets: u64::from(self.heard.contains(&id)),
            ..TunnelStats::default()
        })
    }

    fn all_counters(&self) -> Result<Vec<(u32, TunnelStats)>, String> {
        Ok(self
            .installed
            .keys()
            .map(|id| (*id, TunnelStats::default()))
            .collect())
    }

    fn global_counters(&self) -> Result<crate::dataplane::GlobalCounters, String> {
        Ok(crate::dataplane::GlobalCounters::default())
    }

    fn map_usage(&self) -> Vec<crate::dataplane::MapUsage> {
        Vec::new()
    }

    fn learnt_endpoints(&self) -> Result<Vec<(u32, std::net::SocketAddrV4)>, String> {
        Ok(self.learnt.clone())
    }
}

#[derive(Default)]
pub(crate) struct FakeRoutes {
    routes: Mutex<BTreeSet<Ipv6Net>>,
    fail_add: bool,
    fail_del: bool,
}

impl RouteOps for FakeRoutes {
    async fn add(&self, p: &Ipv6Net) -> Result<(), String> {
        if self.fail_add {
            return Err("routes broken".into());
        }
        self.routes.lock().unwrap().insert(*p);
        Ok(())
    }

    async fn del(&self, p: &Ipv6Net) -> Result<(), String> {
        if self.fail_del {
            return Err("routes broken".into());
        }
        self.routes.lock().unwrap().remove(p);
        Ok(())
    }

    async fn reconcile(&self, wanted: &BTreeSet<Ipv6Net>) -> Result<(usize, usize), String> {
        *self.routes.lock().unwrap() = wanted.clone();
        Ok((0, 0))
    }

    async fn list(&self) -> Result<BTreeSet<Ipv6Net>, String> {
        Ok(self.routes.lock().unwrap().clone())
    }
}

pub(crate) type TestBroker = Broker<SqliteStore, FakeMaps, FakeRoutes>;

pub(crate) fn broker() -> TestBroker {
    broker_with("2001:db8:10::/48", "2001:db8:1000::/40")
}

/// A broker over an in-memory store with these link and routed pools (lengths 48 and 56,
/// no quarantine, v4v6 from 203.0.113.0/24), fake projections and a PoP with every kind.
pub(crate) fn broker_with(link: &str, routed: &str) -> Broker<SqliteStore, FakeMaps, FakeRoutes> {
    let pools = PoolSet {
        link: vec![link.parse().unwrap()],
        routed: vec![routed.parse().unwrap()],
        routed_lengths: vec![48, 56],
        quarantine_secs: 0,
        v4v6: Some("203.0.113.0/24".parse().unwrap()),
    };
    Broker::new(
        SqliteStore::in_memory(pools).unwrap(),
        FakeMaps::default(),
        FakeRoutes::default(),
        Pop {
            ipv4: Ipv4Addr::new(192, 0, 2, 1),
            ipv6: Some("2001:db8:ffff::1".parse().unwrap()),
            tsp_port: Some(3653),
            ayiya_port: Some(5072),
            v4v6_pool: Some("203.0.113.0/24".parse().unwrap()),
        },
    )
}

fn req(remote: u8) -> NewTunnel {
    NewTunnel {
        mtu: 1480,
        routed_length: Some(48),
        ..NewTunnel::api(
            None,
            Kind::Proto41,
            Endpoint::Ipv4(Ipv4Addr::new(198, 51, 100, remote)),
        )
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_created_tunnel_is_in_store_maps_and_routes() {
    let mut b = broker();
    let t = block_on(b.create_tunnel(&req(1))).unwrap();
    assert_eq!(b.store.tunnels().unwrap(), vec![t.clone()]);
    assert_eq!(b.maps.installed[&t.spec.id], t.spec);
    let routes = b.routes.routes.lock().unwrap().clone();
    assert_eq!(routes, t.spec.prefixes().collect());
}

#[test]
fn a_failing_later_step_undoes_the_creation() {
    let mut b = broker();
    b.maps.fail = true;
    assert!(matches!(
        block_on(b.create_tunnel(&req(1))),
        Err(BrokerError::Maps(_))
    ));
    assert!(b.store.tunnels().unwrap().is_empty());

    let mut b = broker();
    b.routes.fail_add = true;
    assert!(matches!(
        block_on(b.create_tunnel(&req(1))),
        Err(BrokerError::Routes(_))
    ));
    assert!(b.store.tunnels().unwrap().is_empty());
    assert!(b.maps.installed.is_empty());
}

#[test]
fn undone_creations_do_not_burn_the_pool() {
    // Two /64s and a day of quarantine: creations that fail (maps full) used to
    // quarantine their /64 each, until nothing could be created.
    let pools = PoolSet {
        link: vec!["2001:db8:10::/63".parse().unwrap()],
        routed: vec![],
        routed_lengths: vec![],
        quarantine_secs: 86_400,
        v4v6: None,
    };
    let mut b = Broker::new(
        SqliteStore::in_memory(pools).unwrap(),
        FakeMaps::default(),
        FakeRoutes::default(),
        Pop::ipv4_only(Ipv4Addr::new(192, 0, 2, 1)),
    );
    let plain = |i: u8| NewTunnel {
        routed_length: None,
        ..req(i)
    };
    b.maps.fail = true;
    for i in 1..=5 {
        assert!(block_on(b.create_tunnel(&plain(i))).is_err());
    }
    b.maps.fail = false;
    let t1 = block_on(b.create_tunnel(&plain(10))).unwrap();
    let t2 = block_on(b.create_tunnel(&plain(11))).unwrap();
    let mut both = [t1.spec.link_prefix.unwrap(), t2.spec.link_prefix.unwrap()];
    both.sort();
    assert_eq!(
        both.map(|p| p.to_string()),
        ["2001:db8:10::/64", "2001:db8:10:1::/64"]
    );
    // A real deletion still quarantines.
    block_on(b.delete_tunnel(t1.spec.id)).unwrap();
    assert!(matches!(
        block_on(b.create_tunnel(&plain(12))),
        Err(BrokerError::Store(StoreError::PoolExhausted { .. }))
    ));
}

#[test]
fn a_failing_later_step_undoes_the_deletion() {
    let mut b = broker();
    let t = block_on(b.create_tunnel(&req(1))).unwrap();
    b.routes.fail_del = true;
    assert!(matches!(
        block_on(b.delete_tunnel(t.spec.id)),
        Err(BrokerError::Routes(_))
    ));
    assert_eq!(b.store.tunnels().unwrap(), vec![t.clone()]);
    assert_eq!(b.maps.installed[&t.spec.id], t.spec);
    b.routes.fail_del = false;
    block_on(b.delete_tunnel(t.spec.id)).unwrap();
    assert!(b.store.tunnels().unwrap().is_empty());
    assert!(b.maps.installed.is_empty());
    assert!(b.routes.routes.lock().unwrap().is_empty());
}

#[test]
fn a_failing_update_leaves_the_store_as_it_was() {
    let mut b = broker();
    let t = block_on(b.create_tunnel(&req(1))).unwrap();
    b.maps.fail = true;
    let change = TunnelChange {
        mtu: Some(1280),
        ..Default::default()
    };
    assert!(block_on(b.update_tunnel(t.spec.id, &change)).is_err());
    assert_eq!(b.store.tunnel(t.spec.id).unwrap().unwrap().spec, t.spec);
}

#[test]
fn an_added_routed_prefix_gets_its_route() {
    let mut b = broker();
    let r = NewTunnel {
        routed_length: None,
        ..req(1)
    };
    let t = block_on(b.create_tunnel(&r)).unwrap();
    let change = TunnelChange {
        add_routed_length: Some(56),
        ..Default::default()
    };
    let u = block_on(b.update_tunnel(t.spec.id, &change)).unwrap();
    assert_eq!(u.spec.routed_prefixes.len(), 1);
    assert_eq!(b.maps.installed[&t.spec.id], u.spec);
    let routes = b.routes.routes.lock().unwrap().clone();
    assert_eq!(routes, u.spec.prefixes().collect());
}

#[test]
fn a_sleeping_tunnel_is_installed_down_and_stays_up_in_the_store() {
    let mut b = broker();
    let t = block_on(b.create_tunnel(&NewTunnel {
        keepalive: Some(30),
        ..req(1)
    }))
    .unwrap();
    assert!(b.set_asleep(t.spec.id, true).unwrap());
    assert!(
        !b.set_asleep(t.spec.id, true).unwrap(),
        "no change the second time"
    );
    assert_eq!(b.maps.installed[&t.spec.id].state, State::Down);
    assert_eq!(
        b.maps.installed[&t.spec.id].keepalive,
        Some(30),
        "woken by traffic"
    );
    assert_eq!(
        b.store.tunnel(t.spec.id).unwrap().unwrap().spec.state,
        State::Up
    );
    // Other changes keep it asleep, a reconcile too.
    let change = TunnelChange {
        mtu: Some(1400),
        ..Default::default()
    };
    block_on(b.update_tunnel(t.spec.id, &change)).unwrap();
    assert_eq!(b.maps.installed[&t.spec.id].state, State::Down);
    block_on(b.reconcile()).unwrap();
    assert_eq!(b.maps.installed[&t.spec.id].state, State::Down);
    assert!(b.set_asleep(t.spec.id, false).unwrap());
    assert_eq!(b.maps.installed[&t.spec.id].state, State::Up);
}

#[test]
fn lapsed_tunnels_are_deleted_when_anonymous_and_downed_when_owned() {
    let mut b = broker();
    b.create_user("alice", None).unwrap();
    let anon = block_on(b.create_tunnel(&NewTunnel {
        expires_at: Some(100),
        ..req(1)
    }))
    .unwrap();
    let owned = block_on(b.create_tunnel(&NewTunnel {
        owner: Some("alice".into()),
        expires_at: Some(100),
        keepalive: Some(30),
        ..req(2)
    }))
    .unwrap();
    let forever = block_on(b.create_tunnel(&req(3))).unwrap();
    assert_eq!(block_on(b.expire(99)).unwrap(), (vec![], vec![]));
    assert_eq!(
        block_on(b.expire(100)).unwrap(),
        (vec![anon.spec.id], vec![owned.spec.id])
    );
    assert!(b.store.tunnel(anon.spec.id).unwrap().is_none());
    let o = b.store.tunnel(owned.spec.id).unwrap().unwrap();
    assert_eq!((o.spec.state, o.expires_at), (State::Down, None));
    assert_eq!(o.spec.link_prefix, owned.spec.link_prefix, "addresses kept");
    assert_eq!(b.maps.installed[&owned.spec.id].state, State::Down);
    assert_eq!(
        b.maps.installed[&owned.spec.id].keepalive, None,
        "not woken by traffic: down both ways"
    );
    assert!(b.store.tunnel(forever.spec.id).unwrap().is_some());
}

#[test]
fn the_pop_address_is_not_an_endpoint() {
    let mut b = broker();
    let mut r = req(1);
    r.endpoint = Endpoint::Ipv4(b.pop.ipv4);
    let e = block_on(b.create_tunnel(&r)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "remote_ipv4: 192.0.2.1 is the PoP's own address"
    );
}

#[test]
fn user_names_and_passwords_are_checked() {
    let mut b = broker();
    assert!(b.create_user("alice", None).unwrap().1.len() >= 16);
    assert!(matches!(
        b.create_user("bad name", None),
        Err(BrokerError::Invalid { field: "name", .. })
    ));
    assert!(matches!(
        b.create_user("bob", Some("short")),
        Err(BrokerError::Invalid {
            field: "password",
            ..
        })
    ));
}

fn ayiya_req() -> NewTunnel {
    NewTunnel {
        kind: Kind::Ayiya,
        endpoint: Endpoint::unspecified(Kind::Ayiya),
        mtu: 1280,
        ..req(1)
    }
}

#[test]
fn an_ayiya_tunnel_is_installed_with_the_key_of_its_password() {
    let mut b = broker();
    let t = block_on(b.create_tunnel(&ayiya_req())).unwrap();
    assert!(t.spec.endpoint.is_unspecified());
    let installed = b.maps.installed[&t.spec.id].clone();
    assert_eq!(installed.ayiya_key, Some(crate::ayiya::key(&t.password)));
    // Other kinds carry no key.
    let p = block_on(b.create_tunnel(&req(2))).unwrap();
    assert_eq!(b.maps.installed[&p.spec.id].ayiya_key, None);
}

#[test]
fn endpoints_the_data_plane_learnt_go_into_the_store_once() {
    let mut b = broker();
    let a = block_on(b.create_tunnel(&ayiya_req())).unwrap();
    let p = block_on(b.create_tunnel(&req(2))).unwrap();
    let at: std::net::SocketAddrV4 = "198.51.100.80:40080".parse().unwrap();
    // A proto-41 tunnel is never moved this way, whatever the data plane says.
    b.maps.learnt = vec![(a.spec.id, at), (p.spec.id, at)];
    assert_eq!(block_on(b.learn_endpoints()).unwrap(), vec![a.spec.id]);
    let stored = b.store.tunnel(a.spec.id).unwrap().unwrap();
    assert_eq!(stored.spec.endpoint, Endpoint::Udp4(at));
    assert_eq!(b.maps.installed[&a.spec.id].endpoint, Endpoint::Udp4(at));
    assert_eq!(b.store.tunnel(p.spec.id).unwrap().unwrap().spec, p.spec);
    // Nothing new: nothing written.
    assert!(block_on(b.learn_endpoints()).unwrap().is_empty());
}

#[test]
fn a_store_that_kept_secrets_in_clear_is_upgraded_and_forgets_them() {
    let dir = std::env::temp_dir().join(format!("broker-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v2.db");
    {
        // A store as version 2 left it: the password and the update key in clear.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        for sql in &crate::store::schema_for_tests()[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 2;
             INSERT INTO users VALUES ('dave', 'dave-clear-password', 1);
             INSERT INTO tunnels (id, owner, origin, kind, state, remote_v4, link_prefix, mtu,
                                  password, update_key, created_at, updated_at)
                 VALUES (5, 'dave', 'api', 'proto41', 'up', '198.51.100.5',
                         '2001:db8:10:5::/64', 1480, 'tunnelpw', 'dave-clear-update-key', 1, 2);",
        )
        .unwrap();
    }
    let pools = PoolSet {
        link: vec!["2001:db8:10::/48".parse().unwrap()],
        routed: vec![],
        routed_lengths: vec![],
        quarantine_secs: 0,
        v4v6: None,
    };
    let store = SqliteStore::open(&path, pools).unwrap();
    let mut b = Broker::new(
        store,
        FakeMaps::default(),
        FakeRoutes::default(),
        Pop::ipv4_only(Ipv4Addr::new(192, 0, 2, 1)),
    );
    assert_eq!(b.upgrade_secrets().unwrap(), (1, 1));
    assert_eq!(b.upgrade_secrets().unwrap(), (0, 0), "once");
    let u = b.store.user("dave").unwrap().unwrap();
    assert!(crate::secret::verify_password(
        "dave-clear-password",
        &u.secrets.password_hash
    ));
    assert_eq!(u.secrets.digest_realm, "broker");
    let t = b.store.tunnel(5).unwrap().unwrap();
    assert!(crate::secret::verify_key(
        "dave-clear-update-key",
        &t.update_key_hash
    ));
    // The tunnel's own password stays: TIC hands it to aiccu.
    assert_eq!(t.password, "tunnelpw");
    // Nothing of the clear secrets is left in the files, while the store is open too.
    for f in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        for secret in ["dave-clear-password", "dave-clear-update-key"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} still in the store's files"
            );
        }
    }
    drop(b);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The broker a restarted controller builds over the same store, maps and routes.
fn restarted(b: TestBroker) -> TestBroker {
    let pop = b.pop;
    let Broker {
        store,
        maps,
        routes,
        ..
    } = b;
    Broker::new(store, maps, routes, pop)
}

#[test]
fn a_restart_over_stamped_maps_does_not_reconcile() {
    let mut b = broker();
    let watched = block_on(b.create_tunnel(&NewTunnel {
        keepalive: Some(30),
        ..req(1)
    }))
    .unwrap()
    .spec
    .id;
    block_on(b.create_tunnel(&req(2))).unwrap();
    block_on(b.reconcile()).unwrap();
    assert!(b.maps.stamp.is_some(), "a full reconcile stamps");
    assert!(b.set_asleep(watched, true).unwrap());
    assert_eq!(b.maps.stamp, None, "a write clears the stamp");
    b.stamp().unwrap();
    let stamped = b.maps.stamp.expect("stamped on the tick");

    // Restarted: nothing can differ, so only the watch list and the sleepers are rebuilt.
    let mut b = restarted(b);
    block_on(b.sync_static(&[])).unwrap();
    assert_eq!(b.maps.reconciles, 1, "not reconciled again");
    assert_eq!(b.maps.stamp, Some(stamped));
    assert!(b.is_asleep(watched), "asleep as the maps held it");
    assert_eq!(b.watched().map(|(id, _)| id).collect::<Vec<_>>(), [watched]);
    assert!(b.set_asleep(watched, false).unwrap());
    assert_eq!(b.maps.installed[&watched].state, State::Up);
    b.stamp().unwrap();

    // A change to the store the maps never saw (another process, a controller killed
    // between store and maps): reconciled.
    let change = TunnelChange {
        mtu: Some(1400),
        ..Default::default()
    };
    b.store.update_tunnel(watched, &change, 5).unwrap();
    let mut b = restarted(b);
    block_on(b.sync_static(&[])).unwrap();
    assert_eq!(b.maps.reconciles, 2);
    assert_eq!(b.maps.installed[&watched].mtu, 1400);

    // Another PoP address: reconciled.
    let mut b = restarted(b);
    b.pop.ipv4 = Ipv4Addr::new(192, 0, 2, 99);
    block_on(b.sync_static(&[])).unwrap();
    assert_eq!(b.maps.reconciles, 3);

    // A failed write to the maps: not stamped again until a full reconcile.
    b.maps.fail = true;
    assert!(block_on(b.create_tunnel(&req(3))).is_err());
    b.maps.fail = false;
    b.stamp().unwrap();
    assert_eq!(b.maps.stamp, None, "not stamped while unsure");
    block_on(b.reconcile()).unwrap();
    assert!(b.maps.stamp.is_some());
}

#[test]
fn routes_are_checked_against_the_store_in_pages_and_each_difference_again() {
    let mut b = broker();
    let mut ids = Vec::new();
    for n in 1..=3 {
        let t = block_on(b.create_tunnel(&NewTunnel {
            routed_length: Some(56),
            ..req(n)
        }))
        .unwrap();
        ids.push(t);
    }
    let stray: Ipv6Net = "2001:db8:dead::/48".parse().unwrap();
    let lost = ids[0].spec.routed_prefixes[0];
    {
        let mut routes = b.routes.routes.lock().unwrap();
        routes.insert(stray);
        routes.remove(&lost);
    }
    // Listed before the check reads the store: a tunnel deleted after the listing still
    // has its routes in it, and must not get them back; one created after has none in it.
    let lister = FakeRoutes {
        routes: Mutex::new(b.routes.routes.lock().unwrap().clone()),
        ..FakeRoutes::default()
    };
    block_on(b.delete_tunnel(ids[2].spec.id)).unwrap();
    let created = block_on(b.create_tunnel(&NewTunnel {
        routed_length: Some(48),
        ..req(9)
    }))
    .unwrap();
    let b = tokio::sync::Mutex::new(b);
    let (added, removed) = block_on(check_routes(&b, &lister)).unwrap();
    let b = b.into_inner();
    let want: BTreeSet<Ipv6Net> = block_on(async { b.store.tunnels() })
        .unwrap()
        .iter()
        .flat_map(|t| t.spec.prefixes())
        .collect();
    assert_eq!(*b.routes.routes.lock().unwrap(), want);
    assert!(want.contains(&created.spec.routed_prefixes[0]));
    // The lost route back, the created tunnel's (already there) again; the stray one and
    // the deleted tunnel's (already gone) removed.
    assert_eq!((added, removed), (1 + 2, 1 + 2), "{want:?}");
}

#[test]
fn tunnels_read_ahead_are_used_only_at_the_generation_they_were_read() {
    let mut b = broker();
    let one = block_on(b.create_tunnel(&req(1))).unwrap().spec.id;
    let two = block_on(b.create_tunnel(&req(2))).unwrap().spec.id;
    let read_ahead = |b: &TestBroker| crate::store::Preloaded {
        what: crate::store::Ahead::All,
        generation: b.store.generation().unwrap(),
        // Only the first: the reconcile shows which it used.
        tunnels: vec![b.store.tunnel(one).unwrap().unwrap()],
    };

    let mut b = restarted(b);
    b.maps.installed.clear();
    b.preload(read_ahead(&b));
    block_on(b.reconcile()).unwrap();
    assert!(b.maps_installed(one).is_some());
    assert!(
        b.maps_installed(two).is_none(),
        "the tunnels read ahead, not the store's"
    );

    // Read ahead, then the store changed: the store is read.
    let ahead = read_ahead(&b);
    b.store
        .update_tunnel(
            one,
            &TunnelChange {
                mtu: Some(1400),
                ..Default::default()
            },
            5,
        )
        .unwrap();
    b.preload(ahead);
    block_on(b.reconcile()).unwrap();
    assert_eq!(b.maps_installed(one).unwrap().mtu, 1400);
    assert!(b.maps_installed(two).is_some(), "every tunnel of the store");

    // The watched ones read ahead (for a restart) are not every tunnel.
    b.maps.installed.clear();
    b.preload(crate::store::Preloaded {
        what: crate::store::Ahead::Watched,
        ..read_ahead(&b)
    });
    block_on(b.reconcile()).unwrap();
    assert!(b.maps_installed(two).is_some(), "every tunnel of the store");
}
