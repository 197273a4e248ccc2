//! Keys and values of the BPF maps. One owner per fact: the controller writes every map
//! but the counters, the XDP program writes only the counters; the AF_XDP worker (in the
//! controller's process) writes its own two, `XSK_VERDICTS` and `XSK_SUSPECT`.
//!
//! Map overview (names in [`crate::consts::map_names`]):
//! - `SETTINGS`: `Array<Settings>` of one entry, the PoP-wide parameters.
//! - `TUNNELS`: `Array<Tunnel>` indexed by a dense slot the controller assigns.
//! - `P41_ENDPOINTS`: `HashMap<Endpoint4, u32>`: proto-41 (client IPv4, PoP IPv4) to slot.
//! - `UDP_ENDPOINTS`: `HashMap<UdpEndpoint4, u32>`: v6udpv4 (client IPv4 and port, PoP IPv4
//!   and port) to slot.
//! - `V6_ENDPOINTS`: `HashMap<Endpoint6, u32>`: v4v6 (client IPv6, PoP IPv6) to slot.
//! - `V4_ROUTES`: `HashMap<[u8; 4], u32>`: the inner IPv4 of each v4v6 client to slot.
//! - `PREFIXES`: `HashMap<PrefixKey, u32>`: every tunnel prefix (link /64 and routed) to
//!   slot, probed once per prefix length in use, longest first: a handful of O(1) lookups
//!   instead of an LPM trie walk that grows with the table.
//! - `NEXTHOP_CLIENT`: `PerCpuArray<Nexthop>` by slot: the cached next hop towards each
//!   tunnel's client (its outer IPv4 or IPv6 endpoint).
//! - `NEXTHOP_NATIVE`: `PerCpuArray<NexthopNative>`: cached next hops of decapsulated
//!   packets, a direct-mapped cache indexed by a hash of the destination (an array slot
//!   costs a few instructions, a hash map lookup a helper call and a jhash). IPv4
//!   destinations (v4v6) are kept as IPv4-mapped IPv6 addresses.
//! - `TUNNEL_STATS`: `PerCpuArray<TunnelStats>` indexed by slot.
//! - `GLOBAL_STATS`: `PerCpuArray<StatPair>` indexed as [`crate::stats`] lays out.
//! - `XSK_VERDICTS`: `Array<XskVerdicts>` indexed by slot, the totals after the last slot:
//!   what the AF_XDP worker decided about the packets XDP handed it to verify. Written by
//!   the worker, never by XDP; the controller adds it to the two maps above when it reads
//!   them.
//! - `XSK_SUSPECT`: `Array<u64>` indexed by slot: until when XDP verifies the tunnel's
//!   AYIYA packets itself (see [`XskVerdicts`]). Written by the worker, read by XDP; not
//!   pinned.
//!
//! The program also keeps maps of its own, never pinned (scratch, caches): the SHA-1 in
//! progress, the AYIYA clock, and the token buckets of [`RateLimit`] (`broker-ebpf`'s
//! `ratelimit`).
//!
//! The upper 64 bits of IPv6 addresses are compared as `u64` read in memory order
//! (`u64::from_ne_bytes` of the network-order bytes), so nets and masks below are stored in
//! that form: a bitwise AND and compare need no byte swapping on any host.

/// Encapsulation of a tunnel. Discriminants are append-only.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelKind {
    /// IPv6 in IPv4, protocol 41 (RFC 4213); TSP `v6v4`, SixXS `6in4`.
    Proto41 = 1,
    /// IPv6 directly in UDP over IPv4 (TSP `v6udpv4`, RFC 5572): crosses NATs.
    V6Udp4 = 2,
    /// IPv4 in IPv6, next header 4 (TSP `v4v6`, RFC 2473): IPv4 for IPv6-only clients.
    V4In6 = 3,
    /// IPv6 in AYIYA in UDP over IPv4 (SixXS): every packet signed with SHA-1, crosses
    /// NATs, and the tunnel follows its client's address and port.
    Ayiya = 4,
}

impl TunnelKind {
    pub const ALL: [Self; 4] = [Self::Proto41, Self::V6Udp4, Self::V4In6, Self::Ayiya];

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Proto41),
            2 => Some(Self::V6Udp4),
            3 => Some(Self::V4In6),
            4 => Some(Self::Ayiya),
            _ => None,
        }
    }

    /// Bytes the encapsulation adds in front of the inner packet.
    pub const fn overhead(self) -> u16 {
        match self {
            Self::Proto41 => 20,
            Self::V6Udp4 => 28,
            Self::V4In6 => 40,
            // IPv4, UDP and the 44-byte AYIYA header.
            Self::Ayiya => 72,
        }
    }

    /// The largest tunnel MTU on a 1500-byte path.
    pub const fn mtu_max(self) -> u16 {
        1500 - self.overhead()
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Proto41 => "proto41",
            Self::V6Udp4 => "v6udpv4",
            Self::V4In6 => "v4v6",
            Self::Ayiya => "ayiya",
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
    /// Configured but not forwarding: set so by the operator, or its client fell silent.
    /// A silent tunnel with [`Tunnel::WAKE`] still accepts packets from its client, and the
    /// controller brings it back up when it sees them.
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

/// One tunnel as the data plane sees it (value of `TUNNELS`).
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
    /// v4v6: the client's inner IPv4, the only source it may send from.
    pub client_v4: [u8; 4],
    /// The PoP's address on the link /64 (`::1`): answers echo, sources ICMPv6 errors.
    pub pop_v6: [u8; 16],
    /// The client's address on the link /64 (`::2`).
    pub client_v6: [u8; 16],
    /// Outer IPv6 endpoints for IPv4-in-IPv6 tunnels.
    pub local_v6: [u8; 16],
    pub remote_v6: [u8; 16],
    /// SHA-1 of the tunnel password, for signed encapsulations.
    pub key: [u8; 20],
    /// Number of valid entries in `routed`.
    pub n_routed: u8,
    /// `Tunnel::WAKE`, ...
    pub flags: u8,
    pub _pad0: [u8; 2],
    /// Upper 64 bits of the link /64 (memory-order u64): inner sources must be in it or in
    /// a routed prefix.
    pub link64: u64,
    /// Routed prefixes (all at most /64), checked inline for anti-spoofing.
    pub routed: [Prefix64; MAX_ROUTED],
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
        client_v4: [0; 4],
        pop_v6: [0; 16],
        client_v6: [0; 16],
        local_v6: [0; 16],
        remote_v6: [0; 16],
        key: [0; 20],
        n_routed: 0,
        flags: 0,
        _pad0: [0; 2],
        link64: 0,
        routed: [Prefix64::NONE; MAX_ROUTED],
    };

    /// The controller tracks the client's liveness: while `Down`, packets from the client
    /// are still accepted (and wake the tunnel up); only packets towards it are dropped.
    pub const WAKE: u8 = 1;

    /// True when `addr` lies in the link /64 or one of the routed prefixes.
    #[inline(always)]
    pub fn owns(&self, addr: &[u8; 16]) -> bool {
        let hi = upper64(addr);
        if hi == self.link64 {
            return true;
        }
        let mut i = 0;
        while i < MAX_ROUTED {
            if i < self.n_routed as usize && self.routed[i].contains(hi) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// What XDP puts in front of a frame it hands to the AF_XDP AYIYA worker (XDP metadata,
/// `bpf_xdp_adjust_meta`; the worker finds it right before the frame in its UMEM). 32
/// bytes, the most the kernel allows.
///
/// - [`XskMeta::OP_VERIFY`]: the frame is Ethernet (MACs of the next hop, EtherType IPv6),
///   the 44-byte AYIYA header, the inner IPv6 packet: verify the signature with `key`,
///   then remove the header, decrement the hop limit and send it out of `egress_ifindex`.
/// - [`XskMeta::OP_SIGN`]: the frame is the complete AYIYA packet towards the client with
///   the signature field unset: sign it with `key` and send it out of `egress_ifindex`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskMeta {
    /// The tunnel's key (`Tunnel.key`).
    pub key: [u8; 20],
    /// The tunnel's slot (host order).
    pub slot: u32,
    pub egress_ifindex: u32,
    /// `OP_VERIFY` or `OP_SIGN` (host order); anything else is not a frame from XDP.
    pub op: u32,
}

impl XskMeta {
    pub const LEN: usize = 32;
    pub const OP_VERIFY: u32 = 0xa71a_0001;
    pub const OP_SIGN: u32 = 0xa71a_0002;

    /// Reads the metadata from its bytes (as XDP wrote them, host order).
    pub fn from_bytes(b: &[u8; Self::LEN]) -> Self {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut key = [0; 20];
        key.copy_from_slice(&b[..20]);
        Self {
            key,
            slot: word(20),
            egress_ifindex: word(24),
            op: word(28),
        }
    }

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0; Self::LEN];
        b[..20].copy_from_slice(&self.key);
        b[20..24].copy_from_slice(&self.slot.to_ne_bytes());
        b[24..28].copy_from_slice(&self.egress_ifindex.to_ne_bytes());
        b[28..32].copy_from_slice(&self.op.to_ne_bytes());
        b
    }
}

const _: () = assert!(core::mem::size_of::<XskMeta>() == XskMeta::LEN);

/// What the AF_XDP worker decided about the AYIYA packets XDP handed it to verify
/// ([`XskMeta::OP_VERIFY`]) for one tunnel: value of `XSK_VERDICTS` at the tunnel's slot;
/// the entry after the last slot holds the totals of all tunnels (never reset: a slot's
/// entry is when a new tunnel takes the slot).
///
/// XDP does not count a packet it hands over to be verified as the client's: only the
/// worker knows whether it was. A forged packet from the client's own address and port
/// would otherwise count as the client's traffic (and keep an up tunnel awake). The
/// controller adds `verified` to the tunnel's `from_client` and to the `decap` event,
/// `forged` to its drops and to `bad_signature`, whenever it reads the counters; both maps
/// are pinned, so the sums survive a restart of the controller (a frame the worker had not
/// decided about when it stopped was never forwarded, and is counted nowhere but under
/// XDP's `redirect`). Bytes are the inner packet's, as [`TunnelStats`] counts them.
///
/// The worker adds to it with atomics through a shared mapping (`BPF_F_MMAPABLE`), once
/// per tunnel and batch; every field is a `u64` at an 8-byte boundary for that reason.
/// A forged packet also makes the worker write the tunnel's `XSK_SUSPECT` entry (a
/// coarse-monotonic deadline in ns): until then XDP verifies the tunnel's packets itself,
/// so one tunnel's forged flood stays on the CPU that receives it instead of filling the
/// ring the worker shares between the tunnels of a receive queue.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskVerdicts {
    /// Signature right: decapsulated and sent on (or dropped for want of a TX frame, as
    /// the worker's `tx_full` counts, like a drop after XDP's `redirect`).
    pub verified_packets: u64,
    pub verified_bytes: u64,
    /// Signature wrong: dropped.
    pub forged_packets: u64,
    pub forged_bytes: u64,
}

impl XskVerdicts {
    /// `u64` words per entry (the shared mapping is read and written word by word).
    pub const WORDS: usize = 4;

    pub fn add(&mut self, o: &Self) {
        self.verified_packets += o.verified_packets;
        self.verified_bytes += o.verified_bytes;
        self.forged_packets += o.forged_packets;
        self.forged_bytes += o.forged_bytes;
    }

    /// As words, in field order.
    pub const fn to_words(&self) -> [u64; Self::WORDS] {
        [
            self.verified_packets,
            self.verified_bytes,
            self.forged_packets,
            self.forged_bytes,
        ]
    }

    pub const fn from_words(w: [u64; Self::WORDS]) -> Self {
        Self {
            verified_packets: w[0],
            verified_bytes: w[1],
            forged_packets: w[2],
            forged_bytes: w[3],
        }
    }
}

impl TunnelStats {
    /// Adds what the AF_XDP worker decided about the tunnel's packets: verified ones are
    /// from the client, forged ones dropped (as XDP counts those it verifies itself).
    pub fn add_worker(&mut self, v: &XskVerdicts) {
        self.from_client_packets += v.verified_packets;
        self.from_client_bytes += v.verified_bytes;
        self.drop_packets += v.forged_packets;
        self.drop_bytes += v.forged_bytes;
    }
}

/// AF_XDP sockets per interface (its receive queues) the `XSKS` map has room for: socket
/// of queue `q` of an interface is at `XSK_IFACES[ifindex] + q`.
pub const XSK_MAX_QUEUES: u32 = 16;
/// Entries of `XSKS`: 16 interfaces of 16 queues.
pub const XSK_MAX_SOCKETS: u32 = 256;

/// Routed prefixes a tunnel can have (HE gives a /64 and a /48; sixxsd subnets likewise).
pub const MAX_ROUTED: usize = 4;
/// Distinct prefix lengths among all tunnel prefixes (each costs one hash probe).
pub const MAX_PREFIX_LENS: usize = 8;
/// Aggregates covering every tunnel prefix ("tunnel space"), checked before any probe.
pub const MAX_SPACE: usize = 4;

/// The upper 64 bits of an IPv6 address as a memory-order `u64`.
#[inline(always)]
pub fn upper64(addr: &[u8; 16]) -> u64 {
    u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ])
}

/// A prefix of at most 64 bits: `net` and `mask` in memory order (see the module docs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix64 {
    pub net: u64,
    pub mask: u64,
}

impl Prefix64 {
    /// Matches nothing (mask 0 would match everything, so `net` is set to a value no
    /// masked address has).
    pub const NONE: Self = Self { net: 1, mask: 0 };

    /// The prefix `len` bits long (0-64) of the address whose upper 64 bits are `addr`.
    pub const fn new(addr: [u8; 8], len: u32) -> Self {
        let mask = mask64(len);
        Self {
            net: u64::from_ne_bytes(addr) & mask,
            mask,
        }
    }

    #[inline(always)]
    pub const fn contains(&self, upper: u64) -> bool {
        upper & self.mask == self.net
    }
}

/// The memory-order mask of the first `len` bits (0-64).
pub const fn mask64(len: u32) -> u64 {
    let be: u64 = if len == 0 {
        0
    } else if len >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - len)
    };
    u64::from_ne_bytes(be.to_be_bytes())
}

/// An entry of the `NEXTHOP_NATIVE` cache: the destination it is for (IPv4 ones mapped,
/// `::ffff:a.b.c.d`) and its next hop.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NexthopNative {
    pub dst: [u8; 16],
    pub hop: Nexthop,
}

/// The `NEXTHOP_NATIVE` slot of a destination: a multiplicative hash of its 32-bit words.
#[inline(always)]
pub fn nexthop_native_slot(dst: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]);
    let x = w(0) ^ w(4) ^ w(8).rotate_left(7) ^ w(12).rotate_left(13);
    x.wrapping_mul(0x9e37_79b1) >> (32 - crate::consts::NEXTHOP_NATIVE_BITS)
}

/// `SLOT_HINTS` entries: a multiplicative hash of a lookup's key folded to 32 bits, each
/// kind of lookup folded with its own constant so that one kind's keys do not land on
/// another's in a pattern.
pub mod hint {
    #[inline(always)]
    fn index(x: u32) -> u32 {
        x.wrapping_mul(0x9e37_79b1) >> (32 - crate::consts::SLOT_HINT_BITS)
    }

    #[inline(always)]
    fn fold16(a: &[u8; 16]) -> u32 {
        let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        w(0) ^ w(4).rotate_left(7) ^ w(8).rotate_left(13) ^ w(12).rotate_left(19)
    }

    /// An IPv4-outer endpoint: addresses, and ports (zero for proto-41).
    #[inline(always)]
    pub fn endpoint4(remote: [u8; 4], local: [u8; 4], ports: u32) -> u32 {
        index(u32::from_ne_bytes(remote) ^ u32::from_ne_bytes(local).rotate_left(11) ^ ports)
    }

    /// An IPv6-outer (v4v6) endpoint.
    #[inline(always)]
    pub fn endpoint6(remote: &[u8; 16], local: &[u8; 16]) -> u32 {
        index(fold16(remote) ^ fold16(local).rotate_left(3) ^ 0x6a09_e667)
    }

    /// An AYIYA identity (the client's `::2`).
    #[inline(always)]
    pub fn ayiya(identity: &[u8; 16]) -> u32 {
        index(fold16(identity) ^ 0xa54f_f53a)
    }

    /// An IPv6 destination's upper 64 bits (memory order), for the prefix lookup.
    #[inline(always)]
    pub fn prefix(upper: u64) -> u32 {
        index((upper ^ (upper >> 32)) as u32 ^ 0xbb67_ae85)
    }

    /// A v4v6 client's inner IPv4.
    #[inline(always)]
    pub fn v4_route(addr: [u8; 4]) -> u32 {
        index(u32::from_ne_bytes(addr) ^ 0x3c6e_f372)
    }
}

/// Key of `PREFIXES`: a tunnel prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    /// The masked upper 64 bits (memory order).
    pub net: u64,
    /// Prefix length, 1-64.
    pub len: u32,
    pub _pad: u32,
}

/// A prefix length in use and its mask, for the probes of `PREFIXES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LenMask {
    pub mask: u64,
    pub len: u32,
    pub _pad: u32,
}

/// A cached `bpf_fib_lookup` result: where to send a packet and with which MACs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nexthop {
    /// The kernel's tick (`bpf_jiffies64`) when it was looked up.
    pub stamp_tick: u64,
    /// `Settings::nexthop_gen` it was looked up under; a different value means stale.
    pub gen: u32,
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub _pad: u32,
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

/// Key of `UDP_ENDPOINTS`: a v6udpv4 packet's outer addresses and ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpEndpoint4 {
    pub remote: [u8; 4],
    pub local: [u8; 4],
    pub remote_port: [u8; 2],
    pub local_port: [u8; 2],
}

/// Key of `V6_ENDPOINTS`: a v4v6 packet's outer (source, destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint6 {
    pub remote: [u8; 16],
    pub local: [u8; 16],
}

/// Value of `SETTINGS[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The PoP's IPv4: tunnel packets are those addressed to it. All zero = no tunnels yet,
    /// everything passes.
    pub pop_v4: [u8; 4],
    /// Feature switches: [`Settings::AYIYA_AF_XDP`].
    pub flags: u32,
    /// Generation of the next-hop caches: entries of another generation are stale. The
    /// controller bumps it when routes or neighbours change. 0 turns the caches off.
    pub nexthop_gen: u32,
    /// Cached next hops this many kernel ticks old are looked up again, even if the
    /// controller never bumps the generation (for instance while it is restarting). Ticks,
    /// because `bpf_jiffies64` is one load once the verifier inlines it, where a coarse
    /// clock read is a helper call (measured in docs/ARCHITECTURE.md, "Where the
    /// nanoseconds go"); the controller converts `dataplane.nexthop_max_age_ms`.
    pub nexthop_max_age_ticks: u32,
    /// Valid entries in `lens` and `space`.
    pub n_lens: u32,
    pub n_space: u32,
    /// Prefix lengths present in `PREFIXES`, longest first.
    pub lens: [LenMask; MAX_PREFIX_LENS],
    /// Aggregates covering every tunnel prefix: an IPv6 destination outside all of them
    /// is not tunnel traffic, without a single hash probe.
    pub space: [Prefix64; MAX_SPACE],
    /// The PoP's IPv6: the outer destination of v4v6 packets. All zero = no v4v6.
    pub pop_v6: [u8; 16],
    /// The PoP's own address inside v4v6 tunnels (answers echo requests in XDP).
    pub v4_gateway: [u8; 4],
    /// The pool of v4v6 inner addresses, `net`/`mask` as memory-order u32: IPv4
    /// destinations outside it are not looked up in `V4_ROUTES`. Mask 0 = no v4v6.
    pub v4_net: u32,
    pub v4_mask: u32,
    /// UDP port of TSP on the PoP (network order): v6udpv4 data and control arrive there.
    /// Zero = no v6udpv4.
    pub tsp_port: [u8; 2],
    /// UDP port of AYIYA on the PoP (network order). Zero = no AYIYA.
    pub ayiya_port: [u8; 2],
    /// AF_XDP engine: the fewest bytes an AYIYA packet hashes (header and inner packet)
    /// for XDP to hand it to the worker; smaller ones XDP hashes itself, which is cheaper
    /// for a few SHA-1 blocks (docs/BENCHMARKS.md). Host order.
    pub xsk_min_payload: u16,
    /// Possible CPUs: `NEXTHOP_CLIENT` holds `cpus` entries per slot, one per CPU. Zero
    /// (settings not written yet): no client next hops are cached.
    pub cpus: u16,
    /// UTC minus TAI, seconds: the data plane's wall clock (AYIYA epochs) is
    /// `bpf_ktime_get_tai_ns` plus this. TAI follows clock steps like UTC does, so the
    /// difference only changes with leap seconds; the controller keeps it current.
    pub utc_minus_tai_s: i32,
    /// Every ICMP message the program generates (echo replies, Packet Too Big,
    /// fragmentation needed, Time Exceeded, AYIYA echo responses) takes a token of this
    /// PoP-wide bucket (RFC 4443 2.4 (f)); without one the packet that asked for it is
    /// dropped (`icmp_rate_limited`).
    pub icmp: RateLimit,
    /// Decapsulated packets passed to the kernel to resolve their next hop
    /// (`no_neighbour`) take a token of this bucket; without one they are dropped
    /// (`neighbour_rate_limited`), so clients cannot fill the kernel's neighbour table.
    pub neighbour: RateLimit,
    /// The controller's mark that the maps (and routes) hold the store exactly as of a
    /// generation of it (a hash; zero: not known to). A restarting controller that finds
    /// its store's mark here skips reconciling; the program never reads it.
    pub stamp: [u8; 8],
}

/// A token bucket's parameters (host order). The bucket starts full; `burst` 0 lets
/// nothing through; `per_s` 0 never refills it (the burst, then nothing until the program
/// is replaced).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_s: u32,
    /// Most tokens the bucket holds: what may pass at once after a quiet spell.
    pub burst: u32,
}

impl RateLimit {
    pub const ICMP_DEFAULT: Self = Self {
        per_s: crate::consts::DEFAULT_ICMP_RATE,
        burst: crate::consts::DEFAULT_ICMP_BURST,
    };
    pub const NEIGHBOUR_DEFAULT: Self = Self {
        per_s: crate::consts::DEFAULT_NEIGHBOUR_RATE,
        burst: crate::consts::DEFAULT_NEIGHBOUR_BURST,
    };
}

impl Settings {
    /// The AF_XDP AYIYA worker runs: AYIYA forward packets whose ingress queue has a socket
    /// in `XSKS` are signed or verified there (see [`XskMeta`]); without a socket, or with
    /// this bit clear, XDP hashes them itself.
    pub const AYIYA_AF_XDP: u32 = 1;

    pub const EMPTY: Self = Self {
        pop_v4: [0; 4],
        flags: 0,
        nexthop_gen: 0,
        nexthop_max_age_ticks: 0,
        n_lens: 0,
        n_space: 0,
        lens: [LenMask {
            mask: 0,
            len: 0,
            _pad: 0,
        }; MAX_PREFIX_LENS],
        space: [Prefix64::NONE; MAX_SPACE],
        pop_v6: [0; 16],
        v4_gateway: [0; 4],
        v4_net: 0,
        v4_mask: 0,
        tsp_port: [0; 2],
        ayiya_port: [0; 2],
        xsk_min_payload: 0,
        cpus: 0,
        utc_minus_tai_s: 0,
        icmp: RateLimit::ICMP_DEFAULT,
        neighbour: RateLimit::NEIGHBOUR_DEFAULT,
        stamp: [0; 8],
    };

    /// True when `addr` is inside the v4v6 pool.
    #[inline(always)]
    pub fn in_v4_space(&self, addr: &[u8; 4]) -> bool {
        self.v4_mask != 0 && u32::from_ne_bytes(*addr) & self.v4_mask == self.v4_net
    }

    /// True when `addr` is inside the tunnel space.
    #[inline(always)]
    pub fn in_space(&self, addr: &[u8; 16]) -> bool {
        let hi = upper64(addr);
        let mut i = 0;
        while i < MAX_SPACE {
            if (i as u32) < self.n_space && self.space[i].contains(hi) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Per-tunnel counters (in `TUNNEL_STATS`, one per CPU; userspace sums them).
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

/// Value of `TUNNEL_STATS`: one CPU's counters of one tunnel (entry `slot * cpus + cpu`),
/// padded to 64 bytes. The map is mmapable, so its values start on a page and every entry
/// is a cache line of its own: two CPUs counting the same tunnel never write the same
/// line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelStatsLine {
    pub stats: TunnelStats,
    pub _pad: [u64; 2],
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_fixed() {
        // These sizes are part of the pinned-map contract between program versions.
        assert_eq!(size_of::<Tunnel>(), 184);
        assert_eq!(size_of::<Endpoint4>(), 8);
        assert_eq!(size_of::<UdpEndpoint4>(), 12);
        assert_eq!(size_of::<Endpoint6>(), 32);
        assert_eq!(
            size_of::<Settings>(),
            24 + 16 * MAX_PREFIX_LENS + 16 * MAX_SPACE + 40 + 2 * 8 + 8
        );
        assert_eq!(size_of::<RateLimit>(), 8);
        assert_eq!(size_of::<PrefixKey>(), 16);
        assert_eq!(size_of::<Nexthop>(), 32);
        assert_eq!(size_of::<NexthopNative>(), 48);
        assert_eq!(size_of::<TunnelStats>(), 48);
        assert_eq!(size_of::<TunnelStatsLine>(), 64);
        assert_eq!(size_of::<XskVerdicts>(), 8 * XskVerdicts::WORDS);
        assert_eq!(size_of::<StatPair>(), 16);
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    fn addr(s: [u16; 8]) -> [u8; 16] {
        let mut a = [0u8; 16];
        for (i, w) in s.iter().enumerate() {
            a[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
        }
        a
    }

    #[test]
    fn prefix64_matches_by_mask() {
        let p = Prefix64::new([0x20, 0x01, 0x0d, 0xb8, 0x11, 0x00, 0, 0], 48);
        assert!(p.contains(upper64(&addr([0x2001, 0xdb8, 0x1100, 5, 0, 0, 0, 1]))));
        assert!(!p.contains(upper64(&addr([0x2001, 0xdb8, 0x1101, 0, 0, 0, 0, 1]))));
        let all = Prefix64::new([0; 8], 0);
        assert!(all.contains(upper64(&addr([0xffff, 0, 0, 0, 0, 0, 0, 0]))));
        assert!(!Prefix64::NONE.contains(0));
        assert!(!Prefix64::NONE.contains(u64::MAX));
        let odd = Prefix64::new([0x20, 0x01, 0x0d, 0xb8, 0x11, 0x80, 0, 0], 41);
        assert!(odd.contains(upper64(&addr([0x2001, 0xdb8, 0x11ff, 0, 0, 0, 0, 0]))));
        assert!(!odd.contains(upper64(&addr([0x2001, 0xdb8, 0x1100, 0, 0, 0, 0, 0]))));
    }

    #[test]
    fn hint_indexes_stay_in_the_array_and_spread() {
        use crate::consts::SLOT_HINT_ENTRIES;
        let pop = [192, 0, 2, 1];
        let mut seen = [false; SLOT_HINT_ENTRIES as usize];
        for i in 0..4096u32 {
            let a = [198, 18, (i >> 8) as u8, i as u8];
            let mut v6 = [0u8; 16];
            v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            v6[12..].copy_from_slice(&i.to_be_bytes());
            let upper =
                u64::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8, 0, 0x10, (i >> 8) as u8, i as u8]);
            for x in [
                hint::endpoint4(a, pop, 0),
                hint::endpoint4(a, pop, 0x9c40_13c4),
                hint::endpoint6(&v6, &[0; 16]),
                hint::prefix(upper),
                hint::ayiya(&v6),
                hint::v4_route(a),
            ] {
                assert!(x < SLOT_HINT_ENTRIES, "index {x} out of the array");
                seen[x as usize] = true;
            }
        }
        // 20,480 keys of a few regular families: a poor hash would pile them up.
        let distinct = seen.iter().filter(|s| **s).count();
        assert!(distinct > 15_000, "only {distinct} distinct indexes");
    }

    #[test]
    fn tunnel_owns_link_and_routed_only() {
        let mut t = Tunnel::EMPTY;
        t.link64 = upper64(&addr([0x2001, 0xdb8, 0x10, 1, 0, 0, 0, 0]));
        t.routed[0] = Prefix64::new([0x20, 0x01, 0x0d, 0xb8, 0x11, 0x00, 0, 0], 48);
        t.n_routed = 1;
        assert!(t.owns(&addr([0x2001, 0xdb8, 0x10, 1, 0, 0, 0, 2])));
        assert!(t.owns(&addr([0x2001, 0xdb8, 0x1100, 0xffff, 1, 2, 3, 4])));
        assert!(!t.owns(&addr([0x2001, 0xdb8, 0x10, 2, 0, 0, 0, 2])));
        assert!(!t.owns(&addr([0xfe80, 0, 0, 0, 0, 0, 0, 2])));
        // Entries past n_routed are ignored.
        t.routed[1] = Prefix64::new([0; 8], 0);
        assert!(!t.owns(&addr([0x3000, 0, 0, 0, 0, 0, 0, 1])));
    }
}
