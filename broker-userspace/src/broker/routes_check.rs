//! The routes after a start that did not reconcile ([`super::stamp`]). The stamp vouches
//! for the maps; routes live in the kernel's table, where another hand may have changed
//! them while no controller ran, so they are compared with the store once after such a
//! start, in the background: the kernel's routes are listed without the broker, the store
//! is read a page at a time (the broker held for one page), and each difference is
//! checked again against the store, and fixed, under the broker. A change made meanwhile
//! is thus never undone.
use std::collections::BTreeSet;

use ipnet::Ipv6Net;
use tokio::sync::Mutex;
use tracing::info;

use super::{Broker, BrokerError, Projection, Result, RouteOps};
use crate::store::{Store, TunnelFilter};

/// Tunnels read under the broker at a time.
const PAGE: usize = 5000;

/// Compares the kernel's routes (listed through `lister`, a route handle of its own) with
/// the store's prefixes and fixes what differs; returns (added, removed).
pub async fn check_routes<S, P, R, L>(
    broker: &Mutex<Broker<S, P, R>>,
    lister: &L,
) -> Result<(usize, usize)>
where
    S: Store,
    P: Projection,
    R: RouteOps,
    L: RouteOps,
{
    let started = std::time::Instant::now();
    let present = lister.list().await.map_err(BrokerError::Routes)?;
    let mut wanted = BTreeSet::new();
    let mut after = None;
    loop {
        let b = broker.lock().await;
        // This PoP's: another's tunnels are routed at that PoP.
        let mine = TunnelFilter {
            pop: Some(b.store.pop().to_string()),
            ..TunnelFilter::default()
        };
        let page = b.store.tunnel_page(&mine, after, PAGE)?;
        drop(b);
        after = page.last().map(|t| t.spec.id);
        wanted.extend(page.iter().flat_map(|t| t.spec.prefixes()));
        if page.len() < PAGE {
            break;
        }
    }
    let missing: Vec<Ipv6Net> = wanted.difference(&present).copied().collect();
    let stale: Vec<Ipv6Net> = present.difference(&wanted).copied().collect();
    let (mut added, mut removed) = (0, 0);
    if !(missing.is_empty() && stale.is_empty()) {
        let mut b = broker.lock().await;
        for p in missing {
            if b.owns(&p)? {
                b.route_add(&p).await.map_err(BrokerError::Routes)?;
                added += 1;
            }
        }
        for p in stale {
            if !b.owns(&p)? {
                b.route_del(&p).await.map_err(BrokerError::Routes)?;
                removed += 1;
            }
        }
    }
    info!(
        routes = present.len(),
        added,
        removed,
        ms = started.elapsed().as_millis() as u64,
        "routes checked against the store"
    );
    Ok((added, removed))
}

impl<S: Store, P: Projection, R: RouteOps> Broker<S, P, R> {
    /// Whether a tunnel of this PoP has exactly `p` as its link or a routed prefix.
    fn owns(&self, p: &Ipv6Net) -> Result<bool> {
        let filter = TunnelFilter {
            pop: Some(self.store.pop().to_string()),
            prefix: Some(*p),
            ..TunnelFilter::default()
        };
        Ok(self
            .store
            .tunnel_page(&filter, None, 64)?
            .iter()
            .any(|t| t.spec.prefixes().any(|q| q == *p)))
    }
}
