//! The TSP server's I/O: TCP connections and UDP datagrams in, [`Session`] steps out. All
//! protocol decisions are the session's; this adds sockets, timeouts, per-source limits,
//! the UDP retransmission cache and the broker calls.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Mutex,
};
use tracing::{debug, info};

use super::{
    frame::{self, TcpFramer},
    limits::Limits,
    provider,
    session::{Policy, Session, Step, Transport},
    status::Status,
};
use crate::{
    broker::{Broker, Projection, RouteOps},
    config::TspConfig,
    metrics::Metrics,
    store::Store,
};

/// Pause between the `rspauth` line and `200 Success` on TCP: gogoc reads them with two
/// `recv` calls and would hang if both arrived in the first.
const DIGEST_GAP: Duration = Duration::from_millis(200);

/// Whether the tunnel an established TCP session got is gone, not up, or asleep.
async fn tunnel_lapsed<S, P, R>(shared: &Shared<S, P, R>, id: u32) -> bool
where
    S: Store,
    P: Projection,
    R: RouteOps,
{
    let b = shared.broker.lock().await;
    if b.is_asleep(id) {
        return true;
    }
    // A store error is no reason to cut a client off.
    b.store
        .tunnel(id)
        .is_ok_and(|t| t.is_none_or(|t| t.spec.state != crate::model::State::Up))
}

/// What every connection and datagram shares.
pub struct Shared<S, P, R> {
    pub broker: Arc<Mutex<Broker<S, P, R>>>,
    pub config: TspConfig,
    pub metrics: Arc<Metrics>,
    limits: std::sync::Mutex<Limits>,
    /// Every TCP connection, negotiating or established (gogoc keeps its connection while
    /// the tunnel runs): many clients may share a NAT's address, but not without end.
    tcp: crate::conns::Conns,
}

/// TCP connections (negotiating and established) from one address, and in all.
pub const TCP_CAPS: crate::conns::Caps = crate::conns::Caps {
    per_source: 64,
    total: 4096,
};

impl<S, P, R> Shared<S, P, R> {
    pub fn new(
        broker: Arc<Mutex<Broker<S, P, R>>>,
        config: TspConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limits = Limits::new(
            config.sessions_per_source,
            config.auth_failures_before_delay,
        );
        Self {
            broker,
            config,
            metrics,
            limits: std::sync::Mutex::new(limits),
            tcp: crate::conns::Conns::new(TCP_CAPS),
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            auth: self.config.auth.clone(),
            tunnel_types: self.config.tunnel_types.clone(),
            realm: self.config.realm.clone(),
            keepalive_secs: self.config.keepalive_secs,
        }
    }

    fn limits(&self) -> std::sync::MutexGuard<'_, Limits> {
        self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Binds TCP and UDP on each address; the tasks run until the process ends.
pub async fn serve<S, P, R>(shared: Arc<Shared<S, P, R>>, addrs: &[IpAddr]) -> std::io::Result<()>
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    for ip in addrs {
        let at = SocketAddr::new(*ip, shared.config.port);
        let tcp = TcpListener::bind(at).await?;
        let udp = Arc::new(UdpSocket::bind(at).await?);
        info!(%at, "TSP listening on TCP and UDP");
        tokio::spawn(accept(shared.clone(), tcp));
        tokio::spawn(datagrams(shared.clone(), udp));
    }
    Ok(())
}

async fn accept<S, P, R>(shared: Arc<Shared<S, P, R>>, listener: TcpListener)
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                crate::logs::warn_limited("tsp_accept", &format!("TSP accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match shared.tcp.open(peer.ip()) {
            Ok(s) => s,
            Err(full) => {
                shared.metrics.tsp_session("tcp", "busy");
                shared.metrics.defended("tsp", full.reason());
                let _ = stream
                    .write_all(Status::ServerTooBusy.line().as_bytes())
                    .await;
                continue;
            }
        };
        if !shared.limits().open(peer.ip()) {
            shared.metrics.tsp_session("tcp", "busy");
            let _ = stream
                .write_all(Status::ServerTooBusy.line().as_bytes())
                .await;
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let outcome = tcp_session(&shared, &mut stream, peer).await;
            if outcome != "ended" {
                // An established session released its place when it got its tunnel.
                shared.limits().close(peer.ip());
            }
            debug!(%peer, outcome, "TSP session over TCP ended");
        });
    }
}

/// Runs one TCP session; returns its outcome label.
async fn tcp_session<S, P, R>(
    shared: &Shared<S, P, R>,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> &'static str
where
    S: Store,
    P: Projection,
    R: RouteOps,
{
    let mut session = Session::new(Transport::Tcp, peer, shared.policy());
    let mut framer = TcpFramer::default();
    let deadline = Instant::now() + Duration::from_secs(shared.config.negotiation_timeout_secs);
    let check = Duration::from_secs(u64::from(shared.config.keepalive_secs.max(1)));
    let mut held: Option<u32> = None;
    let mut buf = vec![0u8; 4096];
    let outcome = loop {
        let msg = match framer.next(shared.config.max_message) {
            Ok(Some(m)) => m,
            Ok(None) => {
                let read = if let Some(id) = held {
                    // The client keeps the connection open while its tunnel runs (gogoc),
                    // silent; it is let go once the tunnel is gone, not up, or asleep
                    // (five keepalive intervals without a packet: the client went away).
                    match tokio::time::timeout(check, stream.read(&mut buf)).await {
                        Ok(r) => r,
                        Err(_) if tunnel_lapsed(shared, id).await => {
                            shared.metrics.defended("tsp", "held_tunnel_asleep");
                            debug!(%peer, tunnel = id, "TSP connection let go: its tunnel sleeps");
                            break "ended";
                        }
                        Err(_) => continue,
                    }
                } else {
                    match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
                        Ok(r) => r,
                        Err(_) => break "timeout",
                    }
                };
                match read {
                    Ok(0) | Err(_) => {
                        break if session.established() {
                            "ended"
                        } else {
                            "closed"
                        };
                    }
                    Ok(n) => {
                        framer.push(&buf[..n]);
                        continue;
                    }
                }
            }
            Err(frame::TooLong) => {
                let _ = stream
                    .write_all(Status::InvalidRequest.line().as_bytes())
                    .await;
                break "invalid";
            }
        };
        let step = session.input(&msg);
        match drive(shared, &mut session, step, peer).await {
            Driven::Send(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    break "closed";
                }
                if let Some(p) = session.take_pending() {
                    tokio::time::sleep(DIGEST_GAP).await;
                    if stream.write_all(&p).await.is_err() {
                        break "closed";
                    }
                }
            }
            Driven::Established(bytes, tunnel) => {
                let _ = stream.write_all(&bytes).await;
                held = Some(tunnel);
                shared.metrics.tsp_session("tcp", "established");
                // The limit is on negotiations; a client keeps its connection while its
                // tunnel runs (gogoc), several clients may share a NAT's address.
                shared.limits().close(peer.ip());
            }
            Driven::Close(bytes, outcome, delay) => {
                tokio::time::sleep(delay).await;
                let _ = stream.write_all(&bytes).await;
                break outcome;
            }
        }
    };
    if outcome != "ended" {
        shared.metrics.tsp_session("tcp", session.outcome(outcome));
    }
    outcome
}

/// A login that went through: the source's failures are forgotten.
fn succeeded<S, P, R>(shared: &Shared<S, P, R>, next: &Step, peer: SocketAddr, user: &str) {
    if matches!(next, Step::Reply(_)) {
        shared.limits().succeeded(peer.ip());
        info!(%peer, user, "TSP user authenticated");
    }
}

/// A session step carried through to something to send.
enum Driven {
    Send(Vec<u8>),
    /// The accept's answer, and the tunnel it got.
    Established(Vec<u8>, u32),
    /// Send after the delay (failed authentications are answered late, the later the
    /// more a source fails), then end the session.
    Close(Vec<u8>, &'static str, Duration),
}

/// Answers the session's questions (passwords, tunnels) until it has something to send.
async fn drive<S, P, R>(
    shared: &Shared<S, P, R>,
    session: &mut Session,
    mut step: Step,
    peer: SocketAddr,
) -> Driven
where
    S: Store,
    P: Projection,
    R: RouteOps,
{
    loop {
        step = match step {
            Step::Reply(b) => return Driven::Send(b),
            Step::Silent => return Driven::Send(Vec::new()),
            Step::NeedPassword { user } => {
                let secrets = shared
                    .broker
                    .lock()
                    .await
                    .store
                    .user(&user)
                    .ok()
                    .flatten()
                    .map(|u| u.secrets);
                if let Some(s) = &secrets {
                    if s.digest_realm != shared.config.realm {
                        crate::logs::warn_limited(
                            "tsp_realm",
                            &format!(
                                "user {user}'s DIGEST-MD5 secret was made for realm {:?}, \
                                 tsp.realm is {:?}: DIGEST-MD5 fails until the password is \
                                 set again (PLAIN works)",
                                s.digest_realm, shared.config.realm
                            ),
                        );
                    }
                }
                let next = session.password(secrets.as_ref());
                succeeded(shared, &next, peer, &user);
                next
            }
            Step::VerifyPlain { password, hash } => {
                // argon2: tens of milliseconds, not on the thread every service shares.
                let ok = tokio::task::spawn_blocking(move || {
                    crate::secret::verify_password(&password, &hash)
                })
                .await
                .unwrap_or(false);
                let next = session.plain_checked(ok);
                succeeded(shared, &next, peer, "");
                next
            }
            Step::NeedTunnel(ask) => {
                let result = {
                    let mut b = shared.broker.lock().await;
                    provider::provide_or_redirect(&mut b, &ask, &shared.config).await
                };
                let result = match result {
                    Ok(provider::Provided::Redirect(brokers)) => {
                        info!(%peer, user = ask.user.as_deref().unwrap_or_default(), ?brokers, "TSP client redirected to its tunnel's PoP");
                        let reply = session.redirected(&brokers);
                        return Driven::Close(reply, "redirected", Duration::ZERO);
                    }
                    Ok(provider::Provided::Offer(id, offer)) => Ok((id, offer)),
                    Err(status) => Err(status),
                };
                if let Ok((id, offer)) = &result {
                    info!(
                        %peer,
                        user = ask.user.as_deref().unwrap_or("(anonymous)"),
                        tunnel = id,
                        kind = offer.tunnel_type.as_str(),
                        "TSP tunnel offered"
                    );
                }
                session.offered(result)
            }
            Step::Refused { reply, status } => {
                // Whether the request or the tunnel was refused, the same line (and at
                // the session's end the same outcome, `refused`).
                crate::logs::info_limited(
                    "tsp_refused",
                    &format!("TSP tunnel refused code={} to {peer}", status.code()),
                );
                return Driven::Send(reply);
            }
            Step::Established { tunnel, reply } => {
                info!(%peer, tunnel, "TSP tunnel established");
                return Driven::Established(reply, tunnel);
            }
            Step::Close(b) => {
                if session.failure().is_some() {
                    let delay = shared.limits().failed(peer.ip(), Instant::now());
                    crate::logs::warn_limited(
                        "tsp_auth_failed",
                        &format!("TSP authentication failed from {}", peer.ip()),
                    );
                    return Driven::Close(b, "auth_failed", delay);
                }
                return Driven::Close(b, "invalid", Duration::ZERO);
            }
        };
    }
}

/// A UDP client's session and the last reply, resent when a request is retransmitted.
struct UdpPeer {
    session: Session,
    /// The last request datagram (whole) and the reply it got.
    last: Option<Last>,
    started: Instant,
    seen: Instant,
    /// Ended: the last reply is due at this time (a failed authentication's is delayed;
    /// until then retransmissions get nothing), and the entry goes a little later.
    closed: Option<Instant>,
    /// Holds a place in the per-source limit (until established or gone).
    counted: bool,
}

/// The last exchange of a UDP session, for retransmissions.
struct Last {
    request: Vec<u8>,
    reply: Vec<u8>,
    /// Times the reply was sent again.
    resent: u8,
}

impl Last {
    fn new(request: Vec<u8>, reply: Vec<u8>) -> Self {
        Self {
            request,
            reply,
            resent: 0,
        }
    }
}

/// A retransmitted request gets the cached reply at most this often: gogoc retries a few
/// times; a forger repeating a request to reflect the (larger) reply gets no more.
const MAX_RESENDS: u8 = 3;

/// Answers to a source whose session has no tunnel yet (it has not shown that it gets
/// them): a burst for a negotiation, then one every half second. Any UDP service
/// answering a forged source reflects; this bounds what one victim receives.
const UNPROVEN_REPLIES: crate::ratelimit::Rate = crate::ratelimit::Rate::new(2.0, 16.0);
/// Sources tracked at once for [`UNPROVEN_REPLIES`].
const UNPROVEN_SOURCES: usize = 65_536;

impl UdpPeer {
    /// A new session, holding a place in the per-source limit.
    fn new<S, P, R>(shared: &Shared<S, P, R>, peer: SocketAddr, now: Instant) -> Self {
        Self {
            session: Session::new(Transport::Udp, peer, shared.policy()),
            last: None,
            started: now,
            seen: now,
            closed: None,
            counted: true,
        }
    }
}

/// How long an ended UDP session's last reply stays available for retransmissions.
const LINGER: Duration = Duration::from_secs(10);

async fn datagrams<S, P, R>(shared: Arc<Shared<S, P, R>>, socket: Arc<UdpSocket>)
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    let mut peers: HashMap<SocketAddr, UdpPeer> = HashMap::new();
    let mut budget = crate::ratelimit::Keyed::new(UNPROVEN_REPLIES, UNPROVEN_SOURCES);
    let mut buf = vec![0u8; 65_536];
    let mut tidy = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "TSP UDP receive failed");
                    continue;
                }
            },
            _ = tidy.tick() => {
                expire_udp(&shared, &mut peers);
                budget.tidy(Instant::now());
                continue;
            }
        };
        let datagram = &buf[..n];
        let Ok((header, payload)) = frame::parse_datagram(datagram) else {
            // Not TSP (v6udpv4 data the data plane did not take, or noise).
            continue;
        };
        let now = Instant::now();
        let proven = peers.get(&peer).is_some_and(|p| p.session.established());
        if !proven && !budget.take(&peer.ip(), now) {
            shared.metrics.defended("tsp", "udp_reply_budget");
            continue;
        }
        if let Some(p) = peers.get_mut(&peer) {
            p.seen = now;
            let retransmitted = p.last.as_mut().filter(|l| l.request == datagram);
            if let Some(last) = retransmitted {
                // The same answer, the state does not move (and a delayed one stays so).
                if last.resent < MAX_RESENDS && p.closed.is_none_or(|due| now >= due) {
                    last.resent += 1;
                    let _ = socket.send_to(&last.reply, peer).await;
                } else if last.resent >= MAX_RESENDS {
                    shared.metrics.defended("tsp", "udp_resends");
                }
                continue;
            }
            if p.closed.is_some() {
                if !payload.starts_with(b"VERSION=") {
                    continue;
                }
                // The same client starting over from the same address and port.
                if !p.counted && !shared.limits().open(peer.ip()) {
                    continue;
                }
                *p = UdpPeer::new(&shared, peer, now);
            }
        } else {
            if !shared.limits().open(peer.ip()) {
                shared.metrics.tsp_session("udp", "busy");
                let d = frame::datagram(&header, Status::ServerTooBusy.line().as_bytes());
                let _ = socket.send_to(&d, peer).await;
                continue;
            }
            peers.insert(peer, UdpPeer::new(&shared, peer, now));
        }
        let p = peers.get_mut(&peer).expect("inserted above");
        let request = datagram.to_vec();
        if payload.len() > shared.config.max_message {
            let d = frame::datagram(&header, Status::InvalidRequest.line().as_bytes());
            let _ = socket.send_to(&d, peer).await;
            close(&shared, p, request, d, now, "invalid");
            continue;
        }
        let step = p.session.input(payload);
        match drive(&shared, &mut p.session, step, peer).await {
            Driven::Send(bytes) => {
                let d = frame::datagram(&header, &bytes);
                let _ = socket.send_to(&d, peer).await;
                p.last = Some(Last::new(request, d));
            }
            Driven::Established(bytes, _) => {
                let d = frame::datagram(&header, &bytes);
                let _ = socket.send_to(&d, peer).await;
                p.last = Some(Last::new(request, d));
                shared.metrics.tsp_session("udp", "established");
                // The limit is on negotiations (see the TCP side).
                if std::mem::take(&mut p.counted) {
                    shared.limits().close(peer.ip());
                }
            }
            Driven::Close(bytes, outcome, delay) => {
                let d = frame::datagram(&header, &bytes);
                // Not inline: one slowed-down source must not hold up the others.
                let (socket, late) = (socket.clone(), d.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&late, peer).await;
                });
                close(&shared, p, request, d, now + delay, outcome);
            }
        }
    }
}

/// Ends a UDP session: its last reply is kept for retransmissions until it lingers out.
fn close<S, P, R>(
    shared: &Shared<S, P, R>,
    p: &mut UdpPeer,
    request: Vec<u8>,
    reply: Vec<u8>,
    due: Instant,
    outcome: &'static str,
) {
    p.last = Some(Last::new(request, reply));
    p.closed = Some(due);
    shared
        .metrics
        .tsp_session("udp", p.session.outcome(outcome));
}

/// Sessions that did not get their tunnel in time, and established ones silent for five
/// keepalive intervals (the client went away; the data plane's liveness watches the
/// tunnel itself).
fn expire_udp<S, P, R>(shared: &Shared<S, P, R>, peers: &mut HashMap<SocketAddr, UdpPeer>) {
    let now = Instant::now();
    let negotiation = Duration::from_secs(shared.config.negotiation_timeout_secs);
    let idle = Duration::from_secs(5 * u64::from(shared.config.keepalive_secs));
    let gone: Vec<(SocketAddr, Option<&'static str>)> = peers
        .iter()
        .filter_map(|(a, p)| match p.closed {
            Some(due) => (now > due + LINGER).then_some((*a, None)),
            None if p.session.established() => {
                (now.duration_since(p.seen) > idle).then_some((*a, None))
            }
            None => (now.duration_since(p.started) > negotiation)
                .then(|| (*a, Some(p.session.outcome("timeout")))),
        })
        .collect();
    for (a, outcome) in gone {
        if peers.remove(&a).is_some_and(|p| p.counted) {
            shared.limits().close(a.ip());
        }
        if let Some(o) = outcome {
            shared.metrics.tsp_session("udp", o);
        }
    }
    shared.limits().tidy(now);
}
