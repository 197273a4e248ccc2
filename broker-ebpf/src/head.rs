//! Moving a frame's head: outer headers stripped or room made for new ones, with the
//! Ethernet header kept in front and its EtherType set to what now follows; and a frame
//! reshaped into an ICMP error around the packet it quotes. Every packet pointer taken
//! before one of these is invalid after it (see [`crate::ptr`]).
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use broker_common::stats::DropReason;

use crate::{headers::EthHdr, ptr};

/// Removes `n` bytes after the Ethernet header (`n` > 0) or inserts `-n` bytes there
/// (`n` < 0); the Ethernet header moves along and says `ethertype` (network order).
#[inline(always)]
pub fn shift(ctx: &XdpContext, n: i32, ethertype: u16) -> Result<(), DropReason> {
    let eth = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked; read before the head moves.
    let macs = unsafe { (*eth).mac_words() };
    // SAFETY: helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, n) } != 0 {
        return Err(DropReason::AdjustFailed);
    }
    let new = ptr::at::<EthHdr>(ctx, 0).ok_or(DropReason::AdjustFailed)?;
    // SAFETY: bounds checked after the adjustment.
    unsafe {
        (*new).set_mac_words(macs);
        (*new).set_proto(ethertype);
    }
    Ok(())
}

/// Makes room for `grow` bytes of new headers in front of the packet after the Ethernet
/// header (which is not copied: the caller writes a new one), cuts the frame to `len` bytes
/// in all, then appends `pad` zero bytes: an ICMP error quoting the start of the packet it
/// answers, padded to a fixed size so its checksum is one fixed-size `bpf_csum_diff`
/// (zeros add nothing to it). [`unpad`] removes the padding.
#[inline(always)]
pub fn grow_and_cut(
    ctx: &XdpContext,
    grow: usize,
    len: usize,
    pad: usize,
) -> Result<(), DropReason> {
    // SAFETY: helper calls on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(DropReason::AdjustFailed);
    }
    let have = ptr::frame_len(ctx);
    if have < len {
        return Err(DropReason::AdjustFailed);
    }
    // Two steps when padding: a frame may go on past the packet (Ethernet padding), and
    // only bytes a tail grows by are zeroed (by the kernel, which never exposes old memory).
    tail(ctx, len as i32 - have as i32)?;
    if pad > 0 {
        tail(ctx, pad as i32)?;
    }
    Ok(())
}

/// Removes the `pad` bytes [`grow_and_cut`] appended.
#[inline(always)]
pub fn unpad(ctx: &XdpContext, pad: usize) -> Result<(), DropReason> {
    if pad > 0 {
        tail(ctx, -(pad as i32))?;
    }
    Ok(())
}

#[inline(always)]
fn tail(ctx: &XdpContext, delta: i32) -> Result<(), DropReason> {
    // SAFETY: helper call on our own context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(DropReason::AdjustFailed);
    }
    Ok(())
}
