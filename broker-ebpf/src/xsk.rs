//! The AF_XDP engine of AYIYA (`ayiya.engine: af_xdp`): forward packets go to a userspace
//! worker that signs or verifies them with the CPU's SHA extensions, much faster than the
//! SHA-1 written for BPF (`sha1`). XDP still does everything else: the checks that need no
//! signature, the FIB lookup, the counters, the headers; the worker hashes, strips or
//! signs, and transmits on the egress interface's socket.
//!
//! A packet is only handed over when the worker has a socket on its receive queue and one
//! on the egress interface (sockets leave the maps when they close): when the worker or
//! the controller is not running, XDP hashes as before. Forwarding never depends on the
//! controller process.
//!
//! A packet handed over to be verified is counted by the worker, not here (only it knows
//! whether the packet was the client's, see `XskVerdicts`); and a tunnel the worker found
//! forged packets for is verified here for a while ([`suspect`]).
use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use broker_common::{
    maps::{Settings, XskMeta, XSK_MAX_QUEUES},
    stats::DropReason,
};

use crate::{
    maps::{XSKS, XSK_IFACES, XSK_SUSPECT},
    outcome::{Outcome, Verdict},
};

/// The `XSKS` index of the worker's socket on the frame's receive queue, when the AF_XDP
/// engine is on and the socket is there.
#[inline(always)]
pub fn socket(ctx: &XdpContext, s: &Settings) -> Option<u32> {
    if s.flags & Settings::AYIYA_AF_XDP == 0 {
        return None;
    }
    let queue = ctx.rx_queue_index();
    if queue >= XSK_MAX_QUEUES {
        return None;
    }
    let base = XSK_IFACES.get_ptr(ctx.ingress_ifindex() as u32)?;
    // SAFETY: a u32 value in a map the program only reads.
    let index = unsafe { *base } + queue;
    XSKS.get(index)?;
    Some(index)
}

/// Whether the worker found forged packets for tunnel `slot` lately (it marks the tunnel
/// for `DEFAULT_XSK_SUSPECT_MS`, a second): then its packets are verified here, on the
/// CPU that received them, with no queue to wait in, instead of joining the worker's
/// ring, which every tunnel of the receive queue shares (a forged flood from the client's
/// own address and port filled it, and the other tunnels' packets waited or were lost
/// behind it). An attacker who does not use the client's address and port lands here
/// anyway (roaming is verified in XDP). One array read and the coarse clock, for packets
/// about to be handed over only.
#[inline(always)]
pub fn suspect(slot: u32) -> bool {
    let Some(until) = XSK_SUSPECT.get_ptr(slot) else {
        return false;
    };
    // SAFETY: an array value; the worker stores it whole (an aligned u64) through its
    // mapping, so the read sees the old or the new deadline.
    let until = unsafe { core::ptr::read_volatile(until) };
    // SAFETY: helper without arguments.
    until != 0 && unsafe { bpf_ktime_get_coarse_ns() } < until
}

/// Whether the worker can send out of interface `ifindex`.
#[inline(always)]
pub fn serves(ifindex: u32) -> bool {
    XSK_IFACES.get_ptr(ifindex).is_some()
}

/// Puts the [`XskMeta`] in front of the frame and redirects it to socket `index`.
#[inline(always)]
pub fn hand_off(
    ctx: &XdpContext,
    index: u32,
    key: &[u8; 20],
    slot: u32,
    egress_ifindex: u32,
    op: u32,
) -> Verdict {
    // SAFETY: helper call on our own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(XskMeta::LEN as i32)) } != 0 {
        return Err(DropReason::AdjustFailed);
    }
    let meta = ctx.metadata();
    if meta + XskMeta::LEN > ctx.data() {
        return Err(DropReason::AdjustFailed);
    }
    let m = meta as *mut u32;
    let k = key.as_ptr() as *const u32;
    // SAFETY: 32 bytes of metadata, bounds checked above; the key is 20 bytes.
    unsafe {
        let mut i = 0;
        while i < 5 {
            m.add(i).write_unaligned(k.add(i).read_unaligned());
            i += 1;
        }
        m.add(5).write_unaligned(slot);
        m.add(6).write_unaligned(egress_ifindex);
        m.add(7).write_unaligned(op);
    }
    // XDP_REDIRECT, or XDP_ABORTED (flags 0) should the socket have gone meanwhile.
    let action = match XSKS.redirect(index, 0) {
        Ok(a) | Err(a) => a,
    };
    Ok(Outcome::Redirect(action))
}
