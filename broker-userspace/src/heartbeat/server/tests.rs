use super::*;
use crate::{
    broker::tests::{broker, FakeMaps, FakeRoutes},
    model::{Endpoint, State},
    store::{NewTunnel, SqliteStore, TunnelRecord},
};

type TestBroker = Broker<SqliteStore, FakeMaps, FakeRoutes>;

const HOME: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const CAFE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);

async fn tunnel(b: &mut TestBroker, kind: Kind) -> TunnelRecord {
    let endpoint = match kind {
        Kind::Proto41 => Endpoint::Ipv4(Ipv4Addr::new(198, 51, 100, 99)),
        k => Endpoint::unspecified(k),
    };
    b.create_tunnel(&NewTunnel::api(None, kind, endpoint))
        .await
        .unwrap()
}

fn beat_for(t: &TunnelRecord, ipv4: Option<Ipv4Addr>, epoch: u64, password: &str) -> String {
    message::beat(t.spec.client_v6().unwrap(), ipv4, epoch, password)
}

fn rejected(r: Result<(), Fault>) -> Reject {
    match r {
        Err(Fault::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_valid_beat_moves_and_wakes_the_tunnel() {
    let mut b = broker();
    let mut tr = Tracker::new(Duration::from_secs(120));
    let t = tunnel(&mut b, Kind::Heartbeat).await;
    let id = t.spec.id;
    let now = crate::store::now();
    assert!(t.spec.endpoint.is_unspecified());

    let line = beat_for(&t, None, now, &t.password);
    handle(&mut b, &mut tr, line.as_bytes(), HOME)
        .await
        .unwrap();
    let stored = b.store.tunnel(id).unwrap().unwrap();
    assert_eq!(stored.spec.endpoint, Endpoint::Ipv4(HOME));
    assert_eq!(b.maps_installed(id).unwrap().endpoint, Endpoint::Ipv4(HOME));
    let updated = stored.updated_at;

    // Same address again: nothing is rewritten.
    handle(&mut b, &mut tr, line.as_bytes(), HOME)
        .await
        .unwrap();
    assert_eq!(b.store.tunnel(id).unwrap().unwrap().updated_at, updated);

    // Silence puts it to sleep (data plane only: the store still says up).
    let later = Instant::now() + Duration::from_secs(121);
    put_silent_to_sleep(&mut b, &mut tr, later);
    assert!(b.is_asleep(id));
    assert_eq!(b.maps_installed(id).unwrap().state, State::Down);
    assert_eq!(b.store.tunnel(id).unwrap().unwrap().spec.state, State::Up);

    // A beat from elsewhere (a named address this time) moves and wakes it.
    let line = beat_for(&t, Some(CAFE), now + 1, &t.password);
    handle(&mut b, &mut tr, line.as_bytes(), CAFE)
        .await
        .unwrap();
    assert!(!b.is_asleep(id));
    let installed = b.maps_installed(id).unwrap();
    assert_eq!(installed.state, State::Up);
    assert_eq!(installed.endpoint, Endpoint::Ipv4(CAFE));
    assert_eq!(
        b.store.tunnel(id).unwrap().unwrap().spec.endpoint,
        Endpoint::Ipv4(CAFE)
    );
}

#[tokio::test]
async fn a_beat_replayed_from_elsewhere_does_not_move_the_tunnel() {
    let mut b = broker();
    let mut tr = Tracker::new(Duration::from_secs(120));
    let t = tunnel(&mut b, Kind::Heartbeat).await;
    let id = t.spec.id;
    let now = crate::store::now();
    // `sender`: the line does not name the address, so anyone who saw it can resend it.
    let seen = beat_for(&t, None, now, &t.password);
    handle(&mut b, &mut tr, seen.as_bytes(), HOME)
        .await
        .unwrap();
    const VICTIM: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
    let r = handle(&mut b, &mut tr, seen.as_bytes(), VICTIM).await;
    assert_eq!(rejected(r), Reject::Replayed);
    assert_eq!(
        b.store.tunnel(id).unwrap().unwrap().spec.endpoint,
        Endpoint::Ipv4(HOME)
    );
    // Nor an older one the client sent before.
    let older = beat_for(&t, None, now - 30, &t.password);
    let r = handle(&mut b, &mut tr, older.as_bytes(), VICTIM).await;
    assert_eq!(rejected(r), Reject::Replayed);
    // The same beat again from the client's own address is only a beat.
    handle(&mut b, &mut tr, seen.as_bytes(), HOME)
        .await
        .unwrap();
    // The client's next beat, from a new address (it moved), moves the tunnel.
    let next = beat_for(&t, None, now + 10, &t.password);
    handle(&mut b, &mut tr, next.as_bytes(), CAFE)
        .await
        .unwrap();
    assert_eq!(
        b.store.tunnel(id).unwrap().unwrap().spec.endpoint,
        Endpoint::Ipv4(CAFE)
    );
}

#[tokio::test]
async fn every_rejection() {
    let mut b = broker();
    let mut tr = Tracker::new(Duration::from_secs(120));
    let hb = tunnel(&mut b, Kind::Heartbeat).await;
    let p41 = tunnel(&mut b, Kind::Proto41).await;
    let now = crate::store::now();
    let pw = hb.password.clone();

    let cases: Vec<(Vec<u8>, Ipv4Addr, Reject)> = vec![
        (
            beat_for(&hb, None, now, "not-the-password").into_bytes(),
            HOME,
            Reject::BadDigest,
        ),
        (
            beat_for(&hb, None, now - 121, &pw).into_bytes(),
            HOME,
            Reject::ClockSkew,
        ),
        (
            beat_for(&hb, None, now + 121, &pw).into_bytes(),
            HOME,
            Reject::ClockSkew,
        ),
        (
            beat_for(&hb, Some(CAFE), now, &pw).into_bytes(),
            HOME,
            Reject::Ipv4Mismatch,
        ),
        (vec![b'x'; 256], HOME, Reject::TooLong),
        (
            b"HEARTBEAT TUNNEL nonsense".to_vec(),
            HOME,
            Reject::Malformed { field: "fields" },
        ),
        (b"PING".to_vec(), HOME, Reject::NotHeartbeat),
        (
            // Nobody's link.
            message::beat("2001:db8:ffff::2".parse().unwrap(), None, now, &pw).into_bytes(),
            HOME,
            Reject::UnknownTunnel,
        ),
        (
            // Inside the tunnel's /64, but not its client address.
            message::beat(hb.spec.pop_v6().unwrap(), None, now, &pw).into_bytes(),
            HOME,
            Reject::UnknownTunnel,
        ),
        (
            beat_for(&p41, None, now, &p41.password).into_bytes(),
            HOME,
            Reject::WrongKind,
        ),
    ];
    for (datagram, source, want) in cases {
        let got = rejected(handle(&mut b, &mut tr, &datagram, source).await);
        assert_eq!(got, want, "{}", String::from_utf8_lossy(&datagram));
    }
    // None of them touched a tunnel.
    assert!(b
        .store
        .tunnel(hb.spec.id)
        .unwrap()
        .unwrap()
        .spec
        .endpoint
        .is_unspecified());
    assert_eq!(
        b.store.tunnel(p41.spec.id).unwrap().unwrap().spec.endpoint,
        p41.spec.endpoint
    );
}

#[tokio::test]
async fn only_up_heartbeat_tunnels_are_put_to_sleep() {
    let mut b = broker();
    let mut tr = Tracker::new(Duration::from_secs(120));
    let hb = tunnel(&mut b, Kind::Heartbeat).await;
    let down = tunnel(&mut b, Kind::Heartbeat).await;
    let p41 = tunnel(&mut b, Kind::Proto41).await;
    b.update_tunnel(
        down.spec.id,
        &TunnelChange {
            state: Some(State::Down),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    // The first sweep after a start only starts the timers.
    put_silent_to_sleep(&mut b, &mut tr, t0);
    assert!(!b.is_asleep(hb.spec.id));
    put_silent_to_sleep(&mut b, &mut tr, t0 + Duration::from_secs(121));
    assert!(b.is_asleep(hb.spec.id));
    assert!(!b.is_asleep(down.spec.id));
    assert!(!b.is_asleep(p41.spec.id));
}
