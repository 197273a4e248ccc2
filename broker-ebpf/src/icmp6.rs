//! ICMPv6 generated in XDP: echo replies from the PoP's tunnel address (clients use them as
//! keepalives) and Packet Too Big for packets over a tunnel's MTU (Katran's
//! `send_icmp6_too_big`).
use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};
use broker_common::{
    consts::{
        AYIYA_OP_FORWARD, ETH_HDR_LEN, ETH_P_IPV6_BE, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
        ICMPV6_HDR_LEN, ICMPV6_INFO_MIN, ICMPV6_PACKET_TOO_BIG, ICMP_HOP_LIMIT, IPPROTO_ICMPV6,
        IPPROTO_IPV6, IPV4_HDR_LEN, IPV6_HDR_LEN, PTB_QUOTE_LEN, UDP_HDR_LEN,
    },
    csum,
    maps::{Settings, Tunnel},
    stats::{DropReason, Event},
};

use crate::{
    ayiya, head,
    headers::{Aligned, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr},
    outcome::{Outcome, Resume, Step, Verdict},
    ptr,
    stats::{self, Dir},
    tunnel,
};

/// An echo request to the tunnel's PoP address, still inside its outer headers (`outer`
/// bytes of IPv4, and UDP for v6udpv4 and AYIYA): answered back through the tunnel by
/// swapping addresses (and ports) in place, AYIYA signed anew. Anything else to that address is dropped
/// (`pop_address`): the kernel does not own these addresses.
#[inline(always)]
pub fn echo_reply_in_tunnel(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    outer: usize,
    inner_len: usize,
) -> Verdict {
    if !turn_echo(ctx, ETH_HDR_LEN + outer) {
        return Err(tunnel::drop(slot, inner_len, DropReason::PopAddress));
    }
    if outer == IPV4_HDR_LEN {
        let ip = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
        // SAFETY: bounds checked.
        unsafe {
            let o = &mut *ip;
            core::mem::swap(&mut o.src, &mut o.dst);
            o.ttl = broker_common::consts::ENCAP_TTL;
            o.check = csum::ipv4_header(o.as_bytes());
        }
    } else {
        // v6udpv4 and AYIYA: UDP ports swapped too, checksum 0 as for every packet sent.
        ayiya::turn_around(ctx)?;
    }
    swap_macs(ctx)?;
    stats::tunnel(slot, Dir::FromClient, inner_len as u64);
    stats::tunnel(slot, Dir::ToClient, inner_len as u64);
    stats::event(Event::EchoReply, t.kind, inner_len as u64);
    if ayiya::is_ayiya(t) {
        let payload = outer - IPV4_HDR_LEN - UDP_HDR_LEN + inner_len;
        let then = Resume::at(Step::Tx, slot);
        return ayiya::seal(ctx, s, t, payload, AYIYA_OP_FORWARD, IPPROTO_IPV6, then);
    }
    Ok(Outcome::Tx)
}

/// An echo request to a PoP tunnel address arriving natively: answered natively.
#[inline(always)]
pub fn echo_reply_native(ctx: &XdpContext, t: &Tunnel, len: usize) -> Verdict {
    if !turn_echo(ctx, ETH_HDR_LEN) {
        return Err(DropReason::PopAddress);
    }
    swap_macs(ctx)?;
    stats::event(Event::EchoReply, t.kind, len as u64);
    Ok(Outcome::Tx)
}

/// If the IPv6 packet at `off` is an echo request, rewrites it into the reply (addresses
/// swapped, type 129, checksum updated incrementally) and returns true.
#[inline(always)]
fn turn_echo(ctx: &XdpContext, off: usize) -> bool {
    let Some(ip) = ptr::at::<Ipv6Hdr>(ctx, off) else {
        return false;
    };
    let Some(icmp) = ptr::at::<IcmpHdr>(ctx, off + IPV6_HDR_LEN) else {
        return false;
    };
    // SAFETY: both bounds checked, distinct headers.
    unsafe {
        let (ip, icmp) = (&mut *ip, &mut *icmp);
        if ip.next_header != IPPROTO_ICMPV6 || icmp.ty != ICMPV6_ECHO_REQUEST {
            return false;
        }
        let old = [icmp.ty, icmp.code];
        icmp.ty = ICMPV6_ECHO_REPLY;
        icmp.check = csum::replace2(icmp.check, old, [icmp.ty, icmp.code]);
        // The pseudo-header sum does not change when the addresses swap places.
        core::mem::swap(&mut ip.src, &mut ip.dst);
        ip.hop_limit = ICMP_HOP_LIMIT;
    }
    true
}

#[inline(always)]
pub fn swap_macs(ctx: &XdpContext) -> Result<(), DropReason> {
    let eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    unsafe { core::mem::swap(&mut (*eth).src, &mut (*eth).dst) };
    Ok(())
}

/// Offsets in the Packet Too Big frame.
const PTB_IP: usize = ETH_HDR_LEN;
const PTB_ICMP: usize = PTB_IP + IPV6_HDR_LEN;
const PTB_QUOTE: usize = PTB_ICMP + ICMPV6_HDR_LEN;
/// The headers prepended in front of the offending packet's IPv6 header.
const PTB_GROW: usize = IPV6_HDR_LEN + ICMPV6_HDR_LEN;
/// ICMPv6 header plus quote: what the checksum covers besides the pseudo-header.
const PTB_BODY: usize = ICMPV6_HDR_LEN + PTB_QUOTE_LEN;

/// The native IPv6 packet at the start of the frame is larger than the tunnel's MTU: turn
/// it into an ICMPv6 Packet Too Big from the tunnel's PoP address to its sender, quoting
/// its first `PTB_QUOTE_LEN` bytes, and send it back out (`XDP_TX`).
#[inline(always)]
pub fn packet_too_big(ctx: &XdpContext, t: &Tunnel, slot: u32, len: usize) -> Verdict {
    let eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::Truncated)?;
    let ip = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked; copies of only what is needed after the head moves (this
    // frame is shared with every other path's, and AYIYA's SHA-1 callback stacks on it).
    let (eth, sender, next_header) =
        unsafe { (Aligned(*eth), Aligned((*ip).src), (*ip).next_header) };
    if next_header == IPPROTO_ICMPV6 {
        let icmp =
            ptr::at::<IcmpHdr>(ctx, ETH_HDR_LEN + IPV6_HDR_LEN).ok_or(DropReason::Truncated)?;
        // SAFETY: bounds checked.
        if unsafe { (*icmp).ty } < ICMPV6_INFO_MIN {
            return Err(tunnel::drop(slot, len, DropReason::TooBigIcmpError));
        }
    }

    // Grow the head by the new IPv6 + ICMPv6 headers; the offending packet's IPv6 header
    // then starts exactly where the quote belongs. Then cut the tail after the quote.
    head::grow_and_cut(ctx, PTB_GROW, PTB_QUOTE + PTB_QUOTE_LEN)?;

    let new_eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::AdjustFailed)?;
    let new_ip = ptr::at::<Ipv6Hdr>(ctx, PTB_IP).ok_or(DropReason::AdjustFailed)?;
    let body = ptr::at::<[u8; PTB_BODY]>(ctx, PTB_ICMP).ok_or(DropReason::AdjustFailed)?;
    let icmp = body as *mut IcmpHdr;
    let seed = csum::ipv6_pseudo_header(&t.pop_v6, &sender, PTB_BODY as u32, IPPROTO_ICMPV6);
    // SAFETY: all three bounds checked after the last adjustment; the headers are written
    // in place (no stack copy) before the checksum reads the body.
    unsafe {
        (*new_eth).set_macs(&eth.src, &eth.dst);
        (*new_eth).proto = ETH_P_IPV6_BE.to_ne_bytes();
        let h = &mut *new_ip;
        h.vtc_flow = [0x60, 0, 0, 0];
        h.payload_len = (PTB_BODY as u16).to_be_bytes();
        h.next_header = IPPROTO_ICMPV6;
        h.hop_limit = ICMP_HOP_LIMIT;
        let mut i = 0;
        while i < 16 {
            h.src[i] = t.pop_v6[i];
            h.dst[i] = sender.0[i];
            i += 1;
        }
        *icmp = IcmpHdr {
            ty: ICMPV6_PACKET_TOO_BIG,
            code: 0,
            check: [0, 0],
            data: (t.mtu as u32).to_be_bytes(),
        };
        let sum = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            body as *mut u32,
            PTB_BODY as u32,
            seed,
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
