//! Helper programs for the lab and `cargo xtask bench`; not part of the data plane.
// Only the BPF target builds the real object; on the host (workspace-wide clippy) this is
// an empty program, as Firezone's eBPF crate does.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use broker_common::{consts::GEN_FRAME_LEN, maps::StatPair};

/// Interface index `bench_redirect` sends every frame to.
#[map]
static BENCH_REDIRECT: Array<u32> = Array::with_max_entries(1, 0);

/// The frame `bench_gen` writes: exactly `GEN_FRAME_LEN` bytes.
#[map]
static GEN_TEMPLATE: Array<[u64; GEN_WORDS]> = Array::with_max_entries(1, 0);

const GEN_WORDS: usize = GEN_FRAME_LEN / 8;

/// Frames and bytes `bench_sink` consumed.
#[map]
static BENCH_SINK: PerCpuArray<StatPair> = PerCpuArray::with_max_entries(1, 0);

/// Accepts everything. Attached to a veth peer it makes the peer receive frames that were
/// `XDP_REDIRECT`ed into the veth; it is also the no-op baseline of the per-packet timings.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The ceiling of forwarding on this machine: redirect without looking at the frame.
#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    match BENCH_REDIRECT.get(0) {
        // SAFETY: helper call.
        Some(ifindex) => unsafe { bpf_redirect(*ifindex, 0) as u32 },
        None => xdp_action::XDP_ABORTED,
    }
}

/// Counts and drops: where benchmark traffic ends.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    if let Some(p) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU value.
        unsafe {
            (*p).packets += 1;
            (*p).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    xdp_action::XDP_DROP
}

/// Packet generator for `BPF_PROG_TEST_RUN` with live frames (the xdp-trafficgen
/// technique): rewrites every frame from `GEN_TEMPLATE`, because the page pool hands frames
/// back as the receiver left them, and transmits it.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + GEN_FRAME_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(template) = GEN_TEMPLATE.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let dst = start as *mut u64;
    for (i, word) in template.iter().enumerate() {
        // SAFETY: 16 words = 128 bytes, bounds checked above.
        unsafe { dst.add(i).write_unaligned(*word) };
    }
    xdp_action::XDP_TX
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
