//! Token buckets for what the data plane does on behalf of strangers: generating ICMP
//! messages (RFC 4443 2.4 (f)) and handing decapsulated packets to the kernel to resolve
//! a neighbour. Their parameters are the controller's (`Settings.icmp`,
//! `Settings.neighbour`); their state is the program's own.
//!
//! One bucket per limit for the whole PoP, shared by every CPU, kept with atomic
//! instructions (`BPF_CMPXCHG`, kernel 5.12+), as the kernel's own `icmp_global_allow`
//! does. Per-CPU buckets at `rate / ncpus` would need no atomics, but RSS puts one flow
//! (one traceroute, one attacker) on one CPU: it would get a fraction of the rate, and the
//! burst a test or an operator sees would depend on which CPUs the packets landed on.
//! The shared cache line costs nothing on the forwarding path, which never touches it:
//! only a packet about to be answered with ICMP or passed for `no_neighbour` does, and an
//! empty bucket is only read (no line bouncing) until its next token is due.
use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::map, maps::Array};
use broker_common::maps::{RateLimit, Settings};

/// A bucket's state. `stamp_ns` 0: never used (a new program), full.
#[repr(C)]
struct Bucket {
    /// Tokens left; may exceed the burst after the controller lowered it (taking clamps).
    tokens: u64,
    /// The coarse monotonic clock up to which tokens were added: it advances by whole
    /// token intervals, so no time is lost to rounding.
    stamp_ns: u64,
}

const ICMP: u32 = 0;
const NEIGHBOUR: u32 = 1;

/// The buckets, by limit. Not pinned: a new program starts with full buckets.
#[map]
static RATE_BUCKETS: Array<Bucket> = Array::with_max_entries(2, 0);

/// Takes a token for an ICMP message to generate; false: drop instead (`icmp_rate_limited`).
#[inline(always)]
pub fn icmp(s: &Settings) -> bool {
    allow(ICMP, &s.icmp)
}

/// Takes a token for a decapsulated packet to pass for neighbour resolution; false: drop
/// instead (`neighbour_rate_limited`).
#[inline(always)]
pub fn neighbour(s: &Settings) -> bool {
    allow(NEIGHBOUR, &s.neighbour)
}

const NS_PER_S: u64 = 1_000_000_000;
/// Attempts at taking a token when other CPUs take theirs at the same moment; losing every
/// one means they are sending at full speed, and this packet is the one too many.
const TAKE_TRIES: u32 = 3;

/// Out of line: one copy of the bucket code serves every call site (there are a dozen), and
/// it does not add to the inlined handlers' stack frame.
#[inline(never)]
fn allow(index: u32, limit: &RateLimit) -> bool {
    let (per_s, burst) = (limit.per_s as u64, limit.burst as u64);
    if burst == 0 {
        return false;
    }
    let Some(b) = RATE_BUCKETS.get_ptr_mut(index) else {
        return false;
    };
    // SAFETY: a helper without arguments. The coarse clock ticks every few ms, which only
    // makes refills come in steps of a few tokens.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: a map value, valid for the program's life; every access below is a single
    // aligned 8-byte load or store, or an atomic instruction.
    unsafe {
        refill(b, per_s, burst, now);
        take(b, burst)
    }
}

/// Adds the tokens due at `now` since the stamp; the CPU that moves the stamp adds them.
#[inline(always)]
unsafe fn refill(b: *mut Bucket, per_s: u64, burst: u64, now: u64) {
    let tokens = &raw mut (*b).tokens;
    let stamp_at = &raw mut (*b).stamp_ns;
    let stamp = atomic::load(stamp_at);
    if stamp == 0 {
        if atomic::cas(stamp_at, 0, now) {
            atomic::store(tokens, burst);
        }
        return;
    }
    if per_s == 0 {
        return;
    }
    let interval = if per_s < NS_PER_S {
        NS_PER_S / per_s
    } else {
        1
    };
    let elapsed = now.wrapping_sub(stamp);
    // Negative (another CPU moved the stamp past this one's reading of the clock) or less
    // than a token's worth: nothing due.
    if (elapsed as i64) < interval as i64 {
        return;
    }
    let due = elapsed / interval;
    if !atomic::cas(stamp_at, stamp, stamp + due * interval) {
        return;
    }
    let due = if due < burst { due } else { burst };
    let have = atomic::add(tokens, due) + due;
    if have > burst {
        // One try: should a taker win the race, the excess is clamped when taken.
        atomic::cas(tokens, have, burst);
    }
}

#[inline(always)]
unsafe fn take(b: *mut Bucket, burst: u64) -> bool {
    let tokens = &raw mut (*b).tokens;
    let mut i = 0;
    while i < TAKE_TRIES {
        let have = atomic::load(tokens);
        if have == 0 {
            return false;
        }
        let left = if have < burst { have } else { burst } - 1;
        if atomic::cas(tokens, have, left) {
            return true;
        }
        i += 1;
    }
    false
}

/// The few atomics the buckets use. BPF has compare-and-exchange and fetch-and-add
/// (`BPF_ATOMIC` with `BPF_FETCH`), but Rust's target for it declares no CAS, so
/// `AtomicU64` lacks them there: the compiler's intrinsics stand in. On the host (clippy)
/// the standard atomics do.
#[cfg(target_arch = "bpf")]
mod atomic {
    use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering::SeqCst};

    /// An aligned 8-byte load: single-copy atomic.
    #[inline(always)]
    pub unsafe fn load(p: *const u64) -> u64 {
        p.read_volatile()
    }

    #[inline(always)]
    pub unsafe fn store(p: *mut u64, v: u64) {
        p.write_volatile(v)
    }

    #[inline(always)]
    pub unsafe fn cas(p: *mut u64, old: u64, new: u64) -> bool {
        atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(p, old, new).1
    }

    /// Adds, returns the value before.
    #[inline(always)]
    pub unsafe fn add(p: *mut u64, v: u64) -> u64 {
        atomic_xadd::<u64, u64, { SeqCst }>(p, v)
    }
}

#[cfg(not(target_arch = "bpf"))]
mod atomic {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

    #[inline(always)]
    pub unsafe fn load(p: *const u64) -> u64 {
        AtomicU64::from_ptr(p as *mut u64).load(SeqCst)
    }

    #[inline(always)]
    pub unsafe fn store(p: *mut u64, v: u64) {
        AtomicU64::from_ptr(p).store(v, SeqCst)
    }

    #[inline(always)]
    pub unsafe fn cas(p: *mut u64, old: u64, new: u64) -> bool {
        AtomicU64::from_ptr(p)
            .compare_exchange(old, new, SeqCst, SeqCst)
            .is_ok()
    }

    #[inline(always)]
    pub unsafe fn add(p: *mut u64, v: u64) -> u64 {
        AtomicU64::from_ptr(p).fetch_add(v, SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// One request at `now`, as `allow` makes it.
    fn ask(b: &mut Bucket, per_s: u64, burst: u64, now: u64) -> bool {
        // SAFETY: a bucket of our own.
        unsafe {
            refill(b, per_s, burst, now);
            take(b, burst)
        }
    }

    fn fresh() -> Bucket {
        Bucket {
            tokens: 0,
            stamp_ns: 0,
        }
    }

    #[test]
    fn a_new_bucket_lets_its_burst_through_then_refills_at_the_rate() {
        let mut b = fresh();
        let t0 = 5_000 * MS;
        for i in 0..100 {
            assert!(ask(&mut b, 1000, 100, t0), "{i}");
        }
        assert!(!ask(&mut b, 1000, 100, t0));
        // 1000/s: a token a millisecond, none before it is due.
        assert!(!ask(&mut b, 1000, 100, t0 + MS - 1));
        assert!(ask(&mut b, 1000, 100, t0 + MS));
        assert!(!ask(&mut b, 1000, 100, t0 + MS));
        // A tick of the coarse clock later: its tokens all at once.
        for i in 0..4 {
            assert!(ask(&mut b, 1000, 100, t0 + 5 * MS), "{i}");
        }
        assert!(!ask(&mut b, 1000, 100, t0 + 5 * MS));
        // Idle for an hour: full again, never fuller.
        let later = t0 + 3_600_000 * MS;
        for i in 0..100 {
            assert!(ask(&mut b, 1000, 100, later), "{i}");
        }
        assert!(!ask(&mut b, 1000, 100, later));
    }

    #[test]
    fn fractions_of_a_token_are_kept_for_later() {
        let mut b = fresh();
        assert!(ask(&mut b, 3, 1, 1_000 * MS));
        // 3/s: a token every 333.33 ms; the stamp moves by whole intervals only, so three
        // tokens are due after one second however the requests fall.
        let mut got = 0;
        for step in 1..=10 {
            if ask(&mut b, 3, 1, 1_000 * MS + step * 100 * MS) {
                got += 1;
            }
        }
        assert_eq!(got, 3);
    }

    #[test]
    fn rate_zero_is_the_burst_once() {
        let mut b = fresh();
        for _ in 0..3 {
            assert!(ask(&mut b, 0, 3, MS));
        }
        assert!(!ask(&mut b, 0, 3, MS));
        assert!(!ask(&mut b, 0, 3, 1_000_000 * MS));
        assert_eq!(b.tokens, 0);
    }

    #[test]
    fn a_lower_burst_applies_at_once() {
        let mut b = fresh();
        assert!(ask(&mut b, 1000, 100, MS));
        // 99 left; the controller lowers the burst to 2 and the rate to none.
        assert!(ask(&mut b, 0, 2, MS));
        assert!(ask(&mut b, 0, 2, MS));
        assert!(!ask(&mut b, 0, 2, MS));
    }

    #[test]
    fn a_clock_reading_older_than_the_stamp_adds_nothing() {
        let mut b = fresh();
        assert!(ask(&mut b, 1000, 1, 10 * MS));
        assert!(ask(&mut b, 1000, 1, 20 * MS));
        // Another CPU read the clock before this one moved the stamp.
        assert!(!ask(&mut b, 1000, 1, 15 * MS));
        assert_eq!(b.stamp_ns, 20 * MS);
    }
}
