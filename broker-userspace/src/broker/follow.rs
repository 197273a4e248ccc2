//! Following changes made elsewhere (docs/MULTI-POP.md, "Projection and change
//! propagation"). On a shared store another PoP's API or TSP session may change this PoP's
//! tunnels: the store notifies the change (PostgreSQL `NOTIFY`, with the PoP's generation
//! after it), and the PoP projects the tunnel as the store now holds it, exactly as a
//! change made here is projected. Notifications arrive in commit order; what was missed
//! (the listening connection broke) shows as a generation the PoP never applied, and is
//! made good by a full reconcile.
//!
//! `applied` is the generation maps and routes are known to hold: every change up to it
//! is in them. It moves only with notifications (in order) and full reconciles, never with
//! a change made here (whose notification may overtake another's still on its way); the
//! stamp of a PoP that follows is that generation ([`super::stamp`]).
use ipnet::Ipv6Net;
use tracing::{info, warn};

use super::{Broker, BrokerError, Projection, Result, RouteOps};
use crate::store::{Notified, Store};

impl<S: Store, P: Projection, R: RouteOps> Broker<S, P, R> {
    /// From now on the store's notifications say what changed ([`Self::follow_notified`]):
    /// the stamp is the generation applied, not the store's.
    pub fn set_following(&mut self, following: bool) {
        self.following = following;
    }

    /// Projects tunnel `id` as the store holds it now: installed (and its routes) if it
    /// is this PoP's, removed from maps and routes if it is gone or another PoP's.
    pub async fn follow(&mut self, id: u32) -> Result<()> {
        // Never what this PoP remembers: a notification heard while the store's own
        // connection is still coming back must fail (and be caught up), not be applied
        // from an old copy and counted as done.
        let record = self.store.tunnel_now(id)?.filter(|t| self.mine(t));
        let had = self.maps.installed_prefixes(id);
        match record {
            Some(t) => {
                self.install(&self.projected(&t))
                    .map_err(BrokerError::Maps)?;
                self.watch.track(&t);
                let now: Vec<Ipv6Net> = t.spec.prefixes().collect();
                let had = had.unwrap_or_default();
                for p in now.iter().filter(|p| !had.contains(p)) {
                    self.route_add(p).await.map_err(BrokerError::Routes)?;
                }
                for p in had.iter().filter(|p| !now.contains(p)) {
                    self.route_del(p).await.map_err(BrokerError::Routes)?;
                }
            }
            None => {
                self.asleep.remove(&id);
                self.unproven.remove(&id);
                self.watch.untrack(id);
                if let Some(had) = had {
                    self.uninstall(id).map_err(BrokerError::Maps)?;
                    for p in &had {
                        self.route_del(p).await.map_err(BrokerError::Routes)?;
                    }
                    info!(id, "tunnel left this PoP");
                }
            }
        }
        Ok(())
    }

    /// Applies notified changes (in the order they came): each tunnel once, as the store
    /// holds it now; then maps and routes hold every change up to the last generation.
    pub async fn follow_notified(&mut self, changes: &[Notified]) -> Result<()> {
        let Some(last) = changes.iter().map(|c| c.generation).max() else {
            return Ok(());
        };
        let mut ids: Vec<u32> = changes.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if let Err(e) = self.follow(id).await {
                // A later notification must not stand for this one: until a full
                // reconcile, nothing is known to be applied.
                self.applied = None;
                return Err(e);
            }
        }
        if let Some((store, applied)) = self.applied {
            if last > applied {
                self.applied = Some((store, last));
            }
        }
        Ok(())
    }

    /// Writes the endpoints deferred while the store was away ([`Store::defer_endpoint`]);
    /// a tunnel that changed in the store meanwhile keeps the store's, and is projected
    /// as the store has it. Returns how many were written.
    pub async fn flush_deferred(&mut self) -> Result<usize> {
        let done = self.store.flush_deferred(crate::store::now())?;
        let mut written = 0;
        for (id, ok) in done {
            if ok {
                written += 1;
                info!(id, "an endpoint learnt while the store was away is stored");
            } else {
                info!(
                    id,
                    "the tunnel changed in the store while it was away: the store's wins"
                );
                self.follow(id).await?;
            }
        }
        Ok(written)
    }

    /// Whether maps and routes may miss a change: the store's generation is not the one
    /// applied. `confirm`: only if a generation seen by the previous call is still not
    /// applied (a notification may be on its way; the periodic check waits one interval
    /// for it). Reconciles in full when so; returns whether it did.
    pub async fn catch_up(&mut self, confirm: bool) -> Result<bool> {
        let now = self.store.generation()?;
        let behind = |applied: Option<(i64, u64)>, g: (i64, u64)| {
            applied.is_none_or(|a| a.0 != g.0 || a.1 < g.1)
        };
        if !behind(self.applied, now) {
            self.suspect = None;
            return Ok(false);
        }
        if confirm {
            let seen = self.suspect.replace(now);
            if !seen.is_some_and(|g| behind(self.applied, g)) {
                return Ok(false);
            }
        }
        warn!(
            applied = ?self.applied.map(|a| a.1),
            store = now.1,
            "changes to this PoP's tunnels were not notified: reconciling in full"
        );
        self.suspect = None;
        self.reconcile().await?;
        Ok(true)
    }
}
