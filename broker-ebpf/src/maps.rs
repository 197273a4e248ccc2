//! The data plane's maps. Layouts and meaning are documented in `broker_common::maps`;
//! sizes here are defaults the controller overrides at load time (`set_max_entries`).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use broker_common::{
    consts::{DEFAULT_MAX_PREFIXES, DEFAULT_MAX_TUNNELS},
    maps::{Endpoint4, Settings, StatPair, Tunnel, TunnelStats},
    stats::GLOBAL_STATS_LEN,
};

/// PoP-wide settings, one entry.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Tunnels by slot.
#[map]
pub static TUNNELS: Array<Tunnel> = Array::with_max_entries(DEFAULT_MAX_TUNNELS, 0);

/// proto-41 outer (client, PoP) IPv4 pair to slot.
#[map]
pub static P41_ENDPOINTS: HashMap<Endpoint4, u32> =
    HashMap::with_max_entries(DEFAULT_MAX_TUNNELS, 0);

/// Tunnel prefixes (link /64 and routed) to slot.
#[map]
pub static PREFIXES6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);

/// Per-tunnel counters by slot.
#[map]
pub static TUNNEL_STATS: PerCpuArray<TunnelStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_TUNNELS, 0);

/// Global counters, laid out by `broker_common::stats`.
#[map]
pub static GLOBAL_STATS: PerCpuArray<StatPair> = PerCpuArray::with_max_entries(GLOBAL_STATS_LEN, 0);

/// The slot of the tunnel whose prefix holds `addr` (longest match).
#[inline(always)]
pub fn prefix_slot(addr: &[u8; 16]) -> Option<u32> {
    let key = aya_ebpf::maps::lpm_trie::Key::new(128, *addr);
    PREFIXES6.get(&key).copied()
}
