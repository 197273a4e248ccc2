use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::tsp::xml::{request_message, ACCEPT};

const NAT_PEER: &str = "198.51.100.7:40000";
const DIRECT_PEER: &str = "192.0.2.10:40000";
/// gogoc's create request (PROTOCOLS.md): claims 192.0.2.10.
const GOGOC_REQUEST: &str = "Content-length: 215\r\n<tunnel action=\"create\" type=\"v6anyv4\" proxy=\"no\">\r\n <client>\r\n  <address type=\"ipv4\">192.0.2.10</address>\r\n  <keepalive interval=\"30\">\r\n    <address type=\"ipv6\">::</address>\r\n  </keepalive>\r\n </client>\r\n</tunnel>\r\n";

fn policy() -> Policy {
    Policy {
        auth: vec![TspAuth::DigestMd5, TspAuth::Plain, TspAuth::Anonymous],
        tunnel_types: vec![
            TspTunnelType::V6V4,
            TspTunnelType::V6UdpV4,
            TspTunnelType::V4V6,
        ],
        realm: "broker".into(),
        keepalive_secs: 30,
    }
}

fn session(t: Transport, peer: &str) -> Session {
    Session::new(t, peer.parse().unwrap(), policy())
}

/// What the store keeps of alice's password `pw`.
fn kept(pw: &str) -> crate::secret::UserSecrets {
    crate::secret::UserSecrets::derive("alice", pw, "broker")
}

/// Answers the session's question about alice's password as the server does (PLAIN's
/// argon2 check included).
fn check(s: &mut Session, pw: &str) -> Step {
    match s.password(Some(&kept(pw))) {
        Step::VerifyPlain { password, hash } => {
            s.plain_checked(crate::secret::verify_password(&password, &hash))
        }
        other => other,
    }
}

fn text(step: Step) -> String {
    match step {
        Step::Reply(b) | Step::Close(b) | Step::Refused { reply: b, .. } => {
            String::from_utf8(b).unwrap()
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// A session through the version exchange and anonymous authentication.
fn anonymous(t: Transport, peer: &str) -> Session {
    let mut s = session(t, peer);
    text(s.input(b"VERSION=2.0.2\r\n"));
    assert_eq!(
        text(s.input(b"AUTHENTICATE ANONYMOUS\r\n\0")),
        "200 Success\r\n"
    );
    s
}

fn offer() -> Offer {
    Offer {
        tunnel_type: RequestedType::V6V4,
        lifetime: 86400,
        mtu: 1280,
        server_ipv4: "192.0.2.1".parse().unwrap(),
        server_ipv6: "2001:db8:20::1".parse().unwrap(),
        client_ipv4: "192.0.2.10".parse().unwrap(),
        client_ipv6: "2001:db8:20::2".parse().unwrap(),
        dns_server: std::net::Ipv6Addr::UNSPECIFIED,
        keepalive: Some((30, "2001:db8:20::1".parse().unwrap())),
        router_prefix: None,
    }
}

#[test]
fn version_and_capability() {
    let mut s = session(Transport::Udp, DIRECT_PEER);
    assert_eq!(
        text(s.input(b"VERSION=2.0.2\r\n")),
        "CAPABILITY TUNNEL=V6V4 TUNNEL=V6UDPV4 TUNNEL=V4V6 AUTH=DIGEST-MD5 AUTH=PLAIN AUTH=ANONYMOUS\r\n"
    );
    // Only what the configuration enables is listed.
    let mut s = Session::new(
        Transport::Tcp,
        DIRECT_PEER.parse().unwrap(),
        Policy {
            auth: vec![TspAuth::DigestMd5],
            tunnel_types: vec![TspTunnelType::V6V4],
            ..policy()
        },
    );
    assert_eq!(
        text(s.input(b"VERSION=2.0.0\r\n")),
        "CAPABILITY TUNNEL=V6V4 AUTH=DIGEST-MD5\r\n"
    );
    for v in ["VERSION=1.0.1\r\n", "VERSION=3.0.0\r\n", "HELLO\r\n"] {
        let mut s = session(Transport::Tcp, DIRECT_PEER);
        assert_eq!(
            s.input(v.as_bytes()),
            Step::Close(b"302 Unsupported client version\r\n".to_vec()),
            "{v}"
        );
    }
}

#[test]
fn anonymous_v6anyv4_resolves_by_nat() {
    // Not behind a NAT: proto-41 to the address it claims, which is its source.
    let mut s = anonymous(Transport::Udp, DIRECT_PEER);
    let Step::NeedTunnel(ask) = s.input(GOGOC_REQUEST.as_bytes()) else {
        panic!("no tunnel asked for")
    };
    assert_eq!(
        ask,
        TunnelAsk {
            user: None,
            kind: Kind::Proto41,
            endpoint: Endpoint::Ipv4(Ipv4Addr::new(192, 0, 2, 10)),
            claimed_ipv4: Some(Ipv4Addr::new(192, 0, 2, 10)),
            router: None,
            keepalive: 30,
            over_udp: true,
        }
    );
    // Behind a NAT: v6udpv4 to the address and port its packets come from.
    let mut s = anonymous(Transport::Udp, NAT_PEER);
    let Step::NeedTunnel(ask) = s.input(GOGOC_REQUEST.as_bytes()) else {
        panic!("no tunnel asked for")
    };
    assert_eq!(ask.kind, Kind::V6Udp4);
    assert_eq!(
        ask.endpoint,
        Endpoint::Udp4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40000))
    );
    // Behind a NAT over TCP: no v6udpv4 on a TCP session.
    let mut s = anonymous(Transport::Tcp, NAT_PEER);
    assert_eq!(
        s.input(GOGOC_REQUEST.as_bytes()),
        Step::Refused {
            reply: Status::UnsupportedTunnelMode.framed().into_bytes(),
            status: Status::UnsupportedTunnelMode,
        }
    );
    // gogoc closes after the 303: the session counts as refused, not as closed.
    assert_eq!(s.outcome("closed"), "refused");
    assert_eq!(s.outcome("timeout"), "refused");
    assert_eq!(s.outcome("invalid"), "invalid");
}

#[test]
fn a_refused_tunnel_is_the_sessions_outcome_until_an_offer() {
    let mut s = anonymous(Transport::Udp, DIRECT_PEER);
    assert_eq!(s.outcome("closed"), "closed");
    assert!(matches!(
        s.input(GOGOC_REQUEST.as_bytes()),
        Step::NeedTunnel(_)
    ));
    // The broker could not make it (a 506 from the provider).
    assert_eq!(
        s.offered(Err(Status::Ipv4AlreadyUsed)),
        Step::Refused {
            reply: Status::Ipv4AlreadyUsed.framed().into_bytes(),
            status: Status::Ipv4AlreadyUsed,
        }
    );
    assert_eq!(s.outcome("timeout"), "refused");
    // Asked again and offered: no longer a refusal.
    assert!(matches!(
        s.input(GOGOC_REQUEST.as_bytes()),
        Step::NeedTunnel(_)
    ));
    assert!(matches!(s.offered(Ok((7, offer()))), Step::Reply(_)));
    assert_eq!(s.outcome("closed"), "closed");
}

#[test]
fn offer_accept_establish() {
    let mut s = anonymous(Transport::Udp, DIRECT_PEER);
    assert!(matches!(
        s.input(GOGOC_REQUEST.as_bytes()),
        Step::NeedTunnel(_)
    ));
    // A retransmission while the tunnel is being made.
    assert_eq!(
        text(s.input(GOGOC_REQUEST.as_bytes())),
        Status::RequestInProgress.line()
    );
    assert_eq!(
        text(s.offered(Ok((7, offer())))),
        xml::offer_message(&offer())
    );
    assert_eq!(
        s.input(ACCEPT.as_bytes()),
        Step::Established {
            tunnel: 7,
            reply: Vec::new()
        }
    );
    assert!(s.established());
    // Framed keepalives afterwards are echoed with an empty payload.
    assert_eq!(s.input(b"\r\n"), Step::Reply(Vec::new()));
    assert_eq!(s.input(b"ping"), Step::Reply(Vec::new()));
    // A client starting over on the same socket.
    assert!(text(s.input(b"VERSION=2.0.2\r\n")).starts_with("CAPABILITY "));
    assert!(!s.established());
}

#[test]
fn a_refused_tunnel_leaves_the_session_ready_to_ask_again() {
    let mut s = anonymous(Transport::Udp, DIRECT_PEER);
    s.input(GOGOC_REQUEST.as_bytes());
    assert_eq!(
        text(s.offered(Err(Status::Ipv4AlreadyUsed))),
        "Content-length: 31\r\n506 IPv4 address already used\r\n"
    );
    assert!(matches!(
        s.input(GOGOC_REQUEST.as_bytes()),
        Step::NeedTunnel(_)
    ));
}

#[test]
fn plain_over_tcp_is_silent_then_checked() {
    let mut s = session(Transport::Tcp, DIRECT_PEER);
    s.input(b"VERSION=2.0.2\r\n");
    assert_eq!(s.input(b"AUTHENTICATE PLAIN\r\n\0"), Step::Silent);
    assert_eq!(
        s.input(b"\0alice\0secret\r\n"),
        Step::NeedPassword {
            user: "alice".into()
        }
    );
    assert_eq!(text(check(&mut s, "secret")), "200 Success\r\n");
    assert!(s.failure().is_none());
    // Router mode for a user: the length asked for.
    let req = request_message(
        RequestedType::V6V4,
        "192.0.2.10".parse().unwrap(),
        Some((30, "::".parse().unwrap())),
        Some(56),
    );
    let Step::NeedTunnel(ask) = s.input(req.as_bytes()) else {
        panic!()
    };
    assert_eq!((ask.user.as_deref(), ask.router), (Some("alice"), Some(56)));
}

#[test]
fn plain_over_udp_answers_the_mechanism_and_refuses_wrong_passwords() {
    let mut s = session(Transport::Udp, DIRECT_PEER);
    s.input(b"VERSION=2.0.2\r\n");
    assert_eq!(
        s.input(b"AUTHENTICATE PLAIN\r\n\0"),
        Step::Reply(Vec::new())
    );
    s.input(b"\0alice\0wrong\r\n");
    assert_eq!(
        check(&mut s, "secret"),
        Step::Close(b"300 Authentication failed\r\n".to_vec())
    );
    assert_eq!(s.failure(), Some(Outcome::AuthFailed));
    // No such user.
    let mut s = session(Transport::Udp, DIRECT_PEER);
    s.input(b"VERSION=2.0.2\r\n");
    s.input(b"AUTHENTICATE PLAIN\r\n\0");
    s.input(b"\0mallory\0x\r\n");
    assert_eq!(
        s.password(None),
        Step::Close(b"300 Authentication failed\r\n".to_vec())
    );
}

#[test]
fn digest_md5_exchange_on_both_transports() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut s = session(transport, DIRECT_PEER);
        s.input(b"VERSION=2.0.2\r\n");
        let challenge = text(s.input(b"AUTHENTICATE DIGEST-MD5\r\n\0"));
        assert!(challenge.ends_with("\r\n"));
        let (response, rspauth) = sasl::digest_client_response(
            challenge.as_bytes(),
            "alice",
            "secret",
            "tsp.example:3653",
            "1700000000",
        )
        .unwrap();
        assert_eq!(
            s.input(response.as_bytes()),
            Step::NeedPassword {
                user: "alice".into()
            }
        );
        let answer = text(check(&mut s, "secret"));
        assert_eq!(sasl::parse_rspauth(answer.as_bytes()), Some(rspauth));
        // The 200 comes on the client's next read: a poll on UDP, a separate write on TCP.
        match transport {
            Transport::Udp => assert_eq!(text(s.input(b"")), "200 Success\r\n"),
            Transport::Tcp => assert_eq!(s.take_pending().unwrap(), b"200 Success\r\n"),
        }
        assert!(matches!(
            s.input(GOGOC_REQUEST.as_bytes()),
            Step::NeedTunnel(TunnelAsk { user: Some(_), .. }) | Step::Reply(_)
        ));
    }
    // A wrong password.
    let mut s = session(Transport::Udp, DIRECT_PEER);
    s.input(b"VERSION=2.0.2\r\n");
    let challenge = text(s.input(b"AUTHENTICATE DIGEST-MD5\r\n"));
    let (response, _) =
        sasl::digest_client_response(challenge.as_bytes(), "alice", "guess", "x", "1").unwrap();
    s.input(response.as_bytes());
    assert_eq!(
        check(&mut s, "secret"),
        Step::Close(b"300 Authentication failed\r\n".to_vec())
    );
    // Garbage instead of a response.
    let mut s = session(Transport::Udp, DIRECT_PEER);
    s.input(b"VERSION=2.0.2\r\n");
    s.input(b"AUTHENTICATE DIGEST-MD5\r\n");
    assert_eq!(
        s.input(b"%%%\r\n"),
        Step::Close(b"300 Authentication failed\r\n".to_vec())
    );
}

#[test]
fn mechanisms_not_offered_fail_and_garbage_is_invalid() {
    let mut s = Session::new(
        Transport::Udp,
        DIRECT_PEER.parse().unwrap(),
        Policy {
            auth: vec![TspAuth::DigestMd5],
            ..policy()
        },
    );
    s.input(b"VERSION=2.0.2\r\n");
    assert_eq!(text(s.input(b"HELLO\r\n")), "500 Invalid request\r\n");
    assert_eq!(
        s.input(b"AUTHENTICATE ANONYMOUS\r\n\0"),
        Step::Close(b"300 Authentication failed\r\n".to_vec())
    );
}

#[test]
fn request_errors_have_their_codes() {
    let ask = |s: &mut Session, m: &str| text(s.input(m.as_bytes()));
    let v4: IpAddr = "192.0.2.10".parse().unwrap();
    // Anonymous users get no prefix.
    let mut s = anonymous(Transport::Udp, DIRECT_PEER);
    let router = request_message(RequestedType::V6V4, v4, None, Some(48));
    assert_eq!(ask(&mut s, &router), Status::PrefixForAnonymous.framed());
    // A user's router request needs a length; v4v6 has no prefixes.
    let mut s = session(Transport::Udp, DIRECT_PEER);
    s.input(b"VERSION=2.0.2\r\n");
    s.input(b"AUTHENTICATE PLAIN\r\n");
    s.input(b"\0alice\0pw\r\n");
    check(&mut s, "pw");
    let no_len = crate::tsp::status::frame(
        "<tunnel action=\"create\" type=\"v6v4\" proxy=\"no\"><client><address type=\"ipv4\">192.0.2.10</address><router></router></client></tunnel>\r\n",
    );
    assert_eq!(ask(&mut s, &no_len), Status::MissingPrefixLength.framed());
    let v4v6 = request_message(
        RequestedType::V4V6,
        "2001:db8:ffff::6".parse().unwrap(),
        None,
        Some(24),
    );
    assert_eq!(ask(&mut s, &v4v6), Status::UnsupportedPrefixLength.framed());
    // Proxies, unknown and unoffered types, malformed XML, a wrong length.
    let body = std::str::from_utf8(xml::unframe(GOGOC_REQUEST.as_bytes()).unwrap()).unwrap();
    let proxy = crate::tsp::status::frame(&body.replace("proxy=\"no\"", "proxy=\"yes\""));
    assert_eq!(ask(&mut s, &proxy), Status::UnsupportedTunnelMode.framed());
    let gre = crate::tsp::status::frame("<tunnel action=\"create\" type=\"v6gre\"></tunnel>\r\n");
    assert_eq!(ask(&mut s, &gre), Status::UnsupportedTunnelMode.framed());
    let broken = crate::tsp::status::frame("<tunnel action=\"create\"\r\n");
    assert_eq!(ask(&mut s, &broken), Status::InvalidRequest.framed());
    assert_eq!(
        ask(&mut s, "Content-length: 999\r\n<tunnel/>"),
        Status::InvalidRequest.framed()
    );
    let mut s = Session::new(
        Transport::Udp,
        DIRECT_PEER.parse().unwrap(),
        Policy {
            tunnel_types: vec![TspTunnelType::V6UdpV4],
            ..policy()
        },
    );
    s.input(b"VERSION=2.0.2\r\n");
    s.input(b"AUTHENTICATE ANONYMOUS\r\n");
    let v6v4 = request_message(RequestedType::V6V4, v4, None, None);
    assert_eq!(ask(&mut s, &v6v4), Status::UnsupportedTunnelMode.framed());
    // v6anyv4 without v6v4 offered: v6udpv4 even without a NAT.
    let Step::NeedTunnel(a) = s.input(GOGOC_REQUEST.as_bytes()) else {
        panic!()
    };
    assert_eq!(a.kind, Kind::V6Udp4);
}

#[test]
fn v4v6_uses_the_ipv6_the_session_comes_from() {
    let mut s = anonymous(Transport::Udp, "[2001:db8:ffff::6]:50000");
    let req = request_message(
        RequestedType::V4V6,
        "2001:db8:ffff::6".parse().unwrap(),
        Some((30, "127.0.0.1".parse().unwrap())),
        None,
    );
    let Step::NeedTunnel(ask) = s.input(req.as_bytes()) else {
        panic!()
    };
    assert_eq!(ask.kind, Kind::V4In6);
    assert_eq!(
        ask.endpoint,
        Endpoint::Ipv6("2001:db8:ffff::6".parse().unwrap())
    );
}

#[test]
fn anything_but_an_accept_after_the_offer_ends_the_session() {
    let mut s = anonymous(Transport::Tcp, DIRECT_PEER);
    s.input(GOGOC_REQUEST.as_bytes());
    s.offered(Ok((3, offer())));
    assert_eq!(
        s.input(GOGOC_REQUEST.as_bytes()),
        Step::Close(Status::InvalidRequest.framed().into_bytes())
    );
    assert!(!s.established());
}
