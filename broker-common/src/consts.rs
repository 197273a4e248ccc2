//! Protocol numbers, header sizes and limits, precomputed in the byte order the fast path
//! compares them in.

/// EtherType of IPv4, as it appears on the wire read into a native `u16`.
pub const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
/// EtherType of IPv6, as it appears on the wire read into a native `u16`.
pub const ETH_P_IPV6_BE: u16 = 0x86DDu16.to_be();

/// IP protocol / next-header numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPV4: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const ETH_HDR_LEN: usize = 14;
pub const IPV4_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;
pub const ICMPV6_HDR_LEN: usize = 8;
pub const ICMPV4_HDR_LEN: usize = 8;
pub const UDP_HDR_LEN: usize = 8;

/// Outer TTL of every packet the PoP encapsulates (RFC 4213 leaves it to the implementation;
/// sixxsd uses 64 too).
pub const ENCAP_TTL: u8 = 64;
/// Hop limit of ICMPv6 messages the PoP originates (echo replies, Packet Too Big, Time
/// Exceeded), and TTL of its ICMPv4 ones.
pub const ICMP_HOP_LIMIT: u8 = 64;

/// ICMPv6 types the data plane answers or generates.
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// Time Exceeded; code 0 is "hop limit exceeded in transit" (RFC 4443 section 3.3).
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// ICMPv6 types below this value are errors (RFC 4443 section 2.1); no error is ever sent
/// in answer to one (section 2.4 (e)).
pub const ICMPV6_INFO_MIN: u8 = 128;

/// ICMPv4 types and codes the data plane answers or generates.
pub const ICMPV4_ECHO_REPLY: u8 = 0;
pub const ICMPV4_DEST_UNREACH: u8 = 3;
pub const ICMPV4_FRAG_NEEDED: u8 = 4;
pub const ICMPV4_ECHO_REQUEST: u8 = 8;
/// Time exceeded; code 0 is "time to live exceeded in transit" (RFC 792).
pub const ICMPV4_TIME_EXCEEDED: u8 = 11;
/// ICMPv4 error types (RFC 1122 3.2.2: never an error about one of these): destination
/// unreachable, source quench, redirect, time exceeded, parameter problem.
pub const ICMPV4_ERRORS: [u8; 5] = [ICMPV4_DEST_UNREACH, 4, 5, ICMPV4_TIME_EXCEEDED, 12];

/// Bytes of an IPv4 packet quoted in the ICMPv4 errors the PoP generates ("fragmentation
/// needed" over a v4v6 tunnel's MTU, time exceeded), at most: the header and 44 bytes of
/// what follows (RFC 792 asks for 8, RFC 1812 for as much as fits in 576; this is enough
/// for any transport header and keeps the checksum a fixed-size `bpf_csum_diff`). A
/// multiple of 4. Shorter packets are quoted whole.
pub const FRAG_NEEDED_QUOTE_LEN: usize = 64;

/// The TSP port (RFC 5572): TSP control over TCP and UDP, and v6udpv4 data on UDP.
pub const TSP_PORT: u16 = 3653;

/// The AYIYA port (draft-massar-v6ops-ayiya): signed IPv6 in UDP, handled in XDP.
pub const AYIYA_PORT: u16 = 5072;
/// The AYIYA header: 8 fixed bytes, a 16-byte identity, a 20-byte SHA-1 signature.
pub const AYIYA_HDR_LEN: usize = 44;
/// Where the signature sits in the AYIYA header.
pub const AYIYA_SIG_OFF: usize = 24;
/// The first three header bytes every SixXS client and PoP sends: a 16-byte integer
/// identity (0x41), a 20-byte SHA-1 signature (0x52), shared-secret authentication in the
/// high nibble of the third byte (its low nibble is the opcode).
pub const AYIYA_ID_BYTE: u8 = 0x41;
pub const AYIYA_SIG_BYTE: u8 = 0x52;
pub const AYIYA_AUTH_SHARED: u8 = 0x10;
/// AYIYA opcodes the PoP handles (others are counted and dropped).
pub const AYIYA_OP_NOOP: u8 = 0;
pub const AYIYA_OP_FORWARD: u8 = 1;
pub const AYIYA_OP_ECHO_REQUEST: u8 = 2;
pub const AYIYA_OP_ECHO_RESPONSE: u8 = 4;
/// Next header of an AYIYA packet without payload (a beat).
pub const IPPROTO_NONE: u8 = 59;
/// Largest clock difference accepted on AYIYA packets, seconds (sixxsd `MAX_CLOCK_OFF`).
pub const AYIYA_MAX_CLOCK_OFF: u32 = 120;

/// Bytes of the offending packet quoted in the ICMPv6 errors generated in XDP (Packet Too
/// Big, Time Exceeded), at most: its IPv6 header and 88 bytes of what follows, enough for
/// the sender's kernel to find the socket and for traceroute to match its probe (RFC 4443
/// asks for "as much as fits"; Katran quotes less). A multiple of 4, as `bpf_csum_diff`
/// requires. Shorter packets are quoted whole.
pub const PTB_QUOTE_LEN: usize = 128;

/// Tunnel MTU bounds (sixxsd and the SixXS clients accept 1280-1480; 1480 is a 1500-byte
/// path minus the 20-byte proto-41 header). Each kind's own maximum is
/// [`crate::maps::TunnelKind::mtu_max`], a 1500-byte path minus its overhead.
pub const MTU_MIN: u16 = 1280;
pub const MTU_MAX: u16 = 1480;

/// Default capacity of the tunnel maps; `dataplane.max_tunnels` in the config overrides it
/// at load time.
pub const DEFAULT_MAX_TUNNELS: u32 = 65_536;
/// Default capacity of the prefix map (link /64 and routed prefixes of every tunnel).
pub const DEFAULT_MAX_PREFIXES: u32 = 4 * DEFAULT_MAX_TUNNELS;
/// Destinations of decapsulated traffic whose next hop is cached: 2^NEXTHOP_NATIVE_BITS
/// slots per CPU, direct-mapped.
pub const NEXTHOP_NATIVE_BITS: u32 = 12;
pub const NEXTHOP_NATIVE_ENTRIES: u32 = 1 << NEXTHOP_NATIVE_BITS;
/// Lookups whose tunnel slot is remembered in front of the hash maps (endpoints, AYIYA
/// identities, prefixes, v4v6 routes): 2^SLOT_HINT_BITS entries, direct-mapped
/// (`SLOT_HINTS`).
pub const SLOT_HINT_BITS: u32 = 16;
pub const SLOT_HINT_ENTRIES: u32 = 1 << SLOT_HINT_BITS;
/// How long a cached next hop is trusted without the controller confirming it.
pub const DEFAULT_NEXTHOP_MAX_AGE_MS: u32 = 1_000;

/// ICMP messages the data plane generates (echo replies, Packet Too Big, fragmentation
/// needed, Time Exceeded, AYIYA echo responses), per second and in a burst, PoP-wide
/// (RFC 4443 2.4 (f)). Beyond it the packet that would have caused one is dropped
/// (`icmp_rate_limited`).
pub const DEFAULT_ICMP_RATE: u32 = 1_000;
pub const DEFAULT_ICMP_BURST: u32 = 100;
/// Decapsulated packets handed to the kernel to resolve their next hop (`no_neighbour`),
/// per second and in a burst, PoP-wide: every one may make the kernel create a neighbour
/// entry, and a client can address any of the 2^64 hosts of a connected /64. Beyond it
/// they are dropped (`neighbour_rate_limited`).
pub const DEFAULT_NEIGHBOUR_RATE: u32 = 100;
pub const DEFAULT_NEIGHBOUR_BURST: u32 = 50;

/// AF_XDP engine: how long XDP verifies a tunnel's AYIYA packets itself (in-XDP SHA-1, on
/// the receiving CPU) after the worker found a forged one among them, instead of handing
/// them to the worker, whose ring every tunnel on that receive queue shares.
pub const DEFAULT_XSK_SUSPECT_MS: u32 = 1_000;

/// `BPF_F_MMAPABLE` (`linux/bpf.h`): an array map whose values userspace can map into its
/// memory and update with atomics, without a system call.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Length of the frames the benchmark generator sends.
pub const GEN_FRAME_LEN: usize = 128;

/// Version of the map layouts (keys, values, sizes of `broker_common::maps`). Pins live
/// under `maps-v<N>`: a build with another layout brings new maps, fills them, and swaps
/// the program on the pinned links, so an upgrade never reads maps it does not understand.
/// 2: the TSP kinds; 3: AYIYA; 4: the rate limits in `Settings`, and `XSK_VERDICTS` (the
/// AF_XDP worker's counts, pinned) with `XSK_SUSPECT`.
pub const MAP_LAYOUT_VERSION: u32 = 5;

/// Names of the maps in the object file, which are also their pin names.
pub mod map_names {
    pub const SETTINGS: &str = "SETTINGS";
    pub const TUNNELS: &str = "TUNNELS";
    pub const P41_ENDPOINTS: &str = "P41_ENDPOINTS";
    pub const UDP_ENDPOINTS: &str = "UDP_ENDPOINTS";
    pub const V6_ENDPOINTS: &str = "V6_ENDPOINTS";
    pub const V4_ROUTES: &str = "V4_ROUTES";
    pub const AYIYA_IDS: &str = "AYIYA_IDS";
    pub const PREFIXES: &str = "PREFIXES";
    pub const NEXTHOP_CLIENT: &str = "NEXTHOP_CLIENT";
    pub const NEXTHOP_NATIVE: &str = "NEXTHOP_NATIVE";
    pub const TUNNEL_STATS: &str = "TUNNEL_STATS";
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    pub const BENCH_REDIRECT: &str = "BENCH_REDIRECT";
    pub const BENCH_SINK: &str = "BENCH_SINK";
    pub const GEN_TEMPLATE: &str = "GEN_TEMPLATE";
    /// AF_XDP sockets of the AYIYA worker (`XskMap`), and the first index of each
    /// interface's sockets in it (`HashMap<u32 ifindex, u32>`). Never pinned: the sockets
    /// belong to the running controller, and close (leaving the entries) with it.
    pub const XSKS: &str = "XSKS";
    pub const XSK_IFACES: &str = "XSK_IFACES";
    /// What the AYIYA worker decided about the packets XDP handed it to verify, per tunnel
    /// slot (`XskVerdicts`): pinned with the counters, which it completes.
    pub const XSK_VERDICTS: &str = "XSK_VERDICTS";
    /// Per tunnel slot, until when XDP verifies the tunnel's AYIYA packets itself, as the
    /// worker asked. Never pinned (like `XSKS`): a new controller starts with none.
    pub const XSK_SUSPECT: &str = "XSK_SUSPECT";
    /// Direct-mapped hints in front of the lookup maps (slot + 1 by key hash), written and
    /// read by the program only, every hint checked against `TUNNELS`. Never pinned: a
    /// new program starts with none.
    pub const SLOT_HINTS: &str = "SLOT_HINTS";

    /// Every map the controller owns, in the order `broker stats` lists them.
    pub const ALL: [&str; 13] = [
        SETTINGS,
        TUNNELS,
        P41_ENDPOINTS,
        UDP_ENDPOINTS,
        V6_ENDPOINTS,
        V4_ROUTES,
        AYIYA_IDS,
        PREFIXES,
        NEXTHOP_CLIENT,
        NEXTHOP_NATIVE,
        TUNNEL_STATS,
        GLOBAL_STATS,
        XSK_VERDICTS,
    ];
}

/// Names of the XDP programs in the object file.
pub mod program_names {
    /// The data plane: attached to every interface in `interfaces`.
    pub const BROKER: &str = "broker_xdp";
    /// Returns `XDP_PASS` and nothing else: lets a veth peer receive redirected frames and is
    /// the no-op baseline of the benchmark.
    pub const PASS: &str = "xdp_pass";
    /// Benchmark baseline: redirects every frame to the interface in `BENCH_REDIRECT`.
    pub const BENCH_REDIRECT: &str = "bench_redirect";
    /// Benchmark sink: counts frames into `BENCH_SINK` and drops them.
    pub const BENCH_SINK: &str = "bench_sink";
    /// Benchmark traffic generator (live frames), writes `GEN_TEMPLATE` into every frame.
    pub const BENCH_GEN: &str = "bench_gen";
}
