//! Two PoPs' brokers over one PostgreSQL store (docs/MULTI-POP.md): each projects only
//! its own tunnels, follows what the other changes, and catches up on what it missed.
use std::net::Ipv4Addr;

use super::tests::{FakeMaps, FakeRoutes};
use super::*;
use crate::store::{test_engines::shared, Heard, Home, PgStore, PoolSet};

pub(crate) type PgBroker = Broker<PgStore, FakeMaps, FakeRoutes>;

fn home(pop: &str, n: u8) -> Home {
    Home {
        pop: pop.into(),
        pools: PoolSet {
            link: vec![format!("2001:db8:{n}0::/56").parse().unwrap()],
            routed: vec![format!("2001:db8:{n}000::/40").parse().unwrap()],
            routed_lengths: vec![56],
            quarantine_secs: 0,
            v4v6: None,
        },
    }
}

pub(crate) fn two() -> (PgBroker, PgBroker) {
    let [a, b] = <[_; 2]>::try_from(shared([home("a", 1), home("b", 2)]))
        .ok()
        .unwrap();
    let pop = |last| Pop::ipv4_only(Ipv4Addr::new(192, 0, 2, last));
    let mut a = Broker::new(a, FakeMaps::default(), FakeRoutes::default(), pop(1));
    let mut b = Broker::new(b, FakeMaps::default(), FakeRoutes::default(), pop(2));
    for x in [&mut a, &mut b] {
        x.set_following(true);
        block_on(x.reconcile()).unwrap();
    }
    (a, b)
}

fn req(last: u8, pop: Option<&str>) -> NewTunnel {
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

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The changes a listener hears until nothing more comes for half a second.
fn heard_for(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Heard>) -> Vec<crate::store::Notified> {
    block_on(async {
        let mut out = Vec::new();
        while let Ok(Some(h)) =
            tokio::time::timeout(std::time::Duration::from_millis(500), rx.recv()).await
        {
            if let Heard::Changed(n) = h {
                out.push(n);
            }
        }
        out
    })
}

#[test]
fn a_tunnel_made_on_one_pop_for_another_is_projected_there_only() {
    let (mut a, mut b) = two();
    let mut heard = b.store.listen();
    // Listening before the change, as a PoP is before it reads the store.
    assert_eq!(block_on(heard.recv()), Some(Heard::Listening));
    let t = block_on(a.create_tunnel(&req(1, Some("b")))).unwrap();
    // a wrote the store, not its maps or routes.
    assert!(a.maps_installed(t.spec.id).is_none());
    assert!(a.routes_now().is_empty());
    let changes = heard_for(&mut heard);
    assert!(!changes.is_empty());
    block_on(b.follow_notified(&changes)).unwrap();
    assert_eq!(b.maps_installed(t.spec.id), Some(t.spec.clone()));
    assert_eq!(b.routes_now(), t.spec.prefixes().collect());
    // b's stamp is the generation it applied, which is the store's now.
    assert_eq!(b.applied, Some(b.store.generation().unwrap()));

    // Moved to a: a takes it up at once (it made the change), b lets it go when told.
    let moved = block_on(a.update_tunnel(
        t.spec.id,
        &TunnelChange {
            pop: Some("a".into()),
            ..Default::default()
        },
    ))
    .unwrap();
    assert_eq!(a.maps_installed(t.spec.id), Some(moved.spec.clone()));
    assert_eq!(a.routes_now(), moved.spec.prefixes().collect());
    block_on(b.follow_notified(&heard_for(&mut heard))).unwrap();
    assert!(b.maps_installed(t.spec.id).is_none());
    assert!(b.routes_now().is_empty());
    // Deleted through b, which holds nothing of it: a's maps and routes keep it until
    // its own notification comes.
    block_on(b.delete_tunnel(t.spec.id)).unwrap();
    assert!(a.maps_installed(t.spec.id).is_some());
    block_on(a.follow(t.spec.id)).unwrap();
    assert!(a.maps_installed(t.spec.id).is_none());
    assert!(a.routes_now().is_empty());
}

#[test]
fn a_missed_notification_is_caught_up_by_a_full_reconcile() {
    let (mut a, mut b) = two();
    let before = b.maps.reconciles();
    // Nobody listens: b never hears of it.
    let t = block_on(a.create_tunnel(&req(1, Some("b")))).unwrap();
    // The first check only suspects (a notification may be on its way)...
    assert!(!block_on(b.catch_up(true)).unwrap());
    assert!(b.maps_installed(t.spec.id).is_none());
    // ...the next one, still behind, reconciles.
    assert!(block_on(b.catch_up(true)).unwrap());
    assert_eq!(b.maps.reconciles(), before + 1);
    assert_eq!(b.maps_installed(t.spec.id), Some(t.spec.clone()));
    // In step now: nothing to do.
    assert!(!block_on(b.catch_up(false)).unwrap());
    // After the listener connects again, one check is enough.
    block_on(a.delete_tunnel(t.spec.id)).unwrap();
    assert!(block_on(b.catch_up(false)).unwrap());
    assert!(b.maps_installed(t.spec.id).is_none());
}

#[test]
fn a_following_pop_stamps_what_it_applied_not_what_the_store_holds() {
    let (mut a, mut b) = two();
    b.stamp().unwrap();
    let stamped = b.maps.stamp();
    assert!(stamped.is_some());
    // A change elsewhere, not yet applied: the stamp must not claim it.
    block_on(a.create_tunnel(&req(1, Some("b")))).unwrap();
    b.stamp().unwrap();
    assert_eq!(b.maps.stamp(), stamped);
    // A restart would see the stamp differ from the store's and reconcile.
    let generation = b.store.generation().unwrap();
    assert_ne!(Some(b.stamp_of(generation)), stamped);
}

#[test]
fn the_routes_check_after_a_stamped_start_leaves_other_pops_tunnels_alone() {
    let (mut a, _b) = two();
    let mine = block_on(a.create_tunnel(&req(1, None))).unwrap();
    let theirs = block_on(a.create_tunnel(&req(2, Some("b")))).unwrap();
    let lister = FakeRoutes::default();
    let a = tokio::sync::Mutex::new(a);
    // The kernel (as listed) has none of them: only a's own are added.
    let (added, removed) = block_on(crate::broker::check_routes(&a, &lister)).unwrap();
    assert_eq!((added, removed), (mine.spec.prefixes().count(), 0));
    let a = a.into_inner();
    assert!(theirs.spec.prefixes().all(|p| !a.routes_now().contains(&p)));
}
