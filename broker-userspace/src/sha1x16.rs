//! SHA-1 of many messages at once: sixteen per pass, one in each 32-bit lane of AVX-512.
//!
//! The AYIYA worker hashes every packet it forwards, and under load it takes them off its
//! ring in batches. SHA-NI hashes one message at a time, its rounds a chain of dependent
//! instructions; AVX-512 has a rotate and three-input logic in one instruction each, so
//! sixteen lanes hash sixteen messages in a few times the time of one (figures in
//! docs/BENCHMARKS.md). With fewer than [`MIN_LANES`] messages, or on a CPU without
//! AVX-512, each message goes through the `sha1` crate (which uses SHA-NI where present).
//!
//! A message is the concatenation of three slices: AYIYA hashes its packet with the key
//! in place of the signature field, and the parts say so without a copy by the caller.
//! The lanes read a padded copy of each message from a scratch arena the [`Hasher`] keeps.
use sha1::{Digest, Sha1};

/// Messages per pass.
pub const LANES: usize = 16;
/// Below this many messages a pass costs more than hashing them one by one.
pub const MIN_LANES: usize = 4;

/// A message: the concatenation of its parts.
pub type Parts<'a> = [&'a [u8]; 3];

/// Hashes batches of messages; keeps its scratch between batches (one per thread).
#[derive(Default)]
pub struct Hasher {
    arena: Vec<u8>,
    order: Vec<usize>,
    digests: Vec<[u8; 20]>,
}

impl Hasher {
    /// The SHA-1 digests of `messages`, in order, into `out` (cleared first).
    pub fn digests(&mut self, messages: &[Parts<'_>], out: &mut Vec<[u8; 20]>) {
        out.clear();
        if messages.len() < MIN_LANES || !lanes_available() {
            out.extend(messages.iter().map(one));
            return;
        }
        // A pass runs as many blocks as its longest message: passes of like lengths, so a
        // short packet does not idle through a long one's blocks.
        self.order.clear();
        self.order.extend(0..messages.len());
        self.order.sort_unstable_by_key(|&i| len(&messages[i]));
        out.resize(messages.len(), [0; 20]);
        let mut pass: [Parts<'_>; LANES] = [[&[], &[], &[]]; LANES];
        let order = std::mem::take(&mut self.order);
        for chunk in order.chunks(LANES) {
            for (p, &i) in pass.iter_mut().zip(chunk) {
                *p = messages[i];
            }
            let mut digests = std::mem::take(&mut self.digests);
            digests.clear();
            if chunk.len() >= MIN_LANES {
                self.pass(&pass[..chunk.len()], &mut digests);
            } else {
                digests.extend(pass[..chunk.len()].iter().map(one));
            }
            for (&i, d) in chunk.iter().zip(&digests) {
                out[i] = *d;
            }
            self.digests = digests;
        }
        self.order = order;
    }

    /// One pass over up to [`LANES`] messages, once [`lanes_available`] said yes.
    fn pass(&mut self, chunk: &[Parts<'_>], out: &mut Vec<[u8; 20]>) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only called once `lanes_available` found AVX-512F and AVX-512BW.
        unsafe {
            self.x16(chunk, out)
        };
        #[cfg(not(target_arch = "x86_64"))]
        out.extend(chunk.iter().map(one));
    }

    /// One pass over up to [`LANES`] messages.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F and AVX-512BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn x16(&mut self, chunk: &[Parts<'_>], out: &mut Vec<[u8; 20]>) {
        use std::arch::x86_64::*;
        debug_assert!(chunk.len() <= LANES);
        let mut blocks = [0u32; LANES];
        for (b, m) in blocks.iter_mut().zip(chunk) {
            *b = (len(m) as u32 + 8) / 64 + 1;
        }
        let most = blocks.iter().copied().max().unwrap_or(0) as usize;
        let stride = most * 64;
        if self.arena.len() < LANES * stride {
            self.arena.resize(LANES * stride, 0);
        }
        for (l, m) in chunk.iter().enumerate() {
            pad_into(m, &mut self.arena[l * stride..(l + 1) * stride]);
        }
        let base = self.arena.as_ptr();
        let mut offsets = [0i32; LANES];
        for (l, o) in offsets.iter_mut().enumerate() {
            *o = (l * stride) as i32;
        }
        // SAFETY (this block): every gather reads 4 bytes at `l * stride + 64 * b + 4 * w`
        // with b < `most`, w < 16: inside the arena of LANES * stride bytes. Lanes past
        // the chunk and blocks past a lane's own read initialised bytes nobody uses.
        unsafe {
            let offsets = _mm512_loadu_si512(offsets.as_ptr().cast());
            let counts = _mm512_loadu_si512(blocks.as_ptr().cast());
            // Reverses the bytes of each 32-bit word (SHA-1 is big-endian).
            let bswap = _mm512_set_epi8(
                60, 61, 62, 63, 56, 57, 58, 59, 52, 53, 54, 55, 48, 49, 50, 51, 44, 45, 46, 47, 40,
                41, 42, 43, 36, 37, 38, 39, 32, 33, 34, 35, 28, 29, 30, 31, 24, 25, 26, 27, 20, 21,
                22, 23, 16, 17, 18, 19, 12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3,
            );
            let mut h = [
                _mm512_set1_epi32(0x6745_2301),
                _mm512_set1_epi32(0xefcd_ab89u32 as i32),
                _mm512_set1_epi32(0x98ba_dcfeu32 as i32),
                _mm512_set1_epi32(0x1032_5476),
                _mm512_set1_epi32(0xc3d2_e1f0u32 as i32),
            ];
            for b in 0..most {
                let live = _mm512_cmpgt_epi32_mask(counts, _mm512_set1_epi32(b as i32));
                let mut w = [_mm512_setzero_si512(); 16];
                for (i, wi) in w.iter_mut().enumerate() {
                    let at = _mm512_add_epi32(offsets, _mm512_set1_epi32((64 * b + 4 * i) as i32));
                    let v = _mm512_i32gather_epi32::<1>(at, base.cast());
                    *wi = _mm512_shuffle_epi8(v, bswap);
                }
                let r = compress(&h, &mut w);
                for (hi, ri) in h.iter_mut().zip(r) {
                    *hi = _mm512_mask_add_epi32(*hi, live, *hi, ri);
                }
            }
            let mut words = [[0u32; LANES]; 5];
            for (dst, v) in words.iter_mut().zip(h) {
                _mm512_storeu_si512(dst.as_mut_ptr().cast(), v);
            }
            for l in 0..chunk.len() {
                let mut d = [0u8; 20];
                for (i, wd) in words.iter().enumerate() {
                    d[4 * i..4 * i + 4].copy_from_slice(&wd[l].to_be_bytes());
                }
                out.push(d);
            }
        }
    }
}

/// Whether this CPU can run the sixteen-lane pass.
pub fn lanes_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn len(m: &Parts<'_>) -> usize {
    m.iter().map(|p| p.len()).sum()
}

/// One message through the `sha1` crate.
fn one(m: &Parts<'_>) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in m {
        h.update(p);
    }
    h.finalize().into()
}

/// Writes the message and its SHA-1 padding (0x80, zeros, the length in bits) into `lane`.
fn pad_into(m: &Parts<'_>, lane: &mut [u8]) {
    let mut at = 0;
    for p in m {
        lane[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    let end = (at + 8) / 64 * 64 + 64;
    lane[at] = 0x80;
    lane[at + 1..end - 8].fill(0);
    lane[end - 8..end].copy_from_slice(&(at as u64 * 8).to_be_bytes());
}

/// One round on all lanes: `e += rotl(a, 5) + f(b, c, d) + k + w; b = rotl(b, 30)`, the
/// schedule word computed in place from round 16 on. The caller rotates the roles.
#[cfg(target_arch = "x86_64")]
macro_rules! round {
    ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:literal, $k:expr, $w:ident, $t:literal) => {
        let wt = if $t < 16 {
            $w[$t & 15]
        } else {
            let x = _mm512_ternarylogic_epi32::<0x96>(
                $w[($t + 13) & 15],
                $w[($t + 8) & 15],
                $w[($t + 2) & 15],
            );
            let x = _mm512_rol_epi32::<1>(_mm512_xor_si512(x, $w[$t & 15]));
            $w[$t & 15] = x;
            x
        };
        let f = _mm512_ternarylogic_epi32::<$f>($b, $c, $d);
        $e = _mm512_add_epi32(
            _mm512_add_epi32($e, _mm512_rol_epi32::<5>($a)),
            _mm512_add_epi32(f, _mm512_add_epi32($k, wt)),
        );
        $b = _mm512_rol_epi32::<30>($b);
    };
}

/// The compression function on sixteen lanes; returns the working words to add to `h`.
/// Three-input logic: 0xCA is "b ? c : d" (rounds 0-19), 0x96 parity, 0xE8 majority.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn compress(
    h: &[std::arch::x86_64::__m512i; 5],
    w: &mut [std::arch::x86_64::__m512i; 16],
) -> [std::arch::x86_64::__m512i; 5] {
    use std::arch::x86_64::*;
    let k0 = _mm512_set1_epi32(0x5a82_7999);
    let k1 = _mm512_set1_epi32(0x6ed9_eba1);
    let k2 = _mm512_set1_epi32(0x8f1b_bcdcu32 as i32);
    let k3 = _mm512_set1_epi32(0xca62_c1d6u32 as i32);
    let [mut a, mut b, mut c, mut d, mut e] = *h;
    round!(a, b, c, d, e, 0xCA, k0, w, 0);
    round!(e, a, b, c, d, 0xCA, k0, w, 1);
    round!(d, e, a, b, c, 0xCA, k0, w, 2);
    round!(c, d, e, a, b, 0xCA, k0, w, 3);
    round!(b, c, d, e, a, 0xCA, k0, w, 4);
    round!(a, b, c, d, e, 0xCA, k0, w, 5);
    round!(e, a, b, c, d, 0xCA, k0, w, 6);
    round!(d, e, a, b, c, 0xCA, k0, w, 7);
    round!(c, d, e, a, b, 0xCA, k0, w, 8);
    round!(b, c, d, e, a, 0xCA, k0, w, 9);
    round!(a, b, c, d, e, 0xCA, k0, w, 10);
    round!(e, a, b, c, d, 0xCA, k0, w, 11);
    round!(d, e, a, b, c, 0xCA, k0, w, 12);
    round!(c, d, e, a, b, 0xCA, k0, w, 13);
    round!(b, c, d, e, a, 0xCA, k0, w, 14);
    round!(a, b, c, d, e, 0xCA, k0, w, 15);
    round!(e, a, b, c, d, 0xCA, k0, w, 16);
    round!(d, e, a, b, c, 0xCA, k0, w, 17);
    round!(c, d, e, a, b, 0xCA, k0, w, 18);
    round!(b, c, d, e, a, 0xCA, k0, w, 19);
    round!(a, b, c, d, e, 0x96, k1, w, 20);
    round!(e, a, b, c, d, 0x96, k1, w, 21);
    round!(d, e, a, b, c, 0x96, k1, w, 22);
    round!(c, d, e, a, b, 0x96, k1, w, 23);
    round!(b, c, d, e, a, 0x96, k1, w, 24);
    round!(a, b, c, d, e, 0x96, k1, w, 25);
    round!(e, a, b, c, d, 0x96, k1, w, 26);
    round!(d, e, a, b, c, 0x96, k1, w, 27);
    round!(c, d, e, a, b, 0x96, k1, w, 28);
    round!(b, c, d, e, a, 0x96, k1, w, 29);
    round!(a, b, c, d, e, 0x96, k1, w, 30);
    round!(e, a, b, c, d, 0x96, k1, w, 31);
    round!(d, e, a, b, c, 0x96, k1, w, 32);
    round!(c, d, e, a, b, 0x96, k1, w, 33);
    round!(b, c, d, e, a, 0x96, k1, w, 34);
    round!(a, b, c, d, e, 0x96, k1, w, 35);
    round!(e, a, b, c, d, 0x96, k1, w, 36);
    round!(d, e, a, b, c, 0x96, k1, w, 37);
    round!(c, d, e, a, b, 0x96, k1, w, 38);
    round!(b, c, d, e, a, 0x96, k1, w, 39);
    round!(a, b, c, d, e, 0xE8, k2, w, 40);
    round!(e, a, b, c, d, 0xE8, k2, w, 41);
    round!(d, e, a, b, c, 0xE8, k2, w, 42);
    round!(c, d, e, a, b, 0xE8, k2, w, 43);
    round!(b, c, d, e, a, 0xE8, k2, w, 44);
    round!(a, b, c, d, e, 0xE8, k2, w, 45);
    round!(e, a, b, c, d, 0xE8, k2, w, 46);
    round!(d, e, a, b, c, 0xE8, k2, w, 47);
    round!(c, d, e, a, b, 0xE8, k2, w, 48);
    round!(b, c, d, e, a, 0xE8, k2, w, 49);
    round!(a, b, c, d, e, 0xE8, k2, w, 50);
    round!(e, a, b, c, d, 0xE8, k2, w, 51);
    round!(d, e, a, b, c, 0xE8, k2, w, 52);
    round!(c, d, e, a, b, 0xE8, k2, w, 53);
    round!(b, c, d, e, a, 0xE8, k2, w, 54);
    round!(a, b, c, d, e, 0xE8, k2, w, 55);
    round!(e, a, b, c, d, 0xE8, k2, w, 56);
    round!(d, e, a, b, c, 0xE8, k2, w, 57);
    round!(c, d, e, a, b, 0xE8, k2, w, 58);
    round!(b, c, d, e, a, 0xE8, k2, w, 59);
    round!(a, b, c, d, e, 0x96, k3, w, 60);
    round!(e, a, b, c, d, 0x96, k3, w, 61);
    round!(d, e, a, b, c, 0x96, k3, w, 62);
    round!(c, d, e, a, b, 0x96, k3, w, 63);
    round!(b, c, d, e, a, 0x96, k3, w, 64);
    round!(a, b, c, d, e, 0x96, k3, w, 65);
    round!(e, a, b, c, d, 0x96, k3, w, 66);
    round!(d, e, a, b, c, 0x96, k3, w, 67);
    round!(c, d, e, a, b, 0x96, k3, w, 68);
    round!(b, c, d, e, a, 0x96, k3, w, 69);
    round!(a, b, c, d, e, 0x96, k3, w, 70);
    round!(e, a, b, c, d, 0x96, k3, w, 71);
    round!(d, e, a, b, c, 0x96, k3, w, 72);
    round!(c, d, e, a, b, 0x96, k3, w, 73);
    round!(b, c, d, e, a, 0x96, k3, w, 74);
    round!(a, b, c, d, e, 0x96, k3, w, 75);
    round!(e, a, b, c, d, 0x96, k3, w, 76);
    round!(d, e, a, b, c, 0x96, k3, w, 77);
    round!(c, d, e, a, b, 0x96, k3, w, 78);
    round!(b, c, d, e, a, 0x96, k3, w, 79);
    [a, b, c, d, e]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The sixteen-lane tests are `#[ignore]`d: a CPU without AVX-512 never runs the pass
    // (the dispatch test covers what it runs instead), and such a CPU cannot test it.
    // `cargo xtask test` runs them with `--ignored` where the CPU has AVX-512, and says
    // so where it has not.
    #[cfg(target_arch = "x86_64")]
    fn needs_lanes() {
        assert!(
            lanes_available(),
            "this test runs the sixteen-lane pass, and this CPU lacks AVX-512F/BW"
        );
    }

    #[cfg(target_arch = "x86_64")]
    fn x16(messages: &[Parts<'_>]) -> Vec<[u8; 20]> {
        needs_lanes();
        let mut out = Vec::new();
        // SAFETY: checked above.
        unsafe { Hasher::default().x16(messages, &mut out) };
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[ignore = "needs AVX-512F/BW; `cargo xtask test` runs it where the CPU has them"]
    fn known_answers() {
        // FIPS 180-2 appendix A.1 and A.2, and the empty message.
        let abc = [b"a".as_slice(), b"b", b"c"];
        let two = [
            b"abcdbcdecdefdefgefghfghighijhijk".as_slice(),
            b"",
            b"ijkljklmklmnlmnomnopnopq",
        ];
        let empty: Parts = [b"", b"", b""];
        let want = [
            "a9993e364706816aba3e25717850c26c9cd0d89d",
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        ];
        let got = x16(&[abc, two, empty]);
        for (g, w) in got.iter().zip(want) {
            let hex: String = g.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, w);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[ignore = "needs AVX-512F/BW; `cargo xtask test` runs it where the CPU has them"]
    fn every_padding_boundary_in_every_lane() {
        // Lengths around each block edge (55/56 bytes leave no room for the length), in
        // all sixteen lanes at once with lanes of other lengths beside them.
        let data: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
        let lens: Vec<usize> = (0..=200).collect();
        for group in lens.chunks(LANES) {
            let msgs: Vec<Parts> = group
                .iter()
                .map(|&n| {
                    [
                        &data[..n / 3],
                        &data[100..100 + n / 3],
                        &data[200..200 + n - 2 * (n / 3)],
                    ]
                })
                .collect();
            let got = x16(&msgs);
            let want: Vec<_> = msgs.iter().map(one).collect();
            assert_eq!(got, want, "lengths {group:?}");
        }
    }

    #[test]
    fn dispatch_matches_one_by_one_for_any_batch() {
        // Fewer than MIN_LANES go one by one; longer batches in passes of sixteen.
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let mut h = Hasher::default();
        let mut out = Vec::new();
        for n in [
            0,
            1,
            MIN_LANES - 1,
            MIN_LANES,
            LANES,
            LANES + 1,
            3 * LANES + 5,
        ] {
            let msgs: Vec<Parts> = (0..n)
                .map(|i| {
                    [
                        &data[..24],
                        &data[1000..1020],
                        &data[44..44 + (i * 97) % 1400],
                    ]
                })
                .collect();
            h.digests(&msgs, &mut out);
            assert_eq!(
                out,
                msgs.iter().map(one).collect::<Vec<_>>(),
                "{n} messages"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    proptest! {
        #[test]
        #[ignore = "needs AVX-512F/BW; `cargo xtask test` runs it where the CPU has them"]
        fn lanes_match_the_sha1_crate(
            msgs in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40),
                 proptest::collection::vec(any::<u8>(), 0..30),
                 proptest::collection::vec(any::<u8>(), 0..1500)),
                1..=LANES,
            )
        ) {
            let parts: Vec<Parts> = msgs.iter().map(|(a, b, c)| [a.as_slice(), b.as_slice(), c.as_slice()]).collect();
            let want: Vec<_> = parts.iter().map(one).collect();
            prop_assert_eq!(x16(&parts), want);
        }
    }
}
