//! A hundred thousand tunnels through the broker core (store on a file, fake projections):
//! what a PoP does all day, each step a bounded amount of work. A path that turned
//! quadratic again (a scan per request, a `find` per tunnel) makes this take hours, and
//! the test fails at its budget saying so; it asserts no speed otherwise.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::tests::{FakeMaps, FakeRoutes};
use super::Broker;
use crate::{
    model::{Endpoint, Kind, Pop, State, TunnelSpec},
    store::{NewTunnel, PoolSet, SqliteStore, Store, TunnelChange, TunnelFilter},
};

const N: u32 = 100_000;
/// Generous: the work is linear and takes well under a minute on the CI machine in a
/// debug build; a quadratic path would take hours.
const BUDGET: Duration = Duration::from_secs(600);

fn endpoint(k: u32) -> Endpoint {
    Endpoint::Udp4(SocketAddrV4::new(
        Ipv4Addr::from(0xc612_0000 + k / 8),
        4000 + (k % 8) as u16,
    ))
}

/// A directory removed when dropped, also when the test panics.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!("broker-scale-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run() -> String {
    let dir = TempDir::new();
    let pools = PoolSet {
        link: vec!["2001:db8:4000::/36".parse().unwrap()],
        routed: vec!["2001:db8:3000::/36".parse().unwrap()],
        routed_lengths: vec![56],
        quarantine_secs: 60,
        v4v6: None,
    };
    let store = SqliteStore::open(&dir.path().join("broker.db"), pools).unwrap();
    let pop: Pop = crate::broker::tests::broker().pop;
    let mut b = Broker::new(store, FakeMaps::default(), FakeRoutes::default(), pop);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut log = String::new();
    let mut step = |what: &str, t: Instant| {
        log.push_str(&format!("{what}: {:?}\n", t.elapsed()));
    };
    rt.block_on(async {
        // The same thousand creations on an empty store, to compare with below.
        let t = Instant::now();
        let mut first = Vec::new();
        for k in 3 * N..3 * N + 1000 {
            let req = NewTunnel::api(None, Kind::V6Udp4, endpoint(k));
            first.push(b.create_tunnel(&req).await.unwrap().spec.id);
        }
        step("1000 creations on an empty store", t);
        for id in first {
            b.delete_tunnel(id).await.unwrap();
        }
        let t = Instant::now();
        for chunk in (0..N).collect::<Vec<_>>().chunks(5000) {
            let reqs: Vec<NewTunnel> = chunk
                .iter()
                .map(|&k| {
                    let kind = if k % 100 == 0 {
                        Kind::Ayiya
                    } else {
                        Kind::V6Udp4
                    };
                    let e = if kind == Kind::Ayiya {
                        Endpoint::unspecified(kind)
                    } else {
                        endpoint(k)
                    };
                    NewTunnel::api(None, kind, e)
                })
                .collect();
            for r in b.import(&reqs).await.unwrap() {
                r.unwrap();
            }
        }
        step("import", t);
        let total = |b: &Broker<SqliteStore, FakeMaps, FakeRoutes>| -> u64 {
            b.store.census().unwrap().iter().map(|(_, _, n)| *n).sum()
        };
        assert_eq!(total(&b), u64::from(N));
        assert_eq!(b.watched().count(), N as usize / 100, "the AYIYA tunnels");

        // A day of requests: each is indexed, so a thousand of each stay cheap.
        let t = Instant::now();
        let mut made = Vec::new();
        for k in N..N + 1000 {
            made.push(
                b.create_tunnel(&NewTunnel::api(None, Kind::V6Udp4, endpoint(k)))
                    .await
                    .unwrap()
                    .spec
                    .id,
            );
        }
        let clash = NewTunnel::api(None, Kind::V6Udp4, endpoint(7));
        assert!(b.create_tunnel(&clash).await.is_err(), "an endpoint in use");
        step("1000 creations at 100k", t);
        let t = Instant::now();
        for (i, &id) in made.iter().enumerate() {
            assert!(b.store.tunnel(id).unwrap().is_some());
            let change = TunnelChange {
                endpoint: Some(endpoint(2 * N + i as u32)),
                mtu: Some(1400),
                ..Default::default()
            };
            b.update_tunnel(id, &change).await.unwrap();
        }
        step("1000 reads and updates", t);
        let t = Instant::now();
        for &id in &made[..500] {
            b.delete_tunnel(id).await.unwrap();
        }
        step("500 deletions", t);
        let t = Instant::now();
        for _ in 0..100 {
            let page = b
                .store
                .tunnel_page(&TunnelFilter::default(), Some(N / 2), 1000)
                .unwrap();
            assert_eq!(page.len(), 1000);
            assert_eq!(total(&b), u64::from(N) + 500);
            assert!(b.store.expired(crate::store::now()).unwrap().is_empty());
            let at = TunnelFilter {
                address: Some(endpoint(4242).address()),
                ..Default::default()
            };
            assert_eq!(b.store.tunnel_page(&at, None, 100).unwrap().len(), 8);
        }
        step("100 pages, censuses, lifetimes and address lookups", t);

        // Start and reloads: linear passes.
        let statics: Vec<TunnelSpec> = (0..1000u32)
            .map(|i| TunnelSpec {
                id: 10_000_000 + i,
                kind: Kind::Proto41,
                state: State::Up,
                endpoint: Endpoint::Ipv4(Ipv4Addr::from(0xc613_0000 + i)),
                link_prefix: Some(format!("2001:db8:ffff:{i:x}::/64").parse().unwrap()),
                routed_prefixes: vec![],
                client_v4: None,
                mtu: 1480,
                keepalive: None,
                ayiya_key: None,
            })
            .collect();
        let t = Instant::now();
        b.sync_static(&statics).await.unwrap();
        step("static tunnels added, full reconcile", t);
        let t = Instant::now();
        let again = b.reload_static(&statics, b.pop).await.unwrap();
        assert_eq!(again, Default::default());
        step("reload with nothing new", t);
    });
    log
}

#[test]
fn a_hundred_thousand_tunnels_take_no_quadratic_path() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(run));
    });
    match rx.recv_timeout(BUDGET) {
        Ok(Ok(log)) => eprintln!("{log}"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!(
            "{N} tunnels not through within the budget of {BUDGET:?}: a path is no longer \
             bounded per tunnel (see the steps above)"
        ),
    }
}
