//! The heartbeat server: UDP on `pop.ipv4`. A valid beat from a new address moves the
//! tunnel's endpoint there (durably, through the broker) and wakes the tunnel; a periodic
//! sweep puts tunnels whose beats stopped to sleep (data plane only). Invalid datagrams
//! are dropped without an answer, as sixxsd does, and counted.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::Ipv6Net;
use tokio::{net::UdpSocket, sync::Mutex};
use tracing::{debug, info, warn};

use super::{
    message::{self, Reject},
    tracker::Tracker,
};
use crate::{
    broker::{error_chain, Broker, Projection, RouteOps},
    config::HeartbeatConfig,
    metrics::Metrics,
    model::{Endpoint, Kind},
    store::{Store, TunnelChange},
};

/// How often silent tunnels are looked for.
const SWEEP: Duration = Duration::from_secs(5);

/// Binds the port on `ip`; the receive loop runs until the process ends.
pub async fn serve<S, P, R>(
    broker: Arc<Mutex<Broker<S, P, R>>>,
    config: HeartbeatConfig,
    metrics: Arc<Metrics>,
    ip: Ipv4Addr,
) -> std::io::Result<()>
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    let at = SocketAddr::new(IpAddr::V4(ip), config.port);
    let socket = UdpSocket::bind(at).await?;
    info!(%at, timeout_secs = config.timeout_secs, "heartbeat listening");
    let tracker = Tracker::new(Duration::from_secs(config.timeout_secs));
    tokio::spawn(run(broker, socket, tracker, metrics));
    Ok(())
}

async fn run<S, P, R>(
    broker: Arc<Mutex<Broker<S, P, R>>>,
    socket: UdpSocket,
    mut tracker: Tracker,
    metrics: Arc<Metrics>,
) where
    S: Store,
    P: Projection,
    R: RouteOps,
{
    let mut buf = vec![0u8; 2048];
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "heartbeat receive failed");
                        continue;
                    }
                };
                let SocketAddr::V4(from) = from else { continue };
                let mut b = broker.lock().await;
                let outcome = match handle(&mut b, &mut tracker, &buf[..n], *from.ip()).await {
                    Ok(()) => "accepted",
                    Err(Fault::Rejected(r)) => {
                        debug!(%from, why = %r, "heartbeat dropped");
                        r.as_str()
                    }
                    Err(Fault::Broker(e)) => {
                        warn!(%from, error = e, "heartbeat: updating the tunnel failed");
                        "update_failed"
                    }
                };
                metrics.heartbeat(outcome);
            }
            _ = sweep.tick() => {
                let mut b = broker.lock().await;
                put_silent_to_sleep(&mut b, &mut tracker, Instant::now());
            }
        }
    }
}

#[derive(Debug)]
enum Fault {
    Rejected(Reject),
    Broker(String),
}

impl From<Reject> for Fault {
    fn from(r: Reject) -> Self {
        Fault::Rejected(r)
    }
}

/// One datagram from `source`: checks it, then moves and wakes its tunnel.
async fn handle<S, P, R>(
    b: &mut Broker<S, P, R>,
    tracker: &mut Tracker,
    datagram: &[u8],
    source: Ipv4Addr,
) -> Result<(), Fault>
where
    S: Store,
    P: Projection,
    R: RouteOps,
{
    let beat = message::parse(datagram)?;
    beat.check(source, crate::store::now())?;
    // The tunnel is the one whose link /64 holds the named address.
    let link = Ipv6Net::new(beat.ipv6, 64).expect("64 is a valid length");
    let tunnel = b
        .store
        .tunnel_by_link(&link)
        .map_err(|e| Fault::Broker(error_chain(&e)))?
        .filter(|t| t.spec.client_v6() == Some(beat.ipv6))
        .ok_or(Reject::UnknownTunnel)?;
    if tunnel.spec.kind != Kind::Heartbeat {
        return Err(Reject::WrongKind.into());
    }
    beat.verify(&tunnel.password)?;
    let id = tunnel.spec.id;
    let endpoint = Endpoint::Ipv4(source);
    let fresh = tracker.is_new(id, beat.epoch);
    if tunnel.spec.endpoint != endpoint {
        // A beat seen before, from elsewhere: whoever saw it on the wire resends it to
        // point the tunnel at a victim. Only a newer one moves the tunnel.
        if !fresh {
            return Err(Reject::Replayed.into());
        }
        let change = TunnelChange {
            endpoint: Some(endpoint),
            ..Default::default()
        };
        b.update_tunnel_learnt(id, &change)
            .await
            .map_err(|e| Fault::Broker(error_chain(&e)))?;
        info!(id, from = %tunnel.spec.endpoint, to = %source, "heartbeat moved the tunnel");
    }
    tracker.beat(id, Instant::now());
    tracker.accepted(id, beat.epoch);
    if b.set_asleep(id, false)
        .map_err(|e| Fault::Broker(error_chain(&e)))?
    {
        info!(id, "heartbeat woke the tunnel");
    }
    Ok(())
}

/// Puts to sleep the heartbeat tunnels (up in the store) whose beats stopped.
fn put_silent_to_sleep<S, P, R>(b: &mut Broker<S, P, R>, tracker: &mut Tracker, now: Instant)
where
    S: Store,
    P: Projection,
    R: RouteOps,
{
    let live: Vec<u32> = b
        .watched()
        .filter(|(_, w)| w.kind == Kind::Heartbeat)
        .map(|(id, _)| id)
        .collect();
    for id in tracker.sweep(&live, now) {
        match b.set_asleep(id, true) {
            Ok(_) => info!(id, "heartbeats stopped: tunnel asleep"),
            Err(e) => warn!(id, error = %error_chain(&e), "putting the tunnel to sleep failed"),
        }
    }
}

#[cfg(test)]
mod tests;
