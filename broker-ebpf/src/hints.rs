//! Hints in front of the lookup maps: the endpoint maps (proto-41, v6udpv4, v4v6, AYIYA
//! identities), the prefixes and the v4v6 routes. `SLOT_HINTS` remembers, by a hash of the key
//! (`broker_common::maps::hint`), the slot a lookup last found. A hint is used only when
//! `TUNNELS` holds a tunnel in that slot whose own fields match the key, which is what
//! the map says as long as keys are unique (endpoints are) and prefixes disjoint (the
//! controller allows no overlap): a stale hint (a tunnel moved, removed, re-kinded, its
//! slot reused) or another key's costs the map lookup, never a wrong tunnel.
//!
//! Why: a hash map lookup is a chain of kernel calls (`__htab_map_lookup_elem`,
//! `htab_map_hash`, `lookup_nulls_elem_raw`, `memcmp`), and on a CPU with the SRSO
//! "Safe RET" mitigation every return mispredicts; a hint is two inlined array loads.
//! Measured: 20-60 ns less per packet on every forwarding path (docs/BENCHMARKS-AB.md).
use broker_common::maps::{Tunnel, TunnelState};

use crate::{
    maps::{SLOT_HINTS, TUNNELS},
    tunnel::Found,
};

/// The slot `SLOT_HINTS[index]` remembers and its tunnel, when `TUNNELS` holds a tunnel
/// there that `confirms` it has the lookup's key.
#[inline(always)]
pub fn hinted(index: u32, confirms: impl Fn(&Tunnel) -> bool) -> Option<(u32, &'static Tunnel)> {
    let hint = SLOT_HINTS.get_ptr(index)?;
    // SAFETY: a u32 of the array, read and written whole (aligned) by every CPU; a value
    // another CPU just wrote is as good as any, being checked before use.
    let h = unsafe { core::ptr::read_volatile(hint) };
    if h == 0 {
        return None;
    }
    let t = TUNNELS.get(h - 1)?;
    (t.state != TunnelState::Empty as u8 && confirms(t)).then_some((h - 1, t))
}

/// Remembers `slot` as the answer of the lookup whose key hashes to `index`.
#[inline(always)]
pub fn remember(index: u32, slot: u32) {
    if let Some(hint) = SLOT_HINTS.get_ptr_mut(index) {
        // SAFETY: as in `hinted`.
        unsafe { core::ptr::write_volatile(hint, slot.wrapping_add(1)) };
    }
}

/// The answer of a lookup: the hinted slot and its tunnel ([`hinted`]), else
/// `lookup()`'s slot, remembered for the next packet.
#[inline(always)]
pub fn slot(
    index: u32,
    confirms: impl Fn(&Tunnel) -> bool,
    lookup: impl FnOnce() -> Option<u32>,
) -> Option<Found> {
    if let Some((slot, t)) = hinted(index, confirms) {
        return Some(Found::read(slot, t));
    }
    let slot = lookup()?;
    remember(index, slot);
    Some(Found::slot(slot))
}
