//! Restarting without reconciling. Once maps and routes hold the store exactly, the
//! controller marks the maps with a stamp: a hash of the store's identity and generation
//! (which every change to a tunnel moves, triggers counting it), the PoP's side and the
//! route settings. A controller that starts and finds the stamp its store and config give
//! knows that nothing can differ, and rebuilds only what it keeps beside the maps (the
//! watched tunnels, which ones sleep) instead of reading and comparing every tunnel.
//!
//! The stamp is written only when it is true: at the end of a full reconcile, and on the
//! liveness tick and at shutdown, under the broker lock (no change half done), unless a
//! write to maps or routes failed since the last full reconcile. The data plane clears it
//! before its first write after it was set, so a controller killed in the middle of any
//! change leaves no stamp.
use std::collections::BTreeSet;

use sha1::{Digest, Sha1};
use tracing::info;

use super::{Broker, BrokerError, Projection, Result, RouteOps};
use crate::{dataplane::Reconciled, store::Store};

impl<S: Store, P: Projection, R: RouteOps> Broker<S, P, R> {
    /// The stamp of maps and routes that hold this store as of `generation`.
    pub(super) fn stamp_of(&self, (store, generation): (i64, u64)) -> u64 {
        let mut h = Sha1::new();
        h.update(format!(
            "{store} {generation} {:?} {}",
            self.pop,
            self.routes.identity()
        ));
        let digest = h.finalize();
        let stamp = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        stamp.max(1)
    }

    /// At start: when the maps carry the stamp of this store and config, only the watch
    /// list and the sleeping tunnels are rebuilt (from the store's watched tunnels and
    /// the maps' down ones) and the routes are left to [`super::check_routes`]; otherwise a
    /// full [`Broker::reconcile`].
    pub async fn resume(&mut self) -> Result<Reconciled> {
        let started = std::time::Instant::now();
        let generation = self.store.generation()?;
        if self.maps.stamp() != Some(self.stamp_of(generation)) {
            // The maps' down tunnels are not needed by a full reconcile.
            drop(self.maps.take_adopted_down());
            return self.reconcile().await;
        }
        let watched = match self.read_ahead(crate::store::Ahead::Watched)? {
            Some((_, t)) => t,
            None => self.store.watched()?,
        };
        self.applied = Some(generation);
        self.watch.rebuild(&watched);
        self.routes_unchecked = true;
        // A watched tunnel (up in the store) that the maps hold as down was asleep.
        let down: BTreeSet<u32> = self.maps.take_adopted_down().into_iter().collect();
        self.asleep = watched
            .iter()
            .map(|t| t.spec.id)
            .filter(|id| down.contains(id))
            .collect();
        info!(
            watched = watched.len(),
            asleep = self.asleep.len(),
            ms = started.elapsed().as_millis() as u64,
            "maps and routes carry the store's stamp: not reconciled"
        );
        Ok(Reconciled::default())
    }

    /// Whether the start skipped reconciling, so that the routes are still to be checked
    /// ([`super::check_routes`]); true once.
    pub fn take_routes_unchecked(&mut self) -> bool {
        std::mem::take(&mut self.routes_unchecked)
    }

    /// Marks the maps as holding the store as it is now, unless a write to maps or routes
    /// failed since the last full reconcile. The caller holds the broker (no change is
    /// half done). A PoP that follows a shared store's notifications marks them with the
    /// generation it applied ([`super::follow`]): changes made elsewhere may be on their
    /// way.
    pub fn stamp(&mut self) -> Result<()> {
        if self.unsure {
            return Ok(());
        }
        let generation = match (self.following, self.applied) {
            (false, _) => self.store.generation()?,
            (true, Some(applied)) => applied,
            (true, None) => return Ok(()),
        };
        // The data plane writes it only when it changed.
        let stamp = self.stamp_of(generation);
        self.maps.set_stamp(stamp).map_err(BrokerError::Maps)
    }
}
