//! Reading the per-CPU counters, summed, from the loaded program or from its pins (so
//! `broker stats` works from another process).
//!
//! XDP does not count the AYIYA packets it hands to the AF_XDP worker to verify; the
//! worker counts its verdicts in `XSK_VERDICTS` (`broker_common::maps::XskVerdicts`), and
//! every reading here adds them: verified packets to the tunnel's `from_client` and the
//! `decap` event, forged ones to its drops and `bad_signature`. Both maps are pinned, so
//! the sums are the same from any process and across restarts.
use aya::maps::{Array, Map, MapData, PerCpuArray};
use broker_common::{
    consts::{map_names as names, AYIYA_HDR_LEN, ETH_HDR_LEN, IPV4_HDR_LEN, UDP_HDR_LEN},
    maps::{StatPair, Tunnel, TunnelKind, TunnelState, TunnelStats, XskVerdicts},
    stats::{DropReason, Event, PassReason, ACTION_BASE, GLOBAL_STATS_LEN, MAX_KINDS},
};

use super::{maps_dir, xsk::shared::Verdicts, DataplaneError};

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

pub(super) fn read_global<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, StatPair>,
) -> Result<GlobalCounters, DataplaneError> {
    let mut slots = Vec::with_capacity(GLOBAL_STATS_LEN as usize);
    for i in 0..GLOBAL_STATS_LEN {
        let per_cpu = map.get(&i, 0).map_err(|source| DataplaneError::Map {
            name: names::GLOBAL_STATS,
            source,
        })?;
        let mut sum = StatPair::default();
        for v in per_cpu.iter() {
            sum.packets += v.packets;
            sum.bytes += v.bytes;
        }
        slots.push(sum);
    }
    Ok(GlobalCounters { slots })
}

pub(super) fn sum_tunnel<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, TunnelStats>,
    slot: u32,
) -> Result<TunnelStats, DataplaneError> {
    let per_cpu = map.get(&slot, 0).map_err(|source| DataplaneError::Map {
        name: names::TUNNEL_STATS,
        source,
    })?;
    let mut sum = TunnelStats::default();
    for v in per_cpu.iter() {
        sum.add(v);
    }
    Ok(sum)
}

/// The counters of a running instance, read through its pinned maps.
pub struct PinnedCounters {
    global: PerCpuArray<MapData, StatPair>,
    tunnels: Array<MapData, Tunnel>,
    stats: PerCpuArray<MapData, TunnelStats>,
    /// `XSK_VERDICTS`, mapped read-only; `None` for an instance started by a build that
    /// counted everything in XDP (before the map existed).
    verdicts: Option<Verdicts>,
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
            stats: PerCpuArray::try_from(open(names::TUNNEL_STATS)?)
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
        })
    }

    pub fn global(&self) -> Result<GlobalCounters, DataplaneError> {
        let mut g = read_global(&self.global)?;
        if let Some(v) = &self.verdicts {
            g.add_worker(&v.totals());
        }
        Ok(g)
    }

    /// Every used tunnel slot with its counters, by tunnel id.
    pub fn tunnels(&self) -> Result<Vec<TunnelCounters>, DataplaneError> {
        let mut out = Vec::new();
        for (slot, t) in self.tunnels.iter().enumerate() {
            let t = t.map_err(|source| DataplaneError::Map {
                name: names::TUNNELS,
                source,
            })?;
            if t.state == TunnelState::Empty as u8 {
                continue;
            }
            let mut stats = sum_tunnel(&self.stats, slot as u32)?;
            if let Some(v) = &self.verdicts {
                stats.add_worker(&v.get(slot as u32));
            }
            out.push(TunnelCounters {
                id: t.id,
                kind: TunnelKind::from_u8(t.kind),
                state: TunnelState::from_u8(t.state),
                stats,
            });
        }
        out.sort_by_key(|t| t.id);
        Ok(out)
    }
}
