//! `broker client tsp`: a TSP client (RFC 5572) for today's systems, also without `sit`.
//! It negotiates as gogoc does (UDP first, then TCP; DIGEST-MD5, PLAIN or anonymous),
//! then runs the tunnel it was offered on a TUN device: v6udpv4 on the negotiation's own
//! UDP socket, v6v4 over a raw protocol-41 socket, v4v6 over a raw IPv6 socket. Keepalives
//! watch the tunnel; when it dies (a NAT mapping lost, the PoP restarted elsewhere) the
//! client negotiates again.
//!
//! The negotiation runs over the [`Exchange`] trait, so it is tested against the server's
//! own session state machine without sockets.
use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{
    io::{unix::AsyncFd, AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};
use tracing::{debug, info, warn};

use super::{
    keepalive::{self, Due, Keepalive},
    proto41, tun,
};
use crate::{
    netlink::Netlink,
    sysctl,
    tsp::{
        frame::{self, TcpFramer},
        sasl,
        xml::{self, Offer, RequestedType},
    },
};

/// Which transports to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    /// UDP, then TCP (gogoc's order); v6udpv4 needs UDP.
    Auto,
    Udp,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The broker as configured: `host`, `host:port` or `[v6]:port`. Also the DIGEST-MD5
    /// digest-uri (`tsp/<server>`), as gogoc uses it.
    pub server: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub tunnel_type: RequestedType,
    /// Router mode: a routed prefix of this length.
    pub router: Option<u8>,
    pub transport: TransportChoice,
    /// TUN device name.
    pub name: String,
    /// Keepalive interval to use if shorter than the offer's.
    pub keepalive: Option<u32>,
    pub default_route: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no answer from the server")]
    NoAnswer,
    #[error("the server answered VERSION=2.0.2 with status {0} (302: another TSP version; 530: too busy)")]
    Version(u16),
    #[error("authentication failed")]
    AuthFailed,
    #[error("the server offers none of the mechanisms this client can use (capabilities: {0})")]
    NoMechanism(String),
    #[error("the server's rspauth does not match: it does not know the password")]
    ServerNotAuthenticated,
    #[error("the server refused the tunnel with status {0}")]
    Refused(u16),
    /// The tunnel lives on another PoP: ask these brokers instead (status 1200).
    #[error("redirected to {0:?}")]
    Redirected(Vec<IpAddr>),
    #[error("unexpected answer {0:?}")]
    Unexpected(String),
}

/// The client's side of the message exchanges, on either transport.
pub trait Exchange {
    /// Sends a message and returns the reply (on TCP, one whole message).
    fn request(&mut self, msg: &[u8]) -> impl std::future::Future<Output = io::Result<Vec<u8>>>;
    /// Sends a message the server answers on UDP only (on TCP it stays silent).
    fn send(&mut self, msg: &[u8]) -> impl std::future::Future<Output = io::Result<()>>;
    /// Reads a message the server owes (on UDP by polling with an empty datagram).
    fn read(&mut self) -> impl std::future::Future<Output = io::Result<Vec<u8>>>;
}

/// The leading number of a status line, 0 if there is none.
fn status(reply: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(reply);
    let text = match xml::unframe(reply) {
        Some(body) => String::from_utf8_lossy(body).to_string(),
        None => text.to_string(),
    };
    text.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Negotiates a tunnel: version, authentication, request, accept. `local` is the address
/// the client's packets come from (its claimed IPv4, or IPv6 for v4v6).
pub async fn negotiate<E: Exchange>(
    e: &mut E,
    o: &Options,
    local: IpAddr,
    cnonce: &str,
) -> Result<Offer, NegotiateError> {
    let caps = e.request(b"VERSION=2.0.2\r\n").await?;
    if !caps.starts_with(b"CAPABILITY ") {
        return Err(NegotiateError::Version(status(&caps)));
    }
    let caps = String::from_utf8_lossy(&caps).trim().to_string();
    let has = |m: &str| {
        caps.split_whitespace()
            .any(|t| t.eq_ignore_ascii_case(&format!("AUTH={m}")))
    };
    match (&o.user, &o.password) {
        (Some(user), Some(password)) if has("DIGEST-MD5") => {
            let challenge = e.request(b"AUTHENTICATE DIGEST-MD5\r\n\0").await?;
            let (response, rspauth) =
                sasl::digest_client_response(&challenge, user, password, &o.server, cnonce)
                    .map_err(|_| NegotiateError::AuthFailed)?;
            let answer = e.request(response.as_bytes()).await?;
            if status(&answer) == 300 {
                return Err(NegotiateError::AuthFailed);
            }
            if sasl::parse_rspauth(&answer).as_deref() != Some(rspauth.as_str()) {
                return Err(NegotiateError::ServerNotAuthenticated);
            }
            if status(&e.read().await?) != 200 {
                return Err(NegotiateError::AuthFailed);
            }
        }
        (Some(user), Some(password)) if has("PLAIN") => {
            e.send(b"AUTHENTICATE PLAIN\r\n\0").await?;
            let r = e
                .request(format!("\0{user}\0{password}\r\n").as_bytes())
                .await?;
            if status(&r) != 200 {
                return Err(NegotiateError::AuthFailed);
            }
        }
        (None, _) if has("ANONYMOUS") => {
            let r = e.request(b"AUTHENTICATE ANONYMOUS\r\n\0").await?;
            if status(&r) != 200 {
                return Err(NegotiateError::AuthFailed);
            }
        }
        _ => return Err(NegotiateError::NoMechanism(caps)),
    }
    let keepalive_addr: IpAddr = if o.tunnel_type == RequestedType::V4V6 {
        Ipv4Addr::LOCALHOST.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let request = xml::request_message(
        o.tunnel_type,
        local,
        Some((o.keepalive.unwrap_or(30), keepalive_addr)),
        o.router,
    );
    let reply = e.request(request.as_bytes()).await?;
    let body = xml::unframe(&reply)
        .ok_or_else(|| NegotiateError::Unexpected(String::from_utf8_lossy(&reply).into()))?;
    if let Some(brokers) = xml::parse_redirect(body) {
        return Err(NegotiateError::Redirected(brokers));
    }
    let offer = xml::parse_offer(body).map_err(NegotiateError::Refused)?;
    e.send(xml::ACCEPT.as_bytes()).await?;
    Ok(offer)
}

/// TSP over UDP: sequence-numbered datagrams, retransmitted every 2 s, four tries.
pub struct UdpExchange<'a> {
    pub socket: &'a UdpSocket,
    seq: u32,
    started: Instant,
}

impl<'a> UdpExchange<'a> {
    pub fn new(socket: &'a UdpSocket) -> Self {
        Self {
            socket,
            // gogoc starts at 240: the first header on the wire is f0 00 00 f0.
            seq: 240,
            started: Instant::now(),
        }
    }

    async fn exchange(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        let header = frame::client_header(self.seq, self.started.elapsed().as_millis() as u32);
        self.seq += 1;
        let datagram = frame::datagram(&header, msg);
        let mut buf = vec![0u8; 65_536];
        for _ in 0..4 {
            self.socket.send(&datagram).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                let n = match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                    Ok(r) => r?,
                    Err(_) => break,
                };
                if let Ok((h, payload)) = frame::parse_datagram(&buf[..n]) {
                    if h.seq() == header.seq() {
                        return Ok(payload.to_vec());
                    }
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer over UDP",
        ))
    }
}

impl Exchange for UdpExchange<'_> {
    async fn request(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        self.exchange(msg).await
    }

    async fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.exchange(msg).await.map(drop)
    }

    async fn read(&mut self) -> io::Result<Vec<u8>> {
        self.exchange(b"").await
    }
}

/// TSP over TCP: one message per read, cut by [`TcpFramer`].
pub struct TcpExchange {
    pub stream: TcpStream,
    framer: TcpFramer,
}

impl TcpExchange {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            framer: TcpFramer::default(),
        }
    }
}

impl Exchange for TcpExchange {
    async fn request(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        self.stream.write_all(msg).await?;
        self.read().await
    }

    async fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.stream.write_all(msg).await
    }

    async fn read(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        loop {
            match self.framer.next(65_536) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(frame::TooLong) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "message too long",
                    ))
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer over TCP"))??;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.framer.push(&buf[..n]);
        }
    }
}

/// Where the tunnel's outer packets go.
enum Wire {
    /// v6udpv4: the negotiation's socket, connected to the server.
    Udp(UdpSocket),
    /// v6v4: a raw protocol-41 socket.
    Proto41 {
        sock: AsyncFd<Socket>,
        server: Ipv4Addr,
        local: Ipv4Addr,
    },
    /// v4v6: a raw IPv6 socket of next header 4 (the kernel strips the IPv6 header).
    Ip4In6 {
        sock: AsyncFd<Socket>,
        server: Ipv6Addr,
    },
}

impl Wire {
    async fn send(&self, inner: &[u8]) -> io::Result<()> {
        match self {
            Wire::Udp(s) => s.send(inner).await.map(drop),
            Wire::Proto41 { sock, server, .. } => {
                let to: SockAddr = SocketAddr::new((*server).into(), 0).into();
                send_raw(sock, inner, &to).await
            }
            Wire::Ip4In6 { sock, server } => {
                let to: SockAddr = SocketAddr::new((*server).into(), 0).into();
                send_raw(sock, inner, &to).await
            }
        }
    }

    /// The next inner packet (`None` for what is not one: framed TSP, foreign packets).
    async fn recv<'b>(&self, buf: &'b mut [u8]) -> io::Result<Option<&'b [u8]>> {
        match self {
            Wire::Udp(s) => {
                let n = s.recv(buf).await?;
                Ok((n > 0 && buf[0] >> 4 == 6).then_some(&buf[..n]))
            }
            Wire::Proto41 {
                sock,
                server,
                local,
            } => {
                let (n, _) = recv_raw(sock, buf).await?;
                Ok(proto41::decapsulate(&buf[..n], *server, *local).ok())
            }
            Wire::Ip4In6 { sock, server } => {
                let (n, from) = recv_raw(sock, buf).await?;
                let from_server = from.as_socket().map(|a| a.ip()) == Some(IpAddr::V6(*server));
                Ok((from_server && n >= 20 && buf[0] >> 4 == 4).then_some(&buf[..n]))
            }
        }
    }
}

async fn send_raw(sock: &AsyncFd<Socket>, pkt: &[u8], to: &SockAddr) -> io::Result<()> {
    loop {
        let mut g = sock.writable().await?;
        match g.try_io(|s| s.get_ref().send_to(pkt, to)) {
            Ok(r) => return r.map(drop),
            Err(_would_block) => continue,
        }
    }
}

async fn recv_raw(sock: &AsyncFd<Socket>, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    loop {
        let mut g = sock.readable().await?;
        // SAFETY: recv_from writes initialised bytes into the buffer it is given.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        match g.try_io(|s| s.get_ref().recv_from(uninit)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

fn raw_socket(domain: Domain, protocol: i32, local: SocketAddr) -> io::Result<AsyncFd<Socket>> {
    let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(protocol)))?;
    sock.bind(&local.into())?;
    sock.set_nonblocking(true)?;
    // SAFETY: the socket is owned by the AsyncFd for as long as it is registered.
    unsafe { AsyncFd::register(sock) }.map_err(|e| e.into_parts().1)
}

/// Why a tunnel run ended.
enum End {
    /// Told to stop.
    Stop,
    /// Keepalives went unanswered, or the wire failed: negotiate again.
    Lost(String),
}

/// Runs until SIGINT/SIGTERM: negotiate, run the tunnel, and start over when it dies.
pub async fn run(o: Options) -> anyhow::Result<()> {
    let mut backoff = Duration::from_secs(1);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let attempt = async {
            let (offer, wire, _session) = connect(&o).await?;
            backoff = Duration::from_secs(1);
            tunnel(&o, &offer, wire).await
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = tokio::signal::ctrl_c() => Ok(End::Stop),
            _ = term.recv() => Ok(End::Stop),
        };
        match result {
            Ok(End::Stop) => return Ok(()),
            Ok(End::Lost(why)) => warn!(why, "tunnel lost; negotiating again"),
            Err(e) => {
                warn!(error = %format!("{e:#}"), retry_in_s = backoff.as_secs(), "TSP negotiation failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The server's address: `--server` with the TSP port added when it has none.
async fn server_addr(server: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = server.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, broker_common::consts::TSP_PORT));
    }
    let with_port = if server.contains(':') {
        server.to_string()
    } else {
        format!("{server}:{}", broker_common::consts::TSP_PORT)
    };
    let found = tokio::net::lookup_host(with_port.as_str()).await?.next();
    found.ok_or_else(|| anyhow::anyhow!("{server} does not resolve"))
}

/// How many redirections one negotiation follows (a loop between two brokers ends).
const MAX_REDIRECTS: usize = 3;

/// Negotiates with `o.server`, following redirections to the broker they name (the
/// first, on the TSP port), as gogoc does.
async fn connect(o: &Options) -> anyhow::Result<(Offer, Wire, Option<TcpStream>)> {
    let mut o = o.clone();
    for _ in 0..MAX_REDIRECTS {
        match connect_once(&o).await {
            Err(e) => match e.downcast_ref::<NegotiateError>() {
                Some(NegotiateError::Redirected(brokers)) => {
                    let Some(next) = brokers.first() else {
                        anyhow::bail!("redirected to an empty broker list");
                    };
                    info!(from = %o.server, to = %next, "TSP: redirected to the tunnel's PoP");
                    o.server = next.to_string();
                }
                _ => return Err(e),
            },
            done => return done,
        }
    }
    anyhow::bail!("more than {MAX_REDIRECTS} redirections")
}

/// Negotiates over the transports in order; returns the offer, the wire to run it on,
/// and on TCP the session's connection, which stays open (idle) while the tunnel runs, as
/// gogoc keeps it.
async fn connect_once(o: &Options) -> anyhow::Result<(Offer, Wire, Option<TcpStream>)> {
    let server = server_addr(&o.server).await?;
    let cnonce = crate::store::now().to_string();
    let transports: &[TransportChoice] = match o.transport {
        TransportChoice::Auto => &[TransportChoice::Udp, TransportChoice::Tcp],
        TransportChoice::Udp => &[TransportChoice::Udp],
        TransportChoice::Tcp => &[TransportChoice::Tcp],
    };
    let mut last = None;
    for t in transports {
        let r = match t {
            TransportChoice::Tcp => {
                let stream = TcpStream::connect(server).await?;
                let local = stream.local_addr()?.ip();
                let mut e = TcpExchange::new(stream);
                match negotiate(&mut e, o, local, &cnonce).await {
                    Ok(offer) => wire_for(&offer, local, None)
                        .await
                        .map(|w| (offer, w, Some(e.stream))),
                    Err(e) => Err(e.into()),
                }
            }
            _ => {
                let bind: SocketAddr = if server.is_ipv6() {
                    "[::]:0".parse()?
                } else {
                    "0.0.0.0:0".parse()?
                };
                let socket = UdpSocket::bind(bind).await?;
                socket.connect(server).await?;
                let local = socket.local_addr()?.ip();
                let offer = negotiate(&mut UdpExchange::new(&socket), o, local, &cnonce).await;
                match offer {
                    Ok(offer) => wire_for(&offer, local, Some(socket))
                        .await
                        .map(|w| (offer, w, None)),
                    Err(e) => Err(e.into()),
                }
            }
        };
        match r {
            Ok((offer, wire, tcp)) => {
                info!(
                    server = %server,
                    tunnel_type = offer.tunnel_type.as_str(),
                    client = %offer.client_ipv6,
                    "TSP tunnel negotiated"
                );
                return Ok((offer, wire, tcp));
            }
            Err(e) => {
                // An authentication or policy answer will not change on another transport.
                if let Some(n) = e.downcast_ref::<NegotiateError>() {
                    if !matches!(n, NegotiateError::Io(_)) {
                        return Err(e);
                    }
                }
                debug!(transport = ?t, error = %e, "TSP transport failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no transport")))
}

async fn wire_for(offer: &Offer, local: IpAddr, udp: Option<UdpSocket>) -> anyhow::Result<Wire> {
    Ok(match offer.tunnel_type {
        RequestedType::V6UdpV4 => {
            Wire::Udp(udp.ok_or_else(|| anyhow::anyhow!("a v6udpv4 tunnel offered over TCP"))?)
        }
        RequestedType::V4V6 => {
            let IpAddr::V6(l) = local else {
                anyhow::bail!("a v4v6 tunnel needs an IPv6 session");
            };
            Wire::Ip4In6 {
                sock: raw_socket(Domain::IPV6, 4, SocketAddr::new(l.into(), 0))?,
                server: offer.server_ipv6,
            }
        }
        _ => {
            let IpAddr::V4(l) = local else {
                anyhow::bail!("a v6v4 tunnel needs an IPv4 session");
            };
            Wire::Proto41 {
                sock: raw_socket(Domain::IPV4, 41, SocketAddr::new(l.into(), 0))?,
                server: offer.server_ipv4,
                local: l,
            }
        }
    })
}

/// Sets up the TUN device for the offer and forwards until the tunnel dies.
async fn tunnel(o: &Options, offer: &Offer, wire: Wire) -> anyhow::Result<End> {
    let tun = tun::open(&o.name)?;
    let _ = sysctl::set(&format!("net.ipv6.conf.{}.addr_gen_mode", o.name), "1");
    let nl = Netlink::connect()?;
    let index = nl.ifindex(&o.name).await?;
    nl.up(index, u32::from(offer.mtu)).await?;
    let v4v6 = offer.tunnel_type == RequestedType::V4V6;
    let (client_addr, default): (IpAddr, IpNet) = if v4v6 {
        nl.add_address(index, IpNet::V4(Ipv4Net::new(offer.client_ipv4, 32)?))
            .await?;
        (offer.client_ipv4.into(), "0.0.0.0/0".parse()?)
    } else {
        nl.add_address(index, IpNet::V6(Ipv6Net::new(offer.client_ipv6, 64)?))
            .await?;
        (offer.client_ipv6.into(), "::/0".parse()?)
    };
    if v4v6 {
        // The PoP's inner address, for keepalives and as the way out.
        nl.add_route_dev(IpNet::V4(Ipv4Net::new(offer.server_ipv4, 32)?), index)
            .await?;
    }
    if o.default_route {
        nl.add_route_dev(default, index).await?;
    }
    if let Some(p) = offer.router_prefix {
        // The prefix is ours: answer for its first address here (handing the rest to a
        // LAN is the operator's business).
        let first = Ipv6Addr::from(u128::from(p.network()) | 1);
        nl.add_address(index, IpNet::V6(Ipv6Net::new(first, 128)?))
            .await?;
    }
    info!(
        tun = %o.name,
        tunnel_type = offer.tunnel_type.as_str(),
        address = %client_addr,
        prefix = ?offer.router_prefix,
        mtu = offer.mtu,
        "tunnel up"
    );

    // SAFETY: the file is owned by the AsyncFd for as long as it is registered.
    let tun = unsafe { AsyncFd::register(tun) }.map_err(|e| e.into_parts().1)?;
    let (ka_interval, ka_to) = match offer.keepalive {
        Some((i, a)) => (o.keepalive.map_or(i, |k| k.min(i)).max(1), Some(a)),
        None => (o.keepalive.unwrap_or(30), None),
    };
    let mut ka = Keepalive::new(Duration::from_secs(u64::from(ka_interval)), Instant::now());
    let ka_id = std::process::id() as u16;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf_tun = vec![0u8; 65_536];
    let mut buf_net = vec![0u8; 65_536];
    loop {
        tokio::select! {
            r = tun.readable() => {
                let mut g = r?;
                match g.try_io(|t| t.get_ref().read(&mut buf_tun)) {
                    Ok(Ok(n)) => {
                        let pkt = &buf_tun[..n];
                        let ok = if v4v6 { pkt.first().is_some_and(|b| b >> 4 == 4) } else { proto41::outgoing(pkt).is_ok() };
                        if ok {
                            if let Err(e) = wire.send(pkt).await {
                                return Ok(End::Lost(format!("sending: {e}")));
                            }
                        }
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_would_block) => {}
                }
            }
            r = wire.recv(&mut buf_net) => match r {
                Ok(Some(inner)) => {
                    if let Some(seq) = keepalive::reply_seq(inner, ka_id) {
                        ka.replied(seq);
                    } else if let Err(e) = tun.get_ref().write(inner) {
                        debug!(error = %e, "write to TUN failed");
                    }
                }
                Ok(None) => {}
                Err(e) => return Ok(End::Lost(format!("receiving: {e}"))),
            },
            _ = tick.tick() => {
                let Some(to) = ka_to else { continue };
                match ka.tick(Instant::now()) {
                    Due::Send(seq) => {
                        let pkt = keepalive::echo_request(client_addr, to, ka_id, seq);
                        if let Err(e) = wire.send(&pkt).await {
                            debug!(error = %e, "keepalive not sent");
                        }
                    }
                    Due::Dead => return Ok(End::Lost("keepalives unanswered".into())),
                    Due::Nothing => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
