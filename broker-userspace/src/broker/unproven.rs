//! Tunnels made for a source that has not shown it receives what is sent to it.
//!
//! TSP over UDP answers any source address, forged ones included, and an anonymous
//! session needs no secret: a forger can negotiate tunnels for addresses it does not own,
//! without seeing a single answer, and so drain the pools. Such a tunnel stays *unproven*
//! until its client's first packet has come through the data plane (gogoc and `broker
//! client tsp` send a keepalive at once); one still unproven at its deadline is removed,
//! and if it was new its prefixes go straight back to the pool (nobody used them). How
//! many may be unproven at once is capped (`tsp.anonymous_unproven_max`). Not durable:
//! after a restart the tunnels left are kept as any other.
use std::time::Instant;

use tracing::{info, warn};

use super::{Broker, BrokerError, Projection, Result, RouteOps};
use crate::store::Store;

/// One tunnel waiting for its client's first packet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unproven {
    deadline: Instant,
    /// Made for this session (its prefixes never carried anything), not taken over.
    fresh: bool,
}

impl<S: Store, P: Projection, R: RouteOps> Broker<S, P, R> {
    /// Waits for tunnel `id`'s client until `deadline`.
    pub fn mark_unproven(&mut self, id: u32, deadline: Instant, fresh: bool) {
        self.unproven.insert(id, Unproven { deadline, fresh });
    }

    /// Tunnels waiting for their client now.
    pub fn unproven(&self) -> usize {
        self.unproven.len()
    }

    /// Forgets the tunnels whose client has been heard, and removes those whose deadline
    /// passed without it. Returns the removed ones.
    pub async fn sweep_unproven(&mut self, now: Instant) -> Result<Vec<u32>> {
        let mut removed = Vec::new();
        let waiting: Vec<(u32, Unproven)> = self.unproven.iter().map(|(k, v)| (*k, *v)).collect();
        for (id, u) in waiting {
            let heard = self
                .maps
                .counters(id)
                .is_some_and(|c| c.from_client_packets > 0);
            if heard {
                self.unproven.remove(&id);
                continue;
            }
            if now < u.deadline {
                continue;
            }
            self.unproven.remove(&id);
            let gone = if u.fresh {
                self.discard_unused(id).await
            } else {
                self.delete_tunnel(id).await.map(|_| ())
            };
            match gone {
                Ok(()) => {
                    info!(
                        id,
                        "TSP: no packet from the client of an unproven tunnel; removed"
                    );
                    removed.push(id);
                }
                Err(BrokerError::Store(crate::store::StoreError::NoSuchTunnel { .. })) => {}
                Err(e) => {
                    warn!(id, error = %super::error_chain(&e), "removing an unproven tunnel failed")
                }
            }
        }
        Ok(removed)
    }

    /// Removes a tunnel that never carried anything: out of the maps and routes, then
    /// out of the store with its prefixes free at once.
    async fn discard_unused(&mut self, id: u32) -> Result<()> {
        let Some(t) = self.store.tunnel(id)? else {
            return Ok(());
        };
        self.uninstall(id).map_err(BrokerError::Maps)?;
        for p in t.spec.prefixes() {
            self.route_del(&p).await.map_err(BrokerError::Routes)?;
        }
        self.store.discard_tunnel(id)?;
        self.asleep.remove(&id);
        Ok(())
    }
}
