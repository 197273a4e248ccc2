//! The SixXS side in the lab with the real binaries: `broker client ayiya` and `broker client
//! heartbeat` fetch their tunnels over TIC from `broker run` and the kernel's ping goes
//! through them. The AYIYA client sits behind a NAT and is followed to a new mapping (by its
//! traffic, and by its beats alone); the heartbeat tunnel follows its host to a new
//! address at the first beat; a forged AYIYA packet never reaches the internet and is
//! counted as `bad_signature`.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV6, UdpSocket},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use broker_tests::{
    lab::{
        Lab, BEAT_INTERVAL_SECS, HEARTBEAT_HOST, HEARTBEAT_HOST_2, INET6_HOST, NAT_PUBLIC,
        NAT_PUBLIC_2, POP_V4, SIXXS_TUN,
    },
    netns::NetNs,
};
use etherparse::PacketBuilder;
use serde_json::Value;
use sha1::{Digest, Sha1};

/// One beat interval, the time the broker may take to follow a client that only beats.
const BEAT: Duration = Duration::from_secs(BEAT_INTERVAL_SECS as u64);
/// The controller writes endpoints the data plane learnt every 10 s.
const STORE_WRITE: Duration = Duration::from_secs(10);

fn lab(tag: &str, dir: &tempfile::TempDir) -> Lab {
    broker_tests::require_root();
    let prefix = format!("bt{}{tag}", std::process::id());
    // One static client keeps the lab's own proto-41 tunnel next to the SixXS ones.
    let mut lab = Lab::start(&prefix, 1, dir.path(), "").expect("starting the lab");
    lab.add_tsp_hosts().expect("adding the TSP hosts (the NAT)");
    lab.add_sixxs_hosts().expect("adding the SixXS hosts");
    lab
}

fn user(lab: &Lab, name: &str, password: &str) {
    lab.cli(&["user", "add", name, "--password", password])
        .expect("creating the user");
}

/// `broker tunnel add --kind <kind> --owner <owner>`: the new tunnel as JSON.
fn add_tunnel(lab: &Lab, kind: &str, owner: &str) -> Value {
    let out = lab
        .cli(&["tunnel", "add", "--kind", kind, "--owner", owner, "--json"])
        .expect("creating the tunnel");
    serde_json::from_str(&out).expect("JSON")
}

/// `broker tunnel show <id>` as JSON.
fn tunnel(lab: &Lab, id: u64) -> Value {
    let out = lab
        .cli(&["tunnel", "show", &id.to_string(), "--json"])
        .expect("tunnel show");
    serde_json::from_str(&out).expect("JSON")
}

fn stats(lab: &Lab) -> Value {
    serde_json::from_str(&lab.stats(true).expect("broker stats")).expect("stats JSON")
}

fn bad_signature_drops(lab: &Lab) -> u64 {
    stats(lab)["drops"]["bad_signature"]["packets"]
        .as_u64()
        .expect("a bad_signature counter")
}

/// The value of one series of `/metrics` (0 when absent).
fn metric(lab: &Lab, series: &str) -> u64 {
    lab.metric(series).expect("metrics")
}

/// Pings `dst` from `ns` until a reply comes, for at most `limit`; returns how long it took.
fn wait_ping(ns: &NetNs, dst: &str, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match ns.exec("ping", &["-6", "-n", "-c", "1", "-W", "1", dst]) {
            Ok(_) => return Ok(start.elapsed()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "{dst} unreachable from {} for {limit:?}: {last}",
        ns.name()
    ))
}

/// `count` echo requests of `size` payload bytes from `ns` to `dst`, 200 ms apart, every
/// one answered within 2 s.
fn pings(ns: &NetNs, dst: Ipv6Addr, count: u32, size: u32) -> Result<String, String> {
    let (count, size, dst) = (count.to_string(), size.to_string(), dst.to_string());
    ns.exec(
        "ping",
        &[
            "-6", "-n", "-c", &count, "-i", "0.2", "-W", "2", "-s", &size, &dst,
        ],
    )
    .map_err(|e| e.to_string())
}

/// Polls `ready` every 200 ms until it holds, for at most `limit`; returns how long it
/// took.
fn eventually(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if ready() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where the API says a tunnel's client is; `None` while it is not known (the API shows
/// the unspecified address, and port 0, until the client is heard).
fn endpoint(t: &Value) -> (Option<String>, Option<u64>) {
    (
        t["remote_ipv4"]
            .as_str()
            .filter(|a| *a != "0.0.0.0")
            .map(str::to_string),
        t["remote_port"].as_u64().filter(|p| *p != 0),
    )
}

fn client_address(t: &Value) -> Ipv6Addr {
    t["client_ipv6"]
        .as_str()
        .expect("client_ipv6")
        .parse()
        .unwrap()
}

fn id_of(t: &Value) -> u64 {
    t["id"].as_u64().expect("an id")
}

#[test]
fn ayiya_client_behind_a_nat_fetches_its_tunnel_over_tic_and_follows_a_new_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("ay", &dir);
    user(&lab, "alice", "alice-password");
    let t = add_tunnel(&lab, "ayiya", "alice");
    let id = id_of(&t);
    assert_eq!(t["kind"], "ayiya", "{t}");
    assert_eq!(endpoint(&t), (None, None), "learnt, not given: {t}");
    let addr = client_address(&t);

    let c = lab
        .start_ayiya_client("a1", "alice", "alice-password", Some(id as u32))
        .unwrap();
    let addrs = lab.wait_sixxs_up("a1", c).unwrap();
    assert!(
        addrs.contains(&format!("{addr}/64")),
        "TIC's IPv6 Endpoint on {SIXXS_TUN}: {addrs}"
    );
    assert_eq!(
        metric(&lab, "broker_tic_sessions_total{outcome=\"ok\"}"),
        1,
        "one TIC login"
    );
    let a1 = lab.host("a1");
    wait_ping(a1, &INET6_HOST.to_string(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.proc_log(c)));
    pings(a1, INET6_HOST, 3, 56).expect("every echo answered");
    // The other way: the PoP signs and sends to where the client was heard.
    wait_ping(&lab.inet6, &addr.to_string(), Duration::from_secs(5)).unwrap();
    // The lab runs the default engine, AF_XDP: packets of 256 hashed bytes or more go
    // through the worker `broker run` started, which verifies the client's and signs the
    // PoP's (smaller ones stay in XDP).
    pings(a1, INET6_HOST, 3, 400).expect("every large echo answered");
    for outcome in ["verified", "signed"] {
        let series = format!("broker_ayiya_worker_total{{outcome=\"{outcome}\"}}");
        assert!(metric(&lab, &series) > 0, "{series} is 0");
    }
    let took = eventually(STORE_WRITE * 2, "the API shows the NAT's mapping", || {
        endpoint(&tunnel(&lab, id)).0.as_deref() == Some(&NAT_PUBLIC.to_string())
    });
    let (_, port) = endpoint(&tunnel(&lab, id));
    assert!(port.is_some(), "a learnt port");
    eprintln!("learnt endpoint {NAT_PUBLIC}:{port:?} in the store after {took:?}");
    let moves = lab.broker_log().matches("AYIYA client moved").count();

    // A new mapping while the client is idle: the PoP still sends to the old one (the NAT
    // drops it) until the client's next beat, which the data plane follows at once.
    lab.renat(NAT_PUBLIC_2).unwrap();
    let took = wait_ping(&lab.inet6, &addr.to_string(), BEAT + Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("not followed by the beat: {e}\n{}", lab.proc_log(c)));
    eprintln!("the internet reached the idle client {took:?} after the NAT mapping changed");
    wait_ping(
        lab.host("a1"),
        &INET6_HOST.to_string(),
        Duration::from_secs(5),
    )
    .unwrap();
    let took = eventually(STORE_WRITE * 2, "the API shows the new mapping", || {
        endpoint(&tunnel(&lab, id)).0.as_deref() == Some(&NAT_PUBLIC_2.to_string())
    });
    eprintln!("new endpoint in the store {took:?} later");
    assert!(endpoint(&tunnel(&lab, id)).1.is_some());
    assert!(
        lab.broker_log().matches("AYIYA client moved").count() > moves,
        "the broker logs the move"
    );

    // Again, and this time the client's own traffic moves it: its first packet through
    // the new mapping is answered.
    lab.renat(NAT_PUBLIC).unwrap();
    let took = wait_ping(
        lab.host("a1"),
        &INET6_HOST.to_string(),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.proc_log(c)));
    assert!(
        took < Duration::from_secs(3),
        "the first packets are answered, not the next beat: {took:?}"
    );
    eprintln!("traffic resumed {took:?} after the second NAT change");
    eventually(STORE_WRITE * 2, "the API shows the mapping again", || {
        endpoint(&tunnel(&lab, id)).0.as_deref() == Some(&NAT_PUBLIC.to_string())
    });
    let t = tunnel(&lab, id);
    assert_eq!(t["state"], "up");
    assert_eq!(t["asleep"], false, "{t}");
    assert!(
        t["counters"]["from_client_packets"].as_u64().unwrap() > 0
            && t["counters"]["to_client_packets"].as_u64().unwrap() > 0,
        "{t}"
    );
    lab.stop_proc(c);
    assert!(
        lab.proc_log(c).contains("AYIYA tunnel closed"),
        "{}",
        lab.proc_log(c)
    );
}

#[test]
fn heartbeat_tunnel_follows_its_host_to_a_new_address_at_the_first_beat() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("hb", &dir);
    user(&lab, "bob", "bob-password");
    let t = add_tunnel(&lab, "heartbeat", "bob");
    let id = id_of(&t);
    assert_eq!(t["kind"], "heartbeat", "{t}");
    assert_eq!(endpoint(&t).0, None, "set by beats: {t}");
    let addr = client_address(&t);

    let c = lab
        .start_heartbeat_client("h1", "bob", "bob-password", None, HEARTBEAT_HOST)
        .unwrap();
    lab.wait_sixxs_up("h1", c).unwrap();
    eventually(
        Duration::from_secs(5),
        "the first beat sets the endpoint",
        || endpoint(&tunnel(&lab, id)).0.as_deref() == Some(&HEARTBEAT_HOST.to_string()),
    );
    wait_ping(
        lab.host("h1"),
        &INET6_HOST.to_string(),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.proc_log(c)));
    wait_ping(&lab.inet6, &addr.to_string(), Duration::from_secs(5)).unwrap();
    let accepted = metric(&lab, "broker_heartbeats_total{outcome=\"accepted\"}");
    assert!(accepted >= 1, "beats accepted: {accepted}");

    // The host gets another address (its old one is gone) and the client starts again
    // from there: the PoP follows at its first beat, well within one interval. Beats carry
    // whole seconds, and one from a new address with the epoch of the last accepted one is
    // a replay as far as anyone can tell (docs/SECURITY.md): start again a second later.
    lab.stop_proc(c);
    std::thread::sleep(Duration::from_millis(1100));
    lab.move_host("h1", HEARTBEAT_HOST, HEARTBEAT_HOST_2)
        .unwrap();
    let start = Instant::now();
    let c = lab
        .start_heartbeat_client(
            "h1",
            "bob",
            "bob-password",
            Some(id as u32),
            HEARTBEAT_HOST_2,
        )
        .unwrap();
    lab.wait_sixxs_up("h1", c).unwrap();
    eventually(BEAT, "the endpoint follows the host", || {
        endpoint(&tunnel(&lab, id)).0.as_deref() == Some(&HEARTBEAT_HOST_2.to_string())
    });
    let followed = start.elapsed();
    assert!(followed < BEAT, "{followed:?}");
    wait_ping(
        lab.host("h1"),
        &INET6_HOST.to_string(),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.proc_log(c)));
    wait_ping(&lab.inet6, &addr.to_string(), Duration::from_secs(5)).unwrap();
    eprintln!("heartbeat tunnel followed the host {followed:?} after the client restarted");
    assert!(metric(&lab, "broker_heartbeats_total{outcome=\"accepted\"}") > accepted);
    let t = tunnel(&lab, id);
    assert_eq!(t["asleep"], false, "{t}");
    assert_eq!(
        metric(&lab, "broker_tic_sessions_total{outcome=\"ok\"}"),
        2,
        "one TIC login per start"
    );
    lab.stop_proc(c);
}

/// An AYIYA packet as a client sends it: `identity` is the sender's inner address, the
/// signature SHA-1 over the whole packet with SHA-1(`password`) in the signature field.
fn ayiya_packet(identity: Ipv6Addr, inner: &[u8], password: &str) -> Vec<u8> {
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let key: [u8; 20] = Sha1::digest(password.as_bytes()).into();
    let mut p = vec![0x41, 0x52, 0x10 | 1, 41];
    p.extend_from_slice(&epoch.to_be_bytes());
    p.extend_from_slice(&identity.octets());
    p.extend_from_slice(&key);
    p.extend_from_slice(inner);
    let sig: [u8; 20] = Sha1::digest(&p).into();
    p[24..44].copy_from_slice(&sig);
    p
}

/// IPv6/UDP from `src` to the internet host's `port`, with a valid checksum.
fn inner_udp(src: Ipv6Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src.octets(), INET6_HOST.octets(), 64).udp(4000, port);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

/// Sends `datagrams` from `ns` to the PoP's AYIYA port, from one socket.
fn send_from(ns: &NetNs, datagrams: Vec<Vec<u8>>) {
    ns.within(move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for d in &datagrams {
            s.send_to(d, (POP_V4, 5072)).unwrap();
        }
    });
}

#[test]
fn a_forged_ayiya_packet_never_reaches_the_internet_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("fg", &dir);
    user(&lab, "carol", "carol-password");
    let t = add_tunnel(&lab, "ayiya", "carol");
    let id = id_of(&t);
    let addr = client_address(&t);
    let password = tunnel(&lab, id)["password"]
        .as_str()
        .expect("the tunnel's password")
        .to_string();
    let c = lab
        .start_ayiya_client("a1", "carol", "carol-password", None)
        .unwrap();
    lab.wait_sixxs_up("a1", c).unwrap();
    wait_ping(
        lab.host("a1"),
        &INET6_HOST.to_string(),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.proc_log(c)));

    // The internet host listens where the injected datagrams would go.
    const PORT: u16 = 9999;
    let listener = lab.inet6.within(|| {
        let s = UdpSocket::bind(SocketAddrV6::new(INET6_HOST, PORT, 0, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    });
    let received = |listener: &UdpSocket, within: Duration| {
        let mut got = Vec::new();
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        while start.elapsed() < within {
            if let Ok(n) = listener.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    };

    // Three packets claiming to be carol's client, from another host (h1), in the right
    // format, fresh, signed with a guessed password.
    let before = bad_signature_drops(&lab);
    let forged = ayiya_packet(addr, &inner_udp(addr, PORT, b"forged"), "guessed-password");
    send_from(lab.host("h1"), vec![forged; 3]);
    let took = eventually(Duration::from_secs(5), "three bad_signature drops", || {
        bad_signature_drops(&lab) >= before + 3
    });
    assert_eq!(bad_signature_drops(&lab), before + 3, "exactly the three");
    assert!(
        metric(&lab, "broker_drops_total{reason=\"bad_signature\"}") >= 3,
        "on /metrics too"
    );
    let got = received(&listener, Duration::from_secs(2));
    assert!(got.is_empty(), "forged packets delivered: {got:?}");
    eprintln!("forged packets counted within {took:?}, none delivered");
    // Nor did they move the tunnel: the internet still reaches carol behind the NAT.
    wait_ping(&lab.inet6, &addr.to_string(), Duration::from_secs(3))
        .expect("the tunnel still points at carol's client");
    pings(lab.host("a1"), INET6_HOST, 2, 56).expect("carol's client still forwards");

    // The same packet signed with the tunnel's password gets through: the listener would
    // have seen the forged ones. (A genuine packet from elsewhere moves the tunnel there,
    // as roaming does; this is the end of the test.)
    let genuine = ayiya_packet(addr, &inner_udp(addr, PORT, b"genuine"), &password);
    send_from(lab.host("h1"), vec![genuine]);
    let got = received(&listener, Duration::from_secs(2));
    assert_eq!(
        got,
        vec![b"genuine".to_vec()],
        "the signed packet delivered"
    );
    assert_eq!(bad_signature_drops(&lab), before + 3);
    lab.stop_proc(c);
}
