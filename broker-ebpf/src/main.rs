//! Entry point of the data plane: run the handlers (and the SHA-1 they ask for), count
//! the verdict.
// Only the BPF target builds the real object; on the host (workspace-wide clippy) this is
// an empty program, as Firezone's eBPF crate does.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use broker_common::stats::DropReason;
use broker_ebpf::{
    fate, ingress,
    outcome::{Outcome, Packed, Resume},
    sha1, stats,
};

/// Hashes one packet may need: verify what arrived, sign the reply.
const MAX_HASHES: u32 = 2;

#[xdp]
pub fn broker_xdp(ctx: XdpContext) -> u32 {
    // Counters use the length the frame arrived with, before any rewrite.
    let len = (ctx.data_end() - ctx.data()) as u64;
    let mut p = Packed(ingress::stage(ctx.ctx, Packed::resume(Resume::START).0));
    let mut i = 0;
    while i < MAX_HASHES {
        let Some(resume) = p.hash_request() else {
            break;
        };
        p = if sha1::run(ctx.ctx) == 0 {
            Packed(ingress::stage(ctx.ctx, Packed::resume(resume).0))
        } else {
            Packed::of(Ok(Outcome::Drop(DropReason::Truncated)))
        };
        i += 1;
    }
    let (action, reason) = p.action(
        xdp_action::XDP_PASS,
        xdp_action::XDP_DROP,
        xdp_action::XDP_TX,
    );
    if let Some(slot) = reason {
        stats::global(slot, len);
    }
    stats::action(action, len);
    fate::recorded(&ctx, action, reason, len)
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
