//! The TIC server's I/O: a TCP listener on `pop.ipv4`, lines in and [`Session`] replies
//! out. All protocol decisions are the session's; this adds the line limit, the idle
//! timeout (a complete line within `idle_timeout_secs`, the session within two minutes),
//! per-source and total caps on sessions, failed logins answered later and later,
//! `starttls`, and the store lookups under the broker's lock.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use super::{
    directory::StoreDirectory,
    session::{Event, Next, PopFacts, Reply, Session},
};
use crate::{
    broker::{Broker, Projection, RouteOps},
    config::TicConfig,
    metrics::Metrics,
    ratelimit::Failures,
    store::Store,
};

/// Concurrent sessions from one source address (a TIC session lasts a second or two;
/// more than this at once is a script, not aiccu).
const SESSIONS_PER_SOURCE: usize = 8;
/// Time for the TLS handshake after `starttls`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole session: aiccu's takes a second or two; a client dripping a line at a time
/// holds its connection no longer than this.
const SESSION_LIMIT: Duration = Duration::from_secs(120);
/// TIC connections held at once, from all sources.
const TOTAL_SESSIONS: usize = 1024;

/// What every connection shares.
pub struct Shared<S, P, R> {
    pub broker: Arc<Mutex<Broker<S, P, R>>>,
    pub config: TicConfig,
    pub pop: PopFacts,
    pub metrics: Arc<Metrics>,
    tls: Option<TlsAcceptor>,
    failures: std::sync::Mutex<Failures<IpAddr>>,
    conns: crate::conns::Conns,
}

impl<S, P, R> Shared<S, P, R> {
    /// Loads the certificate when one is configured.
    pub fn new(
        broker: Arc<Mutex<Broker<S, P, R>>>,
        config: TicConfig,
        pop: PopFacts,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::tls::TlsError> {
        let tls = match (&config.certificate, &config.key) {
            (Some(c), Some(k)) => Some(TlsAcceptor::from(crate::tls::load(c, k)?)),
            _ => None,
        };
        let failures = Failures::new(config.auth_failures_before_delay);
        Ok(Self {
            broker,
            config,
            pop,
            metrics,
            tls,
            failures: std::sync::Mutex::new(failures),
            conns: crate::conns::Conns::new(crate::conns::Caps {
                per_source: SESSIONS_PER_SOURCE,
                total: TOTAL_SESSIONS,
            }),
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures<IpAddr>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Binds the port on `ip`; the accept loop runs until the process ends.
pub async fn serve<S, P, R>(shared: Arc<Shared<S, P, R>>, ip: IpAddr) -> std::io::Result<()>
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    let at = SocketAddr::new(ip, shared.config.port);
    let listener = TcpListener::bind(at).await?;
    info!(%at, tls = shared.tls.is_some(), "TIC listening");
    tokio::spawn(accept(shared, listener));
    Ok(())
}

async fn accept<S, P, R>(shared: Arc<Shared<S, P, R>>, listener: TcpListener)
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    let mut tidy = tokio::time::interval(Duration::from_secs(60));
    loop {
        let (mut stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    crate::logs::warn_limited("tic_accept", &format!("TIC accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tidy.tick() => {
                shared.failures().tidy(Instant::now());
                continue;
            }
        };
        let slot = match shared.conns.open(peer.ip()) {
            Ok(s) => s,
            Err(full) => {
                shared.metrics.tic_session("busy");
                shared.metrics.defended("tic", full.reason());
                let _ = stream
                    .write_all(b"400 Too many sessions from your address\n")
                    .await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let outcome =
                match tokio::time::timeout(SESSION_LIMIT, session(&shared, stream, peer)).await {
                    Ok(o) => o,
                    Err(_) => {
                        shared.metrics.defended("tic", "session_limit");
                        "timeout"
                    }
                };
            shared.metrics.tic_session(outcome);
            debug!(%peer, outcome, "TIC session ended");
        });
    }
}

/// How a stretch of dialogue on one stream ended.
enum Ending {
    /// The session is over with this outcome label.
    Over(&'static str),
    /// `starttls` was accepted: hand the stream to TLS.
    StartTls,
}

/// Runs one connection; returns its outcome label.
async fn session<S, P, R>(
    shared: &Shared<S, P, R>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> &'static str
where
    S: Store,
    P: Projection,
    R: RouteOps,
{
    let challenges = Box::new(|| {
        let bytes: [u8; 16] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    });
    let mut s = Session::new(peer.ip(), shared.tls.is_some(), challenges);
    let mut state = Progress::default();
    let banner = format!("{}\n", s.banner(&shared.pop));
    if stream.write_all(banner.as_bytes()).await.is_err() {
        return "closed";
    }
    let mut buf = Vec::new();
    match dialogue(shared, &mut stream, &mut buf, &mut s, &mut state, peer).await {
        Ending::Over(o) => return state.label(o),
        Ending::StartTls => {}
    }
    // Bytes sent after `starttls` but before the handshake would be taken as commands
    // from inside TLS (the STARTTLS injection attack): a client must wait.
    if !buf.is_empty() {
        return "invalid";
    }
    let Some(acceptor) = shared.tls.clone() else {
        return "invalid";
    };
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TIC TLS handshake failed");
            return "invalid";
        }
        Err(_) => return "timeout",
    };
    s.tls_started();
    match dialogue(shared, &mut tls, &mut buf, &mut s, &mut state, peer).await {
        Ending::Over(o) => state.label(o),
        Ending::StartTls => "invalid",
    }
}

/// What the session did, for its outcome label.
#[derive(Default)]
struct Progress {
    logged_in: bool,
    failed: bool,
}

impl Progress {
    /// `ok` once a user logged in (however it ended but a timeout), `auth_failed` when
    /// only failures were seen.
    fn label(&self, ending: &'static str) -> &'static str {
        match ending {
            "closed" | "quit" if self.logged_in => "ok",
            "closed" | "quit" if self.failed => "auth_failed",
            "quit" => "closed",
            other => other,
        }
    }
}

async fn dialogue<S, P, R, IO>(
    shared: &Shared<S, P, R>,
    io: &mut IO,
    buf: &mut Vec<u8>,
    s: &mut Session,
    progress: &mut Progress,
    peer: SocketAddr,
) -> Ending
where
    S: Store,
    P: Projection,
    R: RouteOps,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let idle = Duration::from_secs(shared.config.idle_timeout_secs);
    let max = shared.config.max_line;
    let mut chunk = vec![0u8; 4096];
    // Idle means no complete line: a byte now and then does not keep a session.
    let mut line_due = tokio::time::Instant::now() + idle;
    loop {
        let reply = match take_line(buf, max) {
            Line::Complete(line) => {
                line_due = tokio::time::Instant::now() + idle;
                let b = shared.broker.lock().await;
                let dir = StoreDirectory {
                    store: &b.store,
                    pop: &shared.pop,
                };
                s.input(&line, crate::store::now(), &dir)
            }
            Line::TooLong => s.overlong(),
            Line::Partial => {
                match tokio::time::timeout_at(line_due, io.read(&mut chunk)).await {
                    Err(_) => return Ending::Over("timeout"),
                    Ok(Ok(0)) | Ok(Err(_)) => return Ending::Over("closed"),
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
        };
        match &reply.event {
            Event::None => {}
            Event::LoggedIn(user) => {
                progress.logged_in = true;
                shared.failures().succeeded(&peer.ip());
                info!(%peer, user, "TIC user logged in");
            }
            Event::AuthFailed => {
                progress.failed = true;
                let delay = shared.failures().failed(peer.ip(), Instant::now());
                crate::logs::warn_limited(
                    "tic_auth_failed",
                    &format!("TIC authentication failed from {}", peer.ip()),
                );
                tokio::time::sleep(delay).await;
            }
        }
        if send(io, &reply).await.is_err() {
            return Ending::Over("closed");
        }
        match reply.next {
            Next::Continue => {}
            Next::StartTls => return Ending::StartTls,
            Next::Close => {
                let _ = io.shutdown().await;
                return Ending::Over(match reply.lines.first() {
                    Some(l) if l.starts_with('2') => "quit",
                    _ if matches!(reply.event, Event::AuthFailed) => "auth_failed",
                    _ => "invalid",
                });
            }
        }
    }
}

async fn send<IO: AsyncWrite + Unpin>(io: &mut IO, reply: &Reply) -> std::io::Result<()> {
    let mut out = String::new();
    for l in &reply.lines {
        out.push_str(l);
        out.push('\n');
    }
    io.write_all(out.as_bytes()).await?;
    io.flush().await
}

/// A line cut from the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Complete(String),
    /// No newline yet; read more.
    Partial,
    /// More than `max` bytes without a newline.
    TooLong,
}

/// Takes the first line (LF or CRLF ended) off `buf`.
fn take_line(buf: &mut Vec<u8>, max: usize) -> Line {
    match buf.iter().position(|b| *b == b'\n') {
        Some(i) if i > max => Line::TooLong,
        Some(i) => {
            let mut line: Vec<u8> = buf.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            Line::Complete(String::from_utf8_lossy(&line).into_owned())
        }
        None if buf.len() > max => Line::TooLong,
        None => Line::Partial,
    }
}

#[cfg(test)]
mod tests;
