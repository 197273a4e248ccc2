//! First look at a frame: is it tunnel traffic (to decapsulate), native traffic into a
//! tunnel prefix (to encapsulate), or not ours (passed untouched)?
//!
//! The rule for malformed input: until a frame is positively identified as tunnel
//! traffic it is passed to the kernel unchanged (`unparsed` or `not_tunnel`), because it may
//! be anything the host itself handles. Once identified, every defect is a counted drop.
use aya_ebpf::programs::XdpContext;
use broker_common::{
    consts::{ETH_HDR_LEN, ETH_P_IPV4_BE, ETH_P_IPV6_BE, IPPROTO_IPV6},
    stats::PassReason,
};

use crate::{
    decap,
    encap::{self, Origin},
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr},
    maps,
    outcome::{Outcome, Verdict},
    ptr,
};

const NOT_TUNNEL: Verdict = Ok(Outcome::Pass(PassReason::NotTunnel));
const UNPARSED: Verdict = Ok(Outcome::Pass(PassReason::Unparsed));

#[inline(always)]
pub fn handle(ctx: &XdpContext) -> Verdict {
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
    if protocol != IPPROTO_IPV6 {
        return NOT_TUNNEL;
    }
    match maps::settings() {
        Some(s) if s.pop_v4 == dst && s.pop_v4 != [0; 4] => decap::proto41(ctx, s),
        _ => NOT_TUNNEL,
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
    match maps::prefix_slot(s, &ip.dst) {
        Some(slot) => encap::into_tunnel(ctx, s, slot, Origin::Native),
        None => NOT_TUNNEL,
    }
}
