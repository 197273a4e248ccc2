//! The PoP against a hostile internet, in the lab with the real `broker run`: each test is
//! an attack that worked before its defence (docs/SECURITY.md), bounded in count and time.
use std::{
    io::{Read, Write},
    net::{TcpStream, UdpSocket},
    time::Duration,
};

use broker_tests::{
    io::uninterrupted,
    lab::{Lab, API_PORT, POP_V4},
};

fn lab(tag: &str, dir: &tempfile::TempDir) -> Lab {
    broker_tests::require_root();
    let prefix = format!("bh{}{tag}", std::process::id());
    let mut lab = Lab::start(&prefix, 2, dir.path(), "").expect("starting the lab");
    lab.add_tsp_hosts().expect("adding the TSP hosts");
    lab
}

/// One HTTP GET of the API from inside `ns`; the status line.
fn get(ns: &broker_tests::netns::NetNs, path: &'static str) -> String {
    ns.within(move || {
        let mut s = TcpStream::connect((POP_V4, API_PORT)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: pop\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines().next().unwrap_or_default().to_string()
    })
}

#[test]
fn half_sent_requests_from_one_host_do_not_take_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("slow", &dir);
    // 200 connections from one address, each with half a request: before, every one was
    // held without end, until the process ran out of descriptors and every service with it.
    let attacker = lab.clients[0].ns.spawn_within(|| {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..200 {
            let Ok(mut s) = TcpStream::connect((POP_V4, API_PORT)) else {
                refused += 1;
                continue;
            };
            let _ = s.write_all(b"GET /api/v1/tunnels HTTP/1.1\r\nHost: x\r\n");
            held.push(s);
        }
        // The ones beyond the per-source cap are closed at once: a read sees the end.
        let mut closed = 0;
        for s in &mut held {
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut b = [0u8; 64];
            let open = matches!(
                uninterrupted(|| s.read(&mut b)),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            );
            if !open {
                closed += 1;
            }
        }
        (held, refused, closed)
    });
    let (held, refused, closed) = attacker.join().unwrap();
    assert!(
        refused + closed >= 200 - 32,
        "only 32 of one address's connections are kept: {refused} refused, {closed} closed"
    );
    // Meanwhile another host is served.
    assert!(
        get(&lab.clients[1].ns, "/healthz").contains("200"),
        "the API answers others"
    );
    assert!(
        lab.metric("broker_defended_total{service=\"api\",reason=\"connections_per_source\"}")
            .unwrap()
            >= 100
    );
    drop(held);
}

#[test]
fn tsp_over_udp_is_no_amplifier() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("amp", &dir);
    let (sent, got, replies) = lab.host("t2").within(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect((POP_V4, 3653)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let ask = |s: &UdpSocket, seq: u32, msg: &[u8]| {
            let mut d = (seq | 0xf000_0000).to_be_bytes().to_vec();
            d.extend_from_slice(&[0, 0, 0, 1]);
            d.extend_from_slice(msg);
            s.send(&d).unwrap();
            d.len()
        };
        let mut sent = 0;
        sent += ask(&s, 1, b"VERSION=2.0.2\r\n");
        sent += ask(&s, 2, b"AUTHENTICATE ANONYMOUS\r\n");
        let request = "Content-length: 219\r\n<tunnel action=\"create\" type=\"v6udpv4\" proxy=\"no\">\r\n <client>\r\n  <address type=\"ipv4\">198.51.100.150</address>\r\n  <keepalive interval=\"30\">\r\n    <address type=\"ipv6\">::</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n";
        sent += ask(&s, 3, request.as_bytes());
        // The offer (about 500 bytes) is cached for retransmissions. A forger (or a
        // reflector's victim's spoofer) repeats the request, and before this each
        // repetition, or even a bare 8-byte header, got the whole offer again.
        for _ in 0..20 {
            sent += ask(&s, 3, request.as_bytes());
            sent += ask(&s, 3, b"");
        }
        let mut got = 0;
        let mut replies = 0;
        let mut buf = [0u8; 4096];
        while let Ok(n) = uninterrupted(|| s.recv(&mut buf)) {
            got += n;
            replies += 1;
        }
        (sent, got, replies)
    });
    // VERSION, AUTHENTICATE and the request are answered; the request's offer is resent
    // at most three times; a bare header gets at most an empty answer.
    assert!(replies <= 3 + 3 + 20, "{replies} replies");
    assert!(
        got <= sent,
        "{got} bytes answered to {sent} sent: the server amplifies"
    );
}

#[test]
fn one_source_gets_a_bounded_number_of_tsp_answers() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("bud", &dir);
    // A spoofer sends as its victim: every datagram used to be answered.
    let replies = lab.host("t2").within(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect((POP_V4, 3653)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        for seq in 0..200u32 {
            let mut d = (seq | 0xf000_0000).to_be_bytes().to_vec();
            d.extend_from_slice(&[0, 0, 0, 1]);
            d.extend_from_slice(b"VERSION=2.0.2\r\n");
            s.send(&d).unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut replies = 0;
        while uninterrupted(|| s.recv(&mut buf)).is_ok() {
            replies += 1;
        }
        replies
    });
    // A burst of 16 for a negotiation, then two a second.
    assert!(
        (16..=24).contains(&replies),
        "{replies} replies to 200 datagrams"
    );
    assert!(
        lab.metric("broker_defended_total{service=\"tsp\",reason=\"udp_reply_budget\"}")
            .unwrap()
            >= 170
    );
}

/// The lab with its TSP tweaked: `extra` lines added to the `tsp:` section.
fn lab_with_tsp(tag: &str, dir: &tempfile::TempDir, extra: &str) -> Lab {
    broker_tests::require_root();
    let prefix = format!("bh{}{tag}", std::process::id());
    let mut lab = Lab::create(&prefix, 1, dir.path()).expect("the lab");
    let config = lab.config_yaml(&prefix);
    let anchor = "tsp:\n  auth: [digest-md5, plain, anonymous]\n";
    assert!(config.contains(anchor));
    let config = config.replace(anchor, &format!("{anchor}{extra}"));
    lab.start_broker(&prefix, &config).expect("broker run");
    lab.add_tsp_hosts().expect("adding the TSP hosts");
    lab
}

/// A UDP datagram from `src` (forged) to the PoP's TSP port, as IPv4 for a raw socket.
fn forged(src: std::net::Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), POP_V4.octets(), 64)
        .udp(port, 3653)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn anonymous_tunnels(lab: &Lab) -> usize {
    let out = lab.cli(&["tunnel", "list", "--json"]).expect("tunnel list");
    let ts: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    ts.iter()
        .filter(|t| t["origin"] == "tsp" && t["owner"].is_null())
        .count()
}

#[test]
fn forged_anonymous_sessions_cannot_drain_the_pools() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab_with_tsp(
        "forge",
        &dir,
        "  negotiation_timeout_secs: 2\n  anonymous_unproven_max: 8\n",
    );
    // 60 sources the forger does not own, each a whole anonymous negotiation sent blind
    // (nothing of TSP's answers is needed to go on). Before, each got a tunnel, until the
    // pools or the maps were full.
    lab.host("t2").within(|| {
        let raw = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .unwrap();
        let to: socket2::SockAddr =
            std::net::SocketAddr::V4(std::net::SocketAddrV4::new(POP_V4, 0)).into();
        for i in 0..60u32 {
            let src = std::net::Ipv4Addr::new(198, 18, (i / 200) as u8, (i % 200) as u8 + 1);
            let request = format!(
                "<tunnel action=\"create\" type=\"v6udpv4\" proxy=\"no\">\r\n <client>\r\n  <address type=\"ipv4\">{src}</address>\r\n  <keepalive interval=\"30\">\r\n    <address type=\"ipv6\">::</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n"
            );
            let messages: [Vec<u8>; 4] = [
                b"VERSION=2.0.2\r\n".to_vec(),
                b"AUTHENTICATE ANONYMOUS\r\n".to_vec(),
                format!("Content-length: {}\r\n{request}", request.len()).into_bytes(),
                b"Content-length: 35\r\n<tunnel action=\"accept\"></tunnel>\r\n".to_vec(),
            ];
            for (seq, m) in messages.iter().enumerate() {
                let mut d = (seq as u32 | 0xf000_0000).to_be_bytes().to_vec();
                d.extend_from_slice(&[0, 0, 0, 1]);
                d.extend_from_slice(m);
                raw.send_to(&forged(src, 40000, &d), &to).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let held = anonymous_tunnels(&lab);
    assert!(
        (1..=8).contains(&held),
        "{held} anonymous tunnels for forged sources (at most 8 wait for a client)"
    );
    // No client ever speaks from those addresses: gone after the deadline.
    let mut left = held;
    for _ in 0..100 {
        left = anonymous_tunnels(&lab);
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(left, 0, "unproven tunnels removed");
    // A real anonymous client gets its tunnel and keeps it.
    let c = lab
        .start_tsp_client("t3", &POP_V4.to_string(), &[])
        .unwrap();
    lab.wait_tsp_up("t3", c, "-6").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(anonymous_tunnels(&lab), 1, "a heard client's tunnel stays");
}

#[test]
fn an_established_tsp_connection_is_let_go_when_its_tunnel_sleeps() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("held", &dir);
    // An anonymous v6v4 negotiation over TCP that then holds its connection and never
    // sends a keepalive through the tunnel. Before, such a connection was held for ever.
    let eof = lab.host("t2").within(|| {
        let mut s = TcpStream::connect((POP_V4, 3653)).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let request = "<tunnel action=\"create\" type=\"v6v4\" proxy=\"no\">\r\n <client>\r\n  <address type=\"ipv4\">0.0.0.0</address>\r\n  <keepalive interval=\"5\">\r\n    <address type=\"ipv6\">::</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n";
        let accept = "<tunnel action=\"accept\"></tunnel>\r\n";
        let mut answers = String::new();
        for m in [
            "VERSION=2.0.2\r\n".to_string(),
            "AUTHENTICATE ANONYMOUS\r\n".to_string(),
            format!("Content-length: {}\r\n{request}", request.len()),
            format!("Content-length: {}\r\n{accept}", accept.len()),
        ] {
            s.write_all(m.as_bytes()).unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(n) = uninterrupted(|| s.read(&mut buf)) {
                answers.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        assert!(answers.contains("<tunnel action=\"info\""), "an offer: {answers}");
        // Five keepalive intervals of 5 s put the tunnel to sleep; one more lets go.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 64];
        uninterrupted(|| s.read(&mut buf))
    });
    assert!(matches!(eof, Ok(0)), "the connection was let go: {eof:?}");
    assert_eq!(
        lab.metric("broker_defended_total{service=\"tsp\",reason=\"held_tunnel_asleep\"}")
            .unwrap(),
        1
    );
}
