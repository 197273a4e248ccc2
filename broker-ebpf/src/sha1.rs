//! SHA-1 (FIPS 180-4) over a stretch of the frame, for AYIYA's per-packet signature. The
//! kernel's crypto kfuncs only offer skciphers, so the hash is written here.
//!
//! One 64-byte block per `bpf_loop` iteration: the verifier checks the block function
//! once, whatever the packet length, and the program stays small. A whole block in the
//! frame's linear part is read directly, after one bounds check against `data_end` (its
//! offset bounded for the verifier); the last, partial block, and blocks of a
//! multi-buffer frame's fragments, are copied out with `bpf_xdp_load_bytes`.
//!
//! AYIYA signs with its key in place of the signature field: the hash reads the 20 bytes
//! at offset 24 from the key instead of the frame.
//!
//! A handler that needs a digest [`prepare`]s it and returns `Outcome::Hash`; the entry
//! point [`run`]s it, out of the handlers' deep frame, and calls the handler again to
//! resume with the [`digest`].
use aya_ebpf::{
    bindings::xdp_md,
    helpers::{bpf_loop, bpf_xdp_load_bytes},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use broker_common::{consts::AYIYA_SIG_OFF, stats::DropReason};
use core::ffi::c_void;

use crate::ptr;

/// Words of the first block that hold the key (the AYIYA signature field, 4-aligned).
const KEY_WORD: usize = AYIYA_SIG_OFF / 4;
/// Longest input, in blocks: a 9216-byte jumbo frame's UDP payload (a 1500-byte one needs
/// 24). Longer is a frame XDP never sees.
const MAX_BLOCKS: u32 = 145;

/// The hashing state, in a per-CPU map rather than on the stack, where it would count
/// against the 512 bytes the callback's frame shares with its callers. XDP does not nest
/// on a CPU, so one entry per CPU is enough.
#[repr(C)]
pub struct State {
    h: [u32; 5],
    /// The key as big-endian words, substituted for words `KEY_WORD..KEY_WORD + 5`.
    key: [u32; 5],
    /// Offset of the hashed bytes in the frame, and their number.
    start: u32,
    len: u32,
    /// Set when a block could not be read (the frame is shorter than promised).
    failed: u32,
    _pad: u32,
}

#[map]
static SHA1_STATE: PerCpuArray<State> = PerCpuArray::with_max_entries(1, 0);

/// What `bpf_loop` hands to every block (its context must be on the stack).
#[repr(C)]
struct Job {
    xdp: *mut xdp_md,
    st: *mut State,
}

/// Sets up the SHA-1 of `len` bytes of the frame from offset `start` (`len` ≥ 44), with
/// the 20 bytes at `start + 24` taken from `key`. The entry point runs it ([`run`]) once
/// the handler that asked has returned, and hands the handler [`digest`] when it resumes.
#[inline(always)]
pub fn prepare(start: usize, len: usize, key: &[u8; 20]) -> Result<(), DropReason> {
    if (len as u32 + 8) / 64 + 1 > MAX_BLOCKS {
        return Err(DropReason::BadUdpHeader);
    }
    let st = SHA1_STATE.get_ptr_mut(0).ok_or(DropReason::AdjustFailed)?;
    // SAFETY: this CPU's entry, which only this program writes.
    let s = unsafe { &mut *st };
    s.h = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    s.start = start as u32;
    s.len = len as u32;
    s.failed = 0;
    let mut i = 0;
    while i < 5 {
        s.key[i] = u32::from_be_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]);
        i += 1;
    }
    Ok(())
}

/// The digest [`run`] left, as five words (the signature is their big-endian bytes).
#[inline(always)]
pub fn digest() -> Option<&'static [u32; 5]> {
    let st = SHA1_STATE.get_ptr(0)?;
    // SAFETY: this CPU's entry, which only this program writes.
    Some(unsafe { &(*st).h })
}

/// Hashes what [`prepare`] set up. Out of line and called from the entry point, whose
/// frame is small: the callback's frame stacks on its caller's against the 512-byte limit,
/// and the handlers' frame alone takes most of that. Returns 0 on success.
#[inline(never)]
pub fn run(xdp: *mut xdp_md) -> i64 {
    let Some(st) = SHA1_STATE.get_ptr_mut(0) else {
        return -1;
    };
    // SAFETY: this CPU's entry, which only this program writes.
    let len = unsafe { (*st).len };
    let blocks = (len + 8) / 64 + 1;
    if blocks > MAX_BLOCKS {
        return -1;
    }
    let mut job = Job { xdp, st };
    // SAFETY: `block` has the callback signature; `job` outlives the call.
    let done = unsafe {
        bpf_loop(
            blocks,
            block as *mut c_void,
            &mut job as *mut Job as *mut c_void,
            0,
        )
    };
    // SAFETY: as above.
    if done != blocks as i64 || unsafe { (*st).failed } != 0 {
        return -1;
    }
    0
}

/// Hashes block `index`: the message bytes it covers, then the padding (0x80, zeros, the
/// length in bits) where the message ends.
extern "C" fn block(index: u64, job: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes the pointer `run` gave it, whose state is this CPU's.
    let (xdp, s) = unsafe {
        let job = &*(job as *const Job);
        (job.xdp, &mut *job.st)
    };
    if index >= MAX_BLOCKS as u64 {
        return 1;
    }
    let off = index as u32 * 64;
    // The block on the stack: this callback runs from the entry point's small frame, so
    // it has room, and the rounds read it at constant offsets. Not zeroed up front: a
    // full block is overwritten, and LLVM zeroes arrays with a byte-wise `memset` call
    // (a tenth of a block's cost).
    let mut w = core::mem::MaybeUninit::<Block>::uninit();
    let words = w.as_mut_ptr() as *mut u32;
    let bytes = words as *mut u8;
    let rem = s.len as i64 - off as i64;
    let from = s.start + off;
    if rem >= 64 {
        // A whole block: straight from the frame when it is in the linear part, else
        // through the helper (a multi-buffer frame's fragments).
        if let Some(p) = whole_block(xdp, from) {
            let mut i = 0;
            while i < 16 {
                // SAFETY: 64 bytes bounds-checked by `whole_block`; into the block.
                unsafe {
                    let v = u32::from_be(core::ptr::read_unaligned(p.add(i)));
                    core::ptr::write_volatile(words.add(i), v);
                }
                i += 1;
            }
        } else {
            if load(xdp, from, bytes, 64) != 0 {
                s.failed = 1;
                return 1;
            }
            from_be(words);
        }
    } else {
        // SAFETY: eight 8-byte stores cover the 64-byte block, 8-aligned (`Block`);
        // volatile, or LLVM makes them the `memset` call again.
        unsafe {
            let q = bytes as *mut u64;
            let mut i = 0;
            while i < 8 {
                core::ptr::write_volatile(q.add(i), 0);
                i += 1;
            }
        }
        let n = (rem.max(0) as u32) & 63;
        if n > 0 && load(xdp, from, bytes, n) != 0 {
            s.failed = 1;
            return 1;
        }
        // SAFETY: offsets below 64 into the 64-byte block.
        unsafe {
            if rem >= 0 {
                *bytes.add((rem as usize) & 63) = 0x80;
            }
            if rem < 56 {
                let bits = (s.len as u64 * 8).to_be_bytes();
                let mut i = 0;
                while i < 8 {
                    *bytes.add(56 + i) = bits[i];
                    i += 1;
                }
            }
        }
        from_be(words);
    }
    // SAFETY: every word written above. A reference, not a move: a moved array is a
    // 64-byte copy through registers.
    let w = unsafe { &mut w.assume_init_mut().0 };
    if index == 0 {
        let mut i = 0;
        while i < 5 {
            w[KEY_WORD + i] = s.key[i];
            i += 1;
        }
    }
    compress(&mut s.h, w);
    0
}

/// A block's sixteen words, 8-aligned: it is zeroed by 8-byte stores, and the verifier
/// refuses misaligned stack access.
#[repr(C, align(8))]
struct Block([u32; 16]);

/// The 64 bytes at `from` in the frame's linear part, or `None` (beyond it).
#[inline(always)]
fn whole_block(xdp: *mut xdp_md, from: u32) -> Option<*const u32> {
    // Bounded for the verifier: no hashed byte lies further in than a jumbo frame.
    if from as usize > MAX_BLOCKS as usize * 64 {
        return None;
    }
    let ctx = XdpContext::new(xdp);
    ptr::at::<[u32; 16]>(&ctx, from as usize).map(|p| p as *const u32)
}

/// The block's words, read big-endian, in place. Volatile, as the rounds read them: the
/// words stay on the stack rather than in spilled registers.
#[inline(always)]
fn from_be(words: *mut u32) {
    let mut i = 0;
    while i < 16 {
        // SAFETY: a word of the 64-byte block.
        unsafe { core::ptr::write_volatile(words.add(i), u32::from_be(*words.add(i))) };
        i += 1;
    }
}

/// Copies `n` ≤ 64 bytes of the frame from `from` into the 64-byte block at `buf`.
#[inline(always)]
fn load(xdp: *mut xdp_md, from: u32, buf: *mut u8, n: u32) -> i64 {
    // SAFETY: at most 64 bytes into a 64-byte block; the helper checks the frame bounds.
    unsafe { bpf_xdp_load_bytes(xdp, from, buf as *mut c_void, n) }
}

const K0: u32 = 0x5a82_7999;
const K1: u32 = 0x6ed9_eba1;
const K2: u32 = 0x8f1b_bcdc;
const K3: u32 = 0xca62_c1d6;

#[inline(always)]
fn ch(b: u32, c: u32, d: u32) -> u32 {
    d ^ (b & (c ^ d))
}

#[inline(always)]
fn parity(b: u32, c: u32, d: u32) -> u32 {
    b ^ c ^ d
}

#[inline(always)]
fn maj(b: u32, c: u32, d: u32) -> u32 {
    (b & c) | (d & (b | c))
}

/// Schedule words are read and written volatile, in round order: otherwise LLVM hoists
/// the whole schedule ahead of the rounds and spills it past the 512-byte stack.
#[inline(always)]
fn word(w: &[u32; 16], i: usize) -> u32 {
    // SAFETY: an in-bounds element.
    unsafe { core::ptr::read_volatile(&w[i]) }
}

#[inline(always)]
fn set_word(w: &mut [u32; 16], i: usize, v: u32) {
    // SAFETY: an in-bounds element.
    unsafe { core::ptr::write_volatile(&mut w[i], v) }
}

/// Round `t`: the schedule word (computed in place from round 16 on), then
/// `e += rotl(a, 5) + f(b, c, d) + k + w; b = rotl(b, 30)`. The caller rotates the
/// variables' roles instead of moving values.
macro_rules! round {
    ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $k:ident, $w:ident, $t:literal) => {
        let wt = if $t < 16 {
            word(&$w, $t & 15)
        } else {
            let x = (word(&$w, ($t + 13) & 15)
                ^ word(&$w, ($t + 8) & 15)
                ^ word(&$w, ($t + 2) & 15)
                ^ word(&$w, $t & 15))
            .rotate_left(1);
            set_word(&mut *$w, $t & 15, x);
            x
        };
        $e = $e
            .wrapping_add($a.rotate_left(5))
            .wrapping_add($f($b, $c, $d))
            .wrapping_add($k)
            .wrapping_add(wt);
        $b = $b.rotate_left(30);
    };
}

/// The SHA-1 compression function, its 80 rounds written out: every schedule index is a
/// constant and the five working words stay in registers (BPF has ten; a rolled loop
/// spills them).
#[inline(always)]
fn compress(h: &mut [u32; 5], w: &mut [u32; 16]) {
    let (mut a, mut b, mut c, mut d, mut e) = (h[0], h[1], h[2], h[3], h[4]);
    round!(a, b, c, d, e, ch, K0, w, 0);
    round!(e, a, b, c, d, ch, K0, w, 1);
    round!(d, e, a, b, c, ch, K0, w, 2);
    round!(c, d, e, a, b, ch, K0, w, 3);
    round!(b, c, d, e, a, ch, K0, w, 4);
    round!(a, b, c, d, e, ch, K0, w, 5);
    round!(e, a, b, c, d, ch, K0, w, 6);
    round!(d, e, a, b, c, ch, K0, w, 7);
    round!(c, d, e, a, b, ch, K0, w, 8);
    round!(b, c, d, e, a, ch, K0, w, 9);
    round!(a, b, c, d, e, ch, K0, w, 10);
    round!(e, a, b, c, d, ch, K0, w, 11);
    round!(d, e, a, b, c, ch, K0, w, 12);
    round!(c, d, e, a, b, ch, K0, w, 13);
    round!(b, c, d, e, a, ch, K0, w, 14);
    round!(a, b, c, d, e, ch, K0, w, 15);
    round!(e, a, b, c, d, ch, K0, w, 16);
    round!(d, e, a, b, c, ch, K0, w, 17);
    round!(c, d, e, a, b, ch, K0, w, 18);
    round!(b, c, d, e, a, ch, K0, w, 19);
    round!(a, b, c, d, e, parity, K1, w, 20);
    round!(e, a, b, c, d, parity, K1, w, 21);
    round!(d, e, a, b, c, parity, K1, w, 22);
    round!(c, d, e, a, b, parity, K1, w, 23);
    round!(b, c, d, e, a, parity, K1, w, 24);
    round!(a, b, c, d, e, parity, K1, w, 25);
    round!(e, a, b, c, d, parity, K1, w, 26);
    round!(d, e, a, b, c, parity, K1, w, 27);
    round!(c, d, e, a, b, parity, K1, w, 28);
    round!(b, c, d, e, a, parity, K1, w, 29);
    round!(a, b, c, d, e, parity, K1, w, 30);
    round!(e, a, b, c, d, parity, K1, w, 31);
    round!(d, e, a, b, c, parity, K1, w, 32);
    round!(c, d, e, a, b, parity, K1, w, 33);
    round!(b, c, d, e, a, parity, K1, w, 34);
    round!(a, b, c, d, e, parity, K1, w, 35);
    round!(e, a, b, c, d, parity, K1, w, 36);
    round!(d, e, a, b, c, parity, K1, w, 37);
    round!(c, d, e, a, b, parity, K1, w, 38);
    round!(b, c, d, e, a, parity, K1, w, 39);
    round!(a, b, c, d, e, maj, K2, w, 40);
    round!(e, a, b, c, d, maj, K2, w, 41);
    round!(d, e, a, b, c, maj, K2, w, 42);
    round!(c, d, e, a, b, maj, K2, w, 43);
    round!(b, c, d, e, a, maj, K2, w, 44);
    round!(a, b, c, d, e, maj, K2, w, 45);
    round!(e, a, b, c, d, maj, K2, w, 46);
    round!(d, e, a, b, c, maj, K2, w, 47);
    round!(c, d, e, a, b, maj, K2, w, 48);
    round!(b, c, d, e, a, maj, K2, w, 49);
    round!(a, b, c, d, e, maj, K2, w, 50);
    round!(e, a, b, c, d, maj, K2, w, 51);
    round!(d, e, a, b, c, maj, K2, w, 52);
    round!(c, d, e, a, b, maj, K2, w, 53);
    round!(b, c, d, e, a, maj, K2, w, 54);
    round!(a, b, c, d, e, maj, K2, w, 55);
    round!(e, a, b, c, d, maj, K2, w, 56);
    round!(d, e, a, b, c, maj, K2, w, 57);
    round!(c, d, e, a, b, maj, K2, w, 58);
    round!(b, c, d, e, a, maj, K2, w, 59);
    round!(a, b, c, d, e, parity, K3, w, 60);
    round!(e, a, b, c, d, parity, K3, w, 61);
    round!(d, e, a, b, c, parity, K3, w, 62);
    round!(c, d, e, a, b, parity, K3, w, 63);
    round!(b, c, d, e, a, parity, K3, w, 64);
    round!(a, b, c, d, e, parity, K3, w, 65);
    round!(e, a, b, c, d, parity, K3, w, 66);
    round!(d, e, a, b, c, parity, K3, w, 67);
    round!(c, d, e, a, b, parity, K3, w, 68);
    round!(b, c, d, e, a, parity, K3, w, 69);
    round!(a, b, c, d, e, parity, K3, w, 70);
    round!(e, a, b, c, d, parity, K3, w, 71);
    round!(d, e, a, b, c, parity, K3, w, 72);
    round!(c, d, e, a, b, parity, K3, w, 73);
    round!(b, c, d, e, a, parity, K3, w, 74);
    round!(a, b, c, d, e, parity, K3, w, 75);
    round!(e, a, b, c, d, parity, K3, w, 76);
    round!(d, e, a, b, c, parity, K3, w, 77);
    round!(c, d, e, a, b, parity, K3, w, 78);
    round!(b, c, d, e, a, parity, K3, w, 79);
    h[0] = h[0].wrapping_add(a);
    h[1] = h[1].wrapping_add(b);
    h[2] = h[2].wrapping_add(c);
    h[3] = h[3].wrapping_add(d);
    h[4] = h[4].wrapping_add(e);
}
