//! Protocol numbers, header sizes and limits, precomputed in the byte order the fast path
//! compares them in.

/// EtherType of IPv4, as it appears on the wire read into a native `u16`.
pub const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
/// EtherType of IPv6, as it appears on the wire read into a native `u16`.
pub const ETH_P_IPV6_BE: u16 = 0x86DDu16.to_be();

/// IP protocol / next-header numbers.
pub const IPPROTO_IPV4: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const ETH_HDR_LEN: usize = 14;
pub const IPV4_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;
pub const ICMPV6_HDR_LEN: usize = 8;

/// Outer TTL of every packet the PoP encapsulates (RFC 4213 leaves it to the implementation;
/// sixxsd uses 64 too).
pub const ENCAP_TTL: u8 = 64;
/// Hop limit of ICMPv6 messages the PoP originates (echo replies, Packet Too Big).
pub const ICMP_HOP_LIMIT: u8 = 64;

/// ICMPv6 types the data plane answers or generates.
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// ICMPv6 types below this value are errors (RFC 4443 section 2.1); no error is ever sent
/// in answer to one (section 2.4 (e)).
pub const ICMPV6_INFO_MIN: u8 = 128;

/// Bytes of the offending packet quoted in a Packet Too Big message generated in XDP: its
/// IPv6 header and 88 bytes of what follows, enough for the sender's kernel to find the
/// socket (RFC 4443 asks for "as much as fits"; Katran quotes less). A multiple of 4, as
/// `bpf_csum_diff` requires.
pub const PTB_QUOTE_LEN: usize = 128;

/// Tunnel MTU bounds (sixxsd and the SixXS clients accept 1280-1480; 1480 is a 1500-byte
/// path minus the 20-byte proto-41 header).
pub const MTU_MIN: u16 = 1280;
pub const MTU_MAX: u16 = 1480;

/// Default capacity of the tunnel maps; `dataplane.max_tunnels` in the config overrides it
/// at load time.
pub const DEFAULT_MAX_TUNNELS: u32 = 65_536;
/// Default capacity of the prefix map (link /64 and routed prefixes of every tunnel).
pub const DEFAULT_MAX_PREFIXES: u32 = 4 * DEFAULT_MAX_TUNNELS;
/// Destinations of decapsulated traffic whose next hop is cached: 2^NEXTHOP6_BITS slots
/// per CPU, direct-mapped.
pub const NEXTHOP6_BITS: u32 = 12;
pub const NEXTHOP6_ENTRIES: u32 = 1 << NEXTHOP6_BITS;
/// How long a cached next hop is trusted without the controller confirming it.
pub const DEFAULT_NEXTHOP_MAX_AGE_MS: u32 = 1_000;

/// Length of the frames the benchmark generator sends.
pub const GEN_FRAME_LEN: usize = 128;

/// Version of the map layouts (keys, values, sizes of `broker_common::maps`). Pins live
/// under `maps-v<N>`: a build with another layout brings new maps, fills them, and swaps
/// the program on the pinned links, so an upgrade never reads maps it does not understand.
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Names of the maps in the object file, which are also their pin names.
pub mod map_names {
    pub const SETTINGS: &str = "SETTINGS";
    pub const TUNNELS: &str = "TUNNELS";
    pub const P41_ENDPOINTS: &str = "P41_ENDPOINTS";
    pub const PREFIXES: &str = "PREFIXES";
    pub const NEXTHOP4: &str = "NEXTHOP4";
    pub const NEXTHOP6: &str = "NEXTHOP6";
    pub const TUNNEL_STATS: &str = "TUNNEL_STATS";
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    pub const BENCH_REDIRECT: &str = "BENCH_REDIRECT";
    pub const BENCH_SINK: &str = "BENCH_SINK";
    pub const GEN_TEMPLATE: &str = "GEN_TEMPLATE";

    /// Every map the controller owns, in the order `broker stats` lists them.
    pub const ALL: [&str; 8] = [
        SETTINGS,
        TUNNELS,
        P41_ENDPOINTS,
        PREFIXES,
        NEXTHOP4,
        NEXTHOP6,
        TUNNEL_STATS,
        GLOBAL_STATS,
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
