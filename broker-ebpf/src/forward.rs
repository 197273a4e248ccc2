//! Forwarding after de/encapsulation: find the next hop and redirect, or hand the packet to
//! the kernel when the fast path cannot finish.
//!
//! The next hop comes from the kernel's FIB (`bpf_fib_lookup`), cached because a lookup
//! costs more than the rest of the fast path together (measured in docs/BENCHMARKS.md):
//! per tunnel slot and CPU for encapsulated packets (`NEXTHOP_CLIENT`), per destination
//! for decapsulated ones (`NEXTHOP_NATIVE`). An entry is used while its generation is the
//! controller's current one (bumped on every route, neighbour or link change) and it is
//! younger than `nexthop_max_age_ticks` (kernel ticks: `dataplane.nexthop_max_age_ms`
//! converted). Only lookups that would succeed for the largest packet the tunnel carries
//! are cached, so a cached hop never skips an MTU check that could fail.
//!
//! Rules when there is no usable next hop (documented in docs/ARCHITECTURE.md):
//! - no neighbour yet, egress MTU too small, local or not forwarded: `XDP_PASS` of the
//!   rewritten packet, which the kernel can route (it decrements the hop limit itself);
//!   decapsulated packets without a neighbour only within their rate limit
//!   (`ratelimit`), else dropped (`neighbour_rate_limited`);
//! - blackhole, unreachable, prohibit: drop (`no_route`).
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_PROHIBIT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
    },
    helpers::{bpf_fib_lookup, bpf_jiffies64, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};
use broker_common::{
    consts::{ETH_HDR_LEN, MTU_MAX},
    csum,
    maps::{nexthop_native_slot, Nexthop, Settings, Tunnel, TunnelKind},
    stats::{DropReason, PassReason},
};
use core::mem::{offset_of, size_of, MaybeUninit};

use crate::{
    encap::{self, Origin},
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, MacWords},
    maps::{self, NEXTHOP_NATIVE},
    outcome::{Outcome, Verdict},
    ptr, ratelimit, v4v6,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const SUCCESS: i64 = BPF_FIB_LKUP_RET_SUCCESS as i64;
const FRAG_NEEDED: i64 = BPF_FIB_LKUP_RET_FRAG_NEEDED as i64;

/// Forwards the native IPv6 packet at the start of the frame: into another tunnel when its
/// destination is one (client to client), else to its next hop.
#[inline(always)]
pub fn native6(ctx: &XdpContext, s: &Settings, len: usize) -> Verdict {
    let ip = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let ipr = unsafe { &*ip };
    if let Some(found) = maps::prefix_slot(s, &ipr.dst) {
        return encap::into_tunnel(ctx, s, found, Origin::Tunnel);
    }

    let nh = match native_hop6(ctx, s, ipr, len) {
        Ok(hop) => hop,
        Err(outcome) => return from_tunnel_unforwarded(s, outcome),
    };
    // SAFETY: the hop limit was checked to be > 1 before decapsulation.
    unsafe { (*ip).hop_limit -= 1 };
    redirect(ctx, &nh)
}

/// The next hop of the native IPv6 packet `ipr` (of `len` bytes; anywhere in the frame),
/// from the cache or the FIB; or what to do with the packet when there is none.
#[inline(always)]
pub fn native_hop6(
    ctx: &XdpContext,
    s: &Settings,
    ipr: &Ipv6Hdr,
    len: usize,
) -> Result<Nexthop, Outcome> {
    let now = clock(s);
    let cache = NEXTHOP_NATIVE.get_ptr_mut(nexthop_native_slot(&ipr.dst));
    // SAFETY: a per-CPU value only this CPU writes.
    let hit = cache.map(|c| unsafe { &*c });
    match hit {
        Some(c) if c.dst == ipr.dst && fresh(&c.hop, s, now) => Ok(c.hop),
        _ => {
            let mut raw = MaybeUninit::uninit();
            let p = fib_params(&mut raw);
            p.family = AF_INET6;
            p.ifindex = ctx.ingress_ifindex() as u32;
            p.__bindgen_anon_2.flowinfo = u32::from_ne_bytes(ipr.vtc_flow) & 0x0fff_ffffu32.to_be();
            // SAFETY: plain integer arrays; any bits are valid, nothing is read.
            unsafe {
                set_words(&mut p.__bindgen_anon_3.ipv6_src, &ipr.src);
                set_words(&mut p.__bindgen_anon_4.ipv6_dst, &ipr.dst);
            }
            // Decapsulated packets are at most MTU_MAX: a hop good for that is good for all.
            match lookup(ctx, p, MTU_MAX as usize, len) {
                Ok((hop, cacheable)) => {
                    if let (Some(c), true) = (cache, cacheable && s.nexthop_gen != 0) {
                        // SAFETY: a per-CPU value only this CPU writes.
                        unsafe {
                            copy16(&mut (*c).dst, &ipr.dst);
                            (*c).hop = hop.stamped(s, now);
                        }
                    }
                    Ok(hop)
                }
                Err(outcome) => Err(outcome),
            }
        }
    }
}

/// Forwards the native IPv4 packet at the start of the frame (decapsulated from a v4v6
/// tunnel): into another v4v6 tunnel when its destination is one, else to its next hop.
/// The next-hop cache keys IPv4 destinations as IPv4-mapped IPv6 addresses.
#[inline(always)]
pub fn native4(ctx: &XdpContext, s: &Settings, len: usize) -> Verdict {
    let ip = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    let ipr = unsafe { &*ip };
    if let Some(found) = maps::v4_route_slot(s, &ipr.dst) {
        return v4v6::encap(ctx, s, found, Origin::Tunnel);
    }
    let d = ipr.dst;
    let mapped = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, d[0], d[1], d[2], d[3],
    ];

    let now = clock(s);
    let cache = NEXTHOP_NATIVE.get_ptr_mut(nexthop_native_slot(&mapped));
    // SAFETY: a per-CPU value only this CPU writes.
    let hit = cache.map(|c| unsafe { &*c });
    let nh = match hit {
        Some(c) if c.dst == mapped && fresh(&c.hop, s, now) => c.hop,
        _ => {
            let mut raw = MaybeUninit::uninit();
            let p = fib_params(&mut raw);
            p.family = AF_INET;
            p.ifindex = ctx.ingress_ifindex() as u32;
            p.__bindgen_anon_2.tos = ipr.tos;
            p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ipr.src);
            p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ipr.dst);
            match lookup(ctx, p, MTU_MAX as usize, len) {
                Ok((hop, cacheable)) => {
                    if let (Some(c), true) = (cache, cacheable && s.nexthop_gen != 0) {
                        // SAFETY: a per-CPU value only this CPU writes.
                        unsafe {
                            copy16(&mut (*c).dst, &mapped);
                            (*c).hop = hop.stamped(s, now);
                        }
                    }
                    hop
                }
                Err(outcome) => return from_tunnel_unforwarded(s, outcome),
            }
        }
    };
    // SAFETY: the TTL was checked to be > 1 before decapsulation.
    unsafe { decrement_ttl(&mut *ip) };
    redirect(ctx, &nh)
}

/// What becomes of a decapsulated packet without a next hop: `outcome`, except that passes
/// for neighbour resolution (`no_neighbour`) take a token of their rate limit. A client can
/// address any host of a connected /64, and every such pass may leave an entry in the
/// kernel's neighbour table: beyond the limit they are dropped (`neighbour_rate_limited`).
/// Only this path touches the bucket, never a forwarded packet.
#[inline(always)]
fn from_tunnel_unforwarded(s: &Settings, outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Pass(PassReason::NoNeighbour) if !ratelimit::neighbour(s) => {
            Err(DropReason::NeighbourRateLimited)
        }
        other => Ok(other),
    }
}

/// A router's TTL decrement, with the header checksum updated incrementally (RFC 1624).
#[inline(always)]
pub fn decrement_ttl(ip: &mut Ipv4Hdr) {
    let old = [ip.ttl, ip.protocol];
    ip.ttl -= 1;
    ip.check = csum::replace2(ip.check, old, [ip.ttl, ip.protocol]);
}

/// Forwards the packet just encapsulated for tunnel `t` (in `slot`) to its client:
/// `outer_len` bytes after the Ethernet header, `overhead` of them the tunnel's headers.
#[inline(always)]
pub fn to_client(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    overhead: usize,
    outer_len: usize,
    tos: u8,
) -> Verdict {
    match client_hop(ctx, s, t, slot, overhead, outer_len, tos) {
        Ok(hop) => redirect(ctx, &hop),
        Err(outcome) => Ok(outcome),
    }
}

/// The next hop towards tunnel `t`'s client (see [`to_client`]), from the cache or the
/// FIB; or what to do with the packet when there is none.
#[inline(always)]
pub fn client_hop(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    overhead: usize,
    outer_len: usize,
    tos: u8,
) -> Result<Nexthop, Outcome> {
    let now = clock(s);
    let cache = maps::client_hop(s, slot);
    if let Some(c) = cache {
        // SAFETY: this CPU's entry, which only this CPU writes.
        let c = unsafe { &*c };
        if fresh(c, s, now) {
            return Ok(*c);
        }
    }
    let mut raw = MaybeUninit::uninit();
    let p = fib_params(&mut raw);
    p.ifindex = ctx.ingress_ifindex() as u32;
    if t.kind == TunnelKind::V4In6 as u8 {
        p.family = AF_INET6;
        p.__bindgen_anon_2.flowinfo = ((tos as u32) << 20).to_be();
        // SAFETY: plain integer arrays; any bits are valid, nothing is read.
        unsafe {
            set_words(&mut p.__bindgen_anon_3.ipv6_src, &t.local_v6);
            set_words(&mut p.__bindgen_anon_4.ipv6_dst, &t.remote_v6);
        }
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = tos;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(t.local_v4);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(t.remote_v4);
    }
    match lookup(ctx, p, t.mtu as usize + overhead, outer_len) {
        Ok((hop, cacheable)) => {
            if let (Some(c), true) = (cache, cacheable && s.nexthop_gen != 0) {
                // SAFETY: this CPU's entry, which only this CPU writes.
                unsafe { *c = hop.stamped(s, now) };
            }
            Ok(hop)
        }
        Err(outcome) => Err(outcome),
    }
}

/// The kernel's tick, read only when caching is on: the verifier turns `bpf_jiffies64`
/// into one load, where `bpf_ktime_get_coarse_ns` was a call into the timekeeping code
/// (about 7% of a forwarded packet's time in the program, docs/ARCHITECTURE.md).
#[inline(always)]
fn clock(s: &Settings) -> u64 {
    if s.nexthop_gen == 0 {
        return 0;
    }
    // SAFETY: helper without arguments.
    unsafe { bpf_jiffies64() }
}

#[inline(always)]
fn fresh(c: &Nexthop, s: &Settings, now: u64) -> bool {
    s.nexthop_gen != 0
        && c.gen == s.nexthop_gen
        && now.wrapping_sub(c.stamp_tick) < s.nexthop_max_age_ticks as u64
}

trait Stamp {
    fn stamped(self, s: &Settings, now: u64) -> Nexthop;
}

impl Stamp for Nexthop {
    #[inline(always)]
    fn stamped(mut self, s: &Settings, now: u64) -> Nexthop {
        self.gen = s.nexthop_gen;
        self.stamp_tick = now;
        self
    }
}

/// Looks up the next hop, first for `max_len` bytes (then the result may be cached), and
/// when that is too big for the egress MTU, again for the packet's own `len`.
#[inline(always)]
fn lookup(
    ctx: &XdpContext,
    p: &mut FibParams,
    max_len: usize,
    len: usize,
) -> Result<(Nexthop, bool), Outcome> {
    p.__bindgen_anon_1.tot_len = max_len as u16;
    let mut rc = fib(ctx, p);
    let mut cacheable = true;
    if rc == FRAG_NEEDED && len < max_len {
        // FRAG_NEEDED leaves the inputs as they were but for `mtu_result`, which shares
        // its place with `tot_len`.
        p.__bindgen_anon_1.tot_len = len as u16;
        rc = fib(ctx, p);
        cacheable = false;
    }
    if rc == SUCCESS {
        let mut hop = Nexthop {
            stamp_tick: 0,
            gen: 0,
            ifindex: p.ifindex,
            dmac: [0; 6],
            smac: [0; 6],
            _pad: 0,
        };
        copy6(&mut hop.dmac, &p.dmac);
        copy6(&mut hop.smac, &p.smac);
        Ok((hop, cacheable))
    } else {
        Err(not_forwarded(rc))
    }
}

/// Copies a MAC out of the lookup parameters a byte at a time. Volatile: LLVM would
/// otherwise read them with wide loads at their odd offsets on the stack, which the
/// verifier refuses (the fast path's copies are words, `hop_macs`).
#[inline(always)]
fn copy6(dst: &mut [u8; 6], src: &[u8; 6]) {
    let mut i = 0;
    while i < 6 {
        // SAFETY: within both arrays.
        dst[i] = unsafe { core::ptr::read_volatile(&src[i]) };
        i += 1;
    }
}

/// Zeroes lookup parameters in place, as eight words: `mem::zeroed` of the 64-byte struct
/// (or moving one) becomes a call to the `memset`/`memcpy` builtins, byte loops.
#[inline(always)]
fn fib_params(raw: &mut MaybeUninit<FibParams>) -> &mut FibParams {
    const WORDS: usize = size_of::<FibParams>() / 8;
    let w = raw.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < WORDS {
        // SAFETY: within the struct; volatile keeps LLVM from turning it back into memset.
        unsafe { w.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte was written; all-zero is a valid value of this C struct.
    unsafe { raw.assume_init_mut() }
}

const _: () = assert!(size_of::<FibParams>().is_multiple_of(8));

#[inline(always)]
fn fib(ctx: &XdpContext, p: &mut FibParams) -> i64 {
    // SAFETY: helper call with a params struct of the size we pass.
    unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) }
}

#[inline(always)]
fn redirect(ctx: &XdpContext, nh: &Nexthop) -> Verdict {
    set_macs(ctx, nh)?;
    // SAFETY: helper call; returns XDP_REDIRECT, or XDP_ABORTED on bad flags.
    let action = unsafe { bpf_redirect(nh.ifindex, 0) } as u32;
    Ok(Outcome::Redirect(action))
}

/// Writes the next hop's MACs into the frame's Ethernet header, as two words.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, nh: &Nexthop) -> Result<(), DropReason> {
    let eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked.
    unsafe { (*eth).set_mac_words(hop_macs(nh)) };
    Ok(())
}

/// `dmac` and `smac`, adjacent in `Nexthop` from an 8-aligned offset: two aligned loads.
/// Volatile, because LLVM would otherwise forward the bytes a fresh `Nexthop` was built
/// from (the FIB lookup's parameters, on the stack at odd offsets) as misaligned stack
/// loads, which the verifier refuses.
#[inline(always)]
fn hop_macs(nh: &Nexthop) -> MacWords {
    const DMAC: usize = offset_of!(Nexthop, dmac);
    const _: () = assert!(DMAC.is_multiple_of(8) && offset_of!(Nexthop, smac) == DMAC + 6);
    let p = nh as *const Nexthop as *const u8;
    // SAFETY: bytes 16-27 of a 32-byte, 8-aligned struct: a u64 at 16 and a u32 at 24.
    unsafe {
        MacWords(
            p.add(DMAC).cast::<u64>().read_volatile(),
            p.add(DMAC + 8).cast::<u32>().read_volatile(),
        )
    }
}

/// What to do when the FIB lookup did not give a next hop.
#[inline(always)]
fn not_forwarded(rc: i64) -> Outcome {
    const NO_NEIGH: i64 = BPF_FIB_LKUP_RET_NO_NEIGH as i64;
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

/// Copies an address as two words: an array assignment from packet memory becomes a call
/// to the `memmove` builtin.
#[inline(always)]
pub fn copy16(dst: &mut [u8; 16], src: &[u8; 16]) {
    let (d, s) = (dst.as_mut_ptr() as *mut u64, src.as_ptr() as *const u64);
    // SAFETY: both are 16 bytes; misaligned access is enabled for this target.
    unsafe {
        d.write_unaligned(s.read_unaligned());
        d.add(1).write_unaligned(s.add(1).read_unaligned());
    }
}

/// Stores an address into the lookup parameters as four words. Volatile, one by one: the
/// stack slot is only 4-aligned, and with misaligned access enabled LLVM would otherwise
/// merge two words into one 8-byte store, which the verifier refuses on the stack.
#[inline(always)]
fn set_words(dst: &mut [u32; 4], a: &[u8; 16]) {
    let mut i = 0;
    while i < 4 {
        let w = u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
        // SAFETY: within the array.
        unsafe { dst.as_mut_ptr().add(i).write_volatile(w) };
        i += 1;
    }
}
