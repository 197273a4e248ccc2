//! Internet checksum (RFC 1071) arithmetic shared by the XDP programs, the userspace
//! tunnel client and the tests.
//!
//! Sums are taken over 16-bit words read in memory order (`u16::from_ne_bytes`). The
//! one's-complement sum is independent of byte order (RFC 1071 section 2(B)), so a result
//! written back with `to_ne_bytes` is the right wire value on any host. Results are returned
//! as the two bytes to store, which keeps callers out of byte-order arithmetic.

/// Adds the 16-bit words of `data` to `sum`. `N` must be even.
#[inline(always)]
pub fn add_words<const N: usize>(mut sum: u32, data: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_ne_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Adds a slice of any length (an odd last byte is padded with zero, as RFC 1071 says).
/// For userspace and tests; the XDP side uses the fixed-size [`add_words`].
pub fn add_slice(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u16::from_ne_bytes([c[0], c[1]]) as u32);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u16::from_ne_bytes([*last, 0]) as u32);
    }
    sum
}

/// Folds a 32-bit accumulator into 16 bits (end-around carry).
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum field for a one's-complement `sum` of everything it covers.
#[inline(always)]
pub const fn finish(sum: u32) -> [u8; 2] {
    (!fold(sum)).to_ne_bytes()
}

/// IPv4 header checksum of a 20-byte header (no options); bytes 10-11 (the checksum field
/// itself) are ignored.
#[inline(always)]
pub fn ipv4_header(hdr: &[u8; 20]) -> [u8; 2] {
    let mut copy = *hdr;
    copy[10] = 0;
    copy[11] = 0;
    finish(add_words(0, &copy))
}

/// True when a 20-byte IPv4 header's checksum is correct. Summed in 32-bit words, half
/// the adds of 16-bit ones (RFC 1071 2(C): any word size, folded): every decapsulated
/// IPv4 packet pays this.
#[inline(always)]
pub fn ipv4_header_ok(hdr: &[u8; 20]) -> bool {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 20 {
        sum += u32::from_ne_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]) as u64;
        i += 4;
    }
    // Five 32-bit words: the sum fits 35 bits, one fold brings it within 33, a second
    // within 32.
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    fold(s as u32) == 0xffff
}

/// The part of an upper-layer checksum contributed by the IPv6 pseudo-header
/// (RFC 8200 section 8.1): both addresses, the upper-layer length and the next header.
#[inline(always)]
pub fn ipv6_pseudo_header(src: &[u8; 16], dst: &[u8; 16], len: u32, next_header: u8) -> u32 {
    let mut sum = add_words(0, src);
    sum = add_words(sum, dst);
    sum = add_words(sum, &len.to_be_bytes());
    add_words(sum, &[0, 0, 0, next_header])
}

/// Incremental update (RFC 1624, eqn. 3) of checksum field `check` when one 16-bit word of
/// the covered data changes from `old` to `new` (all three as they are in memory).
#[inline(always)]
pub fn replace2(check: [u8; 2], old: [u8; 2], new: [u8; 2]) -> [u8; 2] {
    let sum = (!u16::from_ne_bytes(check)) as u32
        + (!u16::from_ne_bytes(old)) as u32
        + u16::from_ne_bytes(new) as u32;
    finish(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 / Wikipedia's worked IPv4 example: checksum 0xb861.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn ipv4_header_matches_known_value() {
        assert_eq!(ipv4_header(&HDR), [0xb8, 0x61]);
        assert!(ipv4_header_ok(&HDR));
        let mut bad = HDR;
        bad[15] ^= 1;
        assert!(!ipv4_header_ok(&bad));
    }

    #[test]
    fn the_ipv4_check_in_32_bit_words_agrees_with_16_bit_words() {
        // A simple generator: headers with every byte varied, and the carries that 0xff
        // bytes force.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..20_000 {
            let mut h = [0u8; 20];
            for b in h.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = if n % 3 == 0 { 0xff } else { x as u8 };
            }
            // Half of them with the right checksum.
            if n % 2 == 0 {
                let c = ipv4_header(&h);
                h[10] = c[0];
                h[11] = c[1];
            }
            assert_eq!(
                ipv4_header_ok(&h),
                fold(add_words(0, &h)) == 0xffff,
                "{h:02x?}"
            );
        }
    }

    #[test]
    fn slice_and_words_agree_including_odd_length() {
        let data = [1u8, 2, 3, 4, 5, 6];
        assert_eq!(add_slice(0, &data), add_words(0, &data));
        assert_eq!(add_slice(0, &[0xab]), u16::from_ne_bytes([0xab, 0]) as u32);
    }

    #[test]
    fn incremental_update_equals_recompute() {
        let mut hdr = HDR;
        let old = [hdr[8], hdr[9]];
        hdr[8] = 0x3f; // TTL 64 -> 63
        let new = [hdr[8], hdr[9]];
        let updated = replace2([HDR[10], HDR[11]], old, new);
        assert_eq!(updated, ipv4_header(&hdr));
    }

    #[test]
    fn fold_carries_twice() {
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0x0001_fffe), 0xffff);
    }
}
