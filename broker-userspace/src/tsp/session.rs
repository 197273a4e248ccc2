//! One TSP session as a pure state machine: messages in, replies out. No I/O and no
//! store: where it needs a user's password or a tunnel it says so ([`Step::NeedPassword`],
//! [`Step::NeedTunnel`]) and the caller answers ([`Session::password`],
//! [`Session::offered`]), so every exchange is unit-tested byte for byte.
//!
//! The flow (RFC 5572, as gogoc 1.2 runs it):
//! `VERSION=2.0.x` → `CAPABILITY ...`; `AUTHENTICATE <mech>` → SASL; the tunnel request
//! (`Content-length` + XML) → the offer; the accept → established.
use std::net::{IpAddr, SocketAddr};

use super::{
    sasl,
    status::Status,
    xml::{self, Action, Offer, RequestedType, TunnelRequest},
};
use crate::config::{TspAuth, TspTunnelType};
use crate::model::{Endpoint, Kind};
use crate::secret::UserSecrets;

/// Versions the server speaks; 1.0.1 (no accept message) is refused with 302, after which
/// gogoc falls back no further.
pub const VERSIONS: [&str; 3] = ["2.0.2", "2.0.1", "2.0.0"];

/// The transport a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// What the session is configured to offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub auth: Vec<TspAuth>,
    pub tunnel_types: Vec<TspTunnelType>,
    pub realm: String,
    pub keepalive_secs: u32,
}

/// What a client asked for, resolved to a kind and an endpoint: the caller makes or
/// reuses the tunnel and answers with an [`Offer`] or a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelAsk {
    /// `None`: anonymous.
    pub user: Option<String>,
    pub kind: Kind,
    pub endpoint: Endpoint,
    /// The IPv4 the client says it has (its own side of a proto-41 tunnel; behind a NAT,
    /// its private address).
    pub claimed_ipv4: Option<std::net::Ipv4Addr>,
    /// Router mode: the prefix length asked for.
    pub router: Option<u8>,
    pub keepalive: u32,
    /// Negotiated over UDP: the source address may be forged (TCP's handshake proves it).
    pub over_udp: bool,
}

/// What to do after a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes (on UDP, as the payload after the echoed header).
    Reply(Vec<u8>),
    /// Send nothing (TCP after `AUTHENTICATE PLAIN` and after the accept).
    Silent,
    /// Look up what is kept of this user's password and call [`Session::password`].
    NeedPassword { user: String },
    /// Check a PLAIN password against its argon2 hash (slow: off the async thread) and
    /// call [`Session::plain_checked`].
    VerifyPlain { password: String, hash: String },
    /// Make or find the tunnel and call [`Session::offered`].
    NeedTunnel(TunnelAsk),
    /// The tunnel request was refused with `status`: send `reply` (the framed status);
    /// the client may ask again.
    Refused { reply: Vec<u8>, status: Status },
    /// The client accepted the offer of this tunnel; send `reply` (UDP) and keep the
    /// session (its socket carries v6udpv4 data from now on).
    Established { tunnel: u32, reply: Vec<u8> },
    /// Send `reply` (if any), then end the session.
    Close(Vec<u8>),
}

/// Why a session ended or failed, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    AuthFailed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Version,
    Auth,
    Plain,
    Digest {
        nonce: String,
    },
    DigestCheck {
        response: sasl::DigestResponse,
    },
    PlainCheck {
        user: String,
        password: String,
    },
    /// PLAIN: the caller is checking the password.
    PlainVerify {
        user: String,
    },
    /// Authenticated (`None` = anonymous); waiting for the tunnel request.
    Ready {
        user: Option<String>,
    },
    Offering,
    Offered {
        tunnel: u32,
    },
    Established,
}

pub struct Session {
    transport: Transport,
    peer: SocketAddr,
    policy: Policy,
    version: &'static str,
    state: State,
    /// A reply owed to the client's next read (the `200` after `rspauth`).
    pending: Option<Vec<u8>>,
    /// Who the tunnel being made is for, until the offer.
    asking: Option<Option<String>>,
    failed: Option<Outcome>,
    /// The last tunnel request's refusal, until a request gets an offer.
    refused: Option<Status>,
}

fn reply(s: impl Into<String>) -> Step {
    Step::Reply(s.into().into_bytes())
}

impl Session {
    pub fn new(transport: Transport, peer: SocketAddr, policy: Policy) -> Self {
        Self {
            transport,
            peer,
            policy,
            version: VERSIONS[0],
            state: State::Version,
            pending: None,
            asking: None,
            failed: None,
            refused: None,
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Whether the offer has been accepted.
    pub fn established(&self) -> bool {
        self.state == State::Established
    }

    /// Set once authentication failed (the caller slows the source down).
    pub fn failure(&self) -> Option<Outcome> {
        self.failed
    }

    /// The outcome label of a session that ended as `ended` (`closed`, `timeout`, ...):
    /// one whose last tunnel request was refused counts as `refused`, whatever the
    /// client did after the refusal (gogoc closes, or on UDP just goes quiet).
    pub fn outcome(&self, ended: &'static str) -> &'static str {
        match ended {
            "closed" | "timeout" if self.refused.is_some() => "refused",
            other => other,
        }
    }

    /// A reply owed without a request: on TCP, the `200 Success` that follows `rspauth`
    /// in a separate write (gogoc reads them with separate `recv` calls).
    pub fn take_pending(&mut self) -> Option<Vec<u8>> {
        self.pending.take()
    }

    /// A message from the client (on UDP the payload after the header; empty = a poll).
    pub fn input(&mut self, msg: &[u8]) -> Step {
        if msg.is_empty() || sasl::trim(msg).is_empty() {
            // A poll (a read): the owed reply, or an empty one. On TCP nothing is owed.
            return match self.pending.take() {
                Some(p) => Step::Reply(p),
                None if self.transport == Transport::Udp => Step::Reply(Vec::new()),
                None => Step::Silent,
            };
        }
        match std::mem::replace(&mut self.state, State::Offering) {
            State::Version => self.version(msg),
            State::Auth => self.authenticate(msg),
            State::Plain => {
                let Some((user, password)) = sasl::parse_plain(msg) else {
                    return self.auth_failed();
                };
                self.state = State::PlainCheck {
                    user: user.clone(),
                    password,
                };
                Step::NeedPassword { user }
            }
            State::Digest { nonce } => {
                match sasl::parse_digest_response(msg, &self.policy.realm, &nonce) {
                    Ok(response) => {
                        let user = response.username.clone();
                        self.state = State::DigestCheck { response };
                        Step::NeedPassword { user }
                    }
                    Err(_) => self.auth_failed(),
                }
            }
            State::Ready { user } => self.request(user, msg),
            State::Offered { tunnel } => self.accept(tunnel, msg),
            State::Established if msg.starts_with(b"VERSION=") => {
                // The client starts over on the same socket (restarted, same port).
                self.pending = None;
                self.version(msg)
            }
            State::Established => {
                // gogoc sends nothing framed once established; tsps echoes keepalives.
                self.state = State::Established;
                Step::Reply(Vec::new())
            }
            s @ (State::PlainCheck { .. }
            | State::PlainVerify { .. }
            | State::DigestCheck { .. }
            | State::Offering) => {
                // A message while the caller works on the last one (a UDP retransmission
                // is answered from the caller's reply cache, not here).
                self.state = s;
                reply(Status::RequestInProgress.line())
            }
        }
    }

    fn version(&mut self, msg: &[u8]) -> Step {
        let line = String::from_utf8_lossy(sasl::trim(msg)).to_string();
        let asked = line.strip_prefix("VERSION=").map(str::trim);
        match asked.and_then(|v| VERSIONS.iter().find(|s| **s == v)) {
            Some(v) => {
                self.version = v;
                self.state = State::Auth;
                reply(self.capability())
            }
            None => Step::Close(Status::UnsupportedVersion.line().into_bytes()),
        }
    }

    /// `CAPABILITY TUNNEL=... AUTH=...\r\n`, single spaces, CRLF last: gogoc processes a
    /// pair when a separator follows it.
    pub fn capability(&self) -> String {
        let mut caps = vec!["CAPABILITY".to_string()];
        for t in &self.policy.tunnel_types {
            caps.push(
                match t {
                    TspTunnelType::V6V4 => "TUNNEL=V6V4",
                    TspTunnelType::V6UdpV4 => "TUNNEL=V6UDPV4",
                    TspTunnelType::V4V6 => "TUNNEL=V4V6",
                }
                .into(),
            );
        }
        for a in &self.policy.auth {
            caps.push(
                match a {
                    TspAuth::DigestMd5 => "AUTH=DIGEST-MD5",
                    TspAuth::Plain => "AUTH=PLAIN",
                    TspAuth::Anonymous => "AUTH=ANONYMOUS",
                }
                .into(),
            );
        }
        format!("{}\r\n", caps.join(" "))
    }

    fn authenticate(&mut self, msg: &[u8]) -> Step {
        let line = String::from_utf8_lossy(sasl::trim(msg)).to_ascii_uppercase();
        let mech = line.strip_prefix("AUTHENTICATE ").map(str::trim);
        let offered = |m: TspAuth| self.policy.auth.contains(&m);
        match mech {
            Some("ANONYMOUS") if offered(TspAuth::Anonymous) => {
                self.state = State::Ready { user: None };
                reply(Status::Success.line())
            }
            Some("PLAIN") if offered(TspAuth::Plain) => {
                self.state = State::Plain;
                match self.transport {
                    // On TCP gogoc does not read after this line; any bytes would be taken
                    // for the answer to the credentials.
                    Transport::Tcp => Step::Silent,
                    Transport::Udp => Step::Reply(Vec::new()),
                }
            }
            Some("DIGEST-MD5") if offered(TspAuth::DigestMd5) => {
                let nonce = crate::store::random_token(16);
                let challenge = sasl::digest_challenge(&self.policy.realm, &nonce);
                self.state = State::Digest { nonce };
                reply(challenge)
            }
            Some(_) => self.auth_failed(),
            None => {
                self.state = State::Auth;
                reply(Status::InvalidRequest.line())
            }
        }
    }

    fn auth_failed(&mut self) -> Step {
        self.failed = Some(Outcome::AuthFailed);
        Step::Close(Status::AuthenticationFailed.line().into_bytes())
    }

    /// What is kept of the password of the user named in [`Step::NeedPassword`], `None`
    /// if there is no such user.
    pub fn password(&mut self, secrets: Option<&UserSecrets>) -> Step {
        match std::mem::replace(&mut self.state, State::Offering) {
            State::PlainCheck {
                user,
                password: given,
            } => match secrets {
                Some(s) => {
                    self.state = State::PlainVerify { user };
                    Step::VerifyPlain {
                        password: given,
                        hash: s.password_hash.clone(),
                    }
                }
                None => self.auth_failed(),
            },
            State::DigestCheck { response } => {
                let old = self.version == "2.0.0";
                let inner = secrets.and_then(|s| s.digest_inner(&self.policy.realm));
                match inner.map(|i| sasl::verify_digest(&response, i, old)) {
                    Some(Ok(rspauth)) => {
                        self.state = State::Ready {
                            user: Some(response.username),
                        };
                        self.pending = Some(Status::Success.line().into_bytes());
                        reply(rspauth)
                    }
                    _ => self.auth_failed(),
                }
            }
            other => {
                self.state = other;
                Step::Silent
            }
        }
    }

    /// The verdict on [`Step::VerifyPlain`].
    pub fn plain_checked(&mut self, ok: bool) -> Step {
        match std::mem::replace(&mut self.state, State::Offering) {
            State::PlainVerify { user } if ok => {
                self.state = State::Ready { user: Some(user) };
                reply(Status::Success.line())
            }
            State::PlainVerify { .. } => self.auth_failed(),
            other => {
                self.state = other;
                Step::Silent
            }
        }
    }

    fn request(&mut self, user: Option<String>, msg: &[u8]) -> Step {
        let framed_error = |s: &mut Self, status: Status| {
            s.state = State::Ready { user: user.clone() };
            s.refused = Some(status);
            Step::Refused {
                reply: status.framed().into_bytes(),
                status,
            }
        };
        let Some(body) = xml::unframe(msg) else {
            return framed_error(self, Status::InvalidRequest);
        };
        let req = match xml::parse_request(body) {
            Ok(r) => r,
            Err(status) => return framed_error(self, status),
        };
        if req.action != Action::Create {
            return framed_error(self, Status::InvalidRequest);
        }
        match self.resolve(&user, &req) {
            Ok(ask) => {
                self.asking = Some(user);
                self.state = State::Offering;
                Step::NeedTunnel(ask)
            }
            Err(status) => framed_error(self, status),
        }
    }

    /// The kind and endpoint a request gets: v6anyv4 becomes v6udpv4 when the address
    /// the client claims is not the one its packets come from (it is behind a NAT).
    fn resolve(&self, user: &Option<String>, req: &TunnelRequest) -> Result<TunnelAsk, Status> {
        if req.proxy {
            return Err(Status::UnsupportedTunnelMode);
        }
        let offered = |t: TspTunnelType| self.policy.tunnel_types.contains(&t);
        let source = self.peer.ip();
        let source4 = match source {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        };
        let natted = req.client_ipv4.is_some_and(|c| Some(c) != source4);
        let udp = self.transport == Transport::Udp;
        let (kind, endpoint) = match req.tunnel_type.ok_or(Status::InvalidRequest)? {
            RequestedType::V4V6 if offered(TspTunnelType::V4V6) => {
                let outer = match source {
                    IpAddr::V6(a) if a.to_ipv4_mapped().is_none() => a,
                    _ => req.client_ipv6.ok_or(Status::InvalidIpv6)?,
                };
                if outer.is_unspecified() || outer.is_loopback() || outer.is_multicast() {
                    return Err(Status::InvalidIpv6);
                }
                (Kind::V4In6, Endpoint::Ipv6(outer))
            }
            t @ (RequestedType::V6V4 | RequestedType::V6UdpV4 | RequestedType::V6AnyV4) => {
                let source4 = source4.ok_or(Status::InvalidIpv4)?;
                let want_udp = match t {
                    RequestedType::V6UdpV4 => true,
                    RequestedType::V6V4 => false,
                    _ => natted || !offered(TspTunnelType::V6V4),
                };
                if want_udp {
                    // v6udpv4 data shares the session's socket: never over TCP (gogoc
                    // would pump raw IPv6 into the stream).
                    if !offered(TspTunnelType::V6UdpV4) || !udp {
                        return Err(Status::UnsupportedTunnelMode);
                    }
                    let port = self.peer.port();
                    (
                        Kind::V6Udp4,
                        Endpoint::Udp4(std::net::SocketAddrV4::new(source4, port)),
                    )
                } else {
                    if !offered(TspTunnelType::V6V4) {
                        return Err(Status::UnsupportedTunnelMode);
                    }
                    (Kind::Proto41, Endpoint::Ipv4(source4))
                }
            }
            _ => return Err(Status::UnsupportedTunnelMode),
        };
        let router = match req.router {
            None => None,
            Some(_) if user.is_none() => return Err(Status::PrefixForAnonymous),
            Some(_) if kind == Kind::V4In6 => return Err(Status::UnsupportedPrefixLength),
            Some(None) => return Err(Status::MissingPrefixLength),
            Some(Some(len)) => Some(len),
        };
        Ok(TunnelAsk {
            user: user.clone(),
            kind,
            endpoint,
            claimed_ipv4: req.client_ipv4,
            router,
            keepalive: self.policy.keepalive_secs,
            over_udp: udp,
        })
    }

    /// The answer to [`Step::NeedTunnel`]: the tunnel's id and its offer, or a status.
    pub fn offered(&mut self, result: Result<(u32, Offer), Status>) -> Step {
        let user = self.asking.take().flatten();
        match result {
            Ok((tunnel, offer)) => {
                self.state = State::Offered { tunnel };
                self.refused = None;
                reply(xml::offer_message(&offer))
            }
            Err(status) => {
                self.state = State::Ready { user };
                self.refused = Some(status);
                Step::Refused {
                    reply: status.framed().into_bytes(),
                    status,
                }
            }
        }
    }

    /// The tunnel asked for lives on another PoP: the client is sent there (it connects
    /// to the first of `brokers`), and this session ends.
    pub fn redirected(&mut self, brokers: &[std::net::IpAddr]) -> Vec<u8> {
        self.asking = None;
        super::status::frame(&xml::redirect_message(brokers)).into_bytes()
    }

    fn accept(&mut self, tunnel: u32, msg: &[u8]) -> Step {
        let accepted = xml::unframe(msg)
            .and_then(|b| xml::parse_request(b).ok())
            .is_some_and(|r| r.action == Action::Accept);
        if !accepted {
            // Anything else ends it: a client that does not accept does not get a tunnel.
            return Step::Close(Status::InvalidRequest.framed().into_bytes());
        }
        self.state = State::Established;
        Step::Established {
            tunnel,
            reply: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
