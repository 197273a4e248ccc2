//! The only way this program reads or writes packet memory: a bounds check against
//! `data_end` the verifier can see, then a raw pointer.
//!
//! Safety contract of the returned pointers: they are valid until the next
//! `bpf_xdp_adjust_head`/`_tail`, after which every pointer must be fetched again. Callers
//! never hold two overlapping `&mut`.
use aya_ebpf::programs::XdpContext;
use core::mem::size_of;

/// Pointer to a `T` at byte `offset` of the frame, or `None` when the frame is too short.
#[inline(always)]
pub fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Bytes in the frame.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}
