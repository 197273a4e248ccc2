//! The data plane's maps. Layouts and meaning are documented in `broker_common::maps`;
//! sizes here are defaults the controller overrides at load time (`map_max_entries`).
use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, XskMap},
};
use broker_common::{
    consts::{
        BPF_F_MMAPABLE, DEFAULT_MAX_PREFIXES, DEFAULT_MAX_TUNNELS, NEXTHOP_NATIVE_ENTRIES,
        SLOT_HINT_ENTRIES,
    },
    maps::{
        hint, upper64, Endpoint4, Endpoint6, Nexthop, NexthopNative, PrefixKey, Settings, StatPair,
        Tunnel, TunnelKind, TunnelStatsLine, UdpEndpoint4, XskVerdicts, MAX_PREFIX_LENS,
        XSK_MAX_SOCKETS,
    },
    stats::{DropReason, GLOBAL_STATS_LEN},
};

use crate::{hints, tunnel::Found};

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

/// Hints in front of the lookup maps (`crate::hints`): by key hash
/// (`broker_common::maps::hint`), the slot + 1 of the tunnel a lookup last found, 0 for
/// none. Not pinned: the program's own.
#[map]
pub static SLOT_HINTS: Array<u32> = Array::with_max_entries(SLOT_HINT_ENTRIES, 0);

/// v6udpv4 outer (client, PoP) addresses and ports to slot.
#[map]
pub static UDP_ENDPOINTS: HashMap<UdpEndpoint4, u32> =
    HashMap::with_max_entries(DEFAULT_MAX_TUNNELS, 0);

/// v4v6 outer (client, PoP) IPv6 pair to slot.
#[map]
pub static V6_ENDPOINTS: HashMap<Endpoint6, u32> =
    HashMap::with_max_entries(DEFAULT_MAX_TUNNELS, 0);

/// AYIYA identity (the client's `::2`) to slot.
#[map]
pub static AYIYA_IDS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(DEFAULT_MAX_TUNNELS, 0);

/// Inner IPv4 of each v4v6 client to slot.
#[map]
pub static V4_ROUTES: HashMap<[u8; 4], u32> = HashMap::with_max_entries(DEFAULT_MAX_TUNNELS, 0);

/// Tunnel prefixes (link /64 and routed) to slot, one entry per prefix.
#[map]
pub static PREFIXES: HashMap<PrefixKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_PREFIXES, 0);

/// Cached next hops towards each tunnel's client: entry `slot * Settings::cpus + cpu`,
/// which only that CPU writes ([`client_hop`]). A plain array where a per-CPU one would
/// do: the kernel creates a per-CPU array an allocation per entry, a second at a million
/// tunnels, and this one in one piece.
#[map]
pub static NEXTHOP_CLIENT: Array<Nexthop> = Array::with_max_entries(DEFAULT_MAX_TUNNELS, 0);

/// Cached next hops of decapsulated packets, direct-mapped by destination hash.
#[map]
pub static NEXTHOP_NATIVE: PerCpuArray<NexthopNative> =
    PerCpuArray::with_max_entries(NEXTHOP_NATIVE_ENTRIES, 0);

/// Per-tunnel counters: entry `slot * Settings::cpus + cpu`, which only that CPU writes
/// ([`this_cpus`]); not a per-CPU array for the reason `NEXTHOP_CLIENT` gives. Mmapable:
/// the controller reads every tunnel's counters from its mapping, without a system call.
#[map]
pub static TUNNEL_STATS: Array<TunnelStatsLine> =
    Array::with_max_entries(DEFAULT_MAX_TUNNELS, BPF_F_MMAPABLE);

/// Global counters, laid out by `broker_common::stats`.
#[map]
pub static GLOBAL_STATS: PerCpuArray<StatPair> = PerCpuArray::with_max_entries(GLOBAL_STATS_LEN, 0);

/// AF_XDP sockets of the AYIYA worker, by `XSK_IFACES[ifindex] + rx queue`.
#[map]
pub static XSKS: XskMap = XskMap::with_max_entries(XSK_MAX_SOCKETS, 0);

/// Interfaces the AYIYA worker has sockets on: ifindex to its first index in `XSKS`.
#[map]
pub static XSK_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// What the AYIYA worker decided about the packets it verified, by slot, the totals after
/// the last slot (`XskVerdicts`). The worker writes it through a shared mapping; the
/// program never touches it, it is defined here so that it is created and pinned with
/// the counters it completes.
#[map]
pub static XSK_VERDICTS: Array<XskVerdicts> =
    Array::with_max_entries(DEFAULT_MAX_TUNNELS + 1, BPF_F_MMAPABLE);

/// Per slot, the coarse monotonic time (ns) until which the program verifies the
/// tunnel's AYIYA packets itself rather than hand them to the worker: the worker sets it
/// when it finds a forged one (see `xsk::suspect`). Shared mapping, as above.
#[map]
pub static XSK_SUSPECT: Array<u64> = Array::with_max_entries(DEFAULT_MAX_TUNNELS, BPF_F_MMAPABLE);

/// This CPU's entry for the tunnel in `slot` in the maps that hold one per slot and CPU
/// (`slot * cpus + cpu`); `None` before the controller has said how many CPUs there are.
#[inline(always)]
pub fn this_cpus(s: &Settings, slot: u32) -> Option<u32> {
    // SAFETY: helper without arguments (inlined by the verifier).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let cpus = s.cpus as u32;
    if cpu >= cpus {
        return None;
    }
    Some(slot.wrapping_mul(cpus).wrapping_add(cpu))
}

/// This CPU's cached next hop towards the client of the tunnel in `slot`.
#[inline(always)]
pub fn client_hop(s: &Settings, slot: u32) -> Option<*mut Nexthop> {
    NEXTHOP_CLIENT.get_ptr_mut(this_cpus(s, slot)?)
}

/// The PoP-wide settings (the controller writes them before attaching).
#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// The slot of the tunnel whose prefix holds `addr`: outside the tunnel space nothing is
/// probed; inside, one hash probe per prefix length in use, longest first.
#[inline(always)]
pub fn prefix_slot(s: &Settings, addr: &[u8; 16]) -> Option<Found> {
    if !s.in_space(addr) {
        return None;
    }
    let hi = upper64(addr);
    hints::slot(hint::prefix(hi), |t| t.owns(addr), || prefix_lookup(s, hi))
}

/// [`prefix_slot`] in the map: the longest of the configured prefix lengths first.
#[inline(always)]
fn prefix_lookup(s: &Settings, hi: u64) -> Option<u32> {
    let mut i = 0;
    while i < MAX_PREFIX_LENS {
        if i as u32 >= s.n_lens {
            break;
        }
        let l = s.lens[i];
        let key = PrefixKey {
            net: hi & l.mask,
            len: l.len,
            _pad: 0,
        };
        if let Some(slot) = PREFIXES.get_ptr(key) {
            // SAFETY: a u32 value in a map the program only reads.
            return Some(unsafe { *slot });
        }
        i += 1;
    }
    None
}

/// The slot an endpoint map gives for `key`: tunnel traffic from an endpoint no tunnel has
/// is `unknown_endpoint`.
#[inline(always)]
pub fn endpoint_slot<K>(map: &HashMap<K, u32>, key: K) -> Result<u32, DropReason> {
    map.get_ptr(key)
        // SAFETY: a u32 value in a map the program only reads.
        .map(|p| unsafe { *p })
        .ok_or(DropReason::UnknownEndpoint)
}

/// The slot of the v4v6 tunnel whose client has the inner address `addr`.
#[inline(always)]
pub fn v4_route_slot(s: &Settings, addr: &[u8; 4]) -> Option<Found> {
    if !s.in_v4_space(addr) {
        return None;
    }
    hints::slot(
        hint::v4_route(*addr),
        |t| t.kind == TunnelKind::V4In6 as u8 && t.client_v4 == *addr,
        // SAFETY: a u32 value in a map the program only reads.
        || V4_ROUTES.get_ptr(*addr).map(|p| unsafe { *p }),
    )
}
