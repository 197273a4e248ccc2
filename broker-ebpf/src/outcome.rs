//! What a handler decided. Drops and passes carry their reason, so the entry point counts
//! every packet exactly once under one reason.
use broker_common::stats::{DropReason, PassReason};

#[derive(Clone, Copy)]
pub enum Outcome {
    /// To the kernel's stack.
    Pass(PassReason),
    /// Dropped (also returned as `Err` through `?`).
    Drop(DropReason),
    /// Sent back out of the interface it came in on (echo reply, Packet Too Big).
    Tx,
    /// The return value of `bpf_redirect` (`XDP_REDIRECT`, or `XDP_ABORTED` on failure).
    Redirect(u32),
}

/// Handlers return `Err(reason)` for drops so that `?` works on bounds checks.
pub type Verdict = Result<Outcome, DropReason>;
