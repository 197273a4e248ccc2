//! Layout of `GLOBAL_STATS`, one `PerCpuArray<StatPair>` in sections (Katran's `stats`
//! map): XDP actions, events, drop reasons, pass reasons. Every packet the program sees is
//! counted once under its action and once under its reason (or event).
//!
//! Discriminants are append-only and never reused: a retired reason keeps its number.

/// Slots 0..8: the XDP action returned (`XDP_ABORTED` = 0 ... `XDP_REDIRECT` = 4).
pub const ACTION_BASE: u32 = 0;
/// Slots 16..80: [`Event`]s, things the data plane did, per tunnel kind: event `e` of
/// kind `k` is slot `EVENT_BASE + e * MAX_KINDS + k`.
pub const EVENT_BASE: u32 = 16;
/// Tunnel kinds the event section has room for (`TunnelKind` discriminants 0..8).
pub const MAX_KINDS: u32 = 8;
/// Slots 96..160: [`DropReason`]s.
pub const DROP_BASE: u32 = 96;
/// Slots 160..192: [`PassReason`]s.
pub const PASS_BASE: u32 = 160;
/// Entries in `GLOBAL_STATS`.
pub const GLOBAL_STATS_LEN: u32 = 256;

/// XDP actions by slot, as exported (`broker_xdp_actions_total{action=...}`).
pub const ACTIONS: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];

macro_rules! reasons {
    ($(#[$m:meta])* $name:ident { $($(#[doc = $doc:literal])* $var:ident = $n:literal => $s:literal,)* }) => {
        $(#[$m])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[doc = $doc])* $var = $n,)*
        }

        impl $name {
            /// Every variant, in discriminant order.
            pub const ALL: &'static [Self] = &[$(Self::$var,)*];

            /// Label value in metrics and `broker stats`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$var => $s,)*
                }
            }

            /// One-line explanation, for documentation and `broker stats`.
            pub const fn describe(self) -> &'static str {
                match self {
                    $(Self::$var => concat!($($doc),*),)*
                }
            }
        }
    };
}

reasons! {
    /// Something the data plane did to a packet (besides passing or dropping it).
    Event {
        /// A tunnel packet was decapsulated (to native IPv6, or IPv4 for v4v6).
        Decap = 0 => "decap",
        /// A native packet was encapsulated into a tunnel.
        Encap = 1 => "encap",
        /// An echo request to the PoP's tunnel address was answered in XDP.
        EchoReply = 2 => "echo_reply",
        /// A packet over the tunnel MTU was answered with ICMPv6 Packet Too Big (ICMPv4
        /// fragmentation needed for v4v6).
        PacketTooBig = 3 => "packet_too_big",
        /// An AYIYA beat (noop) was verified: the tunnel's client is alive (and may have
        /// moved); nothing to forward.
        Beat = 4 => "beat",
        /// A packet whose hop limit (TTL) would reach zero was answered with ICMPv6 Time
        /// Exceeded (ICMPv4 time exceeded for v4v6), through the tunnel or natively.
        TimeExceeded = 5 => "time_exceeded",
    }
}

reasons! {
    /// Why a packet was dropped. Each is also a `broker_drops_total{reason=...}` series.
    DropReason {
        /// A tunnel packet is shorter than its headers or than its length fields say.
        Truncated = 0 => "truncated",
        /// Outer IPv4 header of a tunnel packet is inconsistent (IHL, total length).
        BadIpv4Header = 1 => "bad_ipv4_header",
        /// Outer IPv4 header checksum is wrong.
        BadIpv4Checksum = 2 => "bad_ipv4_checksum",
        /// Outer IPv4 header carries options; no client sends them.
        Ipv4Options = 3 => "ipv4_options",
        /// Outer IPv4 packet is a fragment; the PoP does not reassemble tunnel packets.
        OuterFragment = 4 => "outer_fragment",
        /// Tunnel packet from an endpoint (AYIYA: an identity) no tunnel has.
        UnknownEndpoint = 5 => "unknown_endpoint",
        /// Packet arrived by an encapsulation other than its tunnel's kind.
        KindMismatch = 6 => "kind_mismatch",
        /// The tunnel is down.
        TunnelDown = 7 => "tunnel_down",
        /// The tunnel is disabled by the operator.
        TunnelDisabled = 8 => "tunnel_disabled",
        /// Inner packet is not of the tunnel's family, malformed, or its length disagrees
        /// with the outer header.
        BadInnerHeader = 9 => "bad_inner_header",
        /// Inner source is outside the tunnel's link /64 and routed prefixes (v4v6: is not
        /// the client's IPv4); link-scoped packets are `link_local` instead.
        SpoofedSource = 10 => "spoofed_source",
        /// Hop limit (TTL) would reach zero, and no Time Exceeded may answer it: the
        /// packet is itself an ICMP error, was sent to multicast (or as a link-layer
        /// multicast), or is a non-initial IPv4 fragment.
        HopLimitExceeded = 11 => "hop_limit_exceeded",
        /// Traffic other than echo requests addressed to the PoP's tunnel address.
        PopAddress = 12 => "pop_address",
        /// The kernel's routing table says blackhole, unreachable or prohibit.
        NoRoute = 13 => "no_route",
        /// Over the tunnel MTU and itself an ICMP error, so no Packet Too Big (or
        /// fragmentation needed) is sent.
        TooBigIcmpError = 14 => "too_big_icmp_error",
        /// The kernel refused to grow or shrink the packet.
        AdjustFailed = 15 => "adjust_failed",
        /// A lookup map pointed at a slot that holds no tunnel (a map update in progress).
        StaleSlot = 16 => "stale_slot",
        /// Over the MTU of a tunnel it is forwarded into from another tunnel; no Packet Too
        /// Big goes back through the first one.
        TooBigHairpin = 17 => "too_big_hairpin",
        /// The UDP header of a v6udpv4 packet is inconsistent (length field).
        BadUdpHeader = 18 => "bad_udp_header",
        /// An IPv4 packet over a v4v6 tunnel's MTU without Don't Fragment: the PoP does not
        /// fragment.
        TooBigNoDf = 19 => "too_big_no_df",
        /// An AYIYA header with an identity, signature or authentication other than the
        /// SixXS clients send (16-byte identity, SHA-1, shared secret).
        BadAyiyaHeader = 20 => "bad_ayiya_header",
        /// An AYIYA packet whose epoch is more than 120 s away from the PoP's clock.
        StaleEpoch = 21 => "stale_epoch",
        /// An AYIYA packet whose SHA-1 signature does not verify with its tunnel's key.
        BadSignature = 22 => "bad_signature",
        /// An AYIYA packet whose next header does not match its payload (or its opcode).
        WrongNextHeader = 23 => "wrong_next_header",
        /// An AYIYA opcode the PoP does not handle (only forward, noop and echo request).
        AyiyaOpcode = 24 => "ayiya_opcode",
        /// Into a tunnel whose client has not been heard from yet (AYIYA, heartbeat): no
        /// address to send to.
        NoEndpoint = 25 => "no_endpoint",
        /// A link-scoped packet from the client's side of the tunnel (link-local or
        /// unspecified source, link-local or `ff02::/16` destination): router and
        /// neighbour solicitations, MLD. Never forwarded; not spoofing.
        LinkLocal = 26 => "link_local",
        /// An ICMP message (echo reply, Packet Too Big, fragmentation needed, Time
        /// Exceeded) was due, but the PoP-wide ICMP rate limit had no token left.
        IcmpRateLimited = 27 => "icmp_rate_limited",
        /// A decapsulated packet whose next hop is not resolved would have been passed to
        /// the kernel (`no_neighbour`), but the PoP-wide limit on those had no token left.
        NeighbourRateLimited = 28 => "neighbour_rate_limited",
        /// An ICMP message was due to an address that may not receive one: multicast,
        /// unspecified, loopback or link-local (IPv4: 0/8, 127/8, multicast, reserved,
        /// broadcast); RFC 4443 2.4 (e), RFC 1122 3.2.2.
        IcmpBadSource = 29 => "icmp_bad_source",
    }
}

reasons! {
    /// Why a packet was passed to the kernel. Each is a `broker_passes_total{reason=...}`.
    PassReason {
        /// Not tunnel traffic: not to the PoP, not to a tunnel prefix. Untouched.
        NotTunnel = 0 => "not_tunnel",
        /// Too short or malformed to classify (Ethernet, IPv4 or IPv6 header). Untouched.
        Unparsed = 1 => "unparsed",
        /// Forwardable, but the next hop's MAC is not resolved yet: the kernel forwards it
        /// and resolves the neighbour. The packet is already de/encapsulated.
        NoNeighbour = 2 => "no_neighbour",
        /// Larger than the egress interface MTU: the kernel sends the ICMP error.
        FragNeeded = 3 => "frag_needed",
        /// The route says the destination is local or not forwarded from this interface.
        NotForwarded = 4 => "not_forwarded",
        /// The FIB lookup failed otherwise (forwarding disabled, no device, LWT).
        FibError = 5 => "fib_error",
        /// A TSP control message (first nibble 0xF after the UDP header) on the TSP port:
        /// for the TSP server. Untouched.
        TspControl = 6 => "tsp_control",
    }
}

impl Event {
    /// The slot of this event for tunnels of kind `kind` (a `TunnelKind` discriminant).
    pub const fn slot(self, kind: u8) -> u32 {
        EVENT_BASE + self as u32 * MAX_KINDS + (kind as u32 & (MAX_KINDS - 1))
    }
}

impl DropReason {
    pub const fn slot(self) -> u32 {
        DROP_BASE + self as u32
    }
}

impl PassReason {
    pub const fn slot(self) -> u32 {
        PASS_BASE + self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_do_not_overlap() {
        assert!(ACTION_BASE + ACTIONS.len() as u32 <= EVENT_BASE);
        assert!(Event::ALL.last().unwrap().slot(MAX_KINDS as u8 - 1) < DROP_BASE);
        assert!(DropReason::ALL.last().unwrap().slot() < PASS_BASE);
        assert!(PassReason::ALL.last().unwrap().slot() < GLOBAL_STATS_LEN);
    }

    #[test]
    fn discriminants_are_dense_and_labels_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert!(!r.describe().is_empty());
        }
        for (i, r) in PassReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, a) in DropReason::ALL.iter().enumerate() {
            for b in &DropReason::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }
}
