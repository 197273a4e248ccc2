//! A TCP relay from the root namespace's loopback into a lab namespace: each connection
//! accepted at `at` is carried to `target` as seen inside the namespace (that side's
//! socket is made by a thread that entered it). No route leaves the root namespace; only
//! what is sent to the loopback port crosses. For WebDriver (the portal's browser tests)
//! and for `cargo xtask run`, which shows the lab's portal on 127.0.0.1.
use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};

use crate::netns::NetNs;

/// Relays until dropped (connections already carried end when either side closes).
pub struct Relay {
    pub at: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(bind: SocketAddr, ns: &NetNs, target: SocketAddr) -> Result<Self> {
        let listener =
            TcpListener::bind(bind).with_context(|| format!("binding the relay to {bind}"))?;
        listener.set_nonblocking(true)?;
        let at = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            let path = ns.path();
            std::thread::spawn(move || relay_loop(listener, &path, target, &stop));
        }
        Ok(Self { at, stop })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay_loop(listener: TcpListener, ns_path: &str, target: SocketAddr, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let path = ns_path.to_string();
                std::thread::spawn(move || {
                    let _ = client.set_nonblocking(false);
                    // A socket belongs to the namespace of the thread that made it.
                    let inner = std::thread::spawn(move || {
                        crate::netns::enter(&path).ok()?;
                        TcpStream::connect(target).ok()
                    })
                    .join()
                    .ok()
                    .flatten();
                    if let Some(inner) = inner {
                        pipe(client, inner);
                    }
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => return,
        }
    }
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let (mut a, mut b) = (a, b);
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut b2, &mut a2);
    let _ = a2.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}
