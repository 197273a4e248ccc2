//! The AF_XDP engine of AYIYA with live frames: the fixture's data plane attached to its
//! veths, the worker's sockets on both, frames written into the far ends (AF_PACKET) and
//! read where the PoP sends them. A signed AYIYA packet comes out decapsulated, a forged
//! one does not, a native packet into the tunnel comes out signed; an asleep tunnel's
//! packets are verified in XDP; with the worker stopped, XDP does the same by itself.
//!
//! Forged packets from a client's own address and port (issue 11): never counted as the
//! client's, wherever they were rejected; their tunnel is verified in XDP for a while,
//! where its signed packets still get through, while another tunnel keeps the worker; the
//! worker's counts are the same after a restart of the controller.
#[path = "support/mod.rs"]
mod support;

use std::{
    net::Ipv4Addr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use broker_common::{
    consts::program_names,
    maps::{TunnelKind, TunnelStats},
    stats::{DropReason, Event},
};
use broker_userspace::{
    ayiya,
    config::AttachMode,
    dataplane::{self, aux::Aux, AyiyaWorker, Dataplane, WorkerOptions},
    model::State,
};
use etherparse::EtherType;
use support::*;

const PASSWORD: &str = "afxdp";
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 80), 40080);
/// A second AYIYA tunnel, 9, whose client shares the worker with tunnel 8's.
const PASSWORD_B: &str = "afxdp-other";
const CLIENT_B: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 90), 40090);
/// A key that is neither tunnel's: what a forger signs with.
const FORGER: [u8; 20] = [9; 20];

fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

#[test]
fn ayiya_forwarded_through_the_af_xdp_worker() {
    std::thread::spawn(run)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

fn run() {
    let mut fx = Fixture::new();
    fx.dp
        .upsert(&ayiya_spec(8, State::Up, Some(CLIENT), PASSWORD))
        .unwrap();
    let (_aux, isp, inet) = attach(&mut fx);
    let key = ayiya_key(PASSWORD);
    let worker = fx
        .dp
        .start_ayiya_worker(&["eth4".into(), "eth6".into()], 0)
        .unwrap();
    let stats = worker.stats();

    // Client to the internet: verified, decapsulated, hop limit decremented by the worker.
    let inner = udp6(link_addr(8, 2), INET_HOST, 64, b"signed by the client");
    let signed = ayiya_payload(link_addr(8, 2), unix_now(), 1, 41, &inner, &key);
    let want = ether(
        POP6_MAC,
        INET_MAC,
        EtherType::IPV6,
        &hop_decremented(&inner),
    );
    let before = fx.snapshot();
    isp.send(&from_ayiya_client(CLIENT, &signed));
    let got = inet
        .expect(Duration::from_secs(2), |f| f == want)
        .expect("the decapsulated packet out of eth6");
    assert_bytes(&got, &want, "decapsulated by the worker");
    assert_eq!(stats.verified.load(Ordering::Relaxed), 1);
    let d = before.tunnel_delta(&fx.snapshot(), 8);
    assert_eq!(
        (d.from_client_packets, d.drop_packets),
        (1, 0),
        "the worker counted it as the client's"
    );

    // A forged one (another key) goes no further, and is not the client's.
    let forged = ayiya_payload(link_addr(8, 2), unix_now(), 1, 41, &inner, &FORGER);
    let before = fx.snapshot();
    isp.send(&from_ayiya_client(CLIENT, &forged));
    assert!(
        inet.expect(Duration::from_millis(500), |f| f == want)
            .is_none(),
        "a forged packet came out"
    );
    assert_eq!(stats.bad_signature.load(Ordering::Relaxed), 1);
    assert_eq!(stats.verified.load(Ordering::Relaxed), 1);
    let d = before.tunnel_delta(&fx.snapshot(), 8);
    assert_eq!(
        (d.from_client_packets, d.drop_packets),
        (0, 1),
        "a forged packet counted as the client's"
    );

    // An asleep tunnel's packets stay in XDP, which counts them as the client's only once
    // verified: a forged one from the client's own address and port neither reaches the
    // worker nor counts towards waking the tunnel; a signed one does.
    fx.dp
        .upsert(&ayiya_spec(8, State::Down, Some(CLIENT), PASSWORD))
        .unwrap();
    let before = fx.snapshot();
    isp.send(&from_ayiya_client(CLIENT, &forged));
    isp.send(&from_ayiya_client(CLIENT, &signed));
    inet.expect(Duration::from_secs(2), |f| f == want)
        .expect("decapsulated by XDP, the tunnel asleep");
    let d = before.tunnel_delta(&fx.snapshot(), 8);
    assert_eq!(
        (d.from_client_packets, d.drop_packets),
        (1, 1),
        "only the signed packet counts as the client's"
    );
    assert_eq!(stats.bad_signature.load(Ordering::Relaxed), 1);
    assert_eq!(stats.verified.load(Ordering::Relaxed), 1);
    fx.dp
        .upsert(&ayiya_spec(8, State::Up, Some(CLIENT), PASSWORD))
        .unwrap();

    // Internet to the client: encapsulated by XDP, signed by the worker.
    let native = udp6(INET_HOST, link_addr(8, 2), 64, b"to the client");
    inet.send(&from_internet(&native));
    let got = isp
        .expect(Duration::from_secs(2), |f| {
            ethertype(f) == 0x0800 && f.len() > 42 + 44 && f[23] == 17
        })
        .expect("the encapsulated packet out of eth4");
    assert_eq!(&got[..6], &ISP_MAC, "to the gateway");
    assert_eq!(&got[30..34], &CLIENT.0.octets(), "to the client");
    assert_eq!(u16::from_be_bytes([got[36], got[37]]), CLIENT.1);
    let ay = &got[42..];
    assert!(ayiya::verify(ay, &key), "signed with the tunnel's key");
    assert_eq!(&ay[44..], &hop_decremented(&native)[..], "the inner packet");
    assert_eq!(stats.signed.load(Ordering::Relaxed), 1);

    // Packets hashing fewer bytes than the worker's minimum stay in XDP.
    fx.dp.stop_ayiya_worker(worker).unwrap();
    let worker = fx
        .dp
        .start_ayiya_worker(&["eth4".into(), "eth6".into()], 1500)
        .unwrap();
    let signed = ayiya_payload(link_addr(8, 2), unix_now(), 1, 41, &inner, &key);
    isp.send(&from_ayiya_client(CLIENT, &signed));
    inet.expect(Duration::from_secs(2), |f| f == want)
        .expect("decapsulated by XDP, below the worker's minimum");
    assert_eq!(worker.stats().verified.load(Ordering::Relaxed), 0);

    // Without the worker, XDP hashes again: the same packet still gets through.
    fx.dp.stop_ayiya_worker(worker).unwrap();
    let signed = ayiya_payload(link_addr(8, 2), unix_now(), 1, 41, &inner, &key);
    isp.send(&from_ayiya_client(CLIENT, &signed));
    inet.expect(Duration::from_secs(2), |f| f == want)
        .expect("decapsulated by XDP once the worker is gone");
}

/// The fixture with AYIYA tunnels 8 and 9 up, attached to both veths, the peers passing
/// what they get, and a wire on each peer (the ISP side, the internet side).
fn ayiya_fixture(fx: &mut Fixture) -> (Aux, Wire, Wire) {
    fx.dp
        .upsert(&ayiya_spec(8, State::Up, Some(CLIENT), PASSWORD))
        .unwrap();
    fx.dp
        .upsert(&ayiya_spec(9, State::Up, Some(CLIENT_B), PASSWORD_B))
        .unwrap();
    attach(fx)
}

/// Attaches the data plane to the fixture's veths; the peers take what the PoP redirects
/// into them natively and pass it on. The wires into the ISP and internet sides.
fn attach(fx: &mut Fixture) -> (Aux, Wire, Wire) {
    fx.dp.attach("eth4", AttachMode::Driver).unwrap();
    fx.dp.attach("eth6", AttachMode::Driver).unwrap();
    let mut aux = Aux::load().unwrap();
    let (peer4, peer6) = (ifindex("peer4"), ifindex("peer6"));
    aux.attach(program_names::PASS, peer4).unwrap();
    aux.attach(program_names::PASS, peer6).unwrap();
    (aux, Wire::open(peer4), Wire::open(peer6))
}

fn start_worker(dp: &mut Dataplane, suspect: Duration) -> AyiyaWorker {
    dp.start_ayiya_worker_with(
        &["eth4".into(), "eth6".into()],
        WorkerOptions {
            // Every size to the worker.
            min_payload: 0,
            suspect,
        },
    )
    .unwrap()
}

/// An AYIYA frame from `client` through tunnel `id` carrying `inner`, signed with `key`.
fn ayiya_frame(client: (Ipv4Addr, u16), id: u32, inner: &[u8], key: &[u8; 20]) -> Vec<u8> {
    from_ayiya_client(
        client,
        &ayiya_payload(link_addr(id, 2), unix_now(), 1, 41, inner, key),
    )
}

/// Sends `frame` and expects `want` out of the internet side within two seconds, byte for
/// byte.
fn through(isp: &Wire, inet: &Wire, frame: &[u8], want: &[u8], what: &str) {
    isp.send(frame);
    let got = inet
        .expect(Duration::from_secs(2), |f| f == want)
        .unwrap_or_else(|| panic!("{what}: nothing came out of eth6"));
    assert_bytes(&got, want, what);
}

/// The first snapshot within five seconds that `done` accepts (the worker counts a batch
/// after the frames reached it; XDP counts at once).
fn snapshot_when(fx: &Fixture, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let s = fx.snapshot();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < end, "{what}: not counted within 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn bad_signatures(before: &Snapshot, after: &Snapshot) -> u64 {
    after
        .global
        .since(&before.global)
        .dropped(DropReason::BadSignature)
        .packets
}

fn ayiya_decaps(before: &Snapshot, after: &Snapshot) -> u64 {
    after
        .global
        .since(&before.global)
        .event_of(Event::Decap, TunnelKind::Ayiya as u8)
        .packets
}

const FLOOD: u64 = 40;

#[test]
fn forged_ayiya_from_the_clients_own_address_is_not_the_clients_and_stays_in_xdp() {
    std::thread::spawn(forged_from_the_clients_address)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

fn forged_from_the_clients_address() {
    let mut fx = Fixture::new();
    let (_aux, isp, inet) = ayiya_fixture(&mut fx);
    // A suspect period longer than this test: what XDP does during one, without timing.
    let worker = start_worker(&mut fx.dp, Duration::from_secs(3600));
    let stats = worker.stats();
    let inner = udp6(link_addr(8, 2), INET_HOST, 64, &[0x5a; 400]);
    let want = ether(
        POP6_MAC,
        INET_MAC,
        EtherType::IPV6,
        &hop_decremented(&inner),
    );

    // A flood of forged packets from tunnel 8's client's own address and port. The first
    // reaches the worker (nothing is suspect yet), which makes XDP verify the tunnel's
    // packets itself; the others are rejected by one or the other, as they arrive. Either
    // way each is a drop of the tunnel and a `bad_signature`, never the client's traffic.
    let forged = ayiya_frame(CLIENT, 8, &inner, &FORGER);
    let before = fx.snapshot();
    for _ in 0..FLOOD {
        isp.send(&forged);
    }
    let after = snapshot_when(&fx, "the forged packets", |s| {
        bad_signatures(&before, s) == FLOOD
    });
    let d = before.tunnel_delta(&after, 8);
    assert_eq!(
        (d.from_client_packets, d.from_client_bytes),
        (0, 0),
        "forged packets counted as the client's"
    );
    assert_eq!(
        (d.drop_packets, d.drop_bytes),
        (FLOOD, FLOOD * inner.len() as u64),
        "every forged packet is a drop of the tunnel"
    );
    let g = after.global.since(&before.global);
    assert_eq!(
        ayiya_decaps(&before, &after),
        0,
        "forged packets decapsulated"
    );
    assert_eq!(
        g.dropped(DropReason::BadSignature).bytes,
        FLOOD * forged.len() as u64,
        "bad_signature counts the frames as received"
    );
    assert_eq!(
        before.tunnel_delta(&after, 9),
        TunnelStats::default(),
        "the other tunnel"
    );
    let by_worker = stats.bad_signature.load(Ordering::Relaxed);
    assert!(
        (1..=FLOOD).contains(&by_worker),
        "the worker rejected {by_worker}"
    );
    assert_eq!(stats.suspected.load(Ordering::Relaxed), 1, "one switch");
    assert!(fx.dp.ayiya_suspect(8).is_some(), "tunnel 8 is suspect");
    assert!(fx.dp.ayiya_suspect(9).is_none(), "tunnel 9 is not");
    assert!(
        inet.expect(Duration::from_millis(200), |f| f == want)
            .is_none(),
        "a forged packet came out"
    );

    // While suspect, tunnel 8's signed packets are verified in XDP: out byte for byte,
    // counted as the client's by XDP, never seen by the worker.
    let before = fx.snapshot();
    through(
        &isp,
        &inet,
        &ayiya_frame(CLIENT, 8, &inner, &ayiya_key(PASSWORD)),
        &want,
        "tunnel 8, suspect, verified in XDP",
    );
    let after = fx.snapshot();
    let d = before.tunnel_delta(&after, 8);
    assert_eq!(
        (d.from_client_packets, d.from_client_bytes, d.drop_packets),
        (1, inner.len() as u64, 0)
    );
    assert_eq!(ayiya_decaps(&before, &after), 1);
    assert_eq!(
        stats.verified.load(Ordering::Relaxed),
        0,
        "the worker saw it"
    );

    // More forged ones are rejected in XDP: the worker sees none of them.
    let before = fx.snapshot();
    for _ in 0..FLOOD {
        isp.send(&forged);
    }
    let after = snapshot_when(&fx, "the second flood", |s| {
        bad_signatures(&before, s) == FLOOD
    });
    assert_eq!(
        stats.bad_signature.load(Ordering::Relaxed),
        by_worker,
        "the worker got forged packets of a suspect tunnel"
    );
    let d = before.tunnel_delta(&after, 8);
    assert_eq!((d.from_client_packets, d.drop_packets), (0, FLOOD));
    assert_eq!(stats.suspected.load(Ordering::Relaxed), 1);

    // Tunnel 9 keeps the worker: its signed packet is verified there, out byte for byte.
    let inner9 = udp6(link_addr(9, 2), INET_HOST, 64, &[0x9b; 400]);
    let want9 = ether(
        POP6_MAC,
        INET_MAC,
        EtherType::IPV6,
        &hop_decremented(&inner9),
    );
    let before = fx.snapshot();
    through(
        &isp,
        &inet,
        &ayiya_frame(CLIENT_B, 9, &inner9, &ayiya_key(PASSWORD_B)),
        &want9,
        "tunnel 9 through the worker",
    );
    let after = snapshot_when(&fx, "tunnel 9's packet", |s| {
        before.tunnel_delta(s, 9).from_client_packets == 1
    });
    assert_eq!(stats.verified.load(Ordering::Relaxed), 1, "by the worker");
    let d = before.tunnel_delta(&after, 9);
    assert_eq!(
        (d.from_client_packets, d.from_client_bytes, d.drop_packets),
        (1, inner9.len() as u64, 0)
    );
    assert_eq!(ayiya_decaps(&before, &after), 1);
    fx.dp.stop_ayiya_worker(worker).unwrap();
}

/// Removes an instance's pins when dropped, also when the test fails.
struct Pins(String);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = dataplane::detach_instance(&self.0);
    }
}

#[test]
fn the_workers_counts_survive_a_controller_restart_and_a_suspect_period_ends() {
    std::thread::spawn(restart)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

fn restart() {
    let instance = format!("test-afxdp-{}", std::process::id());
    let _pins = Pins(instance.clone());
    let opts = dataplane::Options {
        pin: true,
        // The fixture's capacities, for the second load too.
        max_tunnels: 64,
        max_prefixes: 256,
        ..dataplane::Options::new(&instance)
    };
    let mut fx = Fixture::with_options(opts.clone());
    let (_aux, isp, inet) = ayiya_fixture(&mut fx);
    let worker = start_worker(&mut fx.dp, Duration::from_millis(200));
    let inner = udp6(link_addr(8, 2), INET_HOST, 64, &[0x5a; 300]);
    let signed = || ayiya_frame(CLIENT, 8, &inner, &ayiya_key(PASSWORD));
    let want = ether(
        POP6_MAC,
        INET_MAC,
        EtherType::IPV6,
        &hop_decremented(&inner),
    );
    let start = fx.snapshot();
    through(&isp, &inet, &signed(), &want, "through the worker");
    for _ in 0..3 {
        isp.send(&ayiya_frame(CLIENT, 8, &inner, &FORGER));
    }
    snapshot_when(&fx, "the forged packets", |s| {
        bad_signatures(&start, s) == 3 && start.tunnel_delta(s, 8).from_client_packets == 1
    });
    // Once the period is over, the tunnel's packets go to the worker again.
    let end = Instant::now() + Duration::from_secs(5);
    while fx.dp.ayiya_suspect(8).is_some() {
        assert!(Instant::now() < end, "still suspect after 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // XDP reads the same coarse clock; a tick more, should it be updated a moment later.
    std::thread::sleep(Duration::from_millis(20));
    let verified = worker.stats().verified.load(Ordering::Relaxed);
    through(&isp, &inet, &signed(), &want, "back to the worker");
    let counted = snapshot_when(&fx, "the last packet", |s| {
        start.tunnel_delta(s, 8).from_client_packets == 2
    });
    assert_eq!(
        worker.stats().verified.load(Ordering::Relaxed),
        verified + 1,
        "verified by the worker"
    );
    let d = start.tunnel_delta(&counted, 8);
    assert_eq!(
        (d.from_client_packets, d.from_client_bytes, d.drop_packets),
        (2, 2 * inner.len() as u64, 3)
    );

    // The controller goes (its worker with it), a new one takes the pinned maps over:
    // every count is where it was.
    drop(worker);
    fx.dp = Dataplane::load(&opts).unwrap();
    assert!(fx.dp.adopted());
    let again = fx.snapshot();
    for id in [8, 9] {
        assert_eq!(
            counted.tunnel_delta(&again, id),
            TunnelStats::default(),
            "tunnel {id}"
        );
    }
    assert_eq!(bad_signatures(&counted, &again), 0);
    assert_eq!(ayiya_decaps(&counted, &again), 0);
    assert_eq!(bad_signatures(&start, &again), 3);
    // `broker stats` reads the same from the pins, in another process.
    let pinned = dataplane::PinnedCounters::open(&instance).unwrap();
    let t8 = pinned.tunnels().unwrap().into_iter().find(|t| t.id == 8);
    assert_eq!(t8.map(|t| t.stats), Some(again.tunnels[&8]));
    // Stray traffic on the lab's veths (neighbour discovery) may be counted between two
    // reads: the pins are compared at a moment the data plane's own reads agree.
    let quiet = (0..50).find_map(|_| {
        let before = fx.snapshot().global;
        let pinned = pinned.global().unwrap();
        let after = fx.snapshot().global;
        (before == after).then_some((pinned, before))
    });
    let (pinned_global, global) = quiet.expect("a quiet moment among 50 reads");
    assert_eq!(pinned_global, global);
    // And it goes on counting from there.
    fx.dp.attach("eth4", AttachMode::Driver).unwrap();
    fx.dp.attach("eth6", AttachMode::Driver).unwrap();
    let worker = start_worker(&mut fx.dp, Duration::from_millis(200));
    through(&isp, &inet, &signed(), &want, "through the new worker");
    let last = snapshot_when(&fx, "after the restart", |s| {
        again.tunnel_delta(s, 8).from_client_packets == 1
    });
    assert_eq!(worker.stats().verified.load(Ordering::Relaxed), 1);
    assert_eq!(start.tunnel_delta(&last, 8).from_client_packets, 3);
    fx.dp.stop_ayiya_worker(worker).unwrap();
}
