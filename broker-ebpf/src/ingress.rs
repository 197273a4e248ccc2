//! First look at a frame: is it tunnel traffic (to decapsulate: proto-41, v6udpv4 or AYIYA
//! to the PoP's IPv4, v4v6 to its IPv6), native traffic into a tunnel (to encapsulate: an IPv6
//! tunnel prefix, a v4v6 client's IPv4), or not ours (passed untouched)?
//!
//! The rule for malformed input: until a frame is positively identified as tunnel
//! traffic it is passed to the kernel unchanged (`unparsed` or `not_tunnel`), because it may
//! be anything the host itself handles. Once identified, every defect is a counted drop.
use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use broker_common::{
    consts::{ETH_HDR_LEN, ETH_P_IPV4_BE, ETH_P_IPV6_BE, IPPROTO_IPV4, IPPROTO_IPV6, IPPROTO_UDP},
    stats::{DropReason, PassReason},
};

use crate::{
    ayiya, decap,
    encap::{self, Origin},
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr},
    maps,
    outcome::{Outcome, Packed, Step, Verdict},
    ptr, v4v6,
};

const NOT_TUNNEL: Verdict = Ok(Outcome::Pass(PassReason::NotTunnel));
const UNPARSED: Verdict = Ok(Outcome::Pass(PassReason::Unparsed));

/// Runs the handlers on a frame, or resumes one after its hash; the verdict [`Packed`].
/// Out of line: this is the deep frame, kept apart from the SHA-1 callback's (both count
/// against one 512-byte stack).
#[inline(never)]
pub fn stage(xdp: *mut xdp_md, resume: u64) -> u64 {
    let ctx = XdpContext::new(xdp);
    let verdict = match Packed(resume).hash_request() {
        Some(r) if r.step != Step::Start => match maps::settings() {
            Some(s) => ayiya::resume(&ctx, s, r),
            None => Err(DropReason::AdjustFailed),
        },
        _ => handle(&ctx),
    };
    Packed::of(verdict).0
}

#[inline(always)]
fn handle(ctx: &XdpContext) -> Verdict {
    let Some(eth) = ptr::at::<EthHdr>(ctx, 0) else {
        return UNPARSED;
    };
    // SAFETY: bounds checked by `ptr::at`.
    let proto = u16::from_ne_bytes(unsafe { (*eth).proto });
    if proto == ETH_P_IPV4_BE {
        ipv4(ctx)
    } else if proto == ETH_P_IPV6_BE {
        ipv6(ctx)
    } else {
        NOT_TUNNEL
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext) -> Verdict {
    let Some(ip) = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        return UNPARSED;
    };
    // SAFETY: bounds checked by `ptr::at`.
    let (protocol, dst) = unsafe { ((*ip).protocol, (*ip).dst) };
    let Some(s) = maps::settings() else {
        return NOT_TUNNEL;
    };
    if dst == s.pop_v4 && s.pop_v4 != [0; 4] {
        return match protocol {
            IPPROTO_IPV6 => decap::proto41(ctx, s),
            IPPROTO_UDP => decap::udp(ctx, s),
            _ => NOT_TUNNEL,
        };
    }
    match maps::v4_route_slot(s, &dst) {
        Some(found) => v4v6::encap(ctx, s, found, Origin::Native),
        None => NOT_TUNNEL,
    }
}

#[inline(always)]
fn ipv6(ctx: &XdpContext) -> Verdict {
    let Some(ip) = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN) else {
        return UNPARSED;
    };
    // SAFETY: bounds checked by `ptr::at`.
    let ip = unsafe { &*ip };
    if ip.version() != 6 {
        return UNPARSED;
    }
    let Some(s) = maps::settings() else {
        return NOT_TUNNEL;
    };
    if ip.next_header == IPPROTO_IPV4 && ip.dst == s.pop_v6 && s.pop_v6 != [0; 16] {
        return v4v6::decap(ctx, s);
    }
    match maps::prefix_slot(s, &ip.dst) {
        Some(found) => encap::into_tunnel(ctx, s, found, Origin::Native),
        None => NOT_TUNNEL,
    }
}
