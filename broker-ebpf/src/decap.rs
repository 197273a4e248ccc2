//! From a proto-41 tunnel to native IPv6 (`from_6in4`): validate the outer IPv4 header,
//! find the tunnel by its endpoints, check the inner packet, strip, forward.
use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use broker_common::{
    consts::{ETH_HDR_LEN, ETH_P_IPV6_BE, IPV4_HDR_LEN},
    csum,
    maps::{Endpoint4, Settings, TunnelKind},
    stats::{DropReason, Event},
};

use crate::{
    forward,
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr},
    icmp6, maps,
    outcome::Verdict,
    ptr,
    stats::{self, Dir},
    tunnel,
};

/// Offset of the inner IPv6 header.
const INNER: usize = ETH_HDR_LEN + IPV4_HDR_LEN;

#[inline(always)]
pub fn proto41(ctx: &XdpContext, s: &Settings) -> Verdict {
    let ip = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked; a copy, so later head adjustments cannot invalidate it.
    let ip = unsafe { *ip };
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
    if ip.is_fragment() {
        return Err(DropReason::OuterFragment);
    }

    let key = Endpoint4 {
        remote: ip.src,
        local: ip.dst,
    };
    let slot = maps::P41_ENDPOINTS
        .get_ptr(key)
        // SAFETY: a u32 value in a map the program only reads.
        .map(|p| unsafe { *p })
        .ok_or(DropReason::UnknownEndpoint)?;
    let t = tunnel::get(slot)?;
    let inner_len = tot_len - IPV4_HDR_LEN;
    tunnel::check_usable(t, slot, TunnelKind::Proto41, inner_len)?;

    let inner = ptr::at::<Ipv6Hdr>(ctx, INNER)
        .ok_or_else(|| tunnel::drop(slot, inner_len, DropReason::Truncated))?;
    // SAFETY: bounds checked.
    let inner = unsafe { &*inner };
    if inner.version() != 6 || inner.packet_len() != inner_len {
        return Err(tunnel::drop(slot, inner_len, DropReason::BadInnerHeader));
    }
    if !t.owns(&inner.src) {
        return Err(tunnel::drop(slot, inner_len, DropReason::SpoofedSource));
    }
    if inner.dst == t.pop_v6 {
        return icmp6::echo_reply_in_tunnel(ctx, t, slot, inner_len);
    }
    if inner.hop_limit <= 1 {
        return Err(tunnel::drop(slot, inner_len, DropReason::HopLimitExceeded));
    }

    stats::tunnel(slot, Dir::FromClient, inner_len as u64);
    stats::event(Event::Decap, t.kind, inner_len as u64);
    strip_ipv4(ctx)?;
    forward::native6(ctx, s, inner_len)
}

/// Removes the outer IPv4 header; the Ethernet header moves forward and says IPv6.
#[inline(always)]
fn strip_ipv4(ctx: &XdpContext) -> Result<(), DropReason> {
    let eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked; copied before the head moves.
    let eth = unsafe { *eth };
    // SAFETY: helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IPV4_HDR_LEN as i32) } != 0 {
        return Err(DropReason::AdjustFailed);
    }
    let new = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::AdjustFailed)?;
    // SAFETY: bounds checked after the adjustment.
    unsafe {
        *new = EthHdr {
            dst: eth.dst,
            src: eth.src,
            proto: ETH_P_IPV6_BE.to_ne_bytes(),
        };
    }
    Ok(())
}
