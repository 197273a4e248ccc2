//! From native IPv6 into an IPv4-outer tunnel: proto-41 (`to_6in4`), v6udpv4 or AYIYA. The
//! destination is inside a tunnel's prefix. Check state, hop limit and MTU, push the
//! outer headers, forward.
use aya_ebpf::programs::XdpContext;
use broker_common::{
    consts::{
        AYIYA_HDR_LEN, AYIYA_OP_FORWARD, ENCAP_TTL, ETH_HDR_LEN, ETH_P_IPV4_BE, IPPROTO_IPV6,
        IPPROTO_UDP, IPV4_HDR_LEN, UDP_HDR_LEN,
    },
    csum,
    maps::{Settings, Tunnel, TunnelKind, XskMeta},
    stats::{DropReason, Event},
};

use crate::{
    ayiya, forward, head,
    headers::{Ipv4Hdr, Ipv6Hdr, UdpHdr},
    icmp6,
    outcome::{Outcome, Resume, Step, Verdict},
    ptr,
    stats::{self, Dir},
    tunnel::{self, Found, Way},
    xsk,
};

/// Where the packet came from, which decides how errors and echo replies can go back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Received natively on an interface: replies go back out of it.
    Native,
    /// Just decapsulated from another tunnel (client to client through the PoP).
    Tunnel,
}

/// Native IPv6 (or just decapsulated, `origin`) into the tunnel whose prefix holds its
/// destination, `found` by `maps::prefix_slot`.
#[inline(always)]
pub fn into_tunnel(ctx: &XdpContext, s: &Settings, found: Found, origin: Origin) -> Verdict {
    let (slot, t) = (found.slot, found.tunnel()?);
    let ip = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let ipr = unsafe { &*ip };
    let len = ipr.packet_len();
    if ETH_HDR_LEN + len > ptr::frame_len(ctx) {
        return Err(DropReason::Truncated);
    }
    if ipr.dst == t.pop_v6 {
        return match origin {
            Origin::Native => icmp6::echo_reply_native(ctx, s, t, len),
            Origin::Tunnel => Err(DropReason::PopAddress),
        };
    }
    // Only the IPv4-outer kinds have IPv6 prefixes; the check keeps a stale entry honest.
    let (kind, outer) = if t.kind == TunnelKind::V6Udp4 as u8 {
        (TunnelKind::V6Udp4, IPV4_HDR_LEN + UDP_HDR_LEN)
    } else if ayiya::is_ayiya(t) {
        (TunnelKind::Ayiya, ayiya::OUTER)
    } else {
        (TunnelKind::Proto41, IPV4_HDR_LEN)
    };
    tunnel::check_usable(t, slot, kind, Way::ToClient, len)?;
    // AYIYA and heartbeat clients not heard from yet have no address.
    if t.remote_v4 == [0; 4] {
        return Err(tunnel::drop(slot, len, DropReason::NoEndpoint));
    }
    if ipr.hop_limit <= 1 {
        // From another tunnel the hop limit was checked before decapsulation: only native
        // packets get here.
        return match origin {
            Origin::Native => icmp6::time_exceeded_native(ctx, s, t, slot, len),
            Origin::Tunnel => Err(tunnel::drop(slot, len, DropReason::HopLimitExceeded)),
        };
    }
    if len > t.mtu as usize {
        return match origin {
            Origin::Native => icmp6::packet_too_big(ctx, s, t, slot, len),
            Origin::Tunnel => Err(tunnel::drop(slot, len, DropReason::TooBigHairpin)),
        };
    }
    let tos = ipr.traffic_class();
    // SAFETY: bounds checked above; a router decrements once.
    unsafe { (*ip).hop_limit -= 1 };

    push_ipv4(ctx, t, outer, len, tos)?;
    if outer > IPV4_HDR_LEN {
        push_udp(ctx, t, outer - IPV4_HDR_LEN + len)?;
    }
    stats::tunnel_of(s, slot, Dir::ToClient, len as u64);
    stats::event(Event::Encap, t.kind, len as u64);
    if kind == TunnelKind::Ayiya {
        let socket = if len + AYIYA_HDR_LEN >= s.xsk_min_payload as usize {
            xsk::socket(ctx, s)
        } else {
            None
        };
        if let Some(index) = socket {
            // AF_XDP engine: the worker signs and sends it, when it can reach the next hop.
            let overhead = outer;
            if let Ok(hop) = forward::client_hop(ctx, s, t, slot, overhead, len + outer, tos) {
                if xsk::serves(hop.ifindex) {
                    ayiya::write_header(ctx, s, t, AYIYA_OP_FORWARD, IPPROTO_IPV6)?;
                    forward::set_macs(ctx, &hop)?;
                    return xsk::hand_off(ctx, index, &t.key, slot, hop.ifindex, XskMeta::OP_SIGN);
                }
            }
        }
        // Signed once the entry point has hashed it, then forwarded like the others.
        let then = Resume::at(Step::Forward, slot);
        let payload = len + AYIYA_HDR_LEN;
        return ayiya::seal(ctx, s, t, payload, AYIYA_OP_FORWARD, IPPROTO_IPV6, then);
    }
    forward::to_client(ctx, s, t, slot, outer, len + outer, tos)
}

/// Encapsulates the IPv6 packet of `len` bytes at the start of the frame, a message the
/// PoP generated for tunnel `t`'s client, into `outer` bytes of the tunnel's headers, to
/// go back out of the interface its cause came in on (`XDP_TX`; the caller set the MACs).
/// AYIYA packets are signed first.
#[inline(always)]
pub fn wrap_reply(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    outer: usize,
    len: usize,
) -> Verdict {
    push_ipv4(ctx, t, outer, len, 0)?;
    if outer > IPV4_HDR_LEN {
        push_udp(ctx, t, outer - IPV4_HDR_LEN + len)?;
    }
    if ayiya::is_ayiya(t) {
        let then = Resume::at(Step::Tx, slot);
        let payload = len + AYIYA_HDR_LEN;
        return ayiya::seal(ctx, s, t, payload, AYIYA_OP_FORWARD, IPPROTO_IPV6, then);
    }
    Ok(Outcome::TX)
}

/// Prepends `outer` bytes and fills in the IPv4 header (RFC 4213 section 3.5): protocol
/// 41 (or UDP when `outer` has room for it), DF, TTL 64, the inner traffic class copied
/// to TOS.
#[inline(always)]
fn push_ipv4(
    ctx: &XdpContext,
    t: &Tunnel,
    outer: usize,
    inner_len: usize,
    tos: u8,
) -> Result<(), DropReason> {
    head::shift(ctx, -(outer as i32), ETH_P_IPV4_BE)?;
    let ip = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::AdjustFailed)?;
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos,
        tot_len: ((inner_len + outer) as u16).to_be_bytes(),
        id: [0, 0],
        frag_off: Ipv4Hdr::DF.to_be_bytes(),
        ttl: ENCAP_TTL,
        protocol: if outer == IPV4_HDR_LEN {
            IPPROTO_IPV6
        } else {
            IPPROTO_UDP
        },
        check: [0, 0],
        src: t.local_v4,
        dst: t.remote_v4,
    };
    hdr.check = csum::ipv4_header(hdr.as_bytes());
    // SAFETY: bounds checked after the adjustment.
    unsafe { *ip = hdr };
    Ok(())
}

/// Fills in the UDP header (of `udp_len` bytes with its payload) after the outer IPv4
/// one: from the PoP's port to the client's, checksum 0 (none, which IPv4 allows; the
/// inner packet's own transport checksum covers the payload, as sixxsd does for AYIYA).
#[inline(always)]
fn push_udp(ctx: &XdpContext, t: &Tunnel, udp_len: usize) -> Result<(), DropReason> {
    let udp = ptr::at::<UdpHdr>(ctx, ETH_HDR_LEN + IPV4_HDR_LEN).ok_or(DropReason::AdjustFailed)?;
    // SAFETY: bounds checked after the adjustment.
    unsafe {
        *udp = UdpHdr {
            src: t.local_port,
            dst: t.remote_port,
            len: (udp_len as u16).to_be_bytes(),
            check: [0, 0],
        };
    }
    Ok(())
}
