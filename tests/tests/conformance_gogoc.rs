//! gogoc 1.2's own bytes against `broker run`: every recorded session is replayed from
//! the host and address it was recorded on, over UDP or TCP, and every answer is read as
//! gogoc reads it ([`conformance::gogoc`]). Only what gogoc computes from the server's
//! answers is recomputed (the DIGEST-MD5 response to the server's nonce). A v6udpv4
//! tunnel then carries gogoc's keepalive (an echo request to the offered keepalive
//! address) through the data plane and back.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv6Addr, TcpStream, UdpSocket},
    time::Duration,
};

use broker_tests::{
    io::uninterrupted,
    lab::{Lab, POP_V4},
};
use conformance::{
    gogoc,
    recording::{self, Line, Recording, Transport},
};
use etherparse::{Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

mod conformance;

/// In the order they were recorded: later ones meet the tunnels earlier ones made (the
/// anonymous TCP session gets 506 because plain-user's v6v4 tunnel holds its address).
const RECORDINGS: &[(&str, &str)] = &[
    (
        "gogoc-1.2-udp-anonymous",
        include_str!("../recordings/gogoc-1.2-udp-anonymous.txt"),
    ),
    (
        "gogoc-1.2-udp-digest-md5-nat",
        include_str!("../recordings/gogoc-1.2-udp-digest-md5-nat.txt"),
    ),
    (
        "gogoc-1.2-udp-plain",
        include_str!("../recordings/gogoc-1.2-udp-plain.txt"),
    ),
    (
        "gogoc-1.2-udp-digest-md5-router56",
        include_str!("../recordings/gogoc-1.2-udp-digest-md5-router56.txt"),
    ),
    (
        "gogoc-1.2-tcp-digest-md5",
        include_str!("../recordings/gogoc-1.2-tcp-digest-md5.txt"),
    ),
    (
        "gogoc-1.2-tcp-plain",
        include_str!("../recordings/gogoc-1.2-tcp-plain.txt"),
    ),
    (
        "gogoc-1.2-tcp-anonymous-506",
        include_str!("../recordings/gogoc-1.2-tcp-anonymous-506.txt"),
    ),
];

/// The recorded users (gogoc.conf's `userid` and `passwd`).
const USERS: &[(&str, &str)] = &[
    ("demo", "demo-password"),
    ("plain-user", "plain-password"),
    ("router-user", "router-password"),
];

fn recordings() -> Vec<Recording> {
    RECORDINGS
        .iter()
        .map(|(name, text)| recording::parse(name, text))
        .collect()
}

/// The answers the server gave when each recording was made.
fn recorded_answers(r: &Recording) -> Vec<&[u8]> {
    r.received().map(|b| &b[..]).collect()
}

/// The recorded answer to the tunnel request.
fn recorded_offer(r: &Recording) -> &[u8] {
    recorded_answers(r)
        .into_iter()
        .find(|a| a.starts_with(b"Content-length:"))
        .unwrap_or_else(|| panic!("{}: no answer to a tunnel request", r.name))
}

// ---- the model against the recordings (no root needed) ----

#[test]
fn the_recordings_parse_and_hold_the_whole_dialogue() {
    for r in recordings() {
        let sent: Vec<&Vec<u8>> = r.sent().collect();
        assert!(sent[0].starts_with(b"VERSION=2.0.2\r\n"), "{}", r.name);
        assert!(
            sent.iter().any(|m| m.starts_with(b"AUTHENTICATE ")),
            "{}",
            r.name
        );
        assert!(
            sent.iter().any(|m| m.starts_with(b"Content-length: ")),
            "{}",
            r.name
        );
        assert!(r.client.is_some(), "{}: no client address", r.name);
        if r.transport == Transport::Udp {
            for l in &r.lines {
                if let Line::Client { header, .. } | Line::Server { header, .. } = l {
                    let h = header.expect("UDP lines carry the header");
                    assert_eq!(h[0] >> 4, 0xf, "{}: the 0xF signature", r.name);
                }
            }
        }
    }
}

#[test]
fn every_offer_gogoc_accepted_passes_the_model() {
    for r in recordings() {
        let payload = gogoc::framed(recorded_offer(&r)).unwrap();
        if gogoc::status(payload) != 200 {
            continue;
        }
        let t = gogoc::offer(payload).unwrap_or_else(|e| panic!("{}: {e}", r.name));
        assert_eq!(gogoc::unusable(&t), Vec::<String>::new(), "{}", r.name);
        assert_eq!(t.action.as_deref(), Some("info"));
    }
}

#[test]
fn the_model_sees_what_crashed_gogoc() {
    let r = recordings().remove(0);
    let payload = std::str::from_utf8(gogoc::framed(recorded_offer(&r)).unwrap())
        .unwrap()
        .to_string();
    // The offer as the broker sent it before the DNS server was added.
    let start = payload.find("\t\t<dns_server>").unwrap();
    let end = payload.find("</dns_server>\r\n").unwrap() + "</dns_server>\r\n".len();
    let old = format!("{}{}", &payload[..start], &payload[end..]);
    let t = gogoc::offer(old.as_bytes()).unwrap();
    let problems = gogoc::unusable(&t);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("dns_server") && problems[0].contains("setenv"),
        "{problems:?}"
    );
    // An empty element does not help: gogoc needs the address.
    let empty = payload.replace(
        &payload[start..end],
        "\t\t<dns_server>\r\n\t\t</dns_server>\r\n",
    );
    assert_eq!(
        gogoc::unusable(&gogoc::offer(empty.as_bytes()).unwrap()).len(),
        1
    );
    // A keepalive interval without its address, an address without its type, a prefix
    // without its length: each is caught.
    let no_ka = payload.replace(
        &payload[payload.find("\t\t\t<address type=\"ipv6\">2001").unwrap()
            ..payload.find("\t\t</keepalive>").unwrap()],
        "",
    );
    assert!(gogoc::unusable(&gogoc::offer(no_ka.as_bytes()).unwrap())[0].contains("keepalive"));
    let untyped = payload.replacen("<address type=\"ipv4\">", "<address>", 1);
    assert!(gogoc::offer(untyped.as_bytes())
        .unwrap_err()
        .contains("without type"));
    let router = recordings()
        .into_iter()
        .find(|r| r.name.contains("router56"))
        .unwrap();
    let routed = std::str::from_utf8(gogoc::framed(recorded_offer(&router)).unwrap())
        .unwrap()
        .replace("<prefix length=\"56\">", "<prefix>");
    assert!(gogoc::unusable(&gogoc::offer(routed.as_bytes()).unwrap())[0].contains("length"));
}

/// A redirection (several PoPs, docs/MULTI-POP.md) as gogoc reads the answer to its
/// tunnel request: `tspReceive`'s framing, a status above 1000 (`tspIsRedirectStatus`), then
/// `tspExtractPayload` and its grammar, which fill the broker lists it connects to in turn.
/// gogoc 1.2 itself followed this answer by hand (docs/TSP.md).
#[test]
fn the_redirection_the_broker_writes_passes_the_model() {
    use broker_userspace::tsp::{status::frame, xml::redirect_message};
    let brokers: Vec<IpAddr> = vec![
        "198.18.2.2".parse().unwrap(),
        "2001:db8:ff02::1".parse().unwrap(),
    ];
    let m = frame(&redirect_message(&brokers));
    let payload = gogoc::framed(m.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert!(gogoc::status(payload) > 1000, "{m}");
    let t = gogoc::offer(payload).unwrap_or_else(|e| panic!("{e}"));
    let listed: Vec<String> = brokers.iter().map(ToString::to_string).collect();
    assert_eq!(t.broker_redirects, listed);
}

#[test]
fn every_kind_of_offer_the_broker_writes_passes_the_model() {
    use broker_userspace::tsp::xml::{offer_message, Offer, RequestedType};
    for kind in [
        RequestedType::V6V4,
        RequestedType::V6UdpV4,
        RequestedType::V4V6,
    ] {
        let v4v6 = kind == RequestedType::V4V6;
        for router in [None, Some("2001:db8:3000::/48"), Some("2001:db8:3100::/56")] {
            for keepalive in [true, false] {
                let keepalive_to: IpAddr = if v4v6 {
                    "203.0.113.129".parse().unwrap()
                } else {
                    "2001:db8:20:1::1".parse().unwrap()
                };
                let o = Offer {
                    tunnel_type: kind,
                    lifetime: 86400,
                    mtu: 1280,
                    server_ipv4: if v4v6 { "203.0.113.129" } else { "192.0.2.1" }
                        .parse()
                        .unwrap(),
                    server_ipv6: if v4v6 {
                        "2001:db8:ffff::1"
                    } else {
                        "2001:db8:20:1::1"
                    }
                    .parse()
                    .unwrap(),
                    client_ipv4: if v4v6 {
                        "203.0.113.130"
                    } else {
                        "198.51.100.150"
                    }
                    .parse()
                    .unwrap(),
                    client_ipv6: if v4v6 {
                        "2001:db8:fffe::6"
                    } else {
                        "2001:db8:20:1::2"
                    }
                    .parse()
                    .unwrap(),
                    dns_server: Ipv6Addr::UNSPECIFIED,
                    keepalive: keepalive.then_some((30, keepalive_to)),
                    router_prefix: router.map(|p| p.parse().unwrap()),
                };
                let what = format!("{kind:?} router {router:?} keepalive {keepalive}");
                let m = offer_message(&o);
                let payload = gogoc::framed(m.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(gogoc::status(payload), 200);
                let t = gogoc::offer(payload).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(gogoc::unusable(&t), Vec::<String>::new(), "{what}");
                assert_eq!(t.kind.as_deref(), Some(kind.as_str()), "{what}");
                if let Some(p) = router {
                    let (net, len) = p.split_once('/').unwrap();
                    assert_eq!(t.prefix_length.as_deref(), Some(len), "{what}");
                    let shown = gogoc::script_prefix(&t).unwrap();
                    let back: Ipv6Addr = format!("{shown}::").parse().unwrap();
                    assert_eq!(back, net.parse::<Ipv6Addr>().unwrap(), "{what}");
                }
            }
        }
    }
}

#[test]
fn the_model_reads_framing_and_grammar_as_gogoc_does() {
    assert_eq!(gogoc::status(b"200 Success\r\n"), 200);
    assert_eq!(gogoc::status(b"Success"), 0);
    assert!(gogoc::framed(b"Content-length: 13\r\n200 Success\r\n").is_ok());
    // Content-length must count the status line too.
    assert!(gogoc::framed(b"Content-length: 5\r\n200 Success\r\n").is_err());
    assert!(gogoc::framed(b"Content-length: 99\r\n200 Success\r\n").is_err());
    assert!(gogoc::framed(b"200 Success\r\n").is_err());
    assert_eq!(
        gogoc::capabilities(b"CAPABILITY TUNNEL=V6V4 AUTH=ANONYMOUS\r\n").unwrap(),
        ["TUNNEL=V6V4", "AUTH=ANONYMOUS"]
    );
    assert!(gogoc::capabilities(b"CAPABILITY TUNNEL=V6V4 AUTH=ANONYMOUS").is_err());
    // gogoc's parser: single quotes, an XML declaration, text between elements fail.
    let ok = "200 Success\r\n<tunnel action=\"info\" type=\"v6v4\"><client></client></tunnel>";
    assert!(gogoc::offer(ok.as_bytes()).is_ok());
    for bad in [
        "200 Success\r\n<tunnel action='info'></tunnel>",
        "200 Success\r\n<?xml version=\"1.0\"?><tunnel></tunnel>",
        "200 Success\r\n<tunnel>text</tunnel>x",
        "200 Success\r\n<tunnel\taction=\"info\"></tunnel>",
    ] {
        assert!(gogoc::offer(bad.as_bytes()).is_err(), "{bad}");
    }
    // The script's prefix: gogoc keeps the first characters of the expanded address.
    let t = gogoc::Tunnel {
        prefix: Some("2001:0db8:3000:0000:0000:0000:0000:0000".into()),
        prefix_length: Some("56".into()),
        ..Default::default()
    };
    assert_eq!(
        gogoc::script_prefix(&t).as_deref(),
        Some("2001:0db8:3000:0000")
    );
}

// ---- the replay against the real broker ----

/// The lab host a recording was made from, by the address the PoP saw.
fn host_of(client: IpAddr) -> &'static str {
    match client.to_string().as_str() {
        "198.51.100.150" => "t2",
        "198.51.100.160" => "t3",
        // The NAT's public address: the client is t1 behind it.
        "198.51.100.200" => "t1",
        other => panic!("no lab host records as {other}"),
    }
}

/// What the replay learnt: the parsed offer (on 200) and the status of the tunnel request.
#[derive(Debug)]
struct Replayed {
    status: i64,
    offer: Option<gogoc::Tunnel>,
    /// The UDP session's socket, which carries v6udpv4 data once accepted.
    udp: Option<UdpSocket>,
}

/// The replay's state between messages: what gogoc keeps.
#[derive(Default)]
struct Dialogue {
    /// The server's DIGEST-MD5 challenge line.
    challenge: Option<Vec<u8>>,
    /// The `rspauth` gogoc expects, once it sent its response.
    rspauth: Option<String>,
    /// The server's `rspauth` came (the `200` follows in a read of its own).
    rspauth_seen: bool,
    status: Option<i64>,
    offer: Option<gogoc::Tunnel>,
    /// The tunnel type and mechanism gogoc asked for (checked in CAPABILITY).
    mode: Option<String>,
    mech: Option<String>,
}

/// gogoc's message, with what it computes from the server's answers recomputed: the
/// DIGEST-MD5 response to this server's nonce, in gogoc's own layout (then the `rspauth`
/// gogoc will check is noted).
fn outgoing(r: &Recording, msg: &[u8], d: &mut Dialogue) -> Vec<u8> {
    let Some(challenge) = &d.challenge else {
        return msg.to_vec();
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = String::from_utf8_lossy(msg);
    let token = text.trim_end_matches(['\r', '\n', '\0']);
    let Ok(decoded) = b64.decode(token) else {
        return msg.to_vec();
    };
    let recorded = String::from_utf8(decoded).unwrap();
    if !recorded.contains("digest-uri=") {
        return msg.to_vec();
    }
    let field = |k: &str| {
        let v = recorded
            .split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))?;
        Some(v.trim_matches('"').to_string())
    };
    let user = field("username").unwrap();
    let password = USERS
        .iter()
        .find(|(u, _)| *u == user)
        .unwrap_or_else(|| panic!("{}: no password for {user}", r.name))
        .1;
    let server = field("digest-uri").unwrap();
    let server = server.strip_prefix("tsp/").unwrap();
    let (line, rspauth) = broker_userspace::tsp::sasl::digest_client_response(
        challenge,
        &user,
        password,
        server,
        &field("cnonce").unwrap(),
    )
    .unwrap();
    let ours = String::from_utf8(b64.decode(line.trim_end()).unwrap()).unwrap();
    // Everything but the nonce and the response is gogoc's, byte for byte.
    let same_layout = recorded
        .replace(&field("nonce").unwrap(), "N")
        .replace(&field("response").unwrap(), "R");
    let ours_field = |k: &str| {
        ours.split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    assert_eq!(
        ours.replace(&ours_field("nonce"), "N")
            .replace(&ours_field("response"), "R"),
        same_layout,
        "{}: gogoc's DIGEST-MD5 response layout",
        r.name
    );
    let suffix = &text[token.len()..];
    let mut out = b64.encode(&ours).into_bytes();
    out.extend_from_slice(suffix.as_bytes());
    d.rspauth = Some(rspauth);
    out
}

/// Checks one answer as gogoc reads it after sending `sent`.
fn check(r: &Recording, sent: &[u8], reply: &[u8], d: &mut Dialogue) {
    let name = r.name;
    let text = String::from_utf8_lossy(reply);
    if sent.starts_with(b"VERSION=") {
        let caps = gogoc::capabilities(reply).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(mech) = &d.mech {
            assert!(caps.contains(&format!("AUTH={mech}")), "{name}: {caps:?}");
        }
        if let Some(mode) = &d.mode {
            let any = ["TUNNEL=V6V4", "TUNNEL=V6UDPV4"];
            let ok = match mode.as_str() {
                "v6anyv4" => any.iter().any(|t| caps.contains(&t.to_string())),
                m => caps.contains(&format!("TUNNEL={}", m.to_uppercase())),
            };
            assert!(ok, "{name}: {mode} not in {caps:?}");
        }
    } else if sent.starts_with(b"AUTHENTICATE DIGEST-MD5") {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim_end())
            .unwrap_or_else(|_| panic!("{name}: the challenge is not base64: {text:?}"));
        let c = String::from_utf8(raw).unwrap();
        for want in ["realm=", "nonce=", "qop=auth", "algorithm=md5-sess"] {
            assert!(c.contains(want), "{name}: challenge {c:?} lacks {want}");
        }
        d.challenge = Some(reply.to_vec());
    } else if sent.starts_with(b"AUTHENTICATE PLAIN") {
        assert!(
            reply.is_empty(),
            "{name}: PLAIN is answered empty: {text:?}"
        );
    } else if sent.starts_with(b"AUTHENTICATE ") || sent.starts_with(b"\0") {
        assert_eq!(gogoc::status(reply), 200, "{name}: {text:?}");
    } else if sent.starts_with(b"Content-length: 35\r\n<tunnel action=\"accept\"") {
        assert!(reply.is_empty(), "{name}: the accept is answered empty");
    } else if sent.starts_with(b"Content-length:") {
        let payload = gogoc::framed(reply).unwrap_or_else(|e| panic!("{name}: {e}"));
        let status = gogoc::status(payload);
        d.status = Some(status);
        if status == 200 {
            let t = gogoc::offer(payload).unwrap_or_else(|e| panic!("{name}: {e}"));
            let problems = gogoc::unusable(&t);
            assert!(problems.is_empty(), "{name}: {problems:?}\n{text}");
            d.offer = Some(t);
        }
    } else if d.rspauth.is_some() && !d.rspauth_seen && !sent.is_empty() {
        // The answer to the DIGEST-MD5 response: `rspauth`, alone in its read, and the
        // one gogoc computes (it gives up otherwise).
        assert!(
            !text.contains("200"),
            "{name}: rspauth and 200 in one read: gogoc would hang: {text:?}"
        );
        let got = broker_userspace::tsp::sasl::parse_rspauth(reply)
            .unwrap_or_else(|| panic!("{name}: no rspauth in {text:?}"));
        assert_eq!(Some(got), d.rspauth, "{name}: rspauth");
        d.rspauth_seen = true;
    } else if d.rspauth_seen && d.status.is_none() && gogoc::status(reply) != 0 {
        // The `200` after rspauth: read separately on TCP, polled for on UDP.
        assert_eq!(gogoc::status(reply), 200, "{name}: {text:?}");
    } else if sent.is_empty() {
        // A poll: the `200` owed after rspauth (UDP).
        assert_eq!(gogoc::status(reply), 200, "{name}: {text:?}");
    } else {
        panic!("{name}: an answer to an unexpected message {sent:?}: {text:?}");
    }
}

/// What gogoc asked for, read off its request and its AUTHENTICATE line.
fn intent(r: &Recording) -> Dialogue {
    let mut d = Dialogue::default();
    for m in r.sent() {
        let t = String::from_utf8_lossy(m);
        if let Some(mech) = t.strip_prefix("AUTHENTICATE ") {
            d.mech = Some(mech.trim_end_matches(['\r', '\n', '\0']).to_string());
        }
        if let Some(i) = t.find("type=\"") {
            if t.contains("action=\"create\"") {
                let rest = &t[i + 6..];
                d.mode = Some(rest[..rest.find('"').unwrap()].to_string());
            }
        }
    }
    d
}

/// The tunnel request was refused: gogoc stops there (it logs the code and closes).
fn refused(d: &Dialogue) -> bool {
    d.status.is_some_and(|s| s != 200)
}

fn replay_udp(r: &Recording) -> Replayed {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect((POP_V4, 3653)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut d = intent(r);
    let mut last_sent = Vec::new();
    let mut last_header = [0u8; 8];
    let mut buf = vec![0u8; 65536];
    for l in &r.lines {
        match l {
            Line::Client { .. } if refused(&d) => break,
            Line::Client { header, bytes } => {
                let h = header.unwrap();
                last_sent = outgoing(r, bytes, &mut d);
                last_header = h;
                s.send(&[&h[..], &last_sent].concat()).unwrap();
            }
            Line::Server { .. } => {
                let n = uninterrupted(|| s.recv(&mut buf))
                    .unwrap_or_else(|e| panic!("{}: no answer to {last_sent:?}: {e}", r.name));
                assert!(n >= 8, "{}: a datagram without the header", r.name);
                assert_eq!(buf[..8], last_header, "{}: the header is echoed", r.name);
                check(r, &last_sent, &buf[8..n], &mut d);
            }
            _ => {}
        }
    }
    Replayed {
        status: d.status.expect("a tunnel request"),
        offer: d.offer,
        udp: Some(s),
    }
}

fn replay_tcp(r: &Recording) -> Replayed {
    let mut s = TcpStream::connect((POP_V4, 3653)).unwrap();
    let mut d = intent(r);
    let mut last_sent = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut lines = r.lines.iter().peekable();
    while let Some(l) = lines.next() {
        match l {
            Line::Client { .. } if refused(&d) => break,
            Line::Client { bytes, .. } => {
                last_sent = outgoing(r, bytes, &mut d);
                s.write_all(&last_sent).unwrap();
                if !matches!(lines.peek(), Some(Line::Server { .. })) {
                    // gogoc does not read here: anything the server wrote would be taken
                    // for the answer to its next message.
                    s.set_read_timeout(Some(Duration::from_millis(400)))
                        .unwrap();
                    match uninterrupted(|| s.read(&mut buf)) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        other => panic!(
                            "{}: the server wrote after {:?}, where gogoc does not read: {other:?} {:?}",
                            r.name,
                            String::from_utf8_lossy(&last_sent),
                            String::from_utf8_lossy(&buf[..*other.as_ref().unwrap_or(&0)])
                        ),
                    }
                }
            }
            Line::Server { .. } => {
                // One `recv` per answer, as gogoc reads.
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let n = uninterrupted(|| s.read(&mut buf))
                    .unwrap_or_else(|e| panic!("{}: no answer to {last_sent:?}: {e}", r.name));
                assert!(n > 0, "{}: closed after {last_sent:?}", r.name);
                check(r, &last_sent, &buf[..n], &mut d);
            }
            _ => {}
        }
    }
    Replayed {
        status: d.status.expect("a tunnel request"),
        offer: d.offer,
        udp: None,
    }
}

/// gogoc's keepalive through a v6udpv4 tunnel: an echo request from the offered address
/// to the offered keepalive address, on the session's socket; the data plane answers.
fn keepalive(r: &Recording, s: &UdpSocket, t: &gogoc::Tunnel) {
    let src: Ipv6Addr = t.client_ipv6.as_deref().unwrap().parse().unwrap();
    let dst: Ipv6Addr = t.keepalive_address.as_deref().unwrap().parse().unwrap();
    let mut packet = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .icmpv6_echo_request(0x6060, 1)
        .write(&mut packet, b"gogoc keepalive")
        .unwrap();
    s.send(&packet).unwrap();
    let mut buf = vec![0u8; 2048];
    let n = uninterrupted(|| s.recv(&mut buf))
        .unwrap_or_else(|e| panic!("{}: no keepalive reply: {e}", r.name));
    let p =
        SlicedPacket::from_ip(&buf[..n]).unwrap_or_else(|e| panic!("{}: not IPv6: {e:?}", r.name));
    let Some(NetSlice::Ipv6(ip)) = &p.net else {
        panic!("{}: not IPv6", r.name)
    };
    assert_eq!(ip.header().source_addr(), dst, "{}", r.name);
    assert_eq!(ip.header().destination_addr(), src, "{}", r.name);
    let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
        panic!("{}: not ICMPv6", r.name)
    };
    assert!(
        matches!(icmp.icmp_type(), Icmpv6Type::EchoReply(e) if e.id == 0x6060 && e.seq == 1),
        "{}: {:?}",
        r.name,
        icmp.icmp_type()
    );
}

#[test]
fn gogoc_sessions_replayed_from_their_hosts_get_what_gogoc_reads() {
    broker_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("cg{}", std::process::id());
    let mut lab = Lab::start(&prefix, 1, dir.path(), "").expect("starting the lab");
    lab.add_tsp_hosts().expect("adding the TSP hosts");
    for (user, password) in USERS {
        lab.cli(&["user", "add", user, "--password", password])
            .expect("creating the user");
    }
    for r in recordings() {
        let recorded = gogoc::status(gogoc::framed(recorded_offer(&r)).unwrap());
        let host = lab.host(host_of(r.client.unwrap()));
        let rec = r.clone();
        let got = host.within(move || match rec.transport {
            Transport::Udp => {
                let got = replay_udp(&rec);
                if let (Some(s), Some(t)) = (&got.udp, &got.offer) {
                    if t.kind.as_deref() == Some("v6udpv4") {
                        keepalive(&rec, s, t);
                    }
                }
                got
            }
            Transport::Tcp => replay_tcp(&rec),
            Transport::Tic => unreachable!(),
        });
        assert_eq!(
            got.status, recorded,
            "{}: the status gogoc got then",
            r.name
        );
        let Some(t) = got.offer else { continue };
        let want_kind = if r.transport == Transport::Udp {
            "v6udpv4"
        } else {
            "v6v4"
        };
        assert_eq!(t.kind.as_deref(), Some(want_kind), "{}", r.name);
        if r.name.contains("router56") {
            assert_eq!(t.prefix_length.as_deref(), Some("56"), "{}", r.name);
            let p = gogoc::script_prefix(&t).unwrap();
            assert!(
                format!("{p}::").parse::<Ipv6Addr>().is_ok(),
                "{}: TSP_PREFIX {p:?} makes no address",
                r.name
            );
        }
    }
    // gogoc over TCP from behind the NAT (its UDP blocked): v6anyv4 means v6udpv4 there,
    // which TCP cannot carry: 303, read as gogoc reads a refusal.
    let r = recordings()
        .into_iter()
        .find(|r| r.name == "gogoc-1.2-tcp-digest-md5")
        .unwrap();
    let got = lab.host("t1").within(move || replay_tcp(&r));
    assert_eq!((got.status, got.offer.is_none()), (303, true));
    // Both refusals (the recorded 506 and this 303) are counted as such, once, though
    // gogoc closed the connection after each; nothing counts as merely closed.
    let series =
        |o: &str| format!("broker_tsp_sessions_total{{transport=\"tcp\",outcome=\"{o}\"}}");
    let counted = (0..30).any(|_| {
        let n = lab.metric(&series("refused")).unwrap();
        n >= 2 || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(counted, "{}", lab.metrics().unwrap());
    assert_eq!(lab.metric(&series("refused")).unwrap(), 2);
    assert_eq!(lab.metric(&series("closed")).unwrap(), 0);
    let log = lab.broker_log();
    for code in ["code=506", "code=303"] {
        assert!(
            log.lines()
                .any(|l| l.contains("TSP tunnel refused") && l.contains(code)),
            "{code} not logged as a refusal:\n{log}"
        );
    }
}
