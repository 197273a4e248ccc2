//! The client's negotiation against the server's own session state machine.
use std::collections::VecDeque;

use super::*;
use crate::{
    config::{TspAuth, TspTunnelType},
    tsp::{
        session::{Policy, Session, Step, Transport},
        status::Status,
    },
};

/// An in-memory server: a [`Session`] whose questions are answered from fixed data.
struct Loopback {
    session: Session,
    transport: Transport,
    users: Vec<(&'static str, &'static str)>,
    refuse: Option<Status>,
    /// Replies the client has not read yet (TCP: written without being asked).
    unread: VecDeque<Vec<u8>>,
    asked: Vec<crate::tsp::session::TunnelAsk>,
}

impl Loopback {
    fn new(transport: Transport, peer: &str) -> Self {
        Self {
            session: Session::new(
                transport,
                peer.parse().unwrap(),
                Policy {
                    auth: vec![TspAuth::DigestMd5, TspAuth::Plain, TspAuth::Anonymous],
                    tunnel_types: vec![TspTunnelType::V6V4, TspTunnelType::V6UdpV4],
                    realm: "broker".into(),
                    keepalive_secs: 30,
                },
            ),
            transport,
            users: vec![("alice", "secret")],
            refuse: None,
            unread: VecDeque::new(),
            asked: Vec::new(),
        }
    }

    /// Runs a message through the session; the bytes it would send.
    fn serve(&mut self, msg: &[u8]) -> Option<Vec<u8>> {
        let mut step = self.session.input(msg);
        loop {
            step = match step {
                Step::Reply(b) | Step::Close(b) | Step::Refused { reply: b, .. } => return Some(b),
                Step::Established { reply, .. } => return Some(reply),
                Step::Silent => return None,
                Step::NeedPassword { user } => {
                    let kept = self
                        .users
                        .iter()
                        .find(|(u, _)| *u == user)
                        .map(|(u, p)| crate::secret::UserSecrets::derive(u, p, "broker"));
                    self.session.password(kept.as_ref())
                }
                Step::VerifyPlain { password, hash } => self
                    .session
                    .plain_checked(crate::secret::verify_password(&password, &hash)),
                Step::NeedTunnel(ask) => {
                    self.asked.push(ask);
                    let r = match self.refuse {
                        Some(s) => Err(s),
                        None => Ok((9, offer())),
                    };
                    self.session.offered(r)
                }
            };
        }
    }

    /// After a write on TCP: what the server writes, queued for the client's reads.
    fn tcp_write(&mut self, msg: &[u8]) {
        if let Some(b) = self.serve(msg) {
            if !b.is_empty() {
                self.unread.push_back(b);
            }
        }
        if let Some(p) = self.session.take_pending() {
            self.unread.push_back(p);
        }
    }
}

impl Exchange for Loopback {
    async fn request(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        match self.transport {
            Transport::Udp => Ok(self.serve(msg).unwrap_or_default()),
            Transport::Tcp => {
                self.tcp_write(msg);
                self.read().await
            }
        }
    }

    async fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        match self.transport {
            Transport::Udp => self
                .serve(msg)
                .map(drop)
                .ok_or(io::ErrorKind::TimedOut.into()),
            Transport::Tcp => {
                self.tcp_write(msg);
                Ok(())
            }
        }
    }

    async fn read(&mut self) -> io::Result<Vec<u8>> {
        match self.transport {
            Transport::Udp => Ok(self.serve(b"").unwrap_or_default()),
            Transport::Tcp => self
                .unread
                .pop_front()
                .ok_or(io::ErrorKind::TimedOut.into()),
        }
    }
}

fn offer() -> Offer {
    Offer {
        tunnel_type: RequestedType::V6V4,
        lifetime: 100,
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

fn opts(user: Option<(&str, &str)>) -> Options {
    Options {
        server: "192.0.2.1".into(),
        user: user.map(|(u, _)| u.into()),
        password: user.map(|(_, p)| p.into()),
        tunnel_type: RequestedType::V6AnyV4,
        router: None,
        transport: TransportChoice::Auto,
        name: "tsp0".into(),
        keepalive: None,
        default_route: true,
    }
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

const LOCAL: &str = "192.0.2.10";

#[test]
fn negotiates_on_both_transports_with_every_mechanism() {
    for transport in [Transport::Udp, Transport::Tcp] {
        for user in [None, Some(("alice", "secret"))] {
            let mut lb = Loopback::new(transport, "192.0.2.10:40000");
            let got = run(negotiate(&mut lb, &opts(user), LOCAL.parse().unwrap(), "1"));
            assert_eq!(got.unwrap(), offer(), "{transport:?} {user:?}");
            assert!(lb.session.established(), "{transport:?} {user:?}");
            assert_eq!(lb.asked[0].user.as_deref(), user.map(|(u, _)| u));
        }
    }
    // PLAIN when the server offers no DIGEST-MD5.
    let mut lb = Loopback::new(Transport::Tcp, "192.0.2.10:40000");
    lb.session = Session::new(
        Transport::Tcp,
        "192.0.2.10:40000".parse().unwrap(),
        Policy {
            auth: vec![TspAuth::Plain],
            tunnel_types: vec![TspTunnelType::V6V4],
            realm: "broker".into(),
            keepalive_secs: 30,
        },
    );
    let o = opts(Some(("alice", "secret")));
    assert_eq!(
        run(negotiate(&mut lb, &o, LOCAL.parse().unwrap(), "1")).unwrap(),
        offer()
    );
}

#[test]
fn failures_are_told_apart() {
    let local: IpAddr = LOCAL.parse().unwrap();
    let mut lb = Loopback::new(Transport::Udp, "192.0.2.10:40000");
    let r = run(negotiate(
        &mut lb,
        &opts(Some(("alice", "wrong"))),
        local,
        "1",
    ));
    assert!(matches!(r, Err(NegotiateError::AuthFailed)), "{r:?}");

    let mut lb = Loopback::new(Transport::Udp, "192.0.2.10:40000");
    lb.refuse = Some(Status::PrefixLengthUnavailable);
    let r = run(negotiate(&mut lb, &opts(None), local, "1"));
    assert!(matches!(r, Err(NegotiateError::Refused(507))), "{r:?}");

    // The server offers no mechanism the client can use.
    let mut lb = Loopback::new(Transport::Udp, "192.0.2.10:40000");
    lb.session = Session::new(
        Transport::Udp,
        "192.0.2.10:40000".parse().unwrap(),
        Policy {
            auth: vec![TspAuth::DigestMd5],
            tunnel_types: vec![TspTunnelType::V6V4],
            realm: "broker".into(),
            keepalive_secs: 30,
        },
    );
    let r = run(negotiate(&mut lb, &opts(None), local, "1"));
    assert!(matches!(r, Err(NegotiateError::NoMechanism(_))), "{r:?}");
}

#[test]
fn status_codes_are_read_from_lines_and_frames() {
    assert_eq!(status(b"302 Unsupported client version\r\n"), 302);
    assert_eq!(status(Status::PrefixForAnonymous.framed().as_bytes()), 522);
    assert_eq!(status(b"cmVhbG09"), 0);
}
