//! Forwarding after de/encapsulation: ask the kernel's FIB for the next hop and redirect,
//! or hand the packet to the kernel when the fast path cannot finish.
//!
//! Rules (documented in docs/ARCHITECTURE.md):
//! - success: rewrite the MACs, decrement the IPv6 hop limit (decap), `bpf_redirect`;
//! - no neighbour yet, egress MTU too small, local or not forwarded: `XDP_PASS` of the
//!   rewritten packet, which the kernel can route (it decrements the hop limit itself);
//! - blackhole, unreachable, prohibit: drop (`no_route`).
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_PROHIBIT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};
use broker_common::{
    consts::ETH_HDR_LEN,
    maps::Tunnel,
    stats::{DropReason, PassReason},
};
use core::mem::{size_of, zeroed};

use crate::{
    encap::{self, Origin},
    headers::{EthHdr, Ipv6Hdr},
    maps,
    outcome::{Outcome, Verdict},
    ptr,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Forwards the native IPv6 packet at the start of the frame: into another tunnel when its
/// destination is one (client to client), else by the FIB.
#[inline(always)]
pub fn native6(ctx: &XdpContext, len: usize) -> Verdict {
    let ip = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let ipr = unsafe { &*ip };
    if let Some(slot) = maps::prefix_slot(&ipr.dst) {
        return encap::into_tunnel(ctx, slot, Origin::Tunnel);
    }

    // SAFETY: plain C struct, all-zero is valid.
    let mut p: FibParams = unsafe { zeroed() };
    p.family = AF_INET6;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_1.tot_len = len as u16;
    p.__bindgen_anon_2.flowinfo = u32::from_ne_bytes(ipr.vtc_flow) & 0x0fff_ffffu32.to_be();
    p.__bindgen_anon_3.ipv6_src = words(&ipr.src);
    p.__bindgen_anon_4.ipv6_dst = words(&ipr.dst);
    let rc = lookup(ctx, &mut p);
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // SAFETY: the hop limit was checked to be > 1 before decapsulation.
        unsafe { (*ip).hop_limit -= 1 };
        return redirect(ctx, &p);
    }
    Ok(not_forwarded(rc))
}

/// Forwards the encapsulated packet at the start of the frame to the tunnel's client.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, t: &Tunnel, outer_len: usize, tos: u8) -> Verdict {
    // SAFETY: plain C struct, all-zero is valid.
    let mut p: FibParams = unsafe { zeroed() };
    p.family = AF_INET;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_1.tot_len = outer_len as u16;
    p.__bindgen_anon_2.tos = tos;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(t.local_v4);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(t.remote_v4);
    let rc = lookup(ctx, &mut p);
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return redirect(ctx, &p);
    }
    Ok(not_forwarded(rc))
}

#[inline(always)]
fn lookup(ctx: &XdpContext, p: &mut FibParams) -> i64 {
    // SAFETY: helper call with a params struct of the size we pass.
    unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) }
}

#[inline(always)]
fn redirect(ctx: &XdpContext, p: &FibParams) -> Verdict {
    let eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    unsafe {
        (*eth).dst = p.dmac;
        (*eth).src = p.smac;
    }
    // SAFETY: helper call; returns XDP_REDIRECT, or XDP_ABORTED on bad flags.
    let action = unsafe { bpf_redirect(p.ifindex, 0) } as u32;
    Ok(Outcome::Redirect(action))
}

/// What to do when the FIB lookup did not give a next hop.
#[inline(always)]
fn not_forwarded(rc: i64) -> Outcome {
    const NO_NEIGH: i64 = BPF_FIB_LKUP_RET_NO_NEIGH as i64;
    const FRAG_NEEDED: i64 = BPF_FIB_LKUP_RET_FRAG_NEEDED as i64;
    const NOT_FWDED: i64 = BPF_FIB_LKUP_RET_NOT_FWDED as i64;
    const BLACKHOLE: i64 = BPF_FIB_LKUP_RET_BLACKHOLE as i64;
    const UNREACHABLE: i64 = BPF_FIB_LKUP_RET_UNREACHABLE as i64;
    const PROHIBIT: i64 = BPF_FIB_LKUP_RET_PROHIBIT as i64;
    match rc {
        NO_NEIGH => Outcome::Pass(PassReason::NoNeighbour),
        FRAG_NEEDED => Outcome::Pass(PassReason::FragNeeded),
        NOT_FWDED => Outcome::Pass(PassReason::NotForwarded),
        BLACKHOLE | UNREACHABLE | PROHIBIT => Outcome::Drop(DropReason::NoRoute),
        _ => Outcome::Pass(PassReason::FibError),
    }
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
