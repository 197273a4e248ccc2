//! Looking up a tunnel and the checks every direction makes on it.
use aya_ebpf::maps::HashMap;
use broker_common::{
    maps::{Tunnel, TunnelKind, TunnelState},
    stats::{DropReason, Event},
};

use crate::{
    hints,
    maps::{self, TUNNELS},
    stats::{self, Dir},
};

/// The slot and tunnel an endpoint map gives for `key`, behind its hint (`crate::hints`):
/// `hint` is the key's `SLOT_HINTS` entry, `confirms` whether a tunnel has that key. A
/// confirmed hint's tunnel is the one looked up already; the map's answer is remembered.
#[inline(always)]
pub fn by_endpoint<K>(
    map: &HashMap<K, u32>,
    key: K,
    hint: u32,
    confirms: impl Fn(&Tunnel) -> bool,
) -> Result<(u32, &'static Tunnel), DropReason> {
    if let Some(found) = hints::hinted(hint, confirms) {
        return Ok(found);
    }
    let slot = maps::endpoint_slot(map, key)?;
    hints::remember(hint, slot);
    Ok((slot, get(slot)?))
}

/// What a route lookup (`maps::prefix_slot`, `maps::v4_route_slot`) found: a slot, and its
/// tunnel when the hint's check has read it already, so that the handler does not read
/// `TUNNELS` a second time.
#[derive(Clone, Copy)]
pub struct Found {
    pub slot: u32,
    read: Option<&'static Tunnel>,
}

impl Found {
    #[inline(always)]
    pub fn read(slot: u32, t: &'static Tunnel) -> Self {
        Self {
            slot,
            read: Some(t),
        }
    }

    #[inline(always)]
    pub fn slot(slot: u32) -> Self {
        Self { slot, read: None }
    }

    /// The tunnel: the one read, else [`get`]'s.
    #[inline(always)]
    pub fn tunnel(self) -> Result<&'static Tunnel, DropReason> {
        match self.read {
            Some(t) => Ok(t),
            None => get(self.slot),
        }
    }
}

/// The tunnel in `slot`; a lookup map pointing at an empty slot is `stale_slot`.
#[inline(always)]
pub fn get(slot: u32) -> Result<&'static Tunnel, DropReason> {
    match TUNNELS.get(slot) {
        Some(t) if t.state != TunnelState::Empty as u8 => Ok(t),
        _ => Err(DropReason::StaleSlot),
    }
}

/// Counts a drop against the tunnel and returns the reason, for `Err(tunnel::drop(..))`.
#[inline(always)]
pub fn drop(slot: u32, bytes: usize, reason: DropReason) -> DropReason {
    stats::tunnel(slot, Dir::Drop, bytes as u64);
    reason
}

/// Counts a packet of tunnel `t` that is not forwarded but answered with ICMP (`event`):
/// a drop against the tunnel, and the event.
#[inline(always)]
pub fn answered(t: &Tunnel, slot: u32, bytes: usize, event: Event) {
    stats::tunnel(slot, Dir::Drop, bytes as u64);
    stats::event(event, t.kind, bytes as u64);
}

/// Which way a packet crosses the tunnel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    FromClient,
    ToClient,
}

/// The tunnel is of the kind the packet arrived by (or is routed into) and forwards in
/// that direction: up, or down but woken by its client's packets ([`Tunnel::WAKE`]).
#[inline(always)]
pub fn check_usable(
    t: &Tunnel,
    slot: u32,
    kind: TunnelKind,
    way: Way,
    bytes: usize,
) -> Result<(), DropReason> {
    if t.kind != kind as u8 {
        return Err(drop(slot, bytes, DropReason::KindMismatch));
    }
    let woken =
        t.state == TunnelState::Down as u8 && way == Way::FromClient && t.flags & Tunnel::WAKE != 0;
    if t.state == TunnelState::Up as u8 || woken {
        Ok(())
    } else if t.state == TunnelState::Disabled as u8 {
        Err(drop(slot, bytes, DropReason::TunnelDisabled))
    } else {
        Err(drop(slot, bytes, DropReason::TunnelDown))
    }
}
