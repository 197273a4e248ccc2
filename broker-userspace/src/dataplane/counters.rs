//! Reading the counters, summed over CPUs, from the loaded program or from its pins (so
//! `broker stats` works from another process). `GLOBAL_STATS` is a per-CPU array, read
//! through system calls; `TUNNEL_STATS` an mmapable array of one entry per slot and CPU
//! (`slot * cpus + cpu`), read from its mapping: a million tunnels' counters without a
//! system call.
//!
//! XDP does not count the AYIYA packets it hands to the AF_XDP worker to verify; the
//! worker counts its verdicts in `XSK_VERDICTS` (`broker_common::maps::XskVerdicts`), and
//! every reading here adds them: verified packets to the tunnel's `from_client` and the
//! `decap` event, forged ones to its drops and `bad_signature`. Both maps are pinned, so
//! the sums are the same from any process and across restarts.
//!
use std::{
    borrow::Borrow,
    sync::{atomic::Ordering, Arc},
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use broker_common::{
    consts::{map_names as names, AYIYA_HDR_LEN, ETH_HDR_LEN, IPV4_HDR_LEN, UDP_HDR_LEN},
    maps::{StatPair, Tunnel, TunnelKind, TunnelState, TunnelStats, TunnelStatsLine, XskVerdicts},
    stats::{DropReason, Event, PassReason, ACTION_BASE, GLOBAL_STATS_LEN, MAX_KINDS},
};

use super::{
    batch::{self, MapReads},
    mapped::MappedArray,
    maps_dir,
    xsk::shared::{Verdicts, WorkerMaps},
    DataplaneError,
};

/// `GLOBAL_STATS` summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalCounters {
    slots: Vec<StatPair>,
}

impl GlobalCounters {
    /// Packets and bytes that ended with XDP action `action` (0 = aborted ... 4 = redirect).
    pub fn action(&self, action: u32) -> StatPair {
        self.slot(ACTION_BASE + action)
    }

    /// Event `e` over all tunnel kinds.
    pub fn event(&self, e: Event) -> StatPair {
        (0..MAX_KINDS as u8).fold(StatPair::default(), |acc, k| {
            let p = self.event_of(e, k);
            StatPair {
                packets: acc.packets + p.packets,
                bytes: acc.bytes + p.bytes,
            }
        })
    }

    /// Event `e` for tunnels of kind `kind`.
    pub fn event_of(&self, e: Event, kind: u8) -> StatPair {
        self.slot(e.slot(kind))
    }

    pub fn dropped(&self, r: DropReason) -> StatPair {
        self.slot(r.slot())
    }

    pub fn passed(&self, r: PassReason) -> StatPair {
        self.slot(r.slot())
    }

    /// Action, event, drop and pass counts, each with its label value, for exposition.
    pub fn slot(&self, i: u32) -> StatPair {
        self.slots.get(i as usize).copied().unwrap_or_default()
    }

    /// Adds the AF_XDP worker's verdicts (totals) where XDP counts its own: verified
    /// packets under the `decap` event of AYIYA tunnels (inner bytes, as events count),
    /// forged ones under `bad_signature` (bytes of the frame as XDP received it, as drop
    /// reasons count: the worker got it without its outer IPv4 and UDP headers).
    pub fn add_worker(&mut self, v: &XskVerdicts) {
        /// Ethernet, IPv4, UDP and AYIYA headers in front of the inner packet.
        const FRAME: u64 = (ETH_HDR_LEN + IPV4_HDR_LEN + UDP_HDR_LEN + AYIYA_HDR_LEN) as u64;
        let mut add = |slot: u32, packets: u64, bytes: u64| {
            if let Some(p) = self.slots.get_mut(slot as usize) {
                p.packets += packets;
                p.bytes += bytes;
            }
        };
        add(
            Event::Decap.slot(TunnelKind::Ayiya as u8),
            v.verified_packets,
            v.verified_bytes,
        );
        add(
            DropReason::BadSignature.slot(),
            v.forged_packets,
            v.forged_bytes + v.forged_packets * FRAME,
        );
    }

    /// Per-slot difference `self - earlier`, for tests and rates.
    pub fn since(&self, earlier: &Self) -> Self {
        let slots = self
            .slots
            .iter()
            .zip(&earlier.slots)
            .map(|(a, b)| StatPair {
                packets: a.packets - b.packets,
                bytes: a.bytes - b.bytes,
            })
            .collect();
        Self { slots }
    }
}

/// One tunnel's counters with what the data plane knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelCounters {
    pub id: u32,
    pub kind: Option<TunnelKind>,
    pub state: Option<TunnelState>,
    pub stats: TunnelStats,
}

pub(super) fn read_global<T: Borrow<MapData>>(
    map: &PerCpuArray<T, StatPair>,
    reads: MapReads,
) -> Result<GlobalCounters, DataplaneError> {
    let mut slots = Vec::with_capacity(GLOBAL_STATS_LEN as usize);
    batch::per_cpu_range(
        map,
        names::GLOBAL_STATS,
        reads,
        0..GLOBAL_STATS_LEN,
        |_, per_cpu| {
            let mut sum = StatPair::default();
            for v in per_cpu {
                sum.packets += v.packets;
                sum.bytes += v.bytes;
            }
            slots.push(sum);
            Ok(())
        },
    )?;
    Ok(GlobalCounters { slots })
}

/// `TUNNEL_STATS`, mapped. A tunnel's counters are the sum of its CPUs' entries.
struct MappedStats {
    map: MappedArray,
    cpus: u32,
}

impl MappedStats {
    fn open(data: &MapData, cpus: u32) -> Result<Self, DataplaneError> {
        let words = std::mem::size_of::<TunnelStatsLine>() / 8;
        Ok(Self {
            map: MappedArray::open(data, names::TUNNEL_STATS, words, false)?,
            cpus: cpus.max(1),
        })
    }

    /// Tunnel `slot`'s counters, summed over CPUs (zero beyond the map).
    fn sum(&self, slot: u32) -> TunnelStats {
        let mut w = [0u64; 6];
        for c in 0..self.cpus {
            let entry = slot.saturating_mul(self.cpus).saturating_add(c);
            for (i, sum) in w.iter_mut().enumerate() {
                *sum += self
                    .map
                    .word(entry, i)
                    .map_or(0, |v| v.load(Ordering::Relaxed));
            }
        }
        // `TunnelStats`' fields in their order (broker_common::maps).
        TunnelStats {
            from_client_packets: w[0],
            from_client_bytes: w[1],
            to_client_packets: w[2],
            to_client_bytes: w[3],
            drop_packets: w[4],
            drop_bytes: w[5],
        }
    }

    /// The counters of tunnel slots `slots` (any order), with the AF_XDP worker's
    /// verdicts; a slot beyond the map is an error.
    fn read(
        &self,
        verdicts: Option<&Verdicts>,
        slots: &[u32],
    ) -> Result<Vec<TunnelStats>, DataplaneError> {
        let max = self.map.entries() / self.cpus;
        if let Some(&index) = slots.iter().find(|s| **s >= max) {
            return Err(DataplaneError::Map {
                name: names::TUNNEL_STATS,
                source: aya::maps::MapError::OutOfBounds {
                    index,
                    max_entries: max,
                },
            });
        }
        Ok(slots
            .iter()
            .map(|&slot| {
                let mut s = self.sum(slot);
                if let Some(v) = verdicts {
                    s.add_worker(&v.get(slot));
                }
                s
            })
            .collect())
    }
}

/// Reads tunnels' counters without the [`super::Dataplane`]: its own mapping of
/// `TUNNEL_STATS` and the worker's mapped verdicts, so a watcher can read while the
/// controller's lock is held by someone else. Cheap to clone; the slots come from
/// [`super::Dataplane::slot_of`] (a slot reused by another tunnel since then reads that
/// tunnel's counters).
#[derive(Clone)]
pub struct StatsReader {
    stats: Arc<MappedStats>,
    worker: Arc<WorkerMaps>,
}

impl StatsReader {
    /// A reader of the loaded program's `TUNNEL_STATS` (a mapping of its own).
    pub(super) fn open(
        ebpf: &aya::Ebpf,
        cpus: u16,
        worker: Arc<WorkerMaps>,
    ) -> Result<Self, DataplaneError> {
        let name = names::TUNNEL_STATS;
        let Some(Map::Array(data)) = ebpf.map(name) else {
            return Err(DataplaneError::MissingMap { name });
        };
        Ok(Self {
            stats: Arc::new(MappedStats::open(data, u32::from(cpus))?),
            worker,
        })
    }

    /// The counters of tunnel slots `slots` (any order, repeats allowed), in that order:
    /// summed over CPUs with the AF_XDP worker's verdicts, exactly as
    /// [`super::Dataplane::tunnel_counters`] gives them. Memory reads, no system call.
    pub fn read(&self, slots: &[u32]) -> Result<Vec<TunnelStats>, DataplaneError> {
        self.stats.read(Some(&self.worker.verdicts), slots)
    }
}

/// The counters of a running instance, read through its pinned maps.
pub struct PinnedCounters {
    global: PerCpuArray<MapData, StatPair>,
    tunnels: Array<MapData, Tunnel>,
    stats: MappedStats,
    /// `XSK_VERDICTS`, mapped read-only; `None` for an instance started by a build that
    /// counted everything in XDP (before the map existed).
    verdicts: Option<Verdicts>,
    reads: MapReads,
}

impl PinnedCounters {
    pub fn open(instance: &str) -> Result<Self, DataplaneError> {
        let dir = maps_dir(instance);
        let open = |name: &'static str| -> Result<Map, DataplaneError> {
            let data = MapData::from_pin(dir.join(name))
                .map_err(|source| DataplaneError::Map { name, source })?;
            Map::from_map_data(data).map_err(|source| DataplaneError::Map { name, source })
        };
        let typed = |name: &'static str, e| DataplaneError::Map { name, source: e };
        let tunnels: Array<MapData, Tunnel> =
            Array::try_from(open(names::TUNNELS)?).map_err(|e| typed(names::TUNNELS, e))?;
        let stats = {
            let name = names::TUNNEL_STATS;
            let data = MapData::from_pin(dir.join(name))
                .map_err(|source| DataplaneError::Map { name, source })?;
            let entries = data
                .info()
                .map_err(|source| DataplaneError::Map { name, source })?
                .max_entries();
            // One entry per slot and CPU: the CPUs are the ratio of the two sizes.
            MappedStats::open(&data, entries / tunnels.len().max(1))?
        };
        Ok(Self {
            global: PerCpuArray::try_from(open(names::GLOBAL_STATS)?)
                .map_err(|e| typed(names::GLOBAL_STATS, e))?,
            tunnels,
            stats,
            verdicts: {
                let name = names::XSK_VERDICTS;
                let path = dir.join(name);
                if path.exists() {
                    let data = MapData::from_pin(path)
                        .map_err(|source| DataplaneError::Map { name, source })?;
                    Some(Verdicts::open(&data, false)?)
                } else {
                    None
                }
            },
            reads: MapReads::default(),
        })
    }

    /// Reads the maps as `reads` says (batches by default).
    pub fn with_map_reads(mut self, reads: MapReads) -> Self {
        self.reads = reads;
        self
    }

    pub fn global(&self) -> Result<GlobalCounters, DataplaneError> {
        let mut g = read_global(&self.global, self.reads)?;
        if let Some(v) = &self.verdicts {
            g.add_worker(&v.totals());
        }
        Ok(g)
    }

    /// Every used tunnel slot with its counters, by tunnel id.
    pub fn tunnels(&self) -> Result<Vec<TunnelCounters>, DataplaneError> {
        // The used slots first (a pass over TUNNELS), then their counters.
        let mut slots = Vec::new();
        let mut used = Vec::new();
        let all = 0..self.tunnels.len();
        batch::array_range(&self.tunnels, names::TUNNELS, self.reads, all, |slot, t| {
            if t.state != TunnelState::Empty as u8 {
                slots.push(slot);
                used.push((t.id, t.kind, t.state));
            }
            Ok(())
        })?;
        let stats = self.stats.read(self.verdicts.as_ref(), &slots)?;
        let mut out: Vec<TunnelCounters> = used
            .into_iter()
            .zip(stats)
            .map(|((id, kind, state), stats)| TunnelCounters {
                id,
                kind: TunnelKind::from_u8(kind),
                state: TunnelState::from_u8(state),
                stats,
            })
            .collect();
        out.sort_by_key(|t| t.id);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use broker_common::maps::{TunnelStats, TunnelStatsLine};

    use super::{MappedArray, MappedStats};

    #[test]
    fn a_tunnels_counters_are_its_cpus_entries_summed_field_by_field() {
        let words = std::mem::size_of::<TunnelStatsLine>() / 8;
        let (slots, cpus) = (3u32, 2u32);
        let stats = MappedStats {
            map: MappedArray::anonymous(slots * cpus, words),
            cpus,
        };
        // Slot 1 on CPU 0 and CPU 1, written as the program lays a value out.
        for (cpu, base) in [(0u32, 10u64), (1, 100)] {
            let line = TunnelStatsLine {
                stats: TunnelStats {
                    from_client_packets: base + 1,
                    from_client_bytes: base + 2,
                    to_client_packets: base + 3,
                    to_client_bytes: base + 4,
                    drop_packets: base + 5,
                    drop_bytes: base + 6,
                },
                _pad: [u64::MAX; 2],
            };
            // SAFETY: repr(C), 64 bytes of u64s.
            let w: [u64; 8] = unsafe { std::mem::transmute(line) };
            for (i, v) in w.iter().enumerate() {
                let entry = stats.map.word(cpus + cpu, i).unwrap();
                entry.store(*v, Ordering::Relaxed);
            }
        }
        let want = TunnelStats {
            from_client_packets: 112,
            from_client_bytes: 114,
            to_client_packets: 116,
            to_client_bytes: 118,
            drop_packets: 120,
            drop_bytes: 122,
        };
        assert_eq!(
            stats.read(None, &[1, 0, 1]).unwrap(),
            vec![want, TunnelStats::default(), want]
        );
        // Beyond the map: an error, not a neighbour's counters.
        assert!(stats.read(None, &[slots]).is_err());
        assert_eq!(stats.sum(slots), TunnelStats::default());
    }

    #[test]
    fn a_stats_reader_can_be_shared_with_other_threads() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<super::StatsReader>();
    }
}
