//! ICMPv6 generated in XDP, as routers do it (RFC 4443): echo replies from the PoP's tunnel
//! address (clients use them as keepalives), Packet Too Big for packets over a tunnel's MTU
//! (Katran's `send_icmp6_too_big`), Time Exceeded for packets whose hop limit runs out
//! here (traceroute shows the PoP's hop).
//!
//! Every message goes to an address that may receive one (`scope::may_receive_icmp6`,
//! else `icmp_bad_source`) and takes a token of the PoP-wide ICMP rate limit
//! (`ratelimit`, else `icmp_rate_limited`); the packet that asked for it is dropped either
//! way. No error answers an ICMPv6 error (2.4 (e)).
use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};
use broker_common::{
    consts::{
        AYIYA_OP_FORWARD, ETH_HDR_LEN, ETH_P_IPV6_BE, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
        ICMPV6_HDR_LEN, ICMPV6_INFO_MIN, ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED,
        ICMP_HOP_LIMIT, IPPROTO_ICMPV6, IPPROTO_IPV6, IPV4_HDR_LEN, IPV6_HDR_LEN, PTB_QUOTE_LEN,
        UDP_HDR_LEN,
    },
    csum,
    maps::{Settings, Tunnel},
    scope,
    stats::{DropReason, Event},
};

use crate::{
    ayiya, encap, head,
    headers::{EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr},
    outcome::{Outcome, Resume, Step, Verdict},
    ptr, ratelimit,
    stats::{self, Dir},
    tunnel,
};

/// An echo request to the tunnel's PoP address, still inside its outer headers (`outer`
/// bytes of IPv4, and UDP for v6udpv4 and AYIYA): answered back through the tunnel by
/// swapping addresses (and ports) in place, AYIYA signed anew. Anything else to that
/// address is dropped (`pop_address`): the kernel does not own these addresses.
#[inline(always)]
pub fn echo_reply_in_tunnel(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    outer: usize,
    inner_len: usize,
) -> Verdict {
    let off = ETH_HDR_LEN + outer;
    answerable_echo(ctx, s, off).map_err(|r| tunnel::drop(slot, inner_len, r))?;
    turn_echo(ctx, off)?;
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
    Ok(Outcome::TX)
}

/// An echo request to a PoP tunnel address arriving natively: answered natively.
#[inline(always)]
pub fn echo_reply_native(ctx: &XdpContext, s: &Settings, t: &Tunnel, len: usize) -> Verdict {
    answerable_echo(ctx, s, ETH_HDR_LEN)?;
    turn_echo(ctx, ETH_HDR_LEN)?;
    swap_macs(ctx)?;
    stats::event(Event::EchoReply, t.kind, len as u64);
    Ok(Outcome::TX)
}

/// The IPv6 packet at `off` is an echo request (else `pop_address`) and may be answered.
#[inline(always)]
fn answerable_echo(ctx: &XdpContext, s: &Settings, off: usize) -> Result<(), DropReason> {
    let ip = ptr::at::<Ipv6Hdr>(ctx, off).ok_or(DropReason::PopAddress)?;
    let icmp = ptr::at::<IcmpHdr>(ctx, off + IPV6_HDR_LEN).ok_or(DropReason::PopAddress)?;
    // SAFETY: both bounds checked.
    let (ip, icmp) = unsafe { (&*ip, &*icmp) };
    if ip.next_header != IPPROTO_ICMPV6 || icmp.ty != ICMPV6_ECHO_REQUEST {
        return Err(DropReason::PopAddress);
    }
    admit(s, &ip.src)
}

/// Rewrites the echo request at `off` into its reply: addresses swapped, type 129, checksum
/// updated incrementally.
#[inline(always)]
fn turn_echo(ctx: &XdpContext, off: usize) -> Result<(), DropReason> {
    let ip = ptr::at::<Ipv6Hdr>(ctx, off).ok_or(DropReason::Truncated)?;
    let icmp = ptr::at::<IcmpHdr>(ctx, off + IPV6_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: both bounds checked, distinct headers.
    unsafe {
        let (ip, icmp) = (&mut *ip, &mut *icmp);
        let old = [icmp.ty, icmp.code];
        icmp.ty = ICMPV6_ECHO_REPLY;
        icmp.check = csum::replace2(icmp.check, old, [icmp.ty, icmp.code]);
        // The pseudo-header sum does not change when the addresses swap places.
        core::mem::swap(&mut ip.src, &mut ip.dst);
        ip.hop_limit = ICMP_HOP_LIMIT;
    }
    Ok(())
}

#[inline(always)]
pub fn swap_macs(ctx: &XdpContext) -> Result<(), DropReason> {
    let eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    unsafe { core::mem::swap(&mut (*eth).src, &mut (*eth).dst) };
    Ok(())
}

/// What every generated message passes last: its destination `to` (the source of the
/// packet that asked for it) may receive it, and the rate limit has a token.
#[inline(always)]
fn admit(s: &Settings, to: &[u8; 16]) -> Result<(), DropReason> {
    if !scope::may_receive_icmp6(to) {
        return Err(DropReason::IcmpBadSource);
    }
    if !ratelimit::icmp(s) {
        return Err(DropReason::IcmpRateLimited);
    }
    Ok(())
}

/// Whether the IPv6 packet at `off` (its header read as `ip`) is itself an ICMPv6 error.
/// Only a header right after the IPv6 one is seen, as in the rest of the program.
#[inline(always)]
fn is_error(ctx: &XdpContext, off: usize, ip: &Ipv6Hdr) -> Result<bool, DropReason> {
    if ip.next_header != IPPROTO_ICMPV6 {
        return Ok(false);
    }
    let icmp = ptr::at::<IcmpHdr>(ctx, off + IPV6_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    Ok(unsafe { (*icmp).ty } < ICMPV6_INFO_MIN)
}

/// The native IPv6 packet at the start of the frame is larger than the tunnel's MTU: turn
/// it into an ICMPv6 Packet Too Big from the tunnel's PoP address to its sender, quoting
/// its first `PTB_QUOTE_LEN` bytes, and send it back out (`XDP_TX`).
#[inline(always)]
pub fn packet_too_big(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    len: usize,
) -> Verdict {
    let ip = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let ip = unsafe { &*ip };
    if is_error(ctx, ETH_HDR_LEN, ip)? {
        return Err(tunnel::drop(slot, len, DropReason::TooBigIcmpError));
    }
    admit(s, &ip.src).map_err(|r| tunnel::drop(slot, len, r))?;
    let mtu = (t.mtu as u32).to_be_bytes();
    error(ctx, &t.pop_v6, ICMPV6_PACKET_TOO_BIG, mtu, len)?;
    tunnel::answered(t, slot, len, Event::PacketTooBig);
    Ok(Outcome::TX)
}

/// The native IPv6 packet at the start of the frame, towards tunnel `t`, has a hop limit
/// of 1 or 0: answered with a Time Exceeded out of the interface it came in on, from the
/// tunnel's `::1` (as the sixxsd-era PoPs did: traceroute shows the tunnel's PoP end
/// right before the client). Not when it is an ICMPv6 error or came as a link-layer
/// multicast (RFC 4443 2.4 (e)): then `hop_limit_exceeded`.
#[inline(always)]
pub fn time_exceeded_native(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    len: usize,
) -> Verdict {
    let eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::Truncated)?;
    let ip = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let (eth, ip) = unsafe { (&*eth, &*ip) };
    // The tunnel prefix it is for is unicast; the frame it came in need not be.
    if eth.dst[0] & 1 != 0 || is_error(ctx, ETH_HDR_LEN, ip)? {
        return Err(tunnel::drop(slot, len, DropReason::HopLimitExceeded));
    }
    admit(s, &ip.src).map_err(|r| tunnel::drop(slot, len, r))?;
    error(ctx, &t.pop_v6, ICMPV6_TIME_EXCEEDED, [0; 4], len)?;
    tunnel::answered(t, slot, len, Event::TimeExceeded);
    Ok(Outcome::TX)
}

/// A packet from tunnel `t`'s client (inside `outer` bytes of outer headers, `inner_len`
/// bytes itself) whose hop limit is 1 or 0: answered through the tunnel with a Time
/// Exceeded from the tunnel's `::1`, encapsulated as everything sent to that client
/// (AYIYA signed), back out of the interface it came in on. Not when it is an ICMPv6
/// error or was sent to multicast: then `hop_limit_exceeded`.
#[inline(always)]
pub fn time_exceeded_in_tunnel(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    outer: usize,
    inner_len: usize,
) -> Verdict {
    let off = ETH_HDR_LEN + outer;
    let ip = ptr::at::<Ipv6Hdr>(ctx, off).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let ip = unsafe { &*ip };
    if scope::is_multicast6(&ip.dst) || is_error(ctx, off, ip)? {
        return Err(tunnel::drop(slot, inner_len, DropReason::HopLimitExceeded));
    }
    admit(s, &ip.src).map_err(|r| tunnel::drop(slot, inner_len, r))?;
    head::shift(ctx, outer as i32, ETH_P_IPV6_BE)?;
    let len = error(ctx, &t.pop_v6, ICMPV6_TIME_EXCEEDED, [0; 4], inner_len)?;
    tunnel::answered(t, slot, inner_len, Event::TimeExceeded);
    encap::wrap_reply(ctx, s, t, slot, outer, len)
}

/// Offsets in a generated ICMPv6 error.
const ERR_IP: usize = ETH_HDR_LEN;
const ERR_ICMP: usize = ERR_IP + IPV6_HDR_LEN;
const ERR_QUOTE: usize = ERR_ICMP + ICMPV6_HDR_LEN;
/// The headers prepended in front of the offending packet's IPv6 header.
const ERR_GROW: usize = IPV6_HDR_LEN + ICMPV6_HDR_LEN;
/// ICMPv6 header plus the longest quote: what the checksum is summed over (a shorter
/// quote is padded with zeros for the sum).
const ERR_BODY: usize = ICMPV6_HDR_LEN + PTB_QUOTE_LEN;

/// Turns the IPv6 packet of `len` bytes at the start of the frame into an ICMPv6 error
/// (`ty`, code 0, `data` after the checksum) from `from` to its sender, quoting its first
/// `PTB_QUOTE_LEN` bytes (all of it when shorter), the Ethernet header addressed back to
/// where it came from. Returns the message's length (the IPv6 packet).
///
/// Nothing is copied onto the stack (this frame is shared with every other path's, and
/// AYIYA's SHA-1 callback stacks on it): growing the head leaves the old Ethernet header
/// right in front of the quote, and the sender's address inside it.
#[inline(always)]
fn error(
    ctx: &XdpContext,
    from: &[u8; 16],
    ty: u8,
    data: [u8; 4],
    len: usize,
) -> Result<usize, DropReason> {
    let quote = if len < PTB_QUOTE_LEN {
        len
    } else {
        PTB_QUOTE_LEN
    };
    let pad = PTB_QUOTE_LEN - quote;
    let body_len = ICMPV6_HDR_LEN + quote;

    // Grow the head by the new IPv6 + ICMPv6 headers; the offending packet's IPv6 header
    // then starts exactly where the quote belongs. Then cut the tail after the quote.
    head::grow_and_cut(ctx, ERR_GROW, ERR_ICMP + body_len, pad)?;

    let new_eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::AdjustFailed)?;
    let old_eth = ptr::at::<EthHdr>(ctx, ERR_GROW).ok_or(DropReason::AdjustFailed)?;
    let new_ip = ptr::at::<Ipv6Hdr>(ctx, ERR_IP).ok_or(DropReason::AdjustFailed)?;
    let quoted = ptr::at::<Ipv6Hdr>(ctx, ERR_QUOTE).ok_or(DropReason::AdjustFailed)?;
    let body = ptr::at::<[u8; ERR_BODY]>(ctx, ERR_ICMP).ok_or(DropReason::AdjustFailed)?;
    let icmp = body as *mut IcmpHdr;
    // SAFETY: all bounds checked after the last adjustment. The old Ethernet header
    // overlaps the new IPv6 one's end: it is read before that is written. The quote is
    // never written; the checksum reads the body after the headers are written.
    unsafe {
        let sender = &(*quoted).src;
        let seed = csum::ipv6_pseudo_header(from, sender, body_len as u32, IPPROTO_ICMPV6);
        (*new_eth).set_macs(&(*old_eth).src, &(*old_eth).dst);
        (*new_eth).proto = ETH_P_IPV6_BE.to_ne_bytes();
        let h = &mut *new_ip;
        h.vtc_flow = [0x60, 0, 0, 0];
        h.payload_len = (body_len as u16).to_be_bytes();
        h.next_header = IPPROTO_ICMPV6;
        h.hop_limit = ICMP_HOP_LIMIT;
        let mut i = 0;
        while i < 16 {
            h.src[i] = from[i];
            h.dst[i] = sender[i];
            i += 1;
        }
        *icmp = IcmpHdr {
            ty,
            code: 0,
            check: [0, 0],
            data,
        };
        let sum = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            body as *mut u32,
            ERR_BODY as u32,
            seed,
        );
        if sum < 0 {
            return Err(DropReason::AdjustFailed);
        }
        (*icmp).check = csum::finish(sum as u32);
    }
    head::unpad(ctx, pad)?;
    Ok(IPV6_HDR_LEN + body_len)
}
