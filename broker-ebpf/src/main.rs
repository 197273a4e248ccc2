//! Entry point of the data plane: count the frame, handle it, count the verdict.
// Only the BPF target builds the real object; on the host (workspace-wide clippy) this is
// an empty program, as Firezone's eBPF crate does.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use broker_ebpf::{ingress, outcome::Outcome, stats};

#[xdp]
pub fn broker_xdp(ctx: XdpContext) -> u32 {
    // Counters use the length the frame arrived with, before any rewrite.
    let len = (ctx.data_end() - ctx.data()) as u64;
    let action = match ingress::handle(&ctx) {
        Ok(Outcome::Pass(reason)) => {
            stats::global(reason.slot(), len);
            xdp_action::XDP_PASS
        }
        Ok(Outcome::Drop(reason)) | Err(reason) => {
            stats::global(reason.slot(), len);
            xdp_action::XDP_DROP
        }
        Ok(Outcome::Tx) => xdp_action::XDP_TX,
        Ok(Outcome::Redirect(action)) => action,
    };
    stats::action(action, len);
    action
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
