//! Taking over the maps an earlier controller pinned, and making them match the store.
//!
//! The maps are a projection of the store, so after a restart (clean or not) the
//! controller reads back what the maps hold, then writes only the differences: tunnels
//! that keep their slot keep forwarding and keep their counters throughout.
use std::collections::HashMap as StdHashMap;

use aya::{
    maps::{Array, HashMap, MapData, MapInfo},
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
    batch, prefixes,
    slots::{EndpointKey, Installed},
    to_map_value, Dataplane, DataplaneError, EndpointCaps, Options, Result, Sizes, SlotTable,
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
    /// Tunnels whose entry was written but some of whose lookup entries were not (a
    /// controller killed inside an install): those entries were written again.
    pub repaired: usize,
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

/// The sizes of maps an earlier controller pinned in `dir`, if any, warning when they
/// differ from the configured ones. A pinned map keeps the size it was created with, and
/// the program must be loaded with that size: aya checks indices against it, and slots
/// beyond a smaller one would be lost.
pub(super) fn pinned_sizes(dir: &std::path::Path, opts: &Options) -> Result<Option<Sizes>> {
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
    for (name, built) in [
        (names::SETTINGS, std::mem::size_of::<Settings>()),
        (names::TUNNELS, std::mem::size_of::<Tunnel>()),
    ] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let pinned = MapInfo::from_pin(path)
            .map_err(|source| DataplaneError::Map { name, source })?
            .value_size();
        if pinned as usize != built {
            return Err(DataplaneError::Incompatible {
                name,
                pinned,
                built: built as u32,
            });
        }
    }
    let configured = Sizes::configured(opts);
    let c = configured.endpoints;
    let pinned = Sizes {
        tunnels: size(names::TUNNELS, configured.tunnels)?,
        prefixes: size(names::PREFIXES, configured.prefixes)?,
        endpoints: EndpointCaps {
            p41: size(names::P41_ENDPOINTS, c.p41)?,
            udp: size(names::UDP_ENDPOINTS, c.udp)?,
            v6: size(names::V6_ENDPOINTS, c.v6)?,
            ayiya: size(names::AYIYA_IDS, c.ayiya)?,
        },
    };
    if pinned != configured {
        tracing::warn!(
            ?pinned,
            ?configured,
            "dataplane.max_tunnels, max_prefixes or max_endpoints changed, but the pinned \
             maps keep their size; `broker dataplane detach` and a restart resize them (not \
             hitless)"
        );
    }
    Ok(Some(pinned))
}

/// What the pinned `TUNNELS` map holds: the installed tunnels in slot order, and the ids
/// of those held as down.
#[derive(Default)]
pub(super) struct Scan {
    used: Vec<(u32, Installed)>,
    down: Vec<u32>,
}

/// Reads every slot of the pinned `TUNNELS` map in `dir` (loaded with the pinned sizes,
/// `pinned_sizes`), a chunk of them per system call, through a descriptor of its own: it
/// runs on another thread while the program is verified.
pub(super) fn scan_pinned(dir: &std::path::Path, reads: batch::MapReads) -> Result<Scan> {
    let name = names::TUNNELS;
    let data =
        MapData::from_pin(dir.join(name)).map_err(|source| DataplaneError::Map { name, source })?;
    let tunnels: Array<MapData, Tunnel> = Array::try_from(aya::maps::Map::Array(data))
        .map_err(|source| DataplaneError::Map { name, source })?;
    let capacity = tunnels.len();
    // A part of the slots per core: the kernel's copies and the decoding run in parallel
    // (a million tunnels are 180 MB of values).
    let parts = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u32;
    let step = capacity.div_ceil(parts).max(1);
    let scanned: Vec<Result<Scan>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..capacity)
            .step_by(step as usize)
            .map(|start| {
                let tunnels = &tunnels;
                s.spawn(move || scan_range(tunnels, reads, start..(start + step).min(capacity)))
            })
            .collect();
        handles.into_iter().map(joined).collect()
    });
    let mut scan = Scan::default();
    for part in scanned {
        let part = part?;
        scan.used.extend(part.used);
        scan.down.extend(part.down);
    }
    Ok(scan)
}

/// The tunnels in slots `range` of `TUNNELS`, in slot order.
fn scan_range(
    tunnels: &Array<MapData, Tunnel>,
    reads: batch::MapReads,
    range: std::ops::Range<u32>,
) -> Result<Scan> {
    let mut scan = Scan::default();
    batch::array_range(tunnels, names::TUNNELS, reads, range, |slot, t| {
        if t.state == TunnelState::Down as u8 {
            scan.down.push(t.id);
        }
        if t.state != TunnelState::Empty as u8 {
            scan.used.push((
                t.id,
                Installed {
                    slot,
                    endpoint: endpoint_of(&t),
                    prefixes: prefixes_of(&t),
                    v4: (t.kind == TunnelKind::V4In6 as u8).then_some(t.client_v4),
                },
            ));
        }
        Ok(())
    })?;
    Ok(scan)
}

impl Dataplane {
    /// Rebuilds the bookkeeping (slots, prefix lengths, tunnel space, settings) from maps
    /// an earlier controller left.
    pub(super) fn adopt(&mut self, opts: &Options, scan: Scan) -> Result<()> {
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
        self.settings.stamp = old.stamp;
        if opts.nexthop_cache {
            // Whatever the old process cached may predate changes nobody saw.
            self.settings.nexthop_gen = old.nexthop_gen.wrapping_add(1).max(1);
        }

        let Scan { used, down } = scan;
        let (slots, duplicates) = SlotTable::adopted(self.max_tunnels, used);
        for (_, i) in slots.iter() {
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
        self.slots = slots;
        self.adopted_down = down;
        for slot in duplicates {
            self.write_tunnel(slot, &Tunnel::EMPTY)?;
        }
        Ok(())
    }

    /// Makes the maps hold exactly `specs` (of distinct ids, as the store has them) with
    /// `pop` as the PoP's side, writing only what differs, then removes lookup entries that
    /// point at no tunnel or at a tunnel that does not own them.
    pub fn reconcile(&mut self, specs: &[TunnelSpec], pop: &Pop) -> Result<Reconciled> {
        let r = self.write_reconcile(specs, pop);
        self.noted(r)
    }

    fn write_reconcile(&mut self, specs: &[TunnelSpec], pop: &Pop) -> Result<Reconciled> {
        // Maps this process made and changed without a failure hold nothing to sweep.
        let sweep = !self.pristine;
        let mut r = Reconciled::default();
        let t = std::time::Instant::now();
        let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
        self.unstamp()?;
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
        // One read of the installed tunnels' entries, as they are now (the data plane
        // writes where AYIYA clients roamed to), decides what to rewrite.
        let unchanged = self.unchanged(specs, pop)?;
        let read_ms = ms(t);
        let t = std::time::Instant::now();
        let mut new = Vec::new();
        for (spec, unchanged) in specs.iter().zip(unchanged) {
            if unchanged {
                r.unchanged += 1;
            } else if self.slots.get(spec.id).is_none() {
                new.push(spec);
            } else {
                self.upsert(spec)?;
                r.installed += 1;
            }
        }
        // After the changed ones, whose old endpoints a new tunnel may take over.
        self.install_new(&new)?;
        r.installed += new.len();
        let write_ms = ms(t);
        let t = std::time::Instant::now();
        if sweep {
            (r.orphans, r.repaired) = self.sweep()?;
        }
        self.invalidate_nexthops()?;
        if r != Reconciled::default() {
            // Removals and the read of what is installed; writes; the sweep.
            info!(
                ?r,
                read_ms,
                write_ms,
                sweep_ms = ms(t),
                "data plane reconciled with the store"
            );
        }
        Ok(r)
    }

    /// For each of `specs`, whether the maps hold it exactly already, from one read of
    /// the installed ones' `TUNNELS` entries (a batch for many, a lookup each for a few).
    fn unchanged(&self, specs: &[TunnelSpec], pop: &Pop) -> Result<Vec<bool>> {
        let mut out = vec![false; specs.len()];
        let installed: Vec<(usize, &Installed)> = specs
            .iter()
            .enumerate()
            .filter_map(|(n, spec)| self.slots.get(spec.id).map(|i| (n, i)))
            .collect();
        let slots: Vec<u32> = installed.iter().map(|(_, i)| i.slot).collect();
        let tunnels: Array<_, Tunnel> = self.map(names::TUNNELS)?;
        batch::array_slots(
            &tunnels,
            names::TUNNELS,
            self.reads,
            &slots,
            |k, current| {
                let (n, i) = installed[k];
                out[n] = matches(&specs[n], pop, i, &current);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Removes lookup entries that do not belong to the tunnel they point at, and writes
    /// again those an installed tunnel lacks; how many of each (entries, tunnels).
    fn sweep(&mut self) -> Result<(usize, usize)> {
        let reads = self.reads;
        // The six maps are read on threads of their own: most of the time goes to the
        // kernel's copies, which run in parallel.
        let (p41, udp, v6, ayiya, v4, prefixes) = {
            // What is installed at each slot.
            let table = &self.slots;
            let slots = table.next() as usize;
            let at = |slot: u32| table.at(slot);
            let endpoint_owned =
                |key: EndpointKey, slot: u32| at(slot).is_some_and(|i| i.endpoint == key);
            let p41 = self.lookup_map::<Endpoint4>(names::P41_ENDPOINTS)?;
            let udp = self.lookup_map::<UdpEndpoint4>(names::UDP_ENDPOINTS)?;
            let v6 = self.lookup_map::<Endpoint6>(names::V6_ENDPOINTS)?;
            let ayiya = self.lookup_map::<[u8; 16]>(names::AYIYA_IDS)?;
            let v4 = self.lookup_map::<[u8; 4]>(names::V4_ROUTES)?;
            let prefixes = self.lookup_map::<PrefixKey>(names::PREFIXES)?;
            std::thread::scope(|s| {
                let p41 = s.spawn(|| {
                    swept(&p41, names::P41_ENDPOINTS, reads, slots, |k, slot| {
                        endpoint_owned(EndpointKey::P41(*k), slot)
                    })
                });
                let udp = s.spawn(|| {
                    swept(&udp, names::UDP_ENDPOINTS, reads, slots, |k, slot| {
                        endpoint_owned(EndpointKey::Udp(*k), slot)
                    })
                });
                let v6 = s.spawn(|| {
                    swept(&v6, names::V6_ENDPOINTS, reads, slots, |k, slot| {
                        endpoint_owned(EndpointKey::V6(*k), slot)
                    })
                });
                let ayiya = s.spawn(|| {
                    swept(&ayiya, names::AYIYA_IDS, reads, slots, |k, slot| {
                        endpoint_owned(EndpointKey::Ayiya(*k), slot)
                    })
                });
                let v4 = s.spawn(|| {
                    swept(&v4, names::V4_ROUTES, reads, slots, |k, slot| {
                        at(slot).is_some_and(|i| i.v4 == Some(*k))
                    })
                });
                let prefixes = s.spawn(|| {
                    swept(&prefixes, names::PREFIXES, reads, slots, |k, slot| {
                        at(slot).is_some_and(|i| i.prefixes.iter().any(|p| prefixes::key(p) == *k))
                    })
                });
                (
                    joined(p41),
                    joined(udp),
                    joined(v6),
                    joined(ayiya),
                    joined(v4),
                    joined(prefixes),
                )
            })
        };
        let (p41, udp, v6, ayiya, v4, prefixes) = (p41?, udp?, v6?, ayiya?, v4?, prefixes?);

        // Which installed tunnels lack an entry of their own.
        let mut incomplete = Vec::new();
        for (_, i) in self.slots.iter() {
            let endpoint = match i.endpoint {
                EndpointKey::P41(_) => p41.found_at(i.slot),
                EndpointKey::Udp(_) => udp.found_at(i.slot),
                EndpointKey::V6(_) => v6.found_at(i.slot),
                EndpointKey::Ayiya(_) => ayiya.found_at(i.slot),
                EndpointKey::None => 1,
            };
            // A handful of prefixes each: distinct ones counted without allocating.
            let distinct = (0..i.prefixes.len())
                .filter(|&n| !i.prefixes[..n].contains(&i.prefixes[n]))
                .count();
            if endpoint == 0
                || (i.v4.is_some() && v4.found_at(i.slot) == 0)
                || (prefixes.found_at(i.slot) as usize) < distinct
            {
                incomplete.push(i.clone());
            }
        }

        let mut n = 0;
        n += self.delete(names::P41_ENDPOINTS, p41.stale)?;
        n += self.delete(names::UDP_ENDPOINTS, udp.stale)?;
        n += self.delete(names::V6_ENDPOINTS, v6.stale)?;
        n += self.delete(names::AYIYA_IDS, ayiya.stale)?;
        n += self.delete(names::V4_ROUTES, v4.stale)?;
        n += self.delete(names::PREFIXES, prefixes.stale)?;
        for i in &incomplete {
            tracing::warn!(
                slot = i.slot,
                "a tunnel's lookup entries were missing (a controller killed while \
                 installing it); written again"
            );
            self.insert_lookups(i)?;
        }
        Ok((n, incomplete.len()))
    }

    fn lookup_map<K: Pod>(&self, name: &'static str) -> Result<HashMap<&MapData, K, u32>> {
        self.map(name)
    }

    /// Removes `keys` from one lookup map; how many there were.
    fn delete<K: Pod>(&mut self, name: &'static str, keys: Vec<K>) -> Result<usize> {
        let n = keys.len();
        let mut map: HashMap<_, K, u32> = self.map_mut(name)?;
        for k in keys {
            let _ = map.remove(&k);
        }
        Ok(n)
    }
}

/// One lookup map read through: the keys `owned` does not vouch for, and how many
/// vouched-for entries point at each slot (of `slots`).
struct Swept<K> {
    stale: Vec<K>,
    found: Vec<u8>,
}

impl<K> Swept<K> {
    fn found_at(&self, slot: u32) -> u8 {
        self.found.get(slot as usize).copied().unwrap_or(0)
    }
}

fn swept<K: Pod>(
    map: &HashMap<&MapData, K, u32>,
    name: &'static str,
    reads: batch::MapReads,
    slots: usize,
    owned: impl Fn(&K, u32) -> bool,
) -> Result<Swept<K>> {
    let mut out = Swept {
        stale: Vec::new(),
        found: vec![0; slots],
    };
    batch::hash_entries(map, name, reads, |key, slot| {
        if owned(&key, slot) {
            let n = &mut out.found[slot as usize];
            *n = n.saturating_add(1);
        } else {
            out.stale.push(key);
        }
        Ok(())
    })?;
    Ok(out)
}

/// What a scoped thread returned; its panic goes on in the caller.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Whether the entry `current` (and the prefixes `installed` recorded) already hold `spec`
/// exactly, `pop` as the PoP's side.
fn matches(spec: &TunnelSpec, pop: &Pop, installed: &Installed, current: &Tunnel) -> bool {
    let mut want = to_map_value(spec, pop);
    if want.kind == TunnelKind::Ayiya as u8 && current.id == want.id && current.remote_v4 != [0; 4]
    {
        // Where the client roamed to is the data plane's to know.
        want.remote_v4 = current.remote_v4;
        want.remote_port = current.remote_port;
    }
    *current == want
        && spec
            .prefixes()
            .map(|p| p.trunc())
            .eq(installed.prefixes.iter().copied())
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
