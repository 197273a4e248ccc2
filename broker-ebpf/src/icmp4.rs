//! ICMPv4 generated in XDP for v4v6 tunnels: echo replies from the PoP's inner address
//! (clients use them as keepalives), "fragmentation needed" for packets with Don't
//! Fragment over a tunnel's MTU (the IPv4 counterpart of Packet Too Big), time exceeded for
//! packets whose TTL runs out here.
//!
//! As for ICMPv6 (`icmp6`): every message goes to an address that may receive one (else
//! `icmp_bad_source`) and takes a token of the ICMP rate limit (else `icmp_rate_limited`);
//! no error answers an ICMP error, a non-initial fragment or a packet sent to multicast or
//! broadcast (RFC 1122 3.2.2).
use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};
use broker_common::{
    consts::{
        ENCAP_TTL, ETH_HDR_LEN, ETH_P_IPV4_BE, FRAG_NEEDED_QUOTE_LEN, ICMPV4_DEST_UNREACH,
        ICMPV4_ECHO_REPLY, ICMPV4_ECHO_REQUEST, ICMPV4_ERRORS, ICMPV4_FRAG_NEEDED, ICMPV4_HDR_LEN,
        ICMPV4_TIME_EXCEEDED, ICMP_HOP_LIMIT, IPPROTO_ICMP, IPV4_HDR_LEN, IPV6_HDR_LEN,
    },
    csum,
    maps::{Settings, Tunnel},
    scope,
    stats::{DropReason, Event},
};

use crate::{
    head,
    headers::{EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr},
    icmp6::swap_macs,
    outcome::{Outcome, Verdict},
    ptr, ratelimit,
    stats::{self, Dir},
    tunnel, v4v6,
};

/// An echo request to the PoP's inner address, inside its v4v6 outer header: answered
/// back through the tunnel by swapping both headers' addresses in place. Anything else to
/// that address is dropped (`pop_address`).
#[inline(always)]
pub fn echo_reply_in_tunnel(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    inner_len: usize,
) -> Verdict {
    const INNER: usize = ETH_HDR_LEN + IPV6_HDR_LEN;
    let pop_address = || tunnel::drop(slot, inner_len, DropReason::PopAddress);
    let outer = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    let ip = ptr::at::<Ipv4Hdr>(ctx, INNER).ok_or(DropReason::Truncated)?;
    let icmp = ptr::at::<IcmpHdr>(ctx, INNER + IPV4_HDR_LEN).ok_or_else(pop_address)?;
    // SAFETY: all three bounds checked, distinct headers (the inner one has no options,
    // checked by the caller).
    let (outer, ip, icmp) = unsafe { (&mut *outer, &mut *ip, &mut *icmp) };
    if ip.protocol != IPPROTO_ICMP || icmp.ty != ICMPV4_ECHO_REQUEST || ip.is_fragment() {
        return Err(pop_address());
    }
    admit(s, &ip.src).map_err(|r| tunnel::drop(slot, inner_len, r))?;
    let old = [icmp.ty, icmp.code];
    icmp.ty = ICMPV4_ECHO_REPLY;
    icmp.check = csum::replace2(icmp.check, old, [icmp.ty, icmp.code]);
    core::mem::swap(&mut ip.src, &mut ip.dst);
    ip.ttl = ICMP_HOP_LIMIT;
    ip.check = csum::ipv4_header(ip.as_bytes());
    core::mem::swap(&mut outer.src, &mut outer.dst);
    outer.hop_limit = ENCAP_TTL;
    swap_macs(ctx)?;
    stats::tunnel(slot, Dir::FromClient, inner_len as u64);
    stats::tunnel(slot, Dir::ToClient, inner_len as u64);
    stats::event(Event::EchoReply, t.kind, inner_len as u64);
    Ok(Outcome::TX)
}

/// What every generated message passes last: its destination `to` (the source of the
/// packet that asked for it) may receive it, and the rate limit has a token.
#[inline(always)]
fn admit(s: &Settings, to: &[u8; 4]) -> Result<(), DropReason> {
    if !scope::may_receive_icmp4(to) {
        return Err(DropReason::IcmpBadSource);
    }
    if !ratelimit::icmp(s) {
        return Err(DropReason::IcmpRateLimited);
    }
    Ok(())
}

/// Whether an ICMPv4 error may answer the IPv4 packet at `off`: not a non-initial
/// fragment, not sent to multicast or broadcast, not itself an ICMP error (RFC 1122
/// 3.2.2). Also returns where its source address is, for [`admit`].
#[inline(always)]
fn reportable(ctx: &XdpContext, off: usize) -> Result<(bool, *const [u8; 4]), DropReason> {
    let ip = ptr::at::<Ipv4Hdr>(ctx, off).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let ip = unsafe { &*ip };
    let src = &ip.src as *const [u8; 4];
    if ip.is_later_fragment() || scope::is_multicast_or_broadcast4(&ip.dst) {
        return Ok((false, src));
    }
    if ip.protocol != IPPROTO_ICMP {
        return Ok((true, src));
    }
    let icmp =
        ptr::at::<IcmpHdr>(ctx, off + (ip.header_len() & 0x3c)).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let ty = unsafe { (*icmp).ty };
    let mut i = 0;
    while i < ICMPV4_ERRORS.len() {
        if ty == ICMPV4_ERRORS[i] {
            return Ok((false, src));
        }
        i += 1;
    }
    Ok((true, src))
}

/// The native IPv4 packet at the start of the frame has DF set and is larger than the
/// tunnel's MTU: turn it into an ICMPv4 "fragmentation needed" (RFC 1191) from the PoP to
/// its sender, quoting its first `FRAG_NEEDED_QUOTE_LEN` bytes, and send it back out.
#[inline(always)]
pub fn frag_needed(ctx: &XdpContext, s: &Settings, t: &Tunnel, slot: u32, len: usize) -> Verdict {
    let (ok, src) = reportable(ctx, ETH_HDR_LEN)?;
    if !ok {
        return Err(tunnel::drop(slot, len, DropReason::TooBigIcmpError));
    }
    // SAFETY: in the packet, bounds checked by `reportable`; no adjustment since.
    admit(s, unsafe { &*src }).map_err(|r| tunnel::drop(slot, len, r))?;
    let mtu = t.mtu.to_be_bytes();
    let data = [0, 0, mtu[0], mtu[1]];
    error(
        ctx,
        s.pop_v4,
        ICMPV4_DEST_UNREACH,
        ICMPV4_FRAG_NEEDED,
        data,
        len,
    )?;
    tunnel::answered(t, slot, len, Event::PacketTooBig);
    Ok(Outcome::TX)
}

/// The native IPv4 packet at the start of the frame, towards v4v6 tunnel `t`, has a TTL
/// of 1 or 0: answered with a time exceeded from the PoP's IPv4 (the source of its
/// fragmentation needed too) out of the interface it came in on. Not when RFC 1122 says
/// no (see [`reportable`]) or it came as a link-layer multicast: then
/// `hop_limit_exceeded`.
#[inline(always)]
pub fn time_exceeded_native(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    len: usize,
) -> Verdict {
    let eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let group = unsafe { (*eth).dst[0] } & 1 != 0;
    let (ok, src) = reportable(ctx, ETH_HDR_LEN)?;
    if group || !ok {
        return Err(tunnel::drop(slot, len, DropReason::HopLimitExceeded));
    }
    // SAFETY: in the packet, bounds checked by `reportable`; no adjustment since.
    admit(s, unsafe { &*src }).map_err(|r| tunnel::drop(slot, len, r))?;
    error(ctx, s.pop_v4, ICMPV4_TIME_EXCEEDED, 0, [0; 4], len)?;
    tunnel::answered(t, slot, len, Event::TimeExceeded);
    Ok(Outcome::TX)
}

/// An IPv4 packet of `inner_len` bytes from v4v6 tunnel `t`'s client, still inside its
/// IPv6 outer header, whose TTL is 1 or 0: answered through the tunnel with a time exceeded
/// from the PoP's inner address (the one that answers the client's echo requests), in an
/// IPv6 header as everything sent to the client. Not when RFC 1122 says no (see
/// [`reportable`]): then `hop_limit_exceeded`.
#[inline(always)]
pub fn time_exceeded_in_tunnel(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    inner_len: usize,
) -> Verdict {
    const INNER: usize = ETH_HDR_LEN + IPV6_HDR_LEN;
    let (ok, src) = reportable(ctx, INNER)?;
    if !ok {
        return Err(tunnel::drop(slot, inner_len, DropReason::HopLimitExceeded));
    }
    // SAFETY: in the packet, bounds checked by `reportable`; no adjustment since.
    admit(s, unsafe { &*src }).map_err(|r| tunnel::drop(slot, inner_len, r))?;
    head::shift(ctx, IPV6_HDR_LEN as i32, ETH_P_IPV4_BE)?;
    let len = error(
        ctx,
        s.v4_gateway,
        ICMPV4_TIME_EXCEEDED,
        0,
        [0; 4],
        inner_len,
    )?;
    tunnel::answered(t, slot, inner_len, Event::TimeExceeded);
    v4v6::push_ipv6(ctx, t, len, 0)?;
    Ok(Outcome::TX)
}

/// Offsets in a generated ICMPv4 error.
const ERR_IP: usize = ETH_HDR_LEN;
const ERR_ICMP: usize = ERR_IP + IPV4_HDR_LEN;
const ERR_QUOTE: usize = ERR_ICMP + ICMPV4_HDR_LEN;
/// The headers prepended in front of the offending packet's IPv4 header.
const ERR_GROW: usize = IPV4_HDR_LEN + ICMPV4_HDR_LEN;
/// ICMP header plus the longest quote: what the checksum is summed over (a shorter quote is
/// padded with zeros for the sum).
const ERR_BODY: usize = ICMPV4_HDR_LEN + FRAG_NEEDED_QUOTE_LEN;

/// Turns the IPv4 packet of `len` bytes at the start of the frame into an ICMPv4 error
/// (`ty`, `code`, `data` after the checksum) from `from` to its sender, quoting its first
/// `FRAG_NEEDED_QUOTE_LEN` bytes (all of it when shorter), the Ethernet header addressed
/// back to where it came from. Returns the message's length (the IPv4 packet). As in
/// `icmp6`, nothing is copied onto the stack: the old Ethernet header is found in front of
/// the quote after the head grows.
#[inline(always)]
fn error(
    ctx: &XdpContext,
    from: [u8; 4],
    ty: u8,
    code: u8,
    data: [u8; 4],
    len: usize,
) -> Result<usize, DropReason> {
    let quote = if len < FRAG_NEEDED_QUOTE_LEN {
        len
    } else {
        FRAG_NEEDED_QUOTE_LEN
    };
    let pad = FRAG_NEEDED_QUOTE_LEN - quote;
    let body_len = ICMPV4_HDR_LEN + quote;

    head::grow_and_cut(ctx, ERR_GROW, ERR_ICMP + body_len, pad)?;
    let new_eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::AdjustFailed)?;
    let old_eth = ptr::at::<EthHdr>(ctx, ERR_GROW).ok_or(DropReason::AdjustFailed)?;
    let new_ip = ptr::at::<Ipv4Hdr>(ctx, ERR_IP).ok_or(DropReason::AdjustFailed)?;
    let quoted = ptr::at::<Ipv4Hdr>(ctx, ERR_QUOTE).ok_or(DropReason::AdjustFailed)?;
    let body = ptr::at::<[u8; ERR_BODY]>(ctx, ERR_ICMP).ok_or(DropReason::AdjustFailed)?;
    let icmp = body as *mut IcmpHdr;
    // SAFETY: all bounds checked after the last adjustment. The old Ethernet header
    // overlaps the new IPv4 one: it is read first. The quote is never written; the checksum
    // reads the body after the headers are written.
    unsafe {
        (*new_eth).set_macs(&(*old_eth).src, &(*old_eth).dst);
        (*new_eth).proto = ETH_P_IPV4_BE.to_ne_bytes();
        let h = &mut *new_ip;
        h.version_ihl = 0x45;
        h.tos = 0;
        h.tot_len = ((IPV4_HDR_LEN + body_len) as u16).to_be_bytes();
        h.id = [0, 0];
        h.frag_off = [0, 0];
        h.ttl = ICMP_HOP_LIMIT;
        h.protocol = IPPROTO_ICMP;
        h.check = [0, 0];
        h.src = from;
        h.dst = (*quoted).src;
        h.check = csum::ipv4_header(h.as_bytes());
        *icmp = IcmpHdr {
            ty,
            code,
            check: [0, 0],
            data,
        };
        let sum = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            body as *mut u32,
            ERR_BODY as u32,
            0,
        );
        if sum < 0 {
            return Err(DropReason::AdjustFailed);
        }
        (*icmp).check = csum::finish(sum as u32);
    }
    head::unpad(ctx, pad)?;
    Ok(IPV4_HDR_LEN + body_len)
}
