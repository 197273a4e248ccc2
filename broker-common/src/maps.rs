//! Keys and values of the BPF maps. One owner per fact: the controller writes every map
//! but the counters, the XDP program writes only the counters.
//!
//! Map overview (names in [`crate::consts::map_names`]):
//! - `SETTINGS`: `Array<Settings>` of one entry, the PoP-wide parameters.
//! - `TUNNELS`: `Array<Tunnel>` indexed by a dense slot the controller assigns.
//! - `P41_ENDPOINTS`: `HashMap<Endpoint4, u32>`: proto-41 (client IPv4, PoP IPv4) to slot.
//! - `PREFIXES6`: `LpmTrie<[u8; 16], u32>`: every tunnel's link /64 and routed prefixes to
//!   slot; the encapsulation lookup and the inner-source anti-spoofing check.
//! - `TUNNEL_STATS`: `PerCpuArray<TunnelStats>` indexed by slot.
//! - `GLOBAL_STATS`: `PerCpuArray<StatPair>` indexed as [`crate::stats`] lays out.

/// Encapsulation of a tunnel. Discriminants are append-only.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelKind {
    /// IPv6 in IPv4, protocol 41 (RFC 4213); TSP `v6v4`, SixXS `6in4`.
    Proto41 = 1,
}

impl TunnelKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Proto41),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Proto41 => "proto41",
        }
    }
}

/// Administrative/operational state of a tunnel slot. Discriminants are append-only.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelState {
    /// The slot is free.
    Empty = 0,
    /// Forwarding in both directions.
    Up = 1,
    /// Configured but not forwarding (no client seen, or its liveness expired).
    Down = 2,
    /// Switched off by the operator.
    Disabled = 3,
}

impl TunnelState {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Empty),
            1 => Some(Self::Up),
            2 => Some(Self::Down),
            3 => Some(Self::Disabled),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Up => "up",
            Self::Down => "down",
            Self::Disabled => "disabled",
        }
    }
}

/// One tunnel as the data plane sees it (value of `TUNNELS`). 112 bytes.
///
/// Fields for encapsulations that a kind does not use stay zero; they are here so that the
/// map layout does not change when kinds are added.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// The operator's tunnel id (never 0 in a used slot).
    pub id: u32,
    /// [`TunnelKind`].
    pub kind: u8,
    /// [`TunnelState`].
    pub state: u8,
    /// Largest inner IPv6 packet sent into the tunnel, in bytes (host order).
    pub mtu: u16,
    /// Outer IPv4 source of encapsulated packets: the PoP.
    pub local_v4: [u8; 4],
    /// Outer IPv4 destination: the client's endpoint.
    pub remote_v4: [u8; 4],
    /// UDP ports for UDP encapsulations (network order).
    pub local_port: [u8; 2],
    pub remote_port: [u8; 2],
    pub _pad0: [u8; 4],
    /// The PoP's address on the link /64 (`::1`): answers echo, sources ICMPv6 errors.
    pub pop_v6: [u8; 16],
    /// The client's address on the link /64 (`::2`).
    pub client_v6: [u8; 16],
    /// Outer IPv6 endpoints for IPv4-in-IPv6 tunnels.
    pub local_v6: [u8; 16],
    pub remote_v6: [u8; 16],
    /// SHA-1 of the tunnel password, for signed encapsulations.
    pub key: [u8; 20],
    pub _pad1: [u8; 4],
}

impl Tunnel {
    pub const EMPTY: Self = Self {
        id: 0,
        kind: 0,
        state: TunnelState::Empty as u8,
        mtu: 0,
        local_v4: [0; 4],
        remote_v4: [0; 4],
        local_port: [0; 2],
        remote_port: [0; 2],
        _pad0: [0; 4],
        pop_v6: [0; 16],
        client_v6: [0; 16],
        local_v6: [0; 16],
        remote_v6: [0; 16],
        key: [0; 20],
        _pad1: [0; 4],
    };
}

/// Key of `P41_ENDPOINTS`: a proto-41 packet's outer (source, destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint4 {
    /// The client's IPv4 (outer source of decapsulated packets).
    pub remote: [u8; 4],
    /// The PoP's IPv4 (outer destination).
    pub local: [u8; 4],
}

/// Value of `SETTINGS[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The PoP's IPv4: tunnel packets are those addressed to it. All zero = no tunnels yet,
    /// everything passes.
    pub pop_v4: [u8; 4],
    /// Reserved for feature switches.
    pub flags: u32,
}

/// Per-tunnel counters (value of `TUNNEL_STATS`, one per CPU; userspace sums them).
/// Bytes are those of the inner IPv6 packet, which is what the user sees as traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Decapsulated: received from the client.
    pub from_client_packets: u64,
    pub from_client_bytes: u64,
    /// Encapsulated: sent to the client (including echo replies).
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    /// Dropped while attributed to this tunnel (spoofed source, state, too big, ...).
    pub drop_packets: u64,
    pub drop_bytes: u64,
}

impl TunnelStats {
    /// Sum of per-CPU values.
    pub fn add(&mut self, o: &Self) {
        self.from_client_packets += o.from_client_packets;
        self.from_client_bytes += o.from_client_bytes;
        self.to_client_packets += o.to_client_packets;
        self.to_client_bytes += o.to_client_bytes;
        self.drop_packets += o.drop_packets;
        self.drop_bytes += o.drop_bytes;
    }
}

/// A packets/bytes pair: value of `GLOBAL_STATS` and of the benchmark sink.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatPair {
    pub packets: u64,
    /// Bytes of the frame as the program received it.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_fixed() {
        // These sizes are part of the pinned-map contract between program versions.
        assert_eq!(size_of::<Tunnel>(), 112);
        assert_eq!(size_of::<Endpoint4>(), 8);
        assert_eq!(size_of::<Settings>(), 8);
        assert_eq!(size_of::<TunnelStats>(), 48);
        assert_eq!(size_of::<StatPair>(), 16);
    }
}
