//! What the debug object says about each packet: one aya-log record where its fate is
//! decided (feature `log`, built by `cargo xtask build-ebpf --log`; docs/OPERATIONS.md).
//!
//! Without the feature [`fate!`](crate::fate) expands to nothing and [`verdict`] does not
//! exist, so the default object has no log code, no `AYA_LOGS` map and no aya-log BTF: it
//! is byte for byte what it is without this module (docs/TOOLCHAIN.md says how that was
//! checked).
//!
//! The record of a packet is written once, by the entry point, after the handlers decided
//! (`main.rs`): every drop and pass reason and every forwarded or answered packet goes
//! through the one [`Packed`](crate::outcome::Packed) verdict, so one call sees them all,
//! and the hash round trips of AYIYA add no second record. The reason travels as its
//! `GLOBAL_STATS` slot, which names it uniquely; userspace (`dataplane::ebpf_log`) writes
//! the names in, as the counters' labels are written.

/// An aya-log record at a run-time level (`aya_log_ebpf::Level`), with the `xdp` target,
/// in the debug object; nothing at all in the default one (the arguments are not
/// evaluated).
#[cfg(feature = "log")]
#[macro_export]
macro_rules! fate {
    ($ctx:expr, $level:expr, $($fmt:tt)+) => {
        ::aya_log_ebpf::log!($ctx, target: "xdp", $level, $($fmt)+)
    };
}

/// An aya-log record in the debug object; nothing at all in the default one.
#[cfg(not(feature = "log"))]
#[macro_export]
macro_rules! fate {
    ($($anything:tt)*) => {};
}

/// The entry point's last word: returns `action`, and in the debug object records the
/// packet's verdict first ([`record::verdict`]). In the default object this is `action`
/// and nothing else.
#[inline(always)]
pub fn recorded(
    ctx: &aya_ebpf::programs::XdpContext,
    action: u32,
    reason: Option<u32>,
    len: u64,
) -> u32 {
    #[cfg(feature = "log")]
    record::verdict(ctx, action, reason, len);
    #[cfg(not(feature = "log"))]
    let _ = (ctx, reason, len);
    action
}

#[cfg(feature = "log")]
mod record {
    use aya_ebpf::programs::XdpContext;
    use aya_log_ebpf::macro_support::Level;
    use broker_common::{
        consts::{ETH_HDR_LEN, ETH_P_IPV4_BE, ETH_P_IPV6_BE},
        stats::{ACTION_BASE, DROP_BASE, PASS_BASE},
    };

    use crate::{
        headers::{EthHdr, Ipv4Hdr, Ipv6Hdr},
        ptr,
    };

    /// Passes of frames that were never tunnel traffic (ARP, the host's own SSH, ...):
    /// the bulk of what a PoP's uplink carries besides tunnels, so only at `trace`.
    const HOST_TRAFFIC: [u32; 2] = [PASS_BASE, PASS_BASE + 1];

    /// One record for one packet: its XDP action, the counter slot of its reason (0 when
    /// it has none: forwarded, answered, consumed), the length it arrived with, the
    /// interface and receive queue, and the addresses of the frame as it leaves the
    /// program (a decapsulated packet shows its inner header, an encapsulated one its
    /// outer).
    ///
    /// Drops are `info`, passes of tunnel traffic and forwarded or answered packets
    /// `debug`, passes of other traffic `trace`.
    #[inline(never)]
    pub fn verdict(ctx: &XdpContext, action: u32, reason: Option<u32>, len: u64) {
        let reason = reason.unwrap_or(ACTION_BASE);
        let level = if (DROP_BASE..PASS_BASE).contains(&reason) {
            Level::Info
        } else if HOST_TRAFFIC.contains(&reason) {
            Level::Trace
        } else {
            Level::Debug
        };
        // SAFETY: `ctx.ctx` is the program's context, valid for the whole run.
        let (ifindex, queue) = unsafe { ((*ctx.ctx).ingress_ifindex, (*ctx.ctx).rx_queue_index) };
        let proto = match ptr::at::<EthHdr>(ctx, 0) {
            // SAFETY: bounds checked by `ptr::at`.
            Some(eth) => u16::from_ne_bytes(unsafe { (*eth).proto }),
            None => 0,
        };
        if proto == ETH_P_IPV4_BE {
            if let Some(ip) = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN) {
                // SAFETY: bounds checked by `ptr::at`.
                let (src, dst, p) = unsafe { ((*ip).src, (*ip).dst, (*ip).protocol) };
                crate::fate!(
                    ctx,
                    level,
                    "fate action={} reason={} len={} if={} rxq={} ipv4 {:i} > {:i} proto {}",
                    action,
                    reason,
                    len,
                    ifindex,
                    queue,
                    src,
                    dst,
                    p
                );
                return;
            }
        } else if proto == ETH_P_IPV6_BE {
            if let Some(ip) = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN) {
                // SAFETY: bounds checked by `ptr::at`.
                let (src, dst, nh) = unsafe { ((*ip).src, (*ip).dst, (*ip).next_header) };
                crate::fate!(
                    ctx,
                    level,
                    "fate action={} reason={} len={} if={} rxq={} ipv6 {:i} > {:i} next {}",
                    action,
                    reason,
                    len,
                    ifindex,
                    queue,
                    src,
                    dst,
                    nh
                );
                return;
            }
        }
        crate::fate!(
            ctx,
            level,
            "fate action={} reason={} len={} if={} rxq={} ethertype {:x}",
            action,
            reason,
            len,
            ifindex,
            queue,
            u16::from_be_bytes(proto.to_ne_bytes())
        );
    }
}
