//! IPv4 in IPv6 (TSP `v4v6`, RFC 2473): IPv4 service for IPv6-only clients. Both
//! directions: an IPv6 packet with next header 4 from the client's IPv6 to the PoP's is
//! decapsulated to native IPv4; native IPv4 to a client's inner address is encapsulated.
use aya_ebpf::programs::XdpContext;
use broker_common::{
    consts::{ENCAP_TTL, ETH_HDR_LEN, ETH_P_IPV4_BE, ETH_P_IPV6_BE, IPPROTO_IPV4, IPV6_HDR_LEN},
    csum,
    maps::{hint, Endpoint6, Settings, Tunnel, TunnelKind},
    stats::{DropReason, Event},
};

use crate::{
    encap::Origin,
    forward, head,
    headers::{Aligned, Ipv4Hdr, Ipv6Hdr},
    icmp4, maps,
    outcome::Verdict,
    ptr,
    stats::{self, Dir},
    tunnel::{self, Found, Way},
};

/// Offset of the inner IPv4 header of a v4v6 packet.
const INNER: usize = ETH_HDR_LEN + IPV6_HDR_LEN;

/// From a v4v6 tunnel (the outer header was seen to be IPv6, next header 4, to the PoP).
#[inline(always)]
pub fn decap(ctx: &XdpContext, s: &Settings) -> Verdict {
    let outer = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked; a copy.
    let outer = unsafe { Aligned(*outer) };
    let len = outer.packet_len();
    if ETH_HDR_LEN + len > ptr::frame_len(ctx) {
        return Err(DropReason::Truncated);
    }
    let key = Endpoint6 {
        remote: outer.src,
        local: outer.dst,
    };
    let (slot, t) = tunnel::by_endpoint(
        &maps::V6_ENDPOINTS,
        key,
        hint::endpoint6(&outer.src, &outer.dst),
        |t| {
            t.kind == TunnelKind::V4In6 as u8 && t.remote_v6 == outer.src && t.local_v6 == outer.dst
        },
    )?;
    let inner_len = len - IPV6_HDR_LEN;
    tunnel::check_usable(t, slot, TunnelKind::V4In6, Way::FromClient, inner_len)?;

    let inner = ptr::at::<Ipv4Hdr>(ctx, INNER)
        .ok_or_else(|| tunnel::drop(slot, inner_len, DropReason::Truncated))?;
    // SAFETY: bounds checked.
    let ip = unsafe { &*inner };
    // Options are legal but no client sends them; refusing them keeps the checks fixed-size.
    if ip.version_ihl != 0x45 || ip.tot_len() != inner_len || !csum::ipv4_header_ok(ip.as_bytes()) {
        return Err(tunnel::drop(slot, inner_len, DropReason::BadInnerHeader));
    }
    if ip.src != t.client_v4 {
        return Err(tunnel::drop(slot, inner_len, DropReason::SpoofedSource));
    }
    if ip.dst == s.v4_gateway {
        return icmp4::echo_reply_in_tunnel(ctx, s, t, slot, inner_len);
    }
    if ip.ttl <= 1 {
        return icmp4::time_exceeded_in_tunnel(ctx, s, t, slot, inner_len);
    }

    stats::tunnel_of(s, slot, Dir::FromClient, inner_len as u64);
    stats::event(Event::Decap, t.kind, inner_len as u64);
    head::shift(ctx, IPV6_HDR_LEN as i32, ETH_P_IPV4_BE)?;
    forward::native4(ctx, s, inner_len)
}

/// Native IPv4 to the inner address of the v4v6 tunnel `found`.
#[inline(always)]
pub fn encap(ctx: &XdpContext, s: &Settings, found: Found, origin: Origin) -> Verdict {
    let (slot, t) = (found.slot, found.tunnel()?);
    let ip = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let ipr = unsafe { &mut *ip };
    let len = ipr.tot_len();
    if ipr.version_ihl >> 4 != 4 || len < ipr.header_len() {
        return Err(DropReason::BadIpv4Header);
    }
    if ETH_HDR_LEN + len > ptr::frame_len(ctx) {
        return Err(DropReason::Truncated);
    }
    tunnel::check_usable(t, slot, TunnelKind::V4In6, Way::ToClient, len)?;
    if ipr.ttl <= 1 {
        // From another tunnel the TTL was checked before decapsulation.
        return match origin {
            Origin::Native => icmp4::time_exceeded_native(ctx, s, t, slot, len),
            Origin::Tunnel => Err(tunnel::drop(slot, len, DropReason::HopLimitExceeded)),
        };
    }
    if len > t.mtu as usize {
        return match (origin, ipr.dont_fragment()) {
            (Origin::Native, true) => icmp4::frag_needed(ctx, s, t, slot, len),
            (Origin::Tunnel, _) => Err(tunnel::drop(slot, len, DropReason::TooBigHairpin)),
            (Origin::Native, false) => Err(tunnel::drop(slot, len, DropReason::TooBigNoDf)),
        };
    }
    let tos = ipr.tos;
    forward::decrement_ttl(ipr);

    push_ipv6(ctx, t, len, tos)?;
    stats::tunnel_of(s, slot, Dir::ToClient, len as u64);
    stats::event(Event::Encap, t.kind, len as u64);
    forward::to_client(ctx, s, t, slot, IPV6_HDR_LEN, len + IPV6_HDR_LEN, tos)
}

/// Prepends the outer IPv6 header (RFC 2473): next header 4, hop limit 64, the inner TOS
/// as traffic class, from the PoP's IPv6 to the client's.
#[inline(always)]
pub fn push_ipv6(
    ctx: &XdpContext,
    t: &Tunnel,
    inner_len: usize,
    tos: u8,
) -> Result<(), DropReason> {
    head::shift(ctx, -(IPV6_HDR_LEN as i32), ETH_P_IPV6_BE)?;
    let outer = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::AdjustFailed)?;
    // SAFETY: bounds checked after the adjustment.
    unsafe {
        let o = &mut *outer;
        o.vtc_flow = [0x60 | (tos >> 4), tos << 4, 0, 0];
        o.payload_len = (inner_len as u16).to_be_bytes();
        o.next_header = IPPROTO_IPV4;
        o.hop_limit = ENCAP_TTL;
        forward::copy16(&mut o.src, &t.local_v6);
        forward::copy16(&mut o.dst, &t.remote_v6);
    }
    Ok(())
}
