//! End to end in the lab: real namespaces and veths, the real `broker` binary on the PoP
//! and as the clients' proto-41 endpoints, the kernel's own IPv6 stacks at both ends.
use std::{
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use broker_tests::{
    io::uninterrupted,
    lab::{Lab, INET6_HOST, POP_V4},
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A lab with `clients` tunnels, the broker and every client running. `tag` keeps names
/// unique between the tests of this binary.
fn lab(tag: &str, clients: u32, dir: &tempfile::TempDir) -> Lab {
    broker_tests::require_root();
    let prefix = format!("bt{}{tag}", std::process::id());
    Lab::start(&prefix, clients, dir.path(), "").expect("starting the lab")
}

fn stats(lab: &Lab) -> Value {
    serde_json::from_str(&lab.stats(true).expect("broker stats")).expect("stats JSON")
}

fn counter(v: &Value, section: &str, name: &str) -> u64 {
    v[section][name]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {section}.{name} in {v}"))
}

fn tunnel(v: &Value, id: u32, field: &str) -> u64 {
    v["tunnels"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["id"] == id))
        .and_then(|t| t[field].as_u64())
        .unwrap_or_else(|| panic!("no tunnel {id} field {field} in {v}"))
}

#[test]
fn two_tunnels_ping_the_internet_host_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("ping", 2, &dir);
    std::thread::scope(|s| {
        let pings: Vec<_> = (1..=2)
            .map(|i| {
                let lab = &lab;
                s.spawn(move || lab.ping(i, INET6_HOST, 10, "0.1"))
            })
            .collect();
        for (i, p) in pings.into_iter().enumerate() {
            let out = p
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("client {}: {e:#}", i + 1));
            assert!(out.contains("10 received"), "client {}: {out}", i + 1);
        }
    });
    // Keepalive-style echo to each tunnel's PoP address, answered in XDP.
    for c in &lab.clients {
        let out = lab.ping(c.index, c.pop_address(), 3, "0.1").unwrap();
        assert!(out.contains("3 received"), "{out}");
    }
    // Client to client through the PoP.
    let to = lab.clients[1].address();
    assert!(lab.ping(1, to, 3, "0.1").unwrap().contains("3 received"));
}

#[test]
fn counters_match_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("count", 2, &dir);
    let before = stats(&lab);
    let out = lab.ping(1, INET6_HOST, 20, "0.05").unwrap();
    assert!(out.contains("20 received"), "{out}");
    let after = stats(&lab);
    let d = |f: &dyn Fn(&Value) -> u64| f(&after) - f(&before);
    // ping -6 sends 56 data bytes: 40 IPv6 + 8 ICMPv6 + 56 = 104 bytes per packet.
    assert_eq!(d(&|v| tunnel(v, 1, "from_client_packets")), 20);
    assert_eq!(d(&|v| tunnel(v, 1, "from_client_bytes")), 20 * 104);
    assert_eq!(d(&|v| tunnel(v, 1, "to_client_packets")), 20);
    assert_eq!(d(&|v| tunnel(v, 1, "to_client_bytes")), 20 * 104);
    assert_eq!(d(&|v| tunnel(v, 1, "drop_packets")), 0);
    assert_eq!(d(&|v| tunnel(v, 2, "from_client_packets")), 0);
    assert_eq!(d(&|v| counter(v, "events", "decap")), 20);
    assert_eq!(d(&|v| counter(v, "events", "encap")), 20);
    assert_eq!(d(&|v| counter(v, "actions", "drop")), 0);
}

#[test]
fn a_20_mb_tcp_transfer_arrives_intact() {
    const LEN: usize = 20 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("tcp", 1, &dir);
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = lab.inet6.spawn_within(move || {
        let l = TcpListener::bind(SocketAddrV6::new(INET6_HOST, 5001, 0, 0)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = uninterrupted(|| l.accept()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut h = Sha256::new();
        let mut n = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let k = uninterrupted(|| s.read(&mut buf)).unwrap();
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k;
        }
        (n, h.finalize().to_vec())
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let sent = lab.clients[0].ns.within(move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::V6(SocketAddrV6::new(INET6_HOST, 5001, 0, 0)),
            Duration::from_secs(10),
        )
        .unwrap();
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut h = Sha256::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunk = vec![0u8; 64 * 1024];
        let mut left = LEN;
        while left > 0 {
            for b in chunk.iter_mut() {
                // xorshift: incompressible, reproducible data.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let k = left.min(chunk.len());
            s.write_all(&chunk[..k]).unwrap();
            h.update(&chunk[..k]);
            left -= k;
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        h.finalize().to_vec()
    });
    let (received, digest) = server.join().unwrap();
    assert_eq!(received, LEN);
    assert_eq!(
        digest, sent,
        "SHA-256 of what arrived differs from what was sent"
    );
}

#[test]
fn a_spoofed_inner_source_never_arrives_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("spoof", 1, &dir);
    let client = &lab.clients[0];
    let (client_v4, client_v6) = (client.v4, client.address());
    let before = stats(&lab);

    let (ready_tx, ready_rx) = mpsc::channel();
    let receiver = lab.inet6.spawn_within(move || {
        let s = UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 6000, 0, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        // Until the legitimate packet sent after the spoofed one arrives: both take the same
        // path in order, so the spoofed one would have come first.
        while let Ok((n, from)) = uninterrupted(|| s.recv_from(&mut buf)) {
            got.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
            if &buf[..n] == b"legit" {
                break;
            }
        }
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    client.ns.within(move || {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(41)),
        )
        .unwrap();
        sock.bind(&SocketAddr::V4(SocketAddrV4::new(client_v4, 0)).into())
            .unwrap();
        let to: socket2::SockAddr = SocketAddr::V4(SocketAddrV4::new(POP_V4, 0)).into();
        let spoofed: Ipv6Addr = "2001:db8:bad::1".parse().unwrap();
        for (src, payload) in [(spoofed, &b"spoofed"[..]), (client_v6, &b"legit"[..])] {
            let mut p = Vec::new();
            etherparse::PacketBuilder::ipv6(src.octets(), INET6_HOST.octets(), 64)
                .udp(6001, 6000)
                .write(&mut p, payload)
                .unwrap();
            sock.send_to(&p, &to).unwrap();
        }
    });
    let got = receiver.join().unwrap();
    assert!(
        got.iter().any(|(p, _)| p == "legit"),
        "the legitimate packet did not arrive: {got:?}"
    );
    assert!(
        !got.iter().any(|(p, _)| p == "spoofed"),
        "the spoofed packet arrived: {got:?}"
    );

    let after = stats(&lab);
    let d = |f: &dyn Fn(&Value) -> u64| f(&after) - f(&before);
    assert_eq!(d(&|v| counter(v, "drops", "spoofed_source")), 1);
    assert_eq!(d(&|v| tunnel(v, 1, "drop_packets")), 1);
    assert_eq!(d(&|v| tunnel(v, 1, "from_client_packets")), 1);
}
