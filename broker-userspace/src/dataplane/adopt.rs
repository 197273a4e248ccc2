//! Taking over the maps an earlier controller pinned, and making them match the store.
//!
//! The maps are a projection of the store, so after a restart (clean or not) the
//! controller reads back what the maps hold, then writes only the differences: tunnels
//! that keep their slot keep forwarding and keep their counters throughout.
use std::collections::HashMap as StdHashMap;

use aya::{
    maps::{Array, HashMap, MapInfo},
    Pod,
};
use broker_common::{
    consts::map_names as names,
    maps::{
        Endpoint4, Endpoint6, PrefixKey, Settings, Tunnel, TunnelKind, TunnelState, UdpEndpoint4,
    },
};
use ipnet::Ipv6Net;
use tracing::info;

use super::{
    prefixes,
    slots::{EndpointKey, Installed},
    to_map_value, Dataplane, DataplaneError, Options, Result, SlotTable,
};
use crate::model::{Pop, TunnelSpec};

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
    let mut out = Vec::new();
    if t.kind != TunnelKind::V4In6 as u8 {
        out.push(net(t.link64, 64));
    }
    for r in t.routed.iter().take(t.n_routed as usize) {
        out.push(net(r.net, r.mask.count_ones() as u8));
    }
    out
}

/// The sizes (tunnels, prefixes) of maps an earlier controller pinned in `dir`, if any,
/// warning when they differ from the configured ones. A pinned map keeps the size it was
/// created with, and the program must be loaded with that size: aya checks indices
/// against it, and slots beyond a smaller one would be lost.
pub(super) fn pinned_sizes(dir: &std::path::Path, opts: &Options) -> Result<Option<(u32, u32)>> {
    // A map whose pin is missing (a start killed while pinning) is created anew, at the
    // configured size.
    let size = |name: &'static str, configured: u32| {
        let path = dir.join(name);
        if !path.exists() {
            return Ok(configured);
        }
        MapInfo::from_pin(path)
            .map(|i| i.max_entries())
            .map_err(|source| DataplaneError::Map { name, source })
    };
    if !dir.join(names::TUNNELS).exists() {
        return Ok(None);
    }
    let sizes = (
        size(names::TUNNELS, opts.max_tunnels)?,
        size(names::PREFIXES, opts.max_prefixes)?,
    );
    if sizes != (opts.max_tunnels, opts.max_prefixes) {
        tracing::warn!(
            pinned_tunnels = sizes.0,
            pinned_prefixes = sizes.1,
            configured_tunnels = opts.max_tunnels,
            configured_prefixes = opts.max_prefixes,
            "dataplane.max_tunnels or max_prefixes changed, but the pinned maps keep their \
             size; `broker dataplane detach` and a restart resize them (not hitless)"
        );
    }
    Ok(Some(sizes))
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
        self.settings.pop_v6 = old.pop_v6;
        self.settings.tsp_port = old.tsp_port;
        self.settings.ayiya_port = old.ayiya_port;
        self.settings.utc_minus_tai_s = old.utc_minus_tai_s;
        self.settings.v4_gateway = old.v4_gateway;
        self.settings.v4_net = old.v4_net;
        self.settings.v4_mask = old.v4_mask;
        if opts.nexthop_cache {
            // Whatever the old process cached may predate changes nobody saw.
            self.settings.nexthop_gen = old.nexthop_gen.wrapping_add(1).max(1);
        }

        let tunnels: Array<_, Tunnel> = self.map(names::TUNNELS)?;
        // Loaded with the pinned sizes (`pinned_sizes`).
        let capacity = self.max_tunnels;
        let mut used: Vec<(u32, Installed)> = Vec::new();
        let mut duplicates = Vec::new();
        for slot in 0..capacity {
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
                    endpoint: endpoint_of(&t),
                    prefixes: prefixes_of(&t),
                    v4: (t.kind == TunnelKind::V4In6 as u8).then_some(t.client_v4),
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
        self.slots = SlotTable::from_used(capacity, used);
        for slot in duplicates {
            // A second slot for the same id: only a killed update leaves that.
            self.write_tunnel(slot, &Tunnel::EMPTY)?;
        }
        Ok(())
    }

    /// Makes the maps hold exactly `specs` with `pop` as the PoP's side, writing only what
    /// differs, then removes lookup entries that point at no tunnel or at a tunnel that
    /// does not own them.
    pub fn reconcile(&mut self, specs: &[TunnelSpec], pop: &Pop) -> Result<Reconciled> {
        let mut r = Reconciled::default();
        if self.pop() != *pop {
            self.set_pop(pop)?;
        }
        let wanted: StdHashMap<u32, &TunnelSpec> = specs.iter().map(|s| (s.id, s)).collect();
        for id in self.slots.ids() {
            if !wanted.contains_key(&id) {
                self.remove(id)?;
                r.removed += 1;
            }
        }
        for spec in specs {
            if self.matches(spec, pop)? {
                r.unchanged += 1;
            } else {
                self.upsert(spec)?;
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
    fn matches(&self, spec: &TunnelSpec, pop: &Pop) -> Result<bool> {
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
        let mut want = to_map_value(spec, pop);
        if want.kind == TunnelKind::Ayiya as u8
            && current.id == want.id
            && current.remote_v4 != [0; 4]
        {
            // Where the client roamed to is the data plane's to know.
            want.remote_v4 = current.remote_v4;
            want.remote_port = current.remote_port;
        }
        let prefixes: Vec<Ipv6Net> = spec.prefixes().map(|p| p.trunc()).collect();
        Ok(current == want && installed.prefixes == prefixes)
    }

    /// Removes lookup entries that do not belong to the tunnel they point at.
    fn sweep(&mut self) -> Result<usize> {
        // A snapshot, as the sweeps below need the maps mutably.
        let by_slot: StdHashMap<u32, Installed> = self
            .slots
            .ids()
            .iter()
            .filter_map(|id| self.slots.get(*id))
            .map(|i| (i.slot, i.clone()))
            .collect();
        let slots = &by_slot;
        let endpoint_owned =
            |key: EndpointKey, slot: u32| slots.get(&slot).is_some_and(|i| i.endpoint == key);
        let mut n = 0;
        n += self.sweep_map::<Endpoint4>(names::P41_ENDPOINTS, &|k, slot| {
            endpoint_owned(EndpointKey::P41(*k), slot)
        })?;
        n += self.sweep_map::<UdpEndpoint4>(names::UDP_ENDPOINTS, &|k, slot| {
            endpoint_owned(EndpointKey::Udp(*k), slot)
        })?;
        n += self.sweep_map::<Endpoint6>(names::V6_ENDPOINTS, &|k, slot| {
            endpoint_owned(EndpointKey::V6(*k), slot)
        })?;
        n += self.sweep_map::<[u8; 16]>(names::AYIYA_IDS, &|k, slot| {
            endpoint_owned(EndpointKey::Ayiya(*k), slot)
        })?;
        n += self.sweep_map::<[u8; 4]>(names::V4_ROUTES, &|k, slot| {
            slots.get(&slot).is_some_and(|i| i.v4 == Some(*k))
        })?;
        n += self.sweep_map::<PrefixKey>(names::PREFIXES, &|k, slot| {
            slots
                .get(&slot)
                .is_some_and(|i| i.prefixes.iter().any(|p| prefixes::key(p) == *k))
        })?;
        Ok(n)
    }

    /// Removes the entries of one lookup map that `owned` does not vouch for.
    fn sweep_map<K: Pod>(
        &mut self,
        name: &'static str,
        owned: &dyn Fn(&K, u32) -> bool,
    ) -> Result<usize> {
        let mut stale = Vec::new();
        {
            let map: HashMap<_, K, u32> = self.map(name)?;
            for kv in map.iter() {
                let (key, slot) = kv.map_err(|source| DataplaneError::Map { name, source })?;
                if !owned(&key, slot) {
                    stale.push(key);
                }
            }
        }
        let n = stale.len();
        let mut map: HashMap<_, K, u32> = self.map_mut(name)?;
        for k in stale {
            let _ = map.remove(&k);
        }
        Ok(n)
    }
}

/// The endpoint key a tunnel map value implies.
fn endpoint_of(t: &Tunnel) -> EndpointKey {
    match TunnelKind::from_u8(t.kind) {
        Some(TunnelKind::Ayiya) => EndpointKey::Ayiya(t.client_v6),
        Some(TunnelKind::Proto41) if t.remote_v4 == [0; 4] => EndpointKey::None,
        Some(TunnelKind::V6Udp4) => EndpointKey::Udp(UdpEndpoint4 {
            remote: t.remote_v4,
            local: t.local_v4,
            remote_port: t.remote_port,
            local_port: t.local_port,
        }),
        Some(TunnelKind::V4In6) => EndpointKey::V6(Endpoint6 {
            remote: t.remote_v6,
            local: t.local_v6,
        }),
        _ => EndpointKey::P41(Endpoint4 {
            remote: t.remote_v4,
            local: t.local_v4,
        }),
    }
}
