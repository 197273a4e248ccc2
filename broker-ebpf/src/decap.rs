//! From an IPv4-outer tunnel to native IPv6: proto-41 (`from_6in4`), TSP's v6udpv4
//! (IPv6 right after a UDP header) and, through [`crate::ayiya`], AYIYA. Validate the outer headers, find the tunnel by its
//! endpoints, check the inner packet, strip, forward.
use aya_ebpf::programs::XdpContext;
use broker_common::{
    consts::{ETH_HDR_LEN, ETH_P_IPV6_BE, IPV4_HDR_LEN, UDP_HDR_LEN},
    csum,
    maps::{hint, Endpoint4, Settings, Tunnel, TunnelKind, UdpEndpoint4},
    scope,
    stats::{DropReason, Event, PassReason},
};

use crate::{
    ayiya, forward, head,
    headers::{Aligned, Ipv4Hdr, Ipv6Hdr, UdpHdr},
    icmp6, maps,
    outcome::{Outcome, Verdict},
    ptr,
    stats::{self, Dir},
    tunnel::{self, Way},
};

/// Offset of the outer UDP header of v6udpv4 packets (the outer IPv4 has no options).
const UDP: usize = ETH_HDR_LEN + IPV4_HDR_LEN;
/// The first nibble of a TSP control message: the signature of its sequence number. Old
/// senders that write it little-endian put the signature in the fourth byte; their first
/// byte is the sequence number's low byte, which is not 6x in any session that does not
/// send hundreds of messages, so they reach the kernel as `unparsed`.
const TSP_SIGNATURE: u8 = 0xf0;
const NOT_TUNNEL: Verdict = Ok(Outcome::Pass(PassReason::NotTunnel));
const UNPARSED: Verdict = Ok(Outcome::Pass(PassReason::Unparsed));

#[inline(always)]
pub fn proto41(ctx: &XdpContext, s: &Settings) -> Verdict {
    let ip = outer_ipv4(ctx)?;
    if ip.is_fragment() {
        return Err(DropReason::OuterFragment);
    }
    let key = Endpoint4 {
        remote: ip.src,
        local: ip.dst,
    };
    let (slot, t) = tunnel::by_endpoint(
        &maps::P41_ENDPOINTS,
        key,
        hint::endpoint4(ip.src, ip.dst, 0),
        |t| t.kind == TunnelKind::Proto41 as u8 && t.remote_v4 == ip.src && t.local_v4 == ip.dst,
    )?;
    let inner_len = ip.tot_len() - IPV4_HDR_LEN;
    tunnel::check_usable(t, slot, TunnelKind::Proto41, Way::FromClient, inner_len)?;
    inner_ipv6(ctx, s, t, slot, IPV4_HDR_LEN, inner_len)
}

/// A UDP datagram to the PoP's IPv4: TSP's port (v6udpv4 data, TSP control) or AYIYA's;
/// anything else is the kernel's.
#[inline(always)]
pub fn udp(ctx: &XdpContext, s: &Settings) -> Verdict {
    let Some(ip) = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        return UNPARSED;
    };
    // SAFETY: bounds checked; a copy.
    let ip = unsafe { Aligned(*ip) };
    // Options move the UDP header, and later fragments have none: the kernel's.
    if ip.version_ihl != 0x45 || ip.is_later_fragment() {
        return NOT_TUNNEL;
    }
    let Some(udp) = ptr::at::<UdpHdr>(ctx, UDP) else {
        return UNPARSED;
    };
    // SAFETY: bounds checked; a copy.
    let udp = unsafe { Aligned(*udp) };
    if udp.dst == s.tsp_port && s.tsp_port != [0; 2] {
        v6udpv4(ctx, s, &ip, &udp)
    } else if udp.dst == s.ayiya_port && s.ayiya_port != [0; 2] {
        ayiya::decap(ctx, s, &ip, &udp)
    } else {
        NOT_TUNNEL
    }
}

/// On the TSP port, a first payload nibble of 6 is v6udpv4 data; TSP control messages
/// (0xF) and anything unclassifiable go to the kernel, where the TSP server listens.
#[inline(always)]
fn v6udpv4(ctx: &XdpContext, s: &Settings, ip: &Ipv4Hdr, udp: &UdpHdr) -> Verdict {
    let Some(first) = ptr::at::<u8>(ctx, UDP + UDP_HDR_LEN) else {
        return UNPARSED;
    };
    // SAFETY: bounds checked.
    let first = unsafe { *first };
    if first & 0xf0 == TSP_SIGNATURE {
        return Ok(Outcome::Pass(PassReason::TspControl));
    }
    if first >> 4 != 6 {
        return UNPARSED;
    }

    // From here on it is tunnel data: every defect is a counted drop. The copy taken
    // above serves the checks (no second read of the header).
    check_outer_ipv4(ctx, ip)?;
    if ip.is_fragment() {
        return Err(DropReason::OuterFragment);
    }
    let udp_len = u16::from_be_bytes(udp.len) as usize;
    if udp_len != ip.tot_len() - IPV4_HDR_LEN || udp_len < UDP_HDR_LEN {
        return Err(DropReason::BadUdpHeader);
    }
    let key = UdpEndpoint4 {
        remote: ip.src,
        local: ip.dst,
        remote_port: udp.src,
        local_port: udp.dst,
    };
    let ports = u32::from_ne_bytes([udp.src[0], udp.src[1], udp.dst[0], udp.dst[1]]);
    let (slot, t) = tunnel::by_endpoint(
        &maps::UDP_ENDPOINTS,
        key,
        hint::endpoint4(ip.src, ip.dst, ports),
        |t| {
            t.kind == TunnelKind::V6Udp4 as u8
                && t.remote_v4 == ip.src
                && t.local_v4 == ip.dst
                && t.remote_port == udp.src
                && t.local_port == udp.dst
        },
    )?;
    let inner_len = udp_len - UDP_HDR_LEN;
    tunnel::check_usable(t, slot, TunnelKind::V6Udp4, Way::FromClient, inner_len)?;
    inner_ipv6(ctx, s, t, slot, IPV4_HDR_LEN + UDP_HDR_LEN, inner_len)
}

/// The outer IPv4 header of a packet identified as tunnel traffic, checked (see
/// [`check_outer_ipv4`]). Returns a copy.
#[inline(always)]
fn outer_ipv4(ctx: &XdpContext) -> Result<Aligned<Ipv4Hdr>, DropReason> {
    let ip = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked; a copy, so later head adjustments cannot invalidate it.
    let ip = unsafe { Aligned(*ip) };
    check_outer_ipv4(ctx, &ip)?;
    Ok(ip)
}

/// Checks a tunnel packet's outer IPv4 header: version, no options, checksum, total length
/// within the frame.
#[inline(always)]
pub(crate) fn check_outer_ipv4(ctx: &XdpContext, ip: &Ipv4Hdr) -> Result<(), DropReason> {
    if ip.version_ihl >> 4 != 4 || ip.version_ihl & 0xf < 5 {
        return Err(DropReason::BadIpv4Header);
    }
    if ip.version_ihl & 0xf != 5 {
        return Err(DropReason::Ipv4Options);
    }
    if !csum::ipv4_header_ok(ip.as_bytes()) {
        return Err(DropReason::BadIpv4Checksum);
    }
    let tot_len = ip.tot_len();
    if tot_len < IPV4_HDR_LEN {
        return Err(DropReason::BadIpv4Header);
    }
    if ETH_HDR_LEN + tot_len > ptr::frame_len(ctx) {
        return Err(DropReason::Truncated);
    }
    Ok(())
}

/// The inner IPv6 packet `outer` bytes after the Ethernet header, of `inner_len` bytes,
/// from tunnel `t`: check it, answer echo to the PoP or a hop limit that runs out here,
/// or strip the outer headers and forward.
#[inline(always)]
pub(crate) fn inner_ipv6(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    outer: usize,
    inner_len: usize,
) -> Verdict {
    let inner = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN + outer)
        .ok_or_else(|| tunnel::drop(slot, inner_len, DropReason::Truncated))?;
    // SAFETY: bounds checked.
    let inner = unsafe { &*inner };
    if inner.version() != 6 || inner.packet_len() != inner_len {
        return Err(tunnel::drop(slot, inner_len, DropReason::BadInnerHeader));
    }
    if scope::link_scoped(&inner.src, &inner.dst) {
        return Err(tunnel::drop(slot, inner_len, DropReason::LinkLocal));
    }
    if !t.owns(&inner.src) {
        return Err(tunnel::drop(slot, inner_len, DropReason::SpoofedSource));
    }
    if inner.dst == t.pop_v6 {
        return icmp6::echo_reply_in_tunnel(ctx, s, t, slot, outer, inner_len);
    }
    if inner.hop_limit <= 1 {
        return icmp6::time_exceeded_in_tunnel(ctx, s, t, slot, outer, inner_len);
    }

    stats::tunnel_of(s, slot, Dir::FromClient, inner_len as u64);
    stats::event(Event::Decap, t.kind, inner_len as u64);
    head::shift(ctx, outer as i32, ETH_P_IPV6_BE)?;
    forward::native6(ctx, s, inner_len)
}
