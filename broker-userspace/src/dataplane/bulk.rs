//! Installing many new tunnels at once: a cold start, or a reconcile that finds many
//! tunnels the maps lack. The entries are those [`Dataplane::upsert`] writes, in the same
//! order (counters and next hops zeroed, tunnel entries, the prefix tables, then the
//! lookups pointing at them), but each map is written many entries per system call
//! ([`batch_write`]).
use aya::{
    maps::{Array, HashMap, IterableMap, MapData},
    Pod,
};
use broker_common::{
    consts::map_names as names,
    maps::{Endpoint4, Endpoint6, Nexthop, PrefixKey, Tunnel, TunnelStatsLine, UdpEndpoint4},
};
use ipnet::Ipv6Net;

use super::{
    batch_write, endpoint_key, prefixes,
    slots::{EndpointKey, Installed},
    to_map_value, Dataplane, Result,
};
use crate::model::TunnelSpec;

/// What the tunnels being installed write, map by map.
#[derive(Default)]
struct Entries {
    /// Slots whose counters and next hop are to be zeroed (not those of pristine maps
    /// never handed out: zero since the maps were made).
    slots: Vec<u32>,
    tunnels: Vec<(u32, Tunnel)>,
    prefixes: Vec<(PrefixKey, u32)>,
    v4: Vec<([u8; 4], u32)>,
    p41: Vec<(Endpoint4, u32)>,
    udp: Vec<(UdpEndpoint4, u32)>,
    v6: Vec<(Endpoint6, u32)>,
    ayiya: Vec<([u8; 16], u32)>,
}

impl Dataplane {
    /// Installs tunnels none of which the maps hold yet (distinct ids). When one cannot be
    /// installed, those before it are, and its error is returned.
    pub(super) fn install_new(&mut self, specs: &[&TunnelSpec]) -> Result<()> {
        if specs.is_empty() {
            return Ok(());
        }
        self.unstamp()?;
        let pop = self.pop();
        let mut e = Entries::default();
        let mut space_changed = false;
        let never_used = self.pristine.then(|| self.slots.next());
        let mut refused = None;
        for spec in specs {
            debug_assert!(
                self.slots.get(spec.id).is_none(),
                "{} is installed",
                spec.id
            );
            let prefixes: Vec<Ipv6Net> = spec.prefixes().map(|p| p.trunc()).collect();
            // The checks count what the tunnels before this one take (the slot table
            // and the prefix lengths are kept as they go).
            let slot = match self
                .check(spec, &prefixes, &pop)
                .and_then(|()| self.slots.allocate())
            {
                Ok(slot) => slot,
                Err(err) => {
                    refused = Some(err);
                    break;
                }
            };
            self.worker_maps.verdicts.reset(slot);
            self.worker_maps.suspects.clear(slot);
            if never_used.is_none_or(|n| slot < n) {
                e.slots.push(slot);
            }
            e.tunnels.push((slot, to_map_value(spec, &pop)));
            for p in &prefixes {
                space_changed |= self.space.cover(*p);
                self.lengths.add(p.prefix_len());
                e.prefixes.push((prefixes::key(p), slot));
            }
            let v4 = spec.client_v4.map(|a| a.octets());
            if let Some(v4) = v4 {
                e.v4.push((v4, slot));
            }
            let endpoint = endpoint_key(spec, &pop);
            match endpoint {
                EndpointKey::P41(k) => e.p41.push((k, slot)),
                EndpointKey::Udp(k) => e.udp.push((k, slot)),
                EndpointKey::V6(k) => e.v6.push((k, slot)),
                EndpointKey::Ayiya(k) => e.ayiya.push((k, slot)),
                EndpointKey::None => {}
            }
            self.slots.insert(
                spec.id,
                Installed {
                    slot,
                    endpoint,
                    prefixes,
                    v4,
                },
            );
        }
        self.write_entries(&e, space_changed)?;
        refused.map_or(Ok(()), Err)
    }

    fn write_entries(&mut self, e: &Entries, space_changed: bool) -> Result<()> {
        self.zero_slot_cpu::<TunnelStatsLine>(names::TUNNEL_STATS, &e.slots)?;
        self.zero_slot_cpu::<Nexthop>(names::NEXTHOP_CLIENT, &e.slots)?;
        {
            let tunnels: Array<&MapData, Tunnel> = self.map(names::TUNNELS)?;
            batch_write::update(tunnels.map(), names::TUNNELS, &e.tunnels)?;
        }
        // Lengths and space must cover the new prefixes before they can be found.
        self.publish_prefix_tables(space_changed)?;
        self.write_lookups(names::PREFIXES, &e.prefixes)?;
        self.write_lookups(names::V4_ROUTES, &e.v4)?;
        self.write_lookups(names::P41_ENDPOINTS, &e.p41)?;
        self.write_lookups(names::UDP_ENDPOINTS, &e.udp)?;
        self.write_lookups(names::V6_ENDPOINTS, &e.v6)?;
        self.write_lookups(names::AYIYA_IDS, &e.ayiya)
    }

    /// Zeroes every CPU's entry of `slots` in the slot × CPU array `name` (entry
    /// `slot * cpus + cpu`: `TUNNEL_STATS`, `NEXTHOP_CLIENT`; `maps::this_cpus` in the
    /// program).
    pub(super) fn zero_slot_cpu<V: Pod>(&self, name: &'static str, slots: &[u32]) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let cpus = u32::from(self.settings.cpus);
        // SAFETY: Pod; all-zero bytes are a valid value (no counts, an empty next hop).
        let zero: V = unsafe { std::mem::zeroed() };
        let entries: Vec<(u32, V)> = slots
            .iter()
            .flat_map(|s| (0..cpus).map(move |c| (s * cpus + c, zero)))
            .collect();
        let map: Array<&MapData, V> = self.map(name)?;
        batch_write::update(map.map(), name, &entries)
    }

    fn write_lookups<K: Pod>(&self, name: &'static str, entries: &[(K, u32)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let map: HashMap<&MapData, K, u32> = self.map(name)?;
        batch_write::update(map.map(), name, entries)
    }
}
