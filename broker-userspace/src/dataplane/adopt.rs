//! Taking over the maps an earlier controller pinned, and making them match the store.
//!
//! The maps are a projection of the store, so after a restart (clean or not) the
//! controller reads back what the maps hold, then writes only the differences: tunnels
//! that keep their slot keep forwarding and keep their counters throughout.
use std::{collections::HashMap as StdHashMap, net::Ipv4Addr};

use aya::maps::{Array, HashMap};
use broker_common::{
    consts::map_names as names,
    maps::{Endpoint4, PrefixKey, Settings, Tunnel, TunnelState},
};
use ipnet::Ipv6Net;
use tracing::info;

use super::{
    prefixes, slots::Installed, to_map_value, Dataplane, DataplaneError, Options, Result, SlotTable,
};
use crate::model::TunnelSpec;

/// What [`Dataplane::reconcile`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub installed: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Lookup entries pointing nowhere valid (left by a controller killed mid-update).
    pub orphans: usize,
}

/// The prefixes a tunnel map value holds (its link /64 and routed prefixes).
fn prefixes_of(t: &Tunnel) -> Vec<Ipv6Net> {
    let net = |upper: u64, len: u8| {
        let mut o = [0u8; 16];
        o[..8].copy_from_slice(&upper.to_ne_bytes());
        Ipv6Net::new(o.into(), len).expect("at most 64")
    };
    let mut out = vec![net(t.link64, 64)];
    for r in t.routed.iter().take(t.n_routed as usize) {
        out.push(net(r.net, r.mask.count_ones() as u8));
    }
    out
}

impl Dataplane {
    /// Rebuilds the bookkeeping (slots, prefix lengths, tunnel space, settings) from maps
    /// an earlier controller left.
    pub(super) fn adopt(&mut self, opts: &Options) -> Result<()> {
        let settings: Array<_, Settings> = self.map(names::SETTINGS)?;
        let old = settings.get(&0, 0).map_err(|source| DataplaneError::Map {
            name: names::SETTINGS,
            source,
        })?;
        self.settings.pop_v4 = old.pop_v4;
        if opts.nexthop_cache {
            // Whatever the old process cached may predate changes nobody saw.
            self.settings.nexthop_gen = old.nexthop_gen.wrapping_add(1).max(1);
        }

        let tunnels: Array<_, Tunnel> = self.map(names::TUNNELS)?;
        // A pinned map keeps the size it was created with.
        let capacity = tunnels.len();
        let mut used: Vec<(u32, Installed)> = Vec::new();
        let mut duplicates = Vec::new();
        for slot in 0..tunnels.len() {
            let t = tunnels
                .get(&slot, 0)
                .map_err(|source| DataplaneError::Map {
                    name: names::TUNNELS,
                    source,
                })?;
            if t.state == TunnelState::Empty as u8 {
                continue;
            }
            if used.iter().any(|(id, _)| *id == t.id) {
                duplicates.push(slot);
                continue;
            }
            used.push((
                t.id,
                Installed {
                    slot,
                    endpoint: Endpoint4 {
                        remote: t.remote_v4,
                        local: t.local_v4,
                    },
                    prefixes: prefixes_of(&t),
                },
            ));
        }
        for (_, i) in &used {
            for p in &i.prefixes {
                self.space.cover(*p);
                self.lengths.add(p.prefix_len());
            }
        }
        let (lens, n_lens) = self.lengths.table();
        let (space, n_space) = self.space.table();
        self.settings.lens = lens;
        self.settings.n_lens = n_lens;
        self.settings.space = space;
        self.settings.n_space = n_space;
        if capacity != opts.max_tunnels {
            tracing::warn!(
                pinned = capacity,
                configured = opts.max_tunnels,
                "dataplane.max_tunnels changed, but the pinned maps keep their size; \
                 `broker dataplane detach` and a restart resize them (not hitless)"
            );
        }
        self.max_tunnels = capacity;
        self.slots = SlotTable::from_used(capacity, used);
        for slot in duplicates {
            // A second slot for the same id: only a killed update leaves that.
            self.write_tunnel(slot, &Tunnel::EMPTY)?;
        }
        Ok(())
    }

    /// Makes the maps hold exactly `specs` with `pop_v4` as the local endpoint, writing
    /// only what differs, then removes lookup entries that point at no tunnel or at a
    /// tunnel that does not own them.
    pub fn reconcile(&mut self, specs: &[TunnelSpec], pop_v4: Ipv4Addr) -> Result<Reconciled> {
        let mut r = Reconciled::default();
        if self.settings.pop_v4 != pop_v4.octets() {
            self.set_pop(pop_v4)?;
        }
        let wanted: StdHashMap<u32, &TunnelSpec> = specs.iter().map(|s| (s.id, s)).collect();
        for id in self.slots.ids() {
            if !wanted.contains_key(&id) {
                self.remove(id)?;
                r.removed += 1;
            }
        }
        for spec in specs {
            if self.matches(spec, pop_v4)? {
                r.unchanged += 1;
            } else {
                self.upsert(spec, pop_v4)?;
                r.installed += 1;
            }
        }
        r.orphans = self.sweep()?;
        self.invalidate_nexthops()?;
        if r != Reconciled::default() {
            info!(?r, "data plane reconciled with the store");
        }
        Ok(r)
    }

    /// Whether the maps already hold `spec` exactly.
    fn matches(&self, spec: &TunnelSpec, pop_v4: Ipv4Addr) -> Result<bool> {
        let Some(installed) = self.slots.get(spec.id) else {
            return Ok(false);
        };
        let tunnels: Array<_, Tunnel> = self.map(names::TUNNELS)?;
        let current = tunnels
            .get(&installed.slot, 0)
            .map_err(|source| DataplaneError::Map {
                name: names::TUNNELS,
                source,
            })?;
        let mut want = to_map_value(spec, pop_v4);
        // The key is not written by this build yet: compare what is.
        want.key = current.key;
        let prefixes: Vec<Ipv6Net> = spec.prefixes().map(|p| p.trunc()).collect();
        Ok(current == want && installed.prefixes == prefixes)
    }

    /// Removes lookup entries that do not belong to the tunnel they point at.
    fn sweep(&mut self) -> Result<usize> {
        let mut stale_eps = Vec::new();
        {
            let eps: HashMap<_, Endpoint4, u32> = self.map(names::P41_ENDPOINTS)?;
            for kv in eps.iter() {
                let (key, slot) = kv.map_err(|source| DataplaneError::Map {
                    name: names::P41_ENDPOINTS,
                    source,
                })?;
                if self
                    .slots
                    .by_slot(slot)
                    .is_none_or(|(_, i)| i.endpoint != key)
                {
                    stale_eps.push(key);
                }
            }
        }
        let mut stale_prefixes = Vec::new();
        {
            let map: HashMap<_, PrefixKey, u32> = self.map(names::PREFIXES)?;
            for kv in map.iter() {
                let (key, slot) = kv.map_err(|source| DataplaneError::Map {
                    name: names::PREFIXES,
                    source,
                })?;
                let owned = self
                    .slots
                    .by_slot(slot)
                    .is_some_and(|(_, i)| i.prefixes.iter().any(|p| prefixes::key(p) == key));
                if !owned {
                    stale_prefixes.push(key);
                }
            }
        }
        let n = stale_eps.len() + stale_prefixes.len();
        {
            let mut eps: HashMap<_, Endpoint4, u32> = self.map_mut(names::P41_ENDPOINTS)?;
            for k in stale_eps {
                let _ = eps.remove(&k);
            }
        }
        let mut map: HashMap<_, PrefixKey, u32> = self.map_mut(names::PREFIXES)?;
        for k in stale_prefixes {
            let _ = map.remove(&k);
        }
        Ok(n)
    }
}
