//! Reading the counters, summed over CPUs, from the loaded program or from its pins (so
//! `broker stats` works from another process). `GLOBAL_STATS` is a per-CPU array;
//! `TUNNEL_STATS` an array of one entry per slot and CPU (`slot * cpus + cpu`).
//!
//! XDP does not count the AYIYA packets it hands to the AF_XDP worker to verify; the
//! worker counts its verdicts in `XSK_VERDICTS` (`broker_common::maps::XskVerdicts`), and
//! every reading here adds them: verified packets to the tunnel's `from_client` and the
//! `decap` event, forged ones to its drops and `bad_signature`. Both maps are pinned, so
//! the sums are the same from any process and across restarts.
//!
//! Many tunnels' counters are read a chunk of slots per system call (`batch.rs`); a few
//! of many, one lookup each.
use std::{borrow::Borrow, sync::Arc};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use broker_common::{
    consts::{map_names as names, AYIYA_HDR_LEN, ETH_HDR_LEN, IPV4_HDR_LEN, UDP_HDR_LEN},
    maps::{StatPair, Tunnel, TunnelKind, TunnelState, TunnelStats, TunnelStatsLine, XskVerdicts},
    stats::{DropReason, Event, PassReason, ACTION_BASE, GLOBAL_STATS_LEN, MAX_KINDS},
};

use super::{
    batch::{self, MapReads},
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

/// Tunnel `slot`'s counters summed over `cpus`.
pub(super) fn sum_tunnel<T: Borrow<MapData>>(
    map: &Array<T, TunnelStatsLine>,
    cpus: u32,
    slot: u32,
) -> Result<TunnelStats, DataplaneError> {
    let mut sum = TunnelStats::default();
    batch::slot_cpu_entries(
        map,
        names::TUNNEL_STATS,
        MapReads::PerElement,
        cpus,
        &[slot],
        |_, per_cpu| {
            sum = sum_cpus(per_cpu);
            Ok(())
        },
    )?;
    Ok(sum)
}

fn sum_cpus(per_cpu: &[TunnelStatsLine]) -> TunnelStats {
    let mut sum = TunnelStats::default();
    for v in per_cpu {
        sum.add(&v.stats);
    }
    sum
}

/// The counters of tunnel slots `slots` (any order), summed over CPUs, with the AF_XDP
/// worker's verdicts: what [`sum_tunnel`] and `Verdicts::get` give for each, read a chunk
/// of slots per system call when that is cheaper.
fn read_tunnels<T: Borrow<MapData>>(
    map: &Array<T, TunnelStatsLine>,
    cpus: u32,
    verdicts: Option<&Verdicts>,
    reads: MapReads,
    slots: &[u32],
) -> Result<Vec<TunnelStats>, DataplaneError> {
    let mut out = vec![TunnelStats::default(); slots.len()];
    batch::slot_cpu_entries(
        map,
        names::TUNNEL_STATS,
        reads,
        cpus,
        slots,
        |i, per_cpu| {
            out[i] = sum_cpus(per_cpu);
            Ok(())
        },
    )?;
    if let Some(v) = verdicts {
        for (stats, slot) in out.iter_mut().zip(slots) {
            stats.add_worker(&v.get(*slot));
        }
    }
    Ok(out)
}

/// Reads tunnels' counters without the [`super::Dataplane`]: its own descriptor of
/// `TUNNEL_STATS` and the worker's mapped verdicts, so a watcher can read while the
/// controller's lock is held by someone else. Cheap to clone; the slots come from
/// [`super::Dataplane::slot_of`] (a slot reused by another tunnel since then reads that
/// tunnel's counters).
#[derive(Clone)]
pub struct StatsReader {
    stats: Arc<Array<MapData, TunnelStatsLine>>,
    cpus: u32,
    worker: Arc<WorkerMaps>,
    reads: MapReads,
}

impl StatsReader {
    /// A reader of the loaded program's `TUNNEL_STATS` (through a descriptor of its own).
    pub(super) fn open(
        ebpf: &aya::Ebpf,
        cpus: u16,
        worker: Arc<WorkerMaps>,
        reads: MapReads,
    ) -> Result<Self, DataplaneError> {
        let name = names::TUNNEL_STATS;
        let err = |source| DataplaneError::Map { name, source };
        let Some(Map::Array(data)) = ebpf.map(name) else {
            return Err(DataplaneError::MissingMap { name });
        };
        let fd = std::os::fd::AsFd::as_fd(data.fd())
            .try_clone_to_owned()
            .map_err(|source| DataplaneError::Io {
                what: format!("duplicating the descriptor of {name}"),
                source,
            })?;
        let data = MapData::from_fd(fd).map_err(err)?;
        let map = Map::from_map_data(data).map_err(err)?;
        Ok(Self {
            stats: Arc::new(Array::try_from(map).map_err(err)?),
            cpus: u32::from(cpus),
            worker,
            reads,
        })
    }

    /// The same map, read as `reads` says.
    pub(super) fn with_reads(&self, reads: MapReads) -> Self {
        Self {
            reads,
            ..self.clone()
        }
    }

    /// The counters of tunnel slots `slots` (any order, repeats allowed), in that order:
    /// summed over CPUs with the AF_XDP worker's verdicts, exactly as
    /// [`super::Dataplane::tunnel_counters`] gives them. One lookup per slot for a few
    /// slots, a batch read over their span for many.
    pub fn read(&self, slots: &[u32]) -> Result<Vec<TunnelStats>, DataplaneError> {
        read_tunnels(
            &self.stats,
            self.cpus,
            Some(&self.worker.verdicts),
            self.reads,
            slots,
        )
    }
}

/// The counters of a running instance, read through its pinned maps.
pub struct PinnedCounters {
    global: PerCpuArray<MapData, StatPair>,
    tunnels: Array<MapData, Tunnel>,
    stats: Array<MapData, TunnelStatsLine>,
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
        Ok(Self {
            global: PerCpuArray::try_from(open(names::GLOBAL_STATS)?)
                .map_err(|e| typed(names::GLOBAL_STATS, e))?,
            tunnels: Array::try_from(open(names::TUNNELS)?)
                .map_err(|e| typed(names::TUNNELS, e))?,
            stats: Array::try_from(open(names::TUNNEL_STATS)?)
                .map_err(|e| typed(names::TUNNEL_STATS, e))?,
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
        // One entry per slot and CPU: the CPUs are the ratio of the two maps' sizes.
        let cpus = self.stats.len() / self.tunnels.len().max(1);
        let stats = read_tunnels(
            &self.stats,
            cpus,
            self.verdicts.as_ref(),
            self.reads,
            &slots,
        )?;
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
    #[test]
    fn a_stats_reader_can_be_shared_with_other_threads() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<super::StatsReader>();
    }
}
