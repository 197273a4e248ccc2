//! What a handler decided. Drops and passes carry their reason, so the entry point counts
//! every packet exactly once under one reason.
//!
//! Handlers run in one deep stack frame (`ingress::stage`, out of line); what they decide
//! crosses back to the entry point [`Packed`] into a `u64`, as BPF functions return one
//! register. A handler that needs a SHA-1 returns [`Outcome::Hash`] and is called again
//! with its [`Resume`] once the entry point has run it (see `sha1`).
use broker_common::stats::{DropReason, PassReason};

#[derive(Clone, Copy)]
pub enum Outcome {
    /// To the kernel's stack.
    Pass(PassReason),
    /// Dropped (also returned as `Err` through `?`).
    Drop(DropReason),
    /// Sent back out of the interface it came in on (echo reply, ICMP error). Use
    /// [`Outcome::TX`]: the value is always 0 (see below).
    Tx(u32),
    /// The return value of `bpf_redirect` (`XDP_REDIRECT`, or `XDP_ABORTED` on failure).
    Redirect(u32),
    /// Handled completely, nothing to send (an AYIYA beat): dropped, counted as an event
    /// where it was handled rather than under a drop reason. Use [`Outcome::CONSUMED`].
    Consumed(u32),
    /// Run the SHA-1 `sha1::prepare` set up, then resume here.
    Hash(Resume),
}

impl Outcome {
    /// Every variant carries a value, these two a constant 0, so that a verdict is defined
    /// in full on every path: where paths join, LLVM may otherwise read an undefined
    /// payload from a register never written, and the verifier refuses the whole program
    /// (`R5 !read_ok`).
    pub const TX: Self = Self::Tx(0);
    pub const CONSUMED: Self = Self::Consumed(0);
}

/// Handlers return `Err(reason)` for drops so that `?` works on bounds checks.
pub type Verdict = Result<Outcome, DropReason>;

/// Where an AYIYA handler picks up after its hash, and for which tunnel slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub step: Step,
    pub slot: u32,
}

#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A new frame.
    Start = 0,
    /// A received packet's digest is ready: compare, then decapsulate, answer or beat.
    Verified = 1,
    /// An encapsulated packet's signature is ready: write it, forward to the client.
    Forward = 2,
    /// A reply's signature is ready: write it, send it back out (`XDP_TX`).
    Tx = 3,
}

impl Resume {
    pub const START: Self = Self {
        step: Step::Start,
        slot: 0,
    };

    #[inline(always)]
    pub fn at(step: Step, slot: u32) -> Self {
        Self { step, slot }
    }
}

const PASS: u64 = 1;
const DROP: u64 = 2;
const TX: u64 = 3;
const REDIRECT: u64 = 4;
const CONSUMED: u64 = 5;
const HASH: u64 = 6;

/// A verdict in one register: tag in bits 0-7, resume step in 8-15, the value (counter
/// slot, XDP action or tunnel slot) in 32-63.
#[derive(Clone, Copy)]
pub struct Packed(pub u64);

impl Packed {
    #[inline(always)]
    pub fn of(v: Verdict) -> Self {
        let (tag, step, value) = match v {
            Ok(Outcome::Pass(r)) => (PASS, 0, r.slot()),
            Ok(Outcome::Drop(r)) | Err(r) => (DROP, 0, r.slot()),
            Ok(Outcome::Tx(_)) => (TX, 0, 0),
            Ok(Outcome::Redirect(a)) => (REDIRECT, 0, a),
            Ok(Outcome::Consumed(_)) => (CONSUMED, 0, 0),
            Ok(Outcome::Hash(r)) => (HASH, r.step as u64, r.slot),
        };
        Self(tag | step << 8 | (value as u64) << 32)
    }

    #[inline(always)]
    pub fn resume(r: Resume) -> Self {
        Self::of(Ok(Outcome::Hash(r)))
    }

    #[inline(always)]
    fn tag(self) -> u64 {
        self.0 & 0xff
    }

    #[inline(always)]
    fn value(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The resume point of a hash request.
    #[inline(always)]
    pub fn hash_request(self) -> Option<Resume> {
        if self.tag() != HASH {
            return None;
        }
        let step = match (self.0 >> 8) & 0xff {
            1 => Step::Verified,
            2 => Step::Forward,
            3 => Step::Tx,
            _ => Step::Start,
        };
        Some(Resume::at(step, self.value()))
    }

    /// The XDP action, and the global counter slot of its drop or pass reason if any.
    #[inline(always)]
    pub fn action(self, xdp_pass: u32, xdp_drop: u32, xdp_tx: u32) -> (u32, Option<u32>) {
        match self.tag() {
            PASS => (xdp_pass, Some(self.value())),
            DROP => (xdp_drop, Some(self.value())),
            TX => (xdp_tx, None),
            REDIRECT => (self.value(), None),
            CONSUMED => (xdp_drop, None),
            // A hash requested and never run: a bug, counted as one.
            _ => (xdp_drop, Some(DropReason::AdjustFailed.slot())),
        }
    }
}
