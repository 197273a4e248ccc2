//! ICMPv4 generated in XDP for v4v6 tunnels: echo replies from the PoP's inner address
//! (clients use them as keepalives) and "fragmentation needed" for packets with Don't
//! Fragment over a tunnel's MTU (the IPv4 counterpart of Packet Too Big).
use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};
use broker_common::{
    consts::{
        ENCAP_TTL, ETH_HDR_LEN, ETH_P_IPV4_BE, FRAG_NEEDED_QUOTE_LEN, ICMPV4_DEST_UNREACH,
        ICMPV4_ECHO_REPLY, ICMPV4_ECHO_REQUEST, ICMPV4_FRAG_NEEDED, ICMPV4_HDR_LEN, ICMP_HOP_LIMIT,
        IPPROTO_ICMP, IPV4_HDR_LEN, IPV6_HDR_LEN,
    },
    csum,
    maps::{Settings, Tunnel},
    stats::{DropReason, Event},
};

use crate::{
    head,
    headers::{Aligned, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr},
    icmp6::swap_macs,
    outcome::{Outcome, Verdict},
    ptr,
    stats::{self, Dir},
    tunnel,
};

/// An echo request to the PoP's inner address, inside its v4v6 outer header: answered
/// back through the tunnel by swapping both headers' addresses in place. Anything else to
/// that address is dropped (`pop_address`).
#[inline(always)]
pub fn echo_reply_in_tunnel(ctx: &XdpContext, t: &Tunnel, slot: u32, inner_len: usize) -> Verdict {
    const INNER: usize = ETH_HDR_LEN + IPV6_HDR_LEN;
    let outer = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    let ip = ptr::at::<Ipv4Hdr>(ctx, INNER).ok_or(DropReason::Truncated)?;
    let icmp = ptr::at::<IcmpHdr>(ctx, INNER + IPV4_HDR_LEN)
        .ok_or_else(|| tunnel::drop(slot, inner_len, DropReason::PopAddress))?;
    // SAFETY: all three bounds checked, distinct headers (the inner one has no options,
    // checked by the caller).
    unsafe {
        let (outer, ip, icmp) = (&mut *outer, &mut *ip, &mut *icmp);
        if ip.protocol != IPPROTO_ICMP || icmp.ty != ICMPV4_ECHO_REQUEST || ip.is_fragment() {
            return Err(tunnel::drop(slot, inner_len, DropReason::PopAddress));
        }
        let old = [icmp.ty, icmp.code];
        icmp.ty = ICMPV4_ECHO_REPLY;
        icmp.check = csum::replace2(icmp.check, old, [icmp.ty, icmp.code]);
        core::mem::swap(&mut ip.src, &mut ip.dst);
        ip.ttl = ICMP_HOP_LIMIT;
        ip.check = csum::ipv4_header(ip.as_bytes());
        core::mem::swap(&mut outer.src, &mut outer.dst);
        outer.hop_limit = ENCAP_TTL;
    }
    swap_macs(ctx)?;
    stats::tunnel(slot, Dir::FromClient, inner_len as u64);
    stats::tunnel(slot, Dir::ToClient, inner_len as u64);
    stats::event(Event::EchoReply, t.kind, inner_len as u64);
    Ok(Outcome::Tx)
}

/// Offsets in the generated message.
const FN_IP: usize = ETH_HDR_LEN;
const FN_ICMP: usize = FN_IP + IPV4_HDR_LEN;
const FN_QUOTE: usize = FN_ICMP + ICMPV4_HDR_LEN;
/// The headers prepended in front of the offending packet's IPv4 header.
const FN_GROW: usize = IPV4_HDR_LEN + ICMPV4_HDR_LEN;
/// ICMP header plus quote: what the ICMPv4 checksum covers.
const FN_BODY: usize = ICMPV4_HDR_LEN + FRAG_NEEDED_QUOTE_LEN;

/// The native IPv4 packet at the start of the frame has DF set and is larger than the
/// tunnel's MTU: turn it into an ICMPv4 "fragmentation needed" (RFC 1191) from the PoP to
/// its sender, quoting its first `FRAG_NEEDED_QUOTE_LEN` bytes, and send it back out.
#[inline(always)]
pub fn frag_needed(ctx: &XdpContext, s: &Settings, t: &Tunnel, slot: u32, len: usize) -> Verdict {
    let eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::Truncated)?;
    let ip = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked; copies, taken before the head moves.
    let (eth, ip) = unsafe { (Aligned(*eth), Aligned(*ip)) };
    if ip.protocol == IPPROTO_ICMP {
        let off = ETH_HDR_LEN + (ip.header_len() & 0x3c);
        let icmp = ptr::at::<IcmpHdr>(ctx, off).ok_or(DropReason::Truncated)?;
        // SAFETY: bounds checked.
        let ty = unsafe { (*icmp).ty };
        // RFC 1122 3.2.2: no ICMP error about an ICMP error.
        // Errors: destination unreachable, source quench, redirect, time exceeded,
        // parameter problem.
        if matches!(ty, ICMPV4_DEST_UNREACH | 4 | 5 | 11 | 12) {
            return Err(tunnel::drop(slot, len, DropReason::TooBigIcmpError));
        }
    }

    head::grow_and_cut(ctx, FN_GROW, FN_QUOTE + FRAG_NEEDED_QUOTE_LEN)?;
    let new_eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::AdjustFailed)?;
    let new_ip = ptr::at::<Ipv4Hdr>(ctx, FN_IP).ok_or(DropReason::AdjustFailed)?;
    let body = ptr::at::<[u8; FN_BODY]>(ctx, FN_ICMP).ok_or(DropReason::AdjustFailed)?;
    let icmp = body as *mut IcmpHdr;
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((IPV4_HDR_LEN + FN_BODY) as u16).to_be_bytes(),
        id: [0, 0],
        frag_off: [0, 0],
        ttl: ICMP_HOP_LIMIT,
        protocol: IPPROTO_ICMP,
        check: [0, 0],
        src: s.pop_v4,
        dst: ip.src,
    };
    hdr.check = csum::ipv4_header(hdr.as_bytes());
    let mtu = t.mtu.to_be_bytes();
    // SAFETY: all three bounds checked after the last adjustment; the headers are written
    // before the checksum reads the body.
    unsafe {
        *new_eth = EthHdr {
            dst: eth.src,
            src: eth.dst,
            proto: ETH_P_IPV4_BE.to_ne_bytes(),
        };
        *new_ip = hdr;
        *icmp = IcmpHdr {
            ty: ICMPV4_DEST_UNREACH,
            code: ICMPV4_FRAG_NEEDED,
            check: [0, 0],
            data: [0, 0, mtu[0], mtu[1]],
        };
        let sum = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            body as *mut u32,
            FN_BODY as u32,
            0,
        );
        if sum < 0 {
            return Err(DropReason::AdjustFailed);
        }
        (*icmp).check = csum::finish(sum as u32);
    }
    stats::tunnel(slot, Dir::Drop, len as u64);
    stats::event(Event::PacketTooBig, t.kind, len as u64);
    Ok(Outcome::Tx)
}
