//! Counting. An entry per CPU (per-CPU maps, or `TUNNEL_STATS`'s entry per slot and CPU),
//! so plain adds; userspace sums the CPUs when it reads.
use crate::maps::{self, GLOBAL_STATS, TUNNEL_STATS};
use broker_common::{
    maps::Settings,
    stats::{Event, ACTION_BASE},
};

#[inline(always)]
pub fn global(slot: u32, bytes: u64) {
    if let Some(p) = GLOBAL_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, only this program on this CPU writes it.
        unsafe {
            (*p).packets += 1;
            (*p).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn action(action: u32, bytes: u64) {
    global(ACTION_BASE + action, bytes);
}

/// Counts `event` for a tunnel of kind `kind`.
#[inline(always)]
pub fn event(event: Event, kind: u8, bytes: u64) {
    global(event.slot(kind), bytes);
}

/// Which per-tunnel counter pair to bump.
#[derive(Clone, Copy)]
pub enum Dir {
    FromClient,
    ToClient,
    Drop,
}

/// Counts a packet against the tunnel in `slot` (looking the settings up: the drop
/// paths, which do not carry them).
#[inline(always)]
pub fn tunnel(slot: u32, dir: Dir, bytes: u64) {
    if let Some(s) = maps::settings() {
        tunnel_of(s, slot, dir, bytes);
    }
}

/// [`tunnel`] with the settings at hand: the forwarding paths.
#[inline(always)]
pub fn tunnel_of(s: &Settings, slot: u32, dir: Dir, bytes: u64) {
    let Some(i) = maps::this_cpus(s, slot) else {
        return;
    };
    if let Some(p) = TUNNEL_STATS.get_ptr_mut(i) {
        // SAFETY: this CPU's entry, which only this CPU writes.
        unsafe {
            let p = &raw mut (*p).stats;
            match dir {
                Dir::FromClient => {
                    (*p).from_client_packets += 1;
                    (*p).from_client_bytes += bytes;
                }
                Dir::ToClient => {
                    (*p).to_client_packets += 1;
                    (*p).to_client_bytes += bytes;
                }
                Dir::Drop => {
                    (*p).drop_packets += 1;
                    (*p).drop_bytes += bytes;
                }
            }
        }
    }
}
