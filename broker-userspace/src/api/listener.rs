//! The API's accept loop: what `axum::serve` does, plus what an internet-facing listener
//! needs. At most `caps` connections (per source and in all); the request head must
//! arrive within [`HEADER_TIMEOUT`] and the whole exchange end within
//! [`CONNECTION_TIMEOUT`] (a client sending a byte at a time holds nothing for long); one
//! request per connection; HTTPS when a certificate is configured.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{extract::ConnectInfo, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    conns::{Caps, Conns},
    metrics::Metrics,
};

/// Time for a request's head (line and headers) to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a whole connection: TLS handshake, request, body, answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the API holds.
pub const CAPS: Caps = Caps {
    per_source: 32,
    total: 1024,
};

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    caps: Caps,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let conns = Conns::new(caps);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    crate::logs::warn_limited("api_accept", &format!("API accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let slot = match conns.open(peer.ip()) {
            Ok(s) => s,
            Err(full) => {
                metrics.defended("api", full.reason());
                continue;
            }
        };
        let router = router.clone();
        let tls = tls.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let served = tokio::time::timeout(CONNECTION_TIMEOUT, async move {
                match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(s) => connection(s, router, peer).await,
                        Err(_) => metrics.defended("api", "tls_handshake"),
                    },
                    None => connection(stream, router, peer).await,
                }
            })
            .await;
            if served.is_err() {
                tracing::debug!(%peer, "API connection over its time");
            }
        });
    }
}

async fn connection<I>(io: I, router: Router, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = router.layer(axum::Extension(ConnectInfo(peer)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false);
    let _ = http
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(caps: Caps) -> SocketAddr {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = tcp.local_addr().unwrap();
        let router = Router::new().route("/", get(|| async { "ok" }));
        let metrics = Arc::new(Metrics::new(false));
        tokio::spawn(serve(
            tcp,
            router,
            None,
            caps,
            metrics,
            std::future::pending(),
        ));
        at
    }

    async fn read_all(s: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    // The clock is paused and advances when everything waits: the timeouts pass at once.
    #[tokio::test(start_paused = true)]
    async fn a_request_head_that_never_ends_is_cut_off() {
        let at = server(CAPS).await;
        let mut slow = tokio::net::TcpStream::connect(at).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let answer = read_all(&mut slow).await;
        assert!(!answer.contains("200"), "{answer}");
        let waited = started.elapsed();
        assert!(
            waited >= HEADER_TIMEOUT && waited < CONNECTION_TIMEOUT,
            "{waited:?}"
        );
        // A whole request is served, once per connection.
        let mut ok = tokio::net::TcpStream::connect(at).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_all(&mut ok).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
            "{answer}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let at = server(Caps {
            per_source: 2,
            total: 10,
        })
        .await;
        let _a = tokio::net::TcpStream::connect(at).await.unwrap();
        let _b = tokio::net::TcpStream::connect(at).await.unwrap();
        let mut c = tokio::net::TcpStream::connect(at).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(read_all(&mut c).await, "");
        assert!(
            started.elapsed() < HEADER_TIMEOUT,
            "closed at once, not timed out"
        );
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::ServerName};

    #[tokio::test]
    async fn https_with_a_certificate_and_the_public_listener_serves_only_public_routes() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("broker-api-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
        let server_config = crate::tls::load(&c, &k).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        // The public router over a broker: /healthz and /nic/update, nothing else.
        let state = crate::api::AppState::new(
            Arc::new(tokio::sync::Mutex::new(crate::broker::tests::broker())),
            Some("admin-token-0123456789".into()),
            Arc::new(Metrics::new(false)),
        );
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = tcp.local_addr().unwrap();
        tokio::spawn(serve(
            tcp,
            crate::api::public_router(state),
            Some(TlsAcceptor::from(server_config)),
            CAPS,
            Arc::new(Metrics::new(false)),
            std::future::pending(),
        ));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let get = |path: &'static str| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
                let mut s = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .expect("TLS");
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token-0123456789\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out).await;
                String::from_utf8_lossy(&out).into_owned()
            }
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        // Even with the administrator's token, the administration is not on this listener.
        assert!(get("/api/v1/tunnels").await.starts_with("HTTP/1.1 404"));
        assert!(get("/api/v1/users").await.starts_with("HTTP/1.1 404"));
        assert!(get("/metrics").await.starts_with("HTTP/1.1 404"));
        // Plain HTTP on the TLS listener gets nothing.
        let mut plain = tokio::net::TcpStream::connect(at).await.unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = plain.read_to_end(&mut out).await;
        assert!(!String::from_utf8_lossy(&out).contains("200"));
    }
}
