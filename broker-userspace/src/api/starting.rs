//! The API's listeners answer while the broker starts: reading the store, loading the
//! data plane and reconciling take seconds at a million tunnels, and a refused connection
//! looks like a dead PoP to a monitor or a load balancer. Until the broker is ready,
//! `/healthz` answers 200, `/readyz` 503 `starting`, and every other request 503 with
//! `Retry-After: 1` and the API's error body.
//!
//! The start keeps the main thread busy, so these answers come from a thread and runtime
//! of their own, on a clone of each listening socket; [`Starting::stop`] ends them before
//! the API takes its sockets over (connections still open are closed).
use std::{net::TcpListener, sync::Arc, thread::JoinHandle};

use axum::{
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use tokio::sync::watch;

use super::ApiError;
use crate::metrics::Metrics;

/// The answers of a starting broker.
pub fn router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "starting\n") }),
        )
        .fallback(|| async {
            (
                [(header::RETRY_AFTER, "1")],
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    None,
                    "the broker is starting (reading its store, loading the data plane): try again shortly",
                ),
            )
                .into_response()
        })
}

/// The thread answering for a starting broker.
pub struct Starting {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

/// Answers on clones of `listeners` until stopped. The sockets are non-blocking from
/// then on (clones share their flags), as the API's tokio listeners want them.
pub fn answer(
    listeners: &[&TcpListener],
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<Starting> {
    let clones = listeners
        .iter()
        .map(|l| l.try_clone())
        .collect::<std::io::Result<Vec<_>>>()?;
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("api-starting".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %e, "no runtime to answer while starting");
                    return;
                }
            };
            rt.block_on(async move {
                let mut servers = Vec::new();
                for l in clones {
                    let l = match l
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(l))
                    {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot answer while starting");
                            continue;
                        }
                    };
                    let mut stopped = stopped.clone();
                    servers.push(tokio::spawn(super::listener::serve(
                        l,
                        router(),
                        tls.clone().map(tokio_rustls::TlsAcceptor::from),
                        super::listener::CAPS,
                        metrics.clone(),
                        async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        },
                    )));
                }
                for s in servers {
                    let _ = s.await;
                }
            });
        })?;
    Ok(Starting {
        stop,
        thread: Some(thread),
    })
}

impl Starting {
    /// Stops answering; returns once the thread and its clones of the sockets are gone.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Starting {
    /// A start that fails stops answering too.
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn get(at: std::net::SocketAddr, path: &str) -> String {
        let mut c = std::net::TcpStream::connect(at).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_starting_broker_answers_and_then_hands_its_socket_over() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let starting = answer(&[&listener], None, Arc::new(Metrics::new(false))).unwrap();
        assert!(get(at, "/healthz").starts_with("HTTP/1.1 200"));
        let ready = get(at, "/readyz");
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(ready.ends_with("starting\n"), "{ready}");
        let other = get(at, "/api/v1/tunnels");
        assert!(other.starts_with("HTTP/1.1 503"), "{other}");
        assert!(other.to_lowercase().contains("retry-after: 1"), "{other}");
        assert!(
            other.contains("\"error\":\"the broker is starting"),
            "{other}"
        );
        starting.stop();

        // The same socket, now the broker's: connections made meanwhile wait for it. (A
        // clone shares the socket's flags: it was made non-blocking, as the API wants it.)
        listener.set_nonblocking(false).unwrap();
        let waiting = std::thread::spawn(move || get(at, "/anything"));
        let (mut c, _) = listener.accept().unwrap();
        // The whole request, so that closing sends no reset.
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"\r\n\r\n") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "the request ended early");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"GET /anything"));
        c.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            .unwrap();
        drop(c);
        assert!(waiting.join().unwrap().starts_with("HTTP/1.1 204"));
    }
}
